//! Closure-info store paths: a content-addressed store path naming a whole
//! closure, as nix-snapshotter's `containerd.io/snapshot/nix-closure`
//! annotation wants it.
//!
//! The path is a directory holding one regular file, `store-paths`: the
//! closure's full store paths, sorted, one a line, each line ending in a
//! newline (the format of the `store-paths` file of nixpkgs' `closureInfo`).
//! Its references are the whole closure (never itself), and its store path
//! is the one Nix computes for a recursive SHA-256 addition with those
//! references ([`make_source_path`]), so the same closure always gives the
//! same path, Nix accepts it without a signature (`CA: fixed:r:sha256:…`),
//! and `nix store make-content-addressed` of a path with these contents and
//! references gives exactly this path.
//!
//! [`closure_info`] computes everything without a store; [`put_closure_info`]
//! stores it (castore blob and directory, then the PathInfo) so it is
//! fetchable like any other path, from the binary cache and over gRPC.
use std::sync::Arc;

use bytes::Bytes;
use castore::{BlobService, Directory, DirectoryService, Error, Name, Node, Result};
use sha2::{Digest, Sha256};

use crate::{
    ContentAddress, IngestionMethod, NixHash, PathInfo, PathInfoService, StorePath,
    store_path::{StorePathError, make_source_path},
};

/// The one file in a closure-info path.
pub const STORE_PATHS: &str = "store-paths";

/// A closure-info path, computed but not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosureInfo {
    pub store_path: StorePath,
    /// The closure, sorted by full path, without duplicates.
    pub references: Vec<StorePath>,
    /// The contents of `store-paths`.
    pub store_paths: Bytes,
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
}

impl ClosureInfo {
    /// The NAR of the path, as `nix-store --dump` writes it.
    pub fn nar(&self) -> Vec<u8> {
        nar_of(&self.store_paths)
    }

    /// The content address: `fixed:r:sha256:<nix32 NarHash>`.
    pub fn ca(&self) -> ContentAddress {
        ContentAddress::Fixed { method: IngestionMethod::Recursive, hash: NixHash::sha256(self.nar_sha256) }
    }
}

/// The `store-paths` file for `closure`: full paths in `store_dir`, sorted,
/// duplicates once, one a line, each followed by a newline (empty for an
/// empty closure).
pub fn store_paths_file(closure: &[StorePath], store_dir: &str) -> String {
    let mut lines: Vec<String> = closure.iter().map(|p| p.to_absolute(store_dir)).collect();
    lines.sort_unstable();
    lines.dedup();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Computes the closure-info path named `name` for `closure` (the closure
/// is taken as given: the caller makes sure it is closed under references).
/// Fails only when `name` is not a valid store path name.
pub fn closure_info(name: &str, closure: &[StorePath], store_dir: &str) -> Result<ClosureInfo, StorePathError> {
    let store_paths = Bytes::from(store_paths_file(closure, store_dir));
    let nar = nar_of(&store_paths);
    let nar_sha256: [u8; 32] = Sha256::digest(&nar).into();
    // Sorting basenames sorts the full paths too (one store dir); the
    // derived `Ord` of StorePath compares digest bytes, which Nix does not.
    let mut references = closure.to_vec();
    references.sort_unstable_by_key(|p| p.to_string());
    references.dedup();
    let store_path = make_source_path(name, &nar_sha256, &references, store_dir)?;
    Ok(ClosureInfo { store_path, references, store_paths, nar_sha256, nar_size: nar.len() as u64 })
}

/// Stores the closure-info path named `name` for `closure` and returns its
/// PathInfo (the stored one: a second call with the same closure finds the
/// first record and changes nothing).
///
/// The file goes into `blobs`, the directory into `directories`, then the
/// PathInfo (references = the closure, CA set, no signatures) into `paths`,
/// which refuses it (`FailedPrecondition`) while any closure path is not
/// stored there. An invalid `name` is an `InvalidRequest`.
pub async fn put_closure_info(
    name: &str,
    closure: &[StorePath],
    store_dir: &str,
    blobs: &Arc<dyn BlobService>,
    directories: &Arc<dyn DirectoryService>,
    paths: &dyn PathInfoService,
) -> Result<PathInfo> {
    let info = closure_info(name, closure, store_dir).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    let size = info.store_paths.len() as u64;
    let digest = blobs.put_bytes(info.store_paths.clone(), None).await?;
    let mut dir = Directory::default();
    let file_name = Name::new(STORE_PATHS).expect("a valid name");
    dir.add(file_name, Node::File { digest, size, executable: false })
        .map_err(|e| Error::Storage(format!("closure-info directory: {e}")))?;
    let node = Node::Directory { digest: dir.digest(), size: dir.size() };
    directories.put_closure(vec![dir]).await?;
    let ca = Some(info.ca());
    paths
        .put(PathInfo {
            store_path: info.store_path,
            node,
            references: info.references,
            nar_size: info.nar_size,
            nar_sha256: info.nar_sha256,
            signatures: vec![],
            deriver: None,
            ca,
        })
        .await
}

/// The NAR of a directory holding only `store-paths` with `contents`.
fn nar_of(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 256);
    for token in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        STORE_PATHS.as_bytes(),
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
        b")",
        b")",
    ] {
        out.extend_from_slice(&(token.len() as u64).to_le_bytes());
        out.extend_from_slice(token);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_STORE_DIR, nix32};

    fn path(s: &str) -> StorePath {
        s.parse().unwrap()
    }

    /// The closure-info path nix 2.8 made (`nix store make-content-addressed`
    /// of a derivation output whose `store-paths` lists these two paths).
    #[test]
    fn as_nix_made_it() {
        let a = path("d8mj2hp5b2mghbqpjc9anjj387i8451n-a");
        let b = path("qqp3ww8fpi17bp11zbg2p5cq7qyg18n7-b");
        let info = closure_info("closure-info", &[b.clone(), a.clone(), b.clone()], DEFAULT_STORE_DIR).unwrap();
        assert_eq!(info.store_path.to_string(), "pf2h49l89m39547gpfsrnmf641agxh0g-closure-info");
        assert_eq!(info.references, [a, b]);
        assert_eq!(
            &info.store_paths[..],
            b"/nix/store/d8mj2hp5b2mghbqpjc9anjj387i8451n-a\n/nix/store/qqp3ww8fpi17bp11zbg2p5cq7qyg18n7-b\n"
        );
        assert_eq!((info.nar_size, info.nar().len()), (384, 384));
        assert_eq!(nix32::encode(&info.nar_sha256), "17gvbzfv2609i26sidjpr8z0lgc87rswm9l65gs1r16yfflp834n");
        assert_eq!(info.ca().to_string(), "fixed:r:sha256:17gvbzfv2609i26sidjpr8z0lgc87rswm9l65gs1r16yfflp834n");
    }

    #[test]
    fn sorts_by_full_path_not_digest_bytes() {
        // nix32 spells the last digest byte first, so byte order and string
        // order disagree for these two.
        let mut hi = [0u8; 20];
        hi[0] = 0xff;
        let mut lo = [0u8; 20];
        lo[19] = 0x01;
        let (p, q) = (StorePath::from_parts(hi, "x").unwrap(), StorePath::from_parts(lo, "x").unwrap());
        assert!(p > q && p.to_string() < q.to_string());
        let info = closure_info("c", &[q.clone(), p.clone()], DEFAULT_STORE_DIR).unwrap();
        assert_eq!(info.references, [p.clone(), q.clone()]);
        let text = String::from_utf8(info.store_paths.to_vec()).unwrap();
        assert_eq!(text, format!("/nix/store/{p}\n/nix/store/{q}\n"));
    }

    #[test]
    fn empty_closure_and_bad_name() {
        let info = closure_info("empty", &[], DEFAULT_STORE_DIR).unwrap();
        assert!(info.store_paths.is_empty() && info.references.is_empty());
        assert_eq!(info.nar_size, info.nar().len() as u64);
        assert!(closure_info("no/slash", &[], DEFAULT_STORE_DIR).is_err());
    }
}
