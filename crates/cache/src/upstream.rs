//! Pull-through from upstream binary caches (`--upstream URL`).
//!
//! STUB: being written (see the helper's task).
use std::sync::Arc;

use store::PathInfo;

use crate::{BinaryCache, CacheConfig, CacheError};

/// The upstream caches of a [`BinaryCache`] and the fetches in flight.
pub struct Upstreams {}

impl Upstreams {
    /// `None` when no upstream is configured.
    pub(crate) fn new(config: &CacheConfig) -> Result<Option<Self>, CacheError> {
        if config.upstreams.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {}))
    }
}

/// Fetches the path with this digest (and its closure) from the upstreams
/// into the cache's store and returns its PathInfo; `None` when no
/// upstream has it (or none is configured).
pub(crate) async fn fetch(cache: Arc<BinaryCache>, digest: [u8; store::store_path::DIGEST_LEN]) -> Result<Option<PathInfo>, CacheError> {
    let _ = (cache, digest);
    Ok(None)
}
