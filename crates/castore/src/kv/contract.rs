//! The [`KvStore`] contract as executable checks, run against every engine
//! (memory, embedded, object storage, the cache layer) by their tests, so
//! one suite says what an engine must do. Each check uses its own tables;
//! run them on a fresh engine (or a fresh prefix of a shared one).
//!
//! Public only so the integration tests of this and other crates reach it.
use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{KvStore, Table, set};

/// How many records the bulk checks write: enough to cross every engine's
/// batch and page boundaries (redb scans 1024 at a time, S3 lists 1000).
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Records of one put call in [`tables_and_scan`].
    pub one_call: u32,
    /// Chunks of one put call in [`tables_and_scan`].
    pub chunks: u32,
    /// Keys of the long run in [`scan_prefix`].
    pub run: u32,
    /// Keys of the run in [`scan_prefix`] exactly one engine batch long.
    pub batch: u32,
    /// Increments per task in [`concurrent_compare_and_swap`].
    pub increments: u64,
}

impl Scale {
    /// For engines in process: crosses redb's 1024-record scan batches.
    pub const FULL: Scale = Scale { one_call: 2500, chunks: 1100, run: 2500, batch: 1024, increments: 50 };
    /// For remote object storage (a write takes milliseconds): crosses S3's
    /// 1000-key listing pages.
    pub const REMOTE: Scale = Scale { one_call: 1001, chunks: 300, run: 1001, batch: 1000, increments: 10 };
}

/// Every check, in turn.
pub async fn all(kv: Arc<dyn KvStore>, scale: Scale) {
    tables_and_scan(&*kv, scale).await;
    scan_prefix(&*kv, scale).await;
    compare_and_swap(&*kv).await;
    chunks_refuse_mutation(&*kv).await;
    large_records(&*kv).await;
    one_creator_wins(kv.clone()).await;
    concurrent_compare_and_swap(kv, scale).await;
}

async fn scan_all(kv: &dyn KvStore, table: Table) -> BTreeMap<Bytes, Bytes> {
    let records: Vec<_> = kv.scan(table).try_collect().await.unwrap();
    let n = records.len();
    let map: BTreeMap<_, _> = records.into_iter().collect();
    assert_eq!(map.len(), n, "a record was scanned twice");
    map
}

/// Named tables are separate, start empty, keep the first value written,
/// and scan completely across batch boundaries.
pub async fn tables_and_scan(kv: &dyn KvStore, scale: Scale) {
    let table = Table::named("test_records");
    assert!(kv.get(table, b"k").await.unwrap().is_none());
    assert!(scan_all(kv, table).await.is_empty());
    let records: Vec<(Bytes, Bytes)> = (0..scale.one_call)
        .map(|i| (Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(format!("value {i}"))))
        .collect();
    kv.put(table, records.clone()).await.unwrap();
    kv.put(table, vec![(records[0].0.clone(), Bytes::from_static(b"second writer"))]).await.unwrap();
    assert_eq!(kv.get(table, &records[0].0).await.unwrap(), Some(records[0].1.clone()));
    assert!(kv.get(Table::named("other_records"), &records[0].0).await.unwrap().is_none());
    assert_eq!(scan_all(kv, table).await, records.into_iter().collect());

    let chunks: Vec<(Bytes, Bytes)> = (0..scale.chunks)
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
pub async fn scan_prefix(kv: &dyn KvStore, scale: Scale) {
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
    keys.extend((0..scale.run).map(|i| format!("p/{i:05}").into_bytes()));
    keys.extend((0..scale.batch).map(|i| format!("q/{i:04}").into_bytes()));
    keys.extend([&b"p"[..], b"p.", b"p0", b"q", b"q.", b"q0"].iter().map(|k| k.to_vec()));
    // Put in an order that is not the sorted one, a few per call, several
    // calls at once.
    keys.reverse();
    futures::stream::iter(keys.chunks(97))
        .for_each_concurrent(8, |group| async move {
            kv.put(table, group.iter().map(|k| (b(k), value_of(k))).collect()).await.unwrap();
        })
        .await;
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
    assert_eq!(scan_prefix_all(kv, table, b"q/").await.len(), scale.batch as usize);
    assert_eq!(scan_prefix_all(kv, table, b"p/").await.len(), scale.run as usize);
    assert!(scan_prefix_all(kv, Table::named("other_prefix"), b"").await.is_empty());
}

/// Compare-and-swap: create when absent, conflicts report the actual
/// value and change nothing, replace, delete, and `set`.
pub async fn compare_and_swap(kv: &dyn KvStore) {
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

    // A put creates a deleted record again, once.
    kv.put(table, vec![(key.clone(), b(b"again"))]).await.unwrap();
    kv.put(table, vec![(key.clone(), b(b"and again"))]).await.unwrap();
    assert_eq!(get().await, Some(b(b"again")));
    assert_eq!(cas(Some(b"again"), None).await.unwrap(), Ok(()));
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
pub async fn concurrent_compare_and_swap(kv: Arc<dyn KvStore>, scale: Scale) {
    const TASKS: u64 = 16;
    let increments = scale.increments;
    let table = Table::named("test_counter");
    let immutable = Table::named("test_first_writer");
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let mut seen = None;
                for i in 0..increments {
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
    assert_eq!(counter(kv.get(table, b"counter").await.unwrap().as_ref()), TASKS * increments);
    // Every put after the first was a no-op.
    let shared: Vec<_> = scan_prefix_all(&*kv, immutable, b"").await;
    assert_eq!(shared.len(), 1);
    let first = &shared[0].1;
    assert!(first.ends_with(b" put 0"), "the first put wins: {first:?}");
    assert!(seen.iter().all(|s| s == first), "every task saw the first put's value");
}

/// Chunks are immutable: no prefix scans, no compare-and-swap.
pub async fn chunks_refuse_mutation(kv: &dyn KvStore) {
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

/// Bytes that compress badly and differ per `seed`.
fn noise(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A chunk of the chunker's largest size and a larger record of another
/// table come back byte for byte.
pub async fn large_records(kv: &dyn KvStore) {
    let chunk = noise(1, crate::blob::Chunker::default().max);
    let digest = crate::B3Digest::of(&chunk).to_bytes();
    assert!(!kv.contains(Table::CHUNKS, &digest).await.unwrap());
    kv.put(Table::CHUNKS, vec![(digest.clone(), chunk.clone())]).await.unwrap();
    assert!(kv.contains(Table::CHUNKS, &digest).await.unwrap());
    assert!(kv.get(Table::CHUNKS, &digest).await.unwrap() == Some(chunk), "the chunk changed");

    let table = Table::named("test_large");
    let value = noise(2, 3 << 20);
    kv.put(table, vec![(b(b"big"), value.clone())]).await.unwrap();
    assert!(kv.get(table, b"big").await.unwrap() == Some(value), "the record changed");
}

/// Tasks race to create one record: exactly one wins, and every loser is
/// told the winner's value.
pub async fn one_creator_wins(kv: Arc<dyn KvStore>) {
    const TASKS: usize = 8;
    let table = Table::named("test_race");
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let racers: Vec<_> = (0..TASKS)
        .map(|task| {
            let (kv, start) = (kv.clone(), start.clone());
            tokio::spawn(async move {
                let mine = Bytes::from(format!("task {task}"));
                start.wait().await;
                (mine.clone(), kv.compare_and_swap(table, b(b"tag"), None, Some(mine)).await.unwrap())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for racer in racers {
        outcomes.push(racer.await.unwrap());
    }
    let winners: Vec<&Bytes> = outcomes.iter().filter(|(_, o)| o.is_ok()).map(|(mine, _)| mine).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = winners[0].clone();
    for (_, outcome) in &outcomes {
        if let Err(actual) = outcome {
            assert_eq!(actual.as_ref(), Some(&winner), "a loser is told the winner");
        }
    }
    assert_eq!(kv.get(table, b"tag").await.unwrap(), Some(winner));
}
