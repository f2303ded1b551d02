//! storefront's closure call (`storefront.store.v1.PathInfoBatchService`):
//! one call for a whole closure, the client's walk with Get against servers
//! without it, and the client refusing closures that are not exactly what
//! it asked for.
use std::{collections::BTreeSet, path::Path, sync::Arc};

use bytes::Bytes;
use castore::{Error, Node};
use store::{
    StorePath,
    pathinfo::{
        GrpcPathInfoService, MAX_CLOSURE_ROOTS, PathInfo, PathInfoService, path_info_batch_server,
        path_info_service_server,
    },
    proto::{self, batch::path_info_batch_service_client::PathInfoBatchServiceClient},
    url::path_info_service_from_url,
};
use tonic::{Code, Request, Response, Status};

fn store_path(seed: u8) -> StorePath {
    StorePath::from_parts([seed; 20], &format!("p{seed}")).unwrap()
}

/// A PathInfo needing no contents stored (a symlink).
fn info(seed: u8, references: &[u8]) -> PathInfo {
    PathInfo {
        store_path: store_path(seed),
        node: Node::Symlink { target: Bytes::from_static(b"x") },
        references: references.iter().map(|&r| store_path(r)).collect(),
        nar_size: 1,
        nar_sha256: [0; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

/// A store with 1 ← 2 ← 3 (3 also refers to itself and to 1), 1 ← 4, and
/// 5 alone.
async fn store() -> Arc<dyn PathInfoService> {
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = path_info_service_from_url("memory:", blobs, dirs).unwrap();
    for i in [info(1, &[]), info(2, &[1]), info(3, &[2, 3, 1]), info(4, &[1]), info(5, &[])] {
        paths.put(i).await.unwrap();
    }
    paths
}

/// Serves routes on a new Unix socket at `path`, until the test ends.
async fn serve_unix(path: &Path, routes: tonic::service::Routes) {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(tokio::net::UnixListener::bind(path).unwrap());
    tokio::spawn(tonic::transport::Server::builder().add_routes(routes).serve_with_incoming(incoming));
}

fn transport(sock: &Path) -> castore::grpc::Transport {
    castore::grpc::connect(&url::Url::parse(&format!("grpc+unix:{}", sock.display())).unwrap()).unwrap()
}

fn names(infos: &[PathInfo]) -> BTreeSet<String> {
    infos.iter().map(|i| i.store_path.name().to_owned()).collect()
}

/// With the closure call, without it (only the standard PathInfoService:
/// the client walks), and with both: the same closure, references first.
#[tokio::test(flavor = "multi_thread")]
async fn closure_with_and_without_the_call() {
    let paths = store().await;
    let tmp = tempfile::tempdir().unwrap();
    for (name, standard, batch) in [("batch-only", false, true), ("standard-only", true, false), ("both", true, true)] {
        let sock = tmp.path().join(format!("{name}.sock"));
        let mut routes = tonic::service::Routes::builder();
        if standard {
            let (blobs, dirs) = (
                castore::blob_service_from_url("memory:").unwrap(),
                castore::directory_service_from_url("memory:").unwrap(),
            );
            routes.add_service(path_info_service_server(paths.clone(), blobs, dirs));
        }
        if batch {
            routes.add_service(path_info_batch_server(paths.clone()));
        }
        serve_unix(&sock, routes.routes()).await;
        let client = GrpcPathInfoService::new(transport(&sock));
        // Twice: the second time, a client that was turned down walks at once.
        for _ in 0..2 {
            let got = store::pathinfo::closure(&client, &[store_path(3)]).await.unwrap();
            assert_eq!(names(&got), BTreeSet::from(["p1".into(), "p2".into(), "p3".into()]), "{name}");
            let at = |n: &str| got.iter().position(|i| i.store_path.name() == n).unwrap();
            assert!(at("p1") < at("p2") && at("p2") < at("p3"), "{name}: references first");
            let two = client.closure(&[*store_path(4).digest(), *store_path(5).digest()]).await.unwrap();
            assert_eq!(names(&two), BTreeSet::from(["p1".into(), "p4".into(), "p5".into()]), "{name}");
        }
        // Missing roots are named, whichever way the closure is had.
        match client.closure(&[*store_path(9).digest(), *store_path(1).digest()]).await {
            Err(Error::NotFound(m)) => assert!(m.contains(&store::nix32::encode(&[9; 20])), "{name}: {m}"),
            other => panic!("{name}: expected NotFound, got {other:?}"),
        }
    }
}

/// Malformed requests: INVALID_ARGUMENT naming what is wrong.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s.sock");
    serve_unix(&sock, tonic::service::Routes::new(path_info_batch_server(store().await))).await;
    let mut raw = PathInfoBatchServiceClient::new(transport(&sock));
    let ask = |digests: Vec<Bytes>| proto::batch::ClosureRequest { digests };
    let status = raw.closure(ask(vec![Bytes::from(vec![1; 20]), Bytes::from(vec![1; 19])])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("digest #1 has 19 bytes"), "{}", status.message());
    let too_many = vec![Bytes::from(vec![1; 20]); MAX_CLOSURE_ROOTS + 1];
    let status = raw.closure(ask(too_many)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    // The most allowed is served.
    let most = vec![Bytes::from(vec![1; 20]); MAX_CLOSURE_ROOTS];
    let mut stream = raw.closure(ask(most)).await.unwrap().into_inner();
    let first = PathInfo::from_proto(stream.message().await.unwrap().unwrap()).unwrap();
    assert_eq!(first.store_path, store_path(1));
    assert!(stream.message().await.unwrap().is_none(), "one path, however often asked for");
}

/// A server that answers the closure call with a fixed list of PathInfos.
struct Scripted(Vec<PathInfo>);

#[tonic::async_trait]
impl proto::batch::path_info_batch_service_server::PathInfoBatchService for Scripted {
    type ClosureStream = futures::stream::BoxStream<'static, Result<proto::PathInfo, Status>>;

    async fn closure(&self, _: Request<proto::batch::ClosureRequest>) -> Result<Response<Self::ClosureStream>, Status> {
        let msgs: Vec<_> = self.0.iter().map(|i| Ok(i.to_proto())).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
    }
}

/// Answers that are not exactly the closure asked for are refused: a path
/// twice, a reference left out, a path no root reaches, another root.
#[tokio::test(flavor = "multi_thread")]
async fn answers_that_are_not_the_closure_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let honest = vec![info(3, &[2, 3, 1]), info(2, &[1]), info(1, &[])];
    let cases = [
        ("twice", vec![info(3, &[2, 3, 1]), info(2, &[1]), info(1, &[]), info(2, &[1])], "twice"),
        ("lacking", vec![info(3, &[2, 3, 1]), info(1, &[])], "lacks"),
        ("stray", vec![info(3, &[2, 3, 1]), info(2, &[1]), info(1, &[]), info(5, &[])], "no path asked for reaches"),
        ("other root", vec![info(4, &[1]), info(1, &[])], "lacks"),
        ("honest", honest, ""),
    ];
    for (name, answer, error) in cases {
        let sock = tmp.path().join(format!("{}.sock", name.replace(' ', "-")));
        let server = proto::batch::path_info_batch_service_server::PathInfoBatchServiceServer::new(Scripted(answer));
        serve_unix(&sock, tonic::service::Routes::new(server)).await;
        let client = GrpcPathInfoService::new(transport(&sock));
        match client.closure(&[*store_path(3).digest()]).await {
            Ok(got) if error.is_empty() => assert_eq!(got.len(), 3),
            Err(Error::Storage(m)) if !error.is_empty() => assert!(m.contains(error), "{name}: {m}"),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}
