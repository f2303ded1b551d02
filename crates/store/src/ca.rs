//! Content addresses: the narinfo `CA:` field.
//!
//! A content-addressed path's store path is computed from its contents, so
//! Nix trusts it without a signature. Nix writes `text:sha256:<nix32>` for
//! `builtins.toFile` files and derivations, and `fixed:[r:]<algo>:<nix32>`
//! for fixed-output paths (`r:` when the hash is of the NAR, none when it is
//! of the flat file). On input, the digest may be base16, nix32 or base64,
//! told by length, as for every Nix hash; SRI is not accepted there.
use std::{fmt, str::FromStr};

use bytes::Bytes;

use crate::{
    hash::{HashAlgo, HashError, NixHash},
    proto::nar_info::{Ca, ca::Hash as CaType},
};

/// How a fixed-output path's contents were hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestionMethod {
    /// The hash of the single file's contents.
    Flat,
    /// The hash of the NAR serialisation (`r:`).
    Recursive,
}

/// A content address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    /// `text:sha256:…`: the sha256 of a text file (Nix allows no other algorithm).
    Text { sha256: [u8; 32] },
    /// `fixed:[r:]<algo>:…`.
    Fixed { method: IngestionMethod, hash: NixHash },
}

/// Why a string or protobuf message is not a content address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("{0:?}: not a content address (expected text:sha256:<digest> or fixed:[r:]<algo>:<digest>)")]
    Syntax(String),
    #[error("{0:?}: a text content address must use sha256")]
    TextNotSha256(String),
    #[error("content address: {0}")]
    Hash(#[from] HashError),
    #[error("unknown content address type {0} in protobuf")]
    ProtoType(i32),
}

impl ContentAddress {
    /// The protobuf form (`NARInfo.ca`).
    pub fn to_proto(&self) -> Ca {
        let (ty, digest) = match self {
            Self::Text { sha256 } => (CaType::TextSha256, &sha256[..]),
            Self::Fixed { method, hash } => {
                let ty = match (method, hash.algo()) {
                    (IngestionMethod::Recursive, HashAlgo::Sha256) => CaType::NarSha256,
                    (IngestionMethod::Recursive, HashAlgo::Sha1) => CaType::NarSha1,
                    (IngestionMethod::Recursive, HashAlgo::Sha512) => CaType::NarSha512,
                    (IngestionMethod::Recursive, HashAlgo::Md5) => CaType::NarMd5,
                    (IngestionMethod::Flat, HashAlgo::Sha256) => CaType::FlatSha256,
                    (IngestionMethod::Flat, HashAlgo::Sha1) => CaType::FlatSha1,
                    (IngestionMethod::Flat, HashAlgo::Sha512) => CaType::FlatSha512,
                    (IngestionMethod::Flat, HashAlgo::Md5) => CaType::FlatMd5,
                };
                (ty, hash.digest())
            }
        };
        Ca { r#type: ty as i32, digest: Bytes::copy_from_slice(digest) }
    }

    /// Reads the protobuf form; the digest must have its type's length.
    pub fn from_proto(ca: &Ca) -> Result<Self, CaError> {
        let ty = CaType::try_from(ca.r#type).map_err(|_| CaError::ProtoType(ca.r#type))?;
        let (method, algo) = match ty {
            CaType::TextSha256 => {
                let hash = NixHash::new(HashAlgo::Sha256, &ca.digest)?;
                return Ok(Self::Text { sha256: hash.as_sha256().expect("sha256") });
            }
            CaType::NarSha256 => (IngestionMethod::Recursive, HashAlgo::Sha256),
            CaType::NarSha1 => (IngestionMethod::Recursive, HashAlgo::Sha1),
            CaType::NarSha512 => (IngestionMethod::Recursive, HashAlgo::Sha512),
            CaType::NarMd5 => (IngestionMethod::Recursive, HashAlgo::Md5),
            CaType::FlatSha256 => (IngestionMethod::Flat, HashAlgo::Sha256),
            CaType::FlatSha1 => (IngestionMethod::Flat, HashAlgo::Sha1),
            CaType::FlatSha512 => (IngestionMethod::Flat, HashAlgo::Sha512),
            CaType::FlatMd5 => (IngestionMethod::Flat, HashAlgo::Md5),
        };
        Ok(Self::Fixed { method, hash: NixHash::new(algo, &ca.digest)? })
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text { sha256 } => write!(f, "text:{}", NixHash::sha256(*sha256)),
            Self::Fixed { method: IngestionMethod::Flat, hash } => write!(f, "fixed:{hash}"),
            Self::Fixed { method: IngestionMethod::Recursive, hash } => write!(f, "fixed:r:{hash}"),
        }
    }
}

impl FromStr for ContentAddress {
    type Err = CaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CaError::Syntax(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(syntax)?;
        match kind {
            "text" => {
                let hash = parse_hash(rest).ok_or_else(syntax)??;
                let sha256 = hash.as_sha256().ok_or_else(|| CaError::TextNotSha256(s.to_owned()))?;
                Ok(Self::Text { sha256 })
            }
            "fixed" => {
                let (method, rest) = match rest.strip_prefix("r:") {
                    Some(rest) => (IngestionMethod::Recursive, rest),
                    None => (IngestionMethod::Flat, rest),
                };
                Ok(Self::Fixed { method, hash: parse_hash(rest).ok_or_else(syntax)?? })
            }
            _ => Err(syntax()),
        }
    }
}

/// `<algo>:<digest>`; `None` without the colon.
fn parse_hash(s: &str) -> Option<Result<NixHash, HashError>> {
    let (algo, digest) = s.split_once(':')?;
    Some(algo.parse().and_then(|algo| NixHash::parse_with_algo(digest, algo)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // As `nix path-info --json` (nix 2.8) printed them for paths made with
    // `nix-store --add`, `--add-fixed sha256`, `--add-fixed --recursive sha1`
    // and `builtins.toFile`.
    const REAL: [&str; 4] = [
        "fixed:r:sha256:01as6h2ykpk3v1vn7h5cafz1rfmn4ipbavzvzs3ij916a32fnwyj",
        "fixed:sha256:0q9ydcfi50qg5s5abhw11jm3a564ljaby47hirk7mi0l4a9xlvnj",
        "fixed:r:sha1:sj2cbsz2flynk674qw8nl0i1py8c6x85",
        "text:sha256:19cbk5kiyb8vy72k62acgav8d08dldqzmdk6jslbkmry9d43hlwv",
    ];

    #[test]
    fn round_trips_what_nix_writes() {
        for s in REAL {
            let ca: ContentAddress = s.parse().unwrap();
            assert_eq!(ca.to_string(), s);
            assert_eq!(ContentAddress::from_proto(&ca.to_proto()), Ok(ca));
        }
        let ca: ContentAddress = REAL[2].parse().unwrap();
        let ContentAddress::Fixed { method, hash } = ca else { panic!("{ca:?}") };
        assert_eq!((method, hash.algo()), (IngestionMethod::Recursive, HashAlgo::Sha1));
    }

    #[test]
    fn accepts_other_digest_encodings() {
        let text: ContentAddress = REAL[3].parse().unwrap();
        let ContentAddress::Text { sha256 } = text else { panic!() };
        let hash = NixHash::sha256(sha256);
        let hex = hash.to_base16_string();
        assert_eq!(format!("text:{hex}").parse(), Ok(text));
        let b64 = data_encoding::BASE64.encode(&sha256);
        assert_eq!(format!("text:sha256:{b64}").parse(), Ok(text));
        assert_eq!(format!("fixed:{hex}").parse(), Ok(ContentAddress::Fixed { method: IngestionMethod::Flat, hash }));
    }

    #[test]
    fn proto_types() {
        use IngestionMethod::{Flat, Recursive};
        // The spec's numbering; the digest is 7s of the algorithm's length.
        let cases = [
            (Recursive, HashAlgo::Sha256, 0),
            (Recursive, HashAlgo::Sha1, 1),
            (Recursive, HashAlgo::Sha512, 2),
            (Recursive, HashAlgo::Md5, 3),
            (Flat, HashAlgo::Sha1, 5),
            (Flat, HashAlgo::Md5, 6),
            (Flat, HashAlgo::Sha256, 7),
            (Flat, HashAlgo::Sha512, 8),
        ];
        for (method, algo, number) in cases {
            let hash = NixHash::new(algo, &vec![7; algo.len()]).unwrap();
            let ca = ContentAddress::Fixed { method, hash };
            assert_eq!(ca.to_proto(), Ca { r#type: number, digest: hash.digest().to_vec().into() }, "{ca}");
            assert_eq!(ContentAddress::from_proto(&ca.to_proto()), Ok(ca));
            assert_eq!(ca.to_string().parse(), Ok(ca));
        }
        let text = ContentAddress::Text { sha256: [7; 32] };
        assert_eq!(text.to_proto(), Ca { r#type: 4, digest: vec![7; 32].into() });
        assert_eq!(ContentAddress::from_proto(&text.to_proto()), Ok(text));
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "text",
            "sha256:01as6h2ykpk3v1vn7h5cafz1rfmn4ipbavzvzs3ij916a32fnwyj",
            "nar:sha256:01as6h2ykpk3v1vn7h5cafz1rfmn4ipbavzvzs3ij916a32fnwyj",
            "fixed:r:01as6h2ykpk3v1vn7h5cafz1rfmn4ipbavzvzs3ij916a32fnwyj",
            "text:r:sha256:01as6h2ykpk3v1vn7h5cafz1rfmn4ipbavzvzs3ij916a32fnwyj",
            // Newer Nix's git hashing is not something this store can hold.
            "fixed:git:sha1:sj2cbsz2flynk674qw8nl0i1py8c6x85",
        ] {
            assert!(s.parse::<ContentAddress>().is_err(), "{s:?} accepted");
        }
        assert_eq!(
            "text:sha1:sj2cbsz2flynk674qw8nl0i1py8c6x85".parse::<ContentAddress>(),
            Err(CaError::TextNotSha256("text:sha1:sj2cbsz2flynk674qw8nl0i1py8c6x85".into()))
        );
        // SRI is not a content address spelling.
        let sri = "fixed:r:sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        assert_eq!(sri.parse::<ContentAddress>(), Err(CaError::Syntax(sri.into())));
        assert!(matches!("fixed:sha256:abc".parse::<ContentAddress>(), Err(CaError::Hash(HashError::Length { .. }))));

        let proto = |ty: i32, len| Ca { r#type: ty, digest: vec![1; len].into() };
        assert_eq!(ContentAddress::from_proto(&proto(9, 32)), Err(CaError::ProtoType(9)));
        assert_eq!(ContentAddress::from_proto(&proto(-1, 32)), Err(CaError::ProtoType(-1)));
        for (ty, len) in [(4, 20), (0, 20), (1, 32), (2, 32), (3, 20), (5, 16), (6, 20), (7, 0), (8, 32)] {
            assert!(
                matches!(ContentAddress::from_proto(&proto(ty, len)), Err(CaError::Hash(HashError::DigestLen { .. }))),
                "type {ty} with {len} bytes"
            );
        }
    }
}
