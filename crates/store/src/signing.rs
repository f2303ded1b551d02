//! ed25519 signatures over store path fingerprints, in Nix's formats.
//!
//! A binary cache client with `require-sigs` accepts a path that is not
//! content-addressed only with a `Sig:` from a key it trusts. What is signed
//! is the path's [`fingerprint`]; keys and signatures are all written
//! `<key name>:<base64>` — 64 bytes for a secret key (libsodium's layout:
//! seed, then public key), 32 for a public key, 64 for a signature. A
//! signature names its key, and only the key of that name can verify it.
use std::{fmt, io::Read, path::Path, str::FromStr};

use data_encoding::BASE64;
use ed25519_dalek::Signer;

use crate::{hash::NixHash, store_path::StorePath};

/// Why a key or signature cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    // Never quotes the input: it may be a secret key.
    #[error("{0}: expected <key name>:<base64>")]
    Syntax(&'static str),
    #[error("{what} {name:?}: expected the base64 of {len} bytes")]
    Bytes { what: &'static str, name: String, len: usize },
    #[error("secret key {0:?}: its public half does not belong to its private half")]
    KeyPairMismatch(String),
    #[error("public key {0:?}: not a valid ed25519 public key")]
    PublicKey(String),
    #[error("key name {0:?}: must be non-empty, without ':' or whitespace")]
    Name(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A narinfo `Sig:` value: the signing key's name and an ed25519 signature.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    pub name: String,
    pub bytes: [u8; 64],
}

impl FromStr for Signature {
    type Err = SigningError;

    /// `<key name>:<base64 of 64 bytes>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split::<64>(s, "signature")?;
        Ok(Self { name: name.to_owned(), bytes })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// What a `Sig:` signs:
/// `1;<path>;sha256:<nix32 NAR hash>;<NAR size>;<references, comma-separated>`.
///
/// Paths are absolute and the references sorted as strings (as Nix keeps
/// them in a string set), which is not [`StorePath`]'s order: nix32 puts
/// the digest's last byte first. Repeated references count once.
pub fn fingerprint(
    store_dir: &str,
    path: &StorePath,
    nar_sha256: &[u8; 32],
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<String> = references.iter().map(|r| r.to_absolute(store_dir)).collect();
    refs.sort_unstable();
    refs.dedup();
    format!("1;{};{};{nar_size};{}", path.to_absolute(store_dir), NixHash::sha256(*nar_sha256), refs.join(","))
}

/// A secret key, as `nix-store --generate-binary-cache-key` writes it.
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A new key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        if name.is_empty() || name.contains(|c: char| c == ':' || c.is_whitespace()) {
            return Err(SigningError::Name(name.to_owned()));
        }
        let mut seed = [0; 32];
        let io = |source| SigningError::Io { path: "/dev/urandom".into(), source };
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).map_err(io)?;
        Ok(Self { name: name.to_owned(), key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// Reads a secret key file (surrounding whitespace is ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SigningError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| SigningError::Io { path: path.display().to_string(), source })?;
        text.parse()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs a [`fingerprint`]. ed25519 is deterministic: the same key and
    /// fingerprint always give the same signature, byte for byte as Nix's.
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature { name: self.name.clone(), bytes: self.key.sign(fingerprint.as_bytes()).to_bytes() }
    }

    /// The public key of the same name, for `trusted-public-keys`.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// The secret key file's text, `<name>:<base64 of seed and public key>`.
    pub fn to_secret_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(&self.key.to_keypair_bytes()))
    }
}

impl FromStr for SigningKey {
    type Err = SigningError;

    /// `<name>:<base64 of 64 bytes>`, surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split::<64>(s.trim(), "secret key")?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| SigningError::KeyPairMismatch(name.to_owned()))?;
        Ok(Self { name: name.to_owned(), key })
    }
}

impl fmt::Debug for SigningKey {
    /// Names the key; never shows the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?})", self.name)
    }
}

/// A public key, as in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifyingKey {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` is this key's signature of `fingerprint`. A signature
    /// made under another key name is never this key's, even with the same
    /// bytes. Verification is strict (no small-order keys or points, no
    /// non-canonical scalars), as libsodium's, which Nix uses.
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        sig.name == self.name
            && self.key.verify_strict(fingerprint.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig.bytes)).is_ok()
    }
}

impl FromStr for VerifyingKey {
    type Err = SigningError;

    /// `<name>:<base64 of 32 bytes>`, surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split::<32>(s.trim(), "public key")?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::PublicKey(name.to_owned()))?;
        Ok(Self { name: name.to_owned(), key })
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

/// Splits `<name>:<base64 of N bytes>` at the first colon, as Nix does.
fn split<'a, const N: usize>(s: &'a str, what: &'static str) -> Result<(&'a str, [u8; N]), SigningError> {
    let (name, b64) = s.split_once(':').filter(|(name, _)| !name.is_empty()).ok_or(SigningError::Syntax(what))?;
    let bytes = BASE64.decode(b64.as_bytes()).ok().and_then(|b| b.try_into().ok());
    Ok((name, bytes.ok_or_else(|| SigningError::Bytes { what, name: name.to_owned(), len: N })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `nix-store --generate-binary-cache-key test-1 sk pk` (nix 2.8);
    // a throwaway key.
    const SK: &str = "test-1:ox/E7UL6jSujEt8FdqxUp/0RZu6VRau0e1sYCe4sp8og6tkt3HovKZY0WoIMwA7FTJkWVj5wM9ni3BjOCYadlA==";
    const PK: &str = "test-1:IOrZLdx6LymWNFqCDMAOxUyZFlY+cDPZ4twYzgmGnZQ=";
    // A `builtins.toFile` path with three references, signed with that key by
    // `nix store sign`; the rest is from `nix path-info --json --sigs`.
    const PATH: &str = "y0dk771g0p06fg380a3lrh4vnfra8d55-multi";
    const REFS: [&str; 3] = [
        "n3v3lqccv8x9r6csff1x3q3ylvf19py8-b",
        "qkdh8krdkwsg7lwq5bwwfcv7h9x142y4-a",
        "w4jbr2ld1fgmlbfcjc4zy4za39772a2a-c",
    ];
    const NAR_HASH: &str = "sha256:11qmwlr24fzk7ld2b04dk0nl2ilphi49k16a145gcx5kb0m86aj1";
    const NIX_SIG: &str =
        "test-1:wLfRvHfXvaFWUk3t9oqBlaVbktxfaa8Hf/Th19GLe+YjFU6YbxV+N0YIMr1O+l3ti+78Bl8/RPWWn1YfoQLuCg==";

    fn real_fingerprint(refs: &[StorePath]) -> String {
        let nar_sha256 = NixHash::parse(NAR_HASH).unwrap().as_sha256().unwrap();
        fingerprint("/nix/store", &PATH.parse().unwrap(), &nar_sha256, 256, refs)
    }

    #[test]
    fn signs_like_nix() {
        let refs: Vec<StorePath> = REFS.iter().map(|r| r.parse().unwrap()).collect();
        let fp = real_fingerprint(&refs);
        assert_eq!(
            fp,
            format!(
                "1;/nix/store/{PATH};{NAR_HASH};256;/nix/store/{},/nix/store/{},/nix/store/{}",
                REFS[0], REFS[1], REFS[2]
            )
        );
        let sk: SigningKey = SK.parse().unwrap();
        let sig = sk.sign(&fp);
        assert_eq!(sig.to_string(), NIX_SIG);
        assert_eq!(sig, NIX_SIG.parse().unwrap());
        let pk: VerifyingKey = PK.parse().unwrap();
        assert_eq!(sk.verifying_key(), pk);
        assert!(pk.verify(&fp, &sig));
    }

    #[test]
    fn fingerprint_sorts_references_as_strings() {
        let mut refs: Vec<StorePath> = REFS.iter().rev().map(|r| r.parse().unwrap()).collect();
        refs.push(refs[1].clone());
        // StorePath's own order (digest bytes) is not the string order here,
        // so sorting the StorePaths would not be enough.
        let mut by_ord = refs.clone();
        by_ord.sort();
        by_ord.dedup();
        assert_ne!(by_ord.iter().map(|r| r.to_string()).collect::<Vec<_>>(), REFS);
        let fp = real_fingerprint(&refs);
        assert!(fp.ends_with(&format!(";256;/nix/store/{}", REFS.join(",/nix/store/"))), "{fp}");
        assert_eq!(real_fingerprint(&[]), format!("1;/nix/store/{PATH};{NAR_HASH};256;"));
        let gnu = fingerprint("/gnu/store", &PATH.parse().unwrap(), &[0; 32], 1, &refs[..1]);
        assert!(gnu.starts_with(&format!("1;/gnu/store/{PATH};sha256:")), "{gnu}");
        assert!(gnu.ends_with(&format!(";1;/gnu/store/{}", REFS[2])), "{gnu}");
    }

    #[test]
    fn rfc8032_vector() {
        // RFC 8032 §7.1 test 1: the empty message.
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap();
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let sk: SigningKey = format!("k:{}", BASE64.encode(&[seed, public.clone()].concat())).parse().unwrap();
        let sig = sk.sign("");
        assert_eq!(
            sig.bytes.to_vec(),
            hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
        assert_eq!(sk.verifying_key().to_string(), format!("k:{}", BASE64.encode(&public)));
    }

    #[test]
    fn verify_refuses_what_it_should() {
        let sk: SigningKey = SK.parse().unwrap();
        let pk = sk.verifying_key();
        let sig = sk.sign("1;fingerprint");
        assert!(pk.verify("1;fingerprint", &sig));
        assert!(!pk.verify("1;fingerprint2", &sig));
        let renamed = Signature { name: "test-2".into(), ..sig.clone() };
        assert!(!pk.verify("1;fingerprint", &renamed));
        let mut flipped = sig.clone();
        flipped.bytes[10] ^= 1;
        assert!(!pk.verify("1;fingerprint", &flipped));
        let other = SigningKey::generate("test-1").unwrap();
        assert!(!other.verifying_key().verify("1;fingerprint", &sig));
    }

    #[test]
    fn keys_round_trip() {
        let sk: SigningKey = format!("  {SK}\n").parse().unwrap();
        assert_eq!((sk.name(), sk.to_secret_string()), ("test-1", SK.to_owned()));
        assert_eq!(format!("{sk:?}"), "SigningKey(\"test-1\")");
        let pk: VerifyingKey = format!("{PK}\n").parse().unwrap();
        assert_eq!((pk.name(), pk.to_string()), ("test-1", PK.to_owned()));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sk");
        std::fs::write(&file, format!("{SK}\n")).unwrap();
        assert_eq!(SigningKey::from_file(&file).unwrap().to_secret_string(), SK);
        let missing = SigningKey::from_file(dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, SigningError::Io { .. }) && missing.to_string().contains("nope"), "{missing}");

        let a = SigningKey::generate("cache.example.org-1").unwrap();
        let b = SigningKey::generate("cache.example.org-1").unwrap();
        assert_ne!(a.to_secret_string(), b.to_secret_string());
        let again: SigningKey = a.to_secret_string().parse().unwrap();
        assert_eq!(again.verifying_key(), a.verifying_key());
        assert!(a.verifying_key().verify("x", &again.sign("x")));
        for bad in ["", "a:b", "a b", " a\n"] {
            assert!(matches!(SigningKey::generate(bad), Err(SigningError::Name(_))), "{bad:?}");
        }
    }

    #[test]
    fn rejects() {
        let (name, b64) = SK.split_once(':').unwrap();
        let mut swapped = BASE64.decode(b64.as_bytes()).unwrap();
        swapped[40] ^= 1;
        let mismatched = format!("{name}:{}", BASE64.encode(&swapped));
        assert!(matches!(mismatched.parse::<SigningKey>(), Err(SigningError::KeyPairMismatch(n)) if n == "test-1"));
        for bad in ["", "test-1", ":abc", &format!(":{}", &SK[7..])] {
            assert!(matches!(bad.parse::<SigningKey>(), Err(SigningError::Syntax("secret key"))), "{bad:?}");
        }
        // A public key where a secret key belongs, and the reverse.
        let err = PK.parse::<SigningKey>().unwrap_err();
        assert_eq!(err.to_string(), "secret key \"test-1\": expected the base64 of 64 bytes");
        assert!(!err.to_string().contains(&PK[7..]));
        assert!(matches!(SK.parse::<VerifyingKey>(), Err(SigningError::Bytes { len: 32, .. })));
        assert!(matches!(NIX_SIG.parse::<VerifyingKey>(), Err(SigningError::Bytes { len: 32, .. })));
        assert!(matches!(PK.parse::<Signature>(), Err(SigningError::Bytes { len: 64, .. })));
        assert!(matches!("test-1:!!!!".parse::<Signature>(), Err(SigningError::Bytes { .. })));
        assert!(matches!(":abc".parse::<Signature>(), Err(SigningError::Syntax("signature"))));
        // 32 bytes that are not a point on the curve (y = 2 has no x).
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        let bad_pk = format!("k:{}", BASE64.encode(&not_a_point));
        assert!(matches!(bad_pk.parse::<VerifyingKey>(), Err(SigningError::PublicKey(_))));
    }
}
