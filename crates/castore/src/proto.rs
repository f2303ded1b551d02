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

/// storefront's extension of the protocol (`storefront.castore.v1`): one
/// call reads many blobs, or the directory closures of many roots.
/// Optional for servers; see `proto/storefront/castore/v1/batch.proto`.
pub mod batch {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/storefront/storefront.castore.v1.rs"));

    /// Descriptor set of `storefront.castore.v1`, for gRPC reflection.
    pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/storefront_castore_descriptor.bin"));
}
