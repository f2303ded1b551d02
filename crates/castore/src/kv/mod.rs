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
    /// call become visible in the order given, and records of a call become
    /// visible before those of any later call.
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
    use std::{collections::BTreeMap, sync::Arc};

    use futures::{StreamExt, TryStreamExt};

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

    fn b(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    /// `scan_prefix` in the order it streams.
    async fn scan_prefix_all(kv: &dyn KvStore, table: Table, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        kv.scan_prefix(table, b(prefix)).try_collect().await.unwrap()
    }

    /// The value a test stores under `key`, so a scan that pairs keys with
    /// the wrong values is caught.
    fn value_of(key: &[u8]) -> Bytes {
        [b"value of ", key].concat().into()
    }

    /// Prefix scans: ascending byte order, exactly the keys with the prefix
    /// (empty prefix: all), across batch boundaries, with keys that are
    /// prefixes of each other and 0x00/0xff bytes around the bounds.
    async fn check_scan_prefix(kv: &dyn KvStore) {
        let table = Table::named("test_prefix");
        assert!(scan_prefix_all(kv, table, b"").await.is_empty(), "a table never written is empty");
        assert!(scan_prefix_all(kv, table, b"a").await.is_empty());

        let mut keys: Vec<Vec<u8>> = [
            &b""[..],
            b"\x00",
            b"a",
            b"a\x00",
            b"ab",
            b"ab\x00",
            b"abc",
            b"abcd",
            b"abd",
            b"ab\xfe",
            b"ab\xff",
            b"ab\xff\x00",
            b"ab\xff\xff",
            b"ac",
            b"b",
            b"\xfe\xff",
            b"\xff",
            b"\xff\x00",
            b"\xff\xff",
            b"\xff\xff\xff",
        ]
        .iter()
        .map(|k| k.to_vec())
        .collect();
        // Two runs longer than a scan batch (1024 for the embedded engine),
        // one of exactly a batch, with neighbours on both sides.
        keys.extend((0..2500u32).map(|i| format!("p/{i:05}").into_bytes()));
        keys.extend((0..1024u32).map(|i| format!("q/{i:04}").into_bytes()));
        keys.extend([&b"p"[..], b"p.", b"p0", b"q", b"q.", b"q0"].iter().map(|k| k.to_vec()));
        // Put in an order that is not the sorted one, a few per call.
        keys.reverse();
        for group in keys.chunks(97) {
            kv.put(table, group.iter().map(|k| (b(k), value_of(k))).collect()).await.unwrap();
        }
        keys.sort();

        let prefixes: [&[u8]; 21] = [
            b"",
            b"\x00",
            b"a",
            b"ab",
            b"abc",
            b"abcd",
            b"abcde",
            b"ab\xff",
            b"ab\xff\xff",
            b"ab\xff\xff\xff",
            b"aa",
            b"\xfe",
            b"\xff",
            b"\xff\xff",
            b"\xff\xff\xff\xff",
            b"p",
            b"p/",
            b"p/0249",
            b"q/",
            b"zz",
            b"\x01",
        ];
        for prefix in prefixes {
            let expected: Vec<(Bytes, Bytes)> =
                keys.iter().filter(|k| k.starts_with(prefix)).map(|k| (b(k), value_of(k))).collect();
            let scanned = scan_prefix_all(kv, table, prefix).await;
            assert_eq!(scanned.len(), expected.len(), "prefix {prefix:x?}");
            assert!(scanned == expected, "prefix {prefix:x?}: wrong records or order");
        }
        assert_eq!(scan_prefix_all(kv, table, b"q/").await.len(), 1024);
        assert_eq!(scan_prefix_all(kv, table, b"p/").await.len(), 2500);
        assert!(scan_prefix_all(kv, Table::named("other_prefix"), b"").await.is_empty());
    }

    /// Compare-and-swap: create when absent, conflicts report the actual
    /// value and change nothing, replace, delete, and `set`.
    async fn check_compare_and_swap(kv: &dyn KvStore) {
        let table = Table::named("test_mutable");
        let key = b(b"tag");
        let cas = |current: Option<&[u8]>, new: Option<&[u8]>| {
            kv.compare_and_swap(table, key.clone(), current.map(b), new.map(b))
        };
        let get = || async { kv.get(table, b"tag").await.unwrap() };
        kv.put(table, vec![(b(b"tag/neighbour"), b(b"n")), (b(b"taf"), b(b"before"))]).await.unwrap();

        // Create when absent; a second create conflicts with what is there.
        assert_eq!(cas(None, Some(b"v1")).await.unwrap(), Ok(()));
        assert_eq!(get().await, Some(b(b"v1")));
        assert_eq!(cas(None, Some(b"v2")).await.unwrap(), Err(Some(b(b"v1"))));
        assert_eq!(cas(Some(b"other"), Some(b"v2")).await.unwrap(), Err(Some(b(b"v1"))));
        assert_eq!(cas(Some(b"other"), None).await.unwrap(), Err(Some(b(b"v1"))));
        assert_eq!(get().await, Some(b(b"v1")), "a conflict changes nothing");

        // Replace; a swap to the same value succeeds and changes nothing.
        assert_eq!(cas(Some(b"v1"), Some(b"v2")).await.unwrap(), Ok(()));
        assert_eq!(get().await, Some(b(b"v2")));
        assert_eq!(cas(Some(b"v2"), Some(b"v2")).await.unwrap(), Ok(()));
        assert_eq!(cas(Some(b"v1"), Some(b"v3")).await.unwrap(), Err(Some(b(b"v2"))));

        // A put on a mutable table only creates.
        kv.put(table, vec![(key.clone(), b(b"put"))]).await.unwrap();
        assert_eq!(get().await, Some(b(b"v2")));

        // Delete: absent for get, contains and both scans.
        assert_eq!(cas(Some(b"v2"), None).await.unwrap(), Ok(()));
        assert_eq!(get().await, None);
        assert!(!kv.contains(table, b"tag").await.unwrap());
        assert!(!scan_all(kv, table).await.contains_key(&key));
        let listed: Vec<Bytes> = scan_prefix_all(kv, table, b"ta").await.into_iter().map(|(k, _)| k).collect();
        assert_eq!(listed, [b(b"taf"), b(b"tag/neighbour")]);
        assert_eq!(cas(Some(b"v2"), None).await.unwrap(), Err(None), "deleting the absent conflicts");
        assert_eq!(cas(None, None).await.unwrap(), Ok(()), "absent stays absent");
        assert_eq!(get().await, None);

        // An empty value is a value, not an absent record.
        assert_eq!(cas(None, Some(b"")).await.unwrap(), Ok(()));
        assert_eq!(get().await, Some(Bytes::new()));
        assert!(kv.contains(table, b"tag").await.unwrap());
        assert_eq!(cas(None, Some(b"v4")).await.unwrap(), Err(Some(Bytes::new())));
        assert_eq!(cas(Some(b""), None).await.unwrap(), Ok(()));
        assert_eq!(get().await, None);

        // `set`: whatever the record holds, including nothing.
        set(kv, table, key.clone(), Some(b(b"s1"))).await.unwrap();
        set(kv, table, key.clone(), Some(b(b"s2"))).await.unwrap();
        assert_eq!(get().await, Some(b(b"s2")));
        set(kv, table, key.clone(), None).await.unwrap();
        assert_eq!(get().await, None);
        set(kv, table, key.clone(), None).await.unwrap();
        assert_eq!(get().await, None);

        // Other keys and tables were never touched.
        assert_eq!(kv.get(table, b"tag/neighbour").await.unwrap(), Some(b(b"n")));
        assert_eq!(kv.get(table, b"taf").await.unwrap(), Some(b(b"before")));
        assert!(kv.get(Table::named("other_mutable"), b"tag").await.unwrap().is_none());
    }

    fn counter(value: Option<&Bytes>) -> u64 {
        value.map_or(0, |v| u64::from_be_bytes(v[..].try_into().expect("an 8-byte counter")))
    }

    /// Many tasks increment one counter with retry loops while putting to an
    /// immutable table in between: no increment is lost, and the put keeps
    /// its first writer's value.
    async fn check_concurrent_compare_and_swap(kv: Arc<dyn KvStore>) {
        const TASKS: u64 = 16;
        const INCREMENTS: u64 = 50;
        let table = Table::named("test_counter");
        let immutable = Table::named("test_first_writer");
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let kv = kv.clone();
                tokio::spawn(async move {
                    let mut seen = None;
                    for i in 0..INCREMENTS {
                        let mut current = kv.get(table, b"counter").await.unwrap();
                        loop {
                            // Let the others read the same value meanwhile.
                            tokio::task::yield_now().await;
                            let next = Bytes::copy_from_slice(&(counter(current.as_ref()) + 1).to_be_bytes());
                            match kv.compare_and_swap(table, b(b"counter"), current, Some(next)).await.unwrap() {
                                Ok(()) => break,
                                Err(actual) => current = actual,
                            }
                        }
                        let record = (b(b"shared"), Bytes::from(format!("task {task} put {i}")));
                        kv.put(immutable, vec![record]).await.unwrap();
                        let first = kv.get(immutable, b"shared").await.unwrap().expect("put returned");
                        assert_eq!(*seen.get_or_insert_with(|| first.clone()), first, "a later put replaced it");
                    }
                    seen.expect("it put")
                })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap());
        }
        assert_eq!(counter(kv.get(table, b"counter").await.unwrap().as_ref()), TASKS * INCREMENTS);
        // Every put after the first was a no-op.
        let shared: Vec<_> = scan_prefix_all(&*kv, immutable, b"").await;
        assert_eq!(shared.len(), 1);
        let first = &shared[0].1;
        assert!(first.ends_with(b" put 0"), "the first put wins: {first:?}");
        assert!(seen.iter().all(|s| s == first), "every task saw the first put's value");
    }

    #[tokio::test]
    async fn memory_tables_and_scan() {
        check(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_scan_prefix_and_compare_and_swap() {
        let kv = MemoryStore::new();
        check_scan_prefix(&kv).await;
        check_compare_and_swap(&kv).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_concurrent_compare_and_swap() {
        check_concurrent_compare_and_swap(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn embedded_tables_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        check(&EmbeddedStore::open(&dir.path().join("kv.redb")).unwrap()).await;
    }

    #[tokio::test]
    async fn embedded_scan_prefix_and_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedStore::open(&dir.path().join("kv.redb")).unwrap();
        check_scan_prefix(&kv).await;
        check_compare_and_swap(&kv).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded_concurrent_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        check_concurrent_compare_and_swap(Arc::new(EmbeddedStore::open(&dir.path().join("kv.redb")).unwrap())).await;
    }

    /// Chunks are immutable: no prefix scans, no compare-and-swap, in
    /// either engine.
    #[tokio::test]
    async fn chunks_refuse_mutation() {
        let dir = tempfile::tempdir().unwrap();
        check_chunks_refuse_mutation(&EmbeddedStore::open(&dir.path().join("kv.redb")).unwrap()).await;
        check_chunks_refuse_mutation(&MemoryStore::new()).await;
    }

    async fn check_chunks_refuse_mutation(kv: &dyn KvStore) {
        let data = b(b"a chunk");
        let digest = crate::B3Digest::of(&data).to_bytes();
        kv.put(Table::CHUNKS, vec![(digest.clone(), data.clone())]).await.unwrap();
        for new in [None, Some(b(b"other"))] {
            let refused = kv.compare_and_swap(Table::CHUNKS, digest.clone(), Some(data.clone()), new).await;
            assert!(matches!(refused, Err(crate::Error::InvalidRequest(_))), "{refused:?}");
        }
        let scanned: Vec<_> = kv.scan_prefix(Table::CHUNKS, Bytes::new()).collect().await;
        assert!(matches!(scanned[..], [Err(crate::Error::InvalidRequest(_))]), "{scanned:?}");
        assert_eq!(kv.get(Table::CHUNKS, &digest).await.unwrap(), Some(data));
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
