//! Helpers shared by the tests and benchmarks of every storefront crate.
//!
//! It exists so that the test and bench code of `castore`, `store` and the
//! `storefront` binary write each helper once: the deterministic [`Rng`],
//! the loader of the reference vectors ([`vectors`]), the harness of the
//! benchmarks ([`bench`]) and a real Garage cluster on loopback
//! ([`garage`]) for the object-storage tests. It is a dev-dependency only
//! (`publish = false`) and depends on no storefront crate, so that
//! `castore` itself can use it without a dependency cycle; each crate turns
//! the vectors' root entries into its own types.
pub mod bench;
pub mod garage;
mod rng;
pub mod vectors;

pub use rng::Rng;
pub use vectors::{RootEntry, Vector, vectors};

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
