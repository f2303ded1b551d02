//! The `grpc+unix:` client backends against a server on a Unix socket,
//! speaking both package names.
use std::sync::Arc;

use bytes::Bytes;
use castore::{
    B3Digest, BlobService, Directory, DirectoryService, Name, Node,
    blob::ChunkedBlobService,
    dirsvc::KvDirectoryService,
    grpc::PackageRewrite,
    kv::{KvStore, MemoryStore},
};
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

mod common;

async fn serve_unix(path: &std::path::Path, accept_tvix: bool) {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(castore::grpc::blob_service_server(Arc::new(ChunkedBlobService::new(kv.clone()))))
        .add_service(castore::grpc::directory_service_server(Arc::new(KvDirectoryService::new(kv))));
    let routes = routes.routes().into_axum_router();
    // Without the rewrite the server only knows snix paths.
    let routes = if accept_tvix {
        PackageRewrite::accept_tvix(routes)
    } else {
        PackageRewrite::speak(routes, castore::grpc::Package::Snix)
    };
    common::serve_unix(path, routes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_clients_speak_both_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("castore.sock");
    serve_unix(&sock, true).await;

    let data: Bytes = (0..3u32 << 20).map(|i| (i.wrapping_mul(2246822519) >> 9) as u8).collect::<Vec<_>>().into();
    for package in ["snix", "tvix"] {
        let url = format!("grpc+unix:{}?package={package}", sock.display());
        let blobs = castore::blob_service_from_url(&url).unwrap();
        let dirs = castore::directory_service_from_url(&url).unwrap();

        let digest = blobs.put_bytes(data.clone(), Some(&B3Digest::of(&data))).await.unwrap();
        let chunks = blobs.stat(&digest).await.unwrap().expect("stored");
        assert!(chunks.len() > 1, "a 3 MiB blob is chunked");
        let mut reader = blobs.open_read(&digest).await.unwrap().unwrap();
        reader.seek(std::io::SeekFrom::Start(1_234_567)).await.unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, &data[1_234_567..], "{package}");

        let mut leaf = Directory::default();
        leaf.add(Name::new("blob").unwrap(), Node::File { digest, size: data.len() as u64, executable: false })
            .unwrap();
        let mut root = Directory::default();
        root.add(
            Name::new(format!("{package}-leaf")).unwrap(),
            Node::Directory { digest: leaf.digest(), size: leaf.size() },
        )
        .unwrap();
        assert_eq!(dirs.put_closure(vec![leaf.clone(), root.clone()]).await.unwrap(), root.digest());
        let walked: Vec<Directory> = dirs.get_recursive(&root.digest()).try_collect().await.unwrap();
        assert_eq!(walked, vec![root, leaf]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tvix_clients_really_send_tvix_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("snix-only.sock");
    serve_unix(&sock, false).await;
    let snix = castore::blob_service_from_url(&format!("grpc+unix:{}", sock.display())).unwrap();
    let tvix = castore::blob_service_from_url(&format!("grpc+unix:{}?package=tvix", sock.display())).unwrap();
    let digest = snix.put_bytes(Bytes::from_static(b"x"), None).await.unwrap();
    assert!(snix.has(&digest).await.unwrap());
    match tvix.has(&digest).await {
        Err(castore::Error::Remote(s)) => assert_eq!(s.code(), tonic::Code::Unimplemented),
        other => panic!("a snix-only server answered a tvix path: {other:?}"),
    }
}
