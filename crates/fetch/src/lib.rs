//! The gRPC client side of storefront: store paths, with their closures,
//! fetched from a store's castore and PathInfo services and materialised on
//! disk the way Nix lays out its store.
//!
//! - [`Fetcher`] walks the closure of the roots through PathInfo
//!   references, skips paths present in the target directory, and writes
//!   the others several at a time: directory closures with one recursive
//!   Get, small files in batches and large ones streamed whole, or
//!   identical files already on disk hard-linked or copied, everything
//!   checked against its digest. Each path is built beside its target,
//!   compared with its NarHash where keys, the host Nix store or the caller
//!   ask for it (and, with trusted keys, its signature), then renamed into
//!   place: a path appears whole and verified, or not at all. Progress is
//!   published on a watch channel.
//! - [`HostNix`] and [`register_with_nix`] make paths fetched into the
//!   host's Nix store valid there (`nix-store --register-validity`) and add
//!   GC roots (`nix-store --add-root`).
//! - [`nar_hash_of_tree`] is the NAR hash of a tree on disk, streamed and
//!   never written (how a path found on disk is checked).
mod error;
mod fetcher;
mod local;
mod nar;
mod nix;
mod trust;

pub use error::FetchError;
pub use fetcher::{DEFAULT_JOBS, Fetched, Fetcher, Progress, Summary};
pub use nar::{nar_hash_of_tree, nar_hash_of_tree_blocking};
pub use nix::{HostNix, register_with_nix};
