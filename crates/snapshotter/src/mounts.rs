//! The mounts a snapshot is used through, as containerd's overlayfs
//! snapshotter returns them, plus read-only bind mounts of nix layers'
//! store paths.
use std::path::{Path, PathBuf};

use crate::{meta::Kind, proto::Mount};

/// Where snapshot directories and store paths live under the root.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn snapshot(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }
    pub fn fs(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("fs")
    }
    pub fn work(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("work")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("metadata.redb")
    }
}

/// Options every overlay mount gets: `index=off` where the kernel has the
/// index feature (as containerd does, so that a lower directory can be
/// shared by overlays with different upper directories).
pub fn default_overlay_options() -> Vec<String> {
    if Path::new("/sys/module/overlay/parameters/index").exists() { vec!["index=off".to_owned()] } else { Vec::new() }
}

/// The overlay (or bind) mounts of snapshot `id` of `kind` whose parents
/// (ids, nearest first) are `parents`:
/// - no parent: its own directory, bound (read-only for a view);
/// - active: an overlay with its directory as upper, the parents as lower;
/// - a view of one parent: that parent's directory, bound read-only (an
///   overlay needs two lower directories when it has no upper one);
/// - a view of more: a read-only overlay of the parents.
pub fn layer_mounts(layout: &Layout, id: u64, kind: Kind, parents: &[u64], overlay_options: &[String]) -> Vec<Mount> {
    let path = |p: PathBuf| p.display().to_string();
    if parents.is_empty() {
        let mode = if kind == Kind::View { "ro" } else { "rw" };
        return vec![Mount {
            r#type: "bind".into(),
            source: path(layout.fs(id)),
            target: String::new(),
            options: vec![mode.into(), "rbind".into()],
        }];
    }
    if kind != Kind::Active && parents.len() == 1 {
        return vec![Mount {
            r#type: "bind".into(),
            source: path(layout.fs(parents[0])),
            target: String::new(),
            options: vec!["ro".into(), "rbind".into()],
        }];
    }
    let mut options = overlay_options.to_vec();
    if kind == Kind::Active {
        options.push(format!("workdir={}", path(layout.work(id))));
        options.push(format!("upperdir={}", path(layout.fs(id))));
    }
    let lower: Vec<String> = parents.iter().map(|p| path(layout.fs(*p))).collect();
    options.push(format!("lowerdir={}", lower.join(":")));
    vec![Mount { r#type: "overlay".into(), source: "overlay".into(), target: String::new(), options }]
}

/// A read-only bind mount of a store path onto the same path in the
/// container (`/nix/store/<base>`, a mount point the nix layer made).
pub fn store_path_mount(layout: &Layout, base: &str) -> Mount {
    Mount {
        r#type: "bind".into(),
        source: layout.store().join(base).display().to_string(),
        target: format!("{}/{base}", store::DEFAULT_STORE_DIR),
        options: vec!["ro".into(), "rbind".into()],
    }
}
