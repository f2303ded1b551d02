//! Which PathInfos a fetch with trusted keys accepts.
//!
//! As Nix's `require-sigs`: a path needs a valid signature by a trusted key
//! over its fingerprint (store path, NarHash, NarSize, references), or must
//! be content-addressed in a way that proves itself. The NarHash signed is
//! then checked against the tree on disk, so a signature covers the bytes.
use store::{ContentAddress, IngestionMethod, PathInfo, VerifyingKey, store_path::make_source_path};

use crate::FetchError;

/// Checks `info` against `keys` (nothing to check without keys).
pub(crate) fn check(info: &PathInfo, keys: &[VerifyingKey], store_dir: &str) -> Result<(), FetchError> {
    if keys.is_empty() {
        return Ok(());
    }
    let fingerprint = info.fingerprint(store_dir);
    if info.signatures.iter().any(|sig| keys.iter().any(|k| k.verify(&fingerprint, sig))) {
        return Ok(());
    }
    if proves_itself(info, store_dir) {
        return Ok(());
    }
    let names = |v: Vec<&str>| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
    Err(FetchError::Untrusted {
        path: info.store_path.to_absolute(store_dir),
        trusted: names(keys.iter().map(VerifyingKey::name).collect()),
        signatures: names(info.signatures.iter().map(|s| s.name.as_str()).collect()),
    })
}

/// Whether the store path is the one its content address gives: a
/// recursive SHA-256 address equal to the NarHash (which the fetch checks
/// against the tree), with the references the path is computed from.
/// Self-references cannot be checked this way (Nix hashes such paths
/// modulo their own hash), nor text and flat addresses here: those need a
/// signature.
fn proves_itself(info: &PathInfo, store_dir: &str) -> bool {
    let Some(ContentAddress::Fixed { method: IngestionMethod::Recursive, hash }) = info.ca else { return false };
    if hash.as_sha256() != Some(info.nar_sha256) || info.references.contains(&info.store_path) {
        return false;
    }
    make_source_path(info.store_path.name(), &info.nar_sha256, &info.references, store_dir)
        .is_ok_and(|p| p == info.store_path)
}

#[cfg(test)]
mod tests {
    use castore::Node;
    use store::{NixHash, SigningKey, StorePath};

    use super::*;

    fn info(name: &str) -> PathInfo {
        PathInfo {
            store_path: StorePath::from_parts([7; 20], name).unwrap(),
            node: Node::Symlink { target: "x".into() },
            references: vec![],
            nar_size: 120,
            nar_sha256: [3; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    #[test]
    fn signatures_by_trusted_keys_only() {
        let trusted = SigningKey::generate("trusted-1").unwrap();
        let other = SigningKey::generate("other-1").unwrap();
        let keys = [trusted.verifying_key()];
        let mut i = info("hello");
        assert!(check(&i, &[], "/nix/store").is_ok(), "no keys, no check");
        assert!(matches!(check(&i, &keys, "/nix/store"), Err(FetchError::Untrusted { .. })));
        i.signatures.push(other.sign(&i.fingerprint("/nix/store")));
        let err = check(&i, &keys, "/nix/store").unwrap_err().to_string();
        assert!(err.contains("trusted-1") && err.contains("other-1"), "{err}");
        i.signatures.push(trusted.sign(&i.fingerprint("/nix/store")));
        assert!(check(&i, &keys, "/nix/store").is_ok());
        // The signature covers the NarHash and the store dir.
        assert!(check(&i, &keys, "/other/store").is_err());
        i.nar_sha256[0] ^= 1;
        assert!(check(&i, &keys, "/nix/store").is_err());
    }

    #[test]
    fn recursive_content_addresses_prove_themselves() {
        let keys = [SigningKey::generate("k-1").unwrap().verifying_key()];
        let refs = vec![StorePath::from_parts([9; 20], "dep").unwrap()];
        let sha = [5; 32];
        let path = make_source_path("src", &sha, &refs, "/nix/store").unwrap();
        let mut i = PathInfo {
            store_path: path,
            references: refs,
            nar_sha256: sha,
            ca: Some(ContentAddress::Fixed { method: IngestionMethod::Recursive, hash: NixHash::sha256(sha) }),
            ..info("src")
        };
        assert!(check(&i, &keys, "/nix/store").is_ok());
        // A content address that does not give this store path proves nothing.
        i.ca = Some(ContentAddress::Fixed { method: IngestionMethod::Recursive, hash: NixHash::sha256([6; 32]) });
        assert!(check(&i, &keys, "/nix/store").is_err());
        i.ca = Some(ContentAddress::Text { sha256: sha });
        assert!(check(&i, &keys, "/nix/store").is_err());
    }
}
