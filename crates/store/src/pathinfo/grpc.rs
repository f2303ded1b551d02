//! The `store.v1` PathInfoService over gRPC: a server over any
//! [`PathInfoService`] and a client that is one; and storefront's closure
//! call ([`crate::proto::batch`]), served and tried first by the client.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;
use castore::{BlobService, DirectoryService, Error, Node, Result, grpc::Transport};
use futures::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use tonic::{Request, Response, Status};

use super::{
    PathInfo, PathInfoService,
    closure::{check_exact, walk},
};
use crate::{
    proto::{
        self,
        batch::{
            path_info_batch_service_client::PathInfoBatchServiceClient,
            path_info_batch_service_server::PathInfoBatchServiceServer,
        },
        get_path_info_request::ByWhat,
        path_info_service_client::PathInfoServiceClient,
        path_info_service_server::PathInfoServiceServer,
    },
    store_path::DIGEST_LEN,
};

/// Most store paths one [`proto::batch::ClosureRequest`] may name.
pub const MAX_CLOSURE_ROOTS: usize = 4096;
/// Largest message the client accepts (a PathInfo lists its references and
/// signatures; Nix has no limit on either).
const MAX_MESSAGE: usize = 64 << 20;

/// Serves a [`PathInfoService`]; CalculateNAR renders from the castore.
pub struct PathInfoServer {
    paths: Arc<dyn PathInfoService>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
}

/// The tonic service for `PathInfoService`.
pub fn path_info_service_server(
    paths: Arc<dyn PathInfoService>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
) -> PathInfoServiceServer<PathInfoServer> {
    PathInfoServiceServer::new(PathInfoServer { paths, blobs, directories })
}

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::path_info_service_server::PathInfoService for PathInfoServer {
    async fn get(&self, req: Request<proto::GetPathInfoRequest>) -> Result<Response<proto::PathInfo>, Status> {
        let Some(ByWhat::ByOutputHash(hash)) = req.into_inner().by_what else {
            return Err(Status::unimplemented("GetPathInfoRequest needs by_output_hash"));
        };
        let digest: [u8; DIGEST_LEN] = hash[..].try_into().map_err(|_| {
            Status::invalid_argument(format!("by_output_hash has {} bytes, expected {DIGEST_LEN}", hash.len()))
        })?;
        match self.paths.get(&digest).await? {
            Some(info) => Ok(Response::new(info.to_proto())),
            None => Err(Status::not_found(format!("no PathInfo for {}", crate::nix32::encode(&digest)))),
        }
    }

    async fn put(&self, req: Request<proto::PathInfo>) -> Result<Response<proto::PathInfo>, Status> {
        let info = PathInfo::from_proto(req.into_inner()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(self.paths.put(info).await?.to_proto()))
    }

    async fn calculate_nar(
        &self,
        req: Request<castore::proto::Entry>,
    ) -> Result<Response<proto::CalculateNarResponse>, Status> {
        let (_, node) = Node::from_entry(req.into_inner()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (nar_size, nar_sha256) = crate::nar::calculate(&node, self.blobs.clone(), self.directories.clone()).await?;
        Ok(Response::new(proto::CalculateNarResponse {
            nar_size,
            nar_sha256: bytes::Bytes::copy_from_slice(&nar_sha256),
        }))
    }

    type ListStream = ServerStream<proto::PathInfo>;

    async fn list(&self, _: Request<proto::ListPathInfoRequest>) -> Result<Response<Self::ListStream>, Status> {
        Ok(Response::new(Box::pin(self.paths.list().map_ok(|i| i.to_proto()).map_err(Status::from))))
    }
}

/// Serves storefront's closure call from a [`PathInfoService`]: the walk
/// runs next to the records, and the client gets the closure in one call.
pub struct PathInfoBatchServer {
    paths: Arc<dyn PathInfoService>,
}

/// The tonic service for `storefront.store.v1.PathInfoBatchService`.
pub fn path_info_batch_server(paths: Arc<dyn PathInfoService>) -> PathInfoBatchServiceServer<PathInfoBatchServer> {
    PathInfoBatchServiceServer::new(PathInfoBatchServer { paths })
}

#[tonic::async_trait]
impl proto::batch::path_info_batch_service_server::PathInfoBatchService for PathInfoBatchServer {
    type ClosureStream = ServerStream<proto::PathInfo>;

    async fn closure(
        &self,
        req: Request<proto::batch::ClosureRequest>,
    ) -> Result<Response<Self::ClosureStream>, Status> {
        let digests = req.into_inner().digests;
        if digests.len() > MAX_CLOSURE_ROOTS {
            return Err(Status::invalid_argument(format!(
                "{} store paths asked for, at most {MAX_CLOSURE_ROOTS} in one call",
                digests.len()
            )));
        }
        let roots = digests
            .iter()
            .enumerate()
            .map(|(i, d)| {
                <[u8; DIGEST_LEN]>::try_from(&d[..]).map_err(|_| {
                    Status::invalid_argument(format!("digest #{i} has {} bytes, expected {DIGEST_LEN}", d.len()))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let infos = self.paths.closure(&roots).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(infos.into_iter().map(|i| Ok(i.to_proto()))))))
    }
}

/// A [`PathInfoService`] on a remote server (storefront, tvix or snix).
///
/// Everything received is validated like a server validates a Put, and a
/// Get answer must be for the path asked about. [`PathInfoService::closure`]
/// first tries storefront's closure call; a server that answers
/// UNIMPLEMENTED (tvix and snix daemons) is remembered, and its closures
/// are walked with Get.
#[derive(Clone)]
pub struct GrpcPathInfoService {
    client: PathInfoServiceClient<Transport>,
    batch: PathInfoBatchServiceClient<Transport>,
    /// Cleared once the server turned the closure call down.
    batch_served: Arc<AtomicBool>,
}

impl GrpcPathInfoService {
    pub fn new(transport: Transport) -> Self {
        Self {
            client: PathInfoServiceClient::new(transport.clone()).max_decoding_message_size(MAX_MESSAGE),
            batch: PathInfoBatchServiceClient::new(transport).max_decoding_message_size(MAX_MESSAGE),
            batch_served: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The closure in one call; `None` when the server has no such call.
    async fn closure_call(&self, roots: &[[u8; DIGEST_LEN]]) -> Result<Option<Vec<PathInfo>>> {
        let req = proto::batch::ClosureRequest { digests: roots.iter().map(|d| d.to_vec().into()).collect() };
        let mut stream = match self.batch.clone().closure(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::debug!("the server has no closure call; walking the closure with Get");
                self.batch_served.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            Err(s) if s.code() == tonic::Code::NotFound => return Err(Error::NotFound(s.message().to_owned())),
            Err(s) => return Err(s.into()),
        };
        let mut infos = Vec::new();
        while let Some(msg) = stream.message().await? {
            infos.push(received(msg)?);
        }
        check_exact(roots, &infos)?;
        Ok(Some(infos))
    }

    /// Asks the server for the NAR size and SHA-256 of `node`.
    pub async fn calculate_nar(&self, node: &Node) -> Result<(u64, [u8; 32])> {
        let resp = self.client.clone().calculate_nar(node.to_entry(bytes::Bytes::new())).await?.into_inner();
        let sha: [u8; 32] = resp.nar_sha256[..]
            .try_into()
            .map_err(|_| Error::Storage(format!("server sent a {}-byte NAR hash", resp.nar_sha256.len())))?;
        Ok((resp.nar_size, sha))
    }
}

fn received(msg: proto::PathInfo) -> Result<PathInfo> {
    PathInfo::from_proto(msg).map_err(|e| Error::Storage(format!("server sent an invalid PathInfo: {e}")))
}

#[async_trait]
impl PathInfoService for GrpcPathInfoService {
    async fn get(&self, digest: &[u8; DIGEST_LEN]) -> Result<Option<PathInfo>> {
        let req = proto::GetPathInfoRequest { by_what: Some(ByWhat::ByOutputHash(digest.to_vec().into())) };
        let msg = match self.client.clone().get(req).await {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let info = received(msg)?;
        if info.store_path.digest() != digest {
            return Err(Error::Storage(format!(
                "asked for {}, server sent {}",
                crate::nix32::encode(digest),
                info.store_path
            )));
        }
        Ok(Some(info))
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo> {
        let stored = received(self.client.clone().put(info.to_proto()).await?.into_inner())?;
        if stored.store_path != info.store_path {
            return Err(Error::Storage(format!("put {}, server stored {}", info.store_path, stored.store_path)));
        }
        Ok(stored)
    }

    async fn closure(&self, roots: &[[u8; DIGEST_LEN]]) -> Result<Vec<PathInfo>> {
        if self.batch_served.load(Ordering::Relaxed)
            && roots.len() <= MAX_CLOSURE_ROOTS
            && let Some(infos) = self.closure_call(roots).await?
        {
            return Ok(infos);
        }
        walk(self, roots).await
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo>> {
        let mut client = self.client.clone();
        futures::stream::once(async move { client.list(proto::ListPathInfoRequest {}).await })
            .map_ok(|resp| resp.into_inner().map_err(Error::from))
            .map_err(Error::from)
            .try_flatten()
            .and_then(|msg| async move { received(msg) })
            .boxed()
    }
}
