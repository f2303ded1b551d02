//! [`PathInfo`]: what the store knows about a store path, and the
//! [`PathInfoService`] that keeps these records.
use async_trait::async_trait;
use bytes::Bytes;
use castore::{Node, Result};
use futures::stream::BoxStream;

use crate::{
    NarInfo, NixHash, StorePath,
    ca::ContentAddress,
    proto,
    signing::{self, Signature},
    store_path::{DIGEST_LEN, StorePathError},
};

mod closure;
mod grpc;
mod kv;

pub use closure::{closure, references_first};

pub use grpc::{
    GrpcPathInfoService, MAX_CLOSURE_ROOTS, PathInfoBatchServer, PathInfoServer, path_info_batch_server,
    path_info_service_server,
};
pub use kv::{KvPathInfoService, PATH_INFO};

/// gRPC service names registered for health checks, under both packages.
pub const SERVICE_NAMES: [&str; 2] = ["snix.store.v1.PathInfoService", "tvix.store.v1.PathInfoService"];
/// storefront's closure call (not part of either package; see
/// [`crate::proto::batch`]).
pub const BATCH_SERVICE_NAME: &str = "storefront.store.v1.PathInfoBatchService";

/// A store path in the castore: its root node, its references and the NAR
/// metadata Nix identifies it by.
///
/// Constructed from the wire only through [`PathInfo::from_proto`], which
/// validates everything the protocol promises, so code holding a `PathInfo`
/// never re-checks lengths or names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub store_path: StorePath,
    /// The root of the contents (file, directory or symlink).
    pub node: Node,
    /// Referenced store paths, in the order Nix listed them (self included
    /// when the path refers to itself).
    pub references: Vec<StorePath>,
    pub nar_size: u64,
    pub nar_sha256: [u8; 32],
    pub signatures: Vec<Signature>,
    /// The derivation that built the path (`…​.drv`).
    pub deriver: Option<StorePath>,
    pub ca: Option<ContentAddress>,
}

/// Why a PathInfo message is invalid.
#[derive(Debug, thiserror::Error)]
pub enum PathInfoError {
    #[error("PathInfo has no entry")]
    NoEntry,
    #[error("invalid root entry: {0}")]
    Entry(#[from] castore::DirectoryError),
    #[error("root entry name: {0}")]
    EntryName(StorePathError),
    #[error("PathInfo has no narinfo")]
    NoNarInfo,
    #[error("reference {index} has {len} bytes, expected 20")]
    ReferenceLength { index: usize, len: usize },
    #[error("{references} references but {names} reference names")]
    ReferenceCount { references: usize, names: usize },
    #[error("reference name {index}: {source}")]
    ReferenceName { index: usize, source: StorePathError },
    #[error("reference name {index} ({name}) does not match the reference digest")]
    ReferenceMismatch { index: usize, name: String },
    #[error("nar_sha256 has {0} bytes, expected 32")]
    NarSha256Length(usize),
    #[error("nar_size is zero")]
    NarSizeZero,
    #[error("signature {index} ({name:?}) has {len} bytes, expected 64")]
    SignatureLength { index: usize, name: String, len: usize },
    #[error("signature {index} has an empty key name")]
    SignatureName { index: usize },
    #[error("deriver: {0}")]
    Deriver(StorePathError),
    #[error("deriver digest has {0} bytes, expected 20")]
    DeriverLength(usize),
    #[error("content address: {0}")]
    Ca(String),
}

impl From<PathInfoError> for castore::Error {
    fn from(e: PathInfoError) -> Self {
        castore::Error::InvalidRequest(e.to_string())
    }
}

fn digest20(bytes: &[u8]) -> Option<[u8; DIGEST_LEN]> {
    bytes.try_into().ok()
}

impl PathInfo {
    /// Validates a wire PathInfo as the protocol demands.
    pub fn from_proto(p: proto::PathInfo) -> Result<Self, PathInfoError> {
        let (name, node) = Node::from_entry(p.entry.ok_or(PathInfoError::NoEntry)?)?;
        let store_path = StorePath::from_basename_bytes(&name).map_err(PathInfoError::EntryName)?;
        let narinfo = p.narinfo.ok_or(PathInfoError::NoNarInfo)?;

        if p.references.len() != narinfo.reference_names.len() {
            return Err(PathInfoError::ReferenceCount {
                references: p.references.len(),
                names: narinfo.reference_names.len(),
            });
        }
        let references = p
            .references
            .iter()
            .zip(&narinfo.reference_names)
            .enumerate()
            .map(|(index, (digest, name))| {
                let digest = digest20(digest).ok_or(PathInfoError::ReferenceLength { index, len: digest.len() })?;
                let path =
                    StorePath::from_basename(name).map_err(|source| PathInfoError::ReferenceName { index, source })?;
                if *path.digest() != digest {
                    return Err(PathInfoError::ReferenceMismatch { index, name: name.clone() });
                }
                Ok(path)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let nar_sha256 =
            narinfo.nar_sha256[..].try_into().map_err(|_| PathInfoError::NarSha256Length(narinfo.nar_sha256.len()))?;
        if narinfo.nar_size == 0 {
            return Err(PathInfoError::NarSizeZero);
        }
        let signatures = narinfo
            .signatures
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                if s.name.is_empty() {
                    return Err(PathInfoError::SignatureName { index });
                }
                let bytes = s.data[..].try_into().map_err(|_| PathInfoError::SignatureLength {
                    index,
                    name: s.name.clone(),
                    len: s.data.len(),
                })?;
                Ok(Signature { name: s.name, bytes })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deriver = narinfo
            .deriver
            .map(|d| {
                let digest = digest20(&d.digest).ok_or(PathInfoError::DeriverLength(d.digest.len()))?;
                StorePath::from_parts(digest, &format!("{}.drv", d.name)).map_err(PathInfoError::Deriver)
            })
            .transpose()?;
        let ca = narinfo
            .ca
            .map(|ca| ContentAddress::from_proto(&ca).map_err(|e| PathInfoError::Ca(e.to_string())))
            .transpose()?;
        Ok(Self { store_path, node, references, nar_size: narinfo.nar_size, nar_sha256, signatures, deriver, ca })
    }

    /// The wire form (snix and tvix encode identically).
    pub fn to_proto(&self) -> proto::PathInfo {
        proto::PathInfo {
            entry: Some(self.node.to_entry(Bytes::from(self.store_path.to_string()))),
            references: self.references.iter().map(|r| Bytes::copy_from_slice(r.digest())).collect(),
            narinfo: Some(proto::NarInfo {
                nar_size: self.nar_size,
                nar_sha256: Bytes::copy_from_slice(&self.nar_sha256),
                signatures: self
                    .signatures
                    .iter()
                    .map(|s| proto::nar_info::Signature {
                        name: s.name.clone(),
                        data: Bytes::copy_from_slice(&s.bytes),
                    })
                    .collect(),
                reference_names: self.references.iter().map(|r| r.to_string()).collect(),
                deriver: self.deriver.as_ref().map(|d| proto::StorePath {
                    name: d.name().strip_suffix(".drv").unwrap_or(d.name()).to_owned(),
                    digest: Bytes::copy_from_slice(d.digest()),
                }),
                ca: self.ca.as_ref().map(ContentAddress::to_proto),
            }),
        }
    }

    /// The narinfo describing this path, with the NAR at `url` (relative to
    /// the cache root) in `compression` (`none` for a NAR rendered as is).
    pub fn to_narinfo(&self, url: String, compression: &str) -> NarInfo {
        NarInfo {
            store_path: self.store_path.clone(),
            url,
            compression: compression.to_owned(),
            file_hash: None,
            file_size: None,
            nar_hash: NixHash::sha256(self.nar_sha256),
            nar_size: self.nar_size,
            references: self.references.clone(),
            deriver: self.deriver.clone(),
            signatures: self.signatures.clone(),
            ca: self.ca,
        }
    }

    /// What a narinfo `Sig` signs (see [`signing::fingerprint`]).
    pub fn fingerprint(&self, store_dir: &str) -> String {
        signing::fingerprint(store_dir, &self.store_path, &self.nar_sha256, self.nar_size, &self.references)
    }
}

/// Keeps [`PathInfo`] records, keyed by the store path digest.
///
/// Backends are chosen by URL ([`path_info_service_from_url`]); all answer
/// the same way, so the gRPC server and the binary cache never know which
/// one they talk to.
#[async_trait]
pub trait PathInfoService: Send + Sync + 'static {
    /// The record for the store path with this digest.
    async fn get(&self, digest: &[u8; DIGEST_LEN]) -> Result<Option<PathInfo>>;

    /// Stores `info` and returns what is stored. A path is immutable once
    /// stored: a second put of the same path returns the first record.
    async fn put(&self, info: PathInfo) -> Result<PathInfo>;

    /// Every stored record, in no promised order.
    fn list(&self) -> BoxStream<'static, Result<PathInfo>>;

    /// The records of the paths with digests `roots` and of every path they
    /// reference, transitively: each once, in no promised order (see
    /// [`closure()`] for references first). `NotFound` names every path
    /// missing. By default a walk with [`PathInfoService::get`].
    async fn closure(&self, roots: &[[u8; DIGEST_LEN]]) -> Result<Vec<PathInfo>> {
        closure::walk(self, roots).await
    }
}

#[async_trait]
impl<T: PathInfoService + ?Sized> PathInfoService for std::sync::Arc<T> {
    async fn get(&self, digest: &[u8; DIGEST_LEN]) -> Result<Option<PathInfo>> {
        (**self).get(digest).await
    }
    async fn put(&self, info: PathInfo) -> Result<PathInfo> {
        (**self).put(info).await
    }
    fn list(&self) -> BoxStream<'static, Result<PathInfo>> {
        (**self).list()
    }
    async fn closure(&self, roots: &[[u8; DIGEST_LEN]]) -> Result<Vec<PathInfo>> {
        (**self).closure(roots).await
    }
}

/// A PathInfo for unit tests: a symlink (so no contents need storing) at a
/// store path named after `seed`, referring to the paths of `references`.
#[cfg(test)]
pub(crate) fn test_info(seed: u8, references: &[u8]) -> PathInfo {
    let path = |s: u8| StorePath::from_parts([s; 20], &format!("p{s}")).unwrap();
    PathInfo {
        store_path: path(seed),
        node: Node::Symlink { target: Bytes::from_static(b"x") },
        references: references.iter().map(|&r| path(r)).collect(),
        nar_size: 1,
        nar_sha256: [0; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    /// A narinfo rendered from a PathInfo parses back to the same metadata,
    /// and a signature over the PathInfo's fingerprint verifies against it.
    #[test]
    fn narinfo_round_trip_and_signature() {
        let path = |s: u8, n: &str| StorePath::from_parts([s; 20], n).unwrap();
        let mut info = PathInfo {
            store_path: path(1, "hello-2.12"),
            node: Node::Symlink { target: Bytes::from_static(b"x") },
            references: vec![path(2, "glibc-2.40"), path(1, "hello-2.12")],
            nar_size: 1234,
            nar_sha256: [4; 32],
            signatures: vec![],
            deriver: Some(path(3, "hello-2.12.drv")),
            ca: None,
        };
        let key = SigningKey::generate("test-1").unwrap();
        info.signatures.push(key.sign(&info.fingerprint("/nix/store")));

        let narinfo = info.to_narinfo(format!("nar/{}.nar", info.store_path.hash_part()), "none");
        let parsed = NarInfo::parse(&narinfo.render("/nix/store"), "/nix/store").unwrap();
        assert_eq!(parsed.nar_hash.as_sha256(), Some(info.nar_sha256));
        assert_eq!((parsed.nar_size, &parsed.references, &parsed.deriver), (1234, &info.references, &info.deriver));
        let fingerprint = parsed.fingerprint("/nix/store").unwrap();
        assert_eq!(fingerprint, info.fingerprint("/nix/store"));
        assert!(key.verifying_key().verify(&fingerprint, &parsed.signatures[0]));
    }
}
