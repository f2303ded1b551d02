//! [`ChunkedBlobService`]: blobs as content-defined chunks on a [`KvStore`].
//!
//! Ingest is a pipeline (measured in docs/benchmarks.md): the task calling
//! `put` reads into large blocks and finds chunk boundaries, with a second
//! task chunking the second half of each block at the same time (see
//! [`region_boundaries`]); every chunk is hashed and stored by a task of its
//! own, and the whole-blob BLAKE3 is computed in [`SEGMENT`]-sized subtrees
//! by further tasks and merged in order, so hashing spreads over all cores.
//! Chunks are slices of the read blocks (no copy), and blocks are reused once
//! their chunks are stored, so a put holds a bounded amount of memory however
//! large the blob. `put_bytes` chunks its buffer in place, and `put_stream`
//! the caller's pieces (copying only a chunk that straddles two pieces).
use std::{collections::VecDeque, sync::Arc};

use async_trait::async_trait;
use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{StreamExt, stream::BoxStream};
use prost::Message;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    task::JoinHandle,
};

use super::{BlobReader, BlobService, ChunkFetch, ChunkMeta, ChunkedReader, Chunker, check_expected};
use crate::{
    B3Digest, Error, Result,
    kv::{KvStore, Table},
    proto,
};

/// Chunks hashed and stored concurrently with reading the next ones: about
/// one block's worth, so the reading task hands out a whole block's chunks
/// and goes on reading while they are hashed and stored.
const WRITE_WINDOW: usize = 32;
/// Unit of whole-blob hashing: a power of two (≥ 1 KiB), so every segment at
/// a multiple of it is a complete subtree of the BLAKE3 tree.
const SEGMENT: usize = 1 << 20;
/// Whole-blob segments hashed concurrently (two blocks' worth).
const HASH_WINDOW: usize = 16;
/// First read buffer: most blobs are small.
const FIRST_BLOCK: usize = 64 << 10;
/// Smallest full-size read block (a block also holds at least 4 maximal chunks).
const BLOCK: usize = 8 << 20;
/// Bytes asked of the reader at a time.
const READ_SIZE: usize = 2 << 20;
/// Used blocks kept for reuse once all their chunks are stored.
const SPARE_BLOCKS: usize = 4;

/// Chunks [`BlobService::read_from`] fetches ahead of the one handed out.
const READ_AHEAD_CHUNKS: usize = 4;

/// A [`BlobService`] that splits blobs into chunks (stored once each, by
/// digest) and keeps a chunk list for every blob of more than one chunk.
#[derive(Clone)]
pub struct ChunkedBlobService {
    kv: Arc<dyn KvStore>,
    chunker: Chunker,
}

impl ChunkedBlobService {
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self::with_chunker(kv, Chunker::default())
    }

    pub fn with_chunker(kv: Arc<dyn KvStore>, chunker: Chunker) -> Self {
        Self { kv, chunker }
    }

    fn fetch(&self) -> ChunkFetch {
        let kv = self.kv.clone();
        Arc::new(move |digest: B3Digest| {
            let kv = kv.clone();
            Box::pin(async move {
                kv.get(Table::CHUNKS, digest.as_bytes())
                    .await?
                    .ok_or_else(|| Error::Storage(format!("chunk {digest} is missing")))
            })
        })
    }

    fn store_chunk(&self, data: Bytes) -> JoinHandle<Result<ChunkMeta>> {
        let kv = self.kv.clone();
        tokio::spawn(async move {
            let digest = B3Digest::of(&data);
            let meta = ChunkMeta { digest, size: data.len() as u64 };
            kv.put(Table::CHUNKS, vec![(digest.to_bytes(), data)]).await?;
            Ok(meta)
        })
    }
}

fn encode_chunks(chunks: &[ChunkMeta]) -> Bytes {
    let msg = proto::StatBlobResponse {
        chunks: chunks
            .iter()
            .map(|c| proto::stat_blob_response::ChunkMeta { digest: c.digest.to_bytes(), size: c.size })
            .collect(),
        bao: Bytes::new(),
    };
    msg.encode_to_vec().into()
}

fn decode_chunks(data: &[u8]) -> Result<Vec<ChunkMeta>> {
    let msg = proto::StatBlobResponse::decode(data).map_err(Error::storage)?;
    msg.chunks
        .into_iter()
        .map(|c| Ok(ChunkMeta { digest: B3Digest::try_from(&c.digest).map_err(Error::storage)?, size: c.size }))
        .collect()
}

async fn join<T>(handle: JoinHandle<T>) -> Result<T> {
    handle.await.map_err(Error::storage)
}

/// The BLAKE3 of a stream, computed as [`SEGMENT`]-sized subtrees hashed on
/// other tasks and merged in order exactly as `blake3::Hasher` merges its
/// chunks (a finished segment is merged only once more data follows it, as
/// the last one may turn out to be the root).
#[derive(Default)]
struct WholeHasher {
    /// The current, incomplete segment.
    pieces: Vec<Bytes>,
    fill: usize,
    /// Segments handed to tasks so far.
    spawned: u64,
    running: VecDeque<JoinHandle<blake3::Hasher>>,
    /// Segments merged into `stack`.
    merged: u64,
    /// Chaining values of complete subtrees, left to right.
    stack: Vec<ChainingValue>,
    /// The latest hashed segment, not merged yet.
    last: Option<blake3::Hasher>,
}

impl WholeHasher {
    async fn update(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let take = (SEGMENT - self.fill).min(data.len());
            self.pieces.push(data.split_to(take));
            self.fill += take;
            if self.fill == SEGMENT {
                self.spawn();
                if self.running.len() > HASH_WINDOW {
                    self.retire_one().await?;
                }
            }
        }
        Ok(())
    }

    fn spawn(&mut self) {
        let pieces = std::mem::take(&mut self.pieces);
        self.fill = 0;
        let offset = self.spawned * SEGMENT as u64;
        self.spawned += 1;
        self.running.push_back(tokio::spawn(async move {
            let mut h = blake3::Hasher::new();
            h.set_input_offset(offset);
            for p in &pieces {
                h.update(p);
            }
            h
        }));
    }

    async fn retire_one(&mut self) -> Result<()> {
        let next = join(self.running.pop_front().expect("a segment is running")).await?;
        if let Some(prev) = self.last.replace(next) {
            // `prev` is not the last segment, so it is a non-root subtree.
            let mut cv = prev.finalize_non_root();
            self.merged += 1;
            let mut total = self.merged;
            while total & 1 == 0 {
                cv = merge_subtrees_non_root(&self.stack.pop().expect("left sibling"), &cv, Mode::Hash);
                total >>= 1;
            }
            self.stack.push(cv);
        }
        Ok(())
    }

    async fn finalize(mut self) -> Result<B3Digest> {
        if self.spawned == 0 {
            // Less than one segment: hash it here.
            let mut h = blake3::Hasher::new();
            self.pieces.iter().for_each(|p| {
                h.update(p);
            });
            return Ok(h.finalize().into());
        }
        if self.fill > 0 {
            self.spawn();
        }
        while !self.running.is_empty() {
            self.retire_one().await?;
        }
        let last = self.last.take().expect("at least one segment");
        let Some((first, rest)) = self.stack.split_first() else {
            return Ok(last.finalize().into());
        };
        let mut cv = last.finalize_non_root();
        for left in rest.iter().rev() {
            cv = merge_subtrees_non_root(left, &cv, Mode::Hash);
        }
        Ok(merge_subtrees_root(first, &cv, Mode::Hash).into())
    }

    fn abort(&self) {
        self.running.iter().for_each(JoinHandle::abort);
    }
}

/// The state of one put: chunks are fed in order, as they are cut.
struct Ingest<'a> {
    svc: &'a ChunkedBlobService,
    whole: WholeHasher,
    pending: VecDeque<JoinHandle<Result<ChunkMeta>>>,
    chunks: Vec<ChunkMeta>,
    /// The first chunk waits for a second: a one-chunk blob is its own chunk,
    /// so it is stored only once its digest is known (and checked).
    held: Option<Bytes>,
}

impl<'a> Ingest<'a> {
    fn new(svc: &'a ChunkedBlobService) -> Self {
        Self { svc, whole: WholeHasher::default(), pending: VecDeque::new(), chunks: Vec::new(), held: None }
    }

    async fn chunk(&mut self, chunk: Bytes) -> Result<()> {
        self.whole.update(chunk.clone()).await?;
        if self.held.is_none() && self.pending.is_empty() && self.chunks.is_empty() {
            self.held = Some(chunk);
            return Ok(());
        }
        for chunk in self.held.take().into_iter().chain([chunk]) {
            if self.pending.len() >= WRITE_WINDOW {
                let meta = join(self.pending.pop_front().expect("not empty")).await??;
                self.chunks.push(meta);
            }
            self.pending.push_back(self.svc.store_chunk(chunk));
        }
        Ok(())
    }

    /// Stores the blob index (or the single chunk). `compact` copies a lone
    /// chunk that is a small slice of a larger buffer, so a store that keeps
    /// values in memory does not pin the whole buffer.
    async fn finish(&mut self, expected: Option<&B3Digest>, compact: Option<usize>) -> Result<B3Digest> {
        while let Some(handle) = self.pending.pop_front() {
            let meta = join(handle).await??;
            self.chunks.push(meta);
        }
        let digest = std::mem::take(&mut self.whole).finalize().await?;
        check_expected(&digest, expected)?;
        let kv = &self.svc.kv;
        if self.chunks.is_empty() {
            // One chunk (the empty blob is one empty chunk): the blob is the chunk.
            let mut chunk = self.held.take().unwrap_or_default();
            if compact.is_some_and(|cap| chunk.len() * 2 < cap) {
                chunk = Bytes::copy_from_slice(&chunk);
            }
            kv.put(Table::CHUNKS, vec![(digest.to_bytes(), chunk)]).await?;
        } else {
            kv.put(Table::BLOBS, vec![(digest.to_bytes(), encode_chunks(&self.chunks))]).await?;
        }
        Ok(digest)
    }
}

/// A put that ends early (an error, or its caller dropping it) stops the
/// hashing and storing tasks it started; a finished one has none left.
impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        self.pending.iter().for_each(JoinHandle::abort);
        self.whole.abort();
    }
}

/// Read blocks: [`FIRST_BLOCK`], then [`SECOND_BLOCK`], then full-size ones,
/// which are reused once every chunk sliced from them has been dropped.
///
/// When no used block can be reused (a store that keeps chunks in memory), a
/// fresh one is prepared while the current one is half full: its pages are
/// faulted in on a blocking thread, sparing the reading task the page faults
/// (a third of its time otherwise, measured).
struct Blocks {
    size: usize,
    /// Allocation size of the current block.
    current: usize,
    spare: VecDeque<BytesMut>,
    ahead: Option<JoinHandle<BytesMut>>,
}

/// Second read buffer, for blobs that outgrow the first.
const SECOND_BLOCK: usize = 512 << 10;

impl Blocks {
    fn new(size: usize) -> Self {
        Self { size, current: FIRST_BLOCK, spare: VecDeque::new(), ahead: None }
    }

    /// Called after each read: prepares the next block if it will be needed.
    fn prepare(&mut self, buf: &BytesMut) {
        if self.current != self.size || self.ahead.is_some() || buf.capacity() - buf.len() > self.size / 2 {
            return;
        }
        if self.spare.iter_mut().any(|b| b.try_reclaim(self.size)) {
            return;
        }
        let size = self.size;
        self.ahead = Some(tokio::task::spawn_blocking(move || fresh_block(size)));
    }

    /// Replaces the used-up `buf` by a block holding `tail` (the bytes after
    /// the last known chunk boundary) with room to read more.
    async fn next(&mut self, buf: &mut BytesMut, tail: &[u8]) {
        let want = if self.current < SECOND_BLOCK { SECOND_BLOCK } else { self.size };
        let mut next = None;
        if want == self.size {
            if let Some(i) = self.spare.iter_mut().position(|b| b.try_reclaim(want)) {
                next = self.spare.remove(i);
            } else if let Some(ahead) = self.ahead.take() {
                next = ahead.await.ok();
            }
        }
        let mut next = next.unwrap_or_else(|| BytesMut::with_capacity(want));
        next.extend_from_slice(tail);
        let mut old = std::mem::replace(buf, next);
        if self.current == self.size {
            old.clear();
            if self.spare.len() == SPARE_BLOCKS {
                self.spare.pop_front();
            }
            self.spare.push_back(old);
        }
        self.current = want;
    }
}

/// Regions at least this large are chunked by two tasks at once.
const SPLIT_REGION: usize = 2 << 20;

/// Chunk boundaries of `region` as far as they are known (all of them when
/// `last`). A large region is chunked from its start here and, at the same
/// time, from its middle by another task, as if a chunk began there. Once a
/// boundary found here is one the other task found, the two agree from then
/// on (a boundary depends only on the bytes since the previous one), so its
/// remaining boundaries are taken as they are. Should they never meet, the
/// scan here simply goes on alone: the result is always the sequential one.
async fn region_boundaries(chunker: Chunker, region: &Bytes, last: bool) -> Vec<usize> {
    if region.len() < SPLIT_REGION.max(4 * chunker.max) {
        return chunker.boundaries(region, last);
    }
    let mid = region.len() / 2;
    let ahead = {
        let region = region.clone();
        tokio::spawn(async move { chunker.boundaries(&region[mid..], last) })
    };
    let mut out = Vec::with_capacity(region.len() / chunker.avg + 1);
    let mut pos = 0;
    // At least `max` bytes remain after every position before `mid`.
    while pos < mid {
        pos += chunker.cut(&region[pos..]);
        out.push(pos);
    }
    // Should the other task have failed, this one goes on alone.
    let ahead = ahead.await.unwrap_or_default();
    let mut j = 0;
    loop {
        while j < ahead.len() && mid + ahead[j] < pos {
            j += 1;
        }
        if pos == mid || (j < ahead.len() && mid + ahead[j] == pos) {
            let from = if pos == mid { 0 } else { j + 1 };
            out.extend(ahead[from..].iter().map(|b| mid + b));
            return out;
        }
        if j == ahead.len() {
            out.extend(chunker.boundaries(&region[pos..], last).into_iter().map(|b| pos + b));
            return out;
        }
        match chunker.cut_known(&region[pos..], last) {
            Some(n) => {
                pos += n;
                out.push(pos);
            }
            None => return out,
        }
    }
}

/// An empty buffer of `capacity` bytes whose pages are already faulted in
/// (one `madvise` instead of a page fault per page on first write, which is
/// slow in VMs). It blocks while it works: call it on a blocking thread.
pub fn fresh_block(capacity: usize) -> BytesMut {
    let mut block = BytesMut::with_capacity(capacity);
    populate(block.spare_capacity_mut());
    block
}

/// Faults in the pages of `mem` (a hint: failures are ignored).
fn populate(mem: &mut [std::mem::MaybeUninit<u8>]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let start = (mem.as_mut_ptr() as usize).next_multiple_of(page);
        let end = (mem.as_mut_ptr() as usize + mem.len()) / page * page;
        if end > start {
            // SAFETY: the range lies within memory we own exclusively;
            // MADV_POPULATE_WRITE only maps pages, it never changes contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = mem;
}

#[async_trait]
impl BlobService for ChunkedBlobService {
    // Every lookup asks for the blob as one chunk first, then for its chunk
    // list: most blobs (small files) are one chunk and have no list, and a
    // cache layer in front of object storage answers a present chunk
    // locally but must ask the far store about every absent record. A digest
    // that names a chunk names exactly that chunk's bytes, so the answer is
    // the same in either order.
    async fn stat(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>> {
        if self.kv.contains(Table::CHUNKS, digest.as_bytes()).await? {
            return Ok(Some(Vec::new()));
        }
        match self.kv.get(Table::BLOBS, digest.as_bytes()).await? {
            Some(list) => Ok(Some(decode_chunks(&list)?)),
            None => Ok(None),
        }
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<BlobReader>> {
        if let Some(data) = self.kv.get(Table::CHUNKS, digest.as_bytes()).await? {
            return Ok(Some(Box::new(std::io::Cursor::new(data))));
        }
        match self.kv.get(Table::BLOBS, digest.as_bytes()).await? {
            Some(list) => Ok(Some(Box::new(ChunkedReader::new(decode_chunks(&list)?, self.fetch())))),
            None => Ok(None),
        }
    }

    async fn read_from(&self, digest: &B3Digest, offset: u64) -> Result<Option<BoxStream<'static, Result<Bytes>>>> {
        if let Some(data) = self.kv.get(Table::CHUNKS, digest.as_bytes()).await? {
            let from = (offset as usize).min(data.len());
            return Ok(Some(futures::stream::iter([Ok(data.slice(from..))]).boxed()));
        }
        let chunks = match self.kv.get(Table::BLOBS, digest.as_bytes()).await? {
            Some(list) => decode_chunks(&list)?,
            None => return Ok(None),
        };
        // The chunks from the one holding `offset`, each with where to start
        // in it; fetched a few ahead, handed out as the stored buffers.
        let mut start = offset;
        let wanted: Vec<(ChunkMeta, u64)> = chunks
            .into_iter()
            .filter_map(|c| {
                if start >= c.size {
                    start -= c.size;
                    return None;
                }
                let skip = std::mem::take(&mut start);
                Some((c, skip))
            })
            .collect();
        let kv = self.kv.clone();
        let stream = futures::stream::iter(wanted)
            .map(move |(chunk, skip)| {
                let kv = kv.clone();
                async move {
                    let data = kv
                        .get(Table::CHUNKS, chunk.digest.as_bytes())
                        .await?
                        .ok_or_else(|| Error::Storage(format!("chunk {} of a blob is missing", chunk.digest)))?;
                    if data.len() as u64 != chunk.size {
                        return Err(Error::Storage(format!(
                            "chunk {} holds {} bytes, not the {} its blob records",
                            chunk.digest,
                            data.len(),
                            chunk.size
                        )));
                    }
                    Ok(data.slice(skip as usize..))
                }
            })
            .buffered(READ_AHEAD_CHUNKS);
        Ok(Some(stream.boxed()))
    }

    async fn put(&self, reader: &mut (dyn AsyncRead + Send + Unpin), expected: Option<&B3Digest>) -> Result<B3Digest> {
        let mut blocks = Blocks::new(BLOCK.max(4 * self.chunker.max));
        let mut buf = BytesMut::with_capacity(FIRST_BLOCK);
        let mut ingest = Ingest::new(self);
        let mut eof = false;
        loop {
            // Fill the block, then chunk all of it that can be chunked.
            while !eof && buf.len() < buf.capacity() {
                let room = (buf.capacity() - buf.len()).min(READ_SIZE);
                eof = reader.read_buf(&mut (&mut buf).limit(room)).await? == 0;
                blocks.prepare(&buf);
            }
            let region = buf.split().freeze();
            let mut prev = 0;
            for end in region_boundaries(self.chunker, &region, eof).await {
                ingest.chunk(region.slice(prev..end)).await?;
                prev = end;
            }
            if eof {
                break;
            }
            blocks.next(&mut buf, &region[prev..]).await;
        }
        ingest.finish(expected, Some(blocks.current)).await
    }

    /// Chunks every piece in place; only the bytes of a chunk that straddles
    /// two pieces (less than one maximal chunk) are copied, into `carry`.
    async fn put_stream(
        &self,
        mut pieces: BoxStream<'_, std::io::Result<Bytes>>,
        expected: Option<&B3Digest>,
    ) -> Result<B3Digest> {
        let chunker = self.chunker;
        let mut ingest = Ingest::new(self);
        // The bytes after the last known boundary, when they began in an
        // earlier piece.
        let mut carry = BytesMut::new();
        while let Some(mut piece) = pieces.next().await.transpose()? {
            if !carry.is_empty() {
                // Complete the straddling chunk (it ends within `max` bytes
                // of its start), copying growing steps of the piece so
                // that little more than the chunk itself is copied.
                let old = carry.len();
                let mut step = chunker.min.max(4096);
                let n = loop {
                    let have = carry.len() - old;
                    let take = (have + step).min(chunker.max.saturating_sub(old)).min(piece.len());
                    carry.extend_from_slice(&piece[have..take]);
                    if let Some(n) = chunker.cut_known(&carry, false) {
                        break Some(n);
                    }
                    if take == piece.len() {
                        break None;
                    }
                    step *= 2;
                };
                let Some(n) = n else {
                    continue; // The piece is used up.
                };
                // No boundary lies within the old carry (it was unknown),
                // so the chunk ends in this piece.
                if n < old {
                    return Err(Error::Storage(format!("chunk boundary {n} inside the carried {old} bytes")));
                }
                ingest.chunk(carry.split_to(n).freeze()).await?;
                carry.clear();
                piece.advance(n - old);
            }
            let mut prev = 0;
            for end in region_boundaries(chunker, &piece, false).await {
                ingest.chunk(piece.slice(prev..end)).await?;
                prev = end;
            }
            if prev < piece.len() {
                // Room for the whole straddling chunk: one allocation, no regrowth.
                carry.reserve(chunker.max);
                carry.extend_from_slice(&piece[prev..]);
            }
        }
        let carry = carry.freeze();
        let mut prev = 0;
        for end in chunker.boundaries(&carry, true) {
            ingest.chunk(carry.slice(prev..end)).await?;
            prev = end;
        }
        ingest.finish(expected, None).await
    }

    /// Chunks `data` in place: every chunk is a slice of it.
    async fn put_bytes(&self, mut data: Bytes, expected: Option<&B3Digest>) -> Result<B3Digest> {
        let mut ingest = Ingest::new(self);
        while !data.is_empty() {
            let chunk = data.split_to(self.chunker.cut(&data));
            ingest.chunk(chunk).await?;
        }
        ingest.finish(expected, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryStore;

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.1.min(self.0.len()).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Where each chunk of a stored blob ends, as offsets into the blob.
    async fn chunk_ends(svc: &ChunkedBlobService, digest: &B3Digest) -> Vec<usize> {
        let chunks = svc.stat(digest).await.unwrap().expect("blob stored");
        chunks
            .iter()
            .scan(0, |end, c| {
                *end += c.size as usize;
                Some(*end)
            })
            .collect()
    }

    /// `read_from` hands out exactly the bytes from an offset on, whether
    /// the offset falls inside a chunk, on a chunk boundary or at the end,
    /// for multi-chunk and one-chunk blobs.
    #[tokio::test]
    async fn read_from_any_offset() {
        use futures::TryStreamExt;
        let svc = ChunkedBlobService::new(Arc::new(MemoryStore::new()));
        for input in [data(3 << 20, 7), data(1000, 9)] {
            let digest = svc.put_bytes(Bytes::from(input.clone()), None).await.unwrap();
            let ends = chunk_ends(&svc, &digest).await;
            let mut offsets = vec![0, 1, input.len() / 3, input.len() - 1, input.len()];
            offsets.extend(ends.iter().copied().filter(|e| *e < input.len()));
            for offset in offsets {
                let pieces: Vec<Bytes> =
                    svc.read_from(&digest, offset as u64).await.unwrap().unwrap().try_collect().await.unwrap();
                assert_eq!(pieces.concat(), input[offset..], "from {offset} of {}", input.len());
            }
        }
        assert!(svc.read_from(&B3Digest::of(b"absent"), 0).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_chunks_are_the_sequential_ones() {
        // Blocks of 8 MiB split in two halves chunked at once: the chunk
        // lists must be those of one sequential scan, whatever the reads.
        let chunker = Chunker::new(4 << 10, 16 << 10, 64 << 10);
        let input = data(40 << 20, 3);
        let sequential = chunker.boundaries(&input, true);
        for step in [1 << 20, 65_537, 4 << 20] {
            let svc = ChunkedBlobService::with_chunker(Arc::new(MemoryStore::new()), chunker);
            let digest = svc.put(&mut Trickle(&input, step), None).await.unwrap();
            let ends = chunk_ends(&svc, &digest).await;
            assert!(ends == sequential, "reads of {step} bytes");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_digest_matches_blake3_at_segment_edges() {
        let svc =
            ChunkedBlobService::with_chunker(Arc::new(MemoryStore::new()), Chunker::new(16 << 10, 64 << 10, 256 << 10));
        let big = data(9 * SEGMENT + 4096, 1);
        let mut lens = vec![0, 1, 1023, 1024, 1025, 70_000];
        for k in [1, 2, 3, 4, 5, 7, 8, 9] {
            lens.extend([k * SEGMENT - 1, k * SEGMENT, k * SEGMENT + 1]);
        }
        for len in lens {
            let input = &big[..len];
            let want = B3Digest::of(input);
            assert_eq!(
                svc.put_bytes(Bytes::copy_from_slice(input), None).await.unwrap(),
                want,
                "put_bytes, {len} bytes"
            );
            let got = svc.put(&mut Trickle(input, 100_003), None).await.unwrap();
            assert_eq!(got, want, "put, {len} bytes");
            // Reads back whole, and the chunks tile the blob.
            let mut back = Vec::new();
            svc.open_read(&want).await.unwrap().unwrap().read_to_end(&mut back).await.unwrap();
            assert!(back == input, "read back, {len} bytes");
            let chunks = svc.stat(&want).await.unwrap().unwrap();
            assert!(chunks.is_empty() || chunks.iter().map(|c| c.size).sum::<u64>() == len as u64);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_stream_cuts_as_one_scan_whatever_the_pieces() {
        let chunker = Chunker::new(4 << 10, 16 << 10, 64 << 10);
        let input = Bytes::from(data(6 << 20, 5));
        let want = B3Digest::of(&input);
        let sequential = chunker.boundaries(&input, true);
        let pieces = |step: usize| {
            let chunks: Vec<std::io::Result<Bytes>> =
                (0..input.len()).step_by(step).map(|i| Ok(input.slice(i..(i + step).min(input.len())))).collect();
            futures::stream::iter(chunks).boxed()
        };
        for step in [1000, 4096, 65_537, 1 << 20, 5 << 20, 6 << 20] {
            let svc = ChunkedBlobService::with_chunker(Arc::new(MemoryStore::new()), chunker);
            assert_eq!(svc.put_stream(pieces(step), Some(&want)).await.unwrap(), want, "pieces of {step}");
            let ends = chunk_ends(&svc, &want).await;
            assert!(ends == sequential, "pieces of {step}");
            let mut back = Vec::new();
            svc.open_read(&want).await.unwrap().unwrap().read_to_end(&mut back).await.unwrap();
            assert!(back == input, "read back, pieces of {step}");
        }
        // A wrong expected digest leaves nothing visible, one chunk or many;
        // the empty stream is the empty blob.
        let wrong = B3Digest::of(b"something else");
        let svc = ChunkedBlobService::with_chunker(Arc::new(MemoryStore::new()), chunker);
        for len in [100, 6 << 20] {
            let part = input.slice(..len);
            let stream = futures::stream::iter([Ok(part.slice(..len / 2)), Ok(part.slice(len / 2..))]).boxed();
            assert!(matches!(svc.put_stream(stream, Some(&wrong)).await, Err(Error::InvalidRequest(_))));
            assert!(!svc.has(&B3Digest::of(&part)).await.unwrap());
        }
        let empty = svc.put_stream(futures::stream::empty().boxed(), None).await.unwrap();
        assert_eq!(empty, B3Digest::of(b""));
    }

    #[tokio::test]
    async fn put_and_put_bytes_cut_alike_and_check_expected() {
        let svc = ChunkedBlobService::new(Arc::new(MemoryStore::new()));
        let input = data(5 << 20, 7);
        let a = svc.put(&mut Trickle(&input, 4097), None).await.unwrap();
        let chunks_a = svc.stat(&a).await.unwrap().unwrap();
        let svc2 = ChunkedBlobService::new(Arc::new(MemoryStore::new()));
        let b = svc2.put_bytes(input.clone().into(), Some(&a)).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(chunks_a, svc2.stat(&b).await.unwrap().unwrap());
        assert!(chunks_a.len() > 2);

        let wrong = B3Digest::of(b"something else");
        let svc3 = ChunkedBlobService::new(Arc::new(MemoryStore::new()));
        assert!(matches!(svc3.put_bytes(input.into(), Some(&wrong)).await, Err(Error::InvalidRequest(_))));
        assert!(!svc3.has(&a).await.unwrap());
    }
}
