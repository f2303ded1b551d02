//! Generates the store messages and services from `proto/`.
//!
//! As in the castore crate, Rust code comes from the snix package only (the
//! castore types it uses are the castore crate's); the tvix package only
//! contributes a descriptor set, for reflection. storefront's extension
//! package (`storefront.store.v1`) is generated alongside.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let snix = root.join("snix/store/v1/store.proto");
    let tvix = root.join("tvix/store/v1/store.proto");
    println!("cargo:rerun-if-changed={}", snix.display());
    println!("cargo:rerun-if-changed={}", tvix.display());
    let batch = root.join("storefront/store/v1/batch.proto");
    println!("cargo:rerun-if-changed={}", batch.display());

    tonic_prost_build::configure()
        .bytes(".")
        .extern_path(".snix.castore.v1", "::castore::proto")
        .file_descriptor_set_path(out.join("snix_store_descriptor.bin"))
        .compile_protos(&[&snix], &[&root])?;
    // storefront's own extension (see the file).
    let batch_out = out.join("storefront");
    std::fs::create_dir_all(&batch_out)?;
    tonic_prost_build::configure()
        .bytes(".")
        .extern_path(".snix.castore.v1", "::castore::proto")
        .extern_path(".snix.store.v1", "crate::proto")
        .file_descriptor_set_path(out.join("storefront_store_descriptor.bin"))
        // Its own directory: the imported snix package's file would
        // otherwise be written over (empty, as it is extern here).
        .out_dir(&batch_out)
        .compile_protos(&[&batch], &[&root])?;
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
