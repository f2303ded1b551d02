//! Filesystem ingest and export.
//!
//! [`ingest`] turns a file, symlink or directory tree into castore content
//! (blobs streamed, in parallel; directories put as one closure, so nothing
//! is visible until the whole tree is stored) and returns its root [`Node`].
//! [`stage`] writes a node back beside its target, every file checked
//! against its digest (fetched, or copied from identical [`LocalFiles`]
//! without following symlinks), optionally laid out as Nix's store
//! ([`Layout::NixStore`]); [`Staged::commit`] renames it into place without
//! replacing anything, and a failed, cancelled or dropped stage removes its
//! tree. [`export`] is both steps with owner-writable modes.
use std::{
    collections::HashMap,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::{B3Digest, BlobService, Directory, DirectoryService, Error, Name, Node, Result};

mod export;
mod local;

pub use export::{
    Commit, ExportOptions, ExportStats, Layout, OnBytes, Source, Staged, StagedFile, export, stage, stage_closure,
};
pub use local::{LocalFile, LocalFiles};

/// Jobs (a large file, or a batch of small ones) run at the same time.
const PARALLEL_JOBS: usize = 4;
/// Small files of one batch stored at the same time.
const PARALLEL_PUTS: usize = 4;
/// Files up to this size are read in one go rather than streamed, many at a
/// time in one trip to the blocking pool.
const SMALL_FILE: u64 = 256 << 10;
/// Most files, and bytes, in one batch of small files.
const BATCH_FILES: usize = 128;
const BATCH_BYTES: u64 = 4 << 20;
/// Most bytes one read of a large file asks for.
const READ_MAX: usize = 4 << 20;

/// Whether a file's mode makes it executable in castore (and Nix) terms.
fn is_executable(mode: u32) -> bool {
    mode & 0o100 != 0
}

/// One directory of the walk, children before parents.
struct WalkedDir {
    entries: Vec<(Name, Walked)>,
}

enum Walked {
    File {
        path: PathBuf,
        executable: bool,
    },
    Symlink {
        target: Bytes,
    },
    /// Index into the walk's directory list.
    Dir(usize),
}

fn entry_name(path: &Path) -> Result<Name> {
    let raw = path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    Name::new(raw).map_err(|e| Error::InvalidRequest(format!("{}: {e}", path.display())))
}

/// Groups small files into batches of at most [`BATCH_FILES`] files and
/// [`BATCH_BYTES`] bytes, so each batch is one trip to the blocking pool.
struct Batcher<T> {
    current: Vec<T>,
    bytes: u64,
}

impl<T> Batcher<T> {
    fn new() -> Self {
        Self { current: Vec::new(), bytes: 0 }
    }

    /// Adds a file of `size` bytes; returns the batch it closed, if it did
    /// not fit in the current one.
    fn push(&mut self, item: T, size: u64) -> Option<Vec<T>> {
        let full = self.current.len() == BATCH_FILES || self.bytes + size > BATCH_BYTES;
        let closed = (full && !self.current.is_empty()).then(|| {
            self.bytes = 0;
            std::mem::take(&mut self.current)
        });
        self.bytes += size;
        self.current.push(item);
        closed
    }

    /// The last, partly filled batch.
    fn finish(self) -> Option<Vec<T>> {
        (!self.current.is_empty()).then_some(self.current)
    }
}

/// The walk: directories listed children first, and files sent for storing
/// (in batches) as soon as they are found, so storing starts with the walk.
struct Walker {
    dirs: Vec<WalkedDir>,
    tx: tokio::sync::mpsc::Sender<Vec<(PathBuf, u64)>>,
    /// The batch of small files being gathered.
    small: Batcher<(PathBuf, u64)>,
}

impl Walker {
    /// Sends a large file on its own, small ones in batches (see [`BATCH_FILES`]).
    fn file(&mut self, path: &Path, size: u64) -> Result<()> {
        if size > SMALL_FILE {
            return self.send(vec![(path.to_owned(), size)]);
        }
        match self.small.push((path.to_owned(), size), size) {
            Some(batch) => self.send(batch),
            None => Ok(()),
        }
    }

    fn send(&self, batch: Vec<(PathBuf, u64)>) -> Result<()> {
        self.tx.blocking_send(batch).map_err(|_| Error::Storage("ingest stopped".into()))
    }

    fn finish(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.small, Batcher::new()).finish() {
            Some(batch) => self.send(batch),
            None => Ok(()),
        }
    }

    fn classify(&mut self, path: PathBuf, meta: std::fs::Metadata) -> Result<Walked> {
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            Ok(Walked::Symlink { target: Bytes::copy_from_slice(target.as_os_str().as_bytes()) })
        } else if ft.is_file() {
            self.file(&path, meta.len())?;
            Ok(Walked::File { path, executable: is_executable(meta.mode()) })
        } else if ft.is_dir() {
            let mut children: Vec<std::fs::DirEntry> = std::fs::read_dir(&path)?.collect::<Result<_, _>>()?;
            children.sort_by_key(std::fs::DirEntry::file_name);
            let mut entries = Vec::with_capacity(children.len());
            for child in children {
                // Relative to the open directory: no walk of the whole path.
                let meta = child.metadata()?;
                let child = child.path();
                entries.push((entry_name(&child)?, self.classify(child, meta)?));
            }
            self.dirs.push(WalkedDir { entries });
            Ok(Walked::Dir(self.dirs.len() - 1))
        } else {
            Err(Error::InvalidRequest(format!("{}: sockets, fifos and devices cannot be stored", path.display())))
        }
    }
}

fn changed_size(path: &Path) -> Error {
    Error::InvalidRequest(format!("{} changed size while being read", path.display()))
}

/// Reads a whole small file of the size the walk saw: usually one `read`
/// (asking for one byte more than expected, so growth shows).
fn read_small(path: &Path, size: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let want = size as usize + 1;
    let mut data = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read(&mut data[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        // A short read of a regular file means its end, once all of it is here.
        if got == size as usize {
            break;
        }
    }
    if got as u64 != size {
        return Err(changed_size(path));
    }
    data.truncate(got);
    Ok(data)
}

/// Stores a batch: one large file, streamed, or small files read together.
async fn put_batch(blobs: &dyn BlobService, batch: Vec<(PathBuf, u64)>) -> Result<Vec<(PathBuf, (B3Digest, u64))>> {
    if let [(_, size)] = batch.as_slice()
        && *size > SMALL_FILE
    {
        let (path, size) = batch.into_iter().next().expect("one file");
        let mut reader = FileReader::open(&path, size).await?;
        let digest = blobs.put(&mut reader, None).await?;
        if reader.offset != size {
            return Err(changed_size(&path));
        }
        return Ok(vec![(path, (digest, size))]);
    }
    let read = tokio::task::spawn_blocking(move || {
        batch
            .into_iter()
            .map(|(path, size)| {
                let data = read_small(&path, size)?;
                Ok((path, Bytes::from(data)))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .map_err(Error::storage)??;
    futures::stream::iter(read)
        .map(|(path, data)| async move {
            let size = data.len() as u64;
            Ok((path, (blobs.put_bytes(data, None).await?, size)))
        })
        .buffer_unordered(PARALLEL_PUTS)
        .try_collect()
        .await
}

/// Ingests `path` (file, symlink or directory tree) and returns its node.
pub async fn ingest(blobs: &dyn BlobService, directories: &dyn DirectoryService, path: &Path) -> Result<Node> {
    // Walk and store file contents at the same time, in parallel.
    let owned = path.to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel(2 * PARALLEL_JOBS);
    let walk = tokio::task::spawn_blocking(move || {
        let mut walker = Walker { dirs: Vec::new(), tx, small: Batcher::new() };
        let meta = std::fs::symlink_metadata(&owned)?;
        let root = walker.classify(owned, meta)?;
        walker.finish()?;
        Ok::<_, Error>((root, walker.dirs))
    });
    let mut stored: HashMap<PathBuf, (B3Digest, u64)> = HashMap::new();
    let mut done =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| put_batch(blobs, b)).buffer_unordered(PARALLEL_JOBS);
    let put: Result<()> = async {
        while let Some(batch) = done.try_next().await? {
            stored.extend(batch);
        }
        Ok(())
    }
    .await;
    // Stops the walk early if storing failed.
    drop(done);
    let walked = walk.await.map_err(Error::storage)?;
    put?;
    let (root, walked) = walked?;

    // Then directories, children first, as one closure.
    let mut built: Vec<Directory> = Vec::with_capacity(walked.len());
    let node_of = |w: &Walked, built: &[Directory]| -> Node {
        match w {
            Walked::File { path, executable, .. } => {
                let (digest, size) = stored[path];
                Node::File { digest, size, executable: *executable }
            }
            Walked::Symlink { target } => Node::Symlink { target: target.clone() },
            Walked::Dir(i) => Node::Directory { digest: built[*i].digest(), size: built[*i].size() },
        }
    };
    for dir in &walked {
        let mut d = Directory::default();
        for (name, w) in &dir.entries {
            d.add(name.clone(), node_of(w, &built))?;
        }
        built.push(d);
    }
    let root = node_of(&root, &built);
    if let Node::Directory { .. } = root {
        directories.put_closure(built).await?;
    }
    Ok(root)
}

/// Reads a regular file for [`BlobService::put`]. Data in the page cache is
/// copied straight into the caller's buffer (`preadv2` with `RWF_NOWAIT`,
/// which never waits for the disk), with no trip to the blocking pool and no
/// extra copy; only data that must come from the disk is read in the
/// blocking pool. Sequential reads keep the kernel's readahead ahead of us.
struct FileReader {
    file: Arc<std::fs::File>,
    /// Size when the walk saw it; a short read before it is retried blocking.
    size: u64,
    /// Bytes handed out so far.
    offset: u64,
    nowait: bool,
    reading: Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>,
    /// Read in the blocking pool, not handed out yet.
    ready: Bytes,
}

impl FileReader {
    async fn open(path: &Path, size: u64) -> Result<Self> {
        let path = path.to_owned();
        let file = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path)?;
            // SAFETY: plain syscall on an fd we own; only a hint.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(Error::storage)??;
        Ok(Self { file: Arc::new(file), size, offset: 0, nowait: true, reading: None, ready: Bytes::new() })
    }
}

/// Reads what the page cache holds at `offset` into `buf`, without waiting
/// for the disk: `Ok(None)` when nothing there is cached.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_cached(file: &std::fs::File, buf: &mut tokio::io::ReadBuf<'_>, offset: u64) -> std::io::Result<Option<usize>> {
    // SAFETY: the kernel only writes into the unfilled part, and we mark as
    // initialized exactly the bytes it reports.
    let unfilled = unsafe { buf.unfilled_mut() };
    let iov = libc::iovec { iov_base: unfilled.as_mut_ptr().cast(), iov_len: unfilled.len().min(READ_MAX) };
    loop {
        // SAFETY: `iov` describes writable memory we own for the call.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the kernel wrote `n` bytes.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Ok(Some(n));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_cached(_: &std::fs::File, _: &mut tokio::io::ReadBuf<'_>, _: u64) -> std::io::Result<Option<usize>> {
    Err(std::io::ErrorKind::Unsupported.into())
}

impl tokio::io::AsyncRead for FileReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                this.offset += n as u64;
                return Poll::Ready(Ok(()));
            }
            if let Some(reading) = this.reading.as_mut() {
                let data = std::task::ready!(std::pin::Pin::new(reading).poll(cx)).map_err(std::io::Error::other)??;
                this.reading = None;
                if data.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = data.into();
                continue;
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.nowait {
                match read_cached(&this.file, buf, this.offset) {
                    Ok(Some(0)) if this.offset < this.size => {}
                    Ok(Some(n)) => {
                        this.offset += n as u64;
                        return Poll::Ready(Ok(()));
                    }
                    Ok(None) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::Unsupported
                            || matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)) =>
                    {
                        this.nowait = false
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let (file, offset, len) = (this.file.clone(), this.offset, buf.remaining().min(READ_MAX));
            this.reading = Some(tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut data = vec![0u8; len];
                let n = loop {
                    match file.read_at(&mut data, offset) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                data.truncate(n);
                Ok(data)
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_close_at_the_file_and_byte_limits() {
        let mut b = Batcher::new();
        let closed: Vec<Vec<usize>> = (0..BATCH_FILES + 1).filter_map(|i| b.push(i, 1)).collect();
        assert_eq!(closed, vec![(0..BATCH_FILES).collect::<Vec<_>>()]);
        assert_eq!(b.finish(), Some(vec![BATCH_FILES]));

        let mut b = Batcher::new();
        let half = BATCH_BYTES / 2;
        assert_eq!(b.push('a', half), None);
        assert_eq!(b.push('b', half), None);
        assert_eq!(b.push('c', 1), Some(vec!['a', 'b']));
        assert_eq!(b.finish(), Some(vec!['c']));
        assert_eq!(Batcher::<u8>::new().finish(), None);
    }
}
