//! Generates containerd's Snapshots service and Mount message from
//! `proto/containerd/` (well-known types map to `prost-types`).
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let snapshots = root.join("containerd/services/snapshots/v1/snapshots.proto");
    let mount = root.join("containerd/types/mount.proto");
    println!("cargo:rerun-if-changed={}", snapshots.display());
    println!("cargo:rerun-if-changed={}", mount.display());
    tonic_prost_build::configure().compile_protos(&[&snapshots], &[&root])?;
    Ok(())
}
