//! [`EmbeddedStore`]: the on-disk default engine (`redb:/path/castore.redb`).
//!
//! Chunks are files (`<db>.chunks/ab/abcd…`), everything else lives in one
//! redb database. Chosen by measurement (docs/benchmarks.md): chunk files go
//! through the page cache at memory speed, while redb gives small records
//! atomic, crash-safe commits.
//!
//! Durability: a chunk file is written unnamed (`O_TMPFILE`, or under a
//! temporary name where that is unsupported) and only linked (renamed) into
//! place once complete, so it is whole or absent after a crash; writeback of
//! large chunks starts at once. A chunk file found shorter than its chunk
//! (possible only for one never synced, cut short by a power loss) is
//! rewritten rather than trusted. One writer thread commits redb records in
//! groups (many concurrent puts share one commit), and before each commit it
//! syncs the chunk filesystem if chunks were written since the last sync. So
//! a blob index or directory is never durable before the chunks it names: a
//! power loss can only drop records nothing durable refers to.
//!
//! Mutable records change only through [`KvStore::compare_and_swap`], which
//! the writer thread evaluates inside the group's write transaction (so it is
//! atomic with respect to every other write) and answers only once that
//! transaction is committed, under the same sync rule as a put.
use std::{
    collections::{HashMap, VecDeque},
    ffi::{CStr, CString},
    fs::File,
    io::Write,
    ops::Bound,
    os::fd::{AsRawFd, FromRawFd, RawFd},
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
use futures::{StreamExt, stream::BoxStream};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{KvStore, Table};
use crate::{Error, Result};

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    debug_assert!(table != Table::CHUNKS, "chunks are files");
    TableDefinition::new(table.name())
}

/// Records read per read transaction while scanning a table.
const SCAN_BATCH: usize = 1024;

/// Most write requests folded into one redb commit.
const MAX_GROUP: usize = 4096;

/// The outcome of a compare-and-swap: `Err` holds the record's actual value.
type Swapped = std::result::Result<(), Option<Bytes>>;

/// A request to the writer thread. Requests are applied in the order they
/// were queued, several to one transaction, and answered after its commit.
enum WriteOp {
    /// Records put first-writer-wins.
    Put { table: Table, records: Vec<(Bytes, Bytes)>, done: oneshot::Sender<Result<()>> },
    /// A compare-and-swap of one record, evaluated inside the transaction.
    Swap {
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
        done: oneshot::Sender<Result<Swapped>>,
    },
}

impl WriteOp {
    /// Answers the caller with its outcome, or with the group's error.
    fn answer(self, outcome: std::result::Result<Swapped, String>) {
        // A caller that went away no longer needs its answer.
        match self {
            WriteOp::Put { done, .. } => drop(done.send(outcome.map(|_| ()).map_err(Error::Storage))),
            WriteOp::Swap { done, .. } => drop(done.send(outcome.map_err(Error::Storage))),
        }
    }
}

/// The embedded engine; clones share one database and writer thread.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<redb::Database>,
    chunks: PathBuf,
    /// The chunk directory, for `*at` calls with short relative paths.
    chunks_dir: File,
    /// Set when chunk files were written since the last filesystem sync.
    dirty: Arc<AtomicBool>,
    tmp_counter: AtomicU64,
    /// Whether chunk files are written with `O_TMPFILE` (else via `tmp/`).
    tmpfile: AtomicBool,
    writer: Mutex<Option<(mpsc::SyncSender<WriteOp>, JoinHandle<()>)>>,
    /// Chunk writes waiting for a blocking thread, and how many threads are
    /// draining them.
    chunk_queue: Mutex<(VecDeque<ChunkWrite>, usize)>,
    /// Small chunk files written since the last early writeback.
    unsynced_small: AtomicU64,
    /// An early writeback is running.
    early_sync: Arc<AtomicBool>,
}

/// Chunk puts waiting to be written.
struct ChunkWrite {
    records: Vec<(Bytes, Bytes)>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Most blocking threads writing chunk files at once. Each drains the queue
/// until it is empty, so a stream of small puts does not wake a pool thread
/// per put (thread wake-ups and switches were about a sixth of small-file
/// ingest with one `spawn_blocking` per put, measured).
fn chunk_writers() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8) * 2)
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
        let file_name =
            path.file_name().ok_or_else(|| Error::InvalidRequest(format!("{} is not a file path", path.display())))?;
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
        for shard in 0..=255u8 {
            match std::fs::create_dir(chunks.join(format!("{shard:02x}"))) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e.into()),
                _ => {}
            }
        }

        let db = redb::Database::create(path).map_err(Error::storage)?;
        let txn = db.begin_write().map_err(Error::storage)?;
        for table in [Table::BLOBS, Table::DIRECTORIES] {
            txn.open_table(definition(table)).map_err(Error::storage)?;
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
            chunks_dir: File::open(&chunks)?,
            chunks,
            dirty,
            tmp_counter: AtomicU64::new(0),
            tmpfile: AtomicBool::new(true),
            chunk_queue: Mutex::new((VecDeque::new(), 0)),
            unsynced_small: AtomicU64::new(0),
            early_sync: Arc::new(AtomicBool::new(false)),
            writer: Mutex::new(Some((tx, handle))),
        })
    }

    /// Up to [`SCAN_BATCH`] records of a redb table, in key order, with keys
    /// from `from` on that start with `prefix`; fewer only when no more
    /// match. Each batch has its own read transaction, so a long scan does
    /// not hold one open (which would keep every page it sees from reuse).
    fn record_batch(&self, table: Table, from: Bound<&[u8]>, prefix: &[u8]) -> Result<Vec<(Bytes, Bytes)>> {
        let txn = self.db.begin_read().map_err(Error::storage)?;
        let t = match txn.open_table(definition(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(Error::storage(e)),
        };
        let mut batch = Vec::new();
        for r in t.range::<&[u8]>((from, Bound::Unbounded)).map_err(Error::storage)? {
            let (k, v) = r.map_err(Error::storage)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            batch.push((Bytes::copy_from_slice(k.value()), Bytes::copy_from_slice(v.value())));
            if batch.len() == SCAN_BATCH {
                break;
            }
        }
        Ok(batch)
    }

    /// Up to [`SCAN_BATCH`] chunk files with digests after `after`, in
    /// digest order (shards are hex prefixes, so walking them sorted is).
    fn chunk_batch(&self, after: Option<&[u8]>) -> Result<Vec<(Bytes, Bytes)>> {
        let after_hex = after.map(|a| data_encoding::HEXLOWER.encode(a));
        let first_shard = after_hex.as_ref().map_or(0, |h| u8::from_str_radix(&h[..2], 16).unwrap_or(0));
        let mut batch = Vec::new();
        for shard in first_shard..=255u8 {
            let mut names: Vec<String> = std::fs::read_dir(self.chunks.join(format!("{shard:02x}")))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| after_hex.as_ref().is_none_or(|a| n > a))
                .collect();
            names.sort_unstable();
            for name in names {
                let Ok(key) = data_encoding::HEXLOWER.decode(name.as_bytes()) else { continue };
                let data = std::fs::read(self.chunks.join(format!("{shard:02x}")).join(&name))?;
                batch.push((Bytes::from(key), Bytes::from(data)));
                if batch.len() == SCAN_BATCH {
                    return Ok(batch);
                }
            }
        }
        Ok(batch)
    }

    fn chunk_path(&self, key: &[u8]) -> PathBuf {
        self.chunks.join(chunk_relative(key))
    }

    /// Writes queued chunk puts until the queue is empty.
    fn write_queued_chunks(&self) {
        loop {
            let job = {
                let mut queue = self.chunk_queue.lock().expect("poisoned");
                match queue.0.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.1 -= 1;
                        return;
                    }
                }
            };
            let result = job.records.iter().try_for_each(|(k, v)| self.write_chunk(k, v));
            let _ = job.done.send(result);
            self.maybe_write_back_early();
        }
    }

    /// Small chunk files are not written back one by one (see
    /// [`WRITEBACK_NOW`]); after every [`EARLY_SYNC_FILES`] of them a
    /// background sync writes them out while ingest goes on, so the sync
    /// before the next commit finds little left. Only a head start: commits
    /// still sync for themselves.
    fn maybe_write_back_early(&self) {
        if self.unsynced_small.load(Ordering::Relaxed) < EARLY_SYNC_FILES
            || self.early_sync.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.unsynced_small.store(0, Ordering::Relaxed);
        let running = self.early_sync.clone();
        let Ok(dir) = self.chunks_dir.try_clone() else {
            running.store(false, Ordering::Release);
            return;
        };
        let spawned = std::thread::Builder::new().name("castore-writeback".into()).spawn(move || {
            // SAFETY: plain syscall on an fd we own; the result is not needed.
            unsafe { libc::syncfs(dir.as_raw_fd()) };
            running.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.early_sync.store(false, Ordering::Release);
        }
    }

    fn write_chunk(&self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let name = chunk_relative(key);
        let shard = &name[..2];
        let relative = CString::new(name.as_str()).map_err(std::io::Error::other)?;
        let dir = self.chunks_dir.as_raw_fd();
        let repair = match size_at(dir, &relative) {
            Ok(len) if len == value.len() as u64 => return Ok(()),
            // Cut short: written but never synced before a power loss (so
            // nothing durable names it). Replace it.
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if !repair && self.tmpfile.load(Ordering::Relaxed) {
            match write_linked(dir, shard, &relative, value) {
                Ok(()) => {
                    if value.len() < WRITEBACK_NOW {
                        self.unsynced_small.fetch_add(1, Ordering::Relaxed);
                    }
                    self.dirty.store(true, Ordering::Release);
                    return Ok(());
                }
                Err(e) if tmpfile_unsupported(&e) => self.tmpfile.store(false, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        let path = self.chunk_path(key);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.chunks.join("tmp").join(format!("{}.{n}", std::process::id()));
        let mut file = File::create_new(&tmp)?;
        file.write_all(value)?;
        start_writeback(&file, value.len());
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

/// What a chunk read that must not wait for the disk found.
enum Cached {
    Hit(Bytes),
    Absent,
    /// Not (wholly) in the page cache: read it in the blocking pool.
    Miss,
}

/// A chunk's file below the chunk directory: `ab/abcd…` (hex of its key,
/// in a shard named by the first byte).
fn chunk_relative(key: &[u8]) -> String {
    let hex = data_encoding::HEXLOWER.encode(key);
    format!("{}/{hex}", &hex[..2])
}

/// Reads a chunk file on the calling (runtime) thread when the page cache
/// holds all of it (`preadv2` with `RWF_NOWAIT` never waits for the disk):
/// serving a hot chunk then costs no trip to the blocking pool, which under
/// load was a third of the time spent rendering NARs from the embedded store.
/// The file is opened relative to the chunk directory (`relative` is
/// `ab/abcd…`): a walk of two names instead of the whole path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_cached_chunk(dir: RawFd, relative: &CStr) -> std::io::Result<Cached> {
    // SAFETY: a directory descriptor we hold and a NUL-terminated path; the
    // returned descriptor is owned by the File.
    let fd = unsafe { libc::openat(dir, relative.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::NotFound { Ok(Cached::Absent) } else { Err(e) };
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let len = file.metadata()?.len() as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let spare = buf.spare_capacity_mut();
        let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
        // SAFETY: `iov` describes the vector's spare capacity, which we own;
        // the kernel writes at most that much.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, buf.len() as libc::off_t, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) => return Ok(Cached::Miss),
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Ok(Cached::Miss); // shorter than it was: let the blocking read decide
        }
        // SAFETY: the kernel initialized `n` more bytes.
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
    Ok(Cached::Hit(buf.into()))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_cached_chunk(_: RawFd, _: &CStr) -> std::io::Result<Cached> {
    Ok(Cached::Miss)
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// Size of the file at `relative` below `dir`, not following symlinks.
fn size_at(dir: RawFd, relative: &CStr) -> std::io::Result<u64> {
    // SAFETY: zeroed `stat` is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, relative.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st.st_size as u64)
}

/// Small chunk files written between two early background writebacks.
const EARLY_SYNC_FILES: u64 = 2048;

/// Chunks at least this large start writeback as soon as they are written,
/// so the sync before the next commit has little left to do; smaller ones
/// are left to that sync, which writes them out together (one call per small
/// file cost more than it saved, measured).
const WRITEBACK_NOW: usize = 64 << 10;

fn start_writeback(file: &File, len: usize) {
    if len >= WRITEBACK_NOW {
        // SAFETY: plain syscall on an fd we own; only a hint.
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

/// Writes a chunk as an unnamed file in its shard directory (`O_TMPFILE`)
/// and links it into place once complete: whole or absent, like a rename,
/// without a shared temporary directory (whose lock every writer contends
/// for) or a cross-directory rename. An existing file of that name is the
/// same chunk, written whole the same way.
fn write_linked(dir: RawFd, shard: &str, relative: &CStr, value: &[u8]) -> std::io::Result<()> {
    let shard = CString::new(shard).map_err(std::io::Error::other)?;
    // SAFETY: plain syscall; the returned fd is owned by the File.
    let fd =
        cvt(unsafe { libc::openat(dir, shard.as_ptr(), libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC, 0o666) })?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(value)?;
    start_writeback(&file, value.len());
    let fd_path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    // SAFETY: both paths are valid NUL-terminated strings.
    match cvt(unsafe {
        libc::linkat(libc::AT_FDCWD, fd_path.as_ptr(), dir, relative.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    }) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Errors meaning `O_TMPFILE` + `linkat` cannot work here (old kernel,
/// filesystem without support, no `/proc`): use temporary names instead.
fn tmpfile_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT))
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
        match commit_group(db, sync_dir, dirty, &group) {
            Ok(outcomes) => group.into_iter().zip(outcomes).for_each(|(op, outcome)| op.answer(Ok(outcome))),
            Err(e) => group.into_iter().for_each(|op| op.answer(Err(e.clone()))),
        }
    }
}

/// Applies a group of requests in one transaction, in order (a swap sees the
/// writes of the requests before it), and returns each one's outcome (`Ok`
/// for a put). Outcomes hold only once this returns `Ok`: the transaction is
/// then committed, or had nothing to write (every value it read was already
/// committed, hence durable, so nothing waits for another commit).
fn commit_group(
    db: &redb::Database,
    sync_dir: &File,
    dirty: &AtomicBool,
    group: &[WriteOp],
) -> Result<Vec<Swapped>, String> {
    if dirty.swap(false, Ordering::AcqRel) {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::syncfs(sync_dir.as_raw_fd()) } != 0 {
            dirty.store(true, Ordering::Release);
            return Err(format!("syncing chunk files: {}", std::io::Error::last_os_error()));
        }
    }
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let mut changed = false;
    let mut outcomes = Vec::with_capacity(group.len());
    for op in group {
        match op {
            WriteOp::Put { table, records, .. } => {
                let mut table = txn.open_table(definition(*table)).map_err(|e| e.to_string())?;
                for (k, v) in records {
                    if table.get(k.as_ref()).map_err(|e| e.to_string())?.is_none() {
                        table.insert(k.as_ref(), v.as_ref()).map_err(|e| e.to_string())?;
                        changed = true;
                    }
                }
                outcomes.push(Ok(()));
            }
            WriteOp::Swap { table, key, current, new, .. } => {
                let mut table = txn.open_table(definition(*table)).map_err(|e| e.to_string())?;
                let actual =
                    table.get(key.as_ref()).map_err(|e| e.to_string())?.map(|v| Bytes::copy_from_slice(v.value()));
                if actual != *current {
                    outcomes.push(Err(actual));
                    continue;
                }
                match new {
                    Some(v) if Some(v) != actual.as_ref() => {
                        table.insert(key.as_ref(), v.as_ref()).map_err(|e| e.to_string())?;
                        changed = true;
                    }
                    None if actual.is_some() => {
                        table.remove(key.as_ref()).map_err(|e| e.to_string())?;
                        changed = true;
                    }
                    _ => {}
                }
                outcomes.push(Ok(()));
            }
        }
    }
    if changed {
        txn.commit().map_err(|e| e.to_string())?;
    } else {
        txn.abort().map_err(|e| e.to_string())?;
    }
    Ok(outcomes)
}

#[async_trait]
impl KvStore for EmbeddedStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>> {
        if table == Table::CHUNKS {
            let name = chunk_relative(key);
            let relative = CString::new(name.as_str()).map_err(Error::storage)?;
            match read_cached_chunk(self.inner.chunks_dir.as_raw_fd(), &relative) {
                Ok(Cached::Hit(data)) => return Ok(Some(data)),
                Ok(Cached::Absent) => return Ok(None),
                Ok(Cached::Miss) | Err(_) => {} // from the disk, in the blocking pool
            }
            return match tokio::fs::read(self.inner.chunks.join(name)).await {
                Ok(data) => Ok(Some(data.into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        let txn = self.inner.db.begin_read().map_err(Error::storage)?;
        let t = match txn.open_table(definition(table)) {
            Ok(t) => t,
            // A table of a higher layer is created by its first write.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(Error::storage(e)),
        };
        let value = t.get(key).map_err(Error::storage)?;
        Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
    }

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        if table == Table::CHUNKS {
            return Ok(tokio::fs::try_exists(self.inner.chunk_path(key)).await?);
        }
        Ok(self.get(table, key).await?.is_some())
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()> {
        if table == Table::CHUNKS {
            let (done, wait) = oneshot::channel();
            let start = {
                let mut queue = self.inner.chunk_queue.lock().expect("poisoned");
                queue.0.push_back(ChunkWrite { records, done });
                let start = queue.1 < chunk_writers();
                queue.1 += start as usize;
                start
            };
            if start {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.write_queued_chunks());
            }
            return wait.await.map_err(|_| Error::Storage("chunk writer stopped".into()))?.map_err(Error::from);
        }
        let (done, wait) = oneshot::channel();
        self.submit(WriteOp::Put { table, records, done }).await?;
        wait.await.map_err(|_| writer_stopped())?
    }

    fn scan(&self, table: Table) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        self.scan_batches(table, Bytes::new())
    }

    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        if let Err(refused) = super::not_chunks(table, "prefix scan") {
            return futures::stream::once(async move { Err(refused) }).boxed();
        }
        self.scan_batches(table, prefix)
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<Swapped> {
        super::not_chunks(table, "compare-and-swap")?;
        let (done, wait) = oneshot::channel();
        self.submit(WriteOp::Swap { table, key, current, new, done }).await?;
        wait.await.map_err(|_| writer_stopped())?
    }
}

fn writer_stopped() -> Error {
    Error::Storage("writer thread stopped".into())
}

impl EmbeddedStore {
    /// Queues a request for the writer thread.
    async fn submit(&self, op: WriteOp) -> Result<()> {
        let tx = self.inner.writer.lock().expect("poisoned").as_ref().map(|(tx, _)| tx.clone());
        let tx = tx.ok_or_else(|| Error::Storage("store is closed".into()))?;
        match tx.try_send(op) {
            Ok(()) => Ok(()),
            // The queue is bounded: wait for room off the async workers.
            Err(mpsc::TrySendError::Full(op)) => tokio::task::spawn_blocking(move || tx.send(op))
                .await
                .map_err(Error::storage)?
                .map_err(|_| writer_stopped()),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(writer_stopped()),
        }
    }

    /// The records of `table` whose keys start with `prefix` (all of them
    /// for an empty one), read in batches of [`SCAN_BATCH`], each in its own
    /// read transaction off the async workers; in key order, except chunks
    /// (digest order). A batch starts after the last key of the one before,
    /// so no record appears twice.
    fn scan_batches(&self, table: Table, prefix: Bytes) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        let inner = self.inner.clone();
        crate::dirsvc::async_stream(move |tx| async move {
            let mut after: Option<Bytes> = None;
            loop {
                let (inner2, from, prefix) = (inner.clone(), after.clone(), prefix.clone());
                let batch = if table == Table::CHUNKS {
                    tokio::task::spawn_blocking(move || inner2.chunk_batch(from.as_deref())).await
                } else {
                    tokio::task::spawn_blocking(move || {
                        let from = match &from {
                            Some(after) => Bound::Excluded(after.as_ref()),
                            None => Bound::Included(prefix.as_ref()),
                        };
                        inner2.record_batch(table, from, &prefix)
                    })
                    .await
                }
                .map_err(Error::storage)??;
                let complete = batch.len() < SCAN_BATCH;
                let Some((last, _)) = batch.last() else { return Ok(()) };
                after = Some(last.clone());
                for record in batch {
                    if tx.send(Ok(record)).await.is_err() {
                        return Ok(());
                    }
                }
                if complete {
                    return Ok(());
                }
            }
        })
        .boxed()
    }
}
