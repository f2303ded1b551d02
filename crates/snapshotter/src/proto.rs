//! containerd's messages and the Snapshots service, generated from
//! `proto/containerd/` (modules follow the protobuf packages, which the
//! generated code's cross-package paths rely on).
#![allow(clippy::all, missing_docs)]

pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

pub use containerd::services::snapshots::v1::*;
pub use containerd::types::Mount;
