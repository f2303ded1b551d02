//! From an `objectstore+…` address to an `object_store` client.
use std::{sync::Arc, time::Duration};

use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, RetryConfig,
    aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut},
    local::LocalFileSystem,
    memory::InMemory,
};

use crate::{Error, Result, kv::query::Query};

/// Per request: long enough for a 1 MiB chunk on a slow link, short enough
/// that a request stuck on a node that just died is abandoned and retried
/// (Garage stalls the first request after a node dies for ~7 s).
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Enough that [`DEFAULT_RETRY_TIMEOUT`] is what ends the retries.
pub(super) const DEFAULT_RETRIES: usize = 30;
/// How long one operation keeps retrying before its caller sees an error.
/// A killed Garage node stalls requests for seconds (its connections are
/// reset), but a hung one (a frozen host, a dropped link) until its peers
/// have missed four pings, 15 s apart: measured up to ~70 s. Requests ride
/// that out rather than fail.
pub(super) const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(120);
/// Chunks of one put written at once.
const DEFAULT_CONCURRENCY: usize = 16;

/// Which kind of store an address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backend {
    S3,
    File,
    Memory,
}

/// The `conditional=` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Conditional {
    /// Probe the server on first use.
    Auto,
    /// Trust the server to enforce If-None-Match / If-Match.
    On,
    /// Do not rely on them: last writer wins across processes.
    Off,
}

/// A client and the settings the engine itself uses.
pub(super) struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub backend: Backend,
    /// Path segments every object name starts with.
    pub prefix: Vec<String>,
    pub conditional: Conditional,
    pub concurrency: usize,
    /// Attempts at a conditional write whose outcome was unknown.
    pub retries: usize,
    /// The address without credentials, for messages.
    pub label: String,
}

pub(super) fn open(url: &url::Url) -> Result<Opened> {
    let mut q = Query::new(url)?;
    let timeout = q.duration("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    let connect_timeout = q.duration("connect_timeout")?.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let retries = q.number("retries")?.unwrap_or(DEFAULT_RETRIES);
    let retry_timeout = q.duration("retry_timeout")?.unwrap_or(DEFAULT_RETRY_TIMEOUT);
    let concurrency = q.number("concurrency")?.unwrap_or(DEFAULT_CONCURRENCY).max(1);
    let conditional = match q.take("conditional").as_deref() {
        None | Some("auto") => Conditional::Auto,
        Some("true") => Conditional::On,
        Some("false") => Conditional::Off,
        Some(other) => return Err(q.invalid("conditional", other, "auto, true or false")),
    };
    let decoded = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let segments =
        |path: &str| -> Vec<String> { path.split('/').filter(|s| !s.is_empty()).map(decoded).collect::<Vec<_>>() };

    let opened = match url.scheme() {
        "objectstore+s3" => {
            let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                Error::InvalidRequest(format!("{}: name the bucket: objectstore+s3://BUCKET/PREFIX", label(url)))
            })?;
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if !url.username().is_empty() {
                builder = builder.with_access_key_id(decoded(url.username()));
            }
            if let Some(secret) = url.password() {
                builder = builder.with_secret_access_key(decoded(secret));
            }
            if let Some(endpoint) = q.take("endpoint") {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = q.take("region") {
                builder = builder.with_region(region);
            }
            let endpoint = builder
                .get_config_value(&AmazonS3ConfigKey::Endpoint)
                .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::S3Endpoint));
            let env_allows_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
            let allow_http = q
                .bool("allow_http")?
                .unwrap_or(env_allows_http || endpoint.as_deref().is_some_and(|e| e.starts_with("http://")));
            // Custom endpoints (Garage, MinIO, Ceph) address buckets by path;
            // AWS itself by host name.
            let virtual_hosted = q.bool("virtual_hosted")?.unwrap_or(endpoint.is_none());
            let store = builder
                .with_virtual_hosted_style_request(virtual_hosted)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_client_options(
                    ClientOptions::new()
                        .with_timeout(timeout)
                        .with_connect_timeout(connect_timeout)
                        .with_allow_http(allow_http),
                )
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(5),
                        base: 2.0,
                    },
                    max_retries: retries,
                    retry_timeout,
                })
                .build()
                .map_err(|e| Error::InvalidRequest(format!("{}: {e}", label(url))))?;
            Opened {
                store: Arc::new(store),
                backend: Backend::S3,
                prefix: segments(url.path()),
                conditional,
                concurrency,
                retries,
                label: format!("{}{}", label(url), endpoint.map(|e| format!(" at {e}")).unwrap_or_default()),
            }
        }
        "objectstore+file" => {
            let root = decoded(url.path());
            if !root.starts_with('/') || url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(Error::InvalidRequest(format!(
                    "{}: objectstore+file needs an absolute path: objectstore+file:///PATH",
                    label(url)
                )));
            }
            if conditional == Conditional::On {
                return Err(Error::InvalidRequest(format!(
                    "{}: local files cannot enforce conditional writes (conditional=true)",
                    label(url)
                )));
            }
            std::fs::create_dir_all(&root)?;
            let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| Error::Storage(e.to_string()))?;
            Opened {
                store: Arc::new(store),
                backend: Backend::File,
                prefix: Vec::new(),
                conditional: Conditional::Off,
                concurrency,
                retries,
                label: label(url),
            }
        }
        "objectstore+memory" => Opened {
            store: Arc::new(InMemory::new()),
            backend: Backend::Memory,
            prefix: segments(url.path()),
            // The in-memory store enforces both conditions; `false` tests
            // the last-writer-wins rule.
            conditional: if conditional == Conditional::Off { Conditional::Off } else { Conditional::On },
            concurrency,
            retries,
            label: label(url),
        },
        other => {
            return Err(Error::InvalidRequest(format!(
                "{}: unknown object store {other:?}; use objectstore+s3://BUCKET/PREFIX, \
                 objectstore+file:///PATH or objectstore+memory:",
                label(url)
            )));
        }
    };
    q.finish()?;
    Ok(opened)
}

/// The address without credentials or options, for messages and logs.
pub(super) fn label(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.to_string()
}
