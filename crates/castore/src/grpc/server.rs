//! gRPC servers for BlobService and DirectoryService over any backend.
use std::{pin::Pin, sync::Arc};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use tokio_util::io::StreamReader;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    B3Digest, BlobService, Directory, DirectoryService, Error,
    dirsvc::MAX_CLOSURE_BYTES,
    proto::{
        self, batch::blob_batch_service_server::BlobBatchServiceServer, blob_service_server::BlobServiceServer,
        directory_service_server::DirectoryServiceServer,
    },
};

/// Largest message a client may send: BlobChunks are split as the client
/// likes, and one Directory can list very many entries.
const MAX_DECODING_MESSAGE_SIZE: usize = 64 << 20;
/// Size of the BlobChunks we send; below the 4 MiB other clients accept.
const READ_CHUNK_SIZE: usize = 1 << 20;
/// Metadata key a client may set on Put to name the digest it expects; the
/// server refuses a stream that hashes to anything else.
pub const EXPECTED_DIGEST_HEADER: &str = "x-castore-expected-digest";

pub(crate) type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn parse_digest(raw: &[u8], what: &str) -> Result<B3Digest, Status> {
    B3Digest::try_from(raw).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

/// Serves a [`BlobService`].
pub struct BlobServer {
    blobs: Arc<dyn BlobService>,
}

/// The tonic service for `BlobService`, with limits set for real data.
pub fn blob_service_server(blobs: Arc<dyn BlobService>) -> BlobServiceServer<BlobServer> {
    BlobServiceServer::new(BlobServer { blobs }).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

#[tonic::async_trait]
impl proto::blob_service_server::BlobService for BlobServer {
    async fn stat(&self, req: Request<proto::StatBlobRequest>) -> Result<Response<proto::StatBlobResponse>, Status> {
        let req = req.into_inner();
        let digest = parse_digest(&req.digest, "digest")?;
        let chunks =
            self.blobs.stat(&digest).await?.ok_or_else(|| Status::not_found(format!("blob {digest} not found")))?;
        let chunks = if req.send_chunks && chunks.len() > 1 {
            chunks
                .into_iter()
                .map(|c| proto::stat_blob_response::ChunkMeta { digest: c.digest.to_bytes(), size: c.size })
                .collect()
        } else {
            vec![]
        };
        Ok(Response::new(proto::StatBlobResponse { chunks, bao: Bytes::new() }))
    }

    type ReadStream = ServerStream<proto::BlobChunk>;

    async fn read(&self, req: Request<proto::ReadBlobRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let digest = parse_digest(&req.into_inner().digest, "digest")?;
        let pieces = pieces_of(&*self.blobs, digest).await?;
        let stream = at_most(pieces, READ_CHUNK_SIZE)
            .map_ok(|data| proto::BlobChunk { data })
            .map_err(move |e| Status::internal(format!("reading blob {digest}: {e}")));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn put(&self, req: Request<Streaming<proto::BlobChunk>>) -> Result<Response<proto::PutBlobResponse>, Status> {
        let expected = match req.metadata().get(EXPECTED_DIGEST_HEADER) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<B3Digest>().ok())
                    .ok_or_else(|| Status::invalid_argument(format!("{EXPECTED_DIGEST_HEADER} is not a digest")))?,
            ),
            None => None,
        };
        let stream = req.into_inner().map_ok(|c| c.data).map_err(|s| std::io::Error::other(Error::Remote(s)));
        let mut reader = StreamReader::new(stream);
        let digest = self.blobs.put(&mut reader, expected.as_ref()).await?;
        Ok(Response::new(proto::PutBlobResponse { digest: digest.to_bytes() }))
    }
}

/// `pieces` cut to at most `max` bytes each (slices, no copies): what
/// [`BlobService::read_from`] hands out may be larger than a message we send.
fn at_most(pieces: BoxStream<'static, crate::Result<Bytes>>, max: usize) -> BoxStream<'static, crate::Result<Bytes>> {
    pieces
        .map_ok(move |mut piece| {
            let mut cut = Vec::with_capacity(piece.len() / max + 1);
            while piece.len() > max {
                cut.push(Ok(piece.split_to(max)));
            }
            cut.push(Ok(piece));
            futures::stream::iter(cut)
        })
        .try_flatten()
        .boxed()
}

/// The digests of a batch call (at most [`MAX_BATCH_DIGESTS`], each
/// named by its position when malformed); `what` names them in the error.
pub(crate) fn parse_batch(raw: &[Bytes], what: &str) -> Result<Vec<B3Digest>, Status> {
    if raw.len() > MAX_BATCH_DIGESTS {
        return Err(Status::invalid_argument(format!(
            "{} {what} asked for; at most {MAX_BATCH_DIGESTS} per call",
            raw.len()
        )));
    }
    raw.iter().enumerate().map(|(i, d)| parse_digest(d, &format!("digest #{i}"))).collect()
}

/// Most digests one batch call ([`proto::batch::ReadBlobsRequest`],
/// [`proto::batch::GetDirectoriesRequest`]) may name.
pub const MAX_BATCH_DIGESTS: usize = 4096;
/// Blobs of one batch read ahead of the one being sent (each opened and its
/// first piece read), so small blobs are read while others are sent.
const BATCH_READ_AHEAD: usize = 16;

/// Serves storefront's batch read ([`crate::proto::batch`]) from a
/// [`BlobService`].
pub struct BlobBatchServer {
    blobs: Arc<dyn BlobService>,
}

/// The tonic service for `storefront.castore.v1.BlobBatchService`.
pub fn blob_batch_server(blobs: Arc<dyn BlobService>) -> BlobBatchServiceServer<BlobBatchServer> {
    BlobBatchServiceServer::new(BlobBatchServer { blobs })
}

#[tonic::async_trait]
impl proto::batch::blob_batch_service_server::BlobBatchService for BlobBatchServer {
    type ReadStream = ServerStream<proto::batch::BlobPiece>;

    async fn read(&self, req: Request<proto::batch::ReadBlobsRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let digests = parse_batch(&req.into_inner().digests, "digests")?;
        let blobs = self.blobs.clone();
        let stream = futures::stream::iter(digests.into_iter().zip(0u32..))
            .map(move |(digest, index)| {
                let blobs = blobs.clone();
                async move {
                    let mut pieces = pieces_of(&*blobs, digest).await?;
                    // Read now (ahead of sending); an empty blob is one empty piece.
                    let first = pieces.next().await.transpose().map_err(|e| read_error(&digest, e))?;
                    let whole = futures::stream::iter([Ok(first.unwrap_or_default())]).chain(pieces).boxed();
                    Ok::<_, Status>(
                        at_most(whole, READ_CHUNK_SIZE)
                            .map_err(move |e| read_error(&digest, e))
                            .map_ok(move |data| proto::batch::BlobPiece { index, data }),
                    )
                }
            })
            .buffered(BATCH_READ_AHEAD)
            .try_flatten();
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The blob's bytes from its start, or NOT_FOUND.
async fn pieces_of(
    blobs: &dyn BlobService,
    digest: B3Digest,
) -> Result<BoxStream<'static, crate::Result<Bytes>>, Status> {
    blobs.read_from(&digest, 0).await?.ok_or_else(|| Status::not_found(format!("blob {digest} not found")))
}

fn read_error(digest: &B3Digest, e: Error) -> Status {
    match e {
        Error::NotFound(m) => Status::not_found(m),
        e => Status::internal(format!("reading blob {digest}: {e}")),
    }
}

/// Serves a [`DirectoryService`].
pub struct DirectoryServer {
    directories: Arc<dyn DirectoryService>,
}

/// The tonic service for `DirectoryService`, with limits set for real data.
pub fn directory_service_server(directories: Arc<dyn DirectoryService>) -> DirectoryServiceServer<DirectoryServer> {
    DirectoryServiceServer::new(DirectoryServer { directories }).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
}

#[tonic::async_trait]
impl proto::directory_service_server::DirectoryService for DirectoryServer {
    type GetStream = ServerStream<proto::Directory>;

    async fn get(&self, req: Request<proto::GetDirectoryRequest>) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        let Some(proto::get_directory_request::ByWhat::Digest(raw)) = req.by_what else {
            return Err(Status::invalid_argument("GetDirectoryRequest names no digest"));
        };
        let digest = parse_digest(&raw, "digest")?;
        if !req.recursive {
            let dir = self
                .directories
                .get(&digest)
                .await?
                .ok_or_else(|| Status::not_found(format!("directory {digest} not found")))?;
            return Ok(Response::new(Box::pin(futures::stream::once(async move { Ok(dir.to_proto()) }))));
        }
        let mut stream = self.directories.get_recursive(&digest).peekable();
        // Answer a missing root with a status rather than a broken stream.
        if let Some(Err(_)) = Pin::new(&mut stream).peek().await {
            let Some(Err(e)) = stream.next().await else { unreachable!() };
            return Err(e.into());
        }
        Ok(Response::new(Box::pin(stream.map_ok(|d| d.to_proto()).map_err(Status::from))))
    }

    async fn put(
        &self,
        req: Request<Streaming<proto::Directory>>,
    ) -> Result<Response<proto::PutDirectoryResponse>, Status> {
        let mut stream = req.into_inner();
        let mut dirs = Vec::new();
        let mut total = 0usize;
        while let Some(msg) = stream.message().await? {
            total += prost::Message::encoded_len(&msg);
            if total > MAX_CLOSURE_BYTES {
                return Err(Status::resource_exhausted(format!("directory closure exceeds {MAX_CLOSURE_BYTES} bytes")));
            }
            let n = dirs.len();
            let dir = Directory::try_from(msg)
                .map_err(|e| Status::invalid_argument(format!("directory #{n} in the stream is invalid: {e}")))?;
            dirs.push(dir);
        }
        let root = self.directories.put_closure(dirs).await?;
        Ok(Response::new(proto::PutDirectoryResponse { root_digest: root.to_bytes() }))
    }
}
