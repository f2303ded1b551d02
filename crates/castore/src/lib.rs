//! storefront's content-addressed store (castore).
//!
//! File contents are *blobs* named by their BLAKE3 digest and kept as
//! content-defined *chunks*; directories form a Merkle DAG of [`Directory`]
//! messages. The wire format and services are those of tvix/snix castore, so
//! their daemons and clients interoperate with ours.
//!
//! - [`BlobService`] and [`DirectoryService`] are what callers use; backends
//!   are chosen by URL ([`blob_service_from_url`], [`directory_service_from_url`]).
//! - [`kv::KvStore`] is the narrow trait a storage engine implements: both
//!   services are written once on top of it (memory, embedded on-disk, …).
//! - [`grpc`] holds the server and the client backends for both package names.
//! - [`fs`] ingests a directory tree and exports an entry back to disk.
//! - [`render`] streams formats laid out from literal bytes and blobs (NARs,
//!   tar layers), with seeks and ranges.
pub mod blob;
pub mod digest;
pub mod directory;
pub mod dirsvc;
mod error;
pub mod fs;
pub mod grpc;
pub mod kv;
pub mod proto;
pub mod render;
mod url;

pub use blob::{BlobReader, BlobService, ChunkMeta};
pub use digest::{B3Digest, DigestError};
pub use directory::{Directory, DirectoryError, Name, Node};
pub use dirsvc::DirectoryService;
pub use error::{Error, Result};
pub use url::{
    SERVICE_ADDRESS_FORMS, blob_service_from_url, directory_service_from_url, open_service, parse_service_address,
};
