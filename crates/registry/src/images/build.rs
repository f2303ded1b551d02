//! Building an image from a spec: closure → layers → config → manifest,
//! every step content-addressed and cached, so the same spec gives the same
//! digests (after a restart too) and a second request costs a lookup.
//!
//! Layers of store paths are never stored: a record maps the layer's sha256
//! to its recipe (the store paths), and [`super::generated_blob`] renders
//! it from castore on request. Its sha256 is computed once, by rendering it
//! through SHA-256, and kept. Small generated blobs (configs, the
//! copy-to-root layer, nix-snapshotter mount-point layers) are stored as
//! castore blobs.
use std::{collections::HashMap, io::Write, sync::Arc};

use bytes::Bytes;
use castore::{B3Digest, Node, render::LayoutReader};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use store::{PathInfo, StorePath, pathinfo::closure};

use super::{farm, record, spec::ImageSpec};
use crate::{
    Registry,
    error::RegistryError,
    layer::{
        group::{self, PathNode},
        tar::{self, TarEntry},
    },
    oci::{Digest, Manifest},
};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Annotations of a nix-snapshotter layer.
pub const NIX_LAYER: &str = "containerd.io/snapshot/nix-layer";
pub const NIX_STORE_PATH: &str = "containerd.io/snapshot/nix-store-path";
pub const NIX_CLOSURE: &str = "containerd.io/snapshot/nix-closure";
/// The environment's PATH unless the spec sets one.
const DEFAULT_PATH: &str = "PATH=/bin:/usr/bin:/sbin:/usr/sbin";

/// Which of the two images of a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Layers holding the store paths: any client runs it.
    Ordinary,
    /// One mount-point layer naming the store paths in annotations; the
    /// node's snapshotter provides the paths.
    NixSnapshotter,
}

/// A layer as the manifest describes it.
pub(super) struct Described {
    media_type: &'static str,
    digest: Digest,
    size: u64,
    /// The uncompressed tar's digest (`rootfs.diff_ids`).
    pub(super) diff_id: Digest,
    annotations: Option<Value>,
}

impl Described {
    pub(super) fn descriptor(&self) -> Value {
        let mut d = json!({ "mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.size });
        if let Some(a) = &self.annotations {
            d["annotations"] = a.clone();
        }
        d
    }
}

/// Builds in flight, by build key: concurrent first requests for one image
/// wait for one build instead of each hashing every layer.
#[derive(Default)]
pub struct Builds(std::sync::Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>);

/// The manifest of `spec` in `flavour`, built once and then looked up.
pub async fn manifest(reg: &Registry, spec: &ImageSpec, flavour: Flavour) -> Result<Manifest, RegistryError> {
    let key = spec_key(spec, flavour);
    if let Some(m) = record::manifest_for_spec(reg, &key).await? {
        return Ok(m);
    }
    let lock = reg.builds.0.lock().expect("poisoned").entry(key).or_default().clone();
    let result = async {
        let _building = lock.lock().await;
        if let Some(m) = record::manifest_for_spec(reg, &key).await? {
            return Ok(m); // built while we waited
        }
        let manifest = build(reg, spec, flavour).await?;
        record::put_manifest_for_spec(reg, &key, &manifest).await?;
        Ok(manifest)
    }
    .await;
    reg.builds.0.lock().expect("poisoned").remove(&key);
    result
}

/// What identifies a build: the flavour and the spec's canonical JSON.
fn spec_key(spec: &ImageSpec, flavour: Flavour) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!("storefront image v1 {flavour:?}\n"));
    h.update(serde_json::to_vec(spec).expect("a spec serializes"));
    h.finalize().into()
}

async fn build(reg: &Registry, spec: &ImageSpec, flavour: Flavour) -> Result<Manifest, RegistryError> {
    let store_dir = &reg.config.store_dir;
    let (roots, copy_to_root) = spec.store_paths(store_dir)?;
    let wanted: Vec<StorePath> = roots.iter().chain(&copy_to_root).cloned().collect();
    let closure = closure_of(reg, &wanted).await?;
    let farm = farm::entries(&copy_to_root, &closure, store_dir, &*reg.directories).await?;

    let layers = match flavour {
        Flavour::Ordinary => {
            let mut layers = store_layers(reg, &roots, &closure, spec.layer_compression.as_deref()).await?;
            layers.push(small_layer(reg, farm_entries(&farm), false, None).await?);
            layers
        }
        Flavour::NixSnapshotter => vec![nix_layer(reg, &closure, &farm).await?],
    };

    let config = config_json(spec, &layers);
    let config_bytes = Bytes::from(serde_json::to_vec(&config).expect("JSON serializes"));
    let config_digest = record::put_small_blob(reg, config_bytes.clone()).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len() },
        "layers": layers.iter().map(Described::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Manifest::new(OCI_MANIFEST, serde_json::to_vec(&manifest).expect("JSON serializes").into());
    record::put_manifest(reg, &manifest).await?;
    Ok(manifest)
}

/// The closure of `roots`; a missing path is the spec's fault (400).
async fn closure_of(reg: &Registry, roots: &[StorePath]) -> Result<Vec<PathInfo>, RegistryError> {
    closure(&*reg.paths, roots).await.map_err(|e| match e {
        castore::Error::NotFound(m) => super::invalid_spec(format!("the image's closure is incomplete: {m}")),
        e => e.into(),
    })
}

/// The layers holding the closure of `roots`, highest rating first.
pub(super) async fn closure_layers(reg: &Registry, roots: &[StorePath]) -> Result<Vec<Described>, RegistryError> {
    let closure = closure_of(reg, roots).await?;
    store_layers(reg, roots, &closure, None).await
}

async fn store_layers(
    reg: &Registry,
    roots: &[StorePath],
    closure: &[PathInfo],
    compression: Option<&str>,
) -> Result<Vec<Described>, RegistryError> {
    let mut layers = Vec::new();
    for paths in group_paths(roots, closure) {
        let layer = store_layer(reg, &paths, closure).await?;
        layers.push(match compression {
            None => layer,
            Some(c) => compressed_layer(reg, &paths, closure, layer, c).await?,
        });
    }
    Ok(layers)
}

/// The closure grouped Nixery-style, highest rating first.
fn group_paths(roots: &[StorePath], closure: &[PathInfo]) -> Vec<Vec<StorePath>> {
    let nodes: Vec<PathNode> = closure
        .iter()
        .map(|i| PathNode { path: i.store_path.clone(), nar_size: i.nar_size, references: i.references.clone() })
        .collect();
    group::group_layers(roots, &nodes, &HashMap::new(), group::DEFAULT_BUDGET).into_iter().map(|l| l.paths).collect()
}

/// A layer of store paths: described by its recipe, rendered on request.
async fn store_layer(reg: &Registry, paths: &[StorePath], closure: &[PathInfo]) -> Result<Described, RegistryError> {
    let recipe = record::LayerRecipe::new(paths, closure);
    let (digest, size) = match record::layer_for_recipe(reg, &recipe).await? {
        Some(known) => known,
        None => {
            let layout = recipe.layout(reg).await?;
            let reader = LayoutReader::new(Arc::new(layout), reg.blobs.clone());
            let (sha256, size) = tar::digest(reader).await?;
            let digest = Digest(sha256);
            record::put_layer(reg, &recipe, digest, size).await?;
            (digest, size)
        }
    };
    Ok(Described { media_type: OCI_LAYER_TAR, digest, size, diff_id: digest, annotations: None })
}

/// A store-path layer compressed (`gzip` or `zstd`): computed once, by
/// streaming the rendered tar through the encoder into castore, and kept
/// there (the uncompressed layer stays unstored).
async fn compressed_layer(
    reg: &Registry,
    paths: &[StorePath],
    closure: &[PathInfo],
    plain: Described,
    compression: &str,
) -> Result<Described, RegistryError> {
    use async_compression::{Level, tokio::bufread};
    use futures::TryStreamExt;
    let (media_type, level) = match compression {
        "gzip" => (OCI_LAYER_GZIP, Level::Default),
        _ => (OCI_LAYER_ZSTD, Level::Precise(9)),
    };
    let recipe = record::LayerRecipe::new(paths, closure);
    if let Some((digest, size)) = record::compressed_layer(reg, &recipe, compression).await? {
        return Ok(Described { media_type, digest, size, diff_id: plain.diff_id, annotations: None });
    }
    let layout = recipe.layout(reg).await?;
    let tar = tokio::io::BufReader::with_capacity(256 << 10, LayoutReader::new(Arc::new(layout), reg.blobs.clone()));
    let encoded: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match compression {
        "gzip" => Box::new(bufread::GzipEncoder::with_quality(tar, level)),
        _ => Box::new(bufread::ZstdEncoder::with_quality(tar, level)),
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let pieces = tokio_util::io::ReaderStream::with_capacity(encoded, 256 << 10).inspect_ok(|piece| {
        hasher.update(piece);
        size += piece.len() as u64;
    });
    let b3 = reg.blobs.put_stream(Box::pin(pieces), None).await?;
    let digest = Digest(hasher.finalize().into());
    record::put_compressed_layer(reg, &recipe, compression, digest, size, b3).await?;
    Ok(Described { media_type, digest, size, diff_id: plain.diff_id, annotations: None })
}

/// A layer without file contents (directories, symlinks, empty files),
/// rendered to memory — it is small — and stored as a castore blob;
/// gzipped (deterministically: no name, no time) when `gzip`.
async fn small_layer(
    reg: &Registry,
    entries: Vec<tar::TarEntry>,
    gzip: bool,
    annotations: Option<Value>,
) -> Result<Described, RegistryError> {
    // nix-snapshotter's layers are gzipped, with mtime 0 (its format);
    // ordinary layers keep the tar module's mtime.
    let mtime = if gzip { 0 } else { tar::MTIME };
    let layout = tar::tar_layout_at(entries, mtime).map_err(castore::Error::from)?;
    let mut data = Vec::with_capacity(layout.len() as usize);
    let mut reader = LayoutReader::new(Arc::new(layout), reg.blobs.clone());
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut data)
        .await
        .map_err(|e| RegistryError::internal(format!("rendering a layer: {e}")))?;
    let diff_id = Digest::of(&data);
    let (media_type, blob) = if gzip {
        let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
        gz.write_all(&data).and_then(|()| gz.flush()).map_err(|e| RegistryError::internal(format!("gzip: {e}")))?;
        (OCI_LAYER_GZIP, Bytes::from(gz.finish().map_err(|e| RegistryError::internal(format!("gzip: {e}")))?))
    } else {
        (OCI_LAYER_TAR, Bytes::from(data))
    };
    let size = blob.len() as u64;
    let digest = record::put_small_blob(reg, blob).await?;
    Ok(Described { media_type, digest, size, diff_id, annotations })
}

/// nix-snapshotter's one layer: `nix/store/` with a mount point per closure
/// path, the copy-to-root farm, and the annotations naming the paths — both
/// the per-path form every version reads and `nix-closure`, a closure-info
/// path stored here like any other path.
async fn nix_layer(
    reg: &Registry,
    closure: &[PathInfo],
    farm: &std::collections::BTreeMap<String, farm::FarmEntry>,
) -> Result<Described, RegistryError> {
    let store_dir = &reg.config.store_dir;
    let mut sorted: Vec<&PathInfo> = closure.iter().collect();
    sorted.sort_by_key(|i| i.store_path.to_absolute(store_dir));
    let paths: Vec<StorePath> = sorted.iter().map(|i| i.store_path.clone()).collect();
    let info = store::closure_info::put_closure_info(
        "closure-info",
        &paths,
        store_dir,
        &reg.blobs,
        &reg.directories,
        &*reg.paths,
    )
    .await?;

    let mut annotations = serde_json::Map::new();
    annotations.insert(NIX_LAYER.into(), "true".into());
    for (i, p) in sorted.iter().enumerate() {
        annotations.insert(format!("{NIX_STORE_PATH}.{i}"), p.store_path.to_absolute(store_dir).into());
    }
    annotations.insert(NIX_CLOSURE.into(), info.store_path.to_absolute(store_dir).into());

    let mount_points: Vec<(StorePath, bool)> =
        sorted.iter().map(|i| (i.store_path.clone(), matches!(i.node, Node::Directory { .. }))).collect();
    let mut entries = farm_entries(farm);
    // The store directory and its parents (`nix/`, `nix/store/`), 0755 as
    // nix-snapshotter makes them.
    let mut parent = String::new();
    for part in store_dir.trim_start_matches('/').split('/') {
        parent = if parent.is_empty() { part.to_owned() } else { format!("{parent}/{part}") };
        entries.push(TarEntry::dir(parent.as_bytes().to_vec()).with_mode(tar::STORE_DIR_MODE));
    }
    for (path, is_dir) in mount_points {
        let at = path.to_absolute(store_dir).trim_start_matches('/').as_bytes().to_vec();
        entries.push(match is_dir {
            true => TarEntry::dir(at).with_mode(0o755),
            false => TarEntry::file(at, B3Digest::of(b""), 0, false).with_mode(0o555),
        });
    }
    small_layer(reg, entries, true, Some(Value::Object(annotations))).await
}

/// The copy-to-root farm as tar entries.
fn farm_entries(farm: &std::collections::BTreeMap<String, farm::FarmEntry>) -> Vec<TarEntry> {
    farm.iter()
        .map(|(path, entry)| {
            let path = path.as_bytes().to_vec();
            match entry {
                farm::FarmEntry::Dir => TarEntry::dir(path).with_mode(0o755),
                farm::FarmEntry::TmpDir => TarEntry::dir(path).with_mode(0o1777),
                farm::FarmEntry::Symlink(target) => TarEntry::symlink(path, target.clone()),
            }
        })
        .collect()
}

/// The image configuration: the runtime settings exactly as given, and the
/// layers' diff ids.
fn config_json(spec: &ImageSpec, layers: &[Described]) -> Value {
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let mut config = json!({ "Env": env });
    if let Some(e) = &spec.entrypoint {
        config["Entrypoint"] = json!(e);
    }
    if let Some(c) = &spec.cmd {
        config["Cmd"] = json!(c);
    }
    if let Some(w) = &spec.workdir {
        config["WorkingDir"] = json!(w);
    }
    if let Some(u) = &spec.user {
        config["User"] = json!(u);
    }
    json!({
        "architecture": spec.arch,
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>() },
    })
}
