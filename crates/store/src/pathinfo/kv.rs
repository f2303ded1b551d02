//! [`KvPathInfoService`]: PathInfo records in a castore [`KvStore`] engine
//! (`memory:`, or the embedded database beside the castore's own tables).
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use castore::{
    BlobService, DirectoryService, Error, Node, Result,
    kv::{KvStore, Table},
};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use prost::Message;

use super::{PathInfo, PathInfoService};
use crate::{StorePath, proto, store_path::DIGEST_LEN};

/// Store path digest (20 bytes) → encoded `PathInfo` message.
pub const PATH_INFO: Table = Table::named("pathinfo");

/// PathInfo records in a key-value engine.
///
/// A put is refused unless the path's contents are in the castore and every
/// path it references (other than itself) is already stored, so a reader
/// that finds a PathInfo can always render it and its whole closure.
#[derive(Clone)]
pub struct KvPathInfoService {
    kv: Arc<dyn KvStore>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
}

impl KvPathInfoService {
    /// PathInfo records in `kv`, checked against the castore services that
    /// hold their contents.
    pub fn new(kv: Arc<dyn KvStore>, blobs: Arc<dyn BlobService>, directories: Arc<dyn DirectoryService>) -> Self {
        Self { kv, blobs, directories }
    }

    /// Fails unless everything `info` names is stored.
    async fn check_present(&self, info: &PathInfo) -> Result<()> {
        let contents = match &info.node {
            // A stored directory implies its whole closure (puts are validated).
            Node::Directory { digest, .. } => self.directories.get(digest).await?.is_some(),
            Node::File { digest, .. } => self.blobs.has(digest).await?,
            Node::Symlink { .. } => true,
        };
        if !contents {
            return Err(Error::FailedPrecondition(format!(
                "{}: its contents are not in the castore; upload blobs and directories first",
                info.store_path
            )));
        }
        let others: Vec<StorePath> = info.references.iter().filter(|r| **r != info.store_path).cloned().collect();
        let kv = self.kv.clone();
        let present: Vec<bool> = futures::stream::iter(others.clone())
            .map(|r| {
                let kv = kv.clone();
                async move { kv.contains(PATH_INFO, r.digest()).await }
            })
            .buffered(16)
            .try_collect()
            .await?;
        let missing: Vec<String> =
            others.iter().zip(present).filter(|(_, here)| !here).map(|(r, _)| r.to_string()).collect();
        if !missing.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{}: referenced paths are not stored yet: {}",
                info.store_path,
                missing.join(", ")
            )));
        }
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<PathInfo> {
    let msg = proto::PathInfo::decode(bytes).map_err(|e| Error::Storage(format!("corrupt PathInfo record: {e}")))?;
    PathInfo::from_proto(msg).map_err(|e| Error::Storage(format!("corrupt PathInfo record: {e}")))
}

#[async_trait]
impl PathInfoService for KvPathInfoService {
    async fn get(&self, digest: &[u8; DIGEST_LEN]) -> Result<Option<PathInfo>> {
        self.kv.get(PATH_INFO, digest).await?.map(|b| decode(&b)).transpose()
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo> {
        let key = *info.store_path.digest();
        if let Some(stored) = self.get(&key).await? {
            return Ok(stored);
        }
        self.check_present(&info).await?;
        let record = Bytes::from(info.to_proto().encode_to_vec());
        self.kv.put(PATH_INFO, vec![(Bytes::copy_from_slice(&key), record)]).await?;
        // A concurrent put of the same path may have won; return what is stored.
        self.get(&key).await?.ok_or_else(|| Error::Storage(format!("{}: PathInfo vanished after put", info.store_path)))
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo>> {
        self.kv.scan(PATH_INFO).map(|r| r.and_then(|(_, v)| decode(&v))).boxed()
    }
}
