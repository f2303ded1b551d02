//! Store paths: `<store dir>/<nix32 digest>-<name>`.
//!
//! Also how Nix computes a store path from content ([`make_store_path`],
//! [`make_source_path`]): the fingerprint
//! `<type>:sha256:<hex of inner hash>:<store dir>:<name>` is hashed with
//! SHA-256 and XOR-folded to 20 bytes ([`compress_hash`]).
use std::fmt;

use sha2::{Digest, Sha256};

use crate::nix32;

/// The store directory nearly everyone uses.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
/// Bytes in a store path digest.
pub const DIGEST_LEN: usize = 20;
/// Characters in the nix32 spelling of a store path digest.
pub const ENCODED_DIGEST_LEN: usize = nix32::encoded_len(DIGEST_LEN);
/// Longest name Nix accepts (basename ≤ 32 + 1 + 211 bytes).
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("{0:?}: not a store path basename (<32 nix32 chars>-<name>)")]
    Shape(String),
    #[error("{0:?}: the hash part is not nix32")]
    Digest(String),
    #[error("{path:?}: invalid name: {reason}")]
    Name { path: String, reason: &'static str },
    #[error("{path:?}: not inside the store directory {store_dir}")]
    OutsideStore { path: String, store_dir: String },
    #[error("{0:?}: the store directory must be an absolute path without a trailing slash")]
    StoreDir(String),
}

/// A store path without its store directory: a 20-byte digest and a name.
///
/// Displays as its basename, `<nix32 digest>-<name>`; use
/// [`StorePath::to_absolute`] for the full path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: String,
}

impl StorePath {
    /// Builds a store path from its parts, validating the name.
    pub fn from_parts(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self, StorePathError> {
        validate_name(name).map_err(|reason| StorePathError::Name { path: name.to_owned(), reason })?;
        Ok(Self { digest, name: name.to_owned() })
    }

    /// Parses a basename such as `7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12`.
    pub fn from_basename(s: &str) -> Result<Self, StorePathError> {
        let (hash, name) = match s.split_at_checked(ENCODED_DIGEST_LEN) {
            Some((hash, rest)) if rest.starts_with('-') => (hash, &rest[1..]),
            _ => return Err(StorePathError::Shape(s.to_owned())),
        };
        let digest = nix32::decode::<DIGEST_LEN>(hash).ok_or_else(|| StorePathError::Digest(s.to_owned()))?;
        validate_name(name).map_err(|reason| StorePathError::Name { path: s.to_owned(), reason })?;
        Ok(Self { digest, name: name.to_owned() })
    }

    /// Parses a basename given as bytes (castore entry names are bytes).
    pub fn from_basename_bytes(b: &[u8]) -> Result<Self, StorePathError> {
        let s = std::str::from_utf8(b).map_err(|_| StorePathError::Shape(String::from_utf8_lossy(b).into_owned()))?;
        Self::from_basename(s)
    }

    /// Parses an absolute path directly inside `store_dir`.
    pub fn from_absolute(path: &str, store_dir: &str) -> Result<Self, StorePathError> {
        let outside = || StorePathError::OutsideStore { path: path.to_owned(), store_dir: store_dir.to_owned() };
        let base = path.strip_prefix(store_dir).and_then(|r| r.strip_prefix('/')).ok_or_else(outside)?;
        if base.contains('/') {
            return Err(outside());
        }
        Self::from_basename(base)
    }

    /// Parses an absolute path inside `store_dir` that may go further into
    /// the path (`/nix/store/…-hello/bin/hello`), returning the store path
    /// and the rest (without its leading slash).
    pub fn from_absolute_prefix<'a>(path: &'a str, store_dir: &str) -> Result<(Self, &'a str), StorePathError> {
        let outside = || StorePathError::OutsideStore { path: path.to_owned(), store_dir: store_dir.to_owned() };
        let base = path.strip_prefix(store_dir).and_then(|r| r.strip_prefix('/')).ok_or_else(outside)?;
        let (first, rest) = base.split_once('/').unwrap_or((base, ""));
        Ok((Self::from_basename(first)?, rest))
    }

    /// The 20-byte digest.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The nix32 hash part (what `<hash>.narinfo` is named after).
    pub fn hash_part(&self) -> String {
        nix32::encode(&self.digest)
    }

    /// `<store_dir>/<basename>`.
    pub fn to_absolute(&self, store_dir: &str) -> String {
        format!("{store_dir}/{self}")
    }

    /// Whether this is a derivation (`….drv`).
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", nix32::encode(&self.digest), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl std::str::FromStr for StorePath {
    type Err = StorePathError;

    /// Accepts a basename or an absolute path in [`DEFAULT_STORE_DIR`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with('/') { Self::from_absolute(s, DEFAULT_STORE_DIR) } else { Self::from_basename(s) }
    }
}

/// Nix's `compressHash`: folds `hash` into 20 bytes by XOR-ing byte `i`
/// into byte `i % 20` (what `nix-hash --truncate` prints).
pub fn compress_hash(hash: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    for (i, b) in hash.iter().enumerate() {
        out[i % DIGEST_LEN] ^= b;
    }
    out
}

/// Nix's `makeStorePath`: the store path whose digest is the compressed
/// SHA-256 of `<kind>:sha256:<hex of inner_hash>:<store_dir>:<name>`.
///
/// `kind` is the whole type string, references included (`source`,
/// `source:/nix/store/…-a:/nix/store/…-b`, `text:…`, `output:out`).
/// Fails only when `name` is not a valid store path name.
pub fn make_store_path(
    kind: &str,
    inner_hash: &[u8; 32],
    name: &str,
    store_dir: &str,
) -> Result<StorePath, StorePathError> {
    validate_name(name).map_err(|reason| StorePathError::Name { path: name.to_owned(), reason })?;
    let hex = data_encoding::HEXLOWER.encode(inner_hash);
    let fingerprint = format!("{kind}:sha256:{hex}:{store_dir}:{name}");
    let digest = compress_hash(&Sha256::digest(fingerprint.as_bytes()));
    Ok(StorePath { digest, name: name.to_owned() })
}

/// The store path Nix gives contents added recursively with SHA-256
/// (`nix-store --add`, `builtins.path`, `nix store make-content-addressed`,
/// content-addressed derivation outputs): `makeFixedOutputPath` with method
/// recursive and sha256, which is [`make_store_path`] with the type
/// `source` followed by `:<full path>` for each reference, in sorted order
/// (duplicates count once). The content address is
/// `fixed:r:sha256:<nix32 of nar_sha256>`.
///
/// Self-references are not expressible here (Nix would append `:self` and
/// hash the NAR modulo the path's own hash part): pass only other paths.
pub fn make_source_path(
    name: &str,
    nar_sha256: &[u8; 32],
    references: &[StorePath],
    store_dir: &str,
) -> Result<StorePath, StorePathError> {
    let mut refs: Vec<String> = references.iter().map(|r| r.to_absolute(store_dir)).collect();
    refs.sort_unstable();
    refs.dedup();
    let mut kind = String::from("source");
    for r in &refs {
        kind.push(':');
        kind.push_str(r);
    }
    make_store_path(&kind, nar_sha256, name, store_dir)
}

/// Checks a store path name: 1..=211 bytes of `[A-Za-z0-9+-._?=]`, not
/// starting with a dot.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 211 bytes");
    }
    if name.starts_with('.') {
        return Err("starts with a dot");
    }
    if !name.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)) {
        return Err("contains a character outside [A-Za-z0-9+-._?=]");
    }
    Ok(())
}

/// Checks a store directory: absolute, no trailing slash, no `.`/`..` parts.
pub fn validate_store_dir(dir: &str) -> Result<(), StorePathError> {
    let ok = dir.starts_with('/')
        && dir.len() > 1
        && !dir.ends_with('/')
        && dir[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok { Ok(()) } else { Err(StorePathError::StoreDir(dir.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12";

    #[test]
    fn parses_and_prints() {
        let p: StorePath = HELLO.parse().unwrap();
        assert_eq!(p.name(), "hello-2.12");
        assert_eq!(p.to_string(), HELLO);
        assert_eq!(p.hash_part(), "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz");
        let abs = p.to_absolute(DEFAULT_STORE_DIR);
        assert_eq!(abs, format!("/nix/store/{HELLO}"));
        assert_eq!(StorePath::from_absolute(&abs, "/nix/store").unwrap(), p);
        assert_eq!(StorePath::from_absolute(&format!("/gnu/store/{HELLO}"), "/gnu/store").unwrap(), p);
        let inner = format!("{abs}/bin/hello");
        let (q, rest) = StorePath::from_absolute_prefix(&inner, "/nix/store").unwrap();
        assert_eq!((q, rest), (p, "bin/hello"));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz",
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-",
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxlzhello",
            "eh7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello",
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-.hello",
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hel/lo",
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hel lo",
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxl-hello",
        ] {
            assert!(StorePath::from_basename(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-{}", "a".repeat(212));
        assert!(StorePath::from_basename(&long).is_err());
        assert!(StorePath::from_basename(&long[..long.len() - 1]).is_ok());
        assert!(StorePath::from_absolute(&format!("/nix/store/{HELLO}/bin"), "/nix/store").is_err());
        assert!(StorePath::from_absolute(&format!("/nix/storex/{HELLO}"), "/nix/store").is_err());
        assert!(validate_store_dir("/nix/store").is_ok());
        for bad in ["", "/", "nix/store", "/nix/store/", "/nix/../store"] {
            assert!(validate_store_dir(bad).is_err(), "{bad:?}");
        }
    }

    fn sha256_of(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn from_hex<const N: usize>(s: &str) -> [u8; N] {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap().try_into().unwrap()
    }

    #[test]
    fn compress_hash_as_nix_hash_truncate() {
        // `nix-hash --flat --type sha256 --truncate` (nix 2.8) of a file
        // holding `hello world`, and of an empty file.
        let h = compress_hash(&sha256_of(b"hello world"));
        assert_eq!(h, from_hex::<20>("c31ea75703c5c9a447c19f3eda7dabfac484efe3"));
        assert_eq!(nix32::encode(&h), "wgpq9i7smdyxlglzq53s9jf50dbsf7n3");
        assert_eq!(compress_hash(&sha256_of(b"")), from_hex::<20>("872b570e3c69850fe2a94c9d996fb92427ae41e4"));
        assert_eq!(compress_hash(&[1; 20]), [1; 20]);
        assert_eq!(compress_hash(&[]), [0; 20]);
    }

    /// A directory `closure-info` holding one file `store-paths` that lists
    /// two paths (NarHash `sha256:17gvbzfv…`, 384 bytes), as nix 2.8 stored
    /// it: by `nix-store --add` (no references), and by
    /// `nix store make-content-addressed` of a derivation output with the
    /// same contents whose references are the two listed paths.
    #[test]
    fn source_paths_as_nix_computes_them() {
        let nar_sha256 = from_hex::<32>("960c74a973de841cf42b86a6ca753e883d0a3eca57b6a88d880918b1dd5ffb9d");
        assert_eq!(nix32::encode(&nar_sha256), "17gvbzfv2609i26sidjpr8z0lgc87rswm9l65gs1r16yfflp834n");
        let plain = make_source_path("closure-info", &nar_sha256, &[], DEFAULT_STORE_DIR).unwrap();
        assert_eq!(plain.to_string(), "3lvz3ymzd3gviy1j25lkzlll7wf4y143-closure-info");
        let a: StorePath = "d8mj2hp5b2mghbqpjc9anjj387i8451n-a".parse().unwrap();
        let b: StorePath = "qqp3ww8fpi17bp11zbg2p5cq7qyg18n7-b".parse().unwrap();
        let with_refs = make_source_path("closure-info", &nar_sha256, &[b.clone(), a.clone()], DEFAULT_STORE_DIR);
        assert_eq!(with_refs.unwrap().to_string(), "pf2h49l89m39547gpfsrnmf641agxh0g-closure-info");
        // Order and duplicates do not matter; the store dir does.
        let again =
            make_source_path("closure-info", &nar_sha256, &[a.clone(), b.clone(), a.clone()], DEFAULT_STORE_DIR);
        assert_eq!(again.unwrap().to_string(), "pf2h49l89m39547gpfsrnmf641agxh0g-closure-info");
        let elsewhere = make_source_path("closure-info", &nar_sha256, &[a, b], "/gnu/store").unwrap();
        assert_ne!(elsewhere.to_string(), "pf2h49l89m39547gpfsrnmf641agxh0g-closure-info");
        // The generic form with the type spelled out.
        let kind = "source:/nix/store/d8mj2hp5b2mghbqpjc9anjj387i8451n-a:/nix/store/qqp3ww8fpi17bp11zbg2p5cq7qyg18n7-b";
        let generic = make_store_path(kind, &nar_sha256, "closure-info", DEFAULT_STORE_DIR).unwrap();
        assert_eq!(generic.to_string(), "pf2h49l89m39547gpfsrnmf641agxh0g-closure-info");
        assert!(make_source_path(".bad", &nar_sha256, &[], DEFAULT_STORE_DIR).is_err());
    }
}
