//! Directory closures over gRPC: the check a client makes of directories
//! that arrive parents first ([`Arrivals`]), and storefront's batch call for
//! the closures of many roots (`storefront.castore.v1.DirectoryBatchService`),
//! served and asked for.
use std::{collections::HashMap, sync::Arc};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use tonic::{Request, Response, Status};

use super::{
    Transport,
    server::{ServerStream, parse_batch},
};
use crate::{
    B3Digest, Directory, DirectoryService, Error, Result,
    proto::{
        self,
        batch::{
            directory_batch_service_client::DirectoryBatchServiceClient,
            directory_batch_service_server::DirectoryBatchServiceServer,
        },
    },
};

/// Checks directories that arrive parents first: each one must be a root
/// asked for or announced by a directory that came before, and fit every
/// size recorded for it; each comes once; nothing announced is left out.
#[derive(Default)]
pub(crate) struct Arrivals {
    /// Digests announced (or asked for) and not received yet, with every
    /// size a parent recorded for them.
    expected: HashMap<B3Digest, Vec<u64>>,
    /// Directories received so far, with their sizes under both formulas:
    /// a shared directory comes once, but parents that arrive after it
    /// still refer to it.
    seen: HashMap<B3Digest, (u64, u64)>,
}

impl Arrivals {
    pub(crate) fn new(roots: impl IntoIterator<Item = B3Digest>) -> Self {
        Arrivals { expected: roots.into_iter().map(|r| (r, Vec::new())).collect(), seen: HashMap::new() }
    }

    pub(crate) fn accept(&mut self, dir: &Directory) -> Result<()> {
        let digest = dir.digest();
        let sizes = self.expected.remove(&digest).ok_or_else(|| {
            Error::Storage(format!(
                "server sent directory {digest}, which no earlier directory refers to (or sent it twice)"
            ))
        })?;
        if let Some(size) = sizes.into_iter().find(|&s| !dir.size_matches(s)) {
            return Err(Error::Storage(format!("directory {digest} does not fit its recorded size {size}")));
        }
        self.seen.insert(digest, (dir.size(), dir.size_documented()));
        for (_, child, size) in dir.directories() {
            match self.seen.get(&child) {
                Some(&(deployed, documented)) if size != deployed && size != documented => {
                    return Err(Error::Storage(format!(
                        "directory {digest} records size {size} for {child}, which does not fit it"
                    )));
                }
                Some(_) => {}
                None => self.expected.entry(child).or_default().push(size),
            }
        }
        Ok(())
    }

    /// At the end of the stream: what was announced and never came.
    pub(crate) fn finish(&self) -> Result<()> {
        match self.expected.keys().next() {
            Some(missing) => Err(Error::Storage(format!("server omitted directory {missing}"))),
            None => Ok(()),
        }
    }
}

/// Serves storefront's batch call for directory closures
/// ([`crate::proto::batch`]) from a [`DirectoryService`].
pub struct DirectoryBatchServer {
    directories: Arc<dyn DirectoryService>,
}

/// The tonic service for `storefront.castore.v1.DirectoryBatchService`.
pub fn directory_batch_server(
    directories: Arc<dyn DirectoryService>,
) -> DirectoryBatchServiceServer<DirectoryBatchServer> {
    DirectoryBatchServiceServer::new(DirectoryBatchServer { directories })
}

#[tonic::async_trait]
impl proto::batch::directory_batch_service_server::DirectoryBatchService for DirectoryBatchServer {
    type GetStream = ServerStream<proto::Directory>;

    async fn get(
        &self,
        req: Request<proto::batch::GetDirectoriesRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let roots = parse_batch(&req.into_inner().root_digests, "roots")?;
        let directories = self.directories.clone();
        let stream = crate::dirsvc::async_stream(move |tx| async move {
            let mut closures = directories.get_closures(roots);
            while let Some(dir) = closures.next().await {
                if tx.send(dir).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        Ok(Response::new(Box::pin(stream.map_ok(|d| d.to_proto()).map_err(Status::from))))
    }
}

/// The closures of `roots` in one call of the batch service, checked as
/// they arrive; `Ok(None)` when the server has no such call.
pub(crate) async fn get_closures(
    mut client: DirectoryBatchServiceClient<Transport>,
    roots: Vec<B3Digest>,
) -> Result<Option<BoxStream<'static, Result<Directory>>>> {
    let req = proto::batch::GetDirectoriesRequest { root_digests: roots.iter().map(B3Digest::to_bytes).collect() };
    let stream = match client.get(req).await {
        Ok(resp) => resp.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(None),
        Err(s) if s.code() == tonic::Code::NotFound => return Err(Error::NotFound(s.message().to_owned())),
        Err(s) => return Err(s.into()),
    };
    let start = (stream, Arrivals::new(roots));
    Ok(Some(
        futures::stream::try_unfold(start, |(mut stream, mut arrivals)| async move {
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    arrivals.finish()?;
                    return Ok(None);
                }
                Err(s) if s.code() == tonic::Code::NotFound => return Err(Error::NotFound(s.message().to_owned())),
                Err(s) => return Err(s.into()),
            };
            let dir = Directory::try_from(msg)
                .map_err(|e| Error::Storage(format!("server sent an invalid directory: {e}")))?;
            arrivals.accept(&dir)?;
            Ok(Some((dir, (stream, arrivals))))
        })
        .boxed(),
    ))
}
