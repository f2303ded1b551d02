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

    /// A whole blob of known size as a stream of pieces, checked: the stream
    /// ends without an error only if it delivered exactly `size` bytes that
    /// hash to `digest`, and fails as soon as it runs past `size`. This is
    /// how a blob is fetched to be written somewhere: the checking is done
    /// here, once, so the writer need not hash again. The gRPC client reads
    /// the blob in one call instead of chunk by chunk.
    async fn read_checked(&self, digest: &B3Digest, size: u64) -> Result<Option<BoxStream<'static, Result<Bytes>>>> {
        let Some(pieces) = self.read_from(digest, 0).await? else { return Ok(None) };
        Ok(Some(checked(pieces, *digest, size)))
    }

    /// Whole blobs of known sizes (small ones: each is held in memory), in
    /// the order asked, each checked against its digest and size; an absent
    /// blob is an error ([`crate::Error::NotFound`]). For writing trees of
    /// many small files: the gRPC client asks a storefront server for all of
    /// them in one call ([`crate::proto::batch`]); the default reads them
    /// one by one, a few at a time ([`read_each`]).
    fn read_many(&self, wanted: Vec<(B3Digest, u64)>) -> BoxStream<'_, Result<Bytes>> {
        read_each(self, wanted)
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
    async fn read_checked(&self, digest: &B3Digest, size: u64) -> Result<Option<BoxStream<'static, Result<Bytes>>>> {
        (**self).read_checked(digest, size).await
    }
    fn read_many(&self, wanted: Vec<(B3Digest, u64)>) -> BoxStream<'_, Result<Bytes>> {
        (**self).read_many(wanted)
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

/// Blobs [`BlobService::read_many`] reads at once when it reads them one by
/// one.
const READ_EACH_AHEAD: usize = 8;

/// [`BlobService::read_many`] one blob at a time ([`BlobService::open_read_sized`]),
/// a few ahead: what the trait does by default, and what the gRPC client
/// falls back to against a server without the batch call.
pub fn read_each<S: BlobService + ?Sized>(blobs: &S, wanted: Vec<(B3Digest, u64)>) -> BoxStream<'_, Result<Bytes>> {
    use futures::StreamExt;
    futures::stream::iter(wanted)
        .map(move |(digest, size)| async move {
            use tokio::io::AsyncReadExt;
            let reader = blobs
                .open_read_sized(&digest, size)
                .await?
                .ok_or_else(|| crate::Error::NotFound(format!("blob {digest} not found")))?;
            let mut data = Vec::with_capacity(size as usize);
            reader.take(size + 1).read_to_end(&mut data).await?;
            check_whole(&digest, size, &data)?;
            Ok(Bytes::from(data))
        })
        .buffered(READ_EACH_AHEAD)
        .boxed()
}

/// Refuses bytes that are not the blob `digest` of `size` bytes.
pub(crate) fn check_whole(digest: &B3Digest, size: u64, data: &[u8]) -> Result<()> {
    let actual = B3Digest::of(data);
    if actual != *digest || data.len() as u64 != size {
        return Err(mismatch(digest, size, &actual, data.len() as u64));
    }
    Ok(())
}

/// A blob that read as other bytes than its digest and size say.
fn mismatch(digest: &B3Digest, size: u64, actual: &B3Digest, len: u64) -> crate::Error {
    crate::Error::Storage(format!("blob {digest} ({size} bytes) read as {actual} ({len} bytes)"))
}

/// `pieces` of the blob `digest` of `size` bytes, hashed as they pass: an
/// error as soon as they run past `size`, and at the end unless they were
/// exactly the blob.
pub fn checked(
    pieces: BoxStream<'static, Result<Bytes>>,
    digest: B3Digest,
    size: u64,
) -> BoxStream<'static, Result<Bytes>> {
    use futures::StreamExt;
    struct Check {
        pieces: BoxStream<'static, Result<Bytes>>,
        hasher: Option<blake3::Hasher>,
        seen: u64,
    }
    let start = Check { pieces, hasher: Some(blake3::Hasher::new()), seen: 0 };
    futures::stream::unfold(start, move |mut c| async move {
        let mut hasher = c.hasher.take()?;
        match c.pieces.next().await {
            Some(Ok(piece)) => {
                c.seen += piece.len() as u64;
                if c.seen > size {
                    let e = crate::Error::Storage(format!("blob {digest} is longer than its {size} bytes"));
                    return Some((Err(e), c));
                }
                hasher.update(&piece);
                c.hasher = Some(hasher);
                Some((Ok(piece), c))
            }
            Some(Err(e)) => Some((Err(e), c)),
            None => {
                let actual = B3Digest::from(hasher.finalize());
                if actual == digest && c.seen == size {
                    return None;
                }
                Some((Err(mismatch(&digest, size, &actual, c.seen)), c))
            }
        }
    })
    .boxed()
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
