//! Backends chosen by URL, in the spellings tvix/snix users know.
use std::sync::Arc;

use crate::{
    BlobService, DirectoryService, Error, Result,
    blob::ChunkedBlobService,
    dirsvc::KvDirectoryService,
    grpc::{self, GrpcBlobService, GrpcDirectoryService},
    kv::KvStore,
};

/// The address forms every service accepts, for error messages.
pub const SERVICE_ADDRESS_FORMS: &str = "memory:, redb:/path/castore.redb, \
                                         objectstore+s3://bucket/prefix?endpoint=URL&region=NAME, \
                                         objectstore+file:///path, objectstore+memory:, \
                                         cache:?near=redb:/path&far=objectstore+s3://… (write & inside far as %26), \
                                         grpc+http://host:port, grpc+https://host:port, grpc+unix:/path.sock \
                                         (append ?package=tvix for tvix servers)";

/// Parses a service address, with an error that lists the accepted forms.
pub fn parse_service_address(addr: &str) -> Result<url::Url> {
    url::Url::parse(addr).map_err(|e| {
        Error::InvalidRequest(format!("invalid service address {addr:?}: {e}; use {SERVICE_ADDRESS_FORMS}"))
    })
}

/// Opens a local engine or a gRPC transport for `addr`, then builds the
/// service with `local` or `remote`. Layers above the castore (the store's
/// PathInfo service) open theirs through this too, so every service takes
/// the same addresses.
pub fn open_service<T: ?Sized>(
    addr: &str,
    what: &str,
    local: impl FnOnce(Arc<dyn KvStore>) -> Arc<T>,
    remote: impl FnOnce(grpc::Transport) -> Arc<T>,
) -> Result<Arc<T>> {
    let url = parse_service_address(addr)?;
    if let Some(kv) = crate::kv::open_url(&url)? {
        return Ok(local(kv));
    }
    if url.scheme().starts_with("grpc+") {
        return Ok(remote(grpc::connect(&url)?));
    }
    Err(Error::InvalidRequest(format!("unknown {what} service address {addr:?}; use {SERVICE_ADDRESS_FORMS}")))
}

/// Opens a [`BlobService`] from an address such as `redb:/var/lib/storefront/castore.redb`.
pub fn blob_service_from_url(addr: &str) -> Result<Arc<dyn BlobService>> {
    open_service::<dyn BlobService>(
        addr,
        "blob",
        |kv| Arc::new(ChunkedBlobService::new(kv)),
        |t| Arc::new(GrpcBlobService::new(t)),
    )
}

/// Opens a [`DirectoryService`] from an address such as `grpc+unix:/run/storefront.sock`.
pub fn directory_service_from_url(addr: &str) -> Result<Arc<dyn DirectoryService>> {
    open_service::<dyn DirectoryService>(
        addr,
        "directory",
        |kv| Arc::new(KvDirectoryService::new(kv)),
        |t| Arc::new(GrpcDirectoryService::new(t)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(addr: &str, needle: &str) {
        match blob_service_from_url(addr) {
            Err(Error::InvalidRequest(msg)) => assert!(msg.contains(needle), "{addr}: {msg}"),
            Err(e) => panic!("{addr}: unexpected error {e}"),
            Ok(_) => panic!("{addr} was accepted"),
        }
    }

    #[tokio::test]
    async fn addresses_are_checked() {
        refused("nonsense", "invalid service address");
        refused("s3://bucket", "unknown blob service address");
        refused("grpc+http://127.0.0.1:1?package=nix", "unknown package");
        refused("grpc+ftp://host", "not a gRPC scheme");
        assert!(blob_service_from_url("memory:").is_ok());
        assert!(directory_service_from_url("redb+memory:").is_ok());
        assert!(directory_service_from_url("grpc+http://127.0.0.1:1?package=tvix").is_ok());
        assert!(blob_service_from_url("grpc+unix:/run/castore.sock").is_ok());
    }

    #[tokio::test]
    async fn one_redb_file_is_shared_by_both_services() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("redb:{}", dir.path().join("castore.redb").display());
        let blobs = blob_service_from_url(&addr).unwrap();
        let dirs = directory_service_from_url(&addr).unwrap();
        let digest = blobs.put_bytes(bytes::Bytes::from_static(b"shared"), None).await.unwrap();
        assert!(blobs.has(&digest).await.unwrap());
        assert!(dirs.get(&digest).await.unwrap().is_none());
    }
}
