//! Generated protobuf messages and gRPC stubs (package `snix.castore.v1`).
//!
//! The tvix package (`tvix.castore.v1`) has identical messages; its method
//! paths are served and spoken through [`crate::grpc::Package`].
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("snix.castore.v1");

/// Descriptor set of `snix.castore.v1`, for gRPC reflection.
pub const SNIX_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/snix_castore_descriptor.bin"));
/// Descriptor set of `tvix.castore.v1`, for gRPC reflection.
pub const TVIX_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tvix_castore_descriptor.bin"));
