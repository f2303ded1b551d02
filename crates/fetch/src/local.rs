//! Files already in the target directory, so identical files are linked or
//! copied from disk instead of fetched: by contents, files of the closure's
//! paths that were present before the fetch (their directory listings come
//! from the store) and files this fetch placed; by place, the file at the
//! same relative path in an earlier build of the same package
//! ([`PathCandidates`]), which a rebuild mostly repeats.
//!
//! The index is only a hint: castore's export opens a candidate without
//! following symlinks, checks that it is a regular file of the right size
//! and hashes it while copying, so a tree on disk that differs from its
//! listing costs a fetch, never wrong bytes.
use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use castore::{
    B3Digest, DirectoryService, Node,
    fs::{LocalFile, LocalFiles, StagedFile},
};
use futures::{StreamExt, TryStreamExt};
use store::PathInfo;

/// Candidates offered for one digest: a few are plenty (each failed one
/// costs a read).
const MAX_CANDIDATES: usize = 3;
/// Directory listings of present paths fetched at once.
const PARALLEL_LISTINGS: usize = 16;
/// Most entries one listing is expanded to (shared subdirectories count
/// once per place), whatever the store claims.
const MAX_LISTED: usize = 1 << 20;

/// Digest → paths below the target directory.
pub(crate) struct LocalIndex {
    target_dir: PathBuf,
    files: Mutex<HashMap<B3Digest, Vec<PathBuf>>>,
}

impl LocalIndex {
    pub(crate) fn new(target_dir: &Path) -> Self {
        Self { target_dir: target_dir.to_owned(), files: Mutex::default() }
    }

    fn add(&self, digest: B3Digest, rel: PathBuf) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let list = files.entry(digest).or_default();
        if list.len() < MAX_CANDIDATES {
            list.push(rel);
        }
    }

    /// Files of a path this fetch placed at `<target_dir>/<base>`.
    pub(crate) fn add_staged(&self, base: &str, files: &[StagedFile]) {
        for f in files {
            self.add(f.digest, below(base, &f.rel));
        }
    }

    /// Files of paths present before the fetch, from their listings in the
    /// store. Best effort: a listing that cannot be had is skipped.
    pub(crate) async fn add_present(&self, infos: &[&PathInfo], directories: &dyn DirectoryService) {
        let owned: Vec<PathInfo> = infos.iter().map(|i| (*i).clone()).collect();
        let listed = futures::stream::iter(owned)
            .map(|info| async move {
                let base = info.store_path.to_string();
                match &info.node {
                    Node::File { digest, .. } => vec![(*digest, PathBuf::from(&base))],
                    Node::Symlink { .. } => vec![],
                    Node::Directory { digest, .. } => match files_below(directories, digest).await {
                        Ok(files) => files.into_iter().map(|(d, rel)| (d, below(&base, &rel))).collect(),
                        Err(e) => {
                            tracing::debug!(path = %base, error = %e, "no listing of a present path; not indexed");
                            vec![]
                        }
                    },
                }
            })
            .buffer_unordered(PARALLEL_LISTINGS)
            .collect::<Vec<_>>()
            .await;
        for (digest, rel) in listed.into_iter().flatten() {
            self.add(digest, rel);
        }
    }
}

impl LocalIndex {
    fn by_digest(&self, digest: &B3Digest) -> Vec<LocalFile> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files
            .get(digest)
            .map(|rels| rels.iter().map(|rel| LocalFile { dir: self.target_dir.clone(), rel: rel.clone() }).collect())
            .unwrap_or_default()
    }
}

/// The candidates offered to the stage of one path: the index's files with
/// the same contents, then the same place in earlier builds of the path's
/// package (directory names in the target, `<other hash>-<same name>`).
/// Those are only guesses: the stage checks every candidate's size, mode
/// and BLAKE3 before it uses it.
pub(crate) struct PathCandidates {
    pub(crate) index: Arc<LocalIndex>,
    pub(crate) earlier: Vec<String>,
}

impl LocalFiles for PathCandidates {
    fn find(&self, digest: &B3Digest, rel: &Path) -> Vec<LocalFile> {
        let mut found = self.index.by_digest(digest);
        for base in &self.earlier {
            let rel = below(base, rel);
            if !found.iter().any(|f| f.rel == rel) {
                found.push(LocalFile { dir: self.index.target_dir.clone(), rel });
            }
        }
        found
    }
}

fn below(base: &str, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() { PathBuf::from(base) } else { Path::new(base).join(rel) }
}

/// Every regular file below a directory, by path relative to it.
async fn files_below(directories: &dyn DirectoryService, root: &B3Digest) -> castore::Result<Vec<(B3Digest, PathBuf)>> {
    let all: HashMap<B3Digest, castore::Directory> =
        directories.get_recursive(root).map_ok(|d| (d.digest(), d)).try_collect().await?;
    let mut out = Vec::new();
    let mut stack = vec![(*root, PathBuf::new())];
    let mut seen = 0usize;
    while let Some((digest, rel)) = stack.pop() {
        let Some(dir) = all.get(&digest) else { continue };
        seen += dir.len();
        if seen > MAX_LISTED {
            break;
        }
        for (name, node) in dir.entries() {
            let child = rel.join(OsStr::from_bytes(name.as_bytes()));
            match node {
                Node::Directory { digest, .. } => stack.push((*digest, child)),
                Node::File { digest, .. } => out.push((*digest, child)),
                Node::Symlink { .. } => {}
            }
        }
    }
    Ok(out)
}
