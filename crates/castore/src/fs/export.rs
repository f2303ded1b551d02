//! Export: a node written back to disk as a new path, atomically.
//!
//! [`stage`] builds the tree in a temporary sibling of the target: only new
//! entries, created by validated names inside directories it just made, so
//! nothing is written through a symlink or outside the tree. Every file's
//! contents are checked against their digest and size, whether fetched from
//! the [`BlobService`] or copied from identical files already on disk
//! ([`LocalFiles`]: opened without following symlinks and hashed while
//! copied). The caller may inspect the staged tree (the fetcher hashes it as
//! a NAR) before [`Staged::commit`] renames it into place without replacing
//! anything. A stage that fails or is cancelled (its future dropped), and a
//! staged tree that is dropped, remove the temporary tree: the target
//! appears whole or not at all.
//!
//! [`export`] is stage-and-commit with owner-writable modes.
use std::{
    collections::HashMap,
    ffi::{CString, OsStr},
    fs::File,
    io::Write,
    os::unix::{
        ffi::OsStrExt,
        fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{
    Batcher, SMALL_FILE,
    local::{LocalFile, LocalFiles, copy_local, link_local, read_local, remember},
};
use crate::{B3Digest, BlobService, Directory, DirectoryService, Error, Node, Result};

/// Jobs (a large file, or a batch of small ones) run at the same time.
const PARALLEL_JOBS: usize = 4;
/// Bytes of small files read from disk to be copied that one tree holds in
/// memory at once.
const LOCAL_HELD: u64 = 64 << 20;
/// Pieces of a fetched file queued for its writer thread.
const WRITE_QUEUE: usize = 8;
/// Longest part of the target's name kept in its temporary sibling's name,
/// so that the latter stays under the 255-byte limit of a file name.
const TEMP_NAME_KEEP: usize = 200;

/// How a tree is laid out on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Owner-writable: files 0644 (0755 when executable), directories as
    /// created (0755 under the usual umask), times of writing.
    #[default]
    Writable,
    /// Nix's store conventions, what Nix's canonicalisation leaves: files
    /// 0444 (0555 when executable), directories 0555 once filled, and the
    /// modification time 1 (one second after the epoch) on every entry,
    /// symlinks included.
    NixStore,
}

impl Layout {
    fn file_mode(self, executable: bool) -> u32 {
        match (self, executable) {
            (Layout::Writable, false) => 0o644,
            (Layout::Writable, true) => 0o755,
            (Layout::NixStore, false) => 0o444,
            (Layout::NixStore, true) => 0o555,
        }
    }
}

/// Where bytes written by a stage came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Read from the blob service.
    Fetched,
    /// Copied from a [`LocalFile`].
    Copied,
}

/// Told about bytes as they are written (for progress displays).
pub type OnBytes = Arc<dyn Fn(Source, u64) + Send + Sync>;

/// How [`stage`] writes a tree.
#[derive(Clone, Default)]
pub struct ExportOptions {
    pub layout: Layout,
    pub local: Option<Arc<dyn LocalFiles>>,
    pub on_bytes: Option<OnBytes>,
    /// Keep the contents of small files written, up to this many bytes in
    /// all ([`Staged::retained`]), for a caller that reads the tree right
    /// after (the fetcher's NAR hash) and would otherwise open every file
    /// again. 0 keeps nothing.
    pub retain_bytes: u64,
}

/// A regular file of a staged tree: where it is below the tree's root (empty
/// when the root is the file), and its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedFile {
    pub rel: PathBuf,
    pub digest: B3Digest,
    pub size: u64,
}

/// Bytes of file contents a stage wrote, by where they came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub fetched: u64,
    pub copied: u64,
}

/// What [`Staged::commit`] found at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// The staged tree is now the target.
    Created,
    /// Something appeared at the target meanwhile (another writer of the same
    /// path won); it was left alone and the staged tree removed.
    Exists,
}

/// A tree written completely to a temporary sibling of its target.
pub struct Staged {
    tree: TempTree,
    target: PathBuf,
    files: Vec<StagedFile>,
    stats: ExportStats,
    directories: Arc<HashMap<B3Digest, Directory>>,
    retained: HashMap<B3Digest, Bytes>,
}

impl Staged {
    /// The staged tree, to be inspected before it is committed.
    pub fn path(&self) -> &Path {
        &self.tree.path
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The regular files written, in no particular order.
    pub fn files(&self) -> &[StagedFile] {
        &self.files
    }

    pub fn stats(&self) -> ExportStats {
        self.stats
    }

    /// The directory closure the tree was written from (checked against
    /// its digests; given to [`stage_closure`], it may hold more), empty
    /// when the root is a file or symlink and none was given.
    pub fn directories(&self) -> &HashMap<B3Digest, Directory> {
        &self.directories
    }

    /// Contents of small files kept while writing
    /// ([`ExportOptions::retain_bytes`]), by digest.
    pub fn retained(&self, digest: &B3Digest) -> Option<&Bytes> {
        self.retained.get(digest)
    }

    /// Renames the tree to its target, never replacing anything there.
    pub fn commit(mut self) -> Result<Commit> {
        match rename_noreplace(&self.tree.path, &self.target) {
            Ok(()) => {
                self.tree.armed = false;
                Ok(Commit::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Commit::Exists),
            Err(e) => Err(Error::Io(std::io::Error::new(
                e.kind(),
                format!("renaming {} to {}: {e}", self.tree.path.display(), self.target.display()),
            ))),
        }
    }

    /// Removes the staged tree off the async workers (dropping it removes
    /// it too, on the current thread).
    pub async fn discard(mut self) {
        let path = self.tree.path.clone();
        self.tree.armed = false;
        self.tree.gate.close();
        let _ = tokio::task::spawn_blocking(move || remove_tree(&path)).await;
    }
}

/// The temporary tree of a stage, removed on drop unless committed.
///
/// Blocking writers may still be running when a stage is dropped (a
/// cancelled fetch): they create every entry through the tree's [`Gate`],
/// which the removal closes first, so no entry (not even the tree's root)
/// appears after the removal has begun.
struct TempTree {
    path: PathBuf,
    gate: Arc<Gate>,
    armed: bool,
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if self.armed {
            self.gate.close();
            remove_tree(&self.path);
        }
    }
}

/// Guards the creation of entries in a temporary tree against its removal.
#[derive(Default)]
pub(super) struct Gate(std::sync::Mutex<bool>);

impl Gate {
    /// Runs `create` (which makes one entry) unless the tree is being
    /// removed; holding the lock while it runs, so a removal waits for it.
    pub(super) fn create<T>(&self, create: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        let closed = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(cancelled_error());
        }
        create()
    }

    fn close(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// A process-wide counter: two stages of one target (two tasks) never share
/// a temporary name, and the pid keeps processes apart.
static STAGES: AtomicU64 = AtomicU64::new(0);

/// `.<name>.tmp-<pid>-<n>`: hidden, and never a valid store path name (those
/// cannot start with a dot), so Nix and the fetcher never take it for one.
fn temp_name(name: &OsStr) -> std::ffi::OsString {
    let bytes = name.as_bytes();
    let kept = OsStr::from_bytes(&bytes[..bytes.len().min(TEMP_NAME_KEEP)]);
    let mut out = std::ffi::OsString::from(".");
    out.push(kept);
    out.push(format!(".tmp-{}-{}", std::process::id(), STAGES.fetch_add(1, Ordering::Relaxed)));
    out
}

/// Removes a file, symlink or tree, making directories writable first (a
/// tree laid out read-only cannot be emptied otherwise). Best effort: a
/// writer still finishing its last entry may need a second pass.
fn remove_tree(path: &Path) {
    for _ in 0..3 {
        let removed = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => false,
            Ok(m) if m.is_dir() => {
                make_writable(path);
                std::fs::remove_dir_all(path).is_ok()
            }
            Ok(_) => std::fs::remove_file(path).is_ok(),
        };
        if removed {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(path = %path.display(), "could not remove a temporary tree");
}

fn make_writable(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

fn cancelled_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Interrupted, "export cancelled")
}

/// Writes `node` as the new path `target` (which must not exist), with
/// [`Layout::Writable`] modes: see [`stage`].
pub async fn export(
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
    node: &Node,
    target: &Path,
) -> Result<()> {
    if tokio::fs::symlink_metadata(target).await.is_ok() {
        return Err(Error::InvalidRequest(format!("{} already exists", target.display())));
    }
    match stage(blobs, directories, node, target, &ExportOptions::default()).await?.commit()? {
        Commit::Created => Ok(()),
        Commit::Exists => Err(Error::InvalidRequest(format!("{} already exists", target.display()))),
    }
}

/// Writes `node` completely as a temporary sibling of `target`, for
/// [`Staged::commit`] to rename into place (see the module documentation).
///
/// A directory root's recorded size must fit the directory closure (it
/// bounds how many entries the tree expands to, shared subdirectories
/// counted each time).
pub async fn stage(
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
    node: &Node,
    target: &Path,
    options: &ExportOptions,
) -> Result<Staged> {
    let closure = match node {
        Node::Directory { digest, .. } => {
            directories.get_recursive(digest).map_ok(|d| (d.digest(), d)).try_collect().await?
        }
        _ => HashMap::new(),
    };
    stage_closure(blobs, Arc::new(closure), node, target, options).await
}

/// [`stage`] with the directory closure at hand, checked already (by the
/// directory service that sent it): nothing is asked of a directory
/// service. `closure` may hold more than the root's closure, for instance
/// the closures of many paths had in one
/// [`DirectoryService::get_closures`].
pub async fn stage_closure(
    blobs: &dyn BlobService,
    closure: Arc<HashMap<B3Digest, Directory>>,
    node: &Node,
    target: &Path,
    options: &ExportOptions,
) -> Result<Staged> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::InvalidRequest(format!("{}: not a path to create", target.display())))?;
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tree = TempTree { path: parent.join(temp_name(name)), gate: Arc::default(), armed: true };
    let writer = Writer {
        blobs,
        options,
        root: tree.path.clone(),
        gate: tree.gate.clone(),
        fetched: AtomicU64::new(0),
        copied: AtomicU64::new(0),
        files: Mutex::new(Vec::new()),
        retained: Mutex::default(),
    };
    writer.write_root(&closure, node).await?;
    let stats =
        ExportStats { fetched: writer.fetched.load(Ordering::Relaxed), copied: writer.copied.load(Ordering::Relaxed) };
    let files = writer.files.into_inner().unwrap_or_else(|e| e.into_inner());
    let retained = writer.retained.into_inner().unwrap_or_else(|e| e.into_inner()).kept;
    Ok(Staged { tree, target: target.to_owned(), files, stats, directories: closure, retained })
}

/// A file to write: digest, size, executable, path below the root.
type PlannedFile = (B3Digest, u64, bool, PathBuf);
/// A tree's directories and symlinks, for [`finish_dirs`].
type TreeDirs = (Vec<PathBuf>, Vec<(PathBuf, Bytes)>);
/// A small file to write, with its contents when they were read from disk.
type SmallFile = (PlannedFile, Option<Vec<u8>>);

/// Everything below a directory root, in the order it is created.
#[derive(Default)]
struct Plan {
    /// Parents before children, the root (empty path) first.
    dirs: Vec<PathBuf>,
    symlinks: Vec<(PathBuf, Bytes)>,
    files: Vec<PlannedFile>,
}

impl Plan {
    /// Expands the closure from `root`: every entry by its path, shared
    /// subdirectories once per place they appear.
    fn expand(all: &HashMap<B3Digest, Directory>, root: &B3Digest) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut stack = vec![(*root, PathBuf::new())];
        while let Some((digest, rel)) = stack.pop() {
            let dir = all
                .get(&digest)
                .ok_or_else(|| Error::Storage(format!("directory {digest} missing from the closure")))?;
            for (name, child) in dir.entries() {
                let child_rel = rel.join(OsStr::from_bytes(name.as_bytes()));
                match child {
                    Node::Directory { digest, .. } => stack.push((*digest, child_rel)),
                    Node::Symlink { target } => plan.symlinks.push((child_rel, target.clone())),
                    Node::File { digest, size, executable } => {
                        plan.files.push((*digest, *size, *executable, child_rel))
                    }
                }
            }
            plan.dirs.push(rel);
        }
        Ok(plan)
    }
}

struct Writer<'a> {
    blobs: &'a dyn BlobService,
    options: &'a ExportOptions,
    root: PathBuf,
    gate: Arc<Gate>,
    fetched: AtomicU64,
    copied: AtomicU64,
    files: Mutex<Vec<StagedFile>>,
    retained: Mutex<Retained>,
}

/// Small files' contents kept for [`Staged::retained`].
#[derive(Default)]
struct Retained {
    kept: HashMap<B3Digest, Bytes>,
    bytes: u64,
}

impl Writer<'_> {
    fn layout(&self) -> Layout {
        self.options.layout
    }

    fn count(&self, source: Source, n: u64) {
        match source {
            Source::Fetched => self.fetched.fetch_add(n, Ordering::Relaxed),
            Source::Copied => self.copied.fetch_add(n, Ordering::Relaxed),
        };
        if let Some(f) = &self.options.on_bytes {
            f(source, n);
        }
    }

    fn candidates(&self, digest: &B3Digest, rel: &Path) -> Vec<LocalFile> {
        self.options.local.as_ref().map(|l| l.find(digest, rel)).unwrap_or_default()
    }

    fn written(&self, rel: PathBuf, digest: B3Digest, size: u64) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).push(StagedFile { rel, digest, size });
    }

    /// Keeps `data` if the budget allows.
    fn retain(&self, digest: B3Digest, data: &Bytes) {
        let mut r = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        if r.bytes + data.len() as u64 <= self.options.retain_bytes && !r.kept.contains_key(&digest) {
            r.bytes += data.len() as u64;
            r.kept.insert(digest, data.clone());
        }
    }

    /// Writes the tree, its directories taken from `all`.
    async fn write_root(&self, all: &HashMap<B3Digest, Directory>, node: &Node) -> Result<()> {
        match node {
            Node::File { digest, size, executable } => {
                self.write_large(*digest, *size, *executable, PathBuf::new()).await
            }
            Node::Symlink { target } => {
                let (root, target, layout, gate) =
                    (self.root.clone(), target.clone(), self.layout(), self.gate.clone());
                blocking(move || {
                    gate.create(|| std::os::unix::fs::symlink(OsStr::from_bytes(&target), &root))?;
                    if layout == Layout::NixStore {
                        set_mtime_nofollow(&root)?;
                    }
                    Ok(())
                })
                .await
            }
            Node::Directory { digest, size } => {
                match all.get(digest) {
                    Some(d) if d.size_matches(*size) => {}
                    Some(d) => {
                        return Err(Error::Storage(format!(
                            "directory {digest} does not fit its recorded size {size} (it has {})",
                            d.size()
                        )));
                    }
                    None => return Err(Error::Storage(format!("directory {digest} missing from its closure"))),
                }
                let plan = Plan::expand(all, digest)?;
                self.write_tree(plan).await
            }
        }
    }

    async fn write_tree(&self, plan: Plan) -> Result<()> {
        let Plan { dirs, symlinks, files } = plan;
        let (small, large): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| f.1 <= SMALL_FILE);
        // One trip to the blocking pool makes the directories and symlinks
        // and takes what it can of the small files from disk: linked, or
        // read to be copied. A tree made only of linked files is finished
        // (directories read-only) in the same trip.
        let layout = self.layout();
        let candidates: Vec<Vec<LocalFile>> = small.iter().map(|f| self.candidates(&f.0, &f.3)).collect();
        let (root, gate) = (self.root.clone(), self.gate.clone());
        let no_large = large.is_empty();
        let (dirs, symlinks, linked, rest, finished) = blocking(move || {
            for d in &dirs {
                gate.create(|| std::fs::create_dir(below(&root, d)))?;
            }
            for (s, target) in &symlinks {
                gate.create(|| std::os::unix::fs::symlink(OsStr::from_bytes(target), below(&root, s)))?;
            }
            let (mut linked, mut rest, mut held) = (Vec::new(), Vec::new(), 0u64);
            for (f, mut c) in small.into_iter().zip(candidates) {
                if c.is_empty() {
                    rest.push((f, None));
                    continue;
                }
                let mode = layout.file_mode(f.2);
                if layout == Layout::NixStore && link_local(&mut c, &f.0, f.1, mode, (&root, &f.3), &gate)? {
                    linked.push(f);
                } else {
                    // Copies wait in memory for their write: up to a bound,
                    // past which the blob service is asked instead.
                    let local = (held + f.1 <= LOCAL_HELD).then(|| read_local(&c, &f.0, f.1)).flatten();
                    held += local.as_ref().map_or(0, |d| d.len() as u64);
                    rest.push((f, local));
                }
            }
            let finished = rest.is_empty() && no_large && layout == Layout::NixStore;
            if finished {
                finish_dirs(&root, &dirs, &symlinks)?;
            }
            Ok((dirs, symlinks, linked, rest, finished))
        })
        .await?;
        for (digest, size, _, rel) in linked {
            self.count(Source::Copied, size);
            self.written(rel, digest, size);
        }
        if finished {
            return Ok(());
        }

        let mut batcher = Batcher::new();
        let mut batches: Vec<Vec<SmallFile>> = rest
            .into_iter()
            .filter_map(|f| {
                let size = f.0.1;
                batcher.push(f, size)
            })
            .collect();
        batches.extend(batcher.finish());
        let layout_dirs = (layout == Layout::NixStore).then_some((dirs, symlinks));
        // One batch and nothing else: its trip finishes the directories too.
        let (mut finish, finish_after) = match (batches.len(), no_large) {
            (1, true) => (layout_dirs, None),
            _ => (None, layout_dirs),
        };
        enum Job {
            Small(Vec<SmallFile>),
            Large(PlannedFile),
        }
        let jobs = batches.into_iter().map(Job::Small).chain(large.into_iter().map(Job::Large));
        futures::stream::iter(jobs)
            .map(|job| {
                let finish = finish.take();
                async move {
                    match job {
                        Job::Small(batch) => self.write_small(batch, finish).await,
                        Job::Large((digest, size, exec, rel)) => self.write_large(digest, size, exec, rel).await,
                    }
                }
            })
            .buffer_unordered(PARALLEL_JOBS)
            .try_collect::<()>()
            .await?;

        if let Some((dirs, symlinks)) = finish_after {
            let root = self.root.clone();
            blocking(move || finish_dirs(&root, &dirs, &symlinks)).await?;
        }
        Ok(())
    }

    /// Small files (with their contents, when read from disk already): the
    /// rest read in one [`BlobService::read_many`] (checked there), then all
    /// written in one trip to the blocking pool, which also finishes the
    /// tree's directories when given them (`finish`).
    async fn write_small(&self, batch: Vec<SmallFile>, finish: Option<TreeDirs>) -> Result<()> {
        let (batch, local): (Vec<PlannedFile>, Vec<Option<Vec<u8>>>) = batch.into_iter().unzip();
        let wanted: Vec<(B3Digest, u64)> =
            batch.iter().zip(&local).filter(|(_, l)| l.is_none()).map(|(f, _)| (f.0, f.1)).collect();
        let mut fetched = self.blobs.read_many(wanted);
        let mut contents: Vec<(Bytes, Source, PlannedFile)> = Vec::with_capacity(batch.len());
        for (f, l) in batch.into_iter().zip(local) {
            let (data, source) = match l {
                Some(data) => (Bytes::from(data), Source::Copied),
                None => {
                    let path = below(&self.root, &f.3);
                    let data = fetched.next().await.ok_or_else(|| {
                        Error::Storage(format!("the blob service sent no contents for {}", path.display()))
                    })?;
                    (data.map_err(|e| for_path(e, &path))?, Source::Fetched)
                }
            };
            contents.push((data, source, f));
        }
        // Its end, where a service that sent more than was asked says so.
        if let Some(extra) = fetched.next().await {
            extra?;
            return Err(Error::Storage("the blob service sent more blobs than were asked for".into()));
        }
        drop(fetched);
        let (root, layout, gate) = (self.root.clone(), self.layout(), self.gate.clone());
        let contents = blocking(move || {
            for (data, _, (digest, size, exec, rel)) in &contents {
                let mode = layout.file_mode(*exec);
                let mut file = gate.create(|| {
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(below(&root, rel))
                })?;
                file.write_all(data)?;
                finish_file(&file, mode, layout, digest, *size)?;
            }
            if let Some((dirs, symlinks)) = &finish {
                finish_dirs(&root, dirs, symlinks)?;
            }
            Ok(contents)
        })
        .await?;
        for (data, source, (digest, size, _, rel)) in contents {
            self.count(source, data.len() as u64);
            self.retain(digest, &data);
            self.written(rel, digest, size);
        }
        Ok(())
    }

    /// A large file (or the root file): linked to or copied from an
    /// identical local file if there is one, else streamed from the blob
    /// service ([`BlobService::read_checked`]).
    async fn write_large(&self, digest: B3Digest, size: u64, executable: bool, rel: PathBuf) -> Result<()> {
        let path = below(&self.root, &rel);
        let layout = self.layout();
        let mode = layout.file_mode(executable);
        let mut candidates = self.candidates(&digest, &rel);
        let (created, gate, root, rel_for_link) = (path.clone(), self.gate.clone(), self.root.clone(), rel.clone());
        let (file, copied) = blocking(move || {
            if layout == Layout::NixStore
                && link_local(&mut candidates, &digest, size, mode, (&root, &rel_for_link), &gate)?
            {
                return Ok((None, true));
            }
            let file = gate.create(|| {
                std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(&created)
            })?;
            let copied = copy_local(&candidates, &digest, size, &file);
            Ok((Some(file), copied))
        })
        .await?;
        let Some(file) = file else {
            // Linked: the inode already has Nix's mode and mtime.
            self.count(Source::Copied, size);
            self.written(rel, digest, size);
            return Ok(());
        };
        let file = if copied {
            self.count(Source::Copied, size);
            file
        } else {
            self.fetch_into(file, &digest, size, &path).await.map_err(|e| for_path(e, &path))?
        };
        blocking(move || finish_file(&file, mode, layout, &digest, size)).await?;
        self.written(rel, digest, size);
        Ok(())
    }

    /// Streams a blob into `file` from one thread of the blocking pool
    /// (pieces handed over, not copied); the stream checks digest and size,
    /// so an error here means the file must not be used.
    async fn fetch_into(&self, mut file: File, digest: &B3Digest, size: u64, path: &Path) -> Result<File> {
        let mut pieces = self
            .blobs
            .read_checked(digest, size)
            .await?
            .ok_or_else(|| Error::NotFound(format!("blob {digest} not found (for {})", path.display())))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            while let Some(piece) = rx.blocking_recv() {
                file.write_all(&piece)?;
            }
            Ok::<_, Error>(file)
        });
        let mut failed = None;
        while let Some(piece) = pieces.next().await {
            match piece {
                Ok(piece) => {
                    let n = piece.len() as u64;
                    if tx.send(piece).await.is_err() {
                        break; // the writer failed: its error is below
                    }
                    self.count(Source::Fetched, n);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let file = writer.await.map_err(Error::storage)??;
        match failed {
            Some(e) => Err(e),
            None => Ok(file),
        }
    }
}

/// `e`, saying which file it was for.
fn for_path(e: Error, path: &Path) -> Error {
    let at = |m: String| format!("{m} (for {})", path.display());
    match e {
        Error::NotFound(m) => Error::NotFound(at(m)),
        Error::Storage(m) => Error::Storage(at(m)),
        e => e,
    }
}

/// In Nix's layout, the last step of a tree: symlinks and directories get
/// mtime 1 and directories become read-only, deepest first (creating an
/// entry changes its directory's time, and a read-only directory takes no
/// entries).
fn finish_dirs(root: &Path, dirs: &[PathBuf], symlinks: &[(PathBuf, Bytes)]) -> Result<()> {
    for (s, _) in symlinks {
        set_mtime_nofollow(&below(root, s))?;
    }
    for d in dirs.iter().rev() {
        let path = below(root, d);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555))?;
        set_mtime_nofollow(&path)?;
    }
    Ok(())
}

/// `rel` below `root`; the root itself for an empty `rel` (where `join`
/// would add a trailing slash, which a file's path cannot have).
fn below(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() { root.to_owned() } else { root.join(rel) }
}

/// Runs blocking filesystem work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(Error::storage)?
}

/// Mode and, for the Nix layout, time of a written file.
/// In Nix's layout the contents, checked, are also remembered on the inode
/// ([`remember`]).
fn finish_file(file: &File, mode: u32, layout: Layout, digest: &B3Digest, size: u64) -> Result<()> {
    // The umask may have narrowed the mode the file was created with.
    if umask().is_none_or(|m| mode & m != 0) {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    if layout == Layout::NixStore {
        remember(file, digest, size);
        file.set_times(std::fs::FileTimes::new().set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1)))?;
    }
    Ok(())
}

/// The process's umask, from `/proc/self/status` (reading it with
/// `umask(2)` means setting it, which races with other threads creating
/// files); `None` where that is not available.
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Sets the modification time to 1 without following a symlink (the link
/// itself gets it); the access time is left alone.
fn set_mtime_nofollow(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, libc::timespec { tv_sec: 1, tv_nsec: 0 }];
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat wants.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Renames without replacing anything that appeared at `to` meanwhile
/// (`AlreadyExists` then). On a filesystem without `RENAME_NOREPLACE` it
/// checks first, which only a writer racing in between can defeat (and
/// a rename never replaces a non-empty directory).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let invalid = |e: std::ffi::NulError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let from_c = CString::new(from.as_os_str().as_bytes()).map_err(invalid)?;
    let to_c = CString::new(to.as_os_str().as_bytes()).map_err(invalid)?;
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(std::io::ErrorKind::AlreadyExists.into());
        }
        return std::fs::rename(from, to);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::{
        blob::ChunkedBlobService,
        dirsvc::KvDirectoryService,
        fs::local::{REMEMBERING, remembered},
        kv::MemoryStore,
    };

    fn services() -> (ChunkedBlobService, KvDirectoryService) {
        let kv: Arc<dyn crate::kv::KvStore> = Arc::new(MemoryStore::new());
        (ChunkedBlobService::new(kv.clone()), KvDirectoryService::new(kv))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// Bytes that are not all alike, so chunk boundaries fall inside them.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    /// A tree with a large executable file, a small file, an empty
    /// directory and a symlink; its root node.
    async fn sample(blobs: &ChunkedBlobService, dirs: &KvDirectoryService, big: &[u8]) -> Node {
        let big_digest = blobs.put_bytes(Bytes::copy_from_slice(big), None).await.unwrap();
        let small = blobs.put_bytes(Bytes::from_static(b"small\n"), None).await.unwrap();
        let empty = Directory::default();
        dirs.put(empty.clone()).await.unwrap();
        let mut sub = Directory::default();
        sub.add(Name::new("big").unwrap(), Node::File { digest: big_digest, size: big.len() as u64, executable: true })
            .unwrap();
        sub.add(Name::new("empty").unwrap(), Node::Directory { digest: empty.digest(), size: empty.size() }).unwrap();
        let mut root = Directory::default();
        root.add(Name::new("link").unwrap(), Node::Symlink { target: "sub/big".into() }).unwrap();
        root.add(Name::new("small").unwrap(), Node::File { digest: small, size: 6, executable: false }).unwrap();
        root.add(Name::new("sub").unwrap(), Node::Directory { digest: sub.digest(), size: sub.size() }).unwrap();
        let digest = dirs.put_closure(vec![sub.clone(), root.clone()]).await.unwrap();
        Node::Directory { digest, size: root.size() }
    }

    use crate::Name;

    /// Copied contents are counted as copied, wrong candidates are passed
    /// over (fetched instead), and the tree is laid out as Nix's store.
    struct Offer(Vec<LocalFile>);
    impl LocalFiles for Offer {
        fn find(&self, _: &B3Digest, _: &Path) -> Vec<LocalFile> {
            self.0.clone()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nix_layout_with_local_copies() {
        let (blobs, dirs) = services();
        let big = noise(3 << 20, 1);
        let node = sample(&blobs, &dirs, &big).await;
        let tmp = tempfile::tempdir().unwrap();
        // Candidates: a symlink to the right bytes (never followed), a file
        // of the right size with other bytes, then the right file.
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("big"), &big).unwrap();
        std::fs::write(outside.join("small"), b"small\n").unwrap();
        let local = tmp.path().join("local");
        std::fs::create_dir(&local).unwrap();
        std::os::unix::fs::symlink(&outside, local.join("via-link")).unwrap();
        std::fs::write(local.join("wrong"), noise(3 << 20, 2)).unwrap();
        std::fs::write(local.join("wrong-small"), b"SMALL\n").unwrap();
        std::fs::write(local.join("right"), &big).unwrap();
        let offer = |names: &[&str]| -> Arc<dyn LocalFiles> {
            Arc::new(Offer(names.iter().map(|n| LocalFile { dir: local.clone(), rel: n.into() }).collect()))
        };
        let seen = Arc::new(AtomicU64::new(0));
        let counted = seen.clone();
        let options = ExportOptions {
            layout: Layout::NixStore,
            local: Some(offer(&["via-link/big", "via-link/small", "wrong", "wrong-small", "right"])),
            on_bytes: Some(Arc::new(move |_, n| {
                counted.fetch_add(n, Ordering::Relaxed);
            })),
            retain_bytes: 1 << 20,
        };
        let target = tmp.path().join("store/out");
        std::fs::create_dir(tmp.path().join("store")).unwrap();
        let staged = stage(&blobs, &dirs, &node, &target, &options).await.unwrap();
        // The big file came from `right`; the small one from no candidate.
        assert_eq!(staged.stats(), ExportStats { fetched: 6, copied: big.len() as u64 });
        assert_eq!(seen.load(Ordering::Relaxed), 6 + big.len() as u64);
        assert_eq!(staged.files().len(), 2);
        // Small contents kept for the caller (within the budget), large not.
        assert_eq!(staged.retained(&B3Digest::of(b"small\n")).map(|b| &b[..]), Some(&b"small\n"[..]));
        assert!(staged.retained(&B3Digest::of(&big)).is_none());
        assert_eq!(staged.directories().len(), 3, "root, sub and the empty directory");
        assert_eq!(staged.commit().unwrap(), Commit::Created);
        assert_eq!(entries(&tmp.path().join("store")), vec!["out"]);

        assert_eq!(std::fs::read(target.join("sub/big")).unwrap(), big);
        let meta = |p: &str| std::fs::symlink_metadata(target.join(p)).unwrap();
        for (p, mode) in [("", 0o555), ("sub", 0o555), ("sub/empty", 0o555), ("sub/big", 0o555), ("small", 0o444)] {
            assert_eq!(meta(p).mode() & 0o7777, mode, "mode of {p:?}");
        }
        for p in ["", "sub", "sub/empty", "sub/big", "small", "link"] {
            assert_eq!(meta(p).mtime(), 1, "mtime of {p:?}");
        }
        assert_eq!(std::fs::read_link(target.join("link")).unwrap(), Path::new("sub/big"));
    }

    /// Files written in Nix's layout remember their digest on the inode; a
    /// later stage links them (same inode), but not a file rewritten since
    /// (its mtime is no longer 1), which is fetched instead.
    #[tokio::test(flavor = "multi_thread")]
    async fn remembered_files_are_linked_rewritten_ones_are_not() {
        let (blobs, dirs) = services();
        let big = noise(3 << 20, 5);
        let node = sample(&blobs, &dirs, &big).await;
        let tmp = tempfile::tempdir().unwrap();
        let nix = ExportOptions { layout: Layout::NixStore, ..ExportOptions::default() };
        let first = tmp.path().join("first");
        assert_eq!(stage(&blobs, &dirs, &node, &first, &nix).await.unwrap().commit().unwrap(), Commit::Created);
        let open = |p: &str| File::open(first.join(p)).unwrap();
        if REMEMBERING.load(Ordering::Relaxed) {
            assert_eq!(remembered(&open("sub/big"), big.len() as u64), Some(B3Digest::of(&big)));
            assert_eq!(remembered(&open("small"), 6), Some(B3Digest::of(b"small\n")));
            assert_eq!(remembered(&open("small"), 7), None, "the size is part of it");
        }
        let offer: Arc<dyn LocalFiles> = Arc::new(Offer(
            ["sub/big", "small"].iter().map(|r| LocalFile { dir: first.clone(), rel: r.into() }).collect(),
        ));
        let linking = ExportOptions { local: Some(offer), ..nix.clone() };
        let ino = |root: &Path, p: &str| std::fs::metadata(root.join(p)).unwrap().ino();

        let second = tmp.path().join("second");
        let staged = stage(&blobs, &dirs, &node, &second, &linking).await.unwrap();
        assert_eq!(staged.stats(), ExportStats { fetched: 0, copied: big.len() as u64 + 6 });
        staged.commit().unwrap();
        assert_eq!(ino(&second, "sub/big"), ino(&first, "sub/big"));
        assert_eq!(ino(&second, "small"), ino(&first, "small"));

        // Rewritten in place, same size, still read-only: not Nix's mtime.
        let small = first.join("small");
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&small, b"SMALL\n").unwrap();
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o444)).unwrap();
        let third = tmp.path().join("third");
        let staged = stage(&blobs, &dirs, &node, &third, &linking).await.unwrap();
        assert_eq!(staged.stats(), ExportStats { fetched: 6, copied: big.len() as u64 });
        staged.commit().unwrap();
        assert_eq!(std::fs::read(third.join("small")).unwrap(), b"small\n");
        assert_ne!(ino(&third, "small"), ino(&first, "small"));
    }

    /// A second writer of the same target loses without touching the
    /// winner's tree, and its own temporary tree is gone.
    #[tokio::test(flavor = "multi_thread")]
    async fn commit_never_replaces() {
        let (blobs, dirs) = services();
        let node = sample(&blobs, &dirs, &noise(1000, 3)).await;
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        let options = ExportOptions { layout: Layout::NixStore, ..ExportOptions::default() };
        let first = stage(&blobs, &dirs, &node, &target, &options).await.unwrap();
        let second = stage(&blobs, &dirs, &node, &target, &options).await.unwrap();
        assert_ne!(first.path(), second.path());
        assert_eq!(first.commit().unwrap(), Commit::Created);
        let inode = std::fs::metadata(&target).unwrap().ino();
        assert_eq!(second.commit().unwrap(), Commit::Exists);
        assert_eq!(std::fs::metadata(&target).unwrap().ino(), inode);
        assert_eq!(entries(tmp.path()), vec!["out"]);
        // A discarded read-only tree is removed too.
        let third = stage(&blobs, &dirs, &node, &target, &options).await.unwrap();
        third.discard().await;
        assert_eq!(entries(tmp.path()), vec!["out"]);
    }

    /// A blob service that never answers for one digest.
    struct Stuck {
        inner: ChunkedBlobService,
        stuck: B3Digest,
    }

    #[async_trait::async_trait]
    impl BlobService for Stuck {
        async fn stat(&self, digest: &B3Digest) -> Result<Option<Vec<crate::ChunkMeta>>> {
            self.inner.stat(digest).await
        }
        async fn open_read(&self, digest: &B3Digest) -> Result<Option<crate::BlobReader>> {
            if *digest == self.stuck {
                std::future::pending::<()>().await;
            }
            self.inner.open_read(digest).await
        }
        async fn put(
            &self,
            reader: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
            expected: Option<&B3Digest>,
        ) -> Result<B3Digest> {
            self.inner.put(reader, expected).await
        }
    }

    /// A stage dropped half-way (a cancelled fetch) leaves nothing.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_cancelled_stage_leaves_nothing() {
        let (blobs, dirs) = services();
        let big = noise(2 << 20, 4);
        let node = sample(&blobs, &dirs, &big).await;
        let stuck = Stuck { inner: blobs, stuck: B3Digest::of(&big) };
        let tmp = tempfile::tempdir().unwrap();
        let options = ExportOptions { layout: Layout::NixStore, ..ExportOptions::default() };
        let target = tmp.path().join("out");
        let staging = stage(&stuck, &dirs, &node, &target, &options);
        assert!(tokio::time::timeout(Duration::from_millis(500), staging).await.is_err());
        assert!(entries(tmp.path()).is_empty(), "left behind: {:?}", entries(tmp.path()));
    }

    #[test]
    fn temporary_names_are_hidden_unique_and_short() {
        let long = "x".repeat(244);
        let a = temp_name(OsStr::new(&long));
        let b = temp_name(OsStr::new(&long));
        assert_ne!(a, b);
        assert!(a.as_bytes().starts_with(b".xxx"));
        assert!(a.len() < 255, "{}", a.len());
    }
}
