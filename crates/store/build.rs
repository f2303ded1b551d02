//! Generates the store messages and services from `proto/`.
//!
//! As in the castore crate, Rust code comes from the snix package only (the
//! castore types it uses are the castore crate's); the tvix package only
//! contributes a descriptor set, for reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let snix = root.join("snix/store/v1/store.proto");
    let tvix = root.join("tvix/store/v1/store.proto");
    println!("cargo:rerun-if-changed={}", snix.display());
    println!("cargo:rerun-if-changed={}", tvix.display());

    tonic_prost_build::configure()
        .bytes(".")
        .extern_path(".snix.castore.v1", "::castore::proto")
        .file_descriptor_set_path(out.join("snix_store_descriptor.bin"))
        .compile_protos(&[&snix], &[&root])?;
    let unused = out.join("tvix-unused");
    std::fs::create_dir_all(&unused)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out.join("tvix_store_descriptor.bin"))
        .out_dir(unused)
        .compile_protos(&[&tvix], &[&root])?;
    Ok(())
}
