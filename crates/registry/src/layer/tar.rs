//! Layer tars rendered from castore: deterministic POSIX (ustar + pax) tar
//! archives laid out as a [`Layout`], so that a layer is never stored — its
//! headers are literal bytes and its files' contents are castore blobs,
//! read while it streams ([`LayoutReader`]).
//!
//! - [`store_path_entries`] lists store paths as [`TarEntry`]s: the store
//!   directory's own directories (`nix/`, `nix/store/`, mode 0755), then each
//!   path's tree, from its directory closure.
//! - [`tar_layout`] sorts and checks any entries (those, plus whatever a
//!   caller adds: a symlink farm, `/tmp`, …) and lays the archive out.
//! - [`digest`] streams a rendering through SHA-256 (the layer's digest and
//!   size, for its manifest).
//!
//! The archive, byte for byte (the same entries always give the same bytes):
//! - entries sorted by path, component by component (a directory's
//!   entries directly after it, as a tree walk meets them: `a`, `a/b`,
//!   `a-b`); a directory every entry's parent, emitted (mode 0555) when the
//!   entries do not name it;
//! - one 512-byte ustar header per entry (`ustar\0` `00`): typeflag `5`
//!   (directory, its name ending in `/`), `0` (regular file) or `2`
//!   (symlink); mtime 1; uid and gid 0; uname and gname empty; devmajor and
//!   devminor 0; numbers in octal, except a size of 8 GiB or more, which is
//!   base-256 (GNU and star); the checksum as six octal digits, NUL, space;
//! - a path longer than 100 bytes is split into ustar's prefix (≤ 155) and
//!   name (≤ 100) at a `/` when it can be; otherwise, and for a symlink
//!   target longer than 100 bytes, a pax extended header (typeflag `x`,
//!   named `././@PaxHeader`) with a `path=` / `linkpath=` record comes first
//!   (plus `hdrcharset=BINARY` when the value is not UTF-8), and the ustar
//!   fields hold the first 100 bytes;
//! - file contents padded with zeros to 512 bytes; two zero blocks at the
//!   end (no padding to a 10 KiB record).
//!
//! Modes are the entries' own ([`TarEntry::with_mode`]); the constructors
//! give directories 0555, regular files 0444 (0555 when executable) and
//! symlinks 0777, as a read-only Nix store has them.
use std::{cmp::Ordering, collections::HashMap, io};

use bytes::Bytes;
use castore::{
    B3Digest, Directory, DirectoryService, Node,
    render::{Layout, LayoutBuilder, LayoutReader, TooLarge, castore_error},
};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use store::StorePath;

/// Size of a tar block (headers, padding unit).
const BLOCK: usize = 512;
/// Every entry's modification time, unless [`tar_layout_at`] says otherwise.
pub const MTIME: u64 = 1;
/// Mode of the store directory's own directories (`nix/`, `nix/store/`).
pub const STORE_DIR_MODE: u32 = 0o755;
/// Name of every pax extended header.
const PAX_NAME: &[u8] = b"././@PaxHeader";
/// Store paths whose directory closures are fetched at once.
const FETCH_PARALLEL: usize = 8;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarKind {
    Dir,
    /// A regular file: the castore blob with its contents, which must be
    /// `size` bytes long (rendering fails otherwise). The `executable` bit
    /// only picks [`TarEntry::file`]'s default mode.
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    /// A symbolic link, its target verbatim (non-empty, no NUL).
    Symlink {
        target: Bytes,
    },
}

/// One entry of a layer tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative path, as bytes (castore names need not be UTF-8): no
    /// leading `/`, no empty, `.` or `..` components, no NUL. A directory
    /// may end in `/`; [`tar_layout`] drops it, and writes directory names
    /// with one.
    pub path: Vec<u8>,
    pub kind: TarKind,
    /// Permission bits (at most 0o7777).
    pub mode: u32,
}

impl TarEntry {
    /// A directory, mode 0555.
    pub fn dir(path: impl Into<Vec<u8>>) -> Self {
        Self { path: path.into(), kind: TarKind::Dir, mode: 0o555 }
    }

    /// A regular file, mode 0444 or, executable, 0555.
    pub fn file(path: impl Into<Vec<u8>>, digest: B3Digest, size: u64, executable: bool) -> Self {
        let mode = if executable { 0o555 } else { 0o444 };
        Self { path: path.into(), kind: TarKind::File { digest, size, executable }, mode }
    }

    /// A symbolic link, mode 0777.
    pub fn symlink(path: impl Into<Vec<u8>>, target: impl Into<Bytes>) -> Self {
        Self { path: path.into(), kind: TarKind::Symlink { target: target.into() }, mode: 0o777 }
    }

    /// The entry for a castore node at `path`, with the default modes.
    pub fn of_node(path: impl Into<Vec<u8>>, node: &Node) -> Self {
        match node {
            Node::Directory { .. } => Self::dir(path),
            Node::File { digest, size, executable } => Self::file(path, *digest, *size, *executable),
            Node::Symlink { target } => Self::symlink(path, target.clone()),
        }
    }

    /// The same entry with another mode.
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    fn show(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Why entries cannot make a tar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("invalid tar entry path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid symlink target for tar entry {path:?}: {reason}")]
    InvalidTarget { path: String, reason: &'static str },
    #[error("invalid mode {mode:#o} for tar entry {path:?} (at most 0o7777)")]
    InvalidMode { path: String, mode: u32 },
    #[error("two different tar entries for {path:?}")]
    Duplicate { path: String },
    #[error("tar entry {path:?} lies inside {parent:?}, which is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("the tar would be larger than 2^64 bytes")]
    TooLarge,
}

impl From<TooLarge> for TarError {
    fn from(_: TooLarge) -> Self {
        TarError::TooLarge
    }
}

/// Every refusal is the caller's input: [`castore::Error::InvalidRequest`].
impl From<TarError> for castore::Error {
    fn from(e: TarError) -> Self {
        castore::Error::InvalidRequest(e.to_string())
    }
}

/// Orders paths as a tree walk meets them: component by component, each
/// compared as bytes (`/` sorts before every byte a name can hold).
fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.iter().map(key).cmp(b.iter().map(key))
}

/// Whether `dir` is a proper ancestor of `path`.
fn is_ancestor(dir: &[u8], path: &[u8]) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

/// Checks an entry and drops a directory's trailing `/`.
fn normalize(mut e: TarEntry) -> Result<TarEntry, TarError> {
    let invalid = |e: &TarEntry, reason| TarError::InvalidPath { path: e.show(), reason };
    if matches!(e.kind, TarKind::Dir) && e.path.len() > 1 && e.path.ends_with(b"/") {
        e.path.pop();
    }
    if e.path.is_empty() {
        return Err(invalid(&e, "empty"));
    }
    if e.path[0] == b'/' {
        return Err(invalid(&e, "absolute (starts with `/`)"));
    }
    if e.path.contains(&0) {
        return Err(invalid(&e, "contains NUL"));
    }
    for c in e.path.split(|b| *b == b'/') {
        match c {
            b"" => return Err(invalid(&e, "has an empty component (`//` or a trailing `/` on a non-directory)")),
            b"." | b".." => return Err(invalid(&e, "has a `.` or `..` component")),
            _ => {}
        }
    }
    if e.mode > 0o7777 {
        return Err(TarError::InvalidMode { path: e.show(), mode: e.mode });
    }
    if let TarKind::Symlink { target } = &e.kind {
        let reason = if target.is_empty() {
            Some("empty")
        } else if target.contains(&0) {
            Some("contains NUL")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(TarError::InvalidTarget { path: e.show(), reason });
        }
    }
    Ok(e)
}

/// Lays `entries` out as a tar (see the module documentation for the exact
/// bytes). Entries may come in any order; they are sorted. The same path
/// twice is one entry when both are equal and an error otherwise; a
/// directory not listed but holding entries is added (mode 0555); an entry
/// inside a file or symlink is an error.
pub fn tar_layout(entries: Vec<TarEntry>) -> Result<Layout, TarError> {
    tar_layout_at(entries, MTIME)
}

/// [`tar_layout`] with every entry's modification time `mtime` (seconds
/// since the epoch): nix-snapshotter's own layers use 0.
pub fn tar_layout_at(entries: Vec<TarEntry>, mtime: u64) -> Result<Layout, TarError> {
    let mut entries = entries.into_iter().map(normalize).collect::<Result<Vec<_>, _>>()?;
    entries.sort_by(|a, b| path_order(&a.path, &b.path));
    let mut b = LayoutBuilder::new();
    // Directories holding the current entry, outermost first.
    let mut open: Vec<Vec<u8>> = Vec::new();
    let mut prev: Option<&TarEntry> = None;
    for e in &entries {
        if let Some(p) = prev {
            if p.path == e.path {
                if p == e {
                    continue;
                }
                return Err(TarError::Duplicate { path: e.show() });
            }
            if !matches!(p.kind, TarKind::Dir) && is_ancestor(&p.path, &e.path) {
                return Err(TarError::NotADirectory { path: e.show(), parent: p.show() });
            }
        }
        while open.last().is_some_and(|dir| !is_ancestor(dir, &e.path)) {
            open.pop();
        }
        // Parents the entries do not name.
        let from = open.last().map_or(0, |dir| dir.len() + 1);
        for (i, _) in e.path.iter().enumerate().skip(from).filter(|(_, c)| **c == b'/') {
            let dir = e.path[..i].to_vec();
            header(&mut b, &dir, &TarKind::Dir, 0o555, mtime)?;
            open.push(dir);
        }
        header(&mut b, &e.path, &e.kind, e.mode, mtime)?;
        if let TarKind::File { digest, size, .. } = &e.kind {
            b.blob(*digest, *size)?;
            b.zeros(padding(*size))?;
        }
        if matches!(e.kind, TarKind::Dir) {
            open.push(e.path.clone());
        }
        prev = Some(e);
    }
    b.zeros(2 * BLOCK)?;
    Ok(b.finish())
}

/// Zero bytes after `size` bytes of contents, up to a block.
fn padding(size: u64) -> usize {
    (size.wrapping_neg() % BLOCK as u64) as usize
}

/// Writes `value` as octal digits filling `field` but for a closing NUL.
/// The caller makes sure it fits.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    debug_assert!(digits >= 22 || value < 1 << (3 * digits));
    let mut v = value;
    for c in field[..digits].iter_mut().rev() {
        *c = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

/// Sizes up to this fit ustar's 11 octal digits.
const MAX_OCTAL_SIZE: u64 = (1 << 33) - 1;

/// One 512-byte header block. `name` and `link` are cut to their fields.
fn block(name: &[u8], prefix: &[u8], mode: u32, size: u64, typeflag: u8, link: &[u8], mtime: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let name = &name[..name.len().min(100)];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    if size <= MAX_OCTAL_SIZE {
        octal(&mut h[124..136], size);
    } else {
        // Base-256: a set high bit, then the number big-endian.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime);
    h[156] = typeflag;
    let link = &link[..link.len().min(100)];
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname, gname: empty.
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    let prefix = &prefix[..prefix.len().min(155)];
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    // The checksum: the sum of the bytes with its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&c| c as u32).sum();
    octal(&mut h[148..155], sum as u64);
    h[155] = b' ';
    h
}

/// Splits a name into ustar's prefix (≤ 155 bytes) and name (≤ 100, not
/// empty) at a `/`, the prefix as long as it can be (as GNU tar does).
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    // A `/` at index i leaves name[i + 1..]; it must not be the last byte.
    let limit = name.len().saturating_sub(1).min(155);
    let i = (1..=limit).rev().find(|&i| name[i] == b'/')?;
    let rest = &name[i + 1..];
    (!rest.is_empty() && rest.len() <= 100).then_some((&name[..i], rest))
}

/// Appends one pax record, `"<len> <key>=<value>\n"`, its length counting
/// its own digits.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// An entry's header(s): a pax extended header first when its name or
/// link target does not fit ustar, then its ustar header.
fn header(b: &mut LayoutBuilder, path: &[u8], kind: &TarKind, mode: u32, mtime: u64) -> Result<(), TooLarge> {
    let mut name = path.to_vec();
    let (typeflag, size, link): (u8, u64, &[u8]) = match kind {
        TarKind::Dir => {
            name.push(b'/');
            (b'5', 0, b"")
        }
        TarKind::File { size, .. } => (b'0', *size, b""),
        TarKind::Symlink { target } => (b'2', 0, target),
    };
    let (prefix, short): (&[u8], &[u8]) =
        if name.len() <= 100 { (b"", &name) } else { split_name(&name).unwrap_or((b"", &name)) };
    let mut records = Vec::new();
    if short.len() > 100 {
        pax_record(&mut records, "path", &name);
    }
    if link.len() > 100 {
        pax_record(&mut records, "linkpath", link);
    }
    if !records.is_empty() {
        if std::str::from_utf8(&name).is_err() || std::str::from_utf8(link).is_err() {
            // Sorts before `linkpath` and `path`, so it applies to both.
            let mut charset = Vec::new();
            pax_record(&mut charset, "hdrcharset", b"BINARY");
            records.splice(0..0, charset);
        }
        b.bytes(&block(PAX_NAME, b"", 0o644, records.len() as u64, b'x', b"", mtime))?;
        b.bytes(&records)?;
        b.zeros(padding(records.len() as u64))?;
    }
    b.bytes(&block(short, prefix, mode, size, typeflag, link, mtime))
}

/// The entries of a layer holding `paths` (store path, root node) in
/// `store_dir`: the store directory's own directories (`nix/`,
/// `nix/store/`, mode 0755), then each path's whole tree (directory
/// closures fetched from `directories`, several at once). A path listed
/// twice with the same node counts once. The entries come sorted, ready for
/// [`tar_layout`] (with or without more).
pub async fn store_path_entries(
    paths: &[(StorePath, Node)],
    store_dir: &str,
    directories: &dyn DirectoryService,
) -> Result<Vec<TarEntry>, castore::Error> {
    store::store_path::validate_store_dir(store_dir)
        .map_err(|e| castore::Error::InvalidRequest(format!("store directory: {e}")))?;
    let mut paths: Vec<&(StorePath, Node)> = paths.iter().collect();
    paths.sort_by_key(|(p, _)| p.to_string());
    paths.dedup();
    if let Some(w) = paths.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(castore::Error::InvalidRequest(format!(
            "store path {} is listed with two different roots",
            w[0].0
        )));
    }

    // Every directory closure, fetched a few at a time.
    let roots: Vec<B3Digest> = paths
        .iter()
        .filter_map(|(_, n)| match n {
            Node::Directory { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect();
    let mut dirs: HashMap<B3Digest, Directory> = HashMap::new();
    let mut fetches = futures::stream::iter(roots)
        .map(|root| directories.get_recursive(&root).try_collect::<Vec<Directory>>())
        .buffer_unordered(FETCH_PARALLEL);
    while let Some(closure) = fetches.try_next().await? {
        for d in closure {
            dirs.entry(d.digest()).or_insert(d);
        }
    }
    let lookup = |digest: &B3Digest| {
        dirs.get(digest).ok_or_else(|| castore::Error::NotFound(format!("directory {digest} not found")))
    };

    let store = &store_dir.as_bytes()[1..];
    let mut out: Vec<TarEntry> = Vec::new();
    for (i, c) in store.iter().enumerate() {
        if *c == b'/' {
            out.push(TarEntry::dir(&store[..i]).with_mode(STORE_DIR_MODE));
        }
    }
    out.push(TarEntry::dir(store).with_mode(STORE_DIR_MODE));
    for (path, node) in paths {
        let mut base = store.to_vec();
        base.push(b'/');
        base.extend_from_slice(path.to_string().as_bytes());
        out.push(TarEntry::of_node(base.clone(), node));
        let Node::Directory { digest, .. } = node else { continue };
        // A walk in tree order: (the directory's path, its entries left).
        let mut stack = vec![(base, lookup(digest)?.entries())];
        while let Some((dir, entries)) = stack.last_mut() {
            let Some((name, node)) = entries.next() else {
                stack.pop();
                continue;
            };
            let mut p = Vec::with_capacity(dir.len() + 1 + name.as_bytes().len());
            p.extend_from_slice(dir);
            p.push(b'/');
            p.extend_from_slice(name.as_bytes());
            out.push(TarEntry::of_node(p.clone(), node));
            if let Node::Directory { digest, .. } = node {
                stack.push((p, lookup(digest)?.entries()));
            }
        }
    }
    Ok(out)
}

/// SHA-256 and length of what `reader` yields from its position to the end
/// of the rendering (of a fresh reader: the whole tar; a reader whose end
/// was set short fails). The bytes are hashed on a blocking thread while
/// the reader fetches ahead, and never kept.
pub async fn digest(reader: LayoutReader) -> Result<([u8; 32], u64), castore::Error> {
    let expected = reader.len() - reader.position().min(reader.len());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut sha = Sha256::new();
        let mut total = 0u64;
        while let Some(piece) = rx.blocking_recv() {
            total += piece.len() as u64;
            sha.update(&piece);
        }
        (<[u8; 32]>::from(sha.finalize()), total)
    });
    let mut reader = reader;
    while let Some(piece) = reader.next().await {
        let piece = piece.map_err(castore_error)?;
        if tx.send(piece).await.is_err() {
            break;
        }
    }
    drop(tx);
    let (sha, total) = hasher.await.map_err(|e| castore::Error::Io(io::Error::other(e)))?;
    if total != expected {
        return Err(castore::Error::Storage(format!("rendered {total} bytes of a layer of {expected}")));
    }
    Ok((sha, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sort_as_a_tree_walk() {
        let mut v: Vec<&[u8]> = vec![b"a-b", b"a/b", b"a", b"a/b/c", b"a.", b"b", b"a/a"];
        v.sort_by(|a, b| path_order(a, b));
        assert_eq!(v, [&b"a"[..], b"a/a", b"a/b", b"a/b/c", b"a-b", b"a.", b"b"]);
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for n in [0, 1, 80, 90, 91, 92, 93, 994, 995, 996, 9994] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'x'; n]);
            let (len, _) = std::str::from_utf8(&out).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), out.len(), "{n}");
        }
    }

    #[test]
    fn names_split_at_the_longest_prefix() {
        let long = format!("{}/{}", "a".repeat(150), "b".repeat(99));
        assert_eq!(split_name(long.as_bytes()), Some((&long.as_bytes()[..150], &long.as_bytes()[151..])));
        // No `/` leaves a name of at most 100 bytes.
        assert_eq!(split_name(format!("{}/{}", "a".repeat(10), "b".repeat(101)).as_bytes()), None);
        // A prefix of at most 155 bytes.
        assert_eq!(split_name(format!("{}/{}", "a".repeat(156), "b".repeat(10)).as_bytes()), None);
        // A directory's trailing slash is not a split point.
        let dir = format!("{}/", "a".repeat(120));
        assert_eq!(split_name(dir.as_bytes()), None);
    }

    #[test]
    fn big_sizes_are_base_256() {
        let h = block(b"f", b"", 0o444, 8 << 30, b'0', b"", MTIME);
        assert_eq!(h[124], 0x80);
        assert_eq!(u64::from_be_bytes(h[128..136].try_into().unwrap()), 8 << 30);
        let h = block(b"f", b"", 0o444, (8 << 30) - 1, b'0', b"", MTIME);
        assert_eq!(&h[124..136], b"77777777777\0");
    }

    #[test]
    fn entries_are_checked() {
        let bad = |e: TarEntry| tar_layout(vec![e]).unwrap_err();
        assert!(matches!(bad(TarEntry::dir("/abs")), TarError::InvalidPath { .. }));
        assert!(matches!(bad(TarEntry::dir("a//b")), TarError::InvalidPath { .. }));
        assert!(matches!(bad(TarEntry::dir("a/../b")), TarError::InvalidPath { .. }));
        assert!(matches!(bad(TarEntry::symlink("a/", "x")), TarError::InvalidPath { .. }));
        assert!(matches!(bad(TarEntry::symlink("a", "")), TarError::InvalidTarget { .. }));
        assert!(matches!(bad(TarEntry::dir("a").with_mode(0o10000)), TarError::InvalidMode { .. }));
        let e = tar_layout(vec![TarEntry::dir("a"), TarEntry::dir("a").with_mode(0o755)]).unwrap_err();
        assert!(matches!(e, TarError::Duplicate { .. }));
        let e = tar_layout(vec![TarEntry::symlink("a", "x"), TarEntry::dir("a/b")]).unwrap_err();
        assert!(matches!(e, TarError::NotADirectory { .. }), "{e}");
        // Equal duplicates are one entry, a trailing slash on a directory is dropped.
        let one = tar_layout(vec![TarEntry::dir("a")]).unwrap();
        assert_eq!(tar_layout(vec![TarEntry::dir("a/"), TarEntry::dir("a")]).unwrap().len(), one.len());
        assert_eq!(one.len(), 3 * BLOCK as u64);
    }
}
