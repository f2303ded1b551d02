//! nix-snapshotter images pushed by nix-snapshotter's own tooling
//! (`copyToRegistry` pushes only the manifest, the config and the small
//! mount-point layer): served in both flavours, like a defined image.
//!
//! Pushed to `NAME:TAG` or `nix-snapshotter/NAME:TAG`, such an image is
//! served as pushed at `nix-snapshotter/NAME:TAG`, and at `NAME:TAG` as an
//! ordinary image: the pushed layers (the nix layer's annotations dropped),
//! then the store paths it names in layers rendered from castore, with the
//! pushed config's diff ids extended to match. The mount-point layer comes
//! before the store layers, so their contents land on its empty mount
//! points. The paths must be in the store (or reachable through the
//! upstream caches).
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use store::StorePath;

use super::{
    NIX_SNAPSHOTTER_PREFIX,
    build::{self, NIX_CLOSURE, NIX_LAYER, NIX_STORE_PATH},
    record,
};
use crate::{
    Registry,
    distribution::records,
    error::RegistryError,
    oci::{Digest, Manifest},
};

/// What every nix-snapshotter annotation starts with.
const ANNOTATION_PREFIX: &[u8] = b"containerd.io/snapshot/";

/// Largest pushed config read back to be extended.
const MAX_CONFIG: u64 = 4 << 20;

/// A pushed nix-snapshotter manifest for `name:tag` (stored under either
/// name), if there is one.
pub async fn find(reg: &Registry, name: &str, tag: &str) -> Result<Option<Manifest>, RegistryError> {
    let meta = &*reg.meta;
    for repo in [name.to_owned(), format!("{NIX_SNAPSHOTTER_PREFIX}{name}")] {
        let Some(digest) = records::tag(meta, &repo, tag).await? else { continue };
        let Some(m) = records::manifest(meta, &digest).await? else { continue };
        // Most stored images are not nix-snapshotter's: parse only those
        // that can hold its annotations.
        if !m.bytes.windows(ANNOTATION_PREFIX.len()).any(|w| w == ANNOTATION_PREFIX) {
            continue;
        }
        let json: Value = serde_json::from_slice(&m.bytes).unwrap_or(Value::Null);
        if nix_layer(&json).is_some() {
            return Ok(Some(Manifest::new(m.media_type, m.bytes)));
        }
    }
    Ok(None)
}

/// The index of the layer carrying nix-snapshotter's annotations.
fn nix_layer(manifest: &Value) -> Option<usize> {
    manifest["layers"].as_array()?.iter().position(|l| {
        l["annotations"].as_object().is_some_and(|a| {
            a.get(NIX_LAYER).and_then(Value::as_str) == Some("true")
                || a.contains_key(NIX_CLOSURE)
                || a.keys().any(|k| k.starts_with(&format!("{NIX_STORE_PATH}.")))
        })
    })
}

/// The key a derived flavour of the pushed manifest is recorded under.
fn derived_key(flavour: &str, pushed: &Manifest) -> [u8; 32] {
    Sha256::new()
        .chain_update(format!("storefront pushed {flavour} v1\n"))
        .chain_update(pushed.digest.0)
        .finalize()
        .into()
}

/// The nix-snapshotter flavour: the pushed manifest itself, its blobs made
/// servable under both names the first time it is asked for.
pub async fn nix_snapshotter(reg: &Registry, pushed: &Manifest) -> Result<Manifest, RegistryError> {
    let key = derived_key("nix-snapshotter", pushed);
    if record::manifest_for_spec(reg, &key).await?.is_none() {
        serve_as_pushed(reg, pushed).await?;
        record::put_manifest(reg, pushed).await?;
        record::put_manifest_for_spec(reg, &key, pushed).await?;
    }
    Ok(pushed.clone())
}

/// Makes the pushed manifest's blobs servable under both names.
async fn serve_as_pushed(reg: &Registry, manifest: &Manifest) -> Result<(), RegistryError> {
    let json: Value = serde_json::from_slice(&manifest.bytes)
        .map_err(|e| RegistryError::internal(format!("stored manifest {}: {e}", manifest.digest)))?;
    for d in std::iter::once(&json["config"]).chain(json["layers"].as_array().into_iter().flatten()) {
        if let Some(digest) = d["digest"].as_str().and_then(|s| s.parse::<Digest>().ok()) {
            record::put_pushed_blob(reg, &digest).await?;
        }
    }
    Ok(())
}

/// The ordinary flavour of a pushed nix-snapshotter image, built once.
pub async fn ordinary(reg: &Registry, pushed: &Manifest) -> Result<Manifest, RegistryError> {
    let key = derived_key("ordinary", pushed);
    if let Some(m) = record::manifest_for_spec(reg, &key).await? {
        return Ok(m);
    }
    serve_as_pushed(reg, pushed).await?;
    let mut json: Value = serde_json::from_slice(&pushed.bytes)
        .map_err(|e| RegistryError::internal(format!("stored manifest {}: {e}", pushed.digest)))?;
    let at = nix_layer(&json).expect("found by find()");
    let paths = store_paths(reg, &json["layers"][at]).await?;

    let store_layers = build::closure_layers(reg, &paths).await?;
    json["layers"][at].as_object_mut().expect("a layer descriptor").remove("annotations");

    let config_digest: Digest = json["config"]["digest"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RegistryError::manifest_invalid("the pushed manifest's config has no sha256 digest"))?;
    let mut config = read_config(reg, &config_digest).await?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| RegistryError::manifest_invalid("the pushed config has no rootfs.diff_ids"))?;
    for layer in &store_layers {
        diff_ids.push(layer.diff_id.to_string().into());
        json["layers"].as_array_mut().expect("layers").push(layer.descriptor());
    }
    // Its history describes the pushed layers only; clients that check it
    // against the layers would refuse the extended image.
    config.as_object_mut().map(|c| c.remove("history"));
    let config_bytes = bytes::Bytes::from(serde_json::to_vec(&config).expect("JSON serializes"));
    let size = config_bytes.len();
    let digest = record::put_small_blob(reg, config_bytes).await?;
    json["config"]["digest"] = digest.to_string().into();
    json["config"]["size"] = size.into();

    let manifest = Manifest::new(pushed.media_type.clone(), serde_json::to_vec(&json).expect("JSON serializes").into());
    record::put_manifest(reg, &manifest).await?;
    record::put_manifest_for_spec(reg, &key, &manifest).await?;
    Ok(manifest)
}

/// The store paths a nix layer names: its per-path annotations, else the
/// references of its closure-info path.
async fn store_paths(reg: &Registry, layer: &Value) -> Result<Vec<StorePath>, RegistryError> {
    let store_dir = &reg.config.store_dir;
    let annotations = layer["annotations"].as_object().expect("a nix layer has annotations");
    let parse = |p: &str| {
        StorePath::from_absolute(p, store_dir)
            .map_err(|e| RegistryError::manifest_invalid(format!("annotation names {p:?}, not a store path: {e}")))
    };
    let mut paths: Vec<StorePath> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{NIX_STORE_PATH}.")))
        .filter_map(|(_, v)| v.as_str())
        .map(parse)
        .collect::<Result<_, _>>()?;
    if paths.is_empty()
        && let Some(closure) = annotations.get(NIX_CLOSURE).and_then(Value::as_str)
    {
        let info_path = parse(closure)?;
        reg.fetch_path(&info_path).await?;
        let info = reg.paths.get(info_path.digest()).await?.ok_or_else(|| {
            RegistryError::manifest_unknown(format!("the image's closure path {closure} is not in the store"))
        })?;
        paths = info.references;
    }
    for p in &paths {
        reg.fetch_path(p).await?;
    }
    Ok(paths)
}

async fn read_config(reg: &Registry, digest: &Digest) -> Result<Value, RegistryError> {
    let record = records::blob(&*reg.meta, digest)
        .await?
        .ok_or_else(|| RegistryError::manifest_blob_unknown(format!("the pushed config {digest} is not stored")))?;
    if record.size > MAX_CONFIG {
        return Err(RegistryError::manifest_invalid(format!("the pushed config {digest} is over {MAX_CONFIG} bytes")));
    }
    let mut bytes = Vec::with_capacity(record.size as usize);
    for part in &record.parts {
        let mut reader = reg
            .blobs
            .open_read(&part.digest()?)
            .await?
            .ok_or_else(|| RegistryError::internal(format!("a part of blob {digest} is missing")))?;
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes).await?;
    }
    serde_json::from_slice(&bytes).map_err(|e| RegistryError::manifest_invalid(format!("the pushed config: {e}")))
}
