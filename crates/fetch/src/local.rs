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
use futures::TryStreamExt;
use store::PathInfo;

/// Candidates offered for one digest: a few are plenty (each failed one
/// costs a read).
const MAX_CANDIDATES: usize = 3;
/// Present paths whose directory listings are asked for in one call.
const LISTED_AT_ONCE: usize = 64;
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
    /// store: the directory closures of [`LISTED_AT_ONCE`] paths per
    /// [`DirectoryService::get_closures`]. Best effort: a group whose
    /// listings cannot be had is skipped.
    pub(crate) async fn add_present(&self, infos: &[&PathInfo], directories: &dyn DirectoryService) {
        for info in infos {
            if let Node::File { digest, .. } = &info.node {
                self.add(*digest, PathBuf::from(info.store_path.to_string()));
            }
        }
        let trees: Vec<(String, B3Digest)> = infos
            .iter()
            .filter_map(|i| match &i.node {
                Node::Directory { digest, .. } => Some((i.store_path.to_string(), *digest)),
                _ => None,
            })
            .collect();
        for group in trees.chunks(LISTED_AT_ONCE) {
            let roots = group.iter().map(|(_, d)| *d).collect();
            let all: HashMap<B3Digest, castore::Directory> =
                match directories.get_closures(roots).map_ok(|d| (d.digest(), d)).try_collect().await {
                    Ok(all) => all,
                    Err(e) => {
                        tracing::debug!(error = %e, "no listings of present paths; not indexed");
                        continue;
                    }
                };
            for (base, root) in group {
                for (digest, rel) in files_below(&all, root) {
                    self.add(digest, below(base, &rel));
                }
            }
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

/// Every regular file below the directory `root` of the closure `all`, by
/// path relative to it (at most [`MAX_LISTED`] entries looked at).
fn files_below(all: &HashMap<B3Digest, castore::Directory>, root: &B3Digest) -> Vec<(B3Digest, PathBuf)> {
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
    out
}
