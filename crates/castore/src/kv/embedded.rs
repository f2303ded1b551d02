//! [`EmbeddedStore`]: the on-disk default engine (`redb:/path/castore.redb`).
//!
//! Chunks are files (`<db>.chunks/ab/abcd…`), everything else lives in one
//! redb database. Chosen by measurement (docs/benchmarks.md): chunk files go
//! through the page cache at memory speed, while redb gives small records
//! atomic, crash-safe commits.
//!
//! Durability: a chunk file is written to a temporary name and renamed into
//! place, so it is whole or absent after a crash, and writeback starts at once.
//! One writer thread commits redb records in groups (many concurrent puts
//! share one commit), and before each commit it syncs the chunk filesystem
//! if chunks were written since the last sync. So a blob index or directory
//! is never durable before the chunks it names: a power loss can only drop
//! records nothing durable refers to.
use std::{
    collections::HashMap,
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{KvStore, Table};
use crate::{Error, Result};

const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const DIRECTORIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("directories");

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    match table {
        Table::Blobs => BLOBS,
        Table::Directories => DIRECTORIES,
        Table::Chunks => unreachable!("chunks are files"),
    }
}

/// Most write requests folded into one redb commit.
const MAX_GROUP: usize = 4096;

struct WriteOp {
    table: Table,
    records: Vec<(Bytes, Bytes)>,
    done: oneshot::Sender<Result<()>>,
}

/// The embedded engine; clones share one database and writer thread.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<redb::Database>,
    chunks: PathBuf,
    /// Set when chunk files were written since the last filesystem sync.
    dirty: Arc<AtomicBool>,
    tmp_counter: AtomicU64,
    writer: Mutex<Option<(mpsc::SyncSender<WriteOp>, JoinHandle<()>)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the queue, then wait so the database is released when we return.
        if let Some((tx, handle)) = self.writer.lock().expect("poisoned").take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// Databases open in this process, so that the blob and the directory
/// service of one URL share a single redb handle (redb allows one per file).
static OPEN: Mutex<Option<HashMap<PathBuf, Weak<Inner>>>> = Mutex::new(None);

impl EmbeddedStore {
    /// Opens (creating if needed) the database at `path` and its chunk
    /// directory `path` + `.chunks`.
    pub fn open(path: &Path) -> Result<Self> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::InvalidRequest(format!("{} is not a file path", path.display())))?;
        let path = parent.canonicalize()?.join(file_name);

        let mut open = OPEN.lock().expect("poisoned");
        let open = open.get_or_insert_with(HashMap::new);
        if let Some(inner) = open.get(&path).and_then(Weak::upgrade) {
            return Ok(Self { inner });
        }
        let inner = Arc::new(Inner::open(&path)?);
        open.insert(path, Arc::downgrade(&inner));
        Ok(Self { inner })
    }
}

impl Inner {
    fn open(path: &Path) -> Result<Self> {
        let mut chunks = path.as_os_str().to_owned();
        chunks.push(".chunks");
        let chunks = PathBuf::from(chunks);
        let tmp = chunks.join("tmp");
        // Leftovers of writes interrupted by a crash were never visible.
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;

        let db = redb::Database::create(path).map_err(Error::storage)?;
        let txn = db.begin_write().map_err(Error::storage)?;
        for def in [BLOBS, DIRECTORIES] {
            txn.open_table(def).map_err(Error::storage)?;
        }
        txn.commit().map_err(Error::storage)?;
        let db = Arc::new(db);

        let dirty = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel(1024);
        let sync_dir = File::open(&chunks)?;
        let handle = std::thread::Builder::new().name("castore-redb-writer".into()).spawn({
            let db = db.clone();
            let dirty = dirty.clone();
            move || writer_loop(&db, &sync_dir, &dirty, rx)
        })?;
        Ok(Self {
            db,
            chunks,
            dirty,
            tmp_counter: AtomicU64::new(0),
            writer: Mutex::new(Some((tx, handle))),
        })
    }

    fn chunk_path(&self, key: &[u8]) -> PathBuf {
        let hex = data_encoding::HEXLOWER.encode(key);
        self.chunks.join(&hex[..2]).join(hex)
    }

    fn write_chunk(&self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let path = self.chunk_path(key);
        if path.exists() {
            return Ok(());
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.chunks.join("tmp").join(format!("{}.{n}", std::process::id()));
        let mut file = File::create_new(&tmp)?;
        file.write_all(value)?;
        // Start writeback now, so a later sync has little left to do.
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        drop(file);
        match std::fs::rename(&tmp, &path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path.parent().expect("chunk path has a parent"))?;
                std::fs::rename(&tmp, &path)
            }
            other => other,
        }?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }
}

fn writer_loop(db: &redb::Database, sync_dir: &File, dirty: &AtomicBool, rx: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let result = commit_group(db, sync_dir, dirty, &group);
        for op in group {
            let _ = op.done.send(result.as_ref().map(|_| ()).map_err(|e| Error::Storage(e.clone())));
        }
    }
}

fn commit_group(db: &redb::Database, sync_dir: &File, dirty: &AtomicBool, group: &[WriteOp]) -> Result<(), String> {
    if dirty.swap(false, Ordering::AcqRel) {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::syncfs(sync_dir.as_raw_fd()) } != 0 {
            dirty.store(true, Ordering::Release);
            return Err(format!("syncing chunk files: {}", std::io::Error::last_os_error()));
        }
    }
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    for op in group {
        let mut table = txn.open_table(definition(op.table)).map_err(|e| e.to_string())?;
        for (k, v) in &op.records {
            if table.get(k.as_ref()).map_err(|e| e.to_string())?.is_none() {
                table.insert(k.as_ref(), v.as_ref()).map_err(|e| e.to_string())?;
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[async_trait]
impl KvStore for EmbeddedStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>> {
        if table == Table::Chunks {
            let path = self.inner.chunk_path(key);
            return match tokio::fs::read(path).await {
                Ok(data) => Ok(Some(data.into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        let txn = self.inner.db.begin_read().map_err(Error::storage)?;
        let t = txn.open_table(definition(table)).map_err(Error::storage)?;
        let value = t.get(key).map_err(Error::storage)?;
        Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
    }

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        if table == Table::Chunks {
            return Ok(tokio::fs::try_exists(self.inner.chunk_path(key)).await?);
        }
        Ok(self.get(table, key).await?.is_some())
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()> {
        if table == Table::Chunks {
            let inner = self.inner.clone();
            return tokio::task::spawn_blocking(move || {
                records.iter().try_for_each(|(k, v)| inner.write_chunk(k, v))
            })
            .await
            .map_err(Error::storage)?
            .map_err(Error::from);
        }
        let (done, wait) = oneshot::channel();
        let tx = self.inner.writer.lock().expect("poisoned").as_ref().map(|(tx, _)| tx.clone());
        let tx = tx.ok_or_else(|| Error::Storage("store is closed".into()))?;
        let stopped = || Error::Storage("writer thread stopped".into());
        match tx.try_send(WriteOp { table, records, done }) {
            Ok(()) => {}
            // The queue is bounded: wait for room off the async workers.
            Err(mpsc::TrySendError::Full(op)) => tokio::task::spawn_blocking(move || tx.send(op))
                .await
                .map_err(Error::storage)?
                .map_err(|_| stopped())?,
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        wait.await.map_err(|_| stopped())?
    }
}
