//! Rendering a castore node as a NAR: [`NarReader`] (streaming, seekable)
//! and [`calculate`] (NarSize and NarHash without keeping the NAR).
//!
//! [`NarReader::open`] fetches the directory closure once and lays the whole
//! NAR out: every token is written into one buffer (`meta`), and the NAR is
//! a sorted list of segments, each either a run of that buffer or a file's
//! contents (a blob of known size). The NAR's length is known before a byte
//! is read, and any offset is found by binary search over the segments, so
//! a range is served without rendering what comes before it.
//!
//! Reading walks the segments from the current position. Blobs are fetched
//! ahead by tasks, each sending into a small bounded queue: a large blob
//! streamed by a task of its own, small blobs (and the tokens between them)
//! in spans of up to a MiB, read [`SPAN_PARALLEL`] at a time by one task.
//! Fetches are started while the bytes they may hold stay within
//! [`READ_AHEAD`], so a remote blob service is asked for many blobs at once
//! instead of one round trip after another, and [`NarReader::set_end`] keeps
//! a short range from reading ahead at all. Every blob must yield exactly
//! the size its directory entry records: a short or long blob is an error,
//! never a silently different NAR.
use std::{
    collections::{HashMap, VecDeque},
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use castore::{B3Digest, BlobService, Directory, DirectoryService, Error, Node};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, ReadBuf},
    sync::mpsc,
    task::JoinHandle,
};

use super::{sha::ShaPipe, wire};

/// Bytes of upcoming blobs fetched ahead of the reader (beyond the first).
const READ_AHEAD: u64 = 8 << 20;
/// Most parts queued ahead (bounds the tasks).
const MAX_PARTS: usize = 64;
/// Blobs up to this size are read whole, many to a task (a span).
const SMALL_BLOB: u64 = 64 << 10;
/// Most bytes of small blobs in one span.
const SPAN_BYTES: u64 = 1 << 20;
/// Most segments in one span.
const SPAN_SEGS: usize = 256;
/// Small blobs of one span read at once.
const SPAN_PARALLEL: usize = 16;
/// Bytes a large blob's fetch reads at a time.
const PIECE: u64 = 256 << 10;
/// Pieces a fetch holds ready beyond the one being read.
const FETCH_QUEUE: usize = 4;
/// Bytes one large blob's fetch can hold: its queue and the piece being read.
const PER_BLOB: u64 = (FETCH_QUEUE as u64 + 1) * PIECE;

/// Where a segment's bytes come from.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// Tokens, from this offset of [`Layout::meta`].
    Meta(usize),
    /// A file's contents: the whole blob.
    Blob(B3Digest),
}

#[derive(Clone, Copy, Debug)]
struct Seg {
    /// Offset in the NAR.
    start: u64,
    len: u64,
    src: Src,
}

/// A NAR's exact layout.
#[derive(Debug)]
struct Layout {
    meta: Bytes,
    segs: Vec<Seg>,
    size: u64,
}

fn too_large() -> Error {
    Error::InvalidRequest("the NAR of this node would be larger than 2^64 bytes".into())
}

#[derive(Default)]
struct Builder {
    meta: Vec<u8>,
    segs: Vec<Seg>,
    /// NAR offset of the end of everything laid out so far.
    pos: u64,
    /// Start of the token run not yet made a segment: NAR offset, meta offset.
    run: Option<(u64, usize)>,
}

impl Builder {
    fn token(&mut self, s: &[u8]) -> Result<(), Error> {
        self.run.get_or_insert((self.pos, self.meta.len()));
        wire::put_str(&mut self.meta, s);
        self.pos = self.pos.checked_add(wire::token_len(s.len() as u64)).ok_or_else(too_large)?;
        Ok(())
    }

    fn end_run(&mut self) {
        if let Some((start, at)) = self.run.take() {
            self.segs.push(Seg { start, len: self.pos - start, src: Src::Meta(at) });
        }
    }

    /// A regular file's node: tokens, contents, padding, closing token.
    fn file(&mut self, digest: B3Digest, size: u64, executable: bool) -> Result<(), Error> {
        self.token(wire::OPEN)?;
        self.token(wire::TYPE)?;
        self.token(wire::REGULAR)?;
        if executable {
            self.token(wire::EXECUTABLE)?;
            self.token(b"")?;
        }
        self.token(wire::CONTENTS)?;
        // The length field: a token whose bytes are the length.
        self.run.get_or_insert((self.pos, self.meta.len()));
        self.meta.extend_from_slice(&size.to_le_bytes());
        self.pos = self.pos.checked_add(8).ok_or_else(too_large)?;
        if size > 0 {
            self.end_run();
            self.segs.push(Seg { start: self.pos, len: size, src: Src::Blob(digest) });
            self.pos = self.pos.checked_add(size).ok_or_else(too_large)?;
        }
        let pad = wire::padding(size);
        if pad > 0 {
            self.run.get_or_insert((self.pos, self.meta.len()));
            self.meta.extend_from_slice(&[0; 8][..pad as usize]);
            self.pos = self.pos.checked_add(pad).ok_or_else(too_large)?;
        }
        self.token(wire::CLOSE)
    }

    fn symlink(&mut self, target: &[u8]) -> Result<(), Error> {
        for t in [wire::OPEN, wire::TYPE, wire::SYMLINK, wire::TARGET, target, wire::CLOSE] {
            self.token(t)?;
        }
        Ok(())
    }

    fn open_dir(&mut self) -> Result<(), Error> {
        for t in [wire::OPEN, wire::TYPE, wire::DIRECTORY] {
            self.token(t)?;
        }
        Ok(())
    }

    /// Lays out `root`, with `dirs` holding its directory closure.
    fn node(&mut self, root: &Node, dirs: &HashMap<B3Digest, Directory>) -> Result<(), Error> {
        let lookup = |digest: &B3Digest| {
            dirs.get(digest).ok_or_else(|| Error::Storage(format!("directory {digest} is missing from the closure")))
        };
        let mut stack = Vec::new();
        match root {
            Node::File { digest, size, executable } => return self.file(*digest, *size, *executable),
            Node::Symlink { target } => return self.symlink(target),
            Node::Directory { digest, .. } => {
                self.open_dir()?;
                stack.push(lookup(digest)?.entries());
            }
        }
        while let Some(entries) = stack.last_mut() {
            match entries.next() {
                Some((name, node)) => {
                    for t in [wire::ENTRY, wire::OPEN, wire::NAME, name.as_bytes(), wire::NODE] {
                        self.token(t)?;
                    }
                    match node {
                        Node::File { digest, size, executable } => {
                            self.file(*digest, *size, *executable)?;
                            self.token(wire::CLOSE)?;
                        }
                        Node::Symlink { target } => {
                            self.symlink(target)?;
                            self.token(wire::CLOSE)?;
                        }
                        Node::Directory { digest, .. } => {
                            self.open_dir()?;
                            stack.push(lookup(digest)?.entries());
                        }
                    }
                }
                None => {
                    stack.pop();
                    // Closes the directory, then (below the root) its entry.
                    self.token(wire::CLOSE)?;
                    if !stack.is_empty() {
                        self.token(wire::CLOSE)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Layout {
        self.end_run();
        Layout { meta: self.meta.into(), segs: self.segs, size: self.pos }
    }
}

impl Layout {
    async fn of(node: &Node, directories: &dyn DirectoryService) -> Result<Self, Error> {
        let dirs: HashMap<B3Digest, Directory> = match node {
            Node::Directory { digest, .. } => {
                directories.get_recursive(digest).map_ok(|d| (d.digest(), d)).try_collect().await?
            }
            _ => HashMap::new(),
        };
        let mut b = Builder::default();
        b.token(wire::MAGIC)?;
        b.node(node, &dirs)?;
        Ok(b.finish())
    }

    /// The segment holding `pos` (< size).
    fn find(&self, pos: u64) -> usize {
        self.segs.partition_point(|s| s.start <= pos) - 1
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Segments queued for reading.
enum Part {
    /// Tokens, at hand.
    Ready(Bytes),
    /// Bytes from a fetch task: one large blob, or a span of small blobs
    /// with the tokens around them.
    Fetch {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        _task: AbortOnDrop,
        /// Bytes still to come.
        left: u64,
        /// Read-ahead budget it holds.
        cost: u64,
    },
}

/// A node rendered as a NAR: [`AsyncRead`] + [`AsyncSeek`], and a
/// [`Stream`] of [`Bytes`] (the same bytes without a copy into a buffer).
///
/// Spawns tokio tasks to fetch blobs, so it must be used within a tokio
/// runtime. Errors are [`io::Error`]s; those of the castore carry the
/// [`castore::Error`] inside ([`io::Error::get_ref`]).
pub struct NarReader {
    layout: Arc<Layout>,
    blobs: Arc<dyn BlobService>,
    /// Offset of the first byte of `current`: the next byte handed out.
    pos: u64,
    /// Reading stops here (see [`NarReader::set_end`]).
    end: u64,
    current: Bytes,
    /// The next segment to queue, and where in it to start.
    next_seg: usize,
    skip: u64,
    queue: VecDeque<Part>,
    /// Read-ahead budget held by the queued parts.
    inflight: u64,
    /// An error met after some bytes were handed out, for the next read.
    error: Option<io::Error>,
}

impl std::fmt::Debug for NarReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarReader").field("len", &self.layout.size).field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl NarReader {
    /// Lays out the NAR of `node` (fetching its directory closure) and
    /// returns a reader positioned at its start.
    pub async fn open(
        node: &Node,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        let layout = Arc::new(Layout::of(node, directories.as_ref()).await?);
        Ok(Self {
            end: layout.size,
            layout,
            blobs,
            pos: 0,
            current: Bytes::new(),
            next_seg: 0,
            skip: 0,
            queue: VecDeque::new(),
            inflight: 0,
            error: None,
        })
    }

    /// The NAR's length (NarSize).
    pub fn len(&self) -> u64 {
        self.layout.size
    }

    /// Always false: a NAR holds at least its magic and one node.
    pub fn is_empty(&self) -> bool {
        self.layout.size == 0
    }

    /// Offset of the next byte a read returns.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Makes reads end (EOF) at offset `end` (at most [`NarReader::len`]),
    /// and fetches nothing past it: for serving a byte range, so that a
    /// short range does not read ahead into the rest of the NAR.
    pub fn set_end(&mut self, end: u64) {
        let end = end.min(self.layout.size);
        if end != self.end {
            self.end = end;
            self.restart();
        }
    }

    /// Drops everything queued and starts again at `pos`.
    fn restart(&mut self) {
        self.queue.clear();
        self.inflight = 0;
        self.current = Bytes::new();
        if self.pos < self.end {
            self.next_seg = self.layout.find(self.pos);
            self.skip = self.pos - self.layout.segs[self.next_seg].start;
        } else {
            self.next_seg = self.layout.segs.len();
            self.skip = 0;
        }
    }

    /// Queues upcoming segments within the read-ahead bounds: runs of
    /// tokens as they are, a large blob as a fetch of its own, small blobs
    /// (and the tokens between them) in spans fetched by one task each.
    fn admit(&mut self) {
        let segs = &self.layout.segs;
        while self.next_seg < segs.len() && segs[self.next_seg].start < self.end && self.queue.len() < MAX_PARTS {
            let first = self.next_seg;
            let from = segs[first].start + self.skip;
            let (mut last, mut blob_bytes, mut large) = (first, 0, false);
            while last < segs.len() && segs[last].start < self.end && last - first < SPAN_SEGS {
                let seg = segs[last];
                if let Src::Blob(_) = seg.src {
                    let len = (seg.start + seg.len).min(self.end) - seg.start.max(from);
                    if len > SMALL_BLOB {
                        if last == first {
                            (large, blob_bytes, last) = (true, len, last + 1);
                        }
                        break;
                    }
                    if blob_bytes > 0 && blob_bytes + len > SPAN_BYTES {
                        break;
                    }
                    blob_bytes += len;
                }
                last += 1;
            }
            let to = (segs[last - 1].start + segs[last - 1].len).min(self.end);
            let cost = if large { blob_bytes.min(PER_BLOB) } else { blob_bytes };
            if cost > 0 && self.inflight > 0 && self.inflight + cost > READ_AHEAD {
                return;
            }
            if blob_bytes == 0 {
                // Tokens only: one run (runs never follow each other).
                let Src::Meta(at) = segs[first].src else { unreachable!("a blob-free span holds tokens") };
                let offset = at + (from - segs[first].start) as usize;
                self.queue.push_back(Part::Ready(self.layout.meta.slice(offset..offset + (to - from) as usize)));
            } else {
                let span = Span { layout: self.layout.clone(), first, last, from, to };
                let (tx, rx) = mpsc::channel(FETCH_QUEUE);
                let task = tokio::spawn(span.fetch(self.blobs.clone(), tx));
                self.queue.push_back(Part::Fetch { rx, _task: AbortOnDrop(task), left: to - from, cost });
                self.inflight += cost;
            }
            self.next_seg = last;
            self.skip = 0;
        }
    }

    /// Makes `current` hold the next bytes; `false` at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if let Some(e) = self.error.take() {
            return Poll::Ready(Err(e));
        }
        while self.current.is_empty() {
            if self.pos >= self.end {
                return Poll::Ready(Ok(false));
            }
            self.admit();
            let Some(front) = self.queue.front_mut() else {
                return Poll::Ready(Err(io::Error::other("NAR layout ended before its length")));
            };
            match front {
                Part::Ready(bytes) => {
                    self.current = std::mem::take(bytes);
                    self.queue.pop_front();
                }
                Part::Fetch { rx, left, cost, .. } => match ready!(rx.poll_recv(cx)) {
                    Some(Ok(piece)) if piece.len() as u64 <= *left => {
                        *left -= piece.len() as u64;
                        self.current = piece;
                    }
                    Some(Ok(_)) => {
                        self.restart();
                        return Poll::Ready(Err(io::Error::other("blob fetch returned too many bytes")));
                    }
                    Some(Err(e)) => {
                        self.restart();
                        return Poll::Ready(Err(e));
                    }
                    None if *left == 0 => {
                        self.inflight -= *cost;
                        self.queue.pop_front();
                    }
                    None => {
                        self.restart();
                        return Poll::Ready(Err(io::Error::other("blob fetch stopped early")));
                    }
                },
            }
        }
        Poll::Ready(Ok(true))
    }
}

/// Segments `first..last` of a layout, from NAR offset `from` to `to`.
struct Span {
    layout: Arc<Layout>,
    first: usize,
    last: usize,
    from: u64,
    to: u64,
}

impl Span {
    /// Sends the span's bytes, in order, into `tx`; an error ends it.
    async fn fetch(self, blobs: Arc<dyn BlobService>, tx: mpsc::Sender<io::Result<Bytes>>) {
        let result = self.send(blobs, &tx).await;
        if let Err(e) = result {
            let _ = tx.send(Err(e.into())).await;
        }
    }

    async fn send(&self, blobs: Arc<dyn BlobService>, tx: &mpsc::Sender<io::Result<Bytes>>) -> Result<(), Error> {
        let layout = &self.layout;
        // The part of segment `i` in the span: offset within it, length,
        // and whether it runs to the segment's end.
        let part = |i: usize| {
            let seg = layout.segs[i];
            let start = seg.start.max(self.from);
            let end = (seg.start + seg.len).min(self.to);
            (seg, start - seg.start, end - start, end == seg.start + seg.len)
        };
        if self.last - self.first == 1
            && let (Seg { src: Src::Blob(digest), .. }, offset, len, whole) = part(self.first)
            && len > SMALL_BLOB
        {
            return stream_blob(blobs.as_ref(), digest, offset, len, whole, tx).await;
        }
        let mut pieces = futures::stream::iter(self.first..self.last)
            .map(|i| {
                let blobs = blobs.clone();
                async move {
                    match part(i) {
                        (Seg { src: Src::Meta(at), .. }, offset, len, _) => {
                            let at = at + offset as usize;
                            Ok(layout.meta.slice(at..at + len as usize))
                        }
                        (Seg { src: Src::Blob(digest), .. }, offset, len, whole) => {
                            read_blob(blobs.as_ref(), digest, offset, len, whole).await
                        }
                    }
                }
            })
            .buffered(SPAN_PARALLEL);
        while let Some(piece) = pieces.try_next().await? {
            if tx.send(Ok(piece)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

async fn open_blob(blobs: &dyn BlobService, digest: B3Digest, offset: u64) -> Result<castore::BlobReader, Error> {
    let mut reader = blobs
        .open_read(&digest)
        .await?
        .ok_or_else(|| Error::NotFound(format!("blob {digest} not found (a file of the NAR)")))?;
    if offset > 0 {
        reader.seek(io::SeekFrom::Start(offset)).await?;
    }
    Ok(reader)
}

/// Fills `piece` to its capacity from `reader`; an early end is an error.
async fn read_full(
    reader: &mut castore::BlobReader,
    piece: &mut BytesMut,
    digest: B3Digest,
    at: u64,
    size: u64,
) -> Result<(), Error> {
    while piece.len() < piece.capacity() {
        if reader.read_buf(piece).await? == 0 {
            let got = at + piece.len() as u64;
            return Err(Error::Storage(format!(
                "blob {digest} ends after {got} bytes, but its directory entry says {size}"
            )));
        }
    }
    Ok(())
}

/// Checks that a blob read to its recorded `size` has nothing more.
async fn check_end(reader: &mut castore::BlobReader, digest: B3Digest, size: u64) -> Result<(), Error> {
    if reader.read(&mut [0u8; 1]).await? != 0 {
        return Err(Error::Storage(format!("blob {digest} is longer than the {size} bytes its directory entry says")));
    }
    Ok(())
}

/// `len` bytes of a small blob from `offset`, in one piece; `whole` when
/// they run to the blob's recorded end, which is then checked.
async fn read_blob(
    blobs: &dyn BlobService,
    digest: B3Digest,
    offset: u64,
    len: u64,
    whole: bool,
) -> Result<Bytes, Error> {
    let mut reader = open_blob(blobs, digest, offset).await?;
    let mut piece = BytesMut::with_capacity(len as usize);
    read_full(&mut reader, &mut piece, digest, offset, offset + len).await?;
    if whole {
        check_end(&mut reader, digest, offset + len).await?;
    }
    Ok(piece.freeze())
}

/// Streams `len` bytes of a large blob from `offset` in pieces of [`PIECE`].
async fn stream_blob(
    blobs: &dyn BlobService,
    digest: B3Digest,
    offset: u64,
    len: u64,
    whole: bool,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<(), Error> {
    let mut reader = open_blob(blobs, digest, offset).await?;
    let mut done = 0;
    while done < len {
        let mut piece = BytesMut::with_capacity((len - done).min(PIECE) as usize);
        read_full(&mut reader, &mut piece, digest, offset + done, offset + len).await?;
        done += piece.len() as u64;
        if tx.send(Ok(piece.freeze())).await.is_err() {
            return Ok(());
        }
    }
    if whole {
        check_end(&mut reader, digest, offset + len).await?;
    }
    Ok(())
}

impl AsyncRead for NarReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut copied = false;
        while buf.remaining() > 0 {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current[..n]);
                this.current.advance(n);
                this.pos += n as u64;
                copied = true;
                continue;
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => break,
                Poll::Ready(Err(e)) if copied => {
                    this.error = Some(e);
                    break;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if copied => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for NarReader {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let target = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => this.layout.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        if target >= this.pos && target - this.pos < this.current.len() as u64 {
            // Within the bytes at hand.
            this.current.advance((target - this.pos) as usize);
            this.pos = target;
        } else if target != this.pos {
            this.pos = target;
            this.error = None;
            this.restart();
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

impl Stream for NarReader {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match ready!(this.poll_fill(cx)) {
            Ok(true) => {
                let piece = std::mem::take(&mut this.current);
                this.pos += piece.len() as u64;
                Poll::Ready(Some(Ok(piece)))
            }
            Ok(false) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// A castore error back out of an [`io::Error`] from [`NarReader`].
fn castore_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return *e.into_inner().expect("checked").downcast::<Error>().expect("checked");
    }
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound(e.to_string()),
        _ => Error::Io(e),
    }
}

/// NarSize and NarHash (SHA-256) of `node`'s NAR, as CalculateNAR answers:
/// the NAR is streamed through the hash, never held.
pub async fn calculate(
    node: &Node,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
) -> Result<(u64, [u8; 32]), Error> {
    let mut reader = NarReader::open(node, blobs, directories).await?;
    let size = reader.len();
    let mut sha = ShaPipe::new();
    while let Some(piece) = reader.next().await {
        sha.update(piece.map_err(castore_error)?).await?;
    }
    if sha.total() != size {
        return Err(Error::Storage(format!("rendered {} bytes of a NAR of {size}", sha.total())));
    }
    Ok((size, sha.finish().await?))
}

#[cfg(test)]
mod tests {
    use castore::Name;

    use super::*;

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    /// A stored tree: small files (more than MAX_PARTS of them), files
    /// larger than the read-ahead budget together, an empty file, an
    /// executable, a symlink and a nested directory.
    async fn tree() -> (Node, Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
        let blobs = castore::blob_service_from_url("memory:").unwrap();
        let dirs = castore::directory_service_from_url("memory:").unwrap();
        let file = async |len: usize, seed: u32, executable: bool| {
            let digest = blobs.put_bytes(data(len, seed).into(), None).await.unwrap();
            Node::File { digest, size: len as u64, executable }
        };
        let mut inner = Directory::default();
        for i in 0..600u32 {
            inner.add(Name::new(format!("f{i:03}")).unwrap(), file(i as usize % 23, i, i % 7 == 0).await).unwrap();
        }
        let mut root = Directory::default();
        root.add(Name::new("a-inner").unwrap(), Node::Directory { digest: inner.digest(), size: inner.size() })
            .unwrap();
        for (i, len) in [3 << 20, (3 << 20) + 5, 5 << 20].into_iter().enumerate() {
            root.add(Name::new(format!("big-{i}")).unwrap(), file(len, 1000 + i as u32, i == 1).await).unwrap();
        }
        root.add(Name::new("empty").unwrap(), file(0, 0, false).await).unwrap();
        root.add(Name::new("link").unwrap(), Node::Symlink { target: "a-inner/f001".into() }).unwrap();
        let node = Node::Directory { digest: root.digest(), size: root.size() };
        dirs.put_closure(vec![inner, root]).await.unwrap();
        (node, blobs, dirs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_tile_the_nar() {
        let (node, _, dirs) = tree().await;
        let layout = Layout::of(&node, dirs.as_ref()).await.unwrap();
        let mut pos = 0;
        let mut prev_meta = false;
        for seg in &layout.segs {
            assert_eq!(seg.start, pos);
            assert!(seg.len > 0);
            let is_meta = matches!(seg.src, Src::Meta(_));
            // Token runs are merged: two never follow each other.
            assert!(!(is_meta && prev_meta));
            prev_meta = is_meta;
            pos += seg.len;
        }
        assert_eq!(pos, layout.size);
        assert_eq!(layout.size % 8, 0);
        let blob_bytes: u64 = layout.segs.iter().filter(|s| matches!(s.src, Src::Blob(_))).map(|s| s.len).sum();
        assert_eq!(layout.meta.len() as u64 + blob_bytes, layout.size);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_across_every_boundary_match_the_whole() {
        let (node, blobs, dirs) = tree().await;
        let mut reader = NarReader::open(&node, blobs.clone(), dirs.clone()).await.unwrap();
        let mut whole = Vec::new();
        reader.read_to_end(&mut whole).await.unwrap();
        assert_eq!(whole.len() as u64, reader.len());

        // The same bytes as a stream of pieces.
        let mut streamed = Vec::new();
        let mut stream = NarReader::open(&node, blobs, dirs).await.unwrap();
        while let Some(piece) = stream.next().await {
            streamed.extend_from_slice(&piece.unwrap());
        }
        assert!(streamed == whole);

        let layout = reader.layout.clone();
        let size = layout.size;
        let mut buf = vec![0u8; 64];
        for seg in layout.segs.iter().step_by(5).chain(layout.segs.last()) {
            for start in seg.start.saturating_sub(3)..(seg.start + 4).min(size) {
                for len in [1, 2, 8, 9, 33, 64] {
                    let len = len.min((size - start) as usize);
                    reader.seek(io::SeekFrom::Start(start)).await.unwrap();
                    // Half of the ranges with their end set: EOF right there.
                    if len % 2 == 1 {
                        reader.set_end(start + len as u64);
                        let mut got = Vec::new();
                        reader.read_to_end(&mut got).await.unwrap();
                        reader.set_end(size);
                        assert!(got == whole[start as usize..start as usize + len], "{start}+{len}, limited");
                        continue;
                    }
                    reader.read_exact(&mut buf[..len]).await.unwrap();
                    assert!(buf[..len] == whole[start as usize..start as usize + len], "{start}+{len}");
                }
            }
        }
        // Relative seeks, a seek within the bytes at hand, and past the end.
        reader.seek(io::SeekFrom::End(-10)).await.unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).await.unwrap();
        assert!(tail == whole[whole.len() - 10..]);
        reader.seek(io::SeekFrom::Start(100)).await.unwrap();
        reader.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(reader.seek(io::SeekFrom::Current(2)).await.unwrap(), 106);
        reader.read_exact(&mut buf[..4]).await.unwrap();
        assert!(buf[..4] == whole[106..110]);
        assert!(reader.seek(io::SeekFrom::Current(-1000)).await.is_err());
        reader.seek(io::SeekFrom::Start(size + 5)).await.unwrap();
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calculate_matches_the_rendered_bytes() {
        use sha2::Digest;
        let (node, blobs, dirs) = tree().await;
        let mut reader = NarReader::open(&node, blobs.clone(), dirs.clone()).await.unwrap();
        let mut whole = Vec::new();
        reader.read_to_end(&mut whole).await.unwrap();
        let (size, hash) = calculate(&node, blobs, dirs).await.unwrap();
        assert_eq!(size, whole.len() as u64);
        assert_eq!(hash, <[u8; 32]>::from(sha2::Sha256::digest(&whole)));
    }
}
