//! Generates the castore messages and services from `proto/`.
//!
//! Rust code is generated once, from the snix package: the tvix package has
//! the same field numbers, so the same types encode the same bytes. Both
//! packages go into the descriptor set, so reflection lists both and the
//! server can answer under both method paths (see `grpc::package`).
//! storefront's extension package (`storefront.castore.v1`) is generated
//! alongside.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let snix = root.join("snix/castore/v1/castore.proto");
    let tvix = root.join("tvix/castore/v1/castore.proto");
    println!("cargo:rerun-if-changed={}", snix.display());
    println!("cargo:rerun-if-changed={}", tvix.display());
    let batch = root.join("storefront/castore/v1/batch.proto");
    println!("cargo:rerun-if-changed={}", batch.display());

    tonic_prost_build::configure()
        .bytes(".")
        .file_descriptor_set_path(out.join("snix_castore_descriptor.bin"))
        .compile_protos(&[&snix], &[&root])?;
    // storefront's own extension (see the file).
    let batch_out = out.join("storefront");
    std::fs::create_dir_all(&batch_out)?;
    tonic_prost_build::configure()
        .bytes(".")
        .extern_path(".snix.castore.v1", "crate::proto")
        .file_descriptor_set_path(out.join("storefront_castore_descriptor.bin"))
        // Its own directory: the imported snix package's file would
        // otherwise be written over (empty, as it is extern here).
        .out_dir(&batch_out)
        .compile_protos(&[&batch], &[&root])?;
    // The tvix package only contributes its descriptor (for reflection).
    let unused = out.join("tvix-unused");
    std::fs::create_dir_all(&unused)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out.join("tvix_castore_descriptor.bin"))
        .out_dir(unused)
        .compile_protos(&[&tvix], &[&root])?;
    Ok(())
}
