//! [`Target`]: the store an import writes to, and how it checks NAR hashes.
use std::sync::Arc;

use async_trait::async_trait;
use castore::{BlobService, DirectoryService, Error, Node, Result};

use crate::pathinfo::{GrpcPathInfoService, KvPathInfoService, PathInfoService};

/// Calculates the NarSize and NarHash (SHA-256) of a stored node, the
/// question of the CalculateNAR RPC.
///
/// Locally that is rendering the NAR from the castore ([`LocalNarCalculator`]);
/// a remote store answers it itself ([`GrpcPathInfoService`]), so checking
/// an upload does not pull its bytes back over the network.
#[async_trait]
pub trait NarCalculationService: Send + Sync + 'static {
    async fn calculate_nar(&self, node: &Node) -> Result<(u64, [u8; 32])>;
}

/// Renders the NAR from a local castore and hashes it.
#[derive(Clone)]
pub struct LocalNarCalculator {
    pub blobs: Arc<dyn BlobService>,
    pub directories: Arc<dyn DirectoryService>,
}

#[async_trait]
impl NarCalculationService for LocalNarCalculator {
    async fn calculate_nar(&self, node: &Node) -> Result<(u64, [u8; 32])> {
        crate::nar::calculate(node, self.blobs.clone(), self.directories.clone()).await
    }
}

#[async_trait]
impl NarCalculationService for GrpcPathInfoService {
    async fn calculate_nar(&self, node: &Node) -> Result<(u64, [u8; 32])> {
        GrpcPathInfoService::calculate_nar(self, node).await
    }
}

/// The three services of one store, and the way to check what was stored.
#[derive(Clone)]
pub struct Target {
    pub blobs: Arc<dyn BlobService>,
    pub directories: Arc<dyn DirectoryService>,
    pub paths: Arc<dyn PathInfoService>,
    pub nar: Arc<dyn NarCalculationService>,
}

impl Target {
    /// A store in local services: NAR hashes are calculated here.
    pub fn local(
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        paths: Arc<dyn PathInfoService>,
    ) -> Self {
        let nar = Arc::new(LocalNarCalculator { blobs: blobs.clone(), directories: directories.clone() });
        Self { blobs, directories, paths, nar }
    }

    /// All three services at one address: `grpc+http://host:port` (and the
    /// other gRPC forms, `?package=tvix` included) is a remote server, which
    /// also calculates NAR hashes; `redb:/path/castore.redb` or `memory:`
    /// is a store in this process.
    pub fn open(addr: &str) -> Result<Self> {
        let url = castore::parse_service_address(addr)?;
        if url.scheme().starts_with("grpc+") {
            // One channel (one HTTP/2 connection) carries all three services.
            let transport = castore::grpc::connect(&url)?;
            let paths = Arc::new(GrpcPathInfoService::new(transport.clone()));
            return Ok(Self {
                blobs: Arc::new(castore::grpc::GrpcBlobService::new(transport.clone())),
                directories: Arc::new(castore::grpc::GrpcDirectoryService::new(transport)),
                paths: paths.clone(),
                nar: paths,
            });
        }
        let kv = castore::kv::open_url(&url)?.ok_or_else(|| {
            Error::InvalidRequest(format!("unknown store address {addr:?}; use {}", castore::SERVICE_ADDRESS_FORMS))
        })?;
        let blobs: Arc<dyn BlobService> = Arc::new(castore::blob::ChunkedBlobService::new(kv.clone()));
        let directories: Arc<dyn DirectoryService> = Arc::new(castore::dirsvc::KvDirectoryService::new(kv.clone()));
        let paths = Arc::new(KvPathInfoService::new(kv, blobs.clone(), directories.clone()));
        Ok(Self::local(blobs, directories, paths))
    }
}
