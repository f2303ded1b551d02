//! `storefront serve`: one listener carrying gRPC and HTTP.
//!
//! Requests with `content-type: application/grpc…` go to the gRPC services
//! (answering both the snix and tvix package names); everything else goes to
//! the HTTP router: the binary cache, the OCI registry, `/healthz` and
//! `/metrics`. Both share
//! one set of storage services. Around everything sit the metrics layer and
//! then the auth layer, so every request is counted and checked whatever
//! protocol it speaks. Every accepted socket gets TCP_NODELAY. SIGTERM or
//! SIGINT stops accepting and lets open requests finish. With a certificate
//! and key ([`tls`]) the same listener speaks HTTPS instead, for HTTP/1.1,
//! HTTP/2 and gRPC alike: containerd's transfer service, for one, reaches
//! registries only over HTTPS.
mod tls;

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, body::Body, routing::get};
use castore::{BlobService, DirectoryService, grpc::PackageRewrite, kv::KvStore};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use store::PathInfoService;
use tokio_util::either::Either;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::{auth::Policy, config::ServeConfig, metrics::Metrics};

/// How long open connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The storage every face of the server reads and writes: opened once.
struct Services {
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    paths: Arc<dyn PathInfoService>,
    /// The binary cache's and the registry's own records.
    meta: Arc<dyn KvStore>,
}

impl Services {
    fn open(cfg: &ServeConfig) -> anyhow::Result<Services> {
        let blobs = castore::blob_service_from_url(&cfg.blob_service_addr)
            .with_context(|| format!("opening blob service {}", castore::grpc::redacted(&cfg.blob_service_addr)))?;
        let directories = castore::directory_service_from_url(&cfg.directory_service_addr).with_context(|| {
            format!("opening directory service {}", castore::grpc::redacted(&cfg.directory_service_addr))
        })?;
        let paths =
            store::url::path_info_service_from_url(&cfg.path_info_service_addr, blobs.clone(), directories.clone())
                .with_context(|| {
                    format!("opening PathInfo service {}", castore::grpc::redacted(&cfg.path_info_service_addr))
                })?;
        let url = castore::parse_service_address(&cfg.metadata_addr)?;
        let meta: Arc<dyn KvStore> = castore::kv::open_url(&url)?.with_context(|| {
            format!(
                "metadata address {}: must be a storage engine (memory:, redb:PATH, objectstore+…, cache:…), \
                 not a gRPC server",
                castore::grpc::redacted(&cfg.metadata_addr)
            )
        })?;
        Ok(Services { blobs, directories, paths, meta })
    }
}

async fn grpc_router(services: &Services) -> anyhow::Result<Router> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(castore::proto::SNIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(castore::proto::TVIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(castore::proto::batch::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(store::proto::SNIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(store::proto::TVIX_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(store::proto::batch::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let Services { blobs, directories, paths, .. } = services;
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(store::pathinfo::path_info_service_server(paths.clone(), blobs.clone(), directories.clone()))
        .add_service(store::pathinfo::path_info_batch_server(paths.clone()))
        .add_service(castore::grpc::blob_service_server(blobs.clone()))
        .add_service(castore::grpc::blob_batch_server(blobs.clone()))
        .add_service(castore::grpc::directory_batch_server(directories.clone()))
        .add_service(castore::grpc::directory_service_server(directories.clone()))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let batch = [
        castore::grpc::BATCH_SERVICE_NAME,
        castore::grpc::DIRECTORY_BATCH_SERVICE_NAME,
        store::pathinfo::BATCH_SERVICE_NAME,
    ];
    for name in castore::grpc::SERVICE_NAMES.into_iter().chain(batch).chain(store::pathinfo::SERVICE_NAMES) {
        health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }
    Ok(routes.routes().into_axum_router())
}

/// The binary cache over the shared services, its own records in the
/// `metadata_addr` engine.
fn binary_cache(cfg: &ServeConfig, services: &Services) -> anyhow::Result<Arc<cache::BinaryCache>> {
    let Services { blobs, directories, paths, meta } = services;
    let cache =
        cache::BinaryCache::new(cfg.cache.clone(), blobs.clone(), directories.clone(), paths.clone(), meta.clone())
            .context("setting up the binary cache")?;
    let c = cache.config();
    match &c.signing_key {
        Some(key) => info!(
            public_key = %key.verifying_key(),
            "narinfos are signed by {}; clients trust it with this key in trusted-public-keys",
            key.name()
        ),
        None => info!("narinfos carry only the signatures stored with each path (no --signing-key)"),
    }
    let upstreams: Vec<String> = c.upstreams.iter().map(|u| castore::grpc::redacted(u.as_str())).collect();
    let trusted: Vec<&str> = c.trusted_public_keys.iter().map(|k| k.name()).collect();
    info!(
        upstreams = ?upstreams,
        trusted_public_keys = ?trusted,
        nar_compression = %c.nar_compression,
        priority = c.priority,
        store_dir = %c.store_dir,
        metadata = %cfg.metadata_addr,
        "binary cache"
    );
    Ok(cache)
}

/// The OCI registry over the shared services.
fn registry(cfg: &ServeConfig, services: &Services) -> Arc<registry::Registry> {
    let Services { blobs, directories, paths, meta } = services;
    let config = registry::RegistryConfig { store_dir: cfg.cache.store_dir.clone() };
    registry::Registry::new(config, blobs.clone(), directories.clone(), paths.clone(), meta.clone())
}

/// Package-named images get missing store paths from the binary cache's
/// upstream caches.
struct UpstreamFetcher(Arc<cache::BinaryCache>);

#[async_trait::async_trait]
impl registry::images::PathFetcher for UpstreamFetcher {
    async fn fetch(&self, path: &store::StorePath) -> Result<bool, String> {
        self.0.ensure_path(path).await.map(|info| info.is_some()).map_err(|e| e.to_string())
    }
}

/// Whether a request is a gRPC call (it goes to the tonic routes).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data).with_context(|| format!("creating data directory {}", cfg.data.display()))?;
    let policy = Policy::load(&cfg.auth, &cfg.data)?;
    let services = Services::open(&cfg)?;
    let grpc = PackageRewrite::accept_tvix(grpc_router(&services).await?);
    let metrics = Metrics::new();
    let cache = binary_cache(&cfg, &services)?;
    let registry = registry(&cfg, &services);
    registry.set_path_fetcher(Arc::new(UpstreamFetcher(cache.clone())));
    let http = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(metrics.router())
        .merge(cache::router(cache.clone()))
        .merge(registry::router(registry));
    let dispatch = tower::service_fn(move |req: http::Request<Body>| {
        let grpc = grpc.clone();
        let http = http.clone();
        async move {
            let resp = if is_grpc(&req) { grpc.oneshot(req).await } else { http.oneshot(req).await };
            Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
        }
    });
    let app = tower::ServiceBuilder::new().layer(metrics.layer()).layer(policy.layer()).service(dispatch);

    let tls = cfg.tls.as_ref().map(tls::Tls::load).transpose()?;
    // Before the port opens: whoever sees us listening may signal us.
    let mut shutdown = std::pin::pin!(shutdown_signal()?);
    if let Some(tls) = &tls {
        tls.reload_on_sighup()?;
    }
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("listening on {}", cfg.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(
        listen = %local,
        url = %format!("{scheme}://{local}"),
        data = %cfg.data.display(),
        blobs = %castore::grpc::redacted(&cfg.blob_service_addr),
        directories = %castore::grpc::redacted(&cfg.directory_service_addr),
        path_info = %castore::grpc::redacted(&cfg.path_info_service_addr),
        "storefront serving gRPC and HTTP over {scheme}"
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
        let (builder, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        // Everything after accept runs in the connection's own task, the
        // TLS handshake included: a slow client holds up no one else.
        tokio::spawn(async move {
            let io = match acceptor {
                None => Either::Left(stream),
                Some(acceptor) => match tls::handshake(acceptor, stream).await {
                    Ok(stream) => Either::Right(stream),
                    // The client's problem (wrong CA, port scan, plain
                    // HTTP), not the server's.
                    Err(e) => return debug!(%peer, error = %e, "TLS handshake failed"),
                },
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "connection ended with an error");
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
