//! Rendering a byte stream laid out in advance from literal bytes and
//! ranges of blobs: [`Layout`] (built by [`LayoutBuilder`]) and
//! [`LayoutReader`] (streaming, seekable). Formats made of metadata around
//! file contents — NARs (`store::nar`), tar layers (the registry) — are
//! rendered this way straight from the castore, never stored.
//!
//! A [`Layout`] is a sorted list of segments, each either a run of one
//! buffer of literal bytes (headers, tokens, padding) or a whole blob of
//! known size. Its length is known before a byte is read, and any offset is
//! found by binary search over the segments, so a range is served without
//! rendering what comes before it.
//!
//! Reading walks the segments from the current position. Blobs are fetched
//! ahead by tasks, each sending into a small bounded queue: a large blob
//! streamed by a task of its own, small blobs (and the literal bytes between
//! them) in spans of up to a MiB, read [`SPAN_PARALLEL`] at a time by one
//! task. Fetches are started while the bytes they may hold stay within
//! [`READ_AHEAD`], so a remote blob service is asked for many blobs at once
//! instead of one round trip after another, and [`LayoutReader::set_end`]
//! keeps a short range from reading ahead at all. Every blob must yield
//! exactly the size its layout records: a short or long blob is an error,
//! never silently different bytes.
use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, ReadBuf},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{B3Digest, BlobReader, BlobService, Error};

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
    /// Literal bytes, from this offset of [`Layout::meta`].
    Meta(usize),
    /// A whole blob.
    Blob(B3Digest),
}

#[derive(Clone, Copy, Debug)]
struct Seg {
    /// Offset in the rendering.
    start: u64,
    len: u64,
    src: Src,
}

/// One segment of a [`Layout`], as [`Layout::segments`] lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Literal bytes.
    Bytes(Bytes),
    /// A whole blob, of this size.
    Blob { digest: B3Digest, size: u64 },
}

/// The exact layout of a rendering: literal bytes and blobs, by offset.
///
/// Immutable once built; share it (`Arc`) between the readers of the same
/// rendering. Segments are never empty and two runs of literal bytes never
/// follow each other.
#[derive(Debug, Default)]
pub struct Layout {
    meta: Bytes,
    segs: Vec<Seg>,
    size: u64,
}

impl Layout {
    /// The rendering's length in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Bytes held as literal bytes (the rest are blobs').
    pub fn literal_len(&self) -> usize {
        self.meta.len()
    }

    /// The segments in order, each with its offset.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = (u64, Segment)> + '_ {
        self.segs.iter().map(|s| {
            let segment = match s.src {
                Src::Meta(at) => Segment::Bytes(self.meta.slice(at..at + s.len as usize)),
                Src::Blob(digest) => Segment::Blob { digest, size: s.len },
            };
            (s.start, segment)
        })
    }

    /// The segment holding `pos` (< size).
    fn find(&self, pos: u64) -> usize {
        self.segs.partition_point(|s| s.start <= pos) - 1
    }
}

/// A [`Layout`] would be longer than `u64::MAX` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the rendering would be larger than 2^64 bytes")]
pub struct TooLarge;

impl From<TooLarge> for Error {
    fn from(e: TooLarge) -> Self {
        Error::InvalidRequest(e.to_string())
    }
}

/// Builds a [`Layout`] front to back: literal bytes ([`LayoutBuilder::bytes`],
/// consecutive calls merged into one segment) and blobs
/// ([`LayoutBuilder::blob`]).
#[derive(Debug, Default)]
pub struct LayoutBuilder {
    meta: Vec<u8>,
    segs: Vec<Seg>,
    /// Offset of the end of everything laid out so far.
    pos: u64,
    /// Start of the literal run not yet made a segment: offset, meta offset.
    run: Option<(u64, usize)>,
}

impl LayoutBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends literal bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.pos = self.pos.checked_add(bytes.len() as u64).ok_or(TooLarge)?;
        self.run.get_or_insert((self.pos - bytes.len() as u64, self.meta.len()));
        self.meta.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends the literal bytes `write` appends to the buffer it is given
    /// (the layout's own, so nothing is copied; it must only append).
    pub fn write_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), TooLarge> {
        let at = self.meta.len();
        write(&mut self.meta);
        let n = self.meta.len().checked_sub(at).expect("write_with must only append");
        if n == 0 {
            return Ok(());
        }
        let Some(pos) = self.pos.checked_add(n as u64) else {
            self.meta.truncate(at);
            return Err(TooLarge);
        };
        self.run.get_or_insert((self.pos, at));
        self.pos = pos;
        Ok(())
    }

    /// Appends `n` zero bytes (padding).
    pub fn zeros(&mut self, n: usize) -> Result<(), TooLarge> {
        if n == 0 {
            return Ok(());
        }
        self.pos = self.pos.checked_add(n as u64).ok_or(TooLarge)?;
        self.run.get_or_insert((self.pos - n as u64, self.meta.len()));
        self.meta.resize(self.meta.len() + n, 0);
        Ok(())
    }

    /// Appends the whole blob `digest`, which must be `size` bytes long
    /// (reading fails otherwise). An empty blob adds nothing.
    pub fn blob(&mut self, digest: B3Digest, size: u64) -> Result<(), TooLarge> {
        if size == 0 {
            return Ok(());
        }
        let start = self.pos;
        self.pos = self.pos.checked_add(size).ok_or(TooLarge)?;
        self.end_run();
        self.segs.push(Seg { start, len: size, src: Src::Blob(digest) });
        Ok(())
    }

    /// The length laid out so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Closes the literal run, if any, as a segment.
    fn end_run(&mut self) {
        if let Some((start, at)) = self.run.take() {
            self.segs.push(Seg { start, len: (self.meta.len() - at) as u64, src: Src::Meta(at) });
        }
    }

    pub fn finish(mut self) -> Layout {
        self.end_run();
        Layout { meta: self.meta.into(), segs: self.segs, size: self.pos }
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
    /// Literal bytes, at hand.
    Ready(Bytes),
    /// Bytes from a fetch task: one large blob, or a span of small blobs
    /// with the literal bytes around them.
    Fetch {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        _task: AbortOnDrop,
        /// Bytes still to come.
        left: u64,
        /// Read-ahead budget it holds.
        cost: u64,
    },
}

/// A [`Layout`] rendered from a [`BlobService`]: [`AsyncRead`] +
/// [`AsyncSeek`], and a [`Stream`] of [`Bytes`] (the same bytes without a
/// copy into a buffer).
///
/// Spawns tokio tasks to fetch blobs, so it must be used within a tokio
/// runtime. Errors are [`io::Error`]s; those of the castore carry the
/// [`Error`] inside ([`io::Error::get_ref`], [`castore_error`]).
pub struct LayoutReader {
    layout: Arc<Layout>,
    blobs: Arc<dyn BlobService>,
    /// Offset of the first byte of `current`: the next byte handed out.
    pos: u64,
    /// Reading stops here (see [`LayoutReader::set_end`]).
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

impl std::fmt::Debug for LayoutReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayoutReader").field("len", &self.layout.size).field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl LayoutReader {
    /// A reader of `layout`, fetching its blobs from `blobs`, positioned at
    /// its start.
    pub fn new(layout: Arc<Layout>, blobs: Arc<dyn BlobService>) -> Self {
        Self {
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
        }
    }

    /// The layout it renders.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The rendering's length.
    pub fn len(&self) -> u64 {
        self.layout.size
    }

    pub fn is_empty(&self) -> bool {
        self.layout.size == 0
    }

    /// Offset of the next byte a read returns.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Makes reads end (EOF) at offset `end` (at most [`LayoutReader::len`]),
    /// and fetches nothing past it: for serving a byte range, so that a
    /// short range does not read ahead into the rest of the rendering.
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
    /// literal bytes as they are, a large blob as a fetch of its own, small
    /// blobs (and the literal bytes between them) in spans fetched by one
    /// task each.
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
                // Literal bytes only: one run (runs never follow each other).
                let Src::Meta(at) = segs[first].src else { unreachable!("a blob-free span holds literal bytes") };
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
                return Poll::Ready(Err(io::Error::other("the layout ended before its length")));
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

/// Segments `first..last` of a layout, from offset `from` to `to`.
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

async fn open_blob(blobs: &dyn BlobService, digest: B3Digest, offset: u64) -> Result<BlobReader, Error> {
    let mut reader =
        blobs.open_read(&digest).await?.ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))?;
    if offset > 0 {
        reader.seek(io::SeekFrom::Start(offset)).await?;
    }
    Ok(reader)
}

/// Fills `piece` to its capacity from `reader`; an early end is an error.
async fn read_full(
    reader: &mut BlobReader,
    piece: &mut BytesMut,
    digest: B3Digest,
    at: u64,
    size: u64,
) -> Result<(), Error> {
    while piece.len() < piece.capacity() {
        if reader.read_buf(piece).await? == 0 {
            let got = at + piece.len() as u64;
            return Err(Error::Storage(format!(
                "blob {digest} ends after {got} bytes, short of its recorded size of {size}"
            )));
        }
    }
    Ok(())
}

/// Checks that a blob read to its recorded `size` has nothing more.
async fn check_end(reader: &mut BlobReader, digest: B3Digest, size: u64) -> Result<(), Error> {
    if reader.read(&mut [0u8; 1]).await? != 0 {
        return Err(Error::Storage(format!("blob {digest} is longer than its recorded size of {size} bytes")));
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

/// Streams `len` bytes of a large blob from `offset` in pieces of at most
/// [`PIECE`], cut from the buffers [`BlobService::read_from`] hands out (no
/// copy for a chunked store).
async fn stream_blob(
    blobs: &dyn BlobService,
    digest: B3Digest,
    offset: u64,
    len: u64,
    whole: bool,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<(), Error> {
    let mut pieces =
        blobs.read_from(&digest, offset).await?.ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))?;
    let longer = || Error::Storage(format!("blob {digest} is longer than its recorded size of {} bytes", offset + len));
    let mut done = 0;
    while done < len {
        let Some(mut piece) = pieces.try_next().await? else {
            return Err(Error::Storage(format!(
                "blob {digest} ends after {} bytes, short of its recorded size of {}",
                offset + done,
                offset + len
            )));
        };
        while !piece.is_empty() && done < len {
            let n = piece.len().min(PIECE as usize).min((len - done) as usize);
            done += n as u64;
            if tx.send(Ok(piece.split_to(n))).await.is_err() {
                return Ok(());
            }
        }
        if whole && !piece.is_empty() {
            return Err(longer());
        }
    }
    if whole {
        while let Some(piece) = pieces.try_next().await? {
            if !piece.is_empty() {
                return Err(longer());
            }
        }
    }
    Ok(())
}

impl AsyncRead for LayoutReader {
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

impl AsyncSeek for LayoutReader {
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

impl Stream for LayoutReader {
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

/// A castore error back out of an [`io::Error`] from [`LayoutReader`].
pub fn castore_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return *e.into_inner().expect("checked").downcast::<Error>().expect("checked");
    }
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound(e.to_string()),
        _ => Error::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_runs_merge_and_empty_parts_vanish() {
        let d = B3Digest::of(b"abc");
        let mut b = LayoutBuilder::new();
        b.bytes(b"he").unwrap();
        b.write_with(|m| m.extend_from_slice(b"ad")).unwrap();
        b.zeros(2).unwrap();
        b.blob(B3Digest::of(b""), 0).unwrap();
        b.bytes(b"").unwrap();
        b.zeros(0).unwrap();
        b.write_with(|_| {}).unwrap();
        b.bytes(b"er").unwrap();
        b.blob(d, 3).unwrap();
        b.blob(d, 3).unwrap();
        b.bytes(b"end").unwrap();
        assert_eq!(b.len(), 17);
        let layout = b.finish();
        let segs: Vec<_> = layout.segments().collect();
        assert_eq!(
            segs,
            [
                (0, Segment::Bytes(Bytes::from_static(b"head\0\0er"))),
                (8, Segment::Blob { digest: d, size: 3 }),
                (11, Segment::Blob { digest: d, size: 3 }),
                (14, Segment::Bytes(Bytes::from_static(b"end"))),
            ]
        );
        assert_eq!((layout.len(), layout.literal_len()), (17, 11));
    }

    #[test]
    fn overflow_is_refused_and_changes_nothing() {
        let mut b = LayoutBuilder::new();
        b.bytes(b"x").unwrap();
        assert_eq!(b.blob(B3Digest::of(b"x"), u64::MAX), Err(TooLarge));
        assert_eq!(b.write_with(|m| m.push(1)), Ok(()));
        b.blob(B3Digest::of(b"y"), u64::MAX - 2).unwrap();
        assert_eq!(b.write_with(|m| m.push(1)), Err(TooLarge));
        assert_eq!(b.zeros(1), Err(TooLarge));
        assert_eq!(b.bytes(b"z"), Err(TooLarge));
        assert_eq!(b.len(), u64::MAX);
        let layout = b.finish();
        assert_eq!(layout.literal_len(), 2);
        assert_eq!(layout.segments().count(), 2);
    }

    #[tokio::test]
    async fn reads_bytes_and_blobs_in_order() {
        let blobs = crate::blob_service_from_url("memory:").unwrap();
        let data = Bytes::from(vec![7u8; 200_000]);
        let big = blobs.put_bytes(data.clone(), None).await.unwrap();
        let small = blobs.put_bytes(Bytes::from_static(b"small"), None).await.unwrap();
        let mut b = LayoutBuilder::new();
        b.bytes(b"<").unwrap();
        b.blob(small, 5).unwrap();
        b.bytes(b"|").unwrap();
        b.blob(big, data.len() as u64).unwrap();
        b.blob(small, 5).unwrap();
        b.bytes(b">").unwrap();
        let layout = Arc::new(b.finish());
        let want = [&b"<small|"[..], &data, b"small>"].concat();

        let mut whole = Vec::new();
        LayoutReader::new(layout.clone(), blobs.clone()).read_to_end(&mut whole).await.unwrap();
        assert!(whole == want);
        let mut streamed = Vec::new();
        let mut s = LayoutReader::new(layout.clone(), blobs.clone());
        while let Some(piece) = s.next().await {
            streamed.extend_from_slice(&piece.unwrap());
        }
        assert!(streamed == want);
        let mut r = LayoutReader::new(layout.clone(), blobs.clone());
        r.seek(io::SeekFrom::Start(3)).await.unwrap();
        r.set_end(10);
        let mut part = Vec::new();
        r.read_to_end(&mut part).await.unwrap();
        assert_eq!(part, &want[3..10]);

        // Empty: at its end from the start.
        let mut empty = LayoutReader::new(Arc::new(LayoutBuilder::new().finish()), blobs);
        assert!(empty.is_empty());
        assert_eq!(empty.read(&mut [0u8; 4]).await.unwrap(), 0);
        assert!(empty.next().await.is_none());
    }
}

/// A `Range` header asks for no byte of the stream (HTTP 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the range is outside the {len} bytes")]
pub struct Unsatisfiable {
    pub len: u64,
}

/// Parses an HTTP `Range` header against a stream of `len` bytes into
/// `[start, end)`, for serving a [`LayoutReader`] (or a blob) in part.
/// Forms other than one `bytes=` range (several ranges, other units,
/// nonsense) give `None`: answering with the whole stream is what HTTP
/// allows for them.
pub fn parse_range(spec: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if set.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ok(None);
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let range = match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => return Err(Unsatisfiable { len }),
            Some(n) => (len.saturating_sub(n), len),
            None => return Ok(None),
        },
        (start, "") => match number(start) {
            Some(s) => (s, len),
            None => return Ok(None),
        },
        (start, end) => match (number(start), number(end)) {
            (Some(s), Some(e)) if e >= s => (s, e.saturating_add(1).min(len)),
            _ => return Ok(None),
        },
    };
    if range.0 >= len {
        return Err(Unsatisfiable { len });
    }
    Ok(Some(range))
}

#[cfg(test)]
mod range_tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=500-", 1000), Ok(Some((500, 1000))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=-5000", 1000), Ok(Some((0, 1000))));
        assert_eq!(parse_range("bytes=900-5000", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
        assert_eq!(parse_range("bytes=9-3", 1000), Ok(None));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(Unsatisfiable { len: 1000 }));
        assert_eq!(parse_range("bytes=-0", 1000), Err(Unsatisfiable { len: 1000 }));
        assert_eq!(parse_range("bytes=0-", 0), Err(Unsatisfiable { len: 0 }));
    }
}
