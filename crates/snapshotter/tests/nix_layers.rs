//! Nix layers with the real fetcher over an in-memory store: both label
//! forms make their closures present in `<root>/store`; the layer itself
//! gets plain mounts, containers on top get a read-only bind mount per
//! store path; store paths are rooted per snapshot and released once no
//! snapshot roots them (also when a fetch is in flight while a Remove
//! releases a path it needs); state survives a restart.
mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use castore::{BlobService, DirectoryService};
use common::*;
use snapshotter::{FetchFailure, PathFetcher, proto::Mount};
use store::{PathInfo, PathInfoService, StorePath};
use tokio::sync::Notify;
use tonic::Code;

const LAYER: &str = "containerd.io/snapshot/nix-layer";
const STORE_PATH: &str = "containerd.io/snapshot/nix-store-path";
const CLOSURE: &str = "containerd.io/snapshot/nix-closure";
const REF: &str = "containerd.io/snapshot.ref";

/// An in-memory store holding a few paths: `lib` (a directory), `blob`
/// (a single 3 MiB file), `app` (refers to both), `other` (refers to lib),
/// and closure-info paths for app's closure and other's.
struct TestStore {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    paths: Arc<dyn PathInfoService>,
    lib: StorePath,
    blob: StorePath,
    app: StorePath,
    other: StorePath,
    app_info: StorePath,
    other_info: StorePath,
    _trees: tempfile::TempDir,
}

impl TestStore {
    async fn new() -> TestStore {
        let blobs = castore::blob_service_from_url("memory:").unwrap();
        let dirs = castore::directory_service_from_url("memory:").unwrap();
        let paths = store::url::path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
        let trees = tempfile::tempdir().unwrap();
        let sp = |n: u8, name: &str| StorePath::from_parts([n; 20], name).unwrap();
        let (lib, blob, app, other) = (sp(1, "lib"), sp(2, "blob"), sp(3, "app"), sp(4, "other"));
        let abs = |p: &StorePath| p.to_absolute(store::DEFAULT_STORE_DIR);

        let t = trees.path();
        std::fs::create_dir_all(t.join("lib/lib")).unwrap();
        std::fs::write(t.join("lib/lib/libx.so"), b"\x7fELF not really").unwrap();
        std::fs::write(t.join("blob"), (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()).unwrap();
        std::fs::create_dir_all(t.join("app/bin")).unwrap();
        std::fs::write(t.join("app/bin/app"), format!("#!/bin/sh\n# uses {} and {}\n", abs(&lib), abs(&blob))).unwrap();
        std::os::unix::fs::symlink(format!("{}/lib", abs(&lib)), t.join("app/lib")).unwrap();
        std::fs::create_dir_all(t.join("other")).unwrap();
        std::fs::write(t.join("other/uses"), abs(&lib)).unwrap();

        let s = TestStore {
            app_info: sp(0, "x"),
            other_info: sp(0, "x"),
            blobs,
            dirs,
            paths,
            lib,
            blob,
            app,
            other,
            _trees: trees,
        };
        s.put(&s.lib, "lib", &[]).await;
        s.put(&s.blob, "blob", &[]).await;
        s.put(&s.app, "app", &[s.lib.clone(), s.blob.clone()]).await;
        s.put(&s.other, "other", std::slice::from_ref(&s.lib)).await;
        let app_closure = [s.lib.clone(), s.blob.clone(), s.app.clone()];
        let app_info = s.closure_info(&app_closure).await;
        let other_info = s.closure_info(&[s.lib.clone(), s.other.clone()]).await;
        TestStore { app_info, other_info, ..s }
    }

    async fn put(&self, path: &StorePath, tree: &str, references: &[StorePath]) {
        let node = castore::fs::ingest(&*self.blobs, &*self.dirs, &self._trees.path().join(tree)).await.unwrap();
        let (nar_size, nar_sha256) = store::nar::calculate(&node, self.blobs.clone(), self.dirs.clone()).await.unwrap();
        let info = PathInfo {
            store_path: path.clone(),
            node,
            references: references.to_vec(),
            nar_size,
            nar_sha256,
            signatures: vec![],
            deriver: None,
            ca: None,
        };
        self.paths.put(info).await.unwrap();
    }

    async fn closure_info(&self, closure: &[StorePath]) -> StorePath {
        let info = store::closure_info::put_closure_info(
            "closure-info",
            closure,
            store::DEFAULT_STORE_DIR,
            &self.blobs,
            &self.dirs,
            &*self.paths,
        )
        .await
        .unwrap();
        info.store_path
    }

    fn fetcher(&self) -> Arc<dyn PathFetcher> {
        Arc::new(snapshotter::GrpcFetcher::new(fetch::Fetcher::new(
            self.blobs.clone(),
            self.dirs.clone(),
            self.paths.clone(),
        )))
    }
}

fn abs(p: &StorePath) -> String {
    p.to_absolute(store::DEFAULT_STORE_DIR)
}

fn names(paths: &[&StorePath]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

fn store_entries(s: &Served) -> BTreeSet<String> {
    std::fs::read_dir(s.store_dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// The legacy labels of a layer holding `paths`, with containerd's chain id.
fn legacy(paths: &[&StorePath], chain: &str) -> Vec<(String, String)> {
    let mut labels = vec![(LAYER.to_string(), "true".to_string()), (REF.to_string(), chain.to_string())];
    labels.extend(paths.iter().enumerate().map(|(i, p)| (format!("{STORE_PATH}.{i}"), abs(p))));
    labels
}

fn as_refs(labels: &[(String, String)]) -> Vec<(&str, &str)> {
    labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The bind mounts of store paths among `mounts`, as (source, target).
fn binds(mounts: &[Mount]) -> Vec<(PathBuf, String)> {
    mounts
        .iter()
        .filter(|m| !m.target.is_empty())
        .map(|m| {
            assert_eq!((m.r#type.as_str(), m.options.clone()), ("bind", vec!["ro".to_string(), "rbind".to_string()]));
            (PathBuf::from(&m.source), m.target.clone())
        })
        .collect()
}

fn want_binds(s: &Served, paths: &[&StorePath]) -> Vec<(PathBuf, String)> {
    let mut want: Vec<(PathBuf, String)> = paths.iter().map(|p| (s.store_dir().join(p.to_string()), abs(p))).collect();
    want.sort();
    want
}

/// Prepares, "unpacks" (nothing) and commits a layer; returns the
/// Prepare's mounts.
async fn layer(c: &mut Client, name: &str, parent: &str, labels: &[(String, String)]) -> Vec<Mount> {
    let key = format!("{name}-extract");
    let mounts = prepare(c, &key, parent, &as_refs(labels)).await.unwrap();
    commit(c, name, &key, &as_refs(labels)).await.unwrap();
    mounts
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_labels_fetch_and_bind_the_closure() {
    let ts = TestStore::new().await;
    let (_dir, root) = temp_root();
    let s = Served::start(&root, Some(ts.fetcher())).await;
    let mut c = s.client.clone();

    // An ordinary base layer, then the nix layer naming app's closure.
    layer(&mut c, "ns/1/sha256:base", "", &[(REF.into(), "sha256:base".into())]).await;
    let labels = legacy(&[&ts.app, &ts.blob, &ts.lib], "sha256:nix");
    let m = layer(&mut c, "ns/1/sha256:nix", "ns/1/sha256:base", &labels).await;
    assert_eq!(binds(&m), vec![], "the layer being unpacked gets no store mounts: {m:?}");
    assert_eq!(store_entries(&s), names(&[&ts.app, &ts.blob, &ts.lib]));
    // Fetched as the store has them.
    let blob = std::fs::read(s.store_dir().join(ts.blob.to_string())).unwrap();
    assert_eq!(blob.len(), 3 << 20);
    let script = std::fs::read_to_string(s.store_dir().join(ts.app.to_string()).join("bin/app")).unwrap();
    assert!(script.contains(&abs(&ts.lib)), "{script}");
    let info = stat(&mut c, "ns/1/sha256:nix").await.unwrap();
    assert_eq!(info.labels.get(LAYER).map(String::as_str), Some("true"), "Commit's labels are kept");

    // The container: overlay of both layers, then the store paths.
    let m = prepare(&mut c, "ns/1/container", "ns/1/sha256:nix", &[]).await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    assert_eq!(option(&m[0], "lowerdir").unwrap().split(':').count(), 2);
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(binds(&m), want_binds(&s, &[&ts.app, &ts.blob, &ts.lib]));
    assert_eq!(mounts(&mut c, "ns/1/container").await.unwrap(), m, "Mounts repeats them");
    let v = view(&mut c, "ns/1/view", "ns/1/sha256:nix").await.unwrap();
    assert_eq!(binds(&v), want_binds(&s, &[&ts.app, &ts.blob, &ts.lib]), "views get them too");

    // Removal: refused while the container exists, then the paths go.
    expect_code(remove(&mut c, "ns/1/sha256:nix").await, Code::FailedPrecondition, "a layer with children");
    for key in ["ns/1/container", "ns/1/view"] {
        remove(&mut c, key).await.unwrap();
    }
    assert_eq!(store_entries(&s).len(), 3, "the layer still roots its paths");
    remove(&mut c, "ns/1/sha256:nix").await.unwrap();
    assert_eq!(store_entries(&s), BTreeSet::new(), "released with the layer");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_closure_label_fetches_through_store_paths() {
    let ts = TestStore::new().await;
    let (_dir, root) = temp_root();
    let s = Served::start(&root, Some(ts.fetcher())).await;
    let mut c = s.client.clone();
    let labels = vec![(CLOSURE.to_string(), abs(&ts.app_info)), (REF.to_string(), "sha256:nix".to_string())];
    layer(&mut c, "ns/2/sha256:nix", "", &labels).await;
    assert_eq!(store_entries(&s), names(&[&ts.app, &ts.blob, &ts.lib, &ts.app_info]));
    let m = prepare(&mut c, "ns/2/container", "ns/2/sha256:nix", &[]).await.unwrap();
    // The closure-info path is rooted but not mounted (the layer has no
    // mount point for it).
    assert_eq!(binds(&m), want_binds(&s, &[&ts.app, &ts.blob, &ts.lib]));
    assert_eq!((m[0].r#type.as_str(), option(&m[0], "lowerdir").map(|l| l.split(':').count())), ("overlay", Some(1)));
    remove(&mut c, "ns/2/container").await.unwrap();
    remove(&mut c, "ns/2/sha256:nix").await.unwrap();
    assert_eq!(store_entries(&s), BTreeSet::new());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_paths_live_while_any_snapshot_roots_them() {
    let ts = TestStore::new().await;
    let (_dir, root) = temp_root();
    let s = Served::start(&root, Some(ts.fetcher())).await;
    let mut c = s.client.clone();
    // Two images' nix layers, prepared concurrently, sharing lib.
    let a = legacy(&[&ts.app, &ts.blob, &ts.lib], "sha256:a");
    let b = vec![(CLOSURE.to_string(), abs(&ts.other_info))];
    let (mut ca, mut cb) = (c.clone(), c.clone());
    let (ra, rb) = tokio::join!(layer(&mut ca, "ns/3/sha256:a", "", &a), layer(&mut cb, "ns/3/sha256:b", "", &b));
    assert!(binds(&ra).is_empty() && binds(&rb).is_empty());
    let all = names(&[&ts.app, &ts.blob, &ts.lib, &ts.other, &ts.other_info]);
    assert_eq!(store_entries(&s), all);

    remove(&mut c, "ns/3/sha256:a").await.unwrap();
    assert_eq!(store_entries(&s), names(&[&ts.lib, &ts.other, &ts.other_info]), "lib is still b's");
    // Cleanup keeps rooted paths too.
    cleanup(&mut c).await.unwrap();
    assert_eq!(store_entries(&s), names(&[&ts.lib, &ts.other, &ts.other_info]));

    // Restarted: b's container still gets its binds; removing b frees all.
    s.stop().await;
    let s = Served::start(&root, Some(ts.fetcher())).await;
    let mut c = s.client.clone();
    let m = prepare(&mut c, "ns/3/container", "ns/3/sha256:b", &[]).await.unwrap();
    assert_eq!(binds(&m), want_binds(&s, &[&ts.lib, &ts.other]));
    remove(&mut c, "ns/3/container").await.unwrap();
    remove(&mut c, "ns/3/sha256:b").await.unwrap();
    assert_eq!(store_entries(&s), BTreeSet::new());
    s.stop().await;
}

/// Lets a fetch finish only when told (timing fault injection around the
/// real fetcher).
struct Gated {
    inner: Arc<dyn PathFetcher>,
    entered: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl PathFetcher for Gated {
    async fn fetch(&self, roots: &[StorePath], store_dir: &Path) -> Result<Vec<StorePath>, FetchFailure> {
        let fetched = self.inner.fetch(roots, store_dir).await;
        self.entered.notify_one();
        self.release.notified().await;
        fetched
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_waits_for_fetches_in_flight() {
    let ts = TestStore::new().await;
    let (_dir, root) = temp_root();
    let gated = Arc::new(Gated { inner: ts.fetcher(), entered: Notify::new(), release: Notify::new() });
    let s = Served::start(&root, Some(gated.clone())).await;
    let mut c = s.client.clone();

    let first = tokio::spawn({
        let mut c = c.clone();
        let labels = legacy(&[&ts.lib], "sha256:one");
        async move { layer(&mut c, "ns/4/one", "", &labels).await }
    });
    gated.entered.notified().await;
    gated.release.notify_one();
    first.await.unwrap();
    assert_eq!(store_entries(&s), names(&[&ts.lib]));

    // A second layer needing lib is fetching (lib is present, so the
    // fetcher keeps it) when the first layer, its only root, is removed.
    let second = tokio::spawn({
        let mut c = c.clone();
        let labels = legacy(&[&ts.lib, &ts.other], "sha256:two");
        async move { layer(&mut c, "ns/4/two", "", &labels).await }
    });
    gated.entered.notified().await;
    remove(&mut c, "ns/4/one").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(store_entries(&s).contains(&ts.lib.to_string()), "lib was deleted under a fetch that needs it");
    gated.release.notify_one();
    second.await.unwrap();
    let m = prepare(&mut c, "ns/4/container", "ns/4/two", &[]).await.unwrap();
    assert_eq!(binds(&m), want_binds(&s, &[&ts.lib, &ts.other]));
    // The deferred release ran and kept what the second layer roots.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store_entries(&s) != names(&[&ts.lib, &ts.other]) {
        assert!(std::time::Instant::now() < deadline, "{:?}", store_entries(&s));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for p in [&ts.lib, &ts.other] {
        assert!(s.store_dir().join(p.to_string()).exists());
    }
    s.stop().await;
}
