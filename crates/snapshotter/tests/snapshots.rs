//! containerd's snapshot semantics, over a real unix socket with a tonic
//! client: kinds, parent chains and their mounts, Commit, Update field
//! paths, Usage, Remove with children, List and its filters, Cleanup, and
//! state that survives a restart.
mod common;

use std::{os::unix::fs::MetadataExt, path::Path};

use common::*;
use snapshotter::proto::Kind;
use tonic::Code;

fn fs_of(root: &Path, mount_source: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(mount_source);
    assert!(p.starts_with(root.join("snapshots")), "{mount_source} is not a snapshot directory of {}", root.display());
    assert!(p.ends_with("fs"), "{mount_source} is not an fs directory");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn kinds_parents_and_their_mounts() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();

    // No parent: the directory itself, bound read-write.
    let m = prepare(&mut c, "ns/1/a", "", &[("x", "1")]).await.unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].r#type.as_str(), m[0].options.clone()), ("bind", vec!["rw".to_string(), "rbind".to_string()]));
    assert_eq!(m[0].target, "");
    let a_fs = fs_of(&root, &m[0].source);
    assert!(a_fs.is_dir());
    std::fs::write(a_fs.join("hello"), "from a").unwrap();
    let info = stat(&mut c, "ns/1/a").await.unwrap();
    assert_eq!((kind(&info), info.parent.as_str()), (Kind::Active, ""));
    assert_eq!(label_map(&info).get("x").map(String::as_str), Some("1"));
    assert!(info.created_at.is_some() && info.updated_at.is_some());
    assert_eq!(mounts(&mut c, "ns/1/a").await.unwrap(), m, "Mounts repeats Prepare's answer");

    // Commit: the active key is gone, the committed name has its data.
    commit(&mut c, "ns/1/A", "ns/1/a", &[("y", "2")]).await.unwrap();
    expect_code(stat(&mut c, "ns/1/a").await, Code::NotFound, "the committed key");
    let info = stat(&mut c, "ns/1/A").await.unwrap();
    assert_eq!(kind(&info), Kind::Committed);
    assert_eq!(label_map(&info), [("y".to_string(), "2".to_string())].into(), "a commit's labels are its own");
    expect_code(mounts(&mut c, "ns/1/A").await, Code::FailedPrecondition, "Mounts of a committed snapshot");

    // Active on one parent: overlay, the parent as the only lower dir.
    let m = prepare(&mut c, "ns/1/b", "ns/1/A", &[]).await.unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("overlay", "overlay"));
    assert_eq!(option(&m[0], "lowerdir"), Some(a_fs.to_str().unwrap()));
    let b_fs = fs_of(&root, option(&m[0], "upperdir").expect("upperdir"));
    let work = option(&m[0], "workdir").expect("workdir");
    assert!(Path::new(work).is_dir() && b_fs.is_dir() && b_fs != a_fs);
    assert_eq!(kind(&stat(&mut c, "ns/1/b").await.unwrap()), Kind::Active);
    assert_eq!(stat(&mut c, "ns/1/b").await.unwrap().parent, "ns/1/A");

    // A view of one parent: that parent, bound read-only.
    let m = view(&mut c, "ns/1/v1", "ns/1/A").await.unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("bind", a_fs.to_str().unwrap()));
    assert_eq!(m[0].options, vec!["ro".to_string(), "rbind".to_string()]);
    assert_eq!(kind(&stat(&mut c, "ns/1/v1").await.unwrap()), Kind::View);
    assert_eq!(mounts(&mut c, "ns/1/v1").await.unwrap(), m);

    // A view of a chain: a read-only overlay, newest lower dir first.
    commit(&mut c, "ns/1/B", "ns/1/b", &[]).await.unwrap();
    let m = view(&mut c, "ns/1/v2", "ns/1/B").await.unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].r#type, "overlay");
    assert_eq!(option(&m[0], "lowerdir"), Some(format!("{}:{}", b_fs.display(), a_fs.display()).as_str()));
    assert_eq!((option(&m[0], "upperdir"), option(&m[0], "workdir")), (None, None), "{m:?}");
    // A view with no parent is its own empty directory, read-only.
    let m = view(&mut c, "ns/1/v0", "").await.unwrap();
    assert_eq!(m[0].options, vec!["ro".to_string(), "rbind".to_string()]);

    // Refusals.
    expect_code(prepare(&mut c, "ns/1/v2", "ns/1/A", &[]).await, Code::AlreadyExists, "a taken key");
    expect_code(prepare(&mut c, "ns/1/B", "", &[]).await, Code::AlreadyExists, "a committed name as a key");
    expect_code(view(&mut c, "ns/1/v1", "ns/1/A").await, Code::AlreadyExists, "a taken view key");
    expect_code(prepare(&mut c, "ns/1/c", "ns/1/nope", &[]).await, Code::NotFound, "a missing parent");
    prepare(&mut c, "ns/1/open", "", &[]).await.unwrap();
    expect_code(prepare(&mut c, "ns/1/c", "ns/1/open", &[]).await, Code::InvalidArgument, "an active parent");
    expect_code(prepare(&mut c, "ns/1/c", "ns/1/v1", &[]).await, Code::InvalidArgument, "a view as parent");
    expect_code(prepare(&mut c, "", "", &[]).await, Code::InvalidArgument, "an empty key");
    expect_code(commit(&mut c, "ns/1/V", "ns/1/v1", &[]).await, Code::FailedPrecondition, "committing a view");
    expect_code(commit(&mut c, "ns/1/A2", "ns/1/A", &[]).await, Code::FailedPrecondition, "committing a committed");
    expect_code(commit(&mut c, "ns/1/A", "ns/1/open", &[]).await, Code::AlreadyExists, "committing onto a name");
    expect_code(commit(&mut c, "ns/1/X", "ns/1/nope", &[]).await, Code::NotFound, "committing a missing key");
    expect_code(commit(&mut c, "", "ns/1/open", &[]).await, Code::InvalidArgument, "committing as no name");
    expect_code(mounts(&mut c, "ns/1/nope").await, Code::NotFound, "Mounts of a missing key");
    expect_code(stat(&mut c, "ns/1/nope").await, Code::NotFound, "Stat of a missing key");
    let long = "v".repeat(4097);
    expect_code(prepare(&mut c, "ns/1/c", "", &[("k", &long)]).await, Code::InvalidArgument, "an oversized label");
    // The refused calls left nothing behind.
    assert_eq!(
        list_names(&mut c, &[]).await,
        ["ns/1/A", "ns/1/B", "ns/1/open", "ns/1/v0", "ns/1/v1", "ns/1/v2"].map(String::from).to_vec()
    );
    assert_eq!(std::fs::read_dir(s.snapshots_dir()).unwrap().count(), 6, "one directory per snapshot");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn update_applies_field_paths() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    prepare(&mut c, "ns/2/k", "", &[("a", "1"), ("b", "2")]).await.unwrap();
    let before = stat(&mut c, "ns/2/k").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    // One label set, others untouched; labels of the info not named ignored.
    let info = update(&mut c, "ns/2/k", &[("a", "x"), ("c", "3")], Some(&["labels.a"])).await.unwrap();
    assert_eq!(label_map(&info), [("a", "x"), ("b", "2")].map(|(k, v)| (k.into(), v.into())).into());
    assert_eq!(kind(&info), Kind::Active, "Update answers with the kind set");
    assert_eq!(info.created_at, before.created_at, "created never changes");
    assert!(
        info.updated_at.unwrap().seconds * 1_000_000_000 + i64::from(info.updated_at.unwrap().nanos)
            > before.updated_at.unwrap().seconds * 1_000_000_000 + i64::from(before.updated_at.unwrap().nanos)
    );
    // A named label missing from the info is deleted; an absent one is fine.
    let info = update(&mut c, "ns/2/k", &[], Some(&["labels.b", "labels.never-there"])).await.unwrap();
    assert_eq!(label_map(&info), [("a", "x")].map(|(k, v)| (k.into(), v.into())).into());
    // Keys with dots and slashes (containerd's gc labels).
    let gc = "containerd.io/gc.ref.snapshot.overlayfs";
    let info = update(&mut c, "ns/2/k", &[(gc, "ns/2/other")], Some(&[&format!("labels.{gc}")])).await.unwrap();
    assert_eq!(info.labels.get(gc).map(String::as_str), Some("ns/2/other"));
    // `labels`, or no paths at all: the labels are replaced.
    let info = update(&mut c, "ns/2/k", &[("y", "1")], Some(&["labels"])).await.unwrap();
    assert_eq!(label_map(&info), [("y", "1")].map(|(k, v)| (k.into(), v.into())).into());
    let info = update(&mut c, "ns/2/k", &[("z", "9")], None).await.unwrap();
    assert_eq!(label_map(&info), [("z", "9")].map(|(k, v)| (k.into(), v.into())).into());
    let info = update(&mut c, "ns/2/k", &[("w", "0")], Some(&[])).await.unwrap();
    assert_eq!(label_map(&info), [("w", "0")].map(|(k, v)| (k.into(), v.into())).into());
    assert_eq!(label_map(&stat(&mut c, "ns/2/k").await.unwrap()), label_map(&info), "Stat sees the update");

    expect_code(update(&mut c, "ns/2/k", &[], Some(&["parent"])).await, Code::InvalidArgument, "updating parent");
    expect_code(update(&mut c, "ns/2/k", &[], Some(&["kind"])).await, Code::InvalidArgument, "updating kind");
    expect_code(update(&mut c, "ns/2/none", &[], None).await, Code::NotFound, "updating a missing snapshot");
    let long = "v".repeat(4097);
    expect_code(update(&mut c, "ns/2/k", &[("k", &long)], None).await, Code::InvalidArgument, "an oversized label");
    assert_eq!(label_map(&stat(&mut c, "ns/2/k").await.unwrap()), label_map(&info), "refused updates change nothing");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_counts_blocks_and_inodes_once_committed() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    let m = prepare(&mut c, "ns/3/u", "", &[]).await.unwrap();
    let fs = fs_of(&root, &m[0].source);
    let (size, inodes) = usage(&mut c, "ns/3/u").await.unwrap();
    assert_eq!(inodes, 1, "an empty snapshot is its directory");
    assert!(size > 0 && size <= 64 * 1024, "{size}");

    // 256 KiB of data, a hard link to it (counted once), a directory, a
    // symlink and a sparse file (its blocks, not its length).
    std::fs::write(fs.join("data"), vec![7u8; 256 * 1024]).unwrap();
    std::fs::hard_link(fs.join("data"), fs.join("link")).unwrap();
    std::fs::create_dir(fs.join("dir")).unwrap();
    std::os::unix::fs::symlink("data", fs.join("dir/sym")).unwrap();
    std::fs::File::create(fs.join("sparse")).unwrap().set_len(1 << 30).unwrap();
    let want_size: i64 = ["", "data", "dir", "dir/sym", "sparse"]
        .iter()
        .map(|p| std::fs::symlink_metadata(fs.join(p)).unwrap().blocks() as i64 * 512)
        .sum();
    let (size, inodes) = usage(&mut c, "ns/3/u").await.unwrap();
    assert_eq!(inodes, 5, "fs, data (+link), dir, sym, sparse");
    assert_eq!(size, want_size);
    assert!((256 * 1024..1 << 30).contains(&size), "{size}");

    // Committed: measured once, at Commit.
    commit(&mut c, "ns/3/U", "ns/3/u", &[]).await.unwrap();
    assert_eq!(usage(&mut c, "ns/3/U").await.unwrap(), (want_size, 5));
    std::fs::write(fs.join("later"), vec![1u8; 128 * 1024]).unwrap();
    assert_eq!(usage(&mut c, "ns/3/U").await.unwrap(), (want_size, 5), "a committed snapshot's usage is fixed");
    expect_code(usage(&mut c, "ns/3/none").await, Code::NotFound, "usage of a missing snapshot");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_refuses_parents_and_deletes_directories() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    prepare(&mut c, "ns/4/a", "", &[]).await.unwrap();
    commit(&mut c, "ns/4/A", "ns/4/a", &[]).await.unwrap();
    prepare(&mut c, "ns/4/b", "ns/4/A", &[]).await.unwrap();
    view(&mut c, "ns/4/v", "ns/4/A").await.unwrap();
    assert_eq!(std::fs::read_dir(s.snapshots_dir()).unwrap().count(), 3);

    let status = expect_code(remove(&mut c, "ns/4/A").await, Code::FailedPrecondition, "removing a parent");
    assert!(status.message().contains("child"), "{}", status.message());
    expect_code(remove(&mut c, "ns/4/none").await, Code::NotFound, "removing a missing snapshot");
    remove(&mut c, "ns/4/b").await.unwrap();
    expect_code(remove(&mut c, "ns/4/A").await, Code::FailedPrecondition, "the view is still a child");
    remove(&mut c, "ns/4/v").await.unwrap();
    remove(&mut c, "ns/4/A").await.unwrap();
    expect_code(remove(&mut c, "ns/4/A").await, Code::NotFound, "removing twice");
    expect_code(stat(&mut c, "ns/4/A").await, Code::NotFound, "Stat after Remove");
    assert_eq!(list_names(&mut c, &[]).await, Vec::<String>::new());
    assert_eq!(std::fs::read_dir(s.snapshots_dir()).unwrap().count(), 0, "directories deleted");
    assert_eq!(std::fs::read_dir(root.join("trash")).unwrap().count(), 0, "nothing left in the trash");
    // A removed key can be prepared again, in a new directory.
    prepare(&mut c, "ns/4/a", "", &[]).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_streams_everything_and_applies_filters() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    prepare(&mut c, "ns/5/base-active", "", &[]).await.unwrap();
    commit(&mut c, "ns/5/base", "ns/5/base-active", &[("containerd.io/gc.root", "yes")]).await.unwrap();
    let mut want = vec!["ns/5/base".to_string()];
    for i in 0..240 {
        let key = format!("ns/5/c{i:03}");
        if i % 3 == 0 {
            view(&mut c, &key, "ns/5/base").await.unwrap();
        } else {
            prepare(&mut c, &key, "ns/5/base", &[("n", &i.to_string())]).await.unwrap();
        }
        want.push(key);
    }
    let (infos, messages) = list(&mut c, &[]).await.unwrap();
    assert_eq!(infos.len(), 241);
    assert!(messages >= 3, "a long list arrives in several messages ({messages})");
    let mut names: Vec<String> = infos.iter().map(|i| i.name.clone()).collect();
    names.sort();
    assert_eq!(names, want);
    assert!(infos.iter().all(|i| kind(i) != Kind::Unknown), "every info has its kind");
    assert_eq!(infos.iter().filter(|i| kind(i) == Kind::View).count(), 80);

    assert_eq!(list_names(&mut c, &["kind==committed"]).await, vec!["ns/5/base"]);
    assert_eq!(list_names(&mut c, &[r#"labels."containerd.io/gc.root""#]).await, vec!["ns/5/base"]);
    assert_eq!(list_names(&mut c, &["parent==ns/5/base"]).await.len(), 240);
    assert_eq!(
        list_names(&mut c, &["kind==view,name~=c00[0-9]$"]).await,
        vec!["ns/5/c000", "ns/5/c003", "ns/5/c006", "ns/5/c009"]
    );
    assert_eq!(list_names(&mut c, &["labels.n==7", "kind==committed"]).await, vec!["ns/5/base", "ns/5/c007"]);
    expect_code(list(&mut c, &["name=="]).await, Code::InvalidArgument, "a malformed filter");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_restart() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    let m = prepare(&mut c, "ns/6/a", "", &[("l", "1")]).await.unwrap();
    std::fs::write(fs_of(&root, &m[0].source).join("f"), vec![0u8; 10_000]).unwrap();
    commit(&mut c, "ns/6/A", "ns/6/a", &[("l", "2")]).await.unwrap();
    let b_mounts = prepare(&mut c, "ns/6/b", "ns/6/A", &[]).await.unwrap();
    let v_mounts = view(&mut c, "ns/6/v", "ns/6/A").await.unwrap();
    update(&mut c, "ns/6/b", &[("after", "update")], Some(&["labels.after"])).await.unwrap();
    let usage_a = usage(&mut c, "ns/6/A").await.unwrap();
    let (mut before, _) = list(&mut c, &[]).await.unwrap();
    before.sort_by(|x, y| x.name.cmp(&y.name));
    s.stop().await;

    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    let (mut after, _) = list(&mut c, &[]).await.unwrap();
    after.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(after, before, "names, parents, kinds, labels and times");
    assert_eq!(mounts(&mut c, "ns/6/b").await.unwrap(), b_mounts);
    assert_eq!(mounts(&mut c, "ns/6/v").await.unwrap(), v_mounts);
    assert_eq!(usage(&mut c, "ns/6/A").await.unwrap(), usage_a);
    // Ids are never reused: a new snapshot gets a new directory.
    let m = prepare(&mut c, "ns/6/c", "", &[]).await.unwrap();
    let existing: Vec<String> = std::fs::read_dir(s.snapshots_dir())
        .unwrap()
        .map(|e| e.unwrap().path().join("fs").display().to_string())
        .collect();
    assert_eq!(existing.len(), 4);
    assert_ne!(m[0].source, option(&b_mounts[0], "upperdir").unwrap());
    assert_ne!(m[0].source, option(&b_mounts[0], "lowerdir").unwrap());
    remove(&mut c, "ns/6/v").await.unwrap();
    s.stop().await;

    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    expect_code(stat(&mut c, "ns/6/v").await, Code::NotFound, "a removal survives a restart");
    assert_eq!(list_names(&mut c, &[]).await, vec!["ns/6/A", "ns/6/b", "ns/6/c"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_removes_what_no_snapshot_refers_to() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    let m = prepare(&mut c, "ns/7/a", "", &[]).await.unwrap();
    let live = fs_of(&root, &m[0].source).parent().unwrap().to_path_buf();
    std::fs::write(live.join("fs/keep"), "keep").unwrap();
    // Leftovers of a crash: an orphaned snapshot directory (read-only
    // inside), a half-made one, trash, and a store path nobody roots.
    let orphan = s.snapshots_dir().join("999");
    std::fs::create_dir_all(orphan.join("fs/sub")).unwrap();
    std::fs::write(orphan.join("fs/sub/file"), "x").unwrap();
    std::fs::set_permissions(orphan.join("fs/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    std::fs::create_dir_all(s.snapshots_dir().join("new-1000/fs")).unwrap();
    std::fs::create_dir_all(root.join("trash/old/deep")).unwrap();
    let unrooted = s.store_dir().join("0c6kzph7l0dcbyvp6d4cfbhlhh1f0s3h-unrooted");
    std::fs::create_dir_all(unrooted.join("bin")).unwrap();
    std::fs::write(s.store_dir().join(".tmp-interrupted"), "half").unwrap();

    cleanup(&mut c).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(s.snapshots_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left, vec![live.clone()], "only the live snapshot's directory stays");
    assert_eq!(std::fs::read_to_string(live.join("fs/keep")).unwrap(), "keep");
    assert_eq!(std::fs::read_dir(root.join("trash")).unwrap().count(), 0, "the trash is empty");
    assert_eq!(std::fs::read_dir(s.store_dir()).unwrap().count(), 0, "unrooted store entries are gone");
    assert_eq!(list_names(&mut c, &[]).await, vec!["ns/7/a"]);
    s.stop().await;
}
