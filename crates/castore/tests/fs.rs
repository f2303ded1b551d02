//! Ingest and export on a real filesystem: a round trip keeps every file,
//! mode and symlink; a failed export leaves nothing behind; export never
//! writes through symlinks or over an existing path.
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, sync::Arc};

use bytes::Bytes;
use castore::{
    B3Digest, BlobService, Directory, DirectoryService, Error, Name, Node,
    blob::ChunkedBlobService,
    dirsvc::KvDirectoryService,
    kv::{KvStore, MemoryStore, Table},
};

fn services() -> (Arc<dyn KvStore>, ChunkedBlobService, KvDirectoryService) {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    (kv.clone(), ChunkedBlobService::new(kv.clone()), KvDirectoryService::new(kv))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_keeps_contents_modes_and_links() {
    let (_, blobs, dirs) = services();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("share/empty")).unwrap();
    std::fs::write(src.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(src.join("share/big"), &big).unwrap();
    std::os::unix::fs::symlink("../bin/tool", src.join("share/link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs", src.join("dangling")).unwrap();

    let node = castore::fs::ingest(&blobs, &dirs, &src).await.unwrap();
    let out = tmp.path().join("out");
    castore::fs::export(&blobs, &dirs, &node, &out).await.unwrap();

    let diff = Command::new("diff").args(["-r", "--no-dereference"]).arg(&src).arg(&out).output().unwrap();
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stdout));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out.join("bin/tool")), 0o755);
    assert_eq!(mode(&out.join("share/big")), 0o644);
    assert_eq!(std::fs::read_link(out.join("dangling")).unwrap(), Path::new("/nonexistent/abs"));
    // Ingesting the export gives the same root.
    assert_eq!(castore::fs::ingest(&blobs, &dirs, &out).await.unwrap(), node);
}

#[tokio::test(flavor = "multi_thread")]
async fn export_refuses_an_existing_target() {
    let (_, blobs, dirs) = services();
    let tmp = tempfile::tempdir().unwrap();
    let digest = blobs.put_bytes(Bytes::from_static(b"new"), None).await.unwrap();
    let node = Node::File { digest, size: 3, executable: false };
    let target = tmp.path().join("existing");
    std::fs::write(&target, b"old").unwrap();
    let r = castore::fs::export(&blobs, &dirs, &node, &target).await;
    assert!(matches!(r, Err(Error::InvalidRequest(_))), "{r:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    // A symlink at the target is not followed either.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert!(castore::fs::export(&blobs, &dirs, &node, &link).await.is_err());
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(entries(tmp.path()), vec!["existing", "link", "victim"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_export_leaves_nothing() {
    let (kv, blobs, dirs) = services();
    let tmp = tempfile::tempdir().unwrap();
    let good = blobs.put_bytes(Bytes::from_static(b"fine"), None).await.unwrap();

    // A blob whose stored bytes do not match its digest (a corrupt backend).
    let claimed = B3Digest::of(b"what the directory expects");
    kv.put(Table::CHUNKS, vec![(claimed.to_bytes(), Bytes::from_static(b"something else entirely"))]).await.unwrap();
    // And one that is missing altogether.
    let missing = B3Digest::of(b"never stored");

    for (bad, size) in [(claimed, 26), (missing, 12)] {
        let mut d = Directory::default();
        d.add(Name::new("good").unwrap(), Node::File { digest: good, size: 4, executable: false }).unwrap();
        d.add(Name::new("zbad").unwrap(), Node::File { digest: bad, size, executable: false }).unwrap();
        let digest = dirs.put(d.clone()).await.unwrap();
        let target = tmp.path().join("out");
        let r = castore::fs::export(&blobs, &dirs, &Node::Directory { digest, size: d.size() }, &target).await;
        assert!(r.is_err(), "export of a tree with a bad blob succeeded");
        assert!(entries(tmp.path()).is_empty(), "left behind: {:?}", entries(tmp.path()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_in_the_tree_are_never_written_through() {
    let (_, blobs, dirs) = services();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();

    // A tree whose symlinks point outside the target and up the hierarchy.
    let data = blobs.put_bytes(Bytes::from_static(b"payload"), None).await.unwrap();
    let mut d = Directory::default();
    d.add(Name::new("a-up").unwrap(), Node::Symlink { target: "../outside".into() }).unwrap();
    d.add(Name::new("b-abs").unwrap(), Node::Symlink { target: outside.to_string_lossy().into_owned().into() })
        .unwrap();
    d.add(Name::new("c-file").unwrap(), Node::File { digest: data, size: 7, executable: false }).unwrap();
    let digest = dirs.put(d.clone()).await.unwrap();
    let target = tmp.path().join("out");
    castore::fs::export(&blobs, &dirs, &Node::Directory { digest, size: d.size() }, &target).await.unwrap();

    assert!(entries(&outside).is_empty(), "something was written outside the target");
    assert_eq!(std::fs::read_link(target.join("a-up")).unwrap(), Path::new("../outside"));
    assert_eq!(std::fs::read(target.join("c-file")).unwrap(), b"payload");
}

#[tokio::test(flavor = "multi_thread")]
async fn special_files_are_refused_on_ingest() {
    let (_, blobs, dirs) = services();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let fifo = src.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let r = castore::fs::ingest(&blobs, &dirs, &src).await;
    match r {
        Err(Error::InvalidRequest(msg)) => assert!(msg.contains("fifo"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
