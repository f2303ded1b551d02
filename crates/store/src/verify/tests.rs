//! The checks against a store damaged in every way the engine lets a
//! test damage it (records hidden or replaced under the services).
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use bytes::Bytes;
use castore::{
    B3Digest, Directory, Name, Node,
    kv::{MemoryStore, Table},
};
use futures::stream::BoxStream;

use super::*;
use crate::{PathInfo, StorePath, nix32, pathinfo::PATH_INFO};

/// An engine that hides or replaces chosen records of another: the
/// damage a disk or an object store can do, without a way to do it
/// through the services.
struct Damaged {
    inner: Arc<dyn KvStore>,
    hidden: HashSet<(&'static str, Bytes)>,
    replaced: HashMap<(&'static str, Bytes), Bytes>,
}

impl Damaged {
    fn new(inner: Arc<dyn KvStore>) -> Self {
        Self { inner, hidden: HashSet::new(), replaced: HashMap::new() }
    }

    fn hide(mut self, table: Table, key: &[u8]) -> Self {
        self.hidden.insert((table.name(), Bytes::copy_from_slice(key)));
        self
    }

    fn replace(mut self, table: Table, key: &[u8], value: Bytes) -> Self {
        self.replaced.insert((table.name(), Bytes::copy_from_slice(key)), value);
        self
    }

    fn view(&self, table: Table, key: &[u8], value: Option<Bytes>) -> Option<Bytes> {
        let k = (table.name(), Bytes::copy_from_slice(key));
        if self.hidden.contains(&k) {
            return None;
        }
        value.map(|v| self.replaced.get(&k).cloned().unwrap_or(v))
    }
}

#[async_trait]
impl KvStore for Damaged {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.view(table, key, self.inner.get(table, key).await?))
    }

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.view(table, key, self.inner.contains(table, key).await?.then(Bytes::new)).is_some())
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()> {
        self.inner.put(table, records).await
    }

    fn scan(&self, table: Table) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        let records: Vec<Result<(Bytes, Bytes)>> = futures::executor::block_on(self.inner.scan(table).collect());
        let kept: Vec<_> = records
            .into_iter()
            .filter_map(|r| match r {
                Ok((k, v)) => self.view(table, &k, Some(v)).map(|v| Ok((k, v))),
                Err(e) => Some(Err(e)),
            })
            .collect();
        futures::stream::iter(kept).boxed()
    }

    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        self.inner.scan_prefix(table, prefix)
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<std::result::Result<(), Option<Bytes>>> {
        self.inner.compare_and_swap(table, key, current, new).await
    }
}

fn data(len: usize, seed: u32) -> Bytes {
    (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>().into()
}

fn path(seed: u8, name: &str) -> StorePath {
    StorePath::from_parts([seed; 20], name).unwrap()
}

fn dir_node(d: &Directory) -> Node {
    Node::Directory { digest: d.digest(), size: d.size() }
}

/// A small store: `lib` (a tree with a multi-chunk blob and a
/// subdirectory it shares with `app`), `app` (refers to `lib`), `big`
/// (a single multi-chunk file, the one `lib` has too) and `link` (a
/// symlink referring to `big`), every NarHash real.
struct Fixture {
    kv: Arc<dyn KvStore>,
    shared: Directory,
    lib_root: Directory,
    big: B3Digest,
    small: B3Digest,
    lib: StorePath,
    app: StorePath,
    link: StorePath,
}

async fn fixture() -> Fixture {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let store = Store::engine(kv.clone());
    let big = store.blobs.put_bytes(data(3 << 20, 1), None).await.unwrap();
    let small = store.blobs.put_bytes(Bytes::from_static(b"hello\n"), None).await.unwrap();
    let file = |digest, len: usize| Node::File { digest, size: len as u64, executable: false };
    let mut shared = Directory::default();
    shared.add(Name::new("README").unwrap(), file(small, 6)).unwrap();
    let mut lib_root = Directory::default();
    lib_root.add(Name::new("big.dat").unwrap(), file(big, 3 << 20)).unwrap();
    lib_root.add(Name::new("share").unwrap(), dir_node(&shared)).unwrap();
    let mut app_root = Directory::default();
    app_root.add(Name::new("doc").unwrap(), dir_node(&shared)).unwrap();
    app_root.add(Name::new("bin").unwrap(), Node::Symlink { target: "../lib".into() }).unwrap();
    store.directories.put_closure(vec![shared.clone(), lib_root.clone()]).await.unwrap();
    store.directories.put_closure(vec![app_root.clone()]).await.unwrap();

    let (lib, app, big_path, link) = (path(1, "lib"), path(2, "app"), path(3, "big"), path(4, "link"));
    let infos = [
        (lib.clone(), dir_node(&lib_root), vec![]),
        (app.clone(), dir_node(&app_root), vec![lib.clone(), app.clone()]),
        (big_path.clone(), file(big, 3 << 20), vec![]),
        (link.clone(), Node::Symlink { target: "/nix/store/x".into() }, vec![big_path.clone()]),
    ];
    for (store_path, node, references) in infos {
        let (nar_size, nar_sha256) =
            crate::nar::calculate(&node, store.blobs.clone(), store.directories.clone()).await.unwrap();
        let info = PathInfo {
            store_path,
            node,
            references,
            nar_size,
            nar_sha256,
            signatures: vec![],
            deriver: None,
            ca: None,
        };
        store.paths.put(info).await.unwrap();
    }
    Fixture { kv, shared, lib_root, big, small, lib, app, link }
}

async fn check(store: &Store, deep: bool) -> Report {
    let opts = Options { deep, jobs: 4, unreferenced: true };
    verify(store, &opts, &watch::Sender::new(Progress::default())).await.unwrap()
}

/// Problems as (kind code, affected path names), for comparison.
fn found(report: &Report) -> BTreeSet<(&'static str, Vec<String>)> {
    report.problems.iter().map(|p| (p.kind.code(), names(p.paths.iter().map(StorePath::name)))).collect()
}

fn expect(items: &[(&'static str, &[&str])]) -> BTreeSet<(&'static str, Vec<String>)> {
    items.iter().map(|(code, paths)| (*code, names(paths.iter().copied()))).collect()
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = names.map(str::to_owned).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_store_is_clean_and_counted() {
    let f = fixture().await;
    let engine = Store::engine(f.kv.clone());
    let report = check(&engine, false).await;
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!((report.paths, report.directories, report.blobs), (4, 3, 2));
    assert_eq!(report.bytes, (3 << 20) + 6);
    let chunks = engine.blobs.stat(&f.big).await.unwrap().unwrap();
    assert!(chunks.len() > 1, "the big blob has a chunk list");
    let distinct = chunks.iter().map(|c| c.digest).collect::<HashSet<_>>().len() as u64;
    assert_eq!(report.chunks, distinct, "each chunk once, though two entries name the blob");
    assert_eq!(report.unreferenced, Some(Unreferenced::default()));
    assert_eq!((report.bytes_read, report.nars), (0, 0));

    let deep = check(&engine, true).await;
    assert!(deep.is_clean(), "{:?}", deep.problems);
    assert_eq!(deep.nars, 4);
    assert!(deep.bytes_read > 2 * (3 << 20), "blobs and NARs were read: {}", deep.bytes_read);

    // Through the services alone (as through a server): no chunk table,
    // no unreferenced counts, same verdict.
    let services = Store { kv: None, ..engine };
    let report = check(&services, true).await;
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!((report.paths, report.directories, report.blobs, report.nars), (4, 3, 2, 4));
    assert_eq!(report.chunks, distinct, "chunks are stat'ed as blobs");
    assert_eq!(report.unreferenced, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_records_name_every_path_they_break() {
    let f = fixture().await;
    let chunk = Store::engine(f.kv.clone()).blobs.stat(&f.big).await.unwrap().unwrap()[1].digest;
    let damaged = Damaged::new(f.kv.clone())
        .hide(Table::CHUNKS, chunk.as_bytes())
        .hide(Table::DIRECTORIES, f.shared.digest().as_bytes())
        .hide(PATH_INFO, f.lib.digest());
    let store = Store::engine(Arc::new(damaged));
    let report = check(&store, false).await;
    // `lib` has no PathInfo now: `app` refers to it; the shared
    // directory breaks `app` only (nothing lists `lib`), and the chunk
    // `big` (and `lib`, were it listed).
    assert_eq!(
        found(&report),
        expect(&[("missing-reference", &["app"]), ("missing-directory", &["app"]), ("missing-chunk", &["big"])])
    );
    let missing = report.problems.iter().find(|p| p.kind.code() == "missing-chunk").unwrap();
    assert_eq!(missing.kind, ProblemKind::MissingChunk { blob: f.big, chunk });
    assert!(missing.kind.to_string().contains(&chunk.to_string()));
    assert_eq!(report.paths, 3);
    // The hidden directory and the blob only lib reached are unreferenced now.
    assert_eq!(report.unreferenced, Some(Unreferenced { directories: 1, blobs: 0 }));

    // Through the services alone, the same: the recursive Get of `app`'s
    // tree fails at the hidden directory, which is then asked for alone.
    let services = Store { kv: None, ..store };
    let again = check(&services, false).await;
    assert_eq!(found(&again), found(&report));
    assert_eq!(again.unreferenced, None);

    // A missing one-chunk blob, with the engine and through the services.
    let engine = Store::engine(Arc::new(Damaged::new(f.kv.clone()).hide(Table::CHUNKS, f.small.as_bytes())));
    for store in [engine.clone(), Store { kv: None, ..engine }] {
        let report = check(&store, false).await;
        assert_eq!(found(&report), expect(&[("missing-blob", &["app", "lib"])]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_directories_and_sizes() {
    let f = fixture().await;
    // The shared directory's record holds another directory; the lib
    // root's record is not a directory at all.
    let damaged = Damaged::new(f.kv.clone())
        .replace(Table::DIRECTORIES, f.shared.digest().as_bytes(), Directory::default().encode())
        .replace(Table::DIRECTORIES, f.lib_root.digest().as_bytes(), Bytes::from_static(b"\xff\xff not protobuf"));
    let report = check(&Store::engine(Arc::new(damaged)), false).await;
    assert_eq!(found(&report), expect(&[("corrupt-directory", &["app"]), ("corrupt-directory", &["lib"])]));
    assert!(report.problems.iter().any(|p| p.kind.to_string().contains("holds directory")), "{:?}", report.problems);

    // A directory recording a wrong size for its child (stored around
    // the service, which would refuse it), as a path's root.
    let mut wrong = Directory::default();
    wrong.add(Name::new("share").unwrap(), Node::Directory { digest: f.shared.digest(), size: 99 }).unwrap();
    f.kv.put(Table::DIRECTORIES, vec![(wrong.digest().to_bytes(), wrong.encode())]).await.unwrap();
    let bad = PathInfo {
        store_path: path(9, "bad-size"),
        node: Node::Directory { digest: wrong.digest(), size: wrong.size() + 1 },
        references: vec![],
        nar_size: 1,
        nar_sha256: [0; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    };
    let record = Bytes::from(bad.to_proto().encode_to_vec());
    f.kv.put(PATH_INFO, vec![(Bytes::copy_from_slice(bad.store_path.digest()), record)]).await.unwrap();
    let report = check(&Store::engine(f.kv.clone()), false).await;
    assert_eq!(found(&report), expect(&[("child-size", &["bad-size"]), ("root-size", &["bad-size"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_finds_changed_bytes_and_wrong_nar_hashes() {
    let f = fixture().await;
    // A one-chunk blob whose bytes changed: only a deep check can see it.
    let damaged = Damaged::new(f.kv.clone()).replace(Table::CHUNKS, f.small.as_bytes(), Bytes::from_static(b"HELLO\n"));
    let store = Store::engine(Arc::new(damaged));
    assert!(check(&store, false).await.is_clean());
    let report = check(&store, true).await;
    assert_eq!(found(&report), expect(&[("blob-contents", &["app", "lib"])]));
    assert_eq!(report.nars, 2, "broken paths are not rendered");

    // A PathInfo whose NarHash is wrong (a corrupt record that decodes).
    let engine = Store::engine(f.kv.clone());
    let mut info = engine.paths.get(f.link.digest()).await.unwrap().unwrap();
    info.nar_sha256[0] ^= 1;
    let damaged =
        Damaged::new(f.kv.clone()).replace(PATH_INFO, f.link.digest(), Bytes::from(info.to_proto().encode_to_vec()));
    let report = check(&Store::engine(Arc::new(damaged)), true).await;
    assert_eq!(found(&report), expect(&[("nar-mismatch", &["link"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_pathinfo_and_unreferenced_records() {
    let f = fixture().await;
    f.kv.put(PATH_INFO, vec![(Bytes::from_static(&[7; 20]), Bytes::from_static(b"\x0a\x03abc"))]).await.unwrap();
    // A record filed under another path's key.
    let engine = Store::engine(f.kv.clone());
    let app = engine.paths.get(f.app.digest()).await.unwrap().unwrap();
    f.kv.put(PATH_INFO, vec![(Bytes::from_static(&[8; 20]), Bytes::from(app.to_proto().encode_to_vec()))])
        .await
        .unwrap();
    // Leftovers of an interrupted import: a directory and a multi-chunk blob.
    let blob = engine.blobs.put_bytes(data(2 << 20, 7), None).await.unwrap();
    let mut left = Directory::default();
    left.add(Name::new("x").unwrap(), Node::File { digest: blob, size: 2 << 20, executable: false }).unwrap();
    engine.directories.put(left).await.unwrap();

    let report = check(&engine, false).await;
    let by_code: BTreeMap<&str, &Problem> = report.problems.iter().map(|p| (p.kind.code(), p)).collect();
    assert_eq!(by_code.keys().copied().collect::<Vec<_>>(), ["corrupt-pathinfo", "misfiled-pathinfo"]);
    let corrupt = by_code["corrupt-pathinfo"];
    assert!(corrupt.paths.is_empty());
    assert!(corrupt.kind.to_string().contains(&nix32::encode(&[7; 20])), "{}", corrupt.kind);
    assert_eq!(by_code["misfiled-pathinfo"].paths, std::slice::from_ref(&f.app));
    assert_eq!(report.unreferenced, Some(Unreferenced { directories: 1, blobs: 1 }));
}
