//! DirectoryService semantics on every local engine: closure validation,
//! atomicity of a refused put, and the recursive walk order.
use std::sync::Arc;

use castore::{
    B3Digest, Directory, DirectoryService, Error, Name, Node,
    dirsvc::KvDirectoryService,
    kv::{EmbeddedStore, KvStore, MemoryStore},
};
use futures::TryStreamExt;

fn file(name: &str) -> (Name, Node) {
    (
        Name::new(name.to_owned()).unwrap(),
        Node::File { digest: B3Digest::of(name.as_bytes()), size: name.len() as u64, executable: false },
    )
}

fn dir_of(entries: Vec<(Name, Node)>) -> Directory {
    let mut d = Directory::default();
    for (n, node) in entries {
        d.add(n, node).unwrap();
    }
    d
}

fn child(name: &str, d: &Directory) -> (Name, Node) {
    (Name::new(name.to_owned()).unwrap(), Node::Directory { digest: d.digest(), size: d.size() })
}

fn engines() -> Vec<(&'static str, Arc<dyn KvStore>, Option<tempfile::TempDir>)> {
    let tmp = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&tmp.path().join("castore.redb")).unwrap();
    vec![("memory", Arc::new(MemoryStore::new()), None), ("embedded", Arc::new(embedded), Some(tmp))]
}

async fn assert_absent(svc: &KvDirectoryService, dirs: &[Directory]) {
    for d in dirs {
        assert!(svc.get(&d.digest()).await.unwrap().is_none(), "{} was stored by a refused put", d.digest());
    }
}

fn invalid(r: castore::Result<B3Digest>, needle: &str) {
    match r {
        Err(Error::InvalidRequest(msg)) => assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}"),
        other => panic!("expected InvalidRequest containing {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn closures_are_validated_whole() {
    for (name, kv, _guard) in engines() {
        let svc = KvDirectoryService::new(kv);
        let leaf = dir_of(vec![file("a"), file("b")]);
        let mid = dir_of(vec![child("leaf", &leaf), file("c")]);
        let root = dir_of(vec![child("m1", &mid), child("m2", &leaf)]);

        invalid(svc.put_closure(vec![]).await, "empty");
        // Root before its children.
        invalid(svc.put_closure(vec![root.clone(), mid.clone(), leaf.clone()]).await, "unknown directory");
        assert_absent(&svc, &[root.clone(), mid.clone(), leaf.clone()]).await;
        // A directory that the root does not reach.
        let stray = dir_of(vec![file("stray")]);
        invalid(
            svc.put_closure(vec![stray.clone(), leaf.clone(), mid.clone(), root.clone()]).await,
            "not below the root",
        );
        assert_absent(&svc, &[stray, root.clone(), mid.clone(), leaf.clone()]).await;
        // A size fitting neither formula.
        let mut bad = Directory::default();
        bad.add(Name::new("leaf").unwrap(), Node::Directory { digest: leaf.digest(), size: 3 }).unwrap();
        invalid(svc.put_closure(vec![leaf.clone(), bad.clone()]).await, "fits neither");
        assert_absent(&svc, &[leaf.clone(), bad]).await;

        // The valid closure, then a parent of it alone (children already stored).
        let got = svc.put_closure(vec![leaf.clone(), mid.clone(), root.clone()]).await.unwrap();
        assert_eq!(got, root.digest(), "{name}");
        let top = dir_of(vec![child("root", &root)]);
        assert_eq!(svc.put(top.clone()).await.unwrap(), top.digest());

        // Recursive get: root first, breadth-first, each once.
        let walked: Vec<B3Digest> =
            svc.get_recursive(&top.digest()).map_ok(|d| d.digest()).try_collect().await.unwrap();
        assert_eq!(walked, vec![top.digest(), root.digest(), mid.digest(), leaf.digest()], "{name}");

        let missing = B3Digest::of(b"missing");
        assert!(matches!(svc.get_recursive(&missing).try_collect::<Vec<_>>().await, Err(Error::NotFound(_))));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_size_formula_is_accepted() {
    for (_, kv, _guard) in engines() {
        let svc = KvDirectoryService::new(kv);
        let leaf = dir_of(vec![file("a"), file("b")]);
        let mut parent = Directory::default();
        parent
            .add(Name::new("leaf").unwrap(), Node::Directory { digest: leaf.digest(), size: leaf.size_documented() })
            .unwrap();
        assert_ne!(leaf.size(), leaf.size_documented());
        assert_eq!(svc.put_closure(vec![leaf.clone(), parent.clone()]).await.unwrap(), parent.digest());
        assert_eq!(svc.get(&parent.digest()).await.unwrap(), Some(parent));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_store_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("castore.redb");
    let leaf = dir_of(vec![file("x")]);
    let root = dir_of(vec![child("leaf", &leaf)]);
    {
        let svc = KvDirectoryService::new(Arc::new(EmbeddedStore::open(&path).unwrap()));
        svc.put_closure(vec![leaf.clone(), root.clone()]).await.unwrap();
    }
    let svc = KvDirectoryService::new(Arc::new(EmbeddedStore::open(&path).unwrap()));
    assert_eq!(svc.get(&root.digest()).await.unwrap(), Some(root));
    assert_eq!(svc.get(&leaf.digest()).await.unwrap(), Some(leaf));
}
