//! The PathInfoService chosen by URL, in the spellings tvix/snix users know
//! (`PATH_INFO_SERVICE_ADDR`).
use std::sync::Arc;

use castore::{BlobService, DirectoryService, Result};

use crate::pathinfo::{GrpcPathInfoService, KvPathInfoService, PathInfoService};

/// Opens a [`PathInfoService`] from an address (the same forms as the
/// castore services). Local engines check puts against `blobs` and
/// `directories` (the castore holding the contents).
pub fn path_info_service_from_url(
    addr: &str,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
) -> Result<Arc<dyn PathInfoService>> {
    castore::open_service::<dyn PathInfoService>(
        addr,
        "PathInfo",
        |kv| Arc::new(KvPathInfoService::new(kv, blobs, directories)),
        |t| Arc::new(GrpcPathInfoService::new(t)),
    )
}

#[cfg(test)]
mod tests {
    use castore::Error;
    use futures::TryStreamExt;

    use super::*;
    use crate::pathinfo::test_info as info;

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
            let a = info(1, &[]);
            let b = info(2, &[1]);
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
