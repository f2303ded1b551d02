//! The object-storage engine on a real Garage cluster (3 nodes on loopback,
//! started by `testkit::garage`, which installs Garage the first time): the
//! engine contract, what Garage does with conditional writes, two clients
//! sharing a bucket, a killed node, and the cache layer outliving the
//! cluster.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use castore::{
    B3Digest, BlobService,
    kv::{
        CacheStore, Consistency, KvStore, ObjectStoreKv, Table,
        contract::{self, Scale},
        open_url,
    },
};
use object_store::{ObjectStore, PutMode, PutPayload, UpdateVersion, aws::AmazonS3Builder, path::Path};
use testkit::garage::Cluster;

fn url(addr: &str) -> url::Url {
    url::Url::parse(addr).unwrap()
}

fn open(addr: &str) -> Arc<dyn KvStore> {
    open_url(&url(addr)).unwrap().expect("an engine address")
}

async fn cluster(nodes: usize) -> Cluster {
    tokio::task::spawn_blocking(move || Cluster::start(nodes)).await.unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_on_garage() {
    let garage = cluster(3).await;
    let addr = garage.bucket_url("contract");
    contract::all(open(&addr), Scale::REMOTE).await;
    // Garage ignores conditional writes (below): the probe noticed.
    let kv = ObjectStoreKv::open(&url(&addr)).unwrap();
    assert_eq!(kv.consistency().await.unwrap(), Consistency::LastWriterWins);
}

/// Garage 2.5 accepts `If-None-Match: *` and `If-Match` on PUT and ignores
/// them. If this starts failing, Garage enforces them now: conditional=auto
/// will pick that up, and the module docs should say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garage_ignores_conditional_writes() {
    let garage = cluster(3).await;
    let (key, secret) = garage.credentials();
    let s3 = AmazonS3Builder::new()
        .with_bucket_name(garage.bucket())
        .with_endpoint(garage.s3_endpoint(0))
        .with_region(testkit::garage::REGION)
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .with_allow_http(true)
        .build()
        .unwrap();
    let path = Path::from("probe/object");
    let first = s3.put_opts(&path, PutPayload::from_static(b"one"), PutMode::Create.into()).await.unwrap();
    let second = s3.put_opts(&path, PutPayload::from_static(b"two"), PutMode::Create.into()).await;
    assert!(second.is_ok(), "Garage refused a second create: {second:?}");
    let stale = UpdateVersion { e_tag: first.e_tag.clone(), version: None };
    let stale_update = s3.put_opts(&path, PutPayload::from_static(b"three"), PutMode::Update(stale).into()).await;
    assert!(stale_update.is_ok(), "Garage refused an update with a stale etag: {stale_update:?}");
    let got = s3.get_opts(&path, Default::default()).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"three", "every conditional write replaced the object");
}

/// Two clients on different nodes (two replicas) share one prefix: what one
/// writes, the other reads at once; puts keep the first writer; a
/// compare-and-swap from a stale value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_share_a_bucket() {
    let garage = cluster(3).await;
    let a = open(&garage.bucket_url_via(0, "shared"));
    let b2 = open(&garage.bucket_url_via(1, "shared"));
    let tags = Table::named("oci-tags");
    let paths = Table::named("pathinfo");

    a.put(paths, vec![(b("p1"), b("first"))]).await.unwrap();
    b2.put(paths, vec![(b("p1"), b("second"))]).await.unwrap();
    assert_eq!(b2.get(paths, b"p1").await.unwrap(), Some(b("first")));
    assert_eq!(a.compare_and_swap(tags, b("latest"), None, Some(b("d1"))).await.unwrap(), Ok(()));
    assert_eq!(b2.get(tags, b"latest").await.unwrap(), Some(b("d1")), "read after write, across nodes");
    assert_eq!(b2.compare_and_swap(tags, b("latest"), Some(b("d1")), Some(b("d2"))).await.unwrap(), Ok(()));
    assert_eq!(
        a.compare_and_swap(tags, b("latest"), Some(b("d1")), Some(b("d3"))).await.unwrap(),
        Err(Some(b("d2"))),
        "a stale swap is refused"
    );
    assert_eq!(a.compare_and_swap(tags, b("latest"), Some(b("d2")), None).await.unwrap(), Ok(()));
    assert_eq!(b2.get(tags, b"latest").await.unwrap(), None);
    let chunk = b("shared chunk");
    let digest = B3Digest::of(&chunk).to_bytes();
    b2.put(Table::CHUNKS, vec![(digest.clone(), chunk.clone())]).await.unwrap();
    assert_eq!(a.get(Table::CHUNKS, &digest).await.unwrap(), Some(chunk));
}

/// Bytes that differ per seed and do not repeat.
fn noise(seed: u64, len: usize) -> Bytes {
    let mut out = vec![0; len];
    testkit::Rng::new(seed).fill(&mut out);
    out.into()
}

/// Reads everything `written` holds and writes one more record, timing it.
async fn read_back(kv: &dyn KvStore, blobs: &dyn BlobService, blob: &B3Digest, data: &Bytes, after: &str) -> Duration {
    let started = Instant::now();
    let records = Table::named("test_records");
    for i in 0..20 {
        assert_eq!(kv.get(records, format!("r{i}").as_bytes()).await.unwrap(), Some(b(&format!("v{i}"))));
    }
    let mut read = Vec::new();
    let mut reader = blobs.open_read(blob).await.unwrap().expect("the blob");
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut read).await.unwrap();
    assert!(read == *data, "the blob changed");
    kv.put(records, vec![(b(after), b("written"))]).await.unwrap();
    started.elapsed()
}

/// With one of three nodes hung (SIGSTOP: its peers notice only after four
/// missed pings, up to ~70 s, and a request that waits on it stalls until
/// then) and then with one killed (noticed in seconds), everything written
/// before reads back through a survivor and new writes succeed: the
/// client's timeouts and retries ride out the stall instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_survive_a_hung_or_killed_node() {
    let mut garage = cluster(3).await;
    let addr = garage.bucket_url_via(0, "kill");
    let kv = open(&addr);
    let blobs = castore::blob_service_from_url(&addr).unwrap();
    let data = noise(7, 5 << 20);
    let blob = blobs.put_bytes(data.clone(), None).await.unwrap();
    let records = Table::named("test_records");
    kv.put(records, (0..20).map(|i| (b(&format!("r{i}")), b(&format!("v{i}")))).collect()).await.unwrap();
    assert_eq!(kv.compare_and_swap(records, b("tag"), None, Some(b("t1"))).await.unwrap(), Ok(()));

    garage.freeze_node(1);
    let hung = read_back(&*kv, &*blobs, &blob, &data, "while hung").await;
    eprintln!("with node 1 hung: {hung:?}");
    assert!(hung < Duration::from_secs(150), "{hung:?}");
    garage.thaw_node(1);

    garage.stop_node(2);
    let killed = read_back(&*kv, &*blobs, &blob, &data, "after the kill").await;
    eprintln!("with node 2 killed: {killed:?}");
    assert!(killed < Duration::from_secs(60), "{killed:?}");
    assert_eq!(kv.compare_and_swap(records, b("tag"), Some(b("t1")), Some(b("t2"))).await.unwrap(), Ok(()));
    // The other survivor sees the writes made meanwhile.
    let via_1 = open(&garage.bucket_url_via(1, "kill"));
    assert_eq!(via_1.get(records, b"tag").await.unwrap(), Some(b("t2")));
    assert_eq!(via_1.get(records, b"while hung").await.unwrap(), Some(b("written")));
    assert_eq!(via_1.get(records, b"after the kill").await.unwrap(), Some(b("written")));
}

/// A replica's cache (near: a redb file) keeps serving the immutable
/// records it has read or written once the whole cluster is gone; mutable
/// records, never cached, fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_outlives_the_cluster() {
    let garage = cluster(3).await;
    let dir = tempfile::tempdir().unwrap();
    let far = format!("{}&timeout=1s&connect_timeout=1s&retries=1&retry_timeout=2s", garage.bucket_url("cached"));
    let cache_addr = format!(
        "cache:?near=redb:{}&far={}&immutable=pathinfo",
        dir.path().join("near.redb").display(),
        far.replace('&', "%26")
    );
    let cache = open(&cache_addr);
    let other_replica = open(&far);
    let tags = Table::named("oci-tags");
    let paths = Table::named("pathinfo");

    let written = noise(1, 100_000);
    let written_digest = B3Digest::of(&written).to_bytes();
    cache.put(Table::CHUNKS, vec![(written_digest.clone(), written.clone())]).await.unwrap();
    let elsewhere = noise(2, 100_000);
    let elsewhere_digest = B3Digest::of(&elsewhere).to_bytes();
    other_replica.put(Table::CHUNKS, vec![(elsewhere_digest.clone(), elsewhere.clone())]).await.unwrap();
    other_replica.put(paths, vec![(b("path"), b("info"))]).await.unwrap();
    assert_eq!(other_replica.compare_and_swap(tags, b("latest"), None, Some(b("d1"))).await.unwrap(), Ok(()));
    assert_eq!(cache.get(Table::CHUNKS, &elsewhere_digest).await.unwrap(), Some(elsewhere.clone()));
    assert_eq!(cache.get(paths, b"path").await.unwrap(), Some(b("info")));
    assert_eq!(cache.get(tags, b"latest").await.unwrap(), Some(b("d1")));

    tokio::task::spawn_blocking(move || drop(garage)).await.unwrap();

    // Also through a fresh handle on the same files, as after a restart.
    let near_only = CacheStore::new(open(&format!("redb:{}", dir.path().join("near.redb").display())), open(&far));
    for kv in [&cache, &(Arc::new(near_only) as Arc<dyn KvStore>)] {
        assert_eq!(kv.get(Table::CHUNKS, &written_digest).await.unwrap(), Some(written.clone()));
        assert_eq!(kv.get(Table::CHUNKS, &elsewhere_digest).await.unwrap(), Some(elsewhere.clone()));
        assert!(kv.contains(Table::CHUNKS, &elsewhere_digest).await.unwrap());
    }
    assert_eq!(cache.get(paths, b"path").await.unwrap(), Some(b("info")));
    let started = Instant::now();
    assert!(cache.get(tags, b"latest").await.is_err(), "mutable records need the cluster");
    assert!(cache.compare_and_swap(tags, b("latest"), Some(b("d1")), None).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(20), "the short timeouts apply: {:?}", started.elapsed());
}
