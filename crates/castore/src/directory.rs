//! [`Directory`] and [`Node`]: the castore's Merkle DAG, with the validation
//! rules and digest the tvix/snix protocol defines.
//!
//! A `Directory` can only be built valid: [`Directory::try_from`] on a
//! protobuf message checks every rule, and [`Directory::add`] keeps them.
//! Its [`digest`](Directory::digest) is the BLAKE3 of the canonical protobuf
//! encoding, the one digest function every part of storefront uses.
use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use crate::{B3Digest, proto};

/// Longest entry name the protocol allows, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target the protocol allows, in bytes.
pub const MAX_TARGET_LEN: usize = 4095;

/// Why a directory or entry is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("invalid entry name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("entry {name:?} is not in strictly ascending order in its list")]
    Unsorted { name: String },
    #[error("entry name {name:?} appears more than once")]
    Duplicate { name: String },
    #[error("entry {name:?}: digest must be 32 bytes, got {len}")]
    DigestLength { name: String, len: usize },
    #[error("symlink {name:?}: invalid target: {reason}")]
    InvalidTarget { name: String, reason: &'static str },
    #[error("directory size overflows u64")]
    SizeOverflow,
    #[error("entry has no node set")]
    EmptyEntry,
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// The name of an entry in a [`Directory`]: non-empty, at most 255 bytes,
/// not `.` or `..`, and free of `/` and NUL. Ordered as bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Bytes);

impl Name {
    pub fn new(name: impl Into<Bytes>) -> Result<Self, DirectoryError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_NAME_LEN {
            Some("longer than 255 bytes")
        } else if name.as_ref() == b"." || name.as_ref() == b".." {
            Some("`.` and `..` are not names")
        } else if name.contains(&b'/') {
            Some("contains `/`")
        } else if name.contains(&0) {
            Some("contains NUL")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(DirectoryError::InvalidName { name: lossy(&name), reason }),
            None => Ok(Self(name)),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", lossy(&self.0))
    }
}

/// What an entry points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child directory: its digest and its `size` (see [`Directory::size`]).
    Directory { digest: B3Digest, size: u64 },
    /// A regular file: the digest and length of its contents.
    File { digest: B3Digest, size: u64, executable: bool },
    /// A symbolic link, its target kept verbatim (non-empty, no NUL, ≤ 4095 bytes).
    Symlink { target: Bytes },
}

impl Node {
    /// Checks a symlink target; other nodes are valid by construction.
    fn validate(&self, name: &[u8]) -> Result<(), DirectoryError> {
        if let Node::Symlink { target } = self {
            let reason = if target.is_empty() {
                Some("empty")
            } else if target.len() > MAX_TARGET_LEN {
                Some("longer than 4095 bytes")
            } else if target.contains(&0) {
                Some("contains NUL")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(DirectoryError::InvalidTarget { name: lossy(name), reason });
            }
        }
        Ok(())
    }

    /// Reads a protobuf `Entry` (e.g. a store path's root), returning its name
    /// unvalidated (root names are store path basenames, or empty).
    pub fn from_entry(entry: proto::Entry) -> Result<(Bytes, Node), DirectoryError> {
        use proto::entry::Entry as E;
        let (name, node) = match entry.entry.ok_or(DirectoryError::EmptyEntry)? {
            E::Directory(d) => (d.name.clone(), dir_node(&d.name, &d.digest, d.size)?),
            E::File(f) => (f.name.clone(), file_node(&f.name, &f.digest, f.size, f.executable)?),
            E::Symlink(s) => (s.name, Node::Symlink { target: s.target }),
        };
        node.validate(&name)?;
        Ok((name, node))
    }

    /// This node as a protobuf `Entry` named `name`.
    pub fn to_entry(&self, name: Bytes) -> proto::Entry {
        use proto::entry::Entry as E;
        let entry = match self.clone() {
            Node::Directory { digest, size } => {
                E::Directory(proto::DirectoryEntry { name, digest: digest.to_bytes(), size })
            }
            Node::File { digest, size, executable } => {
                E::File(proto::FileEntry { name, digest: digest.to_bytes(), size, executable })
            }
            Node::Symlink { target } => E::Symlink(proto::SymlinkEntry { name, target }),
        };
        proto::Entry { entry: Some(entry) }
    }
}

fn digest_of(name: &[u8], digest: &[u8]) -> Result<B3Digest, DirectoryError> {
    B3Digest::try_from(digest).map_err(|_| DirectoryError::DigestLength { name: lossy(name), len: digest.len() })
}

fn dir_node(name: &[u8], digest: &[u8], size: u64) -> Result<Node, DirectoryError> {
    Ok(Node::Directory { digest: digest_of(name, digest)?, size })
}

fn file_node(name: &[u8], digest: &[u8], size: u64, executable: bool) -> Result<Node, DirectoryError> {
    Ok(Node::File { digest: digest_of(name, digest)?, size, executable })
}

/// A directory: named entries, unique by name.
///
/// ```
/// use castore::{B3Digest, Directory, Name, Node};
/// let mut dir = Directory::default();
/// dir.add(Name::new("hello")?, Node::File { digest: B3Digest::of(b"hi\n"), size: 3, executable: false })?;
/// assert_eq!(dir.size(), 2);
/// assert!(dir.add(Name::new("hello")?, Node::Symlink { target: "x".into() }).is_err());
/// # Ok::<(), castore::DirectoryError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    entries: BTreeMap<Name, Node>,
    /// Sum of child directory sizes, kept so `size` never overflows.
    child_sizes: u64,
}

impl Directory {
    /// Adds an entry, refusing a duplicate name, a bad symlink target or a
    /// size overflow.
    pub fn add(&mut self, name: Name, node: Node) -> Result<(), DirectoryError> {
        node.validate(name.as_bytes())?;
        if self.entries.contains_key(&name) {
            return Err(DirectoryError::Duplicate { name: lossy(name.as_bytes()) });
        }
        let child_sizes = match node {
            Node::Directory { size, .. } => self.child_sizes.checked_add(size),
            _ => Some(self.child_sizes),
        };
        let child_sizes = child_sizes.ok_or(DirectoryError::SizeOverflow)?;
        let n = self.entries.len() as u64 + 1;
        n.checked_mul(2).and_then(|twice| twice.checked_add(child_sizes)).ok_or(DirectoryError::SizeOverflow)?;
        self.child_sizes = child_sizes;
        self.entries.insert(name, node);
        Ok(())
    }

    /// Entries in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&Name, &Node)> {
        self.entries.iter()
    }

    pub fn get(&self, name: &Name) -> Option<&Node> {
        self.entries.get(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Child directories: name, digest and the size recorded for them.
    pub fn directories(&self) -> impl Iterator<Item = (&Name, B3Digest, u64)> {
        self.entries.iter().filter_map(|(name, node)| match node {
            Node::Directory { digest, size } => Some((name, *digest, *size)),
            _ => None,
        })
    }

    /// The `size` a parent records for this directory, by the formula the
    /// deployed tvix/snix implementations compute and check:
    /// `2 * entries + sum(child directory sizes)`.
    pub fn size(&self) -> u64 {
        2 * self.entries.len() as u64 + self.child_sizes
    }

    /// The `size` by the formula of the protocol's comments:
    /// `entries + sum(child directory sizes)`. Accepted on input only.
    pub fn size_documented(&self) -> u64 {
        self.entries.len() as u64 + self.child_sizes
    }

    /// Whether `size`, as a parent recorded it, fits this directory under
    /// either formula.
    pub fn size_matches(&self, size: u64) -> bool {
        size == self.size() || size == self.size_documented()
    }

    /// The canonical protobuf message: three lists, each in name order.
    pub fn to_proto(&self) -> proto::Directory {
        let mut out = proto::Directory::default();
        for (name, node) in &self.entries {
            let name = name.0.clone();
            match node.clone() {
                Node::Directory { digest, size } => {
                    out.directories.push(proto::DirectoryEntry { name, digest: digest.to_bytes(), size })
                }
                Node::File { digest, size, executable } => {
                    out.files.push(proto::FileEntry { name, digest: digest.to_bytes(), size, executable })
                }
                Node::Symlink { target } => out.symlinks.push(proto::SymlinkEntry { name, target }),
            }
        }
        out
    }

    /// The canonical encoding, whose BLAKE3 is the digest.
    pub fn encode(&self) -> Bytes {
        self.to_proto().encode_to_vec().into()
    }

    /// BLAKE3 of the canonical encoding.
    pub fn digest(&self) -> B3Digest {
        B3Digest::of(&self.encode())
    }

    /// Decodes and validates a stored or received encoding.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let msg = proto::Directory::decode(buf)?;
        Ok(Self::try_from(msg)?)
    }
}

/// A directory encoding that is not valid protobuf or not a valid directory.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Directory message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error(transparent)]
    Invalid(#[from] DirectoryError),
}

/// Checks that each list ascends strictly by name, then builds the directory
/// (which checks uniqueness across lists, names, digests, targets, sizes).
impl TryFrom<proto::Directory> for Directory {
    type Error = DirectoryError;

    fn try_from(msg: proto::Directory) -> Result<Self, Self::Error> {
        fn ascending<'a>(names: impl Iterator<Item = &'a Bytes>) -> Result<(), DirectoryError> {
            let mut prev: Option<&Bytes> = None;
            for name in names {
                match prev {
                    Some(p) if p == name => {
                        return Err(DirectoryError::Duplicate { name: lossy(name) });
                    }
                    Some(p) if p > name => return Err(DirectoryError::Unsorted { name: lossy(name) }),
                    _ => prev = Some(name),
                }
            }
            Ok(())
        }
        ascending(msg.directories.iter().map(|e| &e.name))?;
        ascending(msg.files.iter().map(|e| &e.name))?;
        ascending(msg.symlinks.iter().map(|e| &e.name))?;

        let mut dir = Directory::default();
        for e in msg.directories {
            dir.add(Name::new(e.name.clone())?, dir_node(&e.name, &e.digest, e.size)?)?;
        }
        for e in msg.files {
            let node = file_node(&e.name, &e.digest, e.size, e.executable)?;
            dir.add(Name::new(e.name)?, node)?;
        }
        for e in msg.symlinks {
            dir.add(Name::new(e.name)?, Node::Symlink { target: e.target })?;
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> proto::FileEntry {
        proto::FileEntry { name: name.to_owned().into(), digest: vec![1; 32].into(), size: 1, executable: false }
    }

    #[test]
    fn empty_directory_digest_is_blake3_of_nothing() {
        assert_eq!(Directory::default().digest(), B3Digest::of(b""));
        assert_eq!(Directory::default().size(), 0);
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(Name::new(bad.to_owned()).is_err(), "{bad:?} accepted");
        }
        assert!(Name::new(vec![b'a'; 256]).is_err());
        assert!(Name::new(vec![b'a'; 255]).is_ok());
        assert!(Name::new("...").is_ok());
    }

    #[test]
    fn unsorted_and_duplicate_lists_are_refused() {
        let unsorted = proto::Directory { files: vec![file("b"), file("a")], ..Default::default() };
        assert!(matches!(Directory::try_from(unsorted), Err(DirectoryError::Unsorted { .. })));
        let dup = proto::Directory { files: vec![file("a"), file("a")], ..Default::default() };
        assert!(matches!(Directory::try_from(dup), Err(DirectoryError::Duplicate { .. })));
        let across = proto::Directory {
            files: vec![file("a")],
            symlinks: vec![proto::SymlinkEntry { name: "a".into(), target: "t".into() }],
            ..Default::default()
        };
        assert!(matches!(Directory::try_from(across), Err(DirectoryError::Duplicate { .. })));
    }

    #[test]
    fn bad_digests_targets_and_sizes_are_refused() {
        let mut short = file("a");
        short.digest = vec![0; 31].into();
        let msg = proto::Directory { files: vec![short], ..Default::default() };
        assert!(matches!(Directory::try_from(msg), Err(DirectoryError::DigestLength { len: 31, .. })));

        for target in [&b""[..], b"a\0", &[b'x'; 4096]] {
            let msg = proto::Directory {
                symlinks: vec![proto::SymlinkEntry { name: "l".into(), target: Bytes::copy_from_slice(target) }],
                ..Default::default()
            };
            assert!(matches!(Directory::try_from(msg), Err(DirectoryError::InvalidTarget { .. })));
        }

        let huge = |name: &str| proto::DirectoryEntry {
            name: name.to_owned().into(),
            digest: vec![0; 32].into(),
            size: u64::MAX - 1,
        };
        let msg = proto::Directory { directories: vec![huge("a"), huge("b")], ..Default::default() };
        assert_eq!(Directory::try_from(msg), Err(DirectoryError::SizeOverflow));
    }

    #[test]
    fn both_size_formulas() {
        let child = Directory::default();
        let mut dir = Directory::default();
        dir.add(Name::new("d").unwrap(), Node::Directory { digest: child.digest(), size: 0 }).unwrap();
        dir.add(Name::new("f").unwrap(), Node::File { digest: B3Digest::of(b""), size: 0, executable: false }).unwrap();
        assert_eq!(dir.size(), 4);
        assert_eq!(dir.size_documented(), 2);
        assert!(dir.size_matches(2) && dir.size_matches(4) && !dir.size_matches(3));
    }

    #[test]
    fn proto_round_trip_keeps_bytes() {
        let msg = proto::Directory {
            directories: vec![proto::DirectoryEntry { name: "z".into(), digest: vec![2; 32].into(), size: 3 }],
            files: vec![file("a"), file("b")],
            symlinks: vec![proto::SymlinkEntry { name: "c".into(), target: "/nix/store".into() }],
        };
        let dir = Directory::try_from(msg.clone()).unwrap();
        assert_eq!(dir.to_proto(), msg);
        assert_eq!(dir.digest(), B3Digest::of(&msg.encode_to_vec()));
    }
}
