//! The reference implementation's vectors (tests/vectors/castore.json): each
//! NAR, unpacked by the real `nix-store --restore`, must ingest to exactly
//! the root entry snix computes, and export back to an identical tree.
use std::{path::PathBuf, process::Command, sync::Arc};

use castore::{
    B3Digest, BlobService, DirectoryService, Node,
    blob::ChunkedBlobService,
    dirsvc::KvDirectoryService,
    kv::{EmbeddedStore, KvStore, MemoryStore},
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    name: String,
    nar: String,
    snix_root_entry: RootEntry,
}

#[derive(Deserialize)]
struct RootEntry {
    #[serde(rename = "type")]
    kind: String,
    digest: Option<String>,
    size: Option<u64>,
    executable: Option<bool>,
    target: Option<String>,
}

impl RootEntry {
    fn node(&self) -> Node {
        let digest = || self.digest.as_deref().expect("digest").parse::<B3Digest>().expect("digest parses");
        match self.kind.as_str() {
            "directory" => Node::Directory { digest: digest(), size: self.size.expect("size") },
            "file" => Node::File {
                digest: digest(),
                size: self.size.expect("size"),
                executable: self.executable.expect("executable"),
            },
            "symlink" => Node::Symlink { target: self.target.clone().expect("target").into() },
            other => panic!("unknown entry type {other}"),
        }
    }
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn load() -> Vec<Vector> {
    let text = std::fs::read_to_string(vectors_dir().join("castore.json")).expect("tests/vectors/castore.json");
    let vectors: Vec<Vector> = serde_json::from_str(&text).expect("vector JSON");
    assert!(vectors.len() >= 9, "expected the full vector set");
    vectors
}

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
    for v in load() {
        let restored = tmp.path().join(format!("{}-restored", v.name));
        restore(&vectors_dir().join(&v.nar), &restored);

        let node = castore::fs::ingest(&blobs, &dirs, &restored).await.unwrap();
        assert_eq!(node, v.snix_root_entry.node(), "vector {}", v.name);

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
