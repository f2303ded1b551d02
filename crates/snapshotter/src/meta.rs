//! The persistent metadata: one record per snapshot, keyed by its
//! (namespaced, opaque) key, in a redb database, plus the next directory id.
//! The whole set is small (hundreds of snapshots), so it is loaded at start
//! and kept in memory; every change is written through in one transaction.
use std::{collections::BTreeMap, path::Path, time::SystemTime};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Snapshot records, JSON-encoded (readable with any redb tool, and
/// tolerant of fields added later).
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next-id";

/// What a snapshot is to containerd.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The spelling of containerd's filters (`kind==committed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Disk usage as containerd counts it: allocated bytes and inodes.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// The store paths a nix layer brought: `bind` are the ones containers get
/// bind-mounted (what the layer's labels list), `roots` everything this
/// snapshot keeps in the store (their closure, the closure-info path too).
/// Basenames, sorted.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct NixPaths {
    pub bind: Vec<String>,
    pub roots: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    /// Names the directory `snapshots/<id>`; kept by Commit.
    pub id: u64,
    pub kind: Kind,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Computed once, at Commit (a committed snapshot never changes).
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Set for nix layers (and kept through Commit).
    #[serde(default)]
    pub nix: Option<NixPaths>,
}

/// One change of a write transaction.
pub enum Change<'a> {
    Put(&'a str, &'a Record),
    Delete(&'a str),
    NextId(u64),
}

pub struct Db {
    db: redb::Database,
}

impl Db {
    /// Opens (or creates) the database; returns every record and the next
    /// free id.
    pub fn open(path: &Path) -> Result<(Db, BTreeMap<String, Record>, u64)> {
        let db = redb::Database::create(path).map_err(Error::db)?;
        let txn = db.begin_write().map_err(Error::db)?;
        txn.open_table(SNAPSHOTS).map_err(Error::db)?;
        txn.open_table(COUNTERS).map_err(Error::db)?;
        txn.commit().map_err(Error::db)?;

        let txn = db.begin_read().map_err(Error::db)?;
        let table = txn.open_table(SNAPSHOTS).map_err(Error::db)?;
        let mut records = BTreeMap::new();
        for entry in table.iter().map_err(Error::db)? {
            let (k, v) = entry.map_err(Error::db)?;
            let record: Record = serde_json::from_slice(v.value())
                .map_err(|e| Error::Database(format!("record of {:?}: {e}", k.value())))?;
            records.insert(k.value().to_owned(), record);
        }
        let counters = txn.open_table(COUNTERS).map_err(Error::db)?;
        let stored = counters.get(NEXT_ID).map_err(Error::db)?.map(|v| v.value()).unwrap_or(1);
        // Never reuse an id, even if the counter were behind.
        let next_id = records.values().map(|r| r.id + 1).fold(stored.max(1), u64::max);
        Ok((Db { db }, records, next_id))
    }

    /// Applies `changes` in one durable transaction.
    pub fn write(&self, changes: &[Change<'_>]) -> Result<()> {
        let txn = self.db.begin_write().map_err(Error::db)?;
        {
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(Error::db)?;
            let mut counters = txn.open_table(COUNTERS).map_err(Error::db)?;
            for change in changes {
                match change {
                    Change::Put(key, record) => {
                        let json = serde_json::to_vec(record).map_err(Error::db)?;
                        snapshots.insert(*key, json.as_slice()).map_err(Error::db)?;
                    }
                    Change::Delete(key) => {
                        snapshots.remove(*key).map_err(Error::db)?;
                    }
                    Change::NextId(id) => {
                        counters.insert(NEXT_ID, *id).map_err(Error::db)?;
                    }
                }
            }
        }
        txn.commit().map_err(Error::db)
    }
}
