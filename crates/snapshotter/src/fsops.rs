//! Deleting trees so that a crash never leaves half of one where it
//! counts: a tree is first renamed into `trash/` (atomic), then deleted
//! from there; whatever a crash leaves in `trash/` is deleted later.
use std::{
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Renames `path` to a fresh name in `trash`; `None` when it does not exist.
pub fn move_to_trash(path: &Path, trash: &Path, counter: &AtomicU64, tag: &str) -> std::io::Result<Option<PathBuf>> {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let to = trash.join(format!("{tag}-{nanos}-{n}"));
    match std::fs::rename(path, &to) {
        Ok(()) => Ok(Some(to)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a tree, making directories writable first (store paths are
/// read-only) and tolerating entries that vanish meanwhile (another
/// deleter of the same trash).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return ignore_missing(std::fs::remove_file(path));
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        let mut perms = meta.permissions();
        perms.set_mode(perms.mode() | 0o700);
        ignore_missing(std::fs::set_permissions(path, perms))?;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        match entry {
            Ok(entry) => remove_tree(&entry.path())?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    ignore_missing(std::fs::remove_dir(path))
}

fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Deletes everything in `trash`; failures are logged, not fatal (the next
/// purge tries again).
pub fn purge(trash: &Path) {
    let Ok(entries) = std::fs::read_dir(trash) else { return };
    for entry in entries.flatten() {
        if let Err(e) = remove_tree(&entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "could not delete from the trash");
        }
    }
}
