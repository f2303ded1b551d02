//! Configuration: flags, then environment, then a TOML file, then defaults.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use cache::{CacheConfig, Compression};
use clap::Args;
use serde::Deserialize;
use store::{SigningKey, VerifyingKey};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on, for gRPC and HTTP alike.
    #[arg(long, env = "STOREFRONT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the embedded storage.
    #[arg(long, env = "STOREFRONT_DATA")]
    data: Option<PathBuf>,
    /// Where blobs, directories, PathInfo and metadata go unless their own
    /// address says otherwise: any storage address, e.g.
    /// objectstore+s3://BUCKET/PREFIX?endpoint=URL&region=NAME (replicas
    /// sharing a bucket), or cache:?near=redb:PATH&far=objectstore+s3://…
    /// (write & inside far as %26) [default: the embedded store in --data,
    /// which also keeps the write tokens either way].
    #[arg(long, env = "STOREFRONT_STORAGE", value_name = "URL")]
    storage: Option<String>,
    /// Blob backend URL (default: --storage).
    #[arg(long, env = "BLOB_SERVICE_ADDR")]
    blob_service_addr: Option<String>,
    /// Directory backend URL (default: --storage).
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR")]
    directory_service_addr: Option<String>,
    /// PathInfo backend URL (default: --storage).
    #[arg(long, env = "PATH_INFO_SERVICE_ADDR")]
    path_info_service_addr: Option<String>,
    /// Engine for the binary cache's own records (uploads in progress,
    /// `.ls` files, logs) and the registry's (tags, uploads, …): any storage
    /// address (default: the PathInfo backend's, or --storage when that is
    /// a gRPC server).
    #[arg(long, env = "METADATA_ADDR", value_name = "URL")]
    metadata_addr: Option<String>,
    /// Nix secret key file (`nix-store --generate-binary-cache-key`): every
    /// narinfo served carries a signature by it.
    #[arg(long, env = "STOREFRONT_SIGNING_KEY", value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Tokens that allow writes, one a line (default: <data>/write-tokens,
    /// created with one random token on first start).
    #[arg(long, env = "STOREFRONT_WRITE_TOKEN_FILE", value_name = "FILE")]
    write_token_file: Option<PathBuf>,
    /// Tokens that allow reads, one a line; when set, every request but
    /// /healthz needs a read or write token.
    #[arg(long, env = "STOREFRONT_READ_TOKEN_FILE", value_name = "FILE")]
    read_token_file: Option<PathBuf>,
    /// Accept writes without a token (trusted networks; clients that cannot
    /// send one, such as the tvix/snix tools).
    #[arg(
        long,
        env = "STOREFRONT_ALLOW_ANONYMOUS_WRITES",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    allow_anonymous_writes: Option<bool>,
    /// A binary cache to fetch paths this one lacks from (repeatable; tried
    /// in order) [env: STOREFRONT_UPSTREAM, comma separated].
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<url::Url>,
    /// A key (`name:base64`) whose signature makes an upstream path
    /// acceptable (repeatable) [env: STOREFRONT_TRUSTED_PUBLIC_KEYS, comma or
    /// space separated].
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    trusted_public_keys: Vec<VerifyingKey>,
    /// Compression of the NARs narinfos point to: none (resumable, no CPU),
    /// zstd, xz, … [default: none].
    #[arg(long, env = "STOREFRONT_NAR_COMPRESSION", value_name = "NAME")]
    nar_compression: Option<Compression>,
    /// Priority advertised in /nix-cache-info (lower is asked first)
    /// [default: 30].
    #[arg(long, env = "STOREFRONT_PRIORITY", value_name = "N")]
    priority: Option<u32>,
    /// The Nix store directory of the paths served [default: /nix/store].
    #[arg(long, env = "STOREFRONT_STORE_DIR", value_name = "DIR")]
    store_dir: Option<String>,
    /// PEM certificate chain (the server's first): with --tls-key, the
    /// listener speaks HTTPS (HTTP/1.1, HTTP/2 and so gRPC) instead of
    /// plain HTTP. SIGHUP rereads both files.
    #[arg(long, env = "STOREFRONT_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, env = "STOREFRONT_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// TOML file with any of: listen, data, storage, blob_service_addr,
    /// directory_service_addr, path_info_service_addr, metadata_addr,
    /// signing_key, write_token_file, read_token_file,
    /// allow_anonymous_writes, upstream (array), trusted_public_keys
    /// (array), nar_compression, priority, store_dir, tls_cert, tls_key.
    #[arg(long, env = "STOREFRONT_CONFIG")]
    config: Option<PathBuf>,
}

/// Environment variables of the list settings, read by hand: their
/// separators are not clap's.
const UPSTREAM_ENV: &str = "STOREFRONT_UPSTREAM";
const TRUSTED_KEYS_ENV: &str = "STOREFRONT_TRUSTED_PUBLIC_KEYS";

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    storage: Option<String>,
    blob_service_addr: Option<String>,
    directory_service_addr: Option<String>,
    path_info_service_addr: Option<String>,
    metadata_addr: Option<String>,
    signing_key: Option<PathBuf>,
    write_token_file: Option<PathBuf>,
    read_token_file: Option<PathBuf>,
    allow_anonymous_writes: Option<bool>,
    upstream: Option<Vec<String>>,
    trusted_public_keys: Option<Vec<String>>,
    nar_compression: Option<String>,
    priority: Option<u32>,
    store_dir: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// What `serve` runs with, every value decided.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub blob_service_addr: String,
    pub directory_service_addr: String,
    pub path_info_service_addr: String,
    pub metadata_addr: String,
    pub auth: AuthConfig,
    pub cache: CacheConfig,
    /// HTTPS on the listener, when set.
    pub tls: Option<TlsConfig>,
}

/// The files of the listener's certificate and key (read by `serve` at
/// start and on SIGHUP).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Who may write and read; [`crate::auth::Policy::load`] turns it into
/// token sets.
#[derive(Debug)]
pub struct AuthConfig {
    pub write_token_file: Option<PathBuf>,
    pub read_token_file: Option<PathBuf>,
    pub allow_anonymous_writes: bool,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file: ServeFile = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => ServeFile::default(),
        };
        let data = self.data.or(file.data).unwrap_or_else(default_data_dir);
        // Every service's default home.
        let storage = self.storage.or(file.storage).unwrap_or_else(|| embedded_store_url(&data));
        let cache = CacheConfig {
            store_dir: self.store_dir.or(file.store_dir).unwrap_or_else(|| store::DEFAULT_STORE_DIR.to_owned()),
            priority: self.priority.or(file.priority).unwrap_or(cache::DEFAULT_PRIORITY),
            signing_key: self
                .signing_key
                .or(file.signing_key)
                .map(|path| {
                    SigningKey::from_file(&path)
                        .map(Arc::new)
                        .with_context(|| format!("reading the signing key {}", path.display()))
                })
                .transpose()?,
            nar_compression: match self.nar_compression {
                Some(c) => c,
                None => file.nar_compression.as_deref().map(str::parse).transpose()?.unwrap_or(Compression::None),
            },
            upstreams: list(self.upstreams, UPSTREAM_ENV, &[','], file.upstream, "upstream")?,
            trusted_public_keys: list(
                self.trusted_public_keys,
                TRUSTED_KEYS_ENV,
                &[',', ' ', '\t', '\n'],
                file.trusted_public_keys,
                "trusted public key",
            )?,
        };
        let path_info_service_addr =
            self.path_info_service_addr.or(file.path_info_service_addr).unwrap_or_else(|| storage.clone());
        // The cache's records belong beside the PathInfo records they lead
        // to: in the same engine, so `memory:` keeps nothing on disk.
        let metadata_addr = self.metadata_addr.or(file.metadata_addr).unwrap_or_else(|| {
            if path_info_service_addr.starts_with("grpc+") { storage.clone() } else { path_info_service_addr.clone() }
        });
        let tls = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!(
                "a TLS certificate needs its private key too: give --tls-key FILE (STOREFRONT_TLS_KEY, tls_key)"
            ),
            (None, Some(_)) => anyhow::bail!(
                "a TLS key needs its certificate chain too: give --tls-cert FILE (STOREFRONT_TLS_CERT, tls_cert)"
            ),
        };
        Ok(ServeConfig {
            tls,
            listen: self.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid")),
            blob_service_addr: self.blob_service_addr.or(file.blob_service_addr).unwrap_or_else(|| storage.clone()),
            directory_service_addr: self.directory_service_addr.or(file.directory_service_addr).unwrap_or(storage),
            path_info_service_addr,
            metadata_addr,
            auth: AuthConfig {
                write_token_file: self.write_token_file.or(file.write_token_file),
                read_token_file: self.read_token_file.or(file.read_token_file),
                allow_anonymous_writes: self.allow_anonymous_writes.or(file.allow_anonymous_writes).unwrap_or(false),
            },
            cache,
            data,
        })
    }
}

/// A repeatable setting: the flags if any were given, else the environment
/// variable `env` split at `separators`, else the file's array.
fn list<T>(
    flags: Vec<T>,
    env: &str,
    separators: &[char],
    file: Option<Vec<String>>,
    what: &str,
) -> anyhow::Result<Vec<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    if !flags.is_empty() {
        return Ok(flags);
    }
    let from_env = std::env::var(env).ok().filter(|v| !v.trim().is_empty());
    let items: Vec<String> = match from_env {
        Some(v) => v.split(separators).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => file.unwrap_or_default(),
    };
    items.iter().map(|s| s.trim().parse().with_context(|| format!("{what} {s:?}"))).collect()
}

/// The embedded store in a data directory: one database file holds blobs,
/// directories and PathInfo (chunks beside it), for `serve` and for tools
/// that open the data directory directly.
pub fn embedded_store_url(data: &Path) -> String {
    format!("redb:{}", data.join("castore.redb").display())
}

/// Why the embedded store in `data` (at `url`) did not open, naming the
/// usual cause (a running server holds it) and the way around it: `through`
/// says what to do through the server instead, e.g. "import through it".
pub fn embedded_open_error(data: &Path, url: &str, error: impl std::fmt::Display, through: &str) -> anyhow::Error {
    let msg = error.to_string();
    if msg.contains("already open") || msg.contains("lock") {
        anyhow::anyhow!(
            "the embedded store in {} is in use by another process (a running `storefront serve`?): {msg}; \
             stop it, or {through} with --store grpc+http://HOST:PORT",
            data.display()
        )
    } else {
        anyhow::anyhow!("opening the embedded store {url}: {msg}")
    }
}

/// `$XDG_DATA_HOME/storefront`, else `~/.local/share/storefront`, else `./storefront-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("storefront"))
        .unwrap_or_else(|| PathBuf::from("storefront-data"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    const KEY: &str = "cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    fn resolve(args: &[&str]) -> anyhow::Result<ServeConfig> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))?.serve.resolve()
    }

    /// A TOML file sets every new key; flags override it; defaults fill
    /// the rest. (Environment variables are left alone: tests run in
    /// parallel in one process.)
    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("serve.toml");
        std::fs::write(
            &toml,
            format!(
                r#"
data = "/srv/sf"
upstream = ["https://cache.example.org", "http://127.0.0.1:9/x"]
trusted_public_keys = ["{KEY}"]
nar_compression = "zstd"
priority = 50
store_dir = "/gnu/store"
allow_anonymous_writes = true
read_token_file = "/etc/sf/read"
metadata_addr = "memory:"
"#
            ),
        )
        .unwrap();
        let cfg = resolve(&["--config", toml.to_str().unwrap()]).unwrap();
        assert_eq!(cfg.cache.upstreams.len(), 2);
        assert_eq!(cfg.cache.upstreams[1].as_str(), "http://127.0.0.1:9/x");
        assert_eq!(cfg.cache.trusted_public_keys[0].to_string(), KEY);
        assert_eq!(cfg.cache.nar_compression, Compression::Zstd);
        assert_eq!((cfg.cache.priority, cfg.cache.store_dir.as_str()), (50, "/gnu/store"));
        assert!(cfg.auth.allow_anonymous_writes);
        assert_eq!(cfg.auth.read_token_file.as_deref(), Some(Path::new("/etc/sf/read")));
        assert_eq!(cfg.metadata_addr, "memory:");
        assert_eq!(cfg.path_info_service_addr, "redb:/srv/sf/castore.redb");

        let cfg = resolve(&[
            "--config",
            toml.to_str().unwrap(),
            "--upstream",
            "https://other.example.org",
            "--nar-compression",
            "xz",
            "--priority",
            "10",
            "--allow-anonymous-writes=false",
        ])
        .unwrap();
        assert_eq!(
            cfg.cache.upstreams.iter().map(url::Url::as_str).collect::<Vec<_>>(),
            ["https://other.example.org/"]
        );
        assert_eq!((cfg.cache.nar_compression, cfg.cache.priority), (Compression::Xz, 10));
        assert!(!cfg.auth.allow_anonymous_writes, "the flag overrides the file");

        let cfg = resolve(&["--data", "/d", "--allow-anonymous-writes"]).unwrap();
        assert!(cfg.auth.allow_anonymous_writes);
        assert_eq!(cfg.metadata_addr, "redb:/d/castore.redb", "metadata defaults to the embedded store");
        let cfg = resolve(&["--path-info-service-addr", "memory:"]).unwrap();
        assert_eq!(cfg.metadata_addr, "memory:", "metadata follows a local PathInfo backend");
        let cfg = resolve(&["--data", "/d", "--path-info-service-addr", "grpc+http://127.0.0.1:1"]).unwrap();
        assert_eq!(cfg.metadata_addr, "redb:/d/castore.redb", "a remote PathInfo backend keeps metadata local");
        assert_eq!(cfg.cache.priority, cache::DEFAULT_PRIORITY);
        assert_eq!(cfg.cache.store_dir, store::DEFAULT_STORE_DIR);
        assert!(cfg.cache.signing_key.is_none() && cfg.auth.write_token_file.is_none());
    }

    /// `storage` is every service's default (flag over file); a service's
    /// own address still wins, and a remote PathInfo backend sends the
    /// metadata to the storage, not to --data.
    #[test]
    fn storage_is_the_default_for_every_service() {
        const S3: &str = "objectstore+s3://bucket/sf?endpoint=http://127.0.0.1:3900&region=garage";
        let cfg = resolve(&["--data", "/d", "--storage", S3]).unwrap();
        for addr in [&cfg.blob_service_addr, &cfg.directory_service_addr, &cfg.path_info_service_addr] {
            assert_eq!(addr, S3);
        }
        assert_eq!(cfg.metadata_addr, S3);
        assert_eq!(cfg.data, Path::new("/d"), "the data directory stays (write tokens)");

        let cfg = resolve(&["--storage", S3, "--blob-service-addr", "memory:"]).unwrap();
        assert_eq!((cfg.blob_service_addr.as_str(), cfg.directory_service_addr.as_str()), ("memory:", S3));
        let cfg = resolve(&["--storage", S3, "--path-info-service-addr", "grpc+http://127.0.0.1:1"]).unwrap();
        assert_eq!(cfg.metadata_addr, S3, "a remote PathInfo backend sends metadata to the storage");

        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("serve.toml");
        let cache =
            "cache:?near=redb:/var/cache/sf/near.redb&far=objectstore+s3://b/p?endpoint=http://h:3900%26region=garage";
        std::fs::write(&toml, format!("storage = \"{cache}\"\n")).unwrap();
        let cfg = resolve(&["--config", toml.to_str().unwrap()]).unwrap();
        assert_eq!((cfg.path_info_service_addr.as_str(), cfg.metadata_addr.as_str()), (cache, cache));
        let cfg = resolve(&["--config", toml.to_str().unwrap(), "--storage", "memory:"]).unwrap();
        assert_eq!(cfg.blob_service_addr, "memory:", "the flag overrides the file");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let err = |args: &[&str]| resolve(args).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err(&["--nar-compression", "lzip"]).contains("lzip"));
        assert!(err(&["--trusted-public-key", "nonsense"]).contains("nonsense"));
        assert!(err(&["--signing-key", "/nonexistent/key"]).contains("/nonexistent/key"));
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("serve.toml");
        std::fs::write(&toml, "trusted_public_keys = [\"k:AAAA\"]\n").unwrap();
        assert!(err(&["--config", toml.to_str().unwrap()]).contains("trusted public key \"k:AAAA\""));
    }

    #[test]
    fn signing_key_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("test-1").unwrap();
        let path = dir.path().join("key.sec");
        std::fs::write(&path, key.to_secret_string()).unwrap();
        let cfg = resolve(&["--signing-key", path.to_str().unwrap()]).unwrap();
        assert_eq!(cfg.cache.signing_key.unwrap().name(), "test-1");
    }
}
