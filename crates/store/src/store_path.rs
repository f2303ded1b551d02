//! Store paths: `<store dir>/<nix32 digest>-<name>`.
use std::fmt;

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
}
