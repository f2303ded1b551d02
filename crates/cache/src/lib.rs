//! The Nix binary cache face of storefront: an axum [`Router`] that stock
//! Nix clients read from (`substituters = http://…`, `nix copy --from`) and
//! write to (`nix copy --to http://…`), over the one castore copy.
//!
//! Nothing Nix-shaped is stored twice: a narinfo is rendered from the
//! [`PathInfo`] on each request (and signed on the fly with the server's
//! key), and a NAR is rendered from castore with [`store::nar::NarReader`],
//! seekable for `Range` requests and compressed on the way out when the
//! client asks. Uploaded NARs are ingested into castore as they stream in;
//! what a narinfo upload makes visible is a `PathInfo`, put only after its
//! NAR and references are stored.
//!
//! - [`BinaryCache`] holds the services and the configuration;
//!   [`router`] serves it.
//! - `GET|HEAD /nix-cache-info`, `/<hash>.narinfo`, `/nar/…` read;
//!   `PUT` of the same names, `<hash>.ls`, `log/…` and `realisations/…`
//!   write ([`upload`]). Authentication is not this crate's business: the
//!   binary wraps the router in its auth layer.
//! - With upstream caches configured, a miss is fetched, checked against
//!   the trusted keys, ingested and then served ([`upstream`]).
use std::sync::Arc;

use axum::{
    Router,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use castore::{BlobService, DirectoryService, kv::KvStore};
use store::{PathInfoService, SigningKey, VerifyingKey};

pub mod compression;
mod files;
mod nar;
mod narinfo;
pub mod upload;
pub mod upstream;

pub use compression::Compression;

/// `Priority` advertised in `/nix-cache-info` unless configured: below
/// cache.nixos.org's 40, so a local cache is asked first.
pub const DEFAULT_PRIORITY: u32 = 30;

/// How the cache presents itself and where it pulls misses from.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The store directory of every path served (`StoreDir`).
    pub store_dir: String,
    /// `Priority` in `/nix-cache-info` (lower wins).
    pub priority: u32,
    /// Adds a signature to every narinfo served.
    pub signing_key: Option<Arc<SigningKey>>,
    /// How the NARs that narinfos point at are compressed. `none` keeps
    /// downloads resumable (`Range`) and costs no CPU.
    pub nar_compression: Compression,
    /// Binary caches asked for paths this one lacks, in order.
    pub upstreams: Vec<url::Url>,
    /// Keys whose signatures make an upstream path acceptable.
    pub trusted_public_keys: Vec<VerifyingKey>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            store_dir: store::DEFAULT_STORE_DIR.to_owned(),
            priority: DEFAULT_PRIORITY,
            signing_key: None,
            nar_compression: Compression::None,
            upstreams: Vec::new(),
            trusted_public_keys: Vec::new(),
        }
    }
}

/// Why a request failed, mapped onto the HTTP statuses Nix understands.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Absent: Nix reads 404 as "not in this cache".
    #[error("{0}")]
    NotFound(String),
    /// A malformed or inconsistent upload or request.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed, but something it depends on is not stored (yet).
    #[error("{0}")]
    Conflict(String),
    /// A compression this server cannot decode or produce.
    #[error("{0}")]
    Unsupported(String),
    /// A body over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The Range header asks for bytes the NAR does not have.
    #[error("range not satisfiable: {0}")]
    RangeNotSatisfiable(u64),
    /// An upstream cache failed (not a miss: misses are `NotFound`).
    #[error("upstream: {0}")]
    Upstream(String),
    /// Misconfiguration found at start-up.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] castore::Error),
}

impl CacheError {
    pub fn status(&self) -> StatusCode {
        match self {
            CacheError::NotFound(_) => StatusCode::NOT_FOUND,
            CacheError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CacheError::Conflict(_) => StatusCode::CONFLICT,
            CacheError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CacheError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CacheError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            CacheError::Upstream(_) => StatusCode::BAD_GATEWAY,
            CacheError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CacheError::Store(e) => match e {
                castore::Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                castore::Error::NotFound(_) => StatusCode::NOT_FOUND,
                castore::Error::FailedPrecondition(_) => StatusCode::CONFLICT,
                castore::Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                castore::Error::Remote(s) => match s.code() {
                    tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    tonic::Code::NotFound => StatusCode::NOT_FOUND,
                    tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_GATEWAY,
                },
                castore::Error::Storage(_) | castore::Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for CacheError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "binary cache request failed");
        } else {
            tracing::debug!(error = %self, %status, "binary cache request refused");
        }
        let mut body = self.to_string();
        body.push('\n');
        let mut response = (status, [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
        if let CacheError::RangeNotSatisfiable(len) = self {
            let range = http::HeaderValue::from_str(&format!("bytes */{len}")).expect("digits are a valid header");
            response.headers_mut().insert(http::header::CONTENT_RANGE, range);
        }
        response
    }
}

/// The services a binary cache serves from, and its configuration.
pub struct BinaryCache {
    pub(crate) config: CacheConfig,
    pub(crate) blobs: Arc<dyn BlobService>,
    pub(crate) directories: Arc<dyn DirectoryService>,
    pub(crate) paths: Arc<dyn PathInfoService>,
    /// Upload records (NARs waiting for their narinfo) and the small files
    /// Nix uploads beside paths (`.ls`, logs, realisations).
    pub(crate) meta: Arc<dyn KvStore>,
    pub(crate) upstream: Option<upstream::Upstreams>,
}

impl BinaryCache {
    /// A cache over these services. `meta` keeps the cache's own records;
    /// it may be the engine that holds the castore.
    pub fn new(
        config: CacheConfig,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        paths: Arc<dyn PathInfoService>,
        meta: Arc<dyn KvStore>,
    ) -> Result<Arc<Self>, CacheError> {
        store::store_path::validate_store_dir(&config.store_dir)
            .map_err(|e| CacheError::Config(format!("store directory {:?}: {e}", config.store_dir)))?;
        let upstream = upstream::Upstreams::new(&config)?;
        Ok(Arc::new(Self { config, blobs, directories, paths, meta, upstream }))
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The PathInfo of `path`, pulled (with its closure) from the upstream
    /// caches when this store lacks it: what other faces of the server
    /// (package-named images) use to get paths nobody imported.
    pub async fn ensure_path(self: &Arc<Self>, path: &store::StorePath) -> Result<Option<store::PathInfo>, CacheError> {
        narinfo::lookup(self, &path.hash_part()).await
    }
}

/// The binary cache's routes. Paths not its own fall through to the
/// caller's fallback (the binary merges this with the registry's router).
pub fn router(cache: Arc<BinaryCache>) -> Router {
    use axum::routing::get;
    Router::new()
        .route("/nix-cache-info", get(narinfo::cache_info).put(upload::put_cache_info))
        .route("/{file}", get(narinfo::get_file).put(upload::put_file))
        .route("/nar/{file}", get(nar::get_nar).put(upload::put_nar))
        .route("/{dir}/{*rest}", get(files::get_other).put(upload::put_other))
        .with_state(cache)
}
