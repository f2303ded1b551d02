//! Shared by the gRPC tests: serving routes on a Unix socket.
use castore::grpc::PackageRewrite;

/// Serves `routes` over HTTP/2 on a new Unix socket at `path`, until the
/// test's runtime ends.
pub async fn serve_unix(path: &std::path::Path, routes: PackageRewrite<tonic::service::AxumRouter>) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(routes.clone());
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
}
