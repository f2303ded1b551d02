//! Configuration: flags, then environment, then a TOML file, then defaults.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on, for gRPC and HTTP alike.
    #[arg(long, env = "STOREFRONT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the embedded storage.
    #[arg(long, env = "STOREFRONT_DATA")]
    data: Option<PathBuf>,
    /// Blob backend URL (default: the embedded store in --data).
    #[arg(long, env = "BLOB_SERVICE_ADDR")]
    blob_service_addr: Option<String>,
    /// Directory backend URL (default: the embedded store in --data).
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR")]
    directory_service_addr: Option<String>,
    /// PathInfo backend URL (default: the embedded store in --data).
    #[arg(long, env = "PATH_INFO_SERVICE_ADDR")]
    path_info_service_addr: Option<String>,
    /// TOML file with any of: listen, data, blob_service_addr, directory_service_addr, path_info_service_addr.
    #[arg(long, env = "STOREFRONT_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    blob_service_addr: Option<String>,
    directory_service_addr: Option<String>,
    path_info_service_addr: Option<String>,
}

/// What `serve` runs with, every value decided.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub blob_service_addr: String,
    pub directory_service_addr: String,
    pub path_info_service_addr: String,
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
        let embedded = embedded_store_url(&data);
        Ok(ServeConfig {
            listen: self.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid")),
            blob_service_addr: self.blob_service_addr.or(file.blob_service_addr).unwrap_or_else(|| embedded.clone()),
            directory_service_addr: self
                .directory_service_addr
                .or(file.directory_service_addr)
                .unwrap_or_else(|| embedded.clone()),
            path_info_service_addr: self.path_info_service_addr.or(file.path_info_service_addr).unwrap_or(embedded),
            data,
        })
    }
}

/// The embedded store in a data directory: one database file holds blobs,
/// directories and PathInfo (chunks beside it), for `serve` and for tools
/// that open the data directory directly.
pub fn embedded_store_url(data: &std::path::Path) -> String {
    format!("redb:{}", data.join("castore.redb").display())
}

/// `$XDG_DATA_HOME/storefront`, else `~/.local/share/storefront`, else `./storefront-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("storefront"))
        .unwrap_or_else(|| PathBuf::from("storefront-data"))
}
