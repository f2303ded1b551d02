//! An upload cut off mid-stream stores nothing: neither the whole blob nor
//! the prefix that arrived becomes visible.
mod common;

use bytes::Bytes;
use castore::{B3Digest, proto};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_blob_put_leaves_nothing() {
    let server = Server::start();
    let url = url::Url::parse(&server.url()).unwrap();
    let data = Rng::new(7).bytes(6 << 20);
    let half = 3 << 20;

    // Send the first half, then drop the call while the stream is still open.
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::BlobChunk>(1);
    let mut client = proto::blob_service_client::BlobServiceClient::new(castore::grpc::connect(&url).unwrap());
    let call = tokio::spawn(async move { client.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    for piece in data[..half].chunks(256 << 10) {
        tx.send(proto::BlobChunk { data: Bytes::copy_from_slice(piece) }).await.unwrap();
    }
    // Let the server take in what was sent, then cut the call.
    let blobs = castore::blob_service_from_url(&server.url()).unwrap();
    blobs.has(&B3Digest::of(b"round trip")).await.unwrap();
    call.abort();
    let _ = call.await;
    drop(tx);

    // The server must not have treated the reset as the end of the blob.
    for (what, digest) in [("prefix", B3Digest::of(&data[..half])), ("whole", B3Digest::of(&data))] {
        assert!(!blobs.has(&digest).await.unwrap(), "the {what} of an interrupted upload is visible");
    }
    // A complete upload afterwards works.
    let digest = blobs.put_bytes(data.clone().into(), None).await.unwrap();
    assert_eq!(read_all(blobs.as_ref(), &digest).await, data);
}
