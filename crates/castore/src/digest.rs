//! [`B3Digest`], the BLAKE3 digest that names every blob, chunk and directory.
use std::fmt;

use bytes::Bytes;
use data_encoding::{BASE64, HEXLOWER};

/// Length of a BLAKE3 digest in bytes.
pub const B3_LEN: usize = 32;

/// A BLAKE3 digest (32 bytes).
///
/// Displays as `blake3-<standard base64>`, the form the tvix/snix tools print,
/// and parses from that form or from 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct B3Digest([u8; B3_LEN]);

/// A byte string that is not a valid digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest must be {B3_LEN} bytes, got {0}")]
    WrongLength(usize),
    #[error("cannot parse digest {0:?}: expected blake3-<base64> or 64 hex characters")]
    Unparsable(String),
}

impl B3Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; B3_LEN] {
        &self.0
    }

    /// Lower-case hex, used for file names and logs where `/` and `+` hurt.
    pub fn to_hex(&self) -> String {
        HEXLOWER.encode(&self.0)
    }

    /// The digest as an owned protobuf `bytes` field.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }
}

impl From<[u8; B3_LEN]> for B3Digest {
    fn from(value: [u8; B3_LEN]) -> Self {
        Self(value)
    }
}

impl From<blake3::Hash> for B3Digest {
    fn from(value: blake3::Hash) -> Self {
        Self(*value.as_bytes())
    }
}

impl TryFrom<&[u8]> for B3Digest {
    type Error = DigestError;
    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        <[u8; B3_LEN]>::try_from(value).map(Self).map_err(|_| DigestError::WrongLength(value.len()))
    }
}

impl TryFrom<&Bytes> for B3Digest {
    type Error = DigestError;
    fn try_from(value: &Bytes) -> Result<Self, Self::Error> {
        Self::try_from(value.as_ref())
    }
}

impl std::str::FromStr for B3Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DigestError::Unparsable(s.to_owned());
        let raw = if let Some(b64) = s.strip_prefix("blake3-") {
            BASE64.decode(b64.as_bytes()).map_err(|_| err())?
        } else {
            HEXLOWER.decode(s.to_ascii_lowercase().as_bytes()).map_err(|_| err())?
        };
        Self::try_from(raw.as_slice()).map_err(|_| err())
    }
}

impl fmt::Display for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3-{}", BASE64.encode(&self.0))
    }
}

impl fmt::Debug for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_display_and_parse() {
        let d = B3Digest::of(b"");
        assert_eq!(d.to_hex(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        assert_eq!(d.to_string(), "blake3-rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI=");
        assert_eq!(d.to_string().parse::<B3Digest>().unwrap(), d);
        assert_eq!(d.to_hex().parse::<B3Digest>().unwrap(), d);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(B3Digest::try_from(&[0u8; 31][..]), Err(DigestError::WrongLength(31)));
        assert!("blake3-AAAA".parse::<B3Digest>().is_err());
        assert!("zz".parse::<B3Digest>().is_err());
    }
}
