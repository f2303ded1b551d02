//! The fetcher of a running snapshotter: [`fetch::Fetcher`] (store paths
//! over the castore and PathInfo gRPC services, each verified before it is
//! renamed into place, present ones kept).
use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use fetch::{FetchError, Fetcher};
use store::StorePath;

use crate::nix::{FetchFailure, PathFetcher};

/// [`fetch::Fetcher`] as a [`PathFetcher`].
#[derive(Clone)]
pub struct GrpcFetcher(Arc<Fetcher>);

impl GrpcFetcher {
    pub fn new(fetcher: Fetcher) -> Self {
        Self(Arc::new(fetcher))
    }
}

#[async_trait]
impl PathFetcher for GrpcFetcher {
    async fn fetch(&self, roots: &[StorePath], store_dir: &Path) -> Result<Vec<StorePath>, FetchFailure> {
        match self.0.fetch(roots, store_dir).await {
            Ok(fetched) => {
                let s = &fetched.summary;
                tracing::debug!(
                    roots = roots.len(),
                    closure = fetched.closure.len(),
                    fetched = s.fetched,
                    present = s.skipped,
                    downloaded = s.downloaded,
                    copied = s.copied,
                    "fetched"
                );
                Ok(fetched.closure.into_iter().map(|info| info.store_path).collect())
            }
            Err(e) => Err(FetchFailure {
                // The store could not be reached or asked: worth retrying.
                unavailable: matches!(e, FetchError::Connect { .. } | FetchError::Store { .. }),
                message: e.to_string(),
            }),
        }
    }
}
