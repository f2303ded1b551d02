//! The reference vectors in `tests/vectors/castore.json`: NARs made by Nix,
//! with their NarSize, NarHash and the castore root entry snix computes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One reference vector.
#[derive(Clone, Debug, Deserialize)]
pub struct Vector {
    pub name: String,
    /// The NAR file, as an absolute path.
    pub nar: PathBuf,
    pub nar_size: u64,
    pub nar_sha256_hex: String,
    pub nar_sha256_nix32: String,
    /// What snix ingests the NAR to.
    #[serde(rename = "snix_root_entry")]
    pub root: RootEntry,
}

/// A castore root entry as the vectors spell it: digests as
/// `blake3-<base64>` strings (each crate parses them into its own types).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RootEntry {
    Directory { digest: String, size: u64 },
    File { digest: String, size: u64, executable: bool },
    Symlink { target: String },
}

/// The `castore::Node` a [`RootEntry`] names: `castore_node!(&vector.root)`.
///
/// A macro, expanded in the calling crate (which must depend on castore),
/// because testkit itself cannot depend on castore: castore's own tests use
/// testkit. Panics on a digest that does not parse.
#[macro_export]
macro_rules! castore_node {
    ($entry:expr) => {{
        let digest = |d: &str| d.parse::<castore::B3Digest>().expect("digest parses");
        match $entry {
            $crate::RootEntry::Directory { digest: d, size } => {
                castore::Node::Directory { digest: digest(d), size: *size }
            }
            $crate::RootEntry::File { digest: d, size, executable } => {
                castore::Node::File { digest: digest(d), size: *size, executable: *executable }
            }
            $crate::RootEntry::Symlink { target } => castore::Node::Symlink { target: target.clone().into() },
        }
    }};
}

/// `tests/vectors` at the top of the workspace.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

/// All the reference vectors (at least nine: the full set).
pub fn vectors() -> Vec<Vector> {
    let dir = dir();
    let text = std::fs::read_to_string(dir.join("castore.json")).expect("tests/vectors/castore.json");
    let mut vectors: Vec<Vector> = serde_json::from_str(&text).expect("vector JSON");
    assert!(vectors.len() >= 9, "expected the full vector set");
    for v in &mut vectors {
        v.nar = dir.join(&v.nar);
    }
    vectors
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_vector_loads() {
        for v in super::vectors() {
            assert_eq!(std::fs::metadata(&v.nar).expect("vector NAR").len(), v.nar_size, "{}", v.name);
        }
    }
}
