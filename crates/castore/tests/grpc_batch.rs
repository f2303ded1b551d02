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

/// Malformed requests are refused whole, with INVALID_ARGUMENT: a digest
/// that is not 32 bytes (named by its position), more digests than a call
/// may carry.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_batches_are_refused() {
    use castore::proto::batch::{ReadBlobsRequest, blob_batch_service_client::BlobBatchServiceClient};
    let (blobs, all) = stored().await;
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("blobs.sock");
    serve(&sock, blobs, false, true).await;
    let url = url::Url::parse(&format!("grpc+unix:{}", sock.display())).unwrap();
    let mut client = BlobBatchServiceClient::new(castore::grpc::connect(&url).unwrap());

    let good = B3Digest::of(&all[0]).to_bytes();
    let short = Bytes::from_static(b"too short");
    let err = client.read(ReadBlobsRequest { digests: vec![good.clone(), short] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("digest #1"), "{err:?}");

    let too_many = vec![good.clone(); castore::grpc::MAX_BATCH_DIGESTS + 1];
    let err = client.read(ReadBlobsRequest { digests: too_many }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(&format!("at most {}", castore::grpc::MAX_BATCH_DIGESTS)), "{err:?}");

    // The most a call may carry is served.
    let mut pieces = client
        .read(ReadBlobsRequest { digests: vec![good; castore::grpc::MAX_BATCH_DIGESTS] })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(piece) = pieces.message().await.unwrap() {
        assert_eq!(piece.data, all[0]);
        last = Some(piece.index);
    }
    assert_eq!(last, Some(castore::grpc::MAX_BATCH_DIGESTS as u32 - 1));
}

/// Pieces of a batch answer: (blob index, bytes).
type Pieces = Vec<(u32, Bytes)>;

/// A batch service that answers every call with these pieces.
struct Scripted(Pieces);

#[tonic::async_trait]
impl castore::proto::batch::blob_batch_service_server::BlobBatchService for Scripted {
    type ReadStream = futures::stream::BoxStream<'static, Result<castore::proto::batch::BlobPiece, tonic::Status>>;

    async fn read(
        &self,
        _: tonic::Request<castore::proto::batch::ReadBlobsRequest>,
    ) -> Result<tonic::Response<Self::ReadStream>, tonic::Status> {
        let pieces = self
            .0
            .iter()
            .map(|(index, data)| Ok(castore::proto::batch::BlobPiece { index: *index, data: data.clone() }));
        Ok(tonic::Response::new(futures::stream::iter(pieces.collect::<Vec<_>>()).boxed()))
    }
}

/// What a server may get wrong in a batch answer is refused by the client:
/// pieces out of order, a blob cut short or running long, more blobs than
/// asked for, wrong bytes.
#[tokio::test(flavor = "multi_thread")]
async fn batch_answers_that_break_the_contract_are_refused() {
    let (a, b) = (Bytes::from_static(b"first blob"), Bytes::from_static(b"second"));
    let wanted = vec![(B3Digest::of(&a), a.len() as u64), (B3Digest::of(&b), b.len() as u64)];
    let half = |x: &Bytes, r: std::ops::Range<usize>| x.slice(r);
    let cases: Vec<(&str, Pieces, &str)> = vec![
        ("out of order", vec![(1, b.clone()), (0, a.clone())], "piece of blob #1 while blob #0"),
        ("cut short", vec![(0, half(&a, 0..5)), (1, b.clone())], "while blob #0"),
        ("ended early", vec![(0, a.clone())], "ended the batch while blob #1"),
        ("too long", vec![(0, a.clone()), (0, Bytes::from_static(b"!")), (1, b.clone())], "more than the 10 bytes"),
        ("one too many", vec![(0, a.clone()), (1, b.clone()), (2, a.clone())], "after the 2 blobs asked for"),
        ("wrong bytes", vec![(0, Bytes::from_static(b"first blub")), (1, b.clone())], "read as"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, pieces, needle) in cases {
        let sock = tmp.path().join(format!("{}.sock", name.replace(' ', "-")));
        let mut routes = tonic::service::Routes::builder();
        routes.add_service(castore::proto::batch::blob_batch_service_server::BlobBatchServiceServer::new(Scripted(
            pieces,
        )));
        common::serve_unix(
            &sock,
            PackageRewrite::speak(routes.routes().into_axum_router(), castore::grpc::Package::Snix),
        )
        .await;
        let client = castore::blob_service_from_url(&format!("grpc+unix:{}", sock.display())).unwrap();
        let err = client.read_many(wanted.clone()).try_collect::<Vec<_>>().await.unwrap_err().to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
}
