//! The PathInfoService chosen by URL, in the spellings tvix/snix users know
//! (`PATH_INFO_SERVICE_ADDR`).
use std::sync::Arc;

use castore::{BlobService, DirectoryService, Error, Result, kv};

use crate::pathinfo::{GrpcPathInfoService, KvPathInfoService, PathInfoService};

const FORMS: &str = "memory:, redb:/path/castore.redb, grpc+http://host:port, grpc+https://host:port, \
                     grpc+unix:/path.sock (append ?package=tvix for tvix servers)";

/// Opens a [`PathInfoService`] from an address. Local engines check puts
/// against `blobs` and `directories` (the castore holding the contents).
pub fn path_info_service_from_url(
    addr: &str,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
) -> Result<Arc<dyn PathInfoService>> {
    let url = url::Url::parse(addr)
        .map_err(|e| Error::InvalidRequest(format!("invalid service address {addr:?}: {e}; use {FORMS}")))?;
    if url.scheme().starts_with("grpc+") {
        return Ok(Arc::new(GrpcPathInfoService::new(castore::grpc::connect(&url)?)));
    }
    let engine = kv::open_url(&url)?
        .ok_or_else(|| Error::InvalidRequest(format!("unknown PathInfo service address {addr:?}; use {FORMS}")))?;
    Ok(Arc::new(KvPathInfoService::new(engine, blobs, directories)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use castore::Node;
    use futures::TryStreamExt;

    use super::*;
    use crate::{PathInfo, StorePath};

    fn info(seed: u8, references: Vec<StorePath>) -> PathInfo {
        PathInfo {
            store_path: StorePath::from_parts([seed; 20], "p").unwrap(),
            node: Node::Symlink { target: Bytes::from_static(b"x") },
            references,
            nar_size: 1,
            nar_sha256: [0; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    /// `memory:` and `redb:` keep records, list them, and enforce the
    /// reference precondition; unknown addresses are refused clearly.
    #[tokio::test]
    async fn local_backends() {
        let dir = tempfile::tempdir().unwrap();
        let redb = format!("redb:{}", dir.path().join("castore.redb").display());
        for addr in ["memory:", redb.as_str()] {
            let blobs = castore::blob_service_from_url(addr).unwrap();
            let dirs = castore::directory_service_from_url(addr).unwrap();
            let paths = path_info_service_from_url(addr, blobs, dirs).unwrap();
            let a = info(1, vec![]);
            let b = info(2, vec![a.store_path.clone()]);
            assert!(matches!(paths.put(b.clone()).await, Err(Error::FailedPrecondition(_))), "{addr}");
            paths.put(a.clone()).await.unwrap();
            paths.put(b.clone()).await.unwrap();
            assert_eq!(paths.get(&[2; 20]).await.unwrap(), Some(b), "{addr}");
            assert_eq!(paths.list().try_collect::<Vec<_>>().await.unwrap().len(), 2, "{addr}");
        }
        let memory = castore::blob_service_from_url("memory:").unwrap();
        let dirs = castore::directory_service_from_url("memory:").unwrap();
        for (bad, needle) in [("s3://bucket", "unknown PathInfo service"), ("nonsense", "invalid service address")] {
            match path_info_service_from_url(bad, memory.clone(), dirs.clone()) {
                Err(Error::InvalidRequest(m)) => assert!(m.contains(needle), "{bad}: {m}"),
                Err(e) => panic!("{bad}: {e}"),
                Ok(_) => panic!("{bad} accepted"),
            }
        }
    }
}
