//! A containerd proxy snapshotter (`containerd.services.snapshots.v1`)
//! that needs no Nix on the host.
//!
//! Ordinary layers behave as containerd's overlayfs snapshotter: each
//! snapshot is a directory `snapshots/<id>/{fs,work}` under the root, and
//! mounts are a bind mount (no parent) or an overlay whose `lowerdir` is the
//! parent chain, newest first. A *nix layer* (a layer whose labels carry
//! nix-snapshotter's annotations, [`nix::NixLayer`]) additionally makes its
//! store paths present in the snapshotter's own store directory
//! (`store/<hash>-<name>`, shared by all snapshots), fetched over gRPC by a
//! [`PathFetcher`]; every snapshot records the store paths it roots, and a
//! path is deleted once no snapshot roots it. A snapshot whose parent chain
//! holds nix layers (a container's) gets, after its overlay, a read-only
//! bind mount of each of their store paths onto `/nix/store/<base>`.
//!
//! Metadata lives in a redb database (`metadata.redb`), which is the truth:
//! a directory it does not name is garbage ([`Snapshotter::cleanup`]
//! removes it), so every change writes the database first when removing and
//! last when creating, and deletion goes through a rename into `trash/`.
pub mod error;
pub mod filter;
mod fsops;
mod grpc_fetch;
mod meta;
mod mounts;
pub mod nix;
pub mod proto;
mod service;
mod snapshots;
mod usage;

pub use error::Error;
pub use grpc_fetch::GrpcFetcher;
pub use meta::{Kind, Usage};
pub use nix::{FetchFailure, PathFetcher};
pub use service::{SnapshotsService, serve};
pub use snapshots::{Info, Snapshotter};
