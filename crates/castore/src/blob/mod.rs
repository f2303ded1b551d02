//! [`BlobService`]: file contents by BLAKE3 digest.
//!
//! A *chunk* is immutable bytes keyed by its BLAKE3; a *blob* is an ordered
//! list of chunks whose digest is the BLAKE3 of the whole. Reading a chunk
//! never asks whether it is also a blob.
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncSeek};

use crate::{B3Digest, Result};

mod chunked;
mod chunker;
mod reader;

pub use chunked::{ChunkedBlobService, fresh_block};
pub use chunker::Chunker;
pub(crate) use reader::copy_out;
pub use reader::{ChunkFetch, ChunkedReader};

/// One chunk of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub digest: B3Digest,
    pub size: u64,
}

/// A readable, seekable blob.
pub trait BlobRead: AsyncRead + AsyncSeek + Send + Unpin {}
impl<T: AsyncRead + AsyncSeek + Send + Unpin> BlobRead for T {}

/// A blob opened for reading; seek anywhere, read from there.
pub type BlobReader = Box<dyn BlobRead>;

/// Stores and serves blobs. Implementations: [`ChunkedBlobService`] over any
/// [`crate::kv::KvStore`], and the gRPC client in [`crate::grpc`].
#[async_trait]
pub trait BlobService: Send + Sync + 'static {
    /// `None` if absent; otherwise the blob's chunks, empty when it is one
    /// chunk or no finer chunking is known.
    async fn stat(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>>;

    async fn has(&self, digest: &B3Digest) -> Result<bool> {
        Ok(self.stat(digest).await?.is_some())
    }

    /// Opens a blob (or a single chunk, by its digest) for reading.
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<BlobReader>>;

    /// Opens a blob whose size the caller already knows (from the directory
    /// entry naming it), for reading it whole. A backend that asks for the
    /// chunk list before reading may skip that round trip for a small blob
    /// (the gRPC client does: one request per small file instead of two);
    /// an absent blob may then show as a read error rather than `None`.
    async fn open_read_sized(&self, digest: &B3Digest, size: u64) -> Result<Option<BlobReader>> {
        let _ = size;
        self.open_read(digest).await
    }

    /// The blob's bytes from `offset` to its end, as a stream of pieces, for
    /// readers that pass bytes on rather than parse them (rendering NARs and
    /// layers). [`ChunkedBlobService`] hands out each stored chunk's own
    /// buffer, without the copy into a caller's buffer that reading through
    /// [`BlobService::open_read`] costs; the default does exactly that read.
    async fn read_from(&self, digest: &B3Digest, offset: u64) -> Result<Option<BoxStream<'static, Result<Bytes>>>> {
        let Some(mut reader) = self.open_read(digest).await? else { return Ok(None) };
        if offset > 0 {
            tokio::io::AsyncSeekExt::seek(&mut reader, std::io::SeekFrom::Start(offset)).await?;
        }
        Ok(Some(futures::StreamExt::boxed(futures::TryStreamExt::map_err(
            tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10),
            crate::Error::Io,
        ))))
    }

    /// Stores everything `reader` yields and returns its digest. With
    /// `expected`, a stream whose digest differs is refused
    /// ([`crate::Error::InvalidRequest`]) and the blob does not become visible.
    async fn put(&self, reader: &mut (dyn AsyncRead + Send + Unpin), expected: Option<&B3Digest>) -> Result<B3Digest>;

    /// Stores a blob held in memory.
    async fn put_bytes(&self, data: Bytes, expected: Option<&B3Digest>) -> Result<B3Digest> {
        self.put(&mut data.as_ref(), expected).await
    }

    /// Stores the concatenation of `pieces`, like [`BlobService::put`]. For
    /// callers whose data already sits in shared buffers (NAR ingest hands
    /// over slices of its read blocks): [`ChunkedBlobService`] cuts chunks
    /// as slices of the pieces and copies only a chunk that straddles two of
    /// them, where `put` copies everything into buffers of its own. A store
    /// that keeps chunks in memory thus keeps the pieces' buffers alive.
    async fn put_stream(
        &self,
        pieces: BoxStream<'_, std::io::Result<Bytes>>,
        expected: Option<&B3Digest>,
    ) -> Result<B3Digest> {
        self.put(&mut tokio_util::io::StreamReader::new(pieces), expected).await
    }
}

#[async_trait]
impl<T: BlobService + ?Sized> BlobService for std::sync::Arc<T> {
    async fn stat(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>> {
        (**self).stat(digest).await
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<BlobReader>> {
        (**self).open_read(digest).await
    }
    async fn open_read_sized(&self, digest: &B3Digest, size: u64) -> Result<Option<BlobReader>> {
        (**self).open_read_sized(digest, size).await
    }
    async fn read_from(&self, digest: &B3Digest, offset: u64) -> Result<Option<BoxStream<'static, Result<Bytes>>>> {
        (**self).read_from(digest, offset).await
    }
    async fn put(&self, reader: &mut (dyn AsyncRead + Send + Unpin), expected: Option<&B3Digest>) -> Result<B3Digest> {
        (**self).put(reader, expected).await
    }
    async fn put_bytes(&self, data: Bytes, expected: Option<&B3Digest>) -> Result<B3Digest> {
        (**self).put_bytes(data, expected).await
    }
    async fn put_stream(
        &self,
        pieces: BoxStream<'_, std::io::Result<Bytes>>,
        expected: Option<&B3Digest>,
    ) -> Result<B3Digest> {
        (**self).put_stream(pieces, expected).await
    }
}

/// Refuses a blob whose digest is not the expected one.
pub(crate) fn check_expected(actual: &B3Digest, expected: Option<&B3Digest>) -> Result<()> {
    match expected {
        Some(e) if e != actual => {
            Err(crate::Error::InvalidRequest(format!("blob digest mismatch: expected {e}, got {actual}")))
        }
        _ => Ok(()),
    }
}
