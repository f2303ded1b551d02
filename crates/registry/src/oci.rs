//! The OCI vocabulary every part of the registry shares: digests, manifests
//! as served, and blobs as served.
use std::{fmt, str::FromStr};

use bytes::Bytes;
use castore::BlobReader;
use sha2::{Digest as _, Sha256};

/// An OCI content digest. Only `sha256:` is accepted: it is what every
/// client computes, and what the registry's index is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hex part, without `sha256:`.
    pub fn hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a digest this registry accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("{0:?} is not a digest (algorithm:hex)")]
    Syntax(String),
    #[error("digest algorithm {0:?} is not supported (use sha256)")]
    Algorithm(String),
    #[error("{0:?} is not 64 lower-case hex characters")]
    Hex(String),
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s.split_once(':').ok_or_else(|| DigestError::Syntax(s.to_owned()))?;
        if algo != "sha256" {
            return Err(DigestError::Algorithm(algo.to_owned()));
        }
        if hex.len() != 64 || hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(DigestError::Hex(hex.to_owned()));
        }
        let bytes = data_encoding::HEXLOWER.decode(hex.as_bytes()).map_err(|_| DigestError::Hex(hex.to_owned()))?;
        Ok(Digest(bytes.try_into().expect("64 hex characters are 32 bytes")))
    }
}

/// A manifest (or index) as served: the exact bytes, their media type and
/// their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub bytes: Bytes,
    pub digest: Digest,
}

impl Manifest {
    pub fn new(media_type: impl Into<String>, bytes: Bytes) -> Manifest {
        Manifest { media_type: media_type.into(), digest: Digest::of(&bytes), bytes }
    }
}

/// A blob as served: its length and a seekable reader (a castore blob, or a
/// layer rendered from castore).
pub struct Blob {
    pub size: u64,
    pub reader: BlobReader,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!(matches!("sha512:00".parse::<Digest>(), Err(DigestError::Algorithm(_))));
        assert!(matches!("sha256:00".parse::<Digest>(), Err(DigestError::Hex(_))));
        assert!(matches!(
            d.to_string().to_uppercase().replace("SHA256", "sha256").parse::<Digest>(),
            Err(DigestError::Hex(_))
        ));
        assert!(matches!("nodigest".parse::<Digest>(), Err(DigestError::Syntax(_))));
    }
}
