//! Files already on disk that a stage may use instead of fetching: found
//! without following symlinks, checked (regular, size, Nix's mode and mtime
//! 1, BLAKE3), then hard-linked in Nix's layout or copied.
//!
//! A file this module wrote or hashed in Nix's layout carries its checked
//! digest in an extended attribute ([`REMEMBERED`]), so linking it later
//! costs a `statx`, a `getxattrat` and the `linkat`, not a read.
use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{FileExt, MetadataExt},
        },
    },
    path::{Component, Path, PathBuf},
    sync::atomic::Ordering,
};

use super::export::Gate;
use crate::B3Digest;

/// Buffer for copying or hashing a large local file.
const COPY_BUFFER: usize = 256 << 10;

/// A file on disk that may hold some contents already: `rel` below the
/// directory `dir`. `dir` is trusted as given; `rel` is resolved one
/// component at a time without following symlinks, so a tree that is not
/// what its directory listing claimed cannot redirect the read elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocalFile {
    pub dir: PathBuf,
    pub rel: PathBuf,
}

/// Where identical file contents may already be on disk (other store paths,
/// files staged earlier), so they are copied instead of fetched. A
/// candidate is used only if it is a regular file of the right size whose
/// BLAKE3 is the digest; otherwise the next one is tried, then the blob
/// service.
pub trait LocalFiles: Send + Sync {
    /// Candidates for the file at `rel` below the tree being written (empty
    /// for a root file) whose contents are `digest`: by digest, or by place
    /// (the same `rel` in an earlier build of the same package).
    fn find(&self, digest: &B3Digest, rel: &Path) -> Vec<LocalFile>;
}

/// The extended attribute that records, on a file this module wrote (or
/// hashed) in Nix's layout, the BLAKE3 digest and size its contents were
/// checked to have: 32 + 8 bytes.
const REMEMBERED: &std::ffi::CStr = c"user.storefront.blake3";

/// Whether the filesystem (and our rights) allow [`REMEMBERED`]; cleared
/// the first time setting it is refused.
pub(super) static REMEMBERING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Records on `file`'s inode that its contents are `digest` (`size`
/// bytes), so a later stage can link the inode without reading it
/// ([`remembered`]). Best effort: a filesystem without user extended
/// attributes, or a file we may not change, just means hashing later.
pub(super) fn remember(file: &File, digest: &B3Digest, size: u64) {
    if !REMEMBERING.load(Ordering::Relaxed) {
        return;
    }
    let mut value = [0u8; RECORD_LEN];
    value[..32].copy_from_slice(digest.as_bytes());
    value[32..].copy_from_slice(&size.to_le_bytes());
    // SAFETY: a descriptor we hold, a NUL-terminated name, a buffer of the length given.
    let r = unsafe { libc::fsetxattr(file.as_raw_fd(), REMEMBERED.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        REMEMBERING.store(false, Ordering::Relaxed);
    }
}

/// The digest `file` (already found regular, of `size` bytes, Nix's mode
/// and mtime 1) is remembered to hold, if any. Changing a file's contents
/// changes its mtime, which then is no longer 1, so what this trusts is
/// that nobody rewrote the file and set its time back (which takes its
/// owner, root in a Nix store), the trust `nix-store --optimise` puts in
/// the files it links to.
pub(super) fn remembered(file: &File, size: u64) -> Option<B3Digest> {
    let mut value = [0u8; RECORD_LEN];
    // SAFETY: a descriptor we hold, a NUL-terminated name, a buffer of the length given.
    let n = unsafe { libc::fgetxattr(file.as_raw_fd(), REMEMBERED.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    record_of(&value, n, size)
}

/// Length of a [`REMEMBERED`] record: the digest, then the size (LE).
const RECORD_LEN: usize = 40;

/// The digest a record read as `n` bytes of `value` holds for a file of
/// `size` bytes; `None` for no record, another length or another size.
fn record_of(value: &[u8; RECORD_LEN], n: isize, size: u64) -> Option<B3Digest> {
    if n != RECORD_LEN as isize || value[32..] != size.to_le_bytes() {
        return None;
    }
    let digest: [u8; 32] = value[..32].try_into().expect("32 bytes");
    Some(B3Digest::from(digest))
}

/// Opens `rel` below `dir` for reading, never following a symlink and
/// never leaving `dir` (only plain components). Opening the last component
/// does not block on a fifo. One `openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS` where the kernel has it (Linux 5.6), else one
/// `openat` per component.
pub(super) fn open_beneath(dir: &Path, rel: &Path) -> std::io::Result<File> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a plain relative path");
    let parts: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(invalid()),
        })
        .collect::<std::io::Result<_>>()?;
    if parts.is_empty() {
        return Err(invalid());
    }
    with_dir_fd(dir, |dir_fd| {
        if OPENAT2.load(Ordering::Relaxed) {
            let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| invalid())?;
            match openat2_beneath(dir_fd, &c, libc::O_RDONLY | libc::O_NONBLOCK) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => OPENAT2.store(false, Ordering::Relaxed),
                r => return r.map(File::from),
            }
        }
        let mut fd: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let c = CString::new(part.as_bytes()).map_err(|_| invalid())?;
            let flags = libc::O_RDONLY
                | libc::O_NOFOLLOW
                | libc::O_CLOEXEC
                | if last { libc::O_NONBLOCK } else { libc::O_DIRECTORY };
            let at = fd.as_ref().map_or(dir_fd, |f| f.as_raw_fd());
            // SAFETY: openat on a directory fd we hold with a NUL-terminated name.
            let raw = unsafe { libc::openat(at, c.as_ptr(), flags) };
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        Ok(File::from(fd.expect("at least one component")))
    })
}

/// Whether `openat2` may be tried (cleared when the kernel lacks it).
static OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// `openat2(dir_fd, rel, flags | O_NOFOLLOW | O_CLOEXEC,
/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`.
fn openat2_beneath(dir_fd: libc::c_int, rel: &CString, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a directory fd, a NUL-terminated path and an open_how of the size passed.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir_fd,
            rel.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) })
}

/// Directory descriptors each blocking thread keeps (the target directory
/// candidates are opened below, the trees being written into).
const DIR_FDS: usize = 4;

thread_local! {
    /// The directories most recently used by [`with_dir_fd`], newest first.
    static DIR_FD: std::cell::RefCell<Vec<(PathBuf, OwnedFd)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with a descriptor of the directory `dir` (kept open by this
/// thread for the next call: opening by descriptor walks only the relative
/// part of a path). `f` must not call this again.
pub(super) fn with_dir_fd<T>(dir: &Path, f: impl FnOnce(libc::c_int) -> std::io::Result<T>) -> std::io::Result<T> {
    DIR_FD.with_borrow_mut(|cached| {
        match cached.iter().position(|(p, _)| p == dir) {
            Some(0) => {}
            Some(i) => {
                let hit = cached.remove(i);
                cached.insert(0, hit);
            }
            None => {
                let fd: OwnedFd = File::open(dir)?.into();
                cached.insert(0, (dir.to_owned(), fd));
                cached.truncate(DIR_FDS);
            }
        }
        f(cached[0].1.as_raw_fd())
    })
}

/// Opens a candidate that is a regular file of `size` bytes.
fn open_candidate(c: &LocalFile, size: u64) -> Option<(File, std::fs::Metadata)> {
    let file = open_beneath(&c.dir, &c.rel).ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.size() == size).then_some((file, meta))
}

/// The contents of the first candidate that holds `digest` (small files).
pub(super) fn read_local(candidates: &[LocalFile], digest: &B3Digest, size: u64) -> Option<Vec<u8>> {
    candidates.iter().find_map(|c| {
        let (file, _) = open_candidate(c, size)?;
        let mut data = Vec::with_capacity(size as usize);
        file.take(size + 1).read_to_end(&mut data).ok()?;
        (data.len() as u64 == size && B3Digest::of(&data) == *digest).then_some(data)
    })
}

/// In Nix's layout, makes `dst` a hard link to the first candidate that
/// holds `digest` and already looks exactly as the new file must (regular,
/// `mode`, mtime 1): store files are immutable, so sharing an inode is what
/// `nix-store --optimise` does, and it writes no bytes at all. A candidate
/// with a record of its digest is linked by name ([`link_remembered`]);
/// one without is hashed through a descriptor, and the inode hashed is the
/// inode linked (through `/proc/self/fd`, not the path). False when no
/// candidate fits or the filesystem refuses (another device).
///
/// Candidates found not to hold `digest` at all are removed from
/// `candidates`, so the caller does not read them again to copy them.
pub(super) fn link_local(
    candidates: &mut Vec<LocalFile>,
    digest: &B3Digest,
    size: u64,
    mode: u32,
    (root, rel): (&Path, &Path),
    gate: &Gate,
) -> std::io::Result<bool> {
    let mut wrong = Vec::new();
    let mut linked = false;
    for (i, c) in candidates.iter().enumerate() {
        match link_remembered(c, digest, size, mode, (root, rel), gate) {
            Ok(Remembered::Linked) => {
                linked = true;
                break;
            }
            Ok(Remembered::Wrong) => {
                wrong.push(i);
                continue;
            }
            Ok(Remembered::Unfit) => continue,
            Ok(Remembered::Unknown) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
            // No such directory in the earlier build.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                wrong.push(i);
                continue;
            }
            // A symlink on the way, a refused link: the descriptor path decides.
            Err(_) => {}
        }
        let Some((src, meta)) = open_candidate(c, size) else {
            wrong.push(i);
            continue;
        };
        if meta.mode() & 0o7777 != mode || meta.mtime() != 1 {
            continue;
        }
        match remembered(&src, size) {
            Some(known) if known == *digest => {}
            // Known to hold other bytes (a file that changed between builds).
            Some(_) => {
                wrong.push(i);
                continue;
            }
            None if hash_file(&src, size).ok() == Some(*digest) => remember(&src, digest, size),
            None => {
                wrong.push(i);
                continue;
            }
        }
        let result = gate.create(|| {
            if rel.as_os_str().is_empty() {
                let to = CString::new(root.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
                return link_fd(&src, libc::AT_FDCWD, &to);
            }
            let to = CString::new(rel.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
            with_dir_fd(root, |root_fd| link_fd(&src, root_fd, &to))
        });
        match result {
            Ok(()) => {
                linked = true;
                break;
            }
            // The stage is being removed: stop.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
            // Another filesystem, a link limit, /proc missing: copy instead.
            Err(_) => continue,
        }
    }
    for i in wrong.into_iter().rev() {
        candidates.remove(i);
    }
    Ok(linked)
}

/// What [`link_remembered`] made of a candidate.
#[derive(Debug, PartialEq, Eq)]
enum Remembered {
    Linked,
    /// Not a regular file of the size, or known to hold other bytes.
    Wrong,
    /// Not (or no longer) in Nix's mode and mtime: not to be linked.
    Unfit,
    /// Fits, but holds no record (or the kernel cannot read one by name).
    Unknown,
}

/// `getxattrat(2)` (Linux 6.13), the same number on every architecture.
const SYS_GETXATTRAT: libc::c_long = 464;

/// Whether `getxattrat` may be tried (cleared when the kernel lacks it).
static GETXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Links a candidate whose record says it holds `digest`, by name in its
/// directory: `statx`, `getxattrat`, `linkat`, no descriptor of the file.
/// The directory is opened without following symlinks and kept; its entry
/// can change between the checks and the link only by someone allowed to
/// write into it, the owner of the store, whom [`remembered`] trusts anyway.
fn link_remembered(
    c: &LocalFile,
    digest: &B3Digest,
    size: u64,
    mode: u32,
    (root, rel): (&Path, &Path),
    gate: &Gate,
) -> std::io::Result<Remembered> {
    if !GETXATTRAT.load(Ordering::Relaxed) || !REMEMBERING.load(Ordering::Relaxed) || rel.as_os_str().is_empty() {
        return Ok(Remembered::Unknown);
    }
    let (Some(parent), Some(name)) = (c.rel.parent(), c.rel.file_name()) else {
        return Ok(Remembered::Unknown);
    };
    let name = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    with_parent_fd(&c.dir, parent, |dir_fd| {
        // SAFETY: statx is plain data; zeroed is a valid value.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: a directory fd, a NUL-terminated name, a statx buffer.
        let r = unsafe {
            libc::statx(
                dir_fd,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
                libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_SIZE | libc::STATX_MTIME,
                &mut st,
            )
        };
        if r != 0 {
            return Ok(Remembered::Wrong);
        }
        if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFREG || st.stx_size != size {
            return Ok(Remembered::Wrong);
        }
        if u32::from(st.stx_mode) & 0o7777 != mode || st.stx_mtime.tv_sec != 1 {
            return Ok(Remembered::Unfit);
        }
        let mut value = [0u8; RECORD_LEN];
        #[repr(C)]
        struct XattrArgs {
            value: u64,
            size: u32,
            flags: u32,
        }
        let args = XattrArgs { value: value.as_mut_ptr() as u64, size: value.len() as u32, flags: 0 };
        // SAFETY: a directory fd, NUL-terminated names, an xattr_args of the size passed whose buffer outlives the call.
        let n = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir_fd,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                REMEMBERED.as_ptr(),
                &args as *const XattrArgs,
                size_of::<XattrArgs>(),
            )
        };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            GETXATTRAT.store(false, Ordering::Relaxed);
        }
        match record_of(&value, n as isize, size) {
            None => return Ok(Remembered::Unknown),
            Some(known) if known != *digest => return Ok(Remembered::Wrong),
            Some(_) => {}
        }
        let to = CString::new(rel.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        gate.create(|| {
            with_dir_fd(root, |root_fd| {
                // SAFETY: two directory fds and two NUL-terminated names; linkat only adds a name.
                let r = unsafe { libc::linkat(dir_fd, name.as_ptr(), root_fd, to.as_ptr(), 0) };
                if r == 0 { Ok(Remembered::Linked) } else { Err(std::io::Error::last_os_error()) }
            })
        })
    })
}

thread_local! {
    /// The directory of the candidates last linked by [`link_remembered`].
    static PARENT_FD: std::cell::RefCell<Option<(PathBuf, PathBuf, OwnedFd)>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with a descriptor (`O_PATH`) of `parent` below `dir`, opened
/// without following symlinks, kept for the next call.
fn with_parent_fd<T>(
    dir: &Path,
    parent: &Path,
    f: impl FnOnce(libc::c_int) -> std::io::Result<T>,
) -> std::io::Result<T> {
    PARENT_FD.with_borrow_mut(|cached| {
        let hit = matches!(cached, Some((d, p, _)) if d == dir && p == parent);
        if !hit {
            // A candidate right below `dir` has the empty path as parent.
            let at = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            let fd = open_dir_beneath(dir, at)?;
            *cached = Some((dir.to_owned(), parent.to_owned(), fd));
        }
        f(cached.as_ref().expect("just set").2.as_raw_fd())
    })
}

/// `parent` below `dir` as an `O_PATH` descriptor, opened as
/// [`openat2_beneath`] opens (no symlinks, never above `dir`).
fn open_dir_beneath(dir: &Path, parent: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(parent.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    with_dir_fd(dir, |dir_fd| openat2_beneath(dir_fd, &c, libc::O_PATH | libc::O_DIRECTORY))
}

/// Whether `linkat(fd, "", AT_EMPTY_PATH)` may be tried: it needs
/// CAP_DAC_READ_SEARCH, and is cleared the first time it is refused.
static LINK_EMPTY_PATH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Makes `to` (relative to the directory `at`) a new name of the open file
/// `src` (its inode, whatever its path now names): directly where allowed,
/// else through `/proc/self/fd`.
fn link_fd(src: &File, at: libc::c_int, to: &CString) -> std::io::Result<()> {
    if LINK_EMPTY_PATH.load(Ordering::Relaxed) {
        // SAFETY: a descriptor we hold, an empty path, a NUL-terminated target.
        let r = unsafe { libc::linkat(src.as_raw_fd(), c"".as_ptr(), at, to.as_ptr(), libc::AT_EMPTY_PATH) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM | libc::EINVAL)) {
            return Err(e);
        }
        LINK_EMPTY_PATH.store(false, Ordering::Relaxed);
    }
    let proc = CString::new(format!("/proc/self/fd/{}", src.as_raw_fd())).map_err(std::io::Error::other)?;
    // SAFETY: two valid NUL-terminated paths; linkat only adds a name.
    let r = unsafe { libc::linkat(libc::AT_FDCWD, proc.as_ptr(), at, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Fills `dst` (new and empty) from the first candidate that holds
/// `digest`: a reflink where the filesystem shares extents, a copy
/// otherwise, and either way the bytes in `dst` hashed. Leaves `dst` empty
/// and returns false when no candidate fits.
pub(super) fn copy_local(candidates: &[LocalFile], digest: &B3Digest, size: u64, dst: &File) -> bool {
    for c in candidates {
        let Some((src, _)) = open_candidate(c, size) else { continue };
        // SAFETY: FICLONE between two descriptors we hold; it only shares extents.
        let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
        let fits = if cloned { hash_file(dst, size) } else { copy_hashed(&src, dst, size) };
        if fits.is_ok_and(|d| d == *digest) {
            return true;
        }
        if dst.set_len(0).is_err() {
            return false;
        }
    }
    false
}

thread_local! {
    /// Each blocking thread's buffer for hashing and copying local files
    /// (allocating one per file costs a mapping and its page faults).
    static COPY_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's copy buffer.
fn with_copy_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    COPY_BUF.with_borrow_mut(|buf| {
        if buf.len() < COPY_BUFFER {
            buf.resize(COPY_BUFFER, 0);
        }
        f(buf)
    })
}

pub(super) fn hash_file(file: &File, size: u64) -> std::io::Result<B3Digest> {
    with_copy_buffer(|buf| hash_file_with(file, size, buf))
}

fn hash_file_with(file: &File, size: u64, buf: &mut [u8]) -> std::io::Result<B3Digest> {
    // Exactly `size` bytes (what fstat said), without a last read to see
    // the end: store files do not change, and a file that did is refused
    // by the digest anyway.
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    while offset < size {
        let want = ((size - offset) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            return Err(std::io::Error::other("changed size"));
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hasher.finalize().into())
}

fn copy_hashed(src: &File, dst: &File, size: u64) -> std::io::Result<B3Digest> {
    with_copy_buffer(|buf| copy_hashed_with(src, dst, size, buf))
}

fn copy_hashed_with(src: &File, dst: &File, size: u64, buf: &mut [u8]) -> std::io::Result<B3Digest> {
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    while offset < size {
        let want = ((size - offset) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            return Err(std::io::Error::other("changed size"));
        }
        hasher.update(&buf[..n]);
        dst.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_beneath_refuses_symlinks_and_climbing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::fs::write(tmp.path().join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        std::os::unix::fs::symlink("real/f", tmp.path().join("flink")).unwrap();
        assert!(open_beneath(tmp.path(), Path::new("real/f")).is_ok());
        for bad in ["link/f", "flink", "real/../real/f", "/etc/passwd", ""] {
            assert!(open_beneath(tmp.path(), Path::new(bad)).is_err(), "{bad} was opened");
        }
    }

    /// A file in Nix's layout (0444, mtime 1) holding `data`, its digest
    /// recorded.
    fn store_file(path: &Path, data: &[u8]) -> B3Digest {
        std::fs::write(path, data).unwrap();
        let digest = B3Digest::of(data);
        let file = File::open(path).unwrap();
        remember(&file, &digest, data.len() as u64);
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        let times = std::fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1));
        std::fs::File::open(path).unwrap().set_times(times).unwrap();
        digest
    }

    /// Linked by name on its record alone; refused when the record names
    /// other bytes, the size or mode differ, or the path leads through a
    /// symlink; and without `getxattrat`, left to the caller ("unknown").
    #[test]
    fn remembered_candidates_are_linked_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir_all(store.join("old/lib")).unwrap();
        std::os::unix::fs::symlink("lib", store.join("old/via")).unwrap();
        let digest = store_file(&store.join("old/lib/f"), b"contents");
        assert!(REMEMBERING.load(Ordering::Relaxed), "the temporary directory takes no user extended attributes");
        let new = tmp.path().join("new");
        std::fs::create_dir(&new).unwrap();
        let gate = Gate::default();
        let candidate = |rel: &str| LocalFile { dir: store.clone(), rel: rel.into() };
        let try_link = |rel: &str, digest: &B3Digest, size: u64, mode: u32, to: &str| {
            link_remembered(&candidate(rel), digest, size, mode, (&new, Path::new(to)), &gate)
        };
        assert_eq!(try_link("old/lib/f", &B3Digest::of(b"other!!!"), 8, 0o444, "a").unwrap(), Remembered::Wrong);
        assert_eq!(try_link("old/lib/f", &digest, 9, 0o444, "a").unwrap(), Remembered::Wrong);
        assert_eq!(try_link("old/lib/f", &digest, 8, 0o555, "a").unwrap(), Remembered::Unfit);
        assert!(try_link("old/via/f", &digest, 8, 0o444, "a").is_err(), "through a symlink");
        assert_eq!(try_link("old/via", &digest, 8, 0o444, "a").unwrap(), Remembered::Wrong, "a symlink itself");
        assert!(!new.join("a").exists(), "nothing linked so far");
        assert_eq!(try_link("old/lib/f", &digest, 8, 0o444, "a").unwrap(), Remembered::Linked);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&new.join("a")), ino(&store.join("old/lib/f")));

        GETXATTRAT.store(false, Ordering::Relaxed);
        let without = try_link("old/lib/f", &digest, 8, 0o444, "b");
        GETXATTRAT.store(true, Ordering::Relaxed);
        assert_eq!(without.unwrap(), Remembered::Unknown);
    }
}
