//! [`ChunkedReader`]: a seekable reader over a blob's chunk list that fetches
//! chunks ahead of the read position, so remote backends are not bound by
//! round trips.
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::ChunkMeta;
use crate::{B3Digest, Error, Result};

/// Fetches one chunk's bytes by digest.
pub type ChunkFetch = Arc<dyn Fn(B3Digest) -> BoxFuture<'static, Result<Bytes>> + Send + Sync>;

/// How many chunks are fetched ahead of the reader.
const PREFETCH: usize = 4;

pub struct ChunkedReader {
    chunks: Arc<[ChunkMeta]>,
    /// Offset of each chunk's first byte in the blob.
    starts: Arc<[u64]>,
    size: u64,
    fetch: ChunkFetch,
    pos: u64,
    /// The unread rest of the chunk under `pos`.
    current: Bytes,
    upcoming: Option<BoxStream<'static, Result<Bytes>>>,
}

impl ChunkedReader {
    pub fn new(chunks: Vec<ChunkMeta>, fetch: ChunkFetch) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut size = 0u64;
        for c in &chunks {
            starts.push(size);
            size += c.size;
        }
        Self {
            chunks: chunks.into(),
            starts: starts.into(),
            size,
            fetch,
            pos: 0,
            current: Bytes::new(),
            upcoming: None,
        }
    }

    /// Total length of the blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunks from the one holding `pos` on, the first trimmed to start at `pos`.
    fn stream_from(&self, pos: u64) -> BoxStream<'static, Result<Bytes>> {
        let idx = self.starts.partition_point(|&s| s <= pos) - 1;
        let skip = (pos - self.starts[idx]) as usize;
        let chunks = self.chunks.clone();
        let fetch = self.fetch.clone();
        futures::stream::iter(idx..chunks.len())
            .map(move |i| {
                let meta = chunks[i];
                let fut = fetch(meta.digest);
                async move {
                    let data = fut.await?;
                    if data.len() as u64 != meta.size {
                        return Err(Error::Storage(format!(
                            "chunk {} has {} bytes, expected {}",
                            meta.digest,
                            data.len(),
                            meta.size
                        )));
                    }
                    Ok(data)
                }
            })
            .buffered(PREFETCH)
            .enumerate()
            .map(move |(i, r)| if i == 0 { r.map(|b| b.slice(skip..)) } else { r })
            .boxed()
    }
}

/// Moves what fits of `current` (the bytes at `pos`) into `buf`, advancing
/// `pos`; false when `current` was empty.
pub(crate) fn copy_out(current: &mut Bytes, pos: &mut u64, buf: &mut ReadBuf<'_>) -> bool {
    if current.is_empty() {
        return false;
    }
    let n = buf.remaining().min(current.len());
    buf.put_slice(&current[..n]);
    current.advance(n);
    *pos += n as u64;
    true
}

impl AsyncRead for ChunkedReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if copy_out(&mut this.current, &mut this.pos, buf) {
                return Poll::Ready(Ok(()));
            }
            if this.pos >= this.size || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.upcoming.is_none() {
                this.upcoming = Some(this.stream_from(this.pos));
            }
            let upcoming = this.upcoming.as_mut().expect("just set");
            match ready!(upcoming.poll_next_unpin(cx)) {
                Some(Ok(data)) => this.current = data,
                Some(Err(e)) => {
                    this.upcoming = None;
                    return Poll::Ready(Err(e.into()));
                }
                None => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    }
}

impl AsyncSeek for ChunkedReader {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let target = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => this.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        if target != this.pos {
            this.pos = target;
            this.current = Bytes::new();
            this.upcoming = None;
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}
