//! Generated protobuf messages and gRPC stubs (package `snix.store.v1`).
//!
//! The tvix package (`tvix.store.v1`) has identical messages; its method
//! paths are served and spoken through [`castore::grpc::Package`].
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("snix.store.v1");

/// Descriptor set of `snix.store.v1`, for gRPC reflection.
pub const SNIX_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/snix_store_descriptor.bin"));
/// Descriptor set of `tvix.store.v1`, for gRPC reflection.
pub const TVIX_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tvix_store_descriptor.bin"));

/// storefront's extension of the protocol (`storefront.store.v1`): one call
/// returns a whole closure. Optional for servers; see
/// `proto/storefront/store/v1/batch.proto`.
pub mod batch {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/storefront/storefront.store.v1.rs"));

    /// Descriptor set of `storefront.store.v1`, for gRPC reflection.
    pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/storefront_store_descriptor.bin"));
}
