//! NAR (Nix ARchive) ingest into castore, and NAR rendering from it.
//!
//! - [`ingest()`] reads a NAR stream once: every byte goes through SHA-256 (on
//!   a thread of its own, in large pieces, so hashing overlaps parsing and
//!   storing), file contents stream into the [`castore::BlobService`], and
//!   the directories are put as one closure at the end, only when the whole
//!   NAR was valid. Validation is strict ([`Problem`] lists every refusal),
//!   and each error names the byte offset where the NAR went wrong.
//! - [`NarReader`] renders a stored node back as a NAR: the exact layout
//!   (every token and every file's contents, by offset) is computed up front
//!   from the directory closure, so [`NarReader::len`] is the NarSize before
//!   a byte is read, and a seek goes straight to any offset
//!   ([`NarReader::set_end`] bounds a range). Upcoming blobs are fetched
//!   concurrently, within a bounded read-ahead.
//! - [`calculate`] answers what the CalculateNAR RPC asks (NarSize and
//!   NarHash of a node) by streaming the rendered NAR through SHA-256.
//!
//! The format, as `nix-store --dump` writes it: every token is a u64
//! little-endian length, the bytes, and zero padding to a multiple of 8.
//! ```text
//! nar  = str("nix-archive-1") node
//! node = str("(") str("type") body str(")")
//! body = str("regular") [str("executable") str("")] str("contents") str(<data>)
//!      | str("symlink") str("target") str(<target>)
//!      | str("directory") { str("entry") str("(") str("name") str(<n>) str("node") node str(")") }*
//! ```
mod ingest;
mod render;
mod sha;
mod wire;

pub use ingest::{DEFAULT_MAX_DEPTH, DEFAULT_MAX_FILE_SIZE, IngestOptions, Ingested, ingest, ingest_with};
pub use render::{NarReader, calculate, layout_of};

/// Why a NAR was refused: the input is malformed at a byte offset, the
/// store failed, or reading the input failed.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The input is not a valid NAR (callers answer INVALID_ARGUMENT / 400).
    #[error("invalid NAR at byte {offset}: {problem}")]
    Malformed { offset: u64, problem: Problem },
    /// The blob or directory service failed.
    #[error("storing NAR contents: {0}")]
    Storage(#[source] castore::Error),
    /// Reading the input failed.
    #[error("reading NAR: {0}")]
    Io(#[from] std::io::Error),
}

impl NarError {
    pub(crate) fn at(offset: u64, problem: Problem) -> Self {
        NarError::Malformed { offset, problem }
    }

    /// The problem, when the input was malformed.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            NarError::Malformed { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

impl From<castore::Error> for NarError {
    fn from(e: castore::Error) -> Self {
        NarError::Storage(e)
    }
}

/// Malformed input becomes [`castore::Error::InvalidRequest`]; storage
/// errors pass through unchanged.
impl From<NarError> for castore::Error {
    fn from(e: NarError) -> Self {
        match e {
            e @ NarError::Malformed { .. } => castore::Error::InvalidRequest(e.to_string()),
            NarError::Storage(e) => e,
            NarError::Io(e) => castore::Error::Io(e),
        }
    }
}

/// What is wrong with a malformed NAR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a NAR: it does not start with the string \"nix-archive-1\"")]
    BadMagic,
    #[error("the NAR ends early (truncated): {needed} more bytes were expected at least")]
    Truncated { needed: u64 },
    #[error("padding after a string is not zero")]
    NonZeroPadding,
    #[error("expected {expected}, found {found}")]
    Unexpected { expected: &'static str, found: String },
    #[error("unknown node type {0}")]
    UnknownType(String),
    #[error("invalid entry name {name}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "entry name {name} does not sort after the previous entry {previous} (entries must be in strictly increasing byte order)"
    )]
    Unsorted { name: String, previous: String },
    #[error("entry name {name} appears twice")]
    Duplicate { name: String },
    #[error("invalid symlink target: {reason}")]
    InvalidTarget { reason: &'static str },
    #[error("directories nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("file of {size} bytes exceeds the limit of {max} bytes")]
    FileTooLarge { size: u64, max: u64 },
    #[error("a string of {len} bytes reaches past the declared NAR size ({remaining} bytes remain)")]
    BeyondEnd { len: u64, remaining: u64 },
    #[error("data after the end of the NAR")]
    TrailingData,
    #[error("the NAR is {actual} bytes, but {expected} were declared")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("invalid directory: {0}")]
    InvalidDirectory(String),
}

/// A byte string for messages: quoted, lossy UTF-8, cut after 64 bytes.
pub(crate) fn show(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(cut));
    if bytes.len() > MAX {
        s.push_str(&format!(" (… {} bytes)", bytes.len()));
    }
    s
}
