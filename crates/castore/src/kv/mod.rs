//! [`KvStore`]: the narrow trait a storage engine implements.
//!
//! Every castore record is immutable and content-addressed, so an engine only
//! needs get, contains and an idempotent put per [`Table`]. [`crate::blob`]
//! (chunking, blob index) and [`crate::dirsvc`] (closure validation) are
//! written once on top of it; an engine never sees a `Directory` or a chunk
//! list, and a new engine (object storage, a cache layer) fits without
//! touching their callers.
use async_trait::async_trait;
use bytes::Bytes;

use crate::Result;

mod embedded;
mod memory;

pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;

/// The kinds of record a castore keeps, each keyed by a BLAKE3 digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// Chunk digest → chunk bytes (at most the chunker's maximum size).
    Chunks,
    /// Blob digest → its chunk list, for blobs of more than one chunk.
    Blobs,
    /// Directory digest → its canonical encoding.
    Directories,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Chunks, Table::Blobs, Table::Directories];

    pub fn name(self) -> &'static str {
        match self {
            Table::Chunks => "chunks",
            Table::Blobs => "blobs",
            Table::Directories => "directories",
        }
    }
}

/// An engine for immutable, content-addressed records.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>>;

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool>;

    /// Stores records. When it returns, all are readable and will survive a
    /// process crash; an engine keeps its own promise about power loss (see
    /// its docs). A key that exists is left alone: its value can only be the
    /// same bytes. Records of one call become visible in the order given, and
    /// records of a call become visible before those of any later call.
    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()>;
}
