//! `storefront serve`: one listener carrying gRPC and HTTP.
//!
//! Requests with `content-type: application/grpc…` go to the gRPC services
//! (answering both the snix and tvix package names); everything else goes to
//! the HTTP router. Every accepted socket gets TCP_NODELAY. SIGTERM or SIGINT
//! stops accepting and lets open requests finish.
use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, routing::get};
use castore::grpc::PackageRewrite;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tower::ServiceExt;
use tracing::{info, warn};

use crate::config::ServeConfig;

/// How long open connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn grpc_router(cfg: &ServeConfig) -> anyhow::Result<Router> {
    let blobs = castore::blob_service_from_url(&cfg.blob_service_addr)
        .with_context(|| format!("opening blob service {}", cfg.blob_service_addr))?;
    let directories = castore::directory_service_from_url(&cfg.directory_service_addr)
        .with_context(|| format!("opening directory service {}", cfg.directory_service_addr))?;
    let paths = store::url::path_info_service_from_url(&cfg.path_info_service_addr, blobs.clone(), directories.clone())
        .with_context(|| format!("opening PathInfo service {}", cfg.path_info_service_addr))?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(castore::proto::SNIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(castore::proto::TVIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(store::proto::SNIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(store::proto::TVIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(store::pathinfo::path_info_service_server(paths, blobs.clone(), directories.clone()))
        .add_service(castore::grpc::blob_service_server(blobs))
        .add_service(castore::grpc::directory_service_server(directories))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    for name in castore::grpc::SERVICE_NAMES.into_iter().chain(store::pathinfo::SERVICE_NAMES) {
        health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }
    Ok(routes.routes().into_axum_router())
}

fn http_router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}

fn is_grpc(req: &http::Request<hyper::body::Incoming>) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data).with_context(|| format!("creating data directory {}", cfg.data.display()))?;
    let grpc = PackageRewrite::accept_tvix(grpc_router(&cfg).await?);
    let http = http_router();
    let app = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let grpc = grpc.clone();
        let http = http.clone();
        async move {
            let resp = if is_grpc(&req) { grpc.oneshot(req).await } else { http.oneshot(req).await };
            Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
        }
    });

    // Before the port opens: whoever sees us listening may signal us.
    let mut shutdown = std::pin::pin!(shutdown_signal()?);
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("listening on {}", cfg.listen))?;
    info!(
        listen = %listener.local_addr()?,
        data = %cfg.data.display(),
        blobs = %cfg.blob_service_addr,
        directories = %cfg.directory_service_addr,
        path_info = %cfg.path_info_service_addr,
        "storefront serving gRPC and HTTP"
    );

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        // keep_alive_interval needs a timer: without one hyper panics on
        // every HTTP/2 (so every gRPC) connection.
        .timer(hyper_util::rt::TokioTimer::new())
        .adaptive_window(true)
        .max_frame_size(1 << 20)
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app.clone()))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("shutting down: no new connections, waiting for open ones");
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("connections still open after {DRAIN_TIMEOUT:?}; exiting"),
    }
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now (until then a signal would
/// kill the process outright) and returns a future that ends on either.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    })
}
