//! Hashes as Nix spells them.
//!
//! Nix writes a hash as `<algo>:<digest>` with the digest in base16, nix32
//! or base64 — the reader tells which by its length, as every algorithm's
//! three lengths differ — or as SRI, `<algo>-<base64>`. Some fields (the
//! digest inside a content address, `outputHash` with `outputHashAlgo`)
//! carry the algorithm elsewhere and hold only the digest. narinfo files
//! and content addresses are written `<algo>:<nix32>`, so that is what
//! [`NixHash`] displays as.
use std::{fmt, str::FromStr};

use data_encoding::{BASE64, HEXLOWER, HEXLOWER_PERMISSIVE};

use crate::nix32;

/// The hash algorithms Nix knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

/// Bytes in the longest digest (sha512).
const MAX_LEN: usize = 64;

impl HashAlgo {
    /// The name Nix uses (`sha256`), in hash prefixes and content addresses.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    #[allow(clippy::len_without_is_empty)] // a digest length is never zero
    pub const fn len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Md5, Self::Sha1, Self::Sha256, Self::Sha512]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| HashError::UnknownAlgo(s.to_owned()))
    }
}

/// Why a string or byte slice is not a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("unknown hash algorithm {0:?} (known: md5, sha1, sha256, sha512)")]
    UnknownAlgo(String),
    #[error("a {algo} digest is {} bytes, got {got}", algo.len())]
    DigestLen { algo: HashAlgo, got: usize },
    #[error("{0:?}: no hash algorithm (expected <algo>:<digest> or <algo>-<base64>)")]
    NoAlgo(String),
    #[error(
        "{input:?}: wrong length for a {algo} digest (expected {} base16, {} nix32 or {} base64 characters)",
        2 * algo.len(), nix32::encoded_len(algo.len()), BASE64.encode_len(algo.len())
    )]
    Length { input: String, algo: HashAlgo },
    #[error("{input:?}: not valid {encoding}")]
    Encoding { input: String, encoding: &'static str },
}

/// A digest together with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NixHash {
    algo: HashAlgo,
    /// The digest, zero-padded past `algo.len()` so equality stays bytewise.
    bytes: [u8; MAX_LEN],
}

impl NixHash {
    /// A hash from its digest, which must have the algorithm's length.
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Result<Self, HashError> {
        if digest.len() != algo.len() {
            return Err(HashError::DigestLen { algo, got: digest.len() });
        }
        let mut bytes = [0; MAX_LEN];
        bytes[..digest.len()].copy_from_slice(digest);
        Ok(Self { algo, bytes })
    }

    /// A sha256 hash (NAR hashes, file hashes).
    pub fn sha256(digest: [u8; 32]) -> Self {
        let mut bytes = [0; MAX_LEN];
        bytes[..32].copy_from_slice(&digest);
        Self { algo: HashAlgo::Sha256, bytes }
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.len()]
    }

    /// The digest, if this is a sha256 hash.
    pub fn as_sha256(&self) -> Option<[u8; 32]> {
        (self.algo == HashAlgo::Sha256).then(|| self.bytes[..32].try_into().expect("32 bytes"))
    }

    /// Parses `<algo>:<digest>` (base16, nix32 or base64, told by length)
    /// or SRI `<algo>-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        // Nix looks for ':' first, so `sha256-…:…` names the algorithm `sha256-…`.
        if let Some((algo, digest)) = s.split_once(':') {
            return decode(algo.parse()?, digest, s);
        }
        let (algo, b64) = s.split_once('-').ok_or_else(|| HashError::NoAlgo(s.to_owned()))?;
        let algo: HashAlgo = algo.parse()?;
        let digest = BASE64.decode(b64.as_bytes()).map_err(|_| encoding(s, "base64"))?;
        Self::new(algo, &digest).map_err(|_| HashError::Length { input: s.to_owned(), algo })
    }

    /// Parses a bare digest (base16, nix32 or base64, told by length) of a
    /// hash whose algorithm is known from elsewhere.
    pub fn parse_with_algo(s: &str, algo: HashAlgo) -> Result<Self, HashError> {
        decode(algo, s, s)
    }

    /// `<algo>:<nix32>`, as narinfo files and content addresses write it.
    pub fn to_nix32_string(&self) -> String {
        self.to_string()
    }

    /// `<algo>-<base64>` (Subresource Integrity).
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, BASE64.encode(self.digest()))
    }

    /// `<algo>:<lowercase hex>`.
    pub fn to_base16_string(&self) -> String {
        format!("{}:{}", self.algo, HEXLOWER.encode(self.digest()))
    }
}

/// Decodes `digest` for `algo`, choosing the encoding by length; `input`
/// is the whole string, for errors.
fn decode(algo: HashAlgo, digest: &str, input: &str) -> Result<NixHash, HashError> {
    let n = algo.len();
    let bytes = if digest.len() == 2 * n {
        HEXLOWER_PERMISSIVE.decode(digest.as_bytes()).map_err(|_| encoding(input, "base16"))?
    } else if digest.len() == nix32::encoded_len(n) {
        nix32_decode(algo, digest).ok_or_else(|| encoding(input, "nix32"))?
    } else if digest.len() == BASE64.encode_len(n) {
        BASE64.decode(digest.as_bytes()).map_err(|_| encoding(input, "base64"))?
    } else {
        return Err(HashError::Length { input: input.to_owned(), algo });
    };
    NixHash::new(algo, &bytes)
}

fn nix32_decode(algo: HashAlgo, s: &str) -> Option<Vec<u8>> {
    match algo {
        HashAlgo::Md5 => nix32::decode::<16>(s).map(Vec::from),
        HashAlgo::Sha1 => nix32::decode::<20>(s).map(Vec::from),
        HashAlgo::Sha256 => nix32::decode::<32>(s).map(Vec::from),
        HashAlgo::Sha512 => nix32::decode::<64>(s).map(Vec::from),
    }
}

fn encoding(input: &str, encoding: &'static str) -> HashError {
    HashError::Encoding { input: input.to_owned(), encoding }
}

impl fmt::Display for NixHash {
    /// `<algo>:<nix32>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, nix32::encode(self.digest()))
    }
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NixHash({self})")
    }
}

impl FromStr for NixHash {
    type Err = HashError;

    /// See [`NixHash::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    // sha256("") as `printf '' | sha256sum`, `nix-hash --type sha256
    // --to-base32` and `nix hash to-sri --type sha256` print it.
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    fn empty() -> NixHash {
        NixHash::sha256(Sha256::digest(b"").into())
    }

    #[test]
    fn algos() {
        for (algo, name, len) in [
            (HashAlgo::Md5, "md5", 16),
            (HashAlgo::Sha1, "sha1", 20),
            (HashAlgo::Sha256, "sha256", 32),
            (HashAlgo::Sha512, "sha512", 64),
        ] {
            assert_eq!((algo.name(), algo.len(), algo.to_string()), (name, len, name.to_owned()));
            assert_eq!(name.parse::<HashAlgo>(), Ok(algo));
        }
        assert_eq!("SHA256".parse::<HashAlgo>(), Err(HashError::UnknownAlgo("SHA256".into())));
        assert!("blake3".parse::<HashAlgo>().is_err());
    }

    #[test]
    fn prints_like_nix() {
        let h = empty();
        assert_eq!(h.to_nix32_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(h.to_string(), h.to_nix32_string());
        assert_eq!(h.to_sri(), format!("sha256-{EMPTY_B64}"));
        assert_eq!(h.to_base16_string(), format!("sha256:{EMPTY_HEX}"));
        assert_eq!(format!("{h:?}"), format!("NixHash(sha256:{EMPTY_NIX32})"));
        assert_eq!(h.as_sha256(), Some(Sha256::digest(b"").into()));
        assert_eq!(h.digest(), &Sha256::digest(b"")[..]);
    }

    #[test]
    fn parses_every_spelling() {
        let h = empty();
        for s in [
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{}", EMPTY_HEX.to_uppercase()),
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_B64}"),
            format!("sha256-{EMPTY_B64}"),
        ] {
            assert_eq!(NixHash::parse(&s), Ok(h), "{s}");
            assert_eq!(s.parse::<NixHash>(), Ok(h), "{s}");
        }
        for s in [EMPTY_HEX, EMPTY_NIX32, EMPTY_B64] {
            assert_eq!(NixHash::parse_with_algo(s, HashAlgo::Sha256), Ok(h), "{s}");
        }
        for s in [h.to_nix32_string(), h.to_sri(), h.to_base16_string()] {
            assert_eq!(NixHash::parse(&s), Ok(h));
        }
    }

    #[test]
    fn other_algorithms_match_nix() {
        // `nix hash to-base32|to-base64|to-sri --type <algo> <hex>` (nix 2.8).
        let md5 = NixHash::parse("md5:d41d8cd98f00b204e9800998ecf8427e").unwrap();
        assert_eq!(md5.to_nix32_string(), "md5:3y8bwfr609h3lh9ch0izcqq7fl");
        assert_eq!(md5.to_sri(), "md5-1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(NixHash::parse("md5:1B2M2Y8AsgTpgAmY7PhCfg=="), Ok(md5));
        let sha512 = NixHash::parse(
            "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
             47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        )
        .unwrap();
        assert_eq!(
            sha512.to_nix32_string(),
            "sha512:0zdl9zrg8r3i9c1g90lgg9ip5ijzv3yhz91i0zzn3r8ap9ws784gkp9dk9j3aglhgf1amqb0pj21mh7h1nxcl18akqvvf7ggqsy30yg"
        );
        assert_eq!(
            sha512.to_sri(),
            "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
        );
        assert_eq!(NixHash::parse(&sha512.to_nix32_string()), Ok(sha512));
        assert_eq!(NixHash::parse(&sha512.to_sri()), Ok(sha512));
        assert_eq!(sha512.as_sha256(), None);
        let sha1 = NixHash::parse("sha1:sj2cbsz2flynk674qw8nl0i1py8c6x85").unwrap();
        assert_eq!((sha1.algo(), sha1.digest().len()), (HashAlgo::Sha1, 20));
        assert_eq!(NixHash::parse(&sha1.to_base16_string()), Ok(sha1));
    }

    #[test]
    fn constructors_check_lengths() {
        assert_eq!(NixHash::new(HashAlgo::Sha1, &[0; 20]).unwrap().digest(), &[0; 20]);
        assert_eq!(NixHash::new(HashAlgo::Sha1, &[0; 32]), Err(HashError::DigestLen { algo: HashAlgo::Sha1, got: 32 }));
        assert_ne!(NixHash::new(HashAlgo::Sha1, &[0; 20]), NixHash::new(HashAlgo::Md5, &[0; 16]));
    }

    #[test]
    fn rejects() {
        // (input, the error it must give, as a function of the input)
        type Want = fn(String) -> HashError;
        let sha1_len: Want = |input| HashError::Length { input, algo: HashAlgo::Sha1 };
        let sha256_len: Want = |input| HashError::Length { input, algo: HashAlgo::Sha256 };
        let nix32: Want = |input| HashError::Encoding { input, encoding: "nix32" };
        let base16: Want = |input| HashError::Encoding { input, encoding: "base16" };
        let base64: Want = |input| HashError::Encoding { input, encoding: "base64" };
        let cases: [(String, Want); 12] = [
            (EMPTY_NIX32.into(), HashError::NoAlgo),
            (format!("blake3:{EMPTY_NIX32}"), |_| HashError::UnknownAlgo("blake3".into())),
            (format!("sha1:{EMPTY_NIX32}"), sha1_len),
            ("sha256:".into(), sha256_len),
            (format!("sha256:{}", &EMPTY_HEX[1..]), sha256_len),
            // An `e` is not nix32; `g` is not hex; `-` is not base64.
            (format!("sha256:e{}", &EMPTY_NIX32[1..]), nix32),
            (format!("sha256:g{}", &EMPTY_HEX[1..]), base16),
            (format!("sha256:-{}", &EMPTY_B64[1..]), base64),
            // nix32 with bits set beyond 256.
            (format!("sha256:z{}", &EMPTY_NIX32[1..]), nix32),
            // SRI is base64 only (hex digits are base64 too, but decode to 48 bytes), of the right length.
            (format!("sha256-{EMPTY_HEX}"), sha256_len),
            (format!("sha256-!{}", &EMPTY_B64[1..]), base64),
            ("sha256-1B2M2Y8AsgTpgAmY7PhCfg==".into(), sha256_len),
        ];
        for (s, want) in cases {
            assert_eq!(NixHash::parse(&s), Err(want(s.clone())), "{s}");
        }
        assert!(NixHash::parse_with_algo(&format!("sha256:{EMPTY_NIX32}"), HashAlgo::Sha256).is_err());
        let msg = NixHash::parse("sha256:abc").unwrap_err().to_string();
        assert!(msg.contains("64 base16, 52 nix32 or 44 base64"), "{msg}");
    }
}
