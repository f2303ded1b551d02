//! The snapshotter itself: containerd's snapshot semantics over the
//! metadata ([`crate::meta`]), the directories ([`crate::mounts::Layout`])
//! and the shared store of nix layers' paths.
//!
//! Locking: `state` (a plain mutex, held only for metadata and directory
//! renames, in blocking tasks) serialises every change. `store` is held
//! shared by each fetch from its start until the fetched paths are
//! recorded as some snapshot's roots, and exclusively by garbage
//! collection, so a collection never deletes a path a fetch found present
//! (or is writing) but has not yet rooted. Lock order: `store`, then
//! `state`.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
    time::SystemTime,
};

use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

use crate::{
    error::{Error, Result},
    filter::Filters,
    fsops,
    meta::{Change, Db, Kind, NixPaths, Record, Usage},
    mounts::{self, Layout},
    nix::{self, NixLayer, PathFetcher},
    proto::Mount,
    usage,
};

/// containerd's limit on one label (key and value together).
const MAX_LABEL: usize = 4096;

/// What Stat, Update and List say about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

impl Info {
    fn of(name: &str, r: &Record) -> Info {
        Info {
            name: name.to_owned(),
            parent: r.parent.clone(),
            kind: r.kind,
            labels: r.labels.clone(),
            created: r.created,
            updated: r.updated,
        }
    }
}

struct State {
    db: Db,
    records: BTreeMap<String, Record>,
    next_id: u64,
}

struct Inner {
    layout: Layout,
    state: Mutex<State>,
    store: Arc<RwLock<()>>,
    fetcher: Option<Arc<dyn PathFetcher>>,
    overlay_options: Vec<String>,
    trash_counter: AtomicU64,
}

/// A containerd snapshotter rooted at one directory. Cheap to clone.
#[derive(Clone)]
pub struct Snapshotter {
    inner: Arc<Inner>,
}

impl Snapshotter {
    /// Opens (or creates) the snapshotter's state under `root`. Without a
    /// fetcher, ordinary layers work and nix layers are refused.
    pub fn open(root: impl Into<PathBuf>, fetcher: Option<Arc<dyn PathFetcher>>) -> Result<Snapshotter> {
        let layout = Layout { root: root.into() };
        for dir in [layout.root.clone(), layout.snapshots(), layout.store(), layout.trash()] {
            std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let (db, records, next_id) = Db::open(&layout.database())?;
        // Whatever a crash left in the trash was already unreachable.
        fsops::purge(&layout.trash());
        tracing::info!(root = %layout.root.display(), snapshots = records.len(), "snapshotter state opened");
        Ok(Snapshotter {
            inner: Arc::new(Inner {
                layout,
                state: Mutex::new(State { db, records, next_id }),
                store: Arc::new(RwLock::new(())),
                fetcher,
                overlay_options: mounts::default_overlay_options(),
                trash_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The directory store paths are materialised in (`<root>/store`).
    pub fn store_dir(&self) -> PathBuf {
        self.inner.layout.store()
    }

    /// A new active snapshot on `parent` (empty: none).
    pub async fn prepare(&self, key: String, parent: String, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels).await
    }

    /// A new read-only view of `parent`.
    pub async fn view(&self, key: String, parent: String, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels).await
    }

    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        check_key(&key, "key")?;
        check_labels(&labels)?;
        let parent = (!parent.is_empty()).then_some(parent);
        let layer = NixLayer::from_labels(&labels)?;
        // Refuse early what would be refused after a long fetch.
        {
            let st = self.inner.lock();
            if st.records.contains_key(&key) {
                return Err(Error::AlreadyExists(key));
            }
            parent_chain(&st.records, parent.as_deref())?;
        }
        let (guard, nix) = match &layer {
            Some(layer) => {
                let guard = self.inner.store.clone().read_owned().await;
                (Some(guard), Some(self.materialise(&key, layer).await?))
            }
            None => (None, None),
        };
        let inner = self.inner.clone();
        let mounts = blocking(move || inner.create(kind, key, parent, labels, nix)).await;
        drop(guard);
        mounts
    }

    async fn materialise(&self, key: &str, layer: &NixLayer) -> Result<NixPaths> {
        if layer.paths.is_empty() && layer.closure.is_none() {
            return Ok(NixPaths::default()); // marked as a nix layer, naming no path
        }
        let Some(fetcher) = &self.inner.fetcher else {
            return Err(Error::FailedPrecondition(format!(
                "{key:?} is a nix layer, but this snapshotter has no store to fetch its paths from (--store)"
            )));
        };
        let started = std::time::Instant::now();
        let paths = nix::materialise(fetcher.as_ref(), key, layer, &self.inner.layout.store()).await?;
        tracing::info!(
            key,
            paths = paths.bind.len(),
            closure = paths.roots.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "nix layer's store paths present"
        );
        Ok(paths)
    }

    /// The mounts of an active snapshot or a view.
    pub async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        let inner = self.inner.clone();
        blocking(move || {
            let st = inner.lock();
            let record = st.records.get(&key).ok_or_else(|| Error::NotFound(key.clone()))?;
            if record.kind == Kind::Committed {
                return Err(Error::FailedPrecondition(format!("snapshot {key:?} is committed: it has no mounts")));
            }
            inner.mounts_of(&st.records, record)
        })
        .await
    }

    /// Commits active snapshot `key` as `name` (same directory; its usage
    /// is computed now, once).
    pub async fn commit(&self, name: String, key: String, labels: BTreeMap<String, String>) -> Result<()> {
        check_key(&name, "name")?;
        check_labels(&labels)?;
        let (id, needs_paths) = {
            let st = self.inner.lock();
            let record = committable(&st.records, &name, &key)?;
            (record.id, record.nix.is_none())
        };
        // A layer whose annotations arrive only now still gets its paths.
        let layer = if needs_paths { NixLayer::from_labels(&labels)? } else { None };
        let (guard, nix) = match &layer {
            Some(layer) => {
                let guard = self.inner.store.clone().read_owned().await;
                (Some(guard), Some(self.materialise(&key, layer).await?))
            }
            None => (None, None),
        };
        let inner = self.inner.clone();
        let result = blocking(move || {
            let fs = inner.layout.fs(id);
            let usage = usage::disk_usage(&fs).map_err(Error::io(format!("disk usage of {}", fs.display())))?;
            let mut st = inner.lock();
            let record = committable(&st.records, &name, &key)?;
            if record.id != id {
                return Err(Error::NotFound(key)); // removed and prepared again meanwhile
            }
            let now = SystemTime::now();
            let committed = Record {
                id,
                kind: Kind::Committed,
                parent: record.parent.clone(),
                labels,
                created: now,
                updated: now,
                usage: Some(usage),
                nix: record.nix.clone().or(nix),
            };
            st.db.write(&[Change::Delete(&key), Change::Put(&name, &committed)])?;
            st.records.remove(&key);
            st.records.insert(name.clone(), committed);
            tracing::debug!(key, name, id, size = usage.size, inodes = usage.inodes, "committed");
            Ok(())
        })
        .await;
        drop(guard);
        result
    }

    /// Removes a snapshot without children; its directory goes, and store
    /// paths no other snapshot roots are released.
    pub async fn remove(&self, key: String) -> Result<()> {
        let inner = self.inner.clone();
        let released = blocking(move || {
            let mut st = inner.lock();
            let record = st.records.get(&key).ok_or_else(|| Error::NotFound(key.clone()))?;
            if let Some((child, _)) = st.records.iter().find(|(_, r)| r.parent.as_deref() == Some(key.as_str())) {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: {child:?} is its child"
                )));
            }
            let record = record.clone();
            st.db.write(&[Change::Delete(&key)])?;
            st.records.remove(&key);
            let trashed = fsops::move_to_trash(
                &inner.layout.snapshot(record.id),
                &inner.layout.trash(),
                &inner.trash_counter,
                &format!("snapshot-{}", record.id),
            );
            drop(st);
            match trashed {
                Ok(Some(path)) => {
                    if let Err(e) = fsops::remove_tree(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete a removed snapshot");
                    }
                }
                Ok(None) => {}
                // The record is gone: the directory is an orphan for Cleanup.
                Err(e) => tracing::warn!(key, error = %e, "could not move a removed snapshot to the trash"),
            }
            tracing::debug!(key, id = record.id, "removed");
            Ok(record.nix.map(|n| n.roots).unwrap_or_default())
        })
        .await?;
        if !released.is_empty() {
            self.release(released).await;
        }
        Ok(())
    }

    /// Deletes those of `candidates` no snapshot roots any more: now when
    /// no fetch is running, else in the background once they are done
    /// (a fetch may be about to root one of them).
    async fn release(&self, candidates: Vec<String>) {
        let inner = self.inner.clone();
        match self.inner.store.clone().try_write_owned() {
            Ok(guard) => {
                if let Err(e) = blocking(move || inner.collect(guard, Some(candidates))).await {
                    tracing::warn!(error = %e, "releasing store paths");
                }
            }
            Err(_) => {
                tokio::spawn(async move {
                    let guard = inner.store.clone().write_owned().await;
                    if let Err(e) = blocking(move || inner.collect(guard, Some(candidates))).await {
                        tracing::warn!(error = %e, "releasing store paths");
                    }
                });
            }
        }
    }

    pub async fn stat(&self, key: String) -> Result<Info> {
        let st = self.inner.lock();
        st.records.get(&key).map(|r| Info::of(&key, r)).ok_or(Error::NotFound(key))
    }

    /// Changes the labels of snapshot `name`: with no `paths`, or the path
    /// `labels`, they become `labels`; `labels.<key>` sets that one label
    /// from `labels`, or deletes it when `labels` lacks it. Other fields
    /// cannot change.
    pub async fn update(&self, name: String, labels: BTreeMap<String, String>, paths: Vec<String>) -> Result<Info> {
        check_labels(&labels)?;
        let inner = self.inner.clone();
        blocking(move || {
            let mut st = inner.lock();
            let mut record = st.records.get(&name).cloned().ok_or_else(|| Error::NotFound(name.clone()))?;
            if paths.is_empty() {
                record.labels = labels;
            } else {
                for path in &paths {
                    if path == "labels" {
                        record.labels = labels.clone();
                    } else if let Some(label) = path.strip_prefix("labels.") {
                        match labels.get(label) {
                            Some(v) => record.labels.insert(label.to_owned(), v.clone()),
                            None => record.labels.remove(label),
                        };
                    } else {
                        return Err(Error::InvalidArgument(format!(
                            "cannot update field {path:?} of snapshot {name:?}: only labels can change"
                        )));
                    }
                }
            }
            check_labels(&record.labels)?;
            record.updated = SystemTime::now();
            st.db.write(&[Change::Put(&name, &record)])?;
            let info = Info::of(&name, &record);
            st.records.insert(name, record);
            Ok(info)
        })
        .await
    }

    /// Every snapshot matching any of `filters` (all without filters).
    pub async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = Filters::parse(filters).map_err(Error::InvalidArgument)?;
        let st = self.inner.lock();
        Ok(st.records.iter().map(|(k, r)| Info::of(k, r)).filter(|i| filters.matches(i)).collect())
    }

    /// Disk usage: recorded at Commit for committed snapshots, measured now
    /// for the others.
    pub async fn usage(&self, key: String) -> Result<Usage> {
        let inner = self.inner.clone();
        blocking(move || {
            let id = {
                let st = inner.lock();
                let record = st.records.get(&key).ok_or_else(|| Error::NotFound(key.clone()))?;
                if let Some(usage) = record.usage {
                    return Ok(usage);
                }
                record.id
            };
            match usage::disk_usage(&inner.layout.fs(id)) {
                Ok(usage) => Ok(usage),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(key)),
                Err(e) => Err(Error::Io { context: format!("disk usage of {key:?}"), source: e }),
            }
        })
        .await
    }

    /// Removes what no snapshot refers to: directories under `snapshots/`
    /// without a record (a crash between the two), the trash, and store
    /// paths no snapshot roots.
    pub async fn cleanup(&self) -> Result<()> {
        let guard = self.inner.store.clone().write_owned().await;
        let inner = self.inner.clone();
        blocking(move || {
            {
                let st = inner.lock();
                let live: HashSet<String> = st.records.values().map(|r| r.id.to_string()).collect();
                let dir = inner.layout.snapshots();
                for entry in std::fs::read_dir(&dir).map_err(Error::io(format!("listing {}", dir.display())))? {
                    let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !live.contains(&name) {
                        tracing::info!(directory = name, "removing an orphaned snapshot directory");
                        fsops::move_to_trash(&entry.path(), &inner.layout.trash(), &inner.trash_counter, "orphan")
                            .map_err(Error::io(format!("moving {} to the trash", entry.path().display())))?;
                    }
                }
            }
            fsops::purge(&inner.layout.trash());
            inner.collect(guard, None)
        })
        .await
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the records as the database
        // has them (every change writes the database first), so go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: Option<String>,
        labels: BTreeMap<String, String>,
        nix: Option<NixPaths>,
    ) -> Result<Vec<Mount>> {
        let mut st = self.lock();
        if st.records.contains_key(&key) {
            return Err(Error::AlreadyExists(key));
        }
        parent_chain(&st.records, parent.as_deref())?;
        let id = st.next_id;
        let dir = self.layout.snapshot(id);
        // Made under a temporary name and renamed, so a directory named by
        // an id is always complete.
        let tmp = self.layout.snapshots().join(format!("new-{id}"));
        let made = (|| -> std::io::Result<()> {
            fsops::remove_tree(&tmp)?;
            std::fs::create_dir(&tmp)?;
            std::fs::create_dir(tmp.join("fs"))?;
            if kind == Kind::Active {
                std::fs::create_dir(tmp.join("work"))?;
            }
            std::fs::rename(&tmp, &dir)
        })();
        if let Err(e) = made {
            let _ = fsops::remove_tree(&tmp);
            return Err(Error::Io { context: format!("creating {}", dir.display()), source: e });
        }
        let now = SystemTime::now();
        let record = Record { id, kind, parent, labels, created: now, updated: now, usage: None, nix };
        if let Err(e) = st.db.write(&[Change::Put(&key, &record), Change::NextId(id + 1)]) {
            let _ = fsops::remove_tree(&dir);
            return Err(e);
        }
        st.next_id = id + 1;
        let mounts = self.mounts_of(&st.records, &record)?;
        tracing::debug!(key, id, kind = kind.as_str(), parent = record.parent.as_deref().unwrap_or(""), "created");
        st.records.insert(key, record);
        Ok(mounts)
    }

    /// The snapshot's overlay (or bind) mounts, then one read-only bind
    /// mount per store path of each nix layer among its parents, unless it
    /// is a layer being unpacked itself (a nix layer, or any layer
    /// containerd labels with its chain id): writing a layer's tar must
    /// not meet read-only mounts.
    fn mounts_of(&self, records: &BTreeMap<String, Record>, record: &Record) -> Result<Vec<Mount>> {
        let chain = parent_chain(records, record.parent.as_deref())?;
        let ids: Vec<u64> = chain.iter().map(|r| r.id).collect();
        let mut mounts = mounts::layer_mounts(&self.layout, record.id, record.kind, &ids, &self.overlay_options);
        let unpacking = record.nix.is_some() || record.labels.contains_key(nix::SNAPSHOT_REF);
        if !unpacking {
            let binds: BTreeSet<&str> =
                chain.iter().filter_map(|r| r.nix.as_ref()).flat_map(|n| n.bind.iter().map(String::as_str)).collect();
            mounts.extend(binds.into_iter().map(|base| mounts::store_path_mount(&self.layout, base)));
        }
        Ok(mounts)
    }

    /// Deletes store paths no snapshot roots: among `candidates`, or every
    /// entry of the store directory (leftovers of interrupted fetches
    /// too: none is running while `_store` is held).
    fn collect(&self, _store: OwnedRwLockWriteGuard<()>, candidates: Option<Vec<String>>) -> Result<()> {
        let rooted: HashSet<String> = {
            let st = self.lock();
            st.records.values().filter_map(|r| r.nix.as_ref()).flat_map(|n| n.roots.iter().cloned()).collect()
        };
        let store = self.layout.store();
        let candidates = match candidates {
            Some(c) => c,
            None => std::fs::read_dir(&store)
                .map_err(Error::io(format!("listing {}", store.display())))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
        };
        let mut released = 0;
        for base in candidates.iter().filter(|b| !rooted.contains(*b)) {
            let path = store.join(base);
            match fsops::move_to_trash(&path, &self.layout.trash(), &self.trash_counter, "store") {
                Ok(Some(trashed)) => {
                    released += 1;
                    if let Err(e) = fsops::remove_tree(&trashed) {
                        tracing::warn!(path = %trashed.display(), error = %e, "could not delete a released store path");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not release a store path"),
            }
        }
        if released > 0 {
            tracing::info!(released, still_rooted = rooted.len(), "released store paths");
        }
        Ok(())
    }
}

/// The records of `parent` and its ancestors, nearest first; `parent` must
/// exist and be committed.
fn parent_chain<'a>(records: &'a BTreeMap<String, Record>, parent: Option<&str>) -> Result<Vec<&'a Record>> {
    let mut chain = Vec::new();
    let Some(first) = parent else { return Ok(chain) };
    let record = records.get(first).ok_or_else(|| Error::NotFound(first.to_owned()))?;
    if record.kind != Kind::Committed {
        return Err(Error::InvalidArgument(format!("parent {first:?} is not a committed snapshot")));
    }
    let mut next = Some(record);
    while let Some(r) = next {
        chain.push(r);
        if chain.len() > records.len() {
            return Err(Error::Database(format!("the parent chain of {first:?} loops")));
        }
        next = match &r.parent {
            Some(p) => Some(records.get(p).ok_or_else(|| Error::Database(format!("parent {p:?} has no record")))?),
            None => None,
        };
    }
    Ok(chain)
}

/// The active record `key`, when `name` is free to commit it as.
fn committable<'a>(records: &'a BTreeMap<String, Record>, name: &str, key: &str) -> Result<&'a Record> {
    let record = records.get(key).ok_or_else(|| Error::NotFound(key.to_owned()))?;
    if record.kind != Kind::Active {
        return Err(Error::FailedPrecondition(format!(
            "snapshot {key:?} is {}: only active snapshots can be committed",
            record.kind.as_str()
        )));
    }
    if records.contains_key(name) {
        return Err(Error::AlreadyExists(name.to_owned()));
    }
    Ok(record)
}

fn check_key(key: &str, what: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!("the snapshot {what} is empty")));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument("a label has an empty key".into()));
        }
        if k.len() + v.len() > MAX_LABEL {
            return Err(Error::InvalidArgument(format!(
                "label {:?}: key and value are longer than {MAX_LABEL} bytes",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Runs filesystem and database work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Io { context: "a blocking task".into(), source: std::io::Error::other(e) }))
}
