//! storefront's batch call for directory closures
//! (`storefront.castore.v1.DirectoryBatchService`): many roots in one
//! stream, each directory once; the client's fallback to one recursive Get
//! per root against servers without it; and the client refusing streams
//! that are not exactly the closures it asked for.
use std::sync::Arc;

use castore::{
    B3Digest, Directory, DirectoryService, Error, Name, Node,
    dirsvc::KvDirectoryService,
    grpc::{MAX_BATCH_DIGESTS, PackageRewrite},
    kv::MemoryStore,
    proto::{
        self,
        batch::{
            GetDirectoriesRequest, directory_batch_service_client::DirectoryBatchServiceClient,
            directory_batch_service_server::DirectoryBatchServiceServer,
        },
    },
};
use futures::TryStreamExt;
use tonic::{Request, Response, Status};

mod common;

fn name(n: &str) -> Name {
    Name::new(n.to_owned()).unwrap()
}

fn file(n: &str) -> (Name, Node) {
    (name(n), Node::File { digest: B3Digest::of(n.as_bytes()), size: n.len() as u64, executable: false })
}

fn child(n: &str, d: &Directory) -> (Name, Node) {
    (name(n), Node::Directory { digest: d.digest(), size: d.size() })
}

fn dir_of(entries: Vec<(Name, Node)>) -> Directory {
    let mut d = Directory::default();
    for (n, node) in entries {
        d.add(n, node).unwrap();
    }
    d
}

/// Two roots sharing a directory, and a third root that is that directory:
/// `one` = {a: shared, f}, `two` = {b: shared, c: own}, `shared` = {g}.
struct Trees {
    one: Directory,
    two: Directory,
    shared: Directory,
    own: Directory,
}

fn trees() -> Trees {
    let shared = dir_of(vec![file("g")]);
    let own = dir_of(vec![file("h")]);
    let one = dir_of(vec![child("a", &shared), file("f")]);
    let two = dir_of(vec![child("b", &shared), child("c", &own)]);
    Trees { one, two, shared, own }
}

async fn stored(t: &Trees) -> Arc<dyn DirectoryService> {
    let dirs: Arc<dyn DirectoryService> = Arc::new(KvDirectoryService::new(Arc::new(MemoryStore::new())));
    dirs.put_closure(vec![t.shared.clone(), t.one.clone()]).await.unwrap();
    dirs.put_closure(vec![t.own.clone(), t.two.clone()]).await.unwrap();
    dirs
}

/// Serves `routes` on a new Unix socket and returns a client of it.
async fn client_of(sock: &std::path::Path, routes: tonic::service::Routes) -> Arc<dyn DirectoryService> {
    let routes = PackageRewrite::speak(routes.into_axum_router(), castore::grpc::Package::Snix);
    common::serve_unix(sock, routes).await;
    castore::directory_service_from_url(&format!("grpc+unix:{}", sock.display())).unwrap()
}

fn digests(dirs: &[Directory]) -> Vec<B3Digest> {
    dirs.iter().map(Directory::digest).collect()
}

/// With the batch call alone (no standard service to fall back to), the
/// standard service alone, and both: the same stream, each directory once,
/// parents before children, as the local service sends it.
#[tokio::test(flavor = "multi_thread")]
async fn closures_with_and_without_the_batch_call() {
    let t = trees();
    let local = stored(&t).await;
    let roots = vec![t.one.digest(), t.two.digest(), t.shared.digest()];
    let expected: Vec<Directory> = local.get_closures(roots.clone()).try_collect().await.unwrap();
    assert_eq!(digests(&expected), vec![t.one.digest(), t.shared.digest(), t.two.digest(), t.own.digest()]);

    let tmp = tempfile::tempdir().unwrap();
    for (label, standard, batch) in [("batch-only", false, true), ("standard-only", true, false), ("both", true, true)]
    {
        let mut routes = tonic::service::Routes::builder();
        if standard {
            routes.add_service(castore::grpc::directory_service_server(local.clone()));
        }
        if batch {
            routes.add_service(castore::grpc::directory_batch_server(local.clone()));
        }
        let client = client_of(&tmp.path().join(format!("{label}.sock")), routes.routes()).await;
        // Twice: a client turned down asks root by root at once the second time.
        for _ in 0..2 {
            let got: Vec<Directory> = client.get_closures(roots.clone()).try_collect().await.unwrap();
            assert_eq!(got, expected, "{label}");
        }
        let absent = B3Digest::of(b"no such directory");
        let err = client.get_closures(vec![t.own.digest(), absent]).try_collect::<Vec<_>>().await.unwrap_err();
        assert!(matches!(&err, Error::NotFound(m) if m.contains(&absent.to_string())), "{label}: {err:?}");
    }
}

/// Malformed requests: INVALID_ARGUMENT naming what is wrong; the most
/// roots allowed are served.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_refused() {
    let t = trees();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s.sock");
    let routes = tonic::service::Routes::new(castore::grpc::directory_batch_server(stored(&t).await));
    common::serve_unix(&sock, PackageRewrite::speak(routes.into_axum_router(), castore::grpc::Package::Snix)).await;
    let url = url::Url::parse(&format!("grpc+unix:{}", sock.display())).unwrap();
    let mut raw = DirectoryBatchServiceClient::new(castore::grpc::connect(&url).unwrap());
    let good = t.one.digest().to_bytes();
    let ask = |root_digests| GetDirectoriesRequest { root_digests };
    let err = raw.get(ask(vec![good.clone(), bytes::Bytes::from_static(b"short")])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("digest #1"), "{err:?}");
    let err = raw.get(ask(vec![good.clone(); MAX_BATCH_DIGESTS + 1])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let mut stream = raw.get(ask(vec![good; MAX_BATCH_DIGESTS])).await.unwrap().into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 2, "one root asked for many times: it and its child, once each");
}

/// A batch server that answers with fixed messages.
struct Scripted(Vec<proto::Directory>);

#[tonic::async_trait]
impl proto::batch::directory_batch_service_server::DirectoryBatchService for Scripted {
    type GetStream = futures::stream::BoxStream<'static, Result<proto::Directory, Status>>;

    async fn get(&self, _: Request<GetDirectoriesRequest>) -> Result<Response<Self::GetStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::iter(self.0.clone().into_iter().map(Ok)))))
    }
}

/// Streams that are not exactly the closures asked for are refused: a
/// directory twice, one nobody asked for, a child left out, a child sent
/// before the directory naming it, a child that does not fit the size its
/// parent records.
#[tokio::test(flavor = "multi_thread")]
async fn answers_that_are_not_the_closures_are_refused() {
    let t = trees();
    let unrelated = dir_of(vec![file("u")]);
    // `one` claiming another size for `shared` (it records `g`'s entry count).
    let mut lying = Directory::default();
    lying.add(name("a"), Node::Directory { digest: t.shared.digest(), size: 7 }).unwrap();
    let p = |d: &Directory| d.to_proto();
    let cases = [
        ("twice", vec![p(&t.one), p(&t.shared), p(&t.shared)], "twice"),
        ("stray", vec![p(&t.one), p(&t.shared), p(&unrelated)], "no earlier directory refers to"),
        ("lacking", vec![p(&t.one)], "omitted"),
        ("child first", vec![p(&t.shared), p(&t.one)], "no earlier directory refers to"),
        ("wrong size", vec![p(&lying), p(&t.shared)], "size"),
        ("honest", vec![p(&t.one), p(&t.shared)], ""),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (label, answer, needle) in cases {
        let roots = if label == "wrong size" { vec![lying.digest()] } else { vec![t.one.digest()] };
        let routes = tonic::service::Routes::new(DirectoryBatchServiceServer::new(Scripted(answer)));
        let client = client_of(&tmp.path().join(format!("{}.sock", label.replace(' ', "-"))), routes).await;
        match client.get_closures(roots).try_collect::<Vec<_>>().await {
            Ok(got) if needle.is_empty() => assert_eq!(digests(&got), vec![t.one.digest(), t.shared.digest()]),
            Err(Error::Storage(m)) if !needle.is_empty() => assert!(m.contains(needle), "{label}: {m}"),
            other => panic!("{label}: unexpected {other:?}"),
        }
    }
}
