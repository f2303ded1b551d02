//! The reference implementation's vectors (tests/vectors/castore.json): each
//! NAR, unpacked by the real `nix-store --restore`, must ingest to exactly
//! the root entry snix computes, and export back to an identical tree.
use std::{process::Command, sync::Arc};

use castore::{
    BlobService, DirectoryService, Node,
    blob::ChunkedBlobService,
    dirsvc::KvDirectoryService,
    kv::{EmbeddedStore, KvStore, MemoryStore},
};

fn restore(nar: &std::path::Path, target: &std::path::Path) {
    let status = Command::new("nix-store")
        .arg("--restore")
        .arg(target)
        .stdin(std::fs::File::open(nar).expect("vector NAR"))
        .status()
        .expect("nix-store must be installed (apt-get install nix-bin)");
    assert!(status.success(), "nix-store --restore failed for {}", nar.display());
}

fn diff(a: &std::path::Path, b: &std::path::Path) {
    let out = Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().expect("diff");
    assert!(out.status.success(), "diff -r {} {}:\n{}", a.display(), b.display(), String::from_utf8_lossy(&out.stdout));
}

async fn check_all(kv: Arc<dyn KvStore>) {
    let blobs = ChunkedBlobService::new(kv.clone());
    let dirs = KvDirectoryService::new(kv);
    let tmp = tempfile::tempdir().unwrap();
    for v in testkit::vectors() {
        let restored = tmp.path().join(format!("{}-restored", v.name));
        restore(&v.nar, &restored);

        let node = castore::fs::ingest(&blobs, &dirs, &restored).await.unwrap();
        assert_eq!(node, testkit::castore_node!(&v.root), "vector {}", v.name);

        // Everything the root names is stored.
        match &node {
            Node::Directory { digest, .. } => {
                assert!(dirs.get(digest).await.unwrap().is_some());
            }
            Node::File { digest, .. } => assert!(blobs.has(digest).await.unwrap()),
            Node::Symlink { .. } => {}
        }

        let exported = tmp.path().join(format!("{}-exported", v.name));
        castore::fs::export(&blobs, &dirs, &node, &exported).await.unwrap();
        diff(&restored, &exported);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vectors_into_memory() {
    check_all(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vectors_into_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    check_all(Arc::new(EmbeddedStore::open(&dir.path().join("castore.redb")).unwrap())).await;
}
