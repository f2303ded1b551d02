//! The fetcher over in-process services (no server, no Nix): the NAR hash
//! of a tree on disk equals the NAR store renders from castore, a closure
//! arrives laid out as Nix's store, present paths are skipped, identical
//! files are copied from disk, and two fetches of one closure at once both
//! succeed without leaving anything behind. (The tests of `storefront` run
//! the same against a real server, the real Nix and a tampering server.)
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use castore::{BlobService, DirectoryService};
use fetch::{FetchError, Fetcher, nar_hash_of_tree};
use store::{PathInfo, PathInfoService, StorePath, url::path_info_service_from_url};

struct Services {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    paths: Arc<dyn PathInfoService>,
}

fn services() -> Services {
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
    Services { blobs, dirs, paths }
}

impl Services {
    fn fetcher(&self) -> Fetcher {
        Fetcher::new(self.blobs.clone(), self.dirs.clone(), self.paths.clone())
    }

    /// Ingests `tree` and records it as `name` (a store path named after
    /// `seed`) referring to `references`.
    async fn add(&self, seed: u8, name: &str, tree: &Path, references: &[&PathInfo]) -> PathInfo {
        let node = castore::fs::ingest(&*self.blobs, &*self.dirs, tree).await.unwrap();
        let (nar_size, nar_sha256) = store::nar::calculate(&node, self.blobs.clone(), self.dirs.clone()).await.unwrap();
        let info = PathInfo {
            store_path: StorePath::from_parts([seed; 20], name).unwrap(),
            node,
            references: references.iter().map(|r| r.store_path.clone()).collect(),
            nar_size,
            nar_sha256,
            signatures: vec![],
            deriver: None,
            ca: None,
        };
        self.paths.put(info.clone()).await.unwrap()
    }
}

/// Bytes that are not all alike.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
}

/// A tree with what a NAR distinguishes: executables, empty files and
/// directories, relative and absolute symlinks, names whose byte order is
/// not their alphabetical order, nesting, a multi-MiB file.
fn sample_tree(root: &Path, big: &[u8]) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("share/doc/deep")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("share/big"), big).unwrap();
    std::fs::write(root.join("share/doc/deep/Zeta"), b"upper").unwrap();
    std::fs::write(root.join("share/doc/deep/alpha"), b"lower").unwrap();
    std::fs::write(root.join("share/doc/deep/_under"), b"").unwrap();
    std::os::unix::fs::symlink("../share/big", root.join("bin/big-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", root.join("dangling")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_hash_of_a_tree_on_disk_is_the_nar_store_renders() {
    let s = services();
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree, &noise(3 << 20, 1));
    let file = tmp.path().join("file");
    std::fs::write(&file, b"a single file\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink("tree/bin", &link).unwrap();
    for root in [&tree, &file, &link] {
        let node = castore::fs::ingest(&*s.blobs, &*s.dirs, root).await.unwrap();
        let rendered = store::nar::calculate(&node, s.blobs.clone(), s.dirs.clone()).await.unwrap();
        assert_eq!(nar_hash_of_tree(root).await.unwrap(), rendered, "{}", root.display());
    }
}

/// Every entry below `root` (itself included): mode without the file type
/// bits and mtime, by relative path.
fn layout(root: &Path) -> Vec<(PathBuf, u32, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.push((p.strip_prefix(root).unwrap().to_owned(), meta.mode() & 0o7777, meta.mtime()));
    }
    out.sort();
    out
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn closures_arrive_as_nix_lays_them_out() {
    let s = services();
    let tmp = tempfile::tempdir().unwrap();
    let big = noise(3 << 20, 7);
    let lib_tree = tmp.path().join("lib");
    sample_tree(&lib_tree, &big);
    // The app has its own copy of the big file, and is a reference of the top.
    let app_tree = tmp.path().join("app");
    std::fs::create_dir(&app_tree).unwrap();
    std::fs::write(app_tree.join("copy-of-big"), &big).unwrap();
    let single = tmp.path().join("single");
    std::fs::write(&single, b"just a file\n").unwrap();
    let lib = s.add(1, "lib", &lib_tree, &[]).await;
    let leaf = s.add(2, "single", &single, &[]).await;
    let app = s.add(3, "app", &app_tree, &[&lib, &leaf]).await;

    let target = tmp.path().join("store");
    std::fs::create_dir(&target).unwrap();
    // The library first: the app's copy of the big file comes from disk.
    let first = s.fetcher().fetch(std::slice::from_ref(&lib.store_path), &target).await.unwrap();
    assert_eq!((first.summary.fetched, first.summary.skipped), (1, 0));
    let fetcher = s.fetcher();
    let progress = fetcher.progress();
    let second = fetcher.fetch(std::slice::from_ref(&app.store_path), &target).await.unwrap();
    assert_eq!((second.summary.fetched, second.summary.skipped), (2, 1));
    assert_eq!(second.summary.copied, big.len() as u64, "the big file is copied from the library");
    assert!(second.summary.downloaded < 100, "downloaded {}", second.summary.downloaded);
    // Store files are immutable: the copy is a hard link to the library's (one inode).
    let ino = |info: &PathInfo, rel: &str| {
        std::fs::metadata(target.join(info.store_path.to_string()).join(rel)).unwrap().ino()
    };
    assert_eq!(ino(&app, "copy-of-big"), ino(&lib, "share/big"), "the app's big file shares the library's inode");
    let names: Vec<&str> = second.closure.iter().map(|i| i.store_path.name()).collect();
    assert_eq!(names.last(), Some(&"app"), "references first: {names:?}");
    assert_eq!(second.placed.len(), 2);
    let p = progress.borrow().clone();
    assert_eq!((p.paths_done, p.paths_total), (3, 3));
    assert_eq!(p.bytes_done, p.bytes_total);

    for info in [&lib, &leaf, &app] {
        let placed = target.join(info.store_path.to_string());
        assert_eq!(nar_hash_of_tree(&placed).await.unwrap(), (info.nar_size, info.nar_sha256));
        for (rel, mode, mtime) in layout(&placed) {
            let path = if rel.as_os_str().is_empty() { placed.clone() } else { placed.join(&rel) };
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let want = if meta.is_symlink() {
                0o777
            } else if meta.is_dir() || meta.mode() & 0o100 != 0 {
                0o555
            } else {
                0o444
            };
            assert_eq!((mode, mtime), (want, 1), "{} {}", info.store_path, rel.display());
        }
    }
    assert_eq!(
        std::fs::read_link(target.join(lib.store_path.to_string()).join("dangling")).unwrap(),
        Path::new("/nonexistent/dangling")
    );

    // Everything present: nothing is read from the store.
    let again = s.fetcher().fetch(std::slice::from_ref(&app.store_path), &target).await.unwrap();
    assert_eq!((again.summary.fetched, again.summary.skipped, again.summary.downloaded), (0, 3, 0));
    assert!(again.placed.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_fetches_of_one_closure_at_once() {
    let s = services();
    let tmp = tempfile::tempdir().unwrap();
    let mut infos = Vec::new();
    for i in 0..6u8 {
        let tree = tmp.path().join(format!("t{i}"));
        sample_tree(&tree, &noise(1 << 20, i as u32));
        let refs: Vec<&PathInfo> = infos.iter().collect();
        let info = s.add(10 + i, &format!("p{i}"), &tree, &refs).await;
        infos.push(info);
    }
    let top = infos.last().unwrap().store_path.clone();
    let target = tmp.path().join("store");
    std::fs::create_dir(&target).unwrap();
    // One fetcher, two fetches at once (as the snapshotter shares one).
    let fetcher = s.fetcher();
    let (a, b) = (&fetcher, &fetcher);
    let (ra, rb) =
        tokio::join!(a.fetch(std::slice::from_ref(&top), &target), b.fetch(std::slice::from_ref(&top), &target));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Each path was written once, whichever fetch won it.
    assert_eq!(ra.summary.fetched + rb.summary.fetched, 6);
    assert_eq!(ra.summary.fetched + ra.summary.skipped, 6);
    assert_eq!(rb.summary.fetched + rb.summary.skipped, 6);
    let mut want: Vec<String> = infos.iter().map(|i| i.store_path.to_string()).collect();
    want.sort();
    assert_eq!(entries(&target), want, "only whole paths, no temporary trees");
    for info in &infos {
        let placed = target.join(info.store_path.to_string());
        assert_eq!(nar_hash_of_tree(&placed).await.unwrap(), (info.nar_size, info.nar_sha256));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_paths_and_lying_records_are_named() {
    let s = services();
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("t");
    sample_tree(&tree, &noise(1000, 9));
    let good = s.add(1, "good", &tree, &[]).await;
    let target = tmp.path().join("store");
    std::fs::create_dir(&target).unwrap();

    let missing = StorePath::from_parts([9; 20], "missing").unwrap();
    match s.fetcher().fetch(std::slice::from_ref(&missing), &target).await {
        Err(FetchError::NotFound(m)) => assert!(m.contains("missing"), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Asked by one name, recorded under another with the same digest.
    let renamed = StorePath::from_parts([1; 20], "other-name").unwrap();
    let err = s.fetcher().fetch(std::slice::from_ref(&renamed), &target).await.unwrap_err().to_string();
    assert!(err.contains("other-name") && err.contains("good"), "{err}");

    // A record whose NarHash is not its tree's (checked on request, and
    // whenever keys or the host Nix store need the hash).
    let mut liar = good.clone();
    liar.store_path = StorePath::from_parts([2; 20], "liar").unwrap();
    liar.nar_sha256[0] ^= 1;
    let liar = s.paths.put(liar).await.unwrap();
    let err =
        s.fetcher().check_nar_hash(true).fetch(std::slice::from_ref(&liar.store_path), &target).await.unwrap_err();
    assert!(matches!(err, FetchError::NarMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&liar.store_path.to_string()), "{err}");
    assert!(entries(&target).is_empty(), "left behind: {:?}", entries(&target));
    // With trusted keys, an unsigned path is refused before anything is written.
    let key = store::SigningKey::generate("test-1").unwrap();
    let err = s
        .fetcher()
        .trusted_keys(vec![key.verifying_key()])
        .fetch(std::slice::from_ref(&good.store_path), &target)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Untrusted { .. }), "{err}");
    assert!(entries(&target).is_empty());
}

/// The snapshotter spawns fetches on tokio's workers and shares one
/// fetcher between tasks: both must be allowed.
#[test]
fn fetches_can_be_spawned_and_fetchers_shared() {
    fn send_and_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let s = services();
    let fetcher = s.fetcher();
    send_and_sync(&fetcher);
    let roots = [StorePath::from_parts([1; 20], "x").unwrap()];
    send(fetcher.fetch(&roots, Path::new("/nonexistent")));
    let progress = tokio::sync::watch::Sender::new(fetch::Progress::default());
    send(fetcher.fetch_reporting(&roots, Path::new("/nonexistent"), &progress));
}
