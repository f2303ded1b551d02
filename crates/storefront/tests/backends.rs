//! Our gRPC client backends (`grpc+http://…`, with and without
//! `?package=tvix`) against the real `storefront serve` binary.
mod common;

use std::io::SeekFrom;

use bytes::Bytes;
use castore::{B3Digest, BlobService, Directory, DirectoryService, proto};
use common::*;
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::{Code, codegen::http::uri::PathAndQuery};

const BIG: usize = 8 << 20;

/// Seeks to `offset` and reads `len` bytes, comparing with `source`.
async fn check_range(reader: &mut castore::BlobReader, source: &[u8], offset: u64, len: usize, what: &str) {
    let pos = reader.seek(SeekFrom::Start(offset)).await.expect("seek");
    assert_eq!(pos, offset, "{what}: seek landed elsewhere");
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).await.unwrap_or_else(|e| panic!("{what}: reading {len} bytes at {offset}: {e}"));
    let start = offset as usize;
    assert!(buf == source[start..start + len], "{what}: bytes at {offset}..{} differ from the source", start + len);
}

async fn blob_round_trips(package: &str, seed: u64) {
    let server = Server::start();
    let blobs = castore::blob_service_from_url(&server.url_for(package)).expect("blob client");
    let mut rng = Rng::new(seed);

    // The empty blob.
    let empty = blobs.put_bytes(Bytes::new(), None).await.expect("put empty");
    assert_eq!(empty, B3Digest::of(b""));
    assert_eq!(blobs.stat(&empty).await.expect("stat"), Some(vec![]), "empty blob: one chunk, no chunk list");
    assert_eq!(read_all(&*blobs, &empty).await, b"");

    // A small blob, with the expected digest given.
    let small = format!("small blob over {package}\n").into_bytes();
    let small_digest = B3Digest::of(&small);
    assert_eq!(blobs.put_bytes(small.clone().into(), Some(&small_digest)).await.expect("put small"), small_digest);
    assert_eq!(blobs.stat(&small_digest).await.expect("stat"), Some(vec![]));
    assert_eq!(read_all(&*blobs, &small_digest).await, small);

    // A single-chunk blob (below the minimum chunk size), read with seeks.
    let medium = rng.bytes(50_000);
    let medium_digest = blobs.put_bytes(medium.clone().into(), None).await.expect("put medium");
    assert_eq!(medium_digest, B3Digest::of(&medium));
    assert_eq!(blobs.stat(&medium_digest).await.expect("stat"), Some(vec![]));
    let mut reader = blobs.open_read(&medium_digest).await.expect("open").expect("present");
    check_range(&mut reader, &medium, 30_000, 1000, "single-chunk forward").await;
    check_range(&mut reader, &medium, 10, 100, "single-chunk backward").await;
    check_range(&mut reader, &medium, 49_000, 1000, "single-chunk tail").await;
    reader.seek(SeekFrom::Start(0)).await.expect("rewind");
    let mut all = Vec::new();
    reader.read_to_end(&mut all).await.expect("read after rewind");
    assert!(all == medium, "single-chunk blob read after seeks differs");

    // A multi-MiB blob the server splits into chunks.
    let big = rng.bytes(BIG);
    let big_digest = B3Digest::of(&big);
    assert_eq!(blobs.put_bytes(big.clone().into(), Some(&big_digest)).await.expect("put big"), big_digest);
    let chunks = blobs.stat(&big_digest).await.expect("stat").expect("big blob present");
    assert!(chunks.len() > 1, "an {BIG}-byte blob should be stored as several chunks, got {}", chunks.len());
    assert_eq!(chunks.iter().map(|c| c.size).sum::<u64>(), BIG as u64, "chunk sizes must add up to the blob size");
    let mut offset = 0usize;
    let mut starts = Vec::new();
    for c in &chunks {
        let end = offset + c.size as usize;
        assert_eq!(c.digest, B3Digest::of(&big[offset..end]), "chunk at {offset} is not named by its BLAKE3");
        starts.push(offset);
        offset = end;
    }

    let whole = read_all(&*blobs, &big_digest).await;
    assert_eq!(whole.len(), BIG);
    assert!(whole == big, "big blob read back differs from the source");

    let mut reader = blobs.open_read(&big_digest).await.expect("open").expect("present");
    for i in 0..10 {
        let offset = rng.below(BIG as u64);
        let len = (rng.below(400_000) as usize + 1).min(BIG - offset as usize);
        check_range(&mut reader, &big, offset, len, &format!("random read #{i}")).await;
    }
    // Across a chunk boundary, then backwards, then the very end.
    let boundary = starts[2] as u64;
    check_range(&mut reader, &big, boundary - 100, 200, "across a chunk boundary").await;
    check_range(&mut reader, &big, 1, 10, "back to the start").await;
    check_range(&mut reader, &big, BIG as u64 - 7, 7, "last bytes").await;
    let end = reader.seek(SeekFrom::End(0)).await.expect("seek to end");
    assert_eq!(end, BIG as u64);
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).await.expect("read at end"), 0, "nothing after the end");

    // One chunk, read by its chunk digest.
    for i in [0, 1, chunks.len() - 1] {
        let c = chunks[i];
        assert_eq!(blobs.stat(&c.digest).await.expect("stat chunk"), Some(vec![]), "chunk #{i} is stat-able");
        let data = read_all(&*blobs, &c.digest).await;
        assert!(data == big[starts[i]..starts[i] + c.size as usize], "chunk #{i} read by digest differs");
    }

    // Absent blobs.
    let missing = B3Digest::of(b"never stored anywhere");
    assert_eq!(blobs.stat(&missing).await.expect("stat missing"), None);
    assert!(blobs.open_read(&missing).await.expect("open missing").is_none());
}

async fn directory_closures(package: &str) {
    let server = Server::start();
    let dirs = castore::directory_service_from_url(&server.url_for(package)).expect("directory client");
    let tree = sample_tree(package);
    let root = tree.last().expect("root").digest();

    assert_eq!(dirs.put_closure(tree.clone()).await.expect("put_closure"), root);
    for d in &tree {
        assert_eq!(dirs.get(&d.digest()).await.expect("get").as_ref(), Some(d), "get {}", d.digest());
    }

    let got: Vec<Directory> = dirs.get_recursive(&root).try_collect().await.expect("get_recursive");
    assert_eq!(
        got.len(),
        tree.len(),
        "each directory once: {:?}",
        got.iter().map(Directory::digest).collect::<Vec<_>>()
    );
    assert_bfs(&got, &tree, &root);

    // A subtree on its own: mid1 → deep → {leaf_a, leaf_b}, leaf_a shared.
    let mid1 = tree[3].digest();
    let got: Vec<Directory> = dirs.get_recursive(&mid1).try_collect().await.expect("get_recursive mid1");
    assert_eq!(got.len(), 4);
    assert_bfs(&got, &tree, &mid1);

    // Putting the same closure again is fine and changes nothing.
    assert_eq!(dirs.put_closure(tree.clone()).await.expect("put again"), root);
    // A parent may refer to directories stored by an earlier put.
    let parent = dir(vec![("again", dir_node(&tree[5])), ("leaf", dir_node(&tree[0]))]);
    assert_eq!(dirs.put(parent.clone()).await.expect("put parent of stored dirs"), parent.digest());
    let got: Vec<Directory> = dirs.get_recursive(&parent.digest()).try_collect().await.expect("get_recursive");
    let mut all = tree.clone();
    all.push(parent.clone());
    assert_bfs(&got, &all, &parent.digest());

    // Absent directories.
    let missing = B3Digest::of(b"no such directory");
    assert_eq!(dirs.get(&missing).await.expect("get missing"), None);
    let err = dirs.get_recursive(&missing).try_collect::<Vec<_>>().await.expect_err("recursive get of a missing root");
    assert!(matches!(err, castore::Error::NotFound(_)), "missing root: expected NotFound, got {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_snix() {
    blob_round_trips("snix", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_tvix() {
    blob_round_trips("tvix", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directories_snix() {
    directory_closures("snix").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directories_tvix() {
    directory_closures("tvix").await;
}

/// What one package stores, the other reads: both names reach one store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packages_share_one_store() {
    let server = Server::start();
    let snix_blobs = castore::blob_service_from_url(&server.url_for("snix")).unwrap();
    let tvix_blobs = castore::blob_service_from_url(&server.url_for("tvix")).unwrap();
    let data = Bytes::from_static(b"written as snix, read as tvix");
    let digest = snix_blobs.put_bytes(data.clone(), None).await.expect("put via snix");
    assert_eq!(read_all(&*tvix_blobs, &digest).await, data);

    let snix_dirs = castore::directory_service_from_url(&server.url_for("snix")).unwrap();
    let tvix_dirs = castore::directory_service_from_url(&server.url_for("tvix")).unwrap();
    let tree = sample_tree("shared");
    let root = tvix_dirs.put_closure(tree.clone()).await.expect("put via tvix");
    let got: Vec<Directory> = snix_dirs.get_recursive(&root).try_collect().await.expect("get via snix");
    assert_bfs(&got, &tree, &root);

    assert!(
        castore::blob_service_from_url(&format!("{}?package=nix", server.url())).is_err(),
        "unknown package refused"
    );
}

/// The server answers by method path: the tvix path works on the wire, and a
/// path of neither package is UNIMPLEMENTED (so the package really matters).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn method_paths_on_the_wire() {
    let server = Server::start();
    let blobs = castore::blob_service_from_url(&server.url()).unwrap();
    let digest = blobs.put_bytes(Bytes::from_static(b"on the wire"), None).await.unwrap();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    async fn stat(
        channel: &tonic::transport::Channel,
        path: &'static str,
        digest: &B3Digest,
    ) -> Result<proto::StatBlobResponse, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = proto::StatBlobRequest { digest: digest.to_bytes(), send_chunks: true, send_bao: false };
        let codec = tonic_prost::ProstCodec::<proto::StatBlobRequest, proto::StatBlobResponse>::default();
        grpc.unary(tonic::Request::new(req), PathAndQuery::from_static(path), codec).await.map(|r| r.into_inner())
    }
    for path in ["/snix.castore.v1.BlobService/Stat", "/tvix.castore.v1.BlobService/Stat"] {
        let resp = stat(&channel, path, &digest).await.unwrap_or_else(|s| panic!("{path}: {s:?}"));
        assert!(resp.chunks.is_empty());
        let missing = B3Digest::of(b"missing");
        expect_code(stat(&channel, path, &missing).await, Code::NotFound, path);
    }
    expect_code(
        stat(&channel, "/nix.castore.v1.BlobService/Stat", &digest).await,
        Code::Unimplemented,
        "unknown package",
    );
}
