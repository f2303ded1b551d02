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
use futures::stream::BoxStream;

use crate::Result;

mod embedded;
mod memory;

pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;

/// A local engine for `memory:`, `redb+memory:` or `redb:PATH`; `None` for
/// other schemes. Opening the same `redb:` file twice in one process shares
/// one database.
pub fn open_url(url: &url::Url) -> Result<Option<std::sync::Arc<dyn KvStore>>> {
    Ok(match url.scheme() {
        "memory" | "redb+memory" => Some(std::sync::Arc::new(MemoryStore::new())),
        "redb" if url.path().is_empty() => {
            return Err(crate::Error::InvalidRequest(format!("{url}: redb needs a file path")));
        }
        "redb" => Some(std::sync::Arc::new(EmbeddedStore::open(std::path::Path::new(url.path()))?)),
        _ => None,
    })
}

/// A named set of records in an engine.
///
/// The castore's own tables are keyed by BLAKE3 digests; higher layers name
/// their own (the store keeps PathInfo records keyed by store path digest),
/// so one engine and one database file hold everything a server keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Table(&'static str);

impl Table {
    /// Chunk digest → chunk bytes (at most the chunker's maximum size).
    pub const CHUNKS: Table = Table("chunks");
    /// Blob digest → its chunk list, for blobs of more than one chunk.
    pub const BLOBS: Table = Table("blobs");
    /// Directory digest → its canonical encoding.
    pub const DIRECTORIES: Table = Table("directories");

    /// A table owned by a layer above the castore. Names are lower-case
    /// words; the castore's own names are taken.
    pub const fn named(name: &'static str) -> Table {
        Table(name)
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>>;

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool>;

    /// Stores records. When it returns, all are readable and will survive a
    /// process crash; an engine keeps its own promise about power loss (see
    /// its docs). A key that exists is left alone (first writer wins: for
    /// content-addressed tables the value can only be the same bytes). Records of one call become visible in the order given, and
    /// records of a call become visible before those of any later call.
    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()>;

    /// Every record of `table`, in no promised order. Records put while the
    /// scan runs may or may not appear; none appears twice.
    fn scan(&self, table: Table) -> BoxStream<'static, Result<(Bytes, Bytes)>>;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures::TryStreamExt;

    use super::*;

    async fn scan_all(kv: &dyn KvStore, table: Table) -> BTreeMap<Bytes, Bytes> {
        let records: Vec<_> = kv.scan(table).try_collect().await.unwrap();
        let n = records.len();
        let map: BTreeMap<_, _> = records.into_iter().collect();
        assert_eq!(map.len(), n, "a record was scanned twice");
        map
    }

    /// Named tables are separate, start empty, keep the first value written,
    /// and scan completely across batch boundaries.
    async fn check(kv: &dyn KvStore) {
        let table = Table::named("test_records");
        assert!(kv.get(table, b"k").await.unwrap().is_none());
        assert!(scan_all(kv, table).await.is_empty());
        let records: Vec<(Bytes, Bytes)> =
            (0..2500u32).map(|i| (Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(format!("value {i}")))).collect();
        kv.put(table, records.clone()).await.unwrap();
        kv.put(table, vec![(records[0].0.clone(), Bytes::from_static(b"second writer"))]).await.unwrap();
        assert_eq!(kv.get(table, &records[0].0).await.unwrap(), Some(records[0].1.clone()));
        assert!(kv.get(Table::named("other_records"), &records[0].0).await.unwrap().is_none());
        assert_eq!(scan_all(kv, table).await, records.into_iter().collect());

        let chunks: Vec<(Bytes, Bytes)> = (0..1100u32)
            .map(|i| {
                let data = Bytes::from(format!("chunk {i}"));
                (crate::B3Digest::of(&data).to_bytes(), data)
            })
            .collect();
        kv.put(Table::CHUNKS, chunks.clone()).await.unwrap();
        assert_eq!(scan_all(kv, Table::CHUNKS).await, chunks.into_iter().collect());
    }

    #[tokio::test]
    async fn memory_tables_and_scan() {
        check(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn embedded_tables_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        check(&EmbeddedStore::open(&dir.path().join("kv.redb")).unwrap()).await;
    }
}
