//! Nix layers when fetching cannot work: no store configured, malformed
//! labels, and a store that fails (a fault-injecting fetcher). A refused
//! Prepare leaves no snapshot, directory or store path behind.
mod common;

use std::{path::Path, sync::Arc};

use common::*;
use snapshotter::{FetchFailure, PathFetcher};
use store::StorePath;
use tonic::Code;

const PATH: &str = "/nix/store/0c6kzph7l0dcbyvp6d4cfbhlhh1f0s3h-hello-2.12";

/// Fails every fetch, after writing a partial entry as a broken fetch could.
struct FailingStore {
    unavailable: bool,
}

#[async_trait::async_trait]
impl PathFetcher for FailingStore {
    async fn fetch(&self, roots: &[StorePath], store_dir: &Path) -> Result<Vec<StorePath>, FetchFailure> {
        assert_eq!(roots.len(), 1, "{roots:?}");
        std::fs::write(store_dir.join(".tmp-partial"), "half").unwrap();
        Err(FetchFailure { message: "the store refused: injected".into(), unavailable: self.unavailable })
    }
}

fn nothing_left(s: &Served) {
    assert_eq!(std::fs::read_dir(s.snapshots_dir()).unwrap().count(), 0, "a snapshot directory was left");
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_layers_need_a_store() {
    let (_dir, root) = temp_root();
    let s = Served::start(&root, None).await;
    let mut c = s.client.clone();
    let labels = [("containerd.io/snapshot/nix-layer", "true"), ("containerd.io/snapshot/nix-store-path.0", PATH)];
    let status = expect_code(prepare(&mut c, "ns/1/n", "", &labels).await, Code::FailedPrecondition, "no store");
    assert!(status.message().contains("--store"), "{}", status.message());
    let status = expect_code(
        prepare(&mut c, "ns/1/n", "", &[("containerd.io/snapshot/nix-closure", PATH)]).await,
        Code::FailedPrecondition,
        "no store (closure form)",
    );
    assert!(status.message().contains("nix layer"), "{}", status.message());
    assert_eq!(list_names(&mut c, &[]).await, Vec::<String>::new());
    nothing_left(&s);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_nix_labels_are_refused() {
    let (_dir, root) = temp_root();
    let fetcher = Arc::new(FailingStore { unavailable: true });
    let s = Served::start(&root, Some(fetcher)).await;
    let mut c = s.client.clone();
    for (what, labels) in [
        ("a path outside the store", vec![("containerd.io/snapshot/nix-store-path.0", "/etc/passwd")]),
        ("a path inside a store path", vec![("containerd.io/snapshot/nix-store-path.0", &format!("{PATH}/bin")[..])]),
        ("an escaping name", vec![("containerd.io/snapshot/nix-closure", "/nix/store/../../etc")]),
        ("a bad index", vec![("containerd.io/snapshot/nix-store-path.x", PATH)]),
        (
            "a bad hash",
            vec![("containerd.io/snapshot/nix-store-path.0", "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x")],
        ),
    ] {
        expect_code(prepare(&mut c, "ns/1/n", "", &labels).await, Code::InvalidArgument, what);
    }
    nothing_left(&s);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_store_fails_the_prepare_cleanly() {
    for (unavailable, code) in [(true, Code::Unavailable), (false, Code::Internal)] {
        let (_dir, root) = temp_root();
        let s = Served::start(&root, Some(Arc::new(FailingStore { unavailable }))).await;
        let mut c = s.client.clone();
        let labels = [("containerd.io/snapshot/nix-layer", "true"), ("containerd.io/snapshot/nix-store-path.0", PATH)];
        let status = expect_code(prepare(&mut c, "ns/1/n", "", &labels).await, code, "a failing store");
        assert!(status.message().contains("injected"), "the reason is passed on: {}", status.message());
        expect_code(stat(&mut c, "ns/1/n").await, Code::NotFound, "the refused snapshot");
        nothing_left(&s);
        // The key is free again; an ordinary layer works meanwhile.
        prepare(&mut c, "ns/1/n", "", &[]).await.unwrap();
        // What the broken fetch left in the store goes at the next Cleanup.
        cleanup(&mut c).await.unwrap();
        assert_eq!(std::fs::read_dir(s.store_dir()).unwrap().count(), 0);
        s.stop().await;
    }
}
