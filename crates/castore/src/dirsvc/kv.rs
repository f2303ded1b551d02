//! [`KvDirectoryService`]: directories on a [`KvStore`].
use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{DirectoryService, MAX_CLOSURE_BYTES, validate_closure};
use crate::{
    B3Digest, Directory, Error, Result,
    kv::{KvStore, Table},
};

/// Directories stored by digest, as their canonical encoding.
#[derive(Clone)]
pub struct KvDirectoryService {
    kv: Arc<dyn KvStore>,
}

impl KvDirectoryService {
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv }
    }
}

async fn load(kv: &dyn KvStore, digest: &B3Digest) -> Result<Option<Directory>> {
    let Some(data) = kv.get(Table::DIRECTORIES, digest.as_bytes()).await? else {
        return Ok(None);
    };
    let dir =
        Directory::decode(&data).map_err(|e| Error::Storage(format!("stored directory {digest} is corrupt: {e}")))?;
    Ok(Some(dir))
}

#[async_trait]
impl DirectoryService for KvDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>> {
        load(self.kv.as_ref(), digest).await
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'static, Result<Directory>> {
        let kv = self.kv.clone();
        let root = *root;
        Box::pin(async_stream(move |tx| async move {
            let mut queue = VecDeque::from([(root, None::<B3Digest>)]);
            let mut sent = HashSet::from([root]);
            while let Some((digest, parent)) = queue.pop_front() {
                let dir = match load(kv.as_ref(), &digest).await? {
                    Some(dir) => dir,
                    None => {
                        return Err(match parent {
                            None => Error::NotFound(format!("directory {digest} not found")),
                            Some(p) => Error::Storage(format!("directory {digest} (below {p}) is missing")),
                        });
                    }
                };
                for (_, child, _) in dir.directories() {
                    if sent.insert(child) {
                        queue.push_back((child, Some(digest)));
                    }
                }
                if tx.send(Ok(dir)).await.is_err() {
                    break;
                }
            }
            Ok(())
        }))
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> Result<B3Digest> {
        let kv = self.kv.as_ref();
        let digests = validate_closure(&dirs, |d| async move { load(kv, &d).await }).await?;
        let mut total = 0;
        let mut records = Vec::with_capacity(dirs.len());
        for (dir, digest) in dirs.iter().zip(&digests) {
            let data = dir.encode();
            total += data.len();
            if total > MAX_CLOSURE_BYTES {
                return Err(Error::TooLarge(format!("directory closure exceeds {MAX_CLOSURE_BYTES} bytes")));
            }
            records.push((digest.to_bytes(), data));
        }
        self.kv.put(Table::DIRECTORIES, records).await?;
        Ok(*digests.last().expect("validated non-empty"))
    }
}

/// A stream fed by a producer task through a small channel; the producer's
/// error, if any, ends the stream.
pub(crate) fn async_stream<T, F, Fut>(producer: F) -> impl futures::Stream<Item = Result<T>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T>>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let fut = producer(tx.clone());
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
