//! [`DirectoryService`]: the Merkle DAG of directories.
use std::collections::HashSet;

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};

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

    /// The closures of many roots in one stream: for each root in order,
    /// as [`DirectoryService::get_recursive`] sends it, leaving out every
    /// directory already sent (so a root below an earlier root, and a
    /// directory below two roots, come once). Over gRPC, one call where the
    /// server has storefront's batch call. By default [`closures_each`].
    fn get_closures(&self, roots: Vec<B3Digest>) -> BoxStream<'_, Result<Directory>> {
        closures_each(self, roots)
    }

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
    fn get_closures(&self, roots: Vec<B3Digest>) -> BoxStream<'_, Result<Directory>> {
        (**self).get_closures(roots)
    }
    async fn put_closure(&self, dirs: Vec<Directory>) -> Result<B3Digest> {
        (**self).put_closure(dirs).await
    }
}

/// [`DirectoryService::get_closures`] with one
/// [`DirectoryService::get_recursive`] per root not sent already.
pub fn closures_each<S: DirectoryService + ?Sized>(
    service: &S,
    roots: Vec<B3Digest>,
) -> BoxStream<'_, Result<Directory>> {
    struct State<'a> {
        roots: std::vec::IntoIter<B3Digest>,
        current: Option<BoxStream<'a, Result<Directory>>>,
        sent: HashSet<B3Digest>,
    }
    let start = State { roots: roots.into_iter(), current: None, sent: HashSet::new() };
    futures::stream::try_unfold(start, move |mut s| async move {
        loop {
            if let Some(current) = &mut s.current {
                match current.next().await {
                    Some(dir) => {
                        let dir = dir?;
                        if s.sent.insert(dir.digest()) {
                            return Ok(Some((dir, s)));
                        }
                        continue;
                    }
                    None => s.current = None,
                }
            }
            let sent = &s.sent;
            let Some(root) = s.roots.find(|r| !sent.contains(r)) else { return Ok(None) };
            s.current = Some(service.get_recursive(&root));
        }
    })
    .boxed()
}
