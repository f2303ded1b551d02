//! storefront's batch read (`storefront.castore.v1.BlobBatchService`) and
//! the client's fallback to one `Read` per blob against servers without it.
use std::sync::Arc;

use bytes::Bytes;
use castore::grpc::PackageRewrite;
use castore::{
    B3Digest, BlobService,
    blob::ChunkedBlobService,
    kv::{KvStore, MemoryStore},
};
use futures::{StreamExt, TryStreamExt};

mod common;

/// Serves `blobs` on a Unix socket with the standard blob service, the
/// batch service, or both.
async fn serve(path: &std::path::Path, blobs: Arc<dyn BlobService>, standard: bool, batch: bool) {
    let mut routes = tonic::service::Routes::builder();
    if standard {
        routes.add_service(castore::grpc::blob_service_server(blobs.clone()));
    }
    if batch {
        routes.add_service(castore::grpc::blob_batch_server(blobs));
    }
    let routes = PackageRewrite::speak(routes.routes().into_axum_router(), castore::grpc::Package::Snix);
    common::serve_unix(path, routes).await;
}

fn noise(len: usize, seed: u32) -> Bytes {
    (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>().into()
}

/// A store holding a few blobs: small ones, an empty one, and one of 3 MiB
/// (several chunks, more than one message).
async fn stored() -> (Arc<dyn BlobService>, Vec<Bytes>) {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let blobs: Arc<dyn BlobService> = Arc::new(ChunkedBlobService::new(kv));
    let all = vec![noise(100, 1), Bytes::new(), noise(3 << 20, 2), noise(70_000, 3), noise(100, 1)];
    for data in &all {
        blobs.put_bytes(data.clone(), None).await.unwrap();
    }
    (blobs, all)
}

fn wanted(all: &[Bytes]) -> Vec<(B3Digest, u64)> {
    all.iter().map(|d| (B3Digest::of(d), d.len() as u64)).collect()
}

/// Served by the batch call alone (no standard blob service to fall back
/// to), and by the standard one alone: the same blobs, in order.
#[tokio::test(flavor = "multi_thread")]
async fn read_many_with_and_without_the_batch_call() {
    let (blobs, all) = stored().await;
    let tmp = tempfile::tempdir().unwrap();
    for (name, standard, batch) in [("batch-only", false, true), ("standard-only", true, false), ("both", true, true)] {
        let sock = tmp.path().join(format!("{name}.sock"));
        serve(&sock, blobs.clone(), standard, batch).await;
        let client = castore::blob_service_from_url(&format!("grpc+unix:{}", sock.display())).unwrap();
        let got: Vec<Bytes> = client.read_many(wanted(&all)).try_collect().await.unwrap();
        assert_eq!(got, all, "{name}");
        // Twice: the fallback is remembered, the batch call reused.
        let got: Vec<Bytes> = client.read_many(wanted(&all[..2])).try_collect().await.unwrap();
        assert_eq!(got, all[..2], "{name}, again");
    }
}

/// A blob the server lacks ends the batch with NotFound naming it; a size
/// that is not the blob's is refused, as are wrong bytes (the digest).
#[tokio::test(flavor = "multi_thread")]
async fn read_many_refuses_what_was_not_asked_for() {
    let (blobs, all) = stored().await;
    let tmp = tempfile::tempdir().unwrap();
    for (name, standard, batch) in [("batch", false, true), ("standard", true, false)] {
        let sock = tmp.path().join(format!("{name}.sock"));
        serve(&sock, blobs.clone(), standard, batch).await;
        let client = castore::blob_service_from_url(&format!("grpc+unix:{}", sock.display())).unwrap();

        let absent = B3Digest::of(b"not stored");
        let mut asked = wanted(&all[..1]);
        asked.push((absent, 10));
        let mut stream = client.read_many(asked);
        assert_eq!(stream.next().await.unwrap().unwrap(), all[0], "{name}");
        let err = stream.next().await.unwrap().unwrap_err().to_string();
        assert!(err.contains(&absent.to_string()) && err.contains("not found"), "{name}: {err}");

        for size in [99, 101] {
            let err = client.read_many(vec![(B3Digest::of(&all[0]), size)]).try_collect::<Vec<_>>().await.unwrap_err();
            assert!(err.to_string().contains(&B3Digest::of(&all[0]).to_string()), "{name}, size {size}: {err}");
        }
        let err = client.read_many(vec![(B3Digest::of(&all[0]), 70_000)]).try_collect::<Vec<_>>().await;
        assert!(err.is_err(), "{name}: a size claimed for another blob's bytes");
    }
}

/// `read_checked` streams a whole blob in one call and fails, at the end at
/// the latest, when it is not exactly the blob.
#[tokio::test(flavor = "multi_thread")]
async fn read_checked_checks_size_and_digest() {
    let (blobs, all) = stored().await;
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("blobs.sock");
    serve(&sock, blobs, true, true).await;
    let client = castore::blob_service_from_url(&format!("grpc+unix:{}", sock.display())).unwrap();
    let big = &all[2];
    let digest = B3Digest::of(big);
    let pieces: Vec<Bytes> =
        client.read_checked(&digest, big.len() as u64).await.unwrap().unwrap().try_collect().await.unwrap();
    assert_eq!(pieces.concat(), big.to_vec());
    for size in [big.len() as u64 - 1, big.len() as u64 + 1] {
        let stream = client.read_checked(&digest, size).await.unwrap().unwrap();
        assert!(stream.try_collect::<Vec<_>>().await.is_err(), "size {size} accepted");
    }
    assert!(client.read_checked(&B3Digest::of(b"absent"), 6).await.unwrap().is_none());
}
