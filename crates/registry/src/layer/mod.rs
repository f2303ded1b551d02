//! Image layers made of store paths.
//!
//! - [`group`] groups a closure's store paths into layers, Nixery-style.
//! - [`tar`] lays a layer out as a deterministic POSIX tar
//!   ([`castore::render::Layout`]) from castore: headers are literal bytes,
//!   file contents are blobs, so a layer is rendered while it streams
//!   ([`castore::render::LayoutReader`]: any byte range, blobs fetched
//!   ahead) and never stored.
pub mod group;
pub mod tar;
