//! [`DirectoryService`]: the Merkle DAG of directories.
use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{B3Digest, Directory, Result};

mod closure;
mod kv;

pub use closure::validate_closure;
pub use kv::KvDirectoryService;
pub(crate) use kv::async_stream;

/// Most encoded bytes one directory closure may carry in a single put.
pub const MAX_CLOSURE_BYTES: usize = 512 << 20;

/// Stores and serves directories.
#[async_trait]
pub trait DirectoryService: Send + Sync + 'static {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>>;

    /// The directory and every directory below it: root first, then
    /// breadth-first, each once. A missing root is [`crate::Error::NotFound`];
    /// a missing child is an error too.
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'static, Result<Directory>>;

    /// Stores a closure sent leaves first, root last, and returns the root's
    /// digest. Each child must be earlier in `dirs` or already stored, with a
    /// size that fits it, and every directory must be reachable from the root.
    /// Nothing is written unless all of it is valid.
    async fn put_closure(&self, dirs: Vec<Directory>) -> Result<B3Digest>;

    /// Stores one directory whose children are already stored.
    async fn put(&self, dir: Directory) -> Result<B3Digest> {
        self.put_closure(vec![dir]).await
    }
}

#[async_trait]
impl<T: DirectoryService + ?Sized> DirectoryService for std::sync::Arc<T> {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>> {
        (**self).get(digest).await
    }
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'static, Result<Directory>> {
        (**self).get_recursive(root)
    }
    async fn put_closure(&self, dirs: Vec<Directory>) -> Result<B3Digest> {
        (**self).put_closure(dirs).await
    }
}
