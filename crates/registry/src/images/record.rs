//! What generated images leave behind, in one table keyed by a one-byte
//! kind and a sha256:
//!
//! - `b` + blob digest → how to serve it: a stored castore blob (configs,
//!   small layers) or a layer recipe (store paths rendered on request);
//! - `m` + manifest digest → the manifest's exact bytes;
//! - `s` + build key (flavour + spec) → the manifest digest, so a spec is
//!   built once;
//! - `r` + recipe key → the layer's digest and size, so a layer is hashed
//!   once whatever image it appears in;
//! - `c` + recipe key and compression → a compressed layer's digest and
//!   size (its bytes are a stored castore blob, under `b`).
//!
//! Every record is content-addressed (immutable, first writer wins), so
//! concurrent builds of one spec write the same bytes.
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use castore::{B3Digest, Node, kv::Table, render::LayoutReader};
use prost::Message;
use sha2::{Digest as _, Sha256};
use store::{PathInfo, StorePath};

use crate::{
    Registry,
    error::RegistryError,
    layer::tar,
    oci::{Blob, Digest, Manifest},
};

const GENERATED: Table = Table::named("oci-generated");

fn key(kind: u8, id: &[u8; 32]) -> Bytes {
    let mut k = BytesMut::with_capacity(33);
    k.put_u8(kind);
    k.put_slice(id);
    k.freeze()
}

#[derive(Clone, PartialEq, prost::Message)]
struct BlobRecord {
    #[prost(oneof = "BlobKind", tags = "1, 2, 3")]
    kind: Option<BlobKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum BlobKind {
    /// A blob pushed to the registry (in whatever repository), that a
    /// generated manifest refers to.
    #[prost(bool, tag = "3")]
    Pushed(bool),
    /// A castore blob.
    #[prost(message, tag = "1")]
    Stored(StoredRecord),
    /// A layer of these store paths (basenames).
    #[prost(message, tag = "2")]
    Layer(RecipeRecord),
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredRecord {
    /// BLAKE3.
    #[prost(bytes = "bytes", tag = "1")]
    digest: Bytes,
    #[prost(uint64, tag = "2")]
    size: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RecipeRecord {
    #[prost(string, repeated, tag = "1")]
    paths: Vec<String>,
    #[prost(uint64, tag = "2")]
    size: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ManifestRecord {
    #[prost(string, tag = "1")]
    media_type: String,
    #[prost(bytes = "bytes", tag = "2")]
    bytes: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LayerRecord {
    #[prost(bytes = "bytes", tag = "1")]
    digest: Bytes,
    #[prost(uint64, tag = "2")]
    size: u64,
}

fn corrupt(what: impl std::fmt::Display) -> RegistryError {
    RegistryError::internal(format!("corrupt generated-image record: {what}"))
}

/// The store paths of one layer, with what identifies their contents.
pub struct LayerRecipe {
    paths: Vec<StorePath>,
    key: [u8; 32],
}

impl LayerRecipe {
    /// `paths` must be in `closure`; the key covers their NarHashes too.
    pub fn new(paths: &[StorePath], closure: &[PathInfo]) -> Self {
        let mut paths = paths.to_vec();
        paths.sort_by_key(|p| p.to_string());
        let mut h = Sha256::new();
        h.update(b"storefront layer v1\n");
        for p in &paths {
            let nar = closure.iter().find(|i| &i.store_path == p).map(|i| i.nar_sha256).unwrap_or_default();
            h.update(format!("{p} {}\n", store::nix32::encode(&nar)));
        }
        Self { key: h.finalize().into(), paths }
    }

    /// The tar layout of these paths, from their PathInfos.
    pub async fn layout(&self, reg: &Registry) -> Result<castore::render::Layout, RegistryError> {
        let mut roots: Vec<(StorePath, Node)> = Vec::with_capacity(self.paths.len());
        for p in &self.paths {
            let info = reg
                .paths
                .get(p.digest())
                .await?
                .ok_or_else(|| RegistryError::internal(format!("{p} is gone from the store")))?;
            roots.push((p.clone(), info.node));
        }
        let entries = tar::store_path_entries(&roots, &reg.config.store_dir, &*reg.directories).await?;
        Ok(tar::tar_layout(entries).map_err(castore::Error::from)?)
    }
}

/// A layer already hashed: its digest and size.
pub async fn layer_for_recipe(reg: &Registry, recipe: &LayerRecipe) -> Result<Option<(Digest, u64)>, RegistryError> {
    get_layer(reg, key(b'r', &recipe.key)).await
}

/// The layer record under `k`: a layer's digest and size.
async fn get_layer(reg: &Registry, k: Bytes) -> Result<Option<(Digest, u64)>, RegistryError> {
    let Some(bytes) = reg.meta.get(GENERATED, &k).await? else {
        return Ok(None);
    };
    let r = LayerRecord::decode(&bytes[..]).map_err(corrupt)?;
    let digest: [u8; 32] = r.digest[..].try_into().map_err(|_| corrupt("layer digest length"))?;
    Ok(Some((Digest(digest), r.size)))
}

/// Writes how to serve `digest` (`blob`), then the record `k` that finds
/// it (a layer's digest and size): in that order, so a found layer is
/// always servable.
async fn put_layer_records(
    reg: &Registry,
    blob: BlobRecord,
    k: Bytes,
    digest: Digest,
    size: u64,
) -> Result<(), RegistryError> {
    let layer = LayerRecord { digest: Bytes::copy_from_slice(&digest.0), size };
    reg.meta
        .put(GENERATED, vec![(key(b'b', &digest.0), blob.encode_to_vec().into()), (k, layer.encode_to_vec().into())])
        .await?;
    Ok(())
}

/// Records a hashed layer: how to render it, then its recipe's result.
pub async fn put_layer(reg: &Registry, recipe: &LayerRecipe, digest: Digest, size: u64) -> Result<(), RegistryError> {
    let blob = BlobRecord {
        kind: Some(BlobKind::Layer(RecipeRecord { paths: recipe.paths.iter().map(|p| p.to_string()).collect(), size })),
    };
    put_layer_records(reg, blob, key(b'r', &recipe.key), digest, size).await
}

fn compressed_key(recipe: &LayerRecipe, compression: &str) -> [u8; 32] {
    Sha256::new().chain_update(recipe.key).chain_update(compression.as_bytes()).finalize().into()
}

/// A compressed layer already made: its digest and size.
pub async fn compressed_layer(
    reg: &Registry,
    recipe: &LayerRecipe,
    compression: &str,
) -> Result<Option<(Digest, u64)>, RegistryError> {
    get_layer(reg, key(b'c', &compressed_key(recipe, compression))).await
}

/// Records a compressed layer kept in castore as `b3`.
pub async fn put_compressed_layer(
    reg: &Registry,
    recipe: &LayerRecipe,
    compression: &str,
    digest: Digest,
    size: u64,
    b3: B3Digest,
) -> Result<(), RegistryError> {
    let blob = BlobRecord { kind: Some(BlobKind::Stored(StoredRecord { digest: b3.to_bytes(), size })) };
    put_layer_records(reg, blob, key(b'c', &compressed_key(recipe, compression)), digest, size).await
}

/// Stores a small generated blob in castore and indexes it by sha256.
pub async fn put_small_blob(reg: &Registry, data: Bytes) -> Result<Digest, RegistryError> {
    let digest = Digest::of(&data);
    let size = data.len() as u64;
    let b3 = reg.blobs.put_bytes(data, None).await?;
    let record = BlobRecord { kind: Some(BlobKind::Stored(StoredRecord { digest: b3.to_bytes(), size })) };
    reg.meta.put(GENERATED, vec![(key(b'b', &digest.0), record.encode_to_vec().into())]).await?;
    Ok(digest)
}

/// Makes a pushed blob servable in every repository, because a generated
/// manifest (a pushed image's other flavour) refers to it.
pub async fn put_pushed_blob(reg: &Registry, digest: &Digest) -> Result<(), RegistryError> {
    let record = BlobRecord { kind: Some(BlobKind::Pushed(true)) };
    reg.meta.put(GENERATED, vec![(key(b'b', &digest.0), record.encode_to_vec().into())]).await?;
    Ok(())
}

/// A generated blob, ready to serve.
pub async fn blob(reg: &Registry, digest: &Digest) -> Result<Option<Blob>, RegistryError> {
    let Some(bytes) = reg.meta.get(GENERATED, &key(b'b', &digest.0)).await? else {
        return Ok(None);
    };
    match BlobRecord::decode(&bytes[..]).map_err(corrupt)?.kind {
        Some(BlobKind::Stored(StoredRecord { digest: b3, size })) => {
            let b3 = B3Digest::try_from(&b3).map_err(corrupt)?;
            let reader = reg.blobs.open_read(&b3).await?.ok_or_else(|| corrupt(format!("blob {b3} is missing")))?;
            Ok(Some(Blob { size, reader }))
        }
        Some(BlobKind::Layer(r)) => {
            let paths =
                r.paths.iter().map(|p| StorePath::from_basename(p).map_err(corrupt)).collect::<Result<Vec<_>, _>>()?;
            let recipe = LayerRecipe { paths, key: [0; 32] };
            let layout = recipe.layout(reg).await?;
            if layout.len() != r.size {
                return Err(RegistryError::internal(format!(
                    "layer {digest} renders to {} bytes, not the {} recorded",
                    layout.len(),
                    r.size
                )));
            }
            let reader = LayoutReader::new(Arc::new(layout), reg.blobs.clone());
            Ok(Some(Blob { size: r.size, reader: Box::new(reader) }))
        }
        Some(BlobKind::Pushed(_)) => {
            let Some(stored) = crate::distribution::records::blob(&*reg.meta, digest).await? else {
                return Ok(None);
            };
            let reader = LayoutReader::new(Arc::new(stored.layout()?), reg.blobs.clone());
            Ok(Some(Blob { size: stored.size, reader: Box::new(reader) }))
        }
        None => Err(corrupt("no kind")),
    }
}

/// A generated manifest by digest.
pub async fn manifest(reg: &Registry, digest: &Digest) -> Result<Option<Manifest>, RegistryError> {
    let Some(bytes) = reg.meta.get(GENERATED, &key(b'm', &digest.0)).await? else {
        return Ok(None);
    };
    let r = ManifestRecord::decode(&bytes[..]).map_err(corrupt)?;
    // The key is the digest: no need to hash the bytes again on every GET.
    Ok(Some(Manifest { media_type: r.media_type, bytes: r.bytes, digest: *digest }))
}

pub async fn put_manifest(reg: &Registry, m: &Manifest) -> Result<(), RegistryError> {
    let record = ManifestRecord { media_type: m.media_type.clone(), bytes: m.bytes.clone() };
    reg.meta.put(GENERATED, vec![(key(b'm', &m.digest.0), record.encode_to_vec().into())]).await?;
    Ok(())
}

/// The manifest built for a build key, if it was built before.
pub async fn manifest_for_spec(reg: &Registry, build_key: &[u8; 32]) -> Result<Option<Manifest>, RegistryError> {
    let Some(digest) = reg.meta.get(GENERATED, &key(b's', build_key)).await? else {
        return Ok(None);
    };
    let digest: [u8; 32] = digest[..].try_into().map_err(|_| corrupt("manifest digest length"))?;
    manifest(reg, &Digest(digest)).await
}

pub async fn put_manifest_for_spec(reg: &Registry, build_key: &[u8; 32], m: &Manifest) -> Result<(), RegistryError> {
    reg.meta.put(GENERATED, vec![(key(b's', build_key), Bytes::copy_from_slice(&m.digest.0))]).await?;
    Ok(())
}
