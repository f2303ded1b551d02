//! [`KvStore`]: the narrow trait a storage engine implements.
//!
//! Most records are immutable: every castore record is content-addressed, and
//! so are most of the layers above, so for them an engine needs only get,
//! contains, an idempotent put and a scan per [`Table`]. Some tables of higher
//! layers (registry tags, upload sessions) hold mutable records; those change
//! only through [`KvStore::compare_and_swap`], and [`KvStore::scan_prefix`]
//! lists a key range in order. [`crate::blob`] (chunking, blob index) and
//! [`crate::dirsvc`] (closure validation) are written once on top of it; an
//! engine never sees a `Directory` or a chunk list, and a new engine (object
//! storage, a cache layer) fits without touching their callers.
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::Result;

mod cache;
#[doc(hidden)]
pub mod contract;
mod embedded;
mod memory;
#[cfg(feature = "object-store")]
mod objectstore;
mod query;

pub use cache::CacheStore;
pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;
#[cfg(feature = "object-store")]
pub use objectstore::{Consistency, ObjectStoreKv};

/// The engine an address names: `memory:`, `redb+memory:`, `redb:PATH`,
/// `objectstore+s3://BUCKET/PREFIX?…`, `objectstore+file:///PATH`,
/// `objectstore+memory:` or `cache:?near=…&far=…`; `None` for other schemes
/// (gRPC transports). Opening one `redb:` file or one `objectstore+`
/// address twice in a process shares one database or client.
pub fn open_url(url: &url::Url) -> Result<Option<std::sync::Arc<dyn KvStore>>> {
    Ok(match url.scheme() {
        "memory" | "redb+memory" => Some(std::sync::Arc::new(MemoryStore::new())),
        "redb" if url.path().is_empty() => {
            return Err(crate::Error::InvalidRequest(format!("{url}: redb needs a file path")));
        }
        "redb" => Some(std::sync::Arc::new(EmbeddedStore::open(std::path::Path::new(url.path()))?)),
        "cache" => Some(std::sync::Arc::new(CacheStore::open(url)?)),
        #[cfg(feature = "object-store")]
        scheme if scheme.starts_with("objectstore+") => Some(std::sync::Arc::new(ObjectStoreKv::open(url)?)),
        #[cfg(not(feature = "object-store"))]
        scheme if scheme.starts_with("objectstore+") => {
            return Err(crate::Error::InvalidRequest(format!(
                "{scheme}: this build has no object storage (castore's object-store feature)"
            )));
        }
        _ => None,
    })
}

/// A named set of records in an engine.
///
/// The castore's own tables are keyed by BLAKE3 digests; higher layers name
/// their own (the store keeps PathInfo records keyed by store path digest),
/// so one engine and one database file hold everything a server keeps.
///
/// A table is immutable (records are only put, first writer wins: all of the
/// castore's own) or mutable (records are created, replaced and deleted with
/// [`KvStore::compare_and_swap`]); the layer that owns a table decides which,
/// and keeps to it.
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

/// A storage engine: records per [`Table`], immutable ones written with
/// [`KvStore::put`] and mutable ones with [`KvStore::compare_and_swap`].
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>>;

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool>;

    /// Stores records. When it returns, all are readable and will survive a
    /// process crash; an engine keeps its own promise about power loss (see
    /// its docs). A key that exists is left alone (first writer wins: for
    /// content-addressed tables the value can only be the same bytes). On a
    /// mutable table a put likewise only creates absent records (a deleted
    /// record is absent) and never replaces one: changes go through
    /// [`KvStore::compare_and_swap`]. Records of one
    /// call become visible in the order given (callers rely on it: a
    /// directory closure is put leaves first, and a stored directory must
    /// imply its children), and records of a call become visible before
    /// those of any later call. Chunks are the exception to the first rule:
    /// they name nothing, so an engine may store a call's chunks in any
    /// order (concurrently).
    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()>;

    /// Every record of `table`, in no promised order. Records put, changed or
    /// deleted while the scan runs may or may not appear, or appear with their
    /// old or their new value; no key appears twice.
    fn scan(&self, table: Table) -> BoxStream<'static, Result<(Bytes, Bytes)>>;

    /// The records of `table` whose keys start with `prefix`, in ascending
    /// byte order of key (so callers can page: registry tag lists, catalogs).
    /// Same consistency as [`KvStore::scan`]; an empty prefix lists the whole
    /// table. Not for [`Table::CHUNKS`] (refused with
    /// [`crate::Error::InvalidRequest`]: chunks are immutable).
    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, Result<(Bytes, Bytes)>>;

    /// Mutable records (tags, upload sessions): atomically, if the record
    /// `key` currently holds `current` (`None`: absent), replace it with
    /// `new` (`None`: delete it) and return `Ok(Ok(()))`; otherwise change
    /// nothing and return `Ok(Err(actual))`. Every mutation of a mutable
    /// record goes through this, so concurrent writers (other requests,
    /// other replicas on a shared engine) never lose an update silently.
    /// Values compare byte for byte; an empty value is not an absent record.
    /// Durable like [`KvStore::put`] when it returns, whatever the outcome
    /// (so is the `actual` value a conflict reports). Not for [`Table::CHUNKS`]
    /// (immutable by nature: refused with [`crate::Error::InvalidRequest`]).
    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<Result<(), Option<Bytes>>>;
}

/// Refuses the operations chunks do not have (prefix scans,
/// compare-and-swap): every engine applies the same rule through this.
pub(crate) fn not_chunks(table: Table, what: &str) -> Result<()> {
    if table == Table::CHUNKS {
        return Err(crate::Error::InvalidRequest(format!("chunks are immutable: no {what} on them")));
    }
    Ok(())
}

/// Sets a mutable record to `value` whatever it held (last writer wins),
/// through [`KvStore::compare_and_swap`].
pub async fn set(kv: &dyn KvStore, table: Table, key: Bytes, value: Option<Bytes>) -> Result<()> {
    let mut current = kv.get(table, &key).await?;
    loop {
        match kv.compare_and_swap(table, key.clone(), current, value.clone()).await? {
            Ok(()) => return Ok(()),
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::{contract::Scale, *};

    fn b(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    async fn scan_prefix_all(kv: &dyn KvStore, table: Table, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        futures::TryStreamExt::try_collect(kv.scan_prefix(table, b(prefix))).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_keeps_the_contract() {
        contract::all(Arc::new(MemoryStore::new()), Scale::FULL).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract::all(Arc::new(EmbeddedStore::open(&dir.path().join("kv.redb")).unwrap()), Scale::FULL).await;
    }

    /// Mutable records (set, replaced, deleted) and immutable ones survive
    /// closing and reopening the database, and keep their rules after it.
    #[tokio::test]
    async fn embedded_mutable_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let mutable = Table::named("test_mutable");
        {
            let kv = EmbeddedStore::open(&path).unwrap();
            assert_eq!(kv.compare_and_swap(mutable, b(b"a"), None, Some(b(b"a1"))).await.unwrap(), Ok(()));
            assert_eq!(kv.compare_and_swap(mutable, b(b"a"), Some(b(b"a1")), Some(b(b"a2"))).await.unwrap(), Ok(()));
            set(&kv, mutable, b(b"b"), Some(b(b"b1"))).await.unwrap();
            set(&kv, mutable, b(b"c"), Some(b(b"c1"))).await.unwrap();
            assert_eq!(kv.compare_and_swap(mutable, b(b"c"), Some(b(b"c1")), None).await.unwrap(), Ok(()));
            kv.put(Table::BLOBS, vec![(b(b"blob"), b(b"first"))]).await.unwrap();
            kv.put(Table::BLOBS, vec![(b(b"blob"), b(b"second"))]).await.unwrap();
        }
        // The database was closed with the last handle: it opens afresh.
        drop(redb::Database::create(&path).expect("the handle was released"));
        let kv = EmbeddedStore::open(&path).unwrap();
        assert_eq!(scan_prefix_all(&kv, mutable, b"").await, [(b(b"a"), b(b"a2")), (b(b"b"), b(b"b1"))]);
        assert!(!kv.contains(mutable, b"c").await.unwrap());
        assert_eq!(kv.compare_and_swap(mutable, b(b"a"), Some(b(b"a1")), None).await.unwrap(), Err(Some(b(b"a2"))));
        assert_eq!(kv.compare_and_swap(mutable, b(b"a"), Some(b(b"a2")), Some(b(b"a3"))).await.unwrap(), Ok(()));
        assert_eq!(kv.get(mutable, b"a").await.unwrap(), Some(b(b"a3")));
        kv.put(Table::BLOBS, vec![(b(b"blob"), b(b"third"))]).await.unwrap();
        assert_eq!(kv.get(Table::BLOBS, b"blob").await.unwrap(), Some(b(b"first")), "first writer wins");
    }
}
