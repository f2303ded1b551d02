//! [`MemoryStore`]: records in process memory (`memory:`), for tests and
//! short-lived tools.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream::BoxStream};

use super::{KvStore, Table};
use crate::Result;

type Map = BTreeMap<Bytes, Bytes>;

/// An in-memory engine; clones share the same records.
#[derive(Clone, Default)]
pub struct MemoryStore {
    tables: Arc<RwLock<HashMap<&'static str, Map>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read<T>(&self, t: Table, f: impl FnOnce(Option<&Map>) -> T) -> T {
        f(self.tables.read().expect("poisoned").get(t.name()))
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.read(table, |m| m.and_then(|m| m.get(key).cloned())))
    }

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.read(table, |m| m.is_some_and(|m| m.contains_key(key))))
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()> {
        let mut tables = self.tables.write().expect("poisoned");
        let map = tables.entry(table.name()).or_default();
        for (k, v) in records {
            map.entry(k).or_insert(v);
        }
        Ok(())
    }

    fn scan(&self, table: Table) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        // A snapshot: values are reference-counted, so this copies no data.
        let records: Vec<_> = self
            .read(table, |m| m.map(|m| m.iter().map(|(k, v)| Ok((k.clone(), v.clone()))).collect()))
            .unwrap_or_default();
        futures::stream::iter(records).boxed()
    }

    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        if let Err(refused) = super::not_chunks(table, "prefix scan") {
            return futures::stream::iter([Err(refused)]).boxed();
        }
        let records: Vec<_> = self
            .read(table, |m| {
                m.map(|m| {
                    m.range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, v)| Ok((k.clone(), v.clone())))
                        .collect()
                })
            })
            .unwrap_or_default();
        futures::stream::iter(records).boxed()
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<Result<(), Option<Bytes>>> {
        super::not_chunks(table, "compare-and-swap")?;
        let mut tables = self.tables.write().expect("poisoned");
        let map = tables.entry(table.name()).or_default();
        let actual = map.get(&key);
        if actual != current.as_ref() {
            return Ok(Err(actual.cloned()));
        }
        match new {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
        Ok(Ok(()))
    }
}
