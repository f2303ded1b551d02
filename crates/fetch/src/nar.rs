//! NAR hashes of trees on disk, serialised and streamed through SHA-256,
//! never kept.
//!
//! [`nar_hash_of_staged`] is how a fetched path is checked against its
//! PathInfo: the NAR of the tree just written, laid out from the directory
//! closure it was written from, with each file's contents as they were
//! written (small ones kept in memory by the stage, the rest read back from
//! the staged file). [`nar_hash_of_tree`] serialises any tree from disk
//! alone, exactly as `nix-store --dump` would (entries in byte order of
//! their names, the executable bit from the owner's execute permission,
//! symlinks read, never followed): how a path found on disk is checked.
use std::{
    fs::{File, Metadata},
    io::Read,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use bytes::Bytes;
use castore::{B3Digest, Node, fs::Staged, render::Segment};
use sha2::{Digest, Sha256};

/// Bytes read from a file at a time.
const READ_BUFFER: usize = 256 << 10;

/// NarSize and NarHash (SHA-256) of the file, symlink or directory tree at
/// `path`. Blocking: run it off the async workers ([`nar_hash_of_tree`]).
pub fn nar_hash_of_tree_blocking(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut nar = NarHasher { sha: Sha256::new(), size: 0, buf: vec![0; READ_BUFFER] };
    nar.token(b"nix-archive-1");
    let meta = std::fs::symlink_metadata(path)?;
    nar.node(path, &meta)?;
    Ok((nar.size, nar.sha.finalize().into()))
}

/// [`nar_hash_of_tree_blocking`] on the blocking pool.
pub async fn nar_hash_of_tree(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || nar_hash_of_tree_blocking(&path)).await.map_err(std::io::Error::other)?
}

/// NarSize and NarHash of the tree `staged` wrote for `node`.
pub async fn nar_hash_of_staged(node: &Node, staged: &Staged) -> std::io::Result<(u64, [u8; 32])> {
    let layout = store::nar::layout_of(node, staged.directories()).map_err(std::io::Error::other)?;
    let files: std::collections::HashMap<&B3Digest, &Path> =
        staged.files().iter().map(|f| (&f.digest, f.rel.as_path())).collect();
    enum Piece {
        Bytes(Bytes),
        File(std::path::PathBuf, u64),
    }
    let pieces = layout
        .segments()
        .map(|(_, segment)| match segment {
            Segment::Bytes(b) => Ok(Piece::Bytes(b)),
            Segment::Blob { digest, size } => match staged.retained(&digest) {
                Some(b) => Ok(Piece::Bytes(b.clone())),
                None => {
                    let rel = files.get(&digest).ok_or_else(|| {
                        std::io::Error::other(format!("blob {digest} is in no file of {}", staged.path().display()))
                    })?;
                    let path =
                        if rel.as_os_str().is_empty() { staged.path().to_owned() } else { staged.path().join(rel) };
                    Ok(Piece::File(path, size))
                }
            },
        })
        .collect::<std::io::Result<Vec<Piece>>>()?;
    let total = layout.len();
    tokio::task::spawn_blocking(move || {
        let mut nar = NarHasher { sha: Sha256::new(), size: 0, buf: vec![0; READ_BUFFER] };
        for piece in pieces {
            match piece {
                Piece::Bytes(b) => nar.bytes(&b),
                Piece::File(path, size) => nar.file_contents(&path, size)?,
            }
        }
        debug_assert_eq!(nar.size, total);
        Ok((nar.size, nar.sha.finalize().into()))
    })
    .await
    .map_err(std::io::Error::other)?
}

struct NarHasher {
    sha: Sha256,
    size: u64,
    buf: Vec<u8>,
}

impl NarHasher {
    fn bytes(&mut self, b: &[u8]) {
        self.sha.update(b);
        self.size += b.len() as u64;
    }

    fn padding(&mut self, len: u64) {
        self.bytes(&[0; 8][..(len.wrapping_neg() & 7) as usize]);
    }

    /// A string token: length (u64 LE), bytes, zero padding to 8.
    fn token(&mut self, s: &[u8]) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s);
        self.padding(s.len() as u64);
    }

    fn node(&mut self, path: &Path, meta: &Metadata) -> std::io::Result<()> {
        self.token(b"(");
        self.token(b"type");
        let kind = meta.file_type();
        if kind.is_symlink() {
            self.token(b"symlink");
            self.token(b"target");
            self.token(std::fs::read_link(path)?.as_os_str().as_bytes());
        } else if kind.is_file() {
            self.token(b"regular");
            if meta.mode() & 0o100 != 0 {
                self.token(b"executable");
                self.token(b"");
            }
            self.token(b"contents");
            self.contents(path, meta.len())?;
        } else if kind.is_dir() {
            self.token(b"directory");
            let mut names: Vec<std::ffi::OsString> =
                std::fs::read_dir(path)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                let child = path.join(&name);
                let meta = std::fs::symlink_metadata(&child)?;
                self.token(b"entry");
                self.token(b"(");
                self.token(b"name");
                self.token(name.as_bytes());
                self.token(b"node");
                self.node(&child, &meta)?;
                self.token(b")");
            }
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a file, directory or symlink", path.display()),
            ));
        }
        self.token(b")");
        Ok(())
    }

    /// A file's contents, which must be `len` bytes (as stat said).
    fn contents(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        self.bytes(&len.to_le_bytes());
        self.file_contents(path, len)?;
        self.padding(len);
        Ok(())
    }

    /// The bytes of the regular file at `path`, which must be `len`.
    fn file_contents(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        // The entry was seen (or written) as a regular file: never open
        // something else that took its place.
        let mut file = File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
        let mut buf = std::mem::take(&mut self.buf);
        let mut read = 0u64;
        let result = loop {
            match file.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    read += n as u64;
                    if read > len {
                        break Err(changed(path));
                    }
                    self.bytes(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        result?;
        if read != len {
            return Err(changed(path));
        }
        Ok(())
    }
}

fn changed(path: &Path) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} changed while it was hashed", path.display()))
}
