//! The Nix store layer of storefront.
//!
//! Store paths enter the castore here (NAR ingest, local Nix store import)
//! and leave it again as NARs (a seekable renderer), described by
//! [`PathInfo`] records kept in a [`PathInfoService`] and spoken over the
//! tvix/snix `store.v1` gRPC protocol. narinfo text and ed25519 signatures
//! are here too, so the binary cache and registry crates only wire them.
pub mod ca;
pub mod closure_info;
pub mod hash;
pub mod import;
pub mod nar;
pub mod narinfo;
pub mod nix32;
pub mod pathinfo;
pub mod proto;
pub mod signing;
pub mod store_path;
pub mod url;
pub mod verify;

pub use ca::{CaError, ContentAddress, IngestionMethod};
pub use hash::{HashAlgo, HashError, NixHash};
pub use narinfo::{NarInfo, NarInfoError};
pub use pathinfo::{PathInfo, PathInfoService};
pub use signing::{Signature, SigningError, SigningKey, VerifyingKey};
pub use store_path::{DEFAULT_STORE_DIR, StorePath, StorePathError};
