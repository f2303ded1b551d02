//! [`FetchError`]: why a fetch failed, naming the store path and what was
//! wrong with it.
//!
//! Underlying errors are part of the message (not a `source` chain), so a
//! report printed with its causes does not say everything twice.

/// Why a fetch (or a step of registering with the host Nix) failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The store address is not usable.
    #[error("opening the store {url}: {error}")]
    Connect { url: String, error: castore::Error },
    /// A root (or a path a PathInfo refers to) is not in the store.
    #[error("{0}")]
    NotFound(String),
    /// Asking the store failed (unreachable, refused, or its answer was
    /// invalid: castore's clients check every PathInfo they receive).
    #[error("asking the store for {what}: {error}")]
    Store { what: String, error: castore::Error },
    /// The PathInfos do not fit together (a record named other than the
    /// path it was asked for, a tree larger than its NAR).
    #[error("{path}: the store's PathInfo is inconsistent: {reason}")]
    Inconsistent { path: String, reason: String },
    /// With trusted keys, a path without a valid signature by one of them
    /// (and not provably content-addressed).
    #[error("{path}: no valid signature by a trusted key ({trusted}); its signatures: {signatures}")]
    Untrusted { path: String, trusted: String, signatures: String },
    /// Writing the tree failed: a blob or directory that is not what its
    /// digest says, a missing blob, an invalid name, or the disk.
    #[error("{path}: {error}")]
    Materialise { path: String, error: castore::Error },
    /// The tree on disk does not serialise to the NAR the PathInfo names.
    #[error(
        "{path}: the fetched tree's NAR is {actual_hash} ({actual_size} bytes), but the PathInfo says {expected_hash} \
         ({expected_size} bytes): the store sent other contents than it describes"
    )]
    NarMismatch { path: String, expected_hash: String, expected_size: u64, actual_hash: String, actual_size: u64 },
    /// A path is in the host store directory but not valid in Nix, and is
    /// not what the store describes.
    #[error(
        "{path}: exists but the host Nix does not know it, and its contents are not what the store describes \
         ({reason}); remove it (nix-store --delete {path}) and fetch again"
    )]
    Conflict { path: String, reason: String },
    /// Running the host's Nix failed.
    #[error("`{command}` failed: {message}")]
    Nix { command: String, message: String },
    /// Local I/O outside a tree being written (reading the target directory,
    /// hashing a tree).
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// The request itself is not possible (e.g. a host store that is not
    /// the target directory).
    #[error("{0}")]
    Usage(String),
}

impl FetchError {
    pub(crate) fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        FetchError::Io { what: what.into(), error }
    }
}
