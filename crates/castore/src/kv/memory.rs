//! [`MemoryStore`]: records in process memory (`memory:`), for tests and
//! short-lived tools.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{KvStore, Table};
use crate::Result;

type Map = HashMap<Bytes, Bytes>;

/// An in-memory engine; clones share the same records.
#[derive(Clone, Default)]
pub struct MemoryStore {
    tables: Arc<[RwLock<Map>; 3]>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self, t: Table) -> &RwLock<Map> {
        &self.tables[t as usize]
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.table(table).read().expect("poisoned").get(key).cloned())
    }

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.table(table).read().expect("poisoned").contains_key(key))
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()> {
        let mut map = self.table(table).write().expect("poisoned");
        for (k, v) in records {
            map.entry(k).or_insert(v);
        }
        Ok(())
    }
}
