//! Images defined from Nix store paths, in two flavours (ordinary layered
//! under `NAME`, nix-snapshotter under `nix-snapshotter/NAME`), and
//! package-named images (`pkgs/…`): manifests generated from PathInfo,
//! layers rendered from castore. The distribution API asks these two hooks
//! before (manifests) or after (blobs) its own stored records.
use std::sync::Arc;

use crate::{
    Registry,
    error::RegistryError,
    oci::{Blob, Digest, Manifest},
};

mod api;
mod build;
mod farm;
pub mod packages;
mod pushed;
mod record;
pub mod spec;

pub use api::{router as api_router, split_reference};
pub use build::{Builds, Flavour};
pub use spec::ImageSpec;

/// The repository prefix of the nix-snapshotter flavour.
pub const NIX_SNAPSHOTTER_PREFIX: &str = "nix-snapshotter/";

impl Registry {
    /// The manifest of a generated image (`repo` names an image spec, or a
    /// `pkgs/…` package list), or `None` when `repo:reference` is not one.
    pub(crate) async fn generated_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        if let Ok(digest) = reference.parse::<Digest>() {
            return record::manifest(self, &digest).await;
        }
        let (name, flavour) = match repo.strip_prefix(NIX_SNAPSHOTTER_PREFIX) {
            Some(name) => (name, Flavour::NixSnapshotter),
            None => (repo, Flavour::Ordinary),
        };
        let spec = match name.strip_prefix(packages::PREFIX) {
            Some(packages) => {
                let spec = packages::spec_for(&*self.meta, packages).await?;
                self.fetch_missing(&spec).await?;
                spec
            }
            None => match spec::get(&*self.meta, name, reference).await? {
                Some(spec) => spec,
                None => {
                    let Some(pushed) = pushed::find(self, name, reference).await? else { return Ok(None) };
                    return match flavour {
                        Flavour::NixSnapshotter => pushed::nix_snapshotter(self, &pushed).await.map(Some),
                        Flavour::Ordinary => pushed::ordinary(self, &pushed).await.map(Some),
                    };
                }
            },
        };
        build::manifest(self, &spec, flavour).await.map(Some)
    }

    /// The tags of a generated repository, or `None` when `repo` is not one:
    /// a spec's tags (under both flavours), `latest` for package lists.
    pub(crate) async fn generated_tags(&self, repo: &str) -> Result<Option<Vec<String>>, RegistryError> {
        let name = repo.strip_prefix(NIX_SNAPSHOTTER_PREFIX).unwrap_or(repo);
        if name.starts_with(packages::PREFIX) {
            return Ok(Some(vec!["latest".to_owned()]));
        }
        let tags = spec::tags(&*self.meta, name).await?;
        Ok((!tags.is_empty()).then_some(tags))
    }

    /// The repositories of defined images, under both flavours' names.
    pub(crate) async fn generated_repositories(&self) -> Result<Vec<String>, RegistryError> {
        let specs = spec::list(&*self.meta).await?;
        Ok(specs.into_iter().flat_map(|(name, _, _)| [format!("{NIX_SNAPSHOTTER_PREFIX}{name}"), name]).collect())
    }

    /// A blob of a generated image (a rendered layer or a config), or `None`.
    pub(crate) async fn generated_blob(&self, digest: &Digest) -> Result<Option<Blob>, RegistryError> {
        record::blob(self, digest).await
    }

    /// Records an image spec for `name:tag` after checking that its closure
    /// is in the store, and returns the manifests of both flavours (built
    /// now, so the first pull is fast and errors show here).
    pub async fn add_image(&self, name: &str, tag: &str, spec: ImageSpec) -> Result<[Manifest; 2], RegistryError> {
        spec.validate(&self.config.store_dir)?;
        let ordinary = build::manifest(self, &spec, Flavour::Ordinary).await?;
        let nix = build::manifest(self, &spec, Flavour::NixSnapshotter).await?;
        spec::put(&*self.meta, name, tag, &spec).await?;
        Ok([ordinary, nix])
    }
}

/// Fetches store paths the store lacks, with their closures (the binary
/// cache's upstream caches): how `pkgs/…` images get paths nobody imported.
#[async_trait::async_trait]
pub trait PathFetcher: Send + Sync {
    /// Makes `path` and its closure present; `false` when no source has it.
    async fn fetch(&self, path: &store::StorePath) -> Result<bool, String>;
}

impl Registry {
    /// Lets `pkgs/…` images fetch missing store paths through `fetcher`
    /// (set once, at start-up).
    pub fn set_path_fetcher(&self, fetcher: Arc<dyn PathFetcher>) {
        let _ = self.fetcher.set(fetcher);
    }

    /// Asks the fetcher for every root of `spec` the store lacks.
    async fn fetch_missing(&self, spec: &ImageSpec) -> Result<(), RegistryError> {
        let (roots, copy_to_root) = spec.store_paths(&self.config.store_dir)?;
        for path in roots.iter().chain(&copy_to_root) {
            self.fetch_path(path).await?;
        }
        Ok(())
    }

    /// Asks the fetcher for `path` (and its closure) when the store lacks it.
    async fn fetch_path(&self, path: &store::StorePath) -> Result<(), RegistryError> {
        let Some(fetcher) = self.fetcher.get() else { return Ok(()) };
        if self.paths.get(path.digest()).await?.is_none() {
            fetcher
                .fetch(path)
                .await
                .map_err(|e| RegistryError::internal(format!("fetching {path} from the upstream caches: {e}")))?;
        }
        Ok(())
    }
}

/// A spec (or package list) that cannot make an image: 400 with the reason.
pub(crate) fn invalid_spec(message: String) -> RegistryError {
    RegistryError::manifest_invalid(message)
}
