//! Image specs: what `storefront image add` records — the store paths an
//! image is made of and its runtime configuration — keyed by `name:tag`.
//!
//! A spec is a mutable record (re-adding a name replaces it); everything
//! generated from it is content-addressed, so the digests follow the spec.
use bytes::Bytes;
use castore::kv::{KvStore, Table};
use serde::{Deserialize, Serialize};
use store::StorePath;

use crate::error::RegistryError;

/// Specs: `name:tag` → JSON [`ImageSpec`].
const SPECS: Table = Table::named("oci-image-specs");

/// An image defined from store paths.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Store paths (full paths) whose closure is the image's content.
    pub paths: Vec<String>,
    /// Store paths whose trees are also linked into `/` (`/bin/hello` →
    /// `/nix/store/…-hello/bin/hello`).
    #[serde(default)]
    pub copy_to_root: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` strings, in the order given.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// OCI architecture (`amd64`, `arm64`, …); default `amd64`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// Compression of the ordinary flavour's store-path layers: none
    /// (default: the layers are rendered from castore on each pull, nothing
    /// is stored), or `gzip`/`zstd` for clients on slow links (each layer is
    /// compressed once and the result kept in castore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_compression: Option<String>,
}

/// The layer compressions a spec may ask for.
pub const LAYER_COMPRESSIONS: [&str; 2] = ["gzip", "zstd"];

fn default_arch() -> String {
    "amd64".to_owned()
}

impl ImageSpec {
    /// The spec's store paths, parsed; roots first, then copy-to-root.
    pub fn store_paths(&self, store_dir: &str) -> Result<(Vec<StorePath>, Vec<StorePath>), RegistryError> {
        let parse = |list: &[String]| -> Result<Vec<StorePath>, RegistryError> {
            list.iter()
                .map(|p| {
                    StorePath::from_absolute_prefix(p, store_dir)
                        .map(|(path, _)| path)
                        .map_err(|e| super::invalid_spec(format!("{p:?} is not a store path in {store_dir}: {e}")))
                })
                .collect()
        };
        let roots = parse(&self.paths)?;
        if roots.is_empty() {
            return Err(super::invalid_spec("an image needs at least one store path".into()));
        }
        Ok((roots, parse(&self.copy_to_root)?))
    }

    /// Checks everything but the presence of the paths.
    pub fn validate(&self, store_dir: &str) -> Result<(), RegistryError> {
        self.store_paths(store_dir)?;
        if let Some(bad) = self.env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
            return Err(super::invalid_spec(format!("environment entry {bad:?} is not KEY=VALUE")));
        }
        if let Some(c) = &self.layer_compression
            && !LAYER_COMPRESSIONS.contains(&c.as_str())
        {
            return Err(super::invalid_spec(format!(
                "layer compression {c:?} is not one of {}",
                LAYER_COMPRESSIONS.join(", ")
            )));
        }
        if !matches!(self.arch.as_str(), "amd64" | "arm64" | "arm" | "386" | "ppc64le" | "s390x" | "riscv64") {
            return Err(super::invalid_spec(format!("unknown architecture {:?}", self.arch)));
        }
        Ok(())
    }
}

/// `name:tag` as a record key.
fn key(name: &str, tag: &str) -> Bytes {
    Bytes::from(format!("{name}:{tag}"))
}

/// The spec stored for `name:tag`.
pub async fn get(meta: &dyn KvStore, name: &str, tag: &str) -> Result<Option<ImageSpec>, RegistryError> {
    let Some(bytes) = meta.get(SPECS, &key(name, tag)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RegistryError::internal(format!("image spec {name}:{tag} is unreadable: {e}")))
}

/// Records `spec` for `name:tag`, replacing what was there.
pub async fn put(meta: &dyn KvStore, name: &str, tag: &str, spec: &ImageSpec) -> Result<(), RegistryError> {
    let bytes = serde_json::to_vec(spec).expect("a spec serializes");
    castore::kv::set(meta, SPECS, key(name, tag), Some(bytes.into())).await?;
    Ok(())
}

/// The tags specs are recorded under for `name`, sorted.
pub async fn tags(meta: &dyn KvStore, name: &str) -> Result<Vec<String>, RegistryError> {
    use futures::TryStreamExt;
    let prefix = Bytes::from(format!("{name}:"));
    let keys: Vec<(Bytes, Bytes)> = meta.scan_prefix(SPECS, prefix.clone()).try_collect().await?;
    Ok(keys.into_iter().map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned()).collect())
}

/// Every recorded `(name, tag, spec)`, sorted by name and tag.
pub async fn list(meta: &dyn KvStore) -> Result<Vec<(String, String, ImageSpec)>, RegistryError> {
    use futures::TryStreamExt;
    let records: Vec<(Bytes, Bytes)> = meta.scan_prefix(SPECS, Bytes::new()).try_collect().await?;
    records
        .into_iter()
        .map(|(k, v)| {
            let k = String::from_utf8_lossy(&k).into_owned();
            let (name, tag) = k.rsplit_once(':').unwrap_or((&k, "latest"));
            let spec = serde_json::from_slice(&v)
                .map_err(|e| RegistryError::internal(format!("image spec {k} is unreadable: {e}")))?;
            Ok((name.to_owned(), tag.to_owned(), spec))
        })
        .collect()
}
