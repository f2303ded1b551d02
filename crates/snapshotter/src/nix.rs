//! nix-snapshotter layers: which store paths a layer's labels name, and
//! making them present in the snapshotter's store directory.
//!
//! containerd hands a layer descriptor's `containerd.io/snapshot/*`
//! annotations to the snapshotter as labels on Prepare (and Commit). Two
//! forms name the paths:
//! - legacy: `containerd.io/snapshot/nix-layer: "true"` and one
//!   `containerd.io/snapshot/nix-store-path.<i>` per path;
//! - newer: `containerd.io/snapshot/nix-closure`, a closure-info store path
//!   whose `store-paths` file lists the closure (and whose references are
//!   that closure).
use std::{collections::BTreeSet, io::Read, path::Path};

use async_trait::async_trait;
use store::{DEFAULT_STORE_DIR, StorePath};

use crate::{
    error::{Error, Result},
    meta::NixPaths,
};

pub const NIX_LAYER: &str = "containerd.io/snapshot/nix-layer";
pub const NIX_STORE_PATH_PREFIX: &str = "containerd.io/snapshot/nix-store-path.";
pub const NIX_CLOSURE: &str = "containerd.io/snapshot/nix-closure";
/// Set by containerd on the Prepare of every layer it unpacks (the chain
/// id): such a snapshot is a layer being written, not a container.
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// The file of a closure-info path that lists the closure.
const STORE_PATHS: &str = "store-paths";
/// Largest `store-paths` file read (a closure of ~100 000 paths).
const MAX_STORE_PATHS: u64 = 16 << 20;

/// The store paths a nix layer's labels name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NixLayer {
    /// The legacy per-path labels, in label order.
    pub paths: Vec<StorePath>,
    /// The closure-info path.
    pub closure: Option<StorePath>,
}

impl NixLayer {
    /// The nix layer `labels` describe, `None` for any other layer. A path
    /// label that is not a store path in /nix/store is refused.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<Option<NixLayer>> {
        let mut layer = NixLayer::default();
        let mut marked = false;
        let mut indexed = Vec::new();
        for (k, v) in labels {
            if k == NIX_LAYER {
                marked |= v == "true";
            } else if k == NIX_CLOSURE {
                layer.closure = Some(parse(k, v)?);
            } else if let Some(i) = k.strip_prefix(NIX_STORE_PATH_PREFIX) {
                let i: u64 = i.parse().map_err(|_| Error::InvalidArgument(format!("label {k:?}: not an index")))?;
                indexed.push((i, parse(k, v)?));
            }
        }
        indexed.sort_by_key(|(i, _)| *i);
        layer.paths = indexed.into_iter().map(|(_, p)| p).collect();
        Ok((marked || layer.closure.is_some() || !layer.paths.is_empty()).then_some(layer))
    }

    fn roots(&self) -> Vec<StorePath> {
        self.paths.iter().chain(&self.closure).cloned().collect()
    }
}

fn parse(label: &str, value: &str) -> Result<StorePath> {
    StorePath::from_absolute(value.trim(), DEFAULT_STORE_DIR)
        .map_err(|e| Error::InvalidArgument(format!("label {label:?}: {e}")))
}

/// Why a fetch failed; `unavailable` when the store could not be reached.
#[derive(Debug, Clone)]
pub struct FetchFailure {
    pub message: String,
    pub unavailable: bool,
}

/// Makes store paths present on disk, with their closures.
#[async_trait]
pub trait PathFetcher: Send + Sync + 'static {
    /// Materialises the closures of `roots` as `<store_dir>/<hash>-<name>`
    /// (each atomically; present ones are kept) and returns every path of
    /// those closures. Safe to call concurrently for overlapping closures.
    async fn fetch(&self, roots: &[StorePath], store_dir: &Path) -> Result<Vec<StorePath>, FetchFailure>;
}

/// Fetches the paths `layer` names into `store_dir` and returns what the
/// snapshot binds and roots. The closure-info path's `store-paths` is read
/// after it arrived; paths it lists beyond its fetched closure are fetched
/// too.
pub async fn materialise(fetcher: &dyn PathFetcher, key: &str, layer: &NixLayer, store_dir: &Path) -> Result<NixPaths> {
    let failed = |f: FetchFailure| Error::Fetch { key: key.to_owned(), message: f.message, unavailable: f.unavailable };
    let roots = layer.roots();
    if roots.is_empty() {
        return Ok(NixPaths::default());
    }
    let mut rooted: BTreeSet<StorePath> = fetcher.fetch(&roots, store_dir).await.map_err(failed)?.into_iter().collect();
    rooted.extend(roots.iter().cloned());
    let mut bind: BTreeSet<StorePath> = layer.paths.iter().cloned().collect();
    if let Some(closure) = &layer.closure {
        let listed = read_store_paths(key, &store_dir.join(closure.to_string()).join(STORE_PATHS)).await?;
        let missing: Vec<StorePath> = listed.iter().filter(|p| !rooted.contains(*p)).cloned().collect();
        if !missing.is_empty() {
            tracing::debug!(key, count = missing.len(), "store-paths lists paths outside its closure; fetching them");
            rooted.extend(fetcher.fetch(&missing, store_dir).await.map_err(failed)?);
            rooted.extend(missing);
        }
        bind.extend(listed);
    }
    for path in &rooted {
        let at = store_dir.join(path.to_string());
        if tokio::fs::symlink_metadata(&at).await.is_err() {
            return Err(Error::Fetch {
                key: key.to_owned(),
                message: format!("{} is missing after the fetch", at.display()),
                unavailable: false,
            });
        }
    }
    Ok(NixPaths {
        bind: bind.iter().map(ToString::to_string).collect(),
        roots: rooted.iter().map(ToString::to_string).collect(),
    })
}

/// The store paths a `store-paths` file lists (one absolute path a line).
async fn read_store_paths(key: &str, file: &Path) -> Result<Vec<StorePath>> {
    let file = file.to_path_buf();
    let text = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut text = String::new();
        std::fs::File::open(&file)?.take(MAX_STORE_PATHS).read_to_string(&mut text)?;
        Ok(text)
    })
    .await
    .map_err(|e| Error::Io { context: "reading store-paths".into(), source: std::io::Error::other(e) })?
    .map_err(Error::io("reading the closure-info path's store-paths"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            StorePath::from_absolute(l.trim(), DEFAULT_STORE_DIR).map_err(|e| Error::Fetch {
                key: key.to_owned(),
                message: format!("store-paths lists {l:?}: {e}"),
                unavailable: false,
            })
        })
        .collect()
}
