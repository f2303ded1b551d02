//! The OCI registry face of storefront: an axum [`Router`] speaking the OCI
//! distribution API (pull, push, tags, catalog, referrers) over the one
//! castore copy.
//!
//! - Pushed blobs are castore blobs (BLAKE3, chunked, deduplicated with
//!   everything else), found by their OCI digest through a sha256 index;
//!   manifests are kept as the exact bytes pushed.
//! - Images defined from Nix store paths are not stored as layers at all:
//!   their manifests describe layers that are rendered from castore on
//!   request (see `images`).
//!
//! Authentication is the binary's auth layer, as for the binary cache.
use std::sync::{Arc, OnceLock, atomic::AtomicU64};

use axum::{Router, routing::any};
use castore::{BlobService, DirectoryService, kv::KvStore};
use store::PathInfoService;

pub mod distribution;
pub mod error;
pub mod images;
pub mod layer;
pub mod oci;

/// How the registry presents Nix content.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// The store directory of the paths images are made of.
    pub store_dir: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { store_dir: store::DEFAULT_STORE_DIR.to_owned() }
    }
}

/// The services a registry serves from, and its configuration.
pub struct Registry {
    pub(crate) config: RegistryConfig,
    pub(crate) blobs: Arc<dyn BlobService>,
    pub(crate) directories: Arc<dyn DirectoryService>,
    pub(crate) paths: Arc<dyn PathInfoService>,
    /// The registry's records: the sha256 index, manifests, tags, upload
    /// sessions, image specs.
    pub(crate) meta: Arc<dyn KvStore>,
    /// Unix seconds of the last sweep of expired upload sessions.
    pub(crate) uploads_swept: AtomicU64,
    /// Where `pkgs/…` images get store paths nobody imported.
    pub(crate) fetcher: OnceLock<Arc<dyn images::PathFetcher>>,
    /// Image builds in flight, so concurrent first requests build once.
    pub(crate) builds: images::Builds,
}

impl Registry {
    pub fn new(
        config: RegistryConfig,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        paths: Arc<dyn PathInfoService>,
        meta: Arc<dyn KvStore>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            blobs,
            directories,
            paths,
            meta,
            uploads_swept: AtomicU64::new(0),
            fetcher: OnceLock::new(),
            builds: images::Builds::default(),
        })
    }
}

/// The registry's routes, all under `/v2/` (see [`distribution`]). The
/// static first segment wins over the binary cache's `/{dir}/{*rest}` when
/// the binary merges both routers.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2", any(distribution::base))
        .route("/v2/", any(distribution::base))
        .route("/v2/{*rest}", any(distribution::dispatch))
        .with_state(registry.clone())
        .merge(images::api_router(registry))
}
