//! Filesystem ingest and export.
//!
//! [`ingest`] turns a file, symlink or directory tree into castore content
//! (blobs streamed, in parallel; directories put as one closure, so nothing
//! is visible until the whole tree is stored) and returns its root [`Node`].
//! [`export`] writes a node back as a new path, atomically.
use std::{
    collections::HashMap,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{B3Digest, BlobService, Directory, DirectoryService, Error, Name, Node, Result};

/// Files read and stored at the same time.
const PARALLEL_FILES: usize = 32;
/// Files up to this size are read in one go rather than streamed.
const SMALL_FILE: u64 = 256 << 10;

/// Whether a file's mode makes it executable in castore (and Nix) terms.
fn is_executable(mode: u32) -> bool {
    mode & 0o100 != 0
}

/// One directory of the walk, children before parents.
struct WalkedDir {
    entries: Vec<(Name, Walked)>,
}

enum Walked {
    File { path: PathBuf, size: u64, executable: bool },
    Symlink { target: Bytes },
    /// Index into the walk's directory list.
    Dir(usize),
}

fn entry_name(path: &Path) -> Result<Name> {
    let raw = path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    Name::new(raw).map_err(|e| Error::InvalidRequest(format!("{}: {e}", path.display())))
}

fn classify(path: &Path, dirs: &mut Vec<WalkedDir>) -> Result<Walked> {
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path)?;
        Ok(Walked::Symlink { target: Bytes::copy_from_slice(target.as_os_str().as_bytes()) })
    } else if ft.is_file() {
        Ok(Walked::File { path: path.to_owned(), size: meta.len(), executable: is_executable(meta.mode()) })
    } else if ft.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        children.sort();
        let mut entries = Vec::with_capacity(children.len());
        for child in children {
            entries.push((entry_name(&child)?, classify(&child, dirs)?));
        }
        dirs.push(WalkedDir { entries });
        Ok(Walked::Dir(dirs.len() - 1))
    } else {
        Err(Error::InvalidRequest(format!("{}: sockets, fifos and devices cannot be stored", path.display())))
    }
}

async fn put_file(blobs: &dyn BlobService, path: &Path, size: u64) -> Result<(B3Digest, u64)> {
    let (digest, got) = if size <= SMALL_FILE {
        let data = tokio::fs::read(path).await?;
        let len = data.len() as u64;
        (blobs.put_bytes(data.into(), None).await?, len)
    } else {
        let mut file = tokio::fs::File::open(path).await?;
        let mut counted = CountingReader { inner: &mut file, count: 0 };
        let digest = blobs.put(&mut counted, None).await?;
        (digest, counted.count)
    };
    if got != size {
        return Err(Error::InvalidRequest(format!("{} changed size while being read", path.display())));
    }
    Ok((digest, size))
}

/// Ingests `path` (file, symlink or directory tree) and returns its node.
pub async fn ingest(blobs: &dyn BlobService, directories: &dyn DirectoryService, path: &Path) -> Result<Node> {
    let owned = path.to_owned();
    let (root, walked) = tokio::task::spawn_blocking(move || {
        let mut dirs = Vec::new();
        classify(&owned, &mut dirs).map(|root| (root, dirs))
    })
    .await
    .map_err(Error::storage)??;

    // All file contents first, in parallel.
    let files: Vec<(PathBuf, u64)> = std::iter::once(&root)
        .chain(walked.iter().flat_map(|d| d.entries.iter().map(|(_, w)| w)))
        .filter_map(|w| match w {
            Walked::File { path, size, .. } => Some((path.clone(), *size)),
            _ => None,
        })
        .collect();
    let stored: HashMap<PathBuf, (B3Digest, u64)> = futures::stream::iter(files)
        .map(|(path, size)| async move { put_file(blobs, &path, size).await.map(|r| (path, r)) })
        .buffer_unordered(PARALLEL_FILES)
        .try_collect()
        .await?;

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

struct CountingReader<'a, R> {
    inner: &'a mut R,
    count: u64,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingReader<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.count += (buf.filled().len() - before) as u64;
        r
    }
}

/// Writes `node` as the new path `target` (which must not exist).
///
/// Everything is built in a temporary sibling and renamed into place, so
/// `target` appears whole or not at all. Only new entries are created inside
/// that fresh directory, and names are validated path components, so nothing
/// is written through a symlink or outside `target`. File contents are
/// checked against their digest and size. Files are 0644 (0755 when
/// executable), directories 0755.
pub async fn export(blobs: &dyn BlobService, directories: &dyn DirectoryService, node: &Node, target: &Path) -> Result<()> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::InvalidRequest(format!("{}: not a path to create", target.display())))?;
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if tokio::fs::symlink_metadata(target).await.is_ok() {
        return Err(Error::InvalidRequest(format!("{} already exists", target.display())));
    }
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        B3Digest::of(target.as_os_str().as_bytes()).to_hex().get(..8).unwrap_or_default()
    ));
    let result = async {
        write_node(blobs, directories, node, &tmp).await?;
        rename_noreplace(&tmp, target)
    }
    .await;
    if result.is_err() {
        let _ = match tokio::fs::symlink_metadata(&tmp).await {
            Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(&tmp).await,
            Ok(_) => tokio::fs::remove_file(&tmp).await,
            Err(_) => Ok(()),
        };
    }
    result
}

async fn write_node(blobs: &dyn BlobService, directories: &dyn DirectoryService, node: &Node, path: &Path) -> Result<()> {
    match node {
        Node::File { digest, size, executable } => write_file(blobs, digest, *size, *executable, path).await,
        Node::Symlink { target } => {
            let target = std::ffi::OsStr::from_bytes(target).to_owned();
            tokio::fs::symlink(target, path).await?;
            Ok(())
        }
        Node::Directory { digest, .. } => {
            let all: HashMap<B3Digest, Directory> =
                directories.get_recursive(digest).map_ok(|d| (d.digest(), d)).try_collect().await?;
            // Create the tree (directories, symlinks) and list the files.
            let mut files = Vec::new();
            let mut stack = vec![(*digest, path.to_owned())];
            while let Some((digest, dir_path)) = stack.pop() {
                let dir = all
                    .get(&digest)
                    .ok_or_else(|| Error::Storage(format!("directory {digest} missing from the closure")))?;
                tokio::fs::create_dir(&dir_path).await?;
                for (name, child) in dir.entries() {
                    let child_path = dir_path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
                    match child {
                        Node::Directory { digest, .. } => stack.push((*digest, child_path)),
                        Node::Symlink { target } => {
                            tokio::fs::symlink(std::ffi::OsStr::from_bytes(target), child_path).await?
                        }
                        Node::File { digest, size, executable } => files.push((*digest, *size, *executable, child_path)),
                    }
                }
            }
            futures::stream::iter(files)
                .map(|(digest, size, exec, p)| async move { write_file(blobs, &digest, size, exec, &p).await })
                .buffer_unordered(PARALLEL_FILES)
                .try_collect::<()>()
                .await
        }
    }
}

async fn write_file(blobs: &dyn BlobService, digest: &B3Digest, size: u64, executable: bool, path: &Path) -> Result<()> {
    let mut reader = blobs
        .open_read(digest)
        .await?
        .ok_or_else(|| Error::NotFound(format!("blob {digest} not found (for {})", path.display())))?;
    let mode = if executable { 0o755 } else { 0o644 };
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).await?;
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await?;
        written += n as u64;
    }
    file.flush().await?;
    let actual = B3Digest::from(hasher.finalize());
    if actual != *digest || written != size {
        return Err(Error::Storage(format!(
            "blob {digest} read back as {actual} ({written} bytes, expected {size}) for {}",
            path.display()
        )));
    }
    // The umask may have narrowed the mode.
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).await?;
    Ok(())
}

/// Renames without replacing anything that appeared at `to` meanwhile.
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use std::ffi::CString;
    let from = CString::new(from.as_os_str().as_bytes()).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    let to_c = CString::new(to.as_os_str().as_bytes()).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(Error::InvalidRequest(format!("{} already exists", to.display())));
        }
        return Err(e.into());
    }
    Ok(())
}
