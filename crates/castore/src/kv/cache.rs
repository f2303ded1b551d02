//! [`CacheStore`]: a near engine (a replica's local disk) in front of a far
//! one (the object storage every replica shares), so a replica serves hot
//! chunks without a round trip.
//!
//! Address: `cache:?near=NEAR&far=FAR[&immutable=TABLE,…]`, the nested
//! addresses percent-decoded (a `+` stays a `+`), so only a `&` inside them
//! must be written `%26` (and a `%` as `%25`). For example:
//!
//! ```text
//! cache:?near=redb:/var/cache/storefront/near.redb&far=objectstore+s3://storefront/main?endpoint=http://10.0.0.1:3900%26region=garage
//! ```
//!
//! (Fully encoded nested addresses, `far=objectstore%2Bs3%3A%2F%2F…`, mean
//! the same.)
//!
//! Only immutable records are cached: the castore's own tables (chunks,
//! blob indexes, directories: content-addressed) and the named tables listed
//! in `immutable=` (e.g. `pathinfo`, whose records are first-writer-wins
//! and never change). Their reads try near, then far, and a far hit is
//! written to near before it is returned; an absence is never cached, and a
//! failing near is logged and bypassed. Their writes go to far, then near,
//! so near only ever holds what far holds. Everything else (mutable tables,
//! compare-and-swap, scans) goes to far alone: replicas sharing far see one
//! state.
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tracing::warn;

use super::{KvStore, Table};
use crate::{Error, Result, kv::query::Query};

/// A near engine caching a far one's immutable records.
pub struct CacheStore {
    near: Arc<dyn KvStore>,
    far: Arc<dyn KvStore>,
    /// Named tables cached besides the castore's own.
    immutable: Vec<String>,
}

impl CacheStore {
    /// Caches the castore's tables of `far` in `near`.
    pub fn new(near: Arc<dyn KvStore>, far: Arc<dyn KvStore>) -> Self {
        Self { near, far, immutable: Vec::new() }
    }

    /// Also caches these named tables: only tables whose records never
    /// change once written may be listed.
    pub fn with_immutable_tables(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.immutable.extend(names.into_iter().map(Into::into));
        self
    }

    /// Opens a `cache:?near=…&far=…[&immutable=…]` address.
    pub fn open(url: &url::Url) -> Result<Self> {
        let mut q = Query::new(url)?;
        let mut engine = |which: &str| -> Result<Arc<dyn KvStore>> {
            let addr = q.take(which).filter(|a| !a.is_empty()).ok_or_else(|| {
                Error::InvalidRequest(
                    "a cache needs near= and far= addresses: cache:?near=redb:/PATH&far=objectstore+s3://…".into(),
                )
            })?;
            let nested = url::Url::parse(&addr).map_err(|e| {
                Error::InvalidRequest(format!("cache {which}= address: {e} (write & inside it as %26)"))
            })?;
            super::open_url(&nested)?.ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "cache {which}= address {}: not a storage engine (memory:, redb:PATH, objectstore+…, cache:)",
                    nested.scheme()
                ))
            })
        };
        let near = engine("near")?;
        let far = engine("far")?;
        let immutable: Vec<String> = q
            .take("immutable")
            .map(|names| names.split(',').filter(|n| !n.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        q.finish()?;
        Ok(Self::new(near, far).with_immutable_tables(immutable))
    }

    fn cached(&self, table: Table) -> bool {
        matches!(table, Table::CHUNKS | Table::BLOBS | Table::DIRECTORIES)
            || self.immutable.iter().any(|name| name == table.name())
    }
}

#[async_trait]
impl KvStore for CacheStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>> {
        if !self.cached(table) {
            return self.far.get(table, key).await;
        }
        match self.near.get(table, key).await {
            Ok(Some(value)) => return Ok(Some(value)),
            Ok(None) => {}
            Err(e) => warn!(table = table.name(), error = %e, "near cache read failed; reading far"),
        }
        let found = self.far.get(table, key).await?;
        if let Some(value) = &found
            && let Err(e) = self.near.put(table, vec![(Bytes::copy_from_slice(key), value.clone())]).await
        {
            warn!(table = table.name(), error = %e, "near cache write failed");
        }
        Ok(found)
    }

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        if self.cached(table) {
            match self.near.contains(table, key).await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => warn!(table = table.name(), error = %e, "near cache read failed; asking far"),
            }
        }
        self.far.contains(table, key).await
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()> {
        if !self.cached(table) {
            return self.far.put(table, records).await;
        }
        // Far first: near never holds what far lacks.
        self.far.put(table, records.clone()).await?;
        if let Err(e) = self.near.put(table, records).await {
            warn!(table = table.name(), error = %e, "near cache write failed");
        }
        Ok(())
    }

    fn scan(&self, table: Table) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        self.far.scan(table)
    }

    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        self.far.scan_prefix(table, prefix)
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<Result<(), Option<Bytes>>> {
        self.far.compare_and_swap(table, key, current, new).await
    }
}
