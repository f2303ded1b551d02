//! The object-storage engine and the cache layer on in-process stores
//! (`objectstore+memory:`, `objectstore+file:`): the whole engine contract
//! under both consistency rules, address parsing, and the cache's rules.
//! `garage.rs` runs the same contract on a real Garage cluster.
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use bytes::Bytes;
use castore::{
    Error,
    kv::{
        CacheStore, Consistency, KvStore, MemoryStore, ObjectStoreKv, Table,
        contract::{self, Scale},
        open_url,
    },
};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};

fn open(addr: &str) -> Arc<dyn KvStore> {
    open_url(&url::Url::parse(addr).unwrap()).unwrap().expect("an engine address")
}

fn refused(addr: &str) -> String {
    match open_url(&url::Url::parse(addr).unwrap()) {
        Err(Error::InvalidRequest(msg)) => msg,
        Err(e) => panic!("{addr}: unexpected error {e}"),
        Ok(_) => panic!("{addr} was accepted"),
    }
}

/// A fresh address per test: `objectstore+memory:` stores are shared per
/// address within the process.
fn memory(name: &str, options: &str) -> String {
    format!("objectstore+memory:///{name}{options}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_with_conditional_writes_keeps_the_contract() {
    let addr = memory("conditional", "");
    let kv = ObjectStoreKv::open(&url::Url::parse(&addr).unwrap()).unwrap();
    assert_eq!(kv.consistency().await.unwrap(), Consistency::Conditional);
    contract::all(open(&addr), Scale::FULL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_with_last_writer_wins_keeps_the_contract_within_a_process() {
    let addr = memory("lww", "?conditional=false");
    let kv = ObjectStoreKv::open(&url::Url::parse(&addr).unwrap()).unwrap();
    assert_eq!(kv.consistency().await.unwrap(), Consistency::LastWriterWins);
    contract::all(open(&addr), Scale::FULL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_files_keep_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("objectstore+file://{}", dir.path().join("objects").display());
    contract::all(open(&addr), Scale::FULL).await;
    // One object per record, named by table and hex key.
    let tag = dir.path().join("objects/test_mutable/k746167");
    assert!(!tag.exists(), "the deleted tag is gone");
    assert!(dir.path().join("objects/test_mutable/k7461672f6e65696768626f7572").is_file());
    assert!(dir.path().join("objects/chunks").read_dir().unwrap().count() > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_layer_keeps_the_contract() {
    let far = memory("cache-far", "");
    let addr = format!("cache:?near=memory:&far={}&immutable=test_records", far.replace('&', "%26"));
    contract::all(open(&addr), Scale::FULL).await;
}

/// One address is one store within a process; another address, another.
#[tokio::test]
async fn one_address_one_store() {
    let a = open(&memory("shared", ""));
    let b = open(&memory("shared", ""));
    let other = open(&memory("other", ""));
    let t = Table::named("test_share");
    a.put(t, vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))]).await.unwrap();
    assert_eq!(b.get(t, b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(other.get(t, b"k").await.unwrap(), None);
}

/// A tombstone is an object, yet absent to every read; an object that is
/// not a record is an error, not a value.
#[tokio::test]
async fn tombstones_are_absent_and_strangers_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Local files use last-writer-wins (real deletes): use memory for tombstones.
    let kv = open(&memory("tombstones", ""));
    let t = Table::named("test_tomb");
    assert_eq!(kv.compare_and_swap(t, "a".into(), None, Some("1".into())).await.unwrap(), Ok(()));
    assert_eq!(kv.compare_and_swap(t, "a".into(), Some("1".into()), None).await.unwrap(), Ok(()));
    assert_eq!(kv.get(t, b"a").await.unwrap(), None);
    assert!(!kv.contains(t, b"a").await.unwrap());
    assert!(kv.scan(t).try_collect::<Vec<_>>().await.unwrap().is_empty());
    assert!(kv.scan_prefix(t, Bytes::new()).try_collect::<Vec<_>>().await.unwrap().is_empty());
    assert_eq!(kv.compare_and_swap(t, "a".into(), None, Some("2".into())).await.unwrap(), Ok(()));
    assert_eq!(kv.get(t, b"a").await.unwrap().as_deref(), Some(&b"2"[..]));

    let files = dir.path().join("objects");
    let kv = open(&format!("objectstore+file://{}", files.display()));
    std::fs::create_dir_all(files.join("test_strange")).unwrap();
    std::fs::write(files.join("test_strange/k00"), b"no envelope").unwrap();
    std::fs::write(files.join("test_strange/README"), b"not a record").unwrap();
    let t = Table::named("test_strange");
    assert!(matches!(kv.get(t, b"\x00").await, Err(Error::Storage(_))));
    let scanned: Vec<_> = kv.scan(t).collect::<Vec<_>>().await;
    assert!(matches!(scanned[..], [Err(Error::Storage(_))]), "{scanned:?}");
}

#[tokio::test]
async fn addresses_are_checked() {
    for (addr, needle) in [
        ("objectstore+s3:///prefix", "name the bucket"),
        ("objectstore+s3://b/p?timeout=soon", "timeout=\"soon\""),
        ("objectstore+s3://b/p?tiemout=5s", "unknown option \"tiemout\""),
        ("objectstore+s3://b/p?conditional=maybe", "auto, true or false"),
        ("objectstore+file:relative", "absolute path"),
        ("objectstore+file:///tmp/x?conditional=true", "cannot enforce"),
        ("objectstore+ftp://b", "unknown object store"),
        ("cache:?near=memory:", "near= and far="),
        ("cache:?near=memory:&far=grpc+http://127.0.0.1:1", "not a storage engine"),
        ("cache:?near=memory:&far=memory:&colour=blue", "unknown option \"colour\""),
    ] {
        let msg = refused(addr);
        assert!(msg.contains(needle), "{addr}: {msg}");
    }
    let msg = refused("objectstore+s3://KEY:SECRET@b/p?bogus=1");
    assert!(!msg.contains("SECRET"), "secrets stay out of messages: {msg}");

    // S3 addresses open without a request: the client is built lazily.
    open("objectstore+s3://bucket/a/b?endpoint=http://127.0.0.1:1&region=garage&timeout=1s&retries=0");
    open("objectstore+s3://K:S@bucket?region=eu-west-1&virtual_hosted=true&retry_timeout=2m&concurrency=4");
}

/// The documented spelling: a nested address whose own `&` is `%26`, its
/// `+` left alone; the fully encoded form means the same.
#[tokio::test]
async fn cache_addresses_nest() {
    let dir = tempfile::tempdir().unwrap();
    let near = dir.path().join("near.redb");
    let far = dir.path().join("far");
    let plain = format!(
        "cache:?near=redb:{}&far=objectstore+file://{}?timeout=3s%26retries=2&immutable=pathinfo",
        near.display(),
        far.display()
    );
    let encoded = format!(
        "cache:?near=redb%3A{}&far=objectstore%2Bfile%3A%2F%2F{}%3Ftimeout%3D3s%26retries%3D2&immutable=pathinfo",
        near.display(),
        far.display()
    );
    let t = Table::named("pathinfo");
    open(&plain).put(t, vec![(Bytes::from_static(b"p"), Bytes::from_static(b"info"))]).await.unwrap();
    let again = open(&encoded);
    assert_eq!(again.get(t, b"p").await.unwrap().as_deref(), Some(&b"info"[..]));
    assert!(far.join("pathinfo").is_dir(), "far holds it");
    assert!(near.is_file(), "near is the redb file");
}

/// A far engine that can be switched off, for the cache's failure rules.
struct Switchable {
    inner: Arc<dyn KvStore>,
    down: AtomicBool,
}

impl Switchable {
    fn check(&self) -> castore::Result<()> {
        if self.down.load(Ordering::SeqCst) { Err(Error::Storage("far is down".into())) } else { Ok(()) }
    }
}

#[async_trait]
impl KvStore for Switchable {
    async fn get(&self, table: Table, key: &[u8]) -> castore::Result<Option<Bytes>> {
        self.check()?;
        self.inner.get(table, key).await
    }
    async fn contains(&self, table: Table, key: &[u8]) -> castore::Result<bool> {
        self.check()?;
        self.inner.contains(table, key).await
    }
    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> castore::Result<()> {
        self.check()?;
        self.inner.put(table, records).await
    }
    fn scan(&self, table: Table) -> BoxStream<'static, castore::Result<(Bytes, Bytes)>> {
        self.inner.scan(table)
    }
    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, castore::Result<(Bytes, Bytes)>> {
        self.inner.scan_prefix(table, prefix)
    }
    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> castore::Result<Result<(), Option<Bytes>>> {
        self.check()?;
        self.inner.compare_and_swap(table, key, current, new).await
    }
}

/// Far hits fill near; with far gone, cached records still read and
/// mutable ones fail; absences are never cached.
#[tokio::test]
async fn cache_serves_immutable_records_without_far() {
    let far_data = open(&memory("cache-rules", ""));
    let far = Arc::new(Switchable { inner: far_data.clone(), down: AtomicBool::new(false) });
    let near = Arc::new(MemoryStore::new());
    let cache = CacheStore::new(near.clone(), far.clone());
    let tags = Table::named("test_tags");
    let chunk = Bytes::from_static(b"chunk bytes");
    let digest = castore::B3Digest::of(&chunk).to_bytes();

    // Written by another replica: only far has it.
    far_data.put(Table::CHUNKS, vec![(digest.clone(), chunk.clone())]).await.unwrap();
    far_data.put(Table::DIRECTORIES, vec![(Bytes::from_static(b"d"), Bytes::from_static(b"dir"))]).await.unwrap();
    assert_eq!(far_data.compare_and_swap(tags, "latest".into(), None, Some("v1".into())).await.unwrap(), Ok(()));
    assert!(!near.contains(Table::CHUNKS, &digest).await.unwrap());
    assert_eq!(cache.get(Table::CHUNKS, &digest).await.unwrap(), Some(chunk.clone()));
    assert_eq!(near.get(Table::CHUNKS, &digest).await.unwrap(), Some(chunk.clone()), "a far hit fills near");
    assert_eq!(cache.get(tags, b"latest").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(near.get(tags, b"latest").await.unwrap(), None, "mutable records are never cached");
    assert_eq!(cache.get(Table::CHUNKS, b"missing").await.unwrap(), None);
    // Written through the cache: far, then near.
    cache.put(Table::BLOBS, vec![(Bytes::from_static(b"b"), Bytes::from_static(b"list"))]).await.unwrap();
    assert!(far_data.contains(Table::BLOBS, b"b").await.unwrap() && near.contains(Table::BLOBS, b"b").await.unwrap());

    far.down.store(true, Ordering::SeqCst);
    assert_eq!(cache.get(Table::CHUNKS, &digest).await.unwrap(), Some(chunk), "served from near");
    assert!(cache.contains(Table::BLOBS, b"b").await.unwrap());
    assert!(matches!(cache.get(tags, b"latest").await, Err(Error::Storage(_))), "mutable reads need far");
    assert!(matches!(cache.get(Table::DIRECTORIES, b"d").await, Err(Error::Storage(_))), "never read: not cached");
    assert!(cache.compare_and_swap(tags, "latest".into(), Some("v1".into()), None).await.is_err());
    assert!(cache.put(Table::CHUNKS, vec![(Bytes::from_static(b"x"), Bytes::from_static(b"y"))]).await.is_err());
    assert!(!near.contains(Table::CHUNKS, b"x").await.unwrap(), "near never holds what far lacks");
    // Absences were not cached: the missing chunk is found once far has it.
    far.down.store(false, Ordering::SeqCst);
    far_data.put(Table::CHUNKS, vec![(Bytes::from_static(b"missing"), Bytes::from_static(b"now"))]).await.unwrap();
    assert_eq!(cache.get(Table::CHUNKS, b"missing").await.unwrap().as_deref(), Some(&b"now"[..]));
}
