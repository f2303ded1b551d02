//! Importing store paths into a store: from the local Nix store
//! ([`LocalStore`] + [`Importer`]), from `nix-store --export` streams
//! ([`import_export`]) and from single NAR files ([`import_nar`]).
//!
//! Whatever the source, a path becomes visible (its [`PathInfo`] is put)
//! only after its whole tree is in the castore and every path it references
//! is stored, so the PathInfos go in dependency order and a crash or an
//! error leaves nothing half-done: at most unreferenced blobs and
//! directories.
//!
//! - [`LocalStore`] turns command-line arguments (store paths, paths inside
//!   them, GC-root symlinks) into store paths and asks Nix for the metadata
//!   of their closure (`nix path-info --json --recursive`).
//! - [`Importer`] skips paths already stored, ingests the others straight
//!   from the store directory ([`castore::fs::ingest`], several at a time),
//!   checks that the stored tree renders to the NarHash and NarSize Nix
//!   recorded ([`NarCalculationService`]: a remote store calculates it
//!   itself, so the bytes are not pulled back), and puts each PathInfo as
//!   soon as its references are in.
//! - Progress ([`Progress`]) is published on a watch channel; every import
//!   returns a [`Summary`].
use castore::Node;

use crate::{ContentAddress, StorePath, nar::NarError, pathinfo::PathInfo, signing::Signature};

mod engine;
mod export;
mod local;
mod nar_file;
mod target;

pub use engine::{DEFAULT_JOBS, Importer};
pub use export::{ExportReader, ExportedPath, import_export};
pub use local::LocalStore;
pub use nar_file::{NarFileMeta, import_nar, import_nar_file};
pub use target::{LocalNarCalculator, NarCalculationService, Target};

/// What the Nix database says about a store path: everything a [`PathInfo`]
/// holds except the castore node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathMeta {
    pub path: StorePath,
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
    /// In Nix's order; may include the path itself.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub signatures: Vec<Signature>,
    pub ca: Option<ContentAddress>,
}

impl PathMeta {
    /// The PathInfo for this path with its contents at `node`.
    pub fn into_path_info(self, node: Node) -> PathInfo {
        PathInfo {
            store_path: self.path,
            node,
            references: self.references,
            nar_size: self.nar_size,
            nar_sha256: self.nar_sha256,
            signatures: self.signatures,
            deriver: self.deriver,
            ca: self.ca,
        }
    }
}

/// Fails when the store holds the path with a NarHash other than
/// `nar_sha256`. Store paths are immutable, so a put of a path stored earlier
/// returns the earlier record; a different NarHash there is this import's
/// failure, not something to overwrite.
pub(crate) fn check_same_nar(stored: &PathInfo, nar_sha256: &[u8; 32]) -> Result<(), String> {
    if stored.nar_sha256 == *nar_sha256 {
        return Ok(());
    }
    Err(format!(
        "already stored with another NarHash ({}; this import's is {})",
        crate::NixHash::sha256(stored.nar_sha256),
        crate::NixHash::sha256(*nar_sha256)
    ))
}

/// Where an import is: counts of paths and NAR bytes, done and in total.
///
/// A path is done when it was imported, found already present, or failed.
/// `bytes_total` is 0 when it is unknown (a stream from a pipe).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub paths_done: u64,
    pub paths_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// A path that could not be imported, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub path: StorePath,
    pub error: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Paths stored by this import.
    pub imported: u64,
    /// Paths that were already stored.
    pub skipped: u64,
    /// NAR bytes of the imported paths.
    pub bytes: u64,
    pub failures: Vec<Failure>,
}

impl Summary {
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Why an import (as a whole) failed. Failures of single paths are reported
/// in [`Summary::failures`] instead, so that independent paths still go in.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {reason}")]
    Resolve { path: String, reason: String },
    #[error("{}: not valid in the local Nix store {store_dir} (not built or substituted there?)", paths.join(", "))]
    NotValid { paths: Vec<String>, store_dir: String },
    #[error("running `{command}`: {message}")]
    Nix { command: String, message: String },
    #[error("{0}")]
    Metadata(String),
    #[error("nix-store --export stream: {0}")]
    Export(String),
    #[error("{path}: {message}")]
    Path { path: String, message: String },
    #[error("{0}")]
    Nar(#[from] NarError),
    #[error("{0}")]
    Store(#[from] castore::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
