//! Streaming NAR ingest: one pass over the input, contents into blobs,
//! directories as one closure at the end.
//!
//! Three futures run side by side in the calling task, and a thread beside
//! them. The [`Pump`] reads the input into large reused blocks and hands
//! each piece, shared (no copy), both to the SHA-256 thread ([`ShaPipe`])
//! and, through a short queue, to the [`Parser`], so reading runs ahead of
//! parsing. The parser reads tokens in place and sends file contents to the
//! puts: a small file is copied out and stored with `put_bytes` (many at a
//! time), a large one is streamed to a `put_stream` as slices of the read
//! blocks through a bounded queue (chunks are cut from those slices, not
//! copied). The blob service spreads its own hashing and
//! writing over further tasks. The tree is kept as a list of directories in
//! the order they close (children first); once the parser has seen the
//! exact end of the NAR and every put has answered, the directories are
//! built and put as one closure, so a malformed NAR leaves no directory
//! behind (only unreferenced blobs). Memory stays bounded: a few read
//! blocks, the queues, and the directory listing itself.
use std::collections::HashSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use castore::{B3Digest, BlobService, Directory, DirectoryError, DirectoryService, Name, Node};
use futures::{StreamExt, TryStreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::mpsc,
};

use super::{NarError, Problem, sha::ShaPipe, show, wire};

/// Default for [`IngestOptions::max_file_size`]: 1 TiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 40;
/// Default for [`IngestOptions::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 256;

/// Read block size; pieces of it are shared with the hasher and the puts.
const BLOCK: usize = 8 << 20;
/// Most bytes asked of the reader at a time.
const READ_SIZE: usize = 2 << 20;
/// A piece is handed on once it holds this much (or the input ended), so a
/// reader that returns little at a time does not cost a hand-over per read.
/// Large, because the blob service copies the chunk that straddles two
/// pieces of a file: with 4 MiB pieces that is about 14 % of the contents,
/// with 1 MiB pieces about half (measured on the benchmark's mixed NAR).
const MIN_PIECE: usize = 4 << 20;
/// Used blocks kept for reuse once every piece of them is dropped.
const SPARE_BLOCKS: usize = 8;
/// Files up to this size are copied out and stored with `put_bytes`;
/// larger ones are streamed.
const SMALL_FILE: u64 = 256 << 10;
/// Puts running at once.
const PARALLEL_PUTS: usize = 16;
/// Files queued for storing beyond those running.
const JOB_QUEUE: usize = 16;
/// Pieces read ahead of the parser.
const PIECE_QUEUE: usize = 4;
/// Slices of a large file queued for its put.
const CONTENT_QUEUE: usize = 8;
/// Longest keyword token accepted ("nix-archive-1" is the longest there is).
const MAX_KEYWORD: u64 = 16;
const MAX_NAME: u64 = castore::directory::MAX_NAME_LEN as u64;
const MAX_TARGET: u64 = castore::directory::MAX_TARGET_LEN as u64;

/// Limits and expectations for [`ingest_with`].
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Largest file (contents length) accepted.
    pub max_file_size: u64,
    /// Deepest directory nesting accepted; a root directory is level 1.
    pub max_depth: usize,
    /// The NAR's size, when the caller knows it (a narinfo's NarSize, a
    /// Content-Length): a string reaching past it is refused as soon as its
    /// length is read, and a NAR of another size is refused.
    pub expected_size: Option<u64>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { max_file_size: DEFAULT_MAX_FILE_SIZE, max_depth: DEFAULT_MAX_DEPTH, expected_size: None }
    }
}

/// What [`ingest`] stored: the root node (anonymous: a NAR names no root),
/// and the NAR's SHA-256 (NarHash) and length (NarSize).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    pub node: Node,
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
}

/// Ingests a NAR with the default limits; see [`ingest_with`].
pub async fn ingest(
    reader: &mut (dyn AsyncRead + Send + Unpin),
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
) -> Result<Ingested, NarError> {
    ingest_with(reader, blobs, directories, &IngestOptions::default()).await
}

/// Reads a whole NAR from `reader` (which must end exactly where the NAR
/// ends), stores its files as blobs and its directories as one closure, and
/// returns the root node with NarHash and NarSize.
///
/// A malformed NAR is refused with [`NarError::Malformed`] (the offset and
/// the [`Problem`]) and no directory is stored; blobs stored before the
/// problem showed remain, unreferenced.
pub async fn ingest_with(
    reader: &mut (dyn AsyncRead + Send + Unpin),
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
    options: &IngestOptions,
) -> Result<Ingested, NarError> {
    let (pieces_tx, pieces_rx) = mpsc::channel(PIECE_QUEUE);
    let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE);
    let pump = Pump::new(reader).run(pieces_tx);
    let input = Input::new(pieces_rx, options.expected_size);
    let parse = Parser { input, options, jobs: jobs_tx, files: 0 }.run();
    let (pumped, parsed, digests) = futures::try_join!(pump, parse, store(blobs, jobs_rx))?;
    debug_assert_eq!(pumped.size, parsed.size, "the parser saw the whole input");

    let node_of = |p: Pending, built: &[(B3Digest, u64)]| -> Result<Node, NarError> {
        Ok(match p {
            Pending::File { blob, size, executable } => {
                let digest = digests.get(blob).copied().flatten().ok_or_else(|| {
                    NarError::Storage(castore::Error::Storage(format!("no digest came back for file {blob}")))
                })?;
                Node::File { digest, size, executable }
            }
            Pending::Symlink(target) => Node::Symlink { target },
            Pending::Dir(i) => Node::Directory { digest: built[i].0, size: built[i].1 },
        })
    };
    let mut built = Vec::with_capacity(parsed.dirs.len());
    let mut closure = Vec::new();
    let mut seen = HashSet::new();
    for entries in parsed.dirs {
        let mut dir = Directory::default();
        for (name, pending) in entries {
            dir.add(name, node_of(pending, &built)?)
                .map_err(|e| NarError::at(parsed.size, Problem::InvalidDirectory(e.to_string())))?;
        }
        let digest = dir.digest();
        built.push((digest, dir.size()));
        if seen.insert(digest) {
            closure.push(dir);
        }
    }
    let node = node_of(parsed.root, &built)?;
    let unique_dirs = closure.len();
    if let Node::Directory { .. } = node {
        // The root closes last, so it is last: children come first.
        directories.put_closure(closure).await?;
    }
    tracing::debug!(
        nar_size = parsed.size,
        files = parsed.files,
        directories = built.len(),
        unique_dirs,
        read_blocks = pumped.blocks,
        "NAR ingested"
    );
    Ok(Ingested { node, nar_sha256: pumped.sha256, nar_size: parsed.size })
}

/// A node whose blob digest may not be known yet.
enum Pending {
    /// `blob` numbers the files in NAR order.
    File {
        blob: usize,
        size: u64,
        executable: bool,
    },
    Symlink(Bytes),
    /// Index into [`Parsed::dirs`].
    Dir(usize),
}

/// A directory being read: its entries so far, and the name of the entry
/// whose node is being read.
#[derive(Default)]
struct Frame {
    entries: Vec<(Name, Pending)>,
    pending_name: Option<Name>,
}

struct Parsed {
    root: Pending,
    files: usize,
    /// Directories in the order they closed: every child before its parent.
    dirs: Vec<Vec<(Name, Pending)>>,
    size: u64,
}

/// A file's contents on their way to the blob service.
enum Job {
    Small { blob: usize, data: Bytes },
    Large { blob: usize, size: u64, rx: mpsc::Receiver<Bytes> },
}

/// Runs the puts, [`PARALLEL_PUTS`] at a time, until the parser is done;
/// returns the digests by file number.
async fn store(blobs: &dyn BlobService, jobs: mpsc::Receiver<Job>) -> Result<Vec<Option<B3Digest>>, NarError> {
    let mut digests: Vec<Option<B3Digest>> = Vec::new();
    let mut done = tokio_stream::wrappers::ReceiverStream::new(jobs)
        .map(|job| async move {
            match job {
                Job::Small { blob, data } => Ok::<_, NarError>((blob, blobs.put_bytes(data, None).await?)),
                Job::Large { blob, size, rx } => {
                    let mut read = 0u64;
                    let pieces = tokio_stream::wrappers::ReceiverStream::new(rx).map(|piece| {
                        read += piece.len() as u64;
                        Ok(piece)
                    });
                    let digest = blobs.put_stream(pieces.boxed(), None).await?;
                    if read != size {
                        // Only when the parser stopped early, whose error wins.
                        return Err(NarError::Storage(castore::Error::Storage(format!(
                            "file {blob}: {read} of {size} bytes arrived"
                        ))));
                    }
                    Ok((blob, digest))
                }
            }
        })
        .buffer_unordered(PARALLEL_PUTS);
    while let Some((blob, digest)) = done.try_next().await? {
        if digests.len() <= blob {
            digests.resize(blob + 1, None);
        }
        digests[blob] = Some(digest);
    }
    Ok(digests)
}

/// Reads the input in large blocks and hands every piece, hashed, to the
/// parser through a short queue: it runs beside the parser (in the same
/// task), so the next read is under way while the parser works.
struct Pump<'r> {
    reader: &'r mut (dyn AsyncRead + Send + Unpin),
    block: BytesMut,
    spare: Vec<BytesMut>,
    sha: ShaPipe,
    /// Blocks allocated so far.
    blocks: usize,
    /// A fresh block being prepared (see [`Pump::prepare`]).
    ahead: Option<tokio::task::JoinHandle<BytesMut>>,
}

/// What the pump saw: SHA-256 and length of the whole input, blocks allocated.
struct Pumped {
    sha256: [u8; 32],
    size: u64,
    blocks: usize,
}

impl<'r> Pump<'r> {
    fn new(reader: &'r mut (dyn AsyncRead + Send + Unpin)) -> Self {
        Self { reader, block: BytesMut::new(), spare: Vec::new(), sha: ShaPipe::new(), blocks: 0, ahead: None }
    }

    /// Reads to the end of the input (or until the parser stops taking).
    async fn run(mut self, tx: mpsc::Sender<Bytes>) -> Result<Pumped, NarError> {
        while let Some(piece) = self.read_piece().await? {
            if tx.send(piece).await.is_err() {
                break;
            }
        }
        drop(tx);
        let size = self.sha.total();
        Ok(Pumped { sha256: self.sha.finish().await?, size, blocks: self.blocks })
    }

    /// Reads the next piece of input and hashes it; `None` at the end.
    async fn read_piece(&mut self) -> Result<Option<Bytes>, NarError> {
        if self.block.capacity() - self.block.len() < MIN_PIECE {
            self.next_block().await;
        }
        loop {
            let room = (self.block.capacity() - self.block.len()).min(READ_SIZE);
            if self.reader.read_buf(&mut (&mut self.block).limit(room)).await? == 0 || self.block.len() >= MIN_PIECE {
                break;
            }
        }
        self.prepare();
        if self.block.is_empty() {
            return Ok(None);
        }
        let piece = self.block.split().freeze();
        self.sha.update(piece.clone()).await?;
        Ok(Some(piece))
    }

    /// Called after each read: once the block is half used and no used
    /// block is free (a store that keeps the contents, as slices of the
    /// blocks, in memory), a fresh one is allocated and its pages are faulted
    /// in on a blocking thread, sparing this task the page faults.
    fn prepare(&mut self) {
        if self.ahead.is_some()
            || self.block.capacity() - self.block.len() > BLOCK / 2
            || self.spare.iter_mut().any(|b| b.try_reclaim(BLOCK))
        {
            return;
        }
        self.ahead = Some(tokio::task::spawn_blocking(|| castore::blob::fresh_block(BLOCK)));
    }

    /// A fresh block: a used one whose pieces are all gone, the prepared
    /// one, or a new one.
    async fn next_block(&mut self) {
        let mut next = self.spare.iter_mut().position(|b| b.try_reclaim(BLOCK)).map(|i| self.spare.swap_remove(i));
        if next.is_none()
            && let Some(ahead) = self.ahead.take()
        {
            next = ahead.await.ok();
            self.blocks += next.is_some() as usize;
        }
        let next = next.unwrap_or_else(|| {
            self.blocks += 1;
            BytesMut::with_capacity(BLOCK)
        });
        let old = std::mem::replace(&mut self.block, next);
        // The first block is the empty placeholder, nothing to reuse.
        if self.sha.total() > 0 && self.spare.len() < SPARE_BLOCKS {
            self.spare.push(old);
        }
    }
}

/// The parser's view of the input: pieces from the [`Pump`], parsed in place.
struct Input {
    pieces: mpsc::Receiver<Bytes>,
    /// The piece being parsed, from `at` on.
    cur: Bytes,
    at: usize,
    /// Received, not parsed yet (follows `cur`).
    rest: Bytes,
    /// Bytes received so far.
    received: u64,
    expected_size: Option<u64>,
}

impl Input {
    fn new(pieces: mpsc::Receiver<Bytes>, expected_size: Option<u64>) -> Self {
        Self { pieces, cur: Bytes::new(), at: 0, rest: Bytes::new(), received: 0, expected_size }
    }

    /// Offset of the next unparsed byte.
    fn pos(&self) -> u64 {
        self.received - (self.avail() + self.rest.len()) as u64
    }

    fn avail(&self) -> usize {
        self.cur.len() - self.at
    }

    /// The next piece of input; `None` at its end.
    async fn read_piece(&mut self) -> Result<Option<Bytes>, NarError> {
        let piece = self.pieces.recv().await;
        if let Some(piece) = &piece {
            self.received += piece.len() as u64;
        }
        Ok(piece)
    }

    fn truncated(&self, needed: u64) -> NarError {
        NarError::at(self.received, Problem::Truncated { needed })
    }

    /// Makes `cur` hold at least `n` unparsed bytes (`n` is small: a token).
    async fn ensure(&mut self, n: usize) -> Result<(), NarError> {
        while self.avail() < n {
            if self.rest.is_empty() {
                match self.read_piece().await? {
                    Some(piece) => self.rest = piece,
                    None => return Err(self.truncated((n - self.avail()) as u64)),
                }
            }
            if self.avail() == 0 {
                self.cur = std::mem::take(&mut self.rest);
                self.at = 0;
            } else {
                // A token across two pieces: join its bytes (only those).
                let take = (n - self.avail()).min(self.rest.len());
                let mut joined = BytesMut::with_capacity(self.avail() + take);
                joined.extend_from_slice(&self.cur[self.at..]);
                joined.extend_from_slice(&self.rest[..take]);
                self.rest.advance(take);
                self.cur = joined.freeze();
                self.at = 0;
            }
        }
        Ok(())
    }

    /// Makes `cur` hold at least one unparsed byte (for contents).
    async fn more(&mut self, needed: u64) -> Result<(), NarError> {
        if self.avail() == 0 {
            self.cur = match std::mem::take(&mut self.rest) {
                rest if !rest.is_empty() => rest,
                _ => self.read_piece().await?.ok_or_else(|| self.truncated(needed))?,
            };
            self.at = 0;
        }
        Ok(())
    }

    /// A string's length field.
    async fn len(&mut self) -> Result<u64, NarError> {
        self.ensure(8).await?;
        let len = u64::from_le_bytes(self.cur[self.at..self.at + 8].try_into().expect("8 bytes"));
        self.at += 8;
        Ok(len)
    }

    /// A short string's bytes (`len` ≤ a few KiB) and their padding.
    async fn body(&mut self, len: u64) -> Result<&[u8], NarError> {
        let padded = (len + wire::padding(len)) as usize;
        self.ensure(padded).await?;
        let start = self.at;
        self.at += padded;
        let len = len as usize;
        if let Some(i) = self.cur[start + len..start + padded].iter().position(|&b| b != 0) {
            let offset = self.pos() - (padded - len - i) as u64;
            return Err(NarError::at(offset, Problem::NonZeroPadding));
        }
        Ok(&self.cur[start..start + len])
    }

    /// Checks the padding after contents of `len` bytes.
    async fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = wire::padding(len) as usize;
        if pad > 0 {
            self.ensure(pad).await?;
            let offset = self.pos();
            let start = self.at;
            self.at += pad;
            if let Some(i) = self.cur[start..start + pad].iter().position(|&b| b != 0) {
                return Err(NarError::at(offset + i as u64, Problem::NonZeroPadding));
            }
        }
        Ok(())
    }

    /// A keyword: a string of at most [`MAX_KEYWORD`] bytes.
    async fn keyword(&mut self, expected: &'static str) -> Result<&[u8], NarError> {
        let start = self.pos();
        let len = self.len().await?;
        if len > MAX_KEYWORD {
            return Err(NarError::at(
                start,
                Problem::Unexpected { expected, found: format!("a string of {len} bytes") },
            ));
        }
        self.body(len).await
    }

    async fn expect(&mut self, want: &'static [u8], expected: &'static str) -> Result<(), NarError> {
        let start = self.pos();
        let token = self.keyword(expected).await?;
        if token != want {
            return Err(NarError::at(start, Problem::Unexpected { expected, found: show(token) }));
        }
        Ok(())
    }

    /// Contents of a small file, copied into a buffer of their own.
    async fn small_contents(&mut self, size: u64) -> Result<Bytes, NarError> {
        let size = size as usize;
        let mut data = BytesMut::with_capacity(size);
        while data.len() < size {
            self.more((size - data.len()) as u64).await?;
            let n = (size - data.len()).min(self.avail());
            data.extend_from_slice(&self.cur[self.at..self.at + n]);
            self.at += n;
        }
        Ok(data.freeze())
    }

    /// Contents of a large file, as slices of the read pieces.
    async fn stream_contents(&mut self, size: u64, tx: mpsc::Sender<Bytes>) -> Result<(), NarError> {
        let mut left = size;
        while left > 0 {
            self.more(left).await?;
            let n = left.min(self.avail() as u64) as usize;
            let piece = self.cur.slice(self.at..self.at + n);
            self.at += n;
            left -= n as u64;
            tx.send(piece).await.map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// Checks that nothing follows the NAR; returns its size.
    async fn finish(mut self) -> Result<u64, NarError> {
        let end = self.pos();
        if self.avail() > 0 || !self.rest.is_empty() || self.read_piece().await?.is_some() {
            return Err(NarError::at(end, Problem::TrailingData));
        }
        if let Some(expected) = self.expected_size
            && expected != end
        {
            return Err(NarError::at(end, Problem::SizeMismatch { expected, actual: end }));
        }
        Ok(end)
    }
}

fn stopped() -> NarError {
    NarError::Storage(castore::Error::Storage("the blob store stopped taking file contents".into()))
}

struct Parser<'a> {
    input: Input,
    options: &'a IngestOptions,
    jobs: mpsc::Sender<Job>,
    files: usize,
}

impl Parser<'_> {
    async fn run(mut self) -> Result<Parsed, NarError> {
        let input = &mut self.input;
        input.ensure(8).await?;
        if input.len().await? != wire::MAGIC.len() as u64 || input.body(wire::MAGIC.len() as u64).await? != wire::MAGIC
        {
            return Err(NarError::at(0, Problem::BadMagic));
        }

        let mut stack: Vec<Frame> = Vec::new();
        let mut dirs = Vec::new();
        let root = 'nar: loop {
            // A node starts here.
            let input = &mut self.input;
            input.expect(wire::OPEN, "\"(\"").await?;
            input.expect(wire::TYPE, "\"type\"").await?;
            let type_at = input.pos();
            let kind = input.keyword("a node type").await?;
            let mut finished = if kind == wire::REGULAR {
                Some(self.file().await?)
            } else if kind == wire::SYMLINK {
                Some(self.symlink().await?)
            } else if kind == wire::DIRECTORY {
                if stack.len() >= self.options.max_depth {
                    return Err(NarError::at(type_at, Problem::TooDeep { max: self.options.max_depth }));
                }
                stack.push(Frame::default());
                None
            } else {
                return Err(NarError::at(type_at, Problem::UnknownType(show(kind))));
            };

            // Attach finished nodes to their directories, and read on in the
            // innermost open directory until a new node starts.
            loop {
                let input = &mut self.input;
                if let Some(node) = finished.take() {
                    let Some(frame) = stack.last_mut() else { break 'nar node };
                    let name = frame.pending_name.take().expect("an entry is open");
                    frame.entries.push((name, node));
                    input.expect(wire::CLOSE, "\")\" closing the entry").await?;
                }
                let at = input.pos();
                let token = input.keyword("\"entry\" or \")\"").await?;
                if token == wire::ENTRY {
                    input.expect(wire::OPEN, "\"(\"").await?;
                    input.expect(wire::NAME, "\"name\"").await?;
                    let frame = stack.last_mut().expect("in a directory");
                    let name = read_name(input, frame).await?;
                    frame.pending_name = Some(name);
                    input.expect(wire::NODE, "\"node\"").await?;
                    continue 'nar;
                } else if token == wire::CLOSE {
                    let frame = stack.pop().expect("in a directory");
                    dirs.push(frame.entries);
                    finished = Some(Pending::Dir(dirs.len() - 1));
                } else {
                    let found = show(token);
                    return Err(NarError::at(at, Problem::Unexpected { expected: "\"entry\" or \")\"", found }));
                }
            }
        };
        // No more files: the store side finishes once its queue is empty.
        drop(self.jobs);
        let size = self.input.finish().await?;
        Ok(Parsed { root, files: self.files, dirs, size })
    }

    /// The rest of a regular file's node, after its type.
    async fn file(&mut self) -> Result<Pending, NarError> {
        let input = &mut self.input;
        let at = input.pos();
        let token = input.keyword("\"executable\" or \"contents\"").await?;
        let executable = if token == wire::EXECUTABLE {
            input.expect(b"", "\"\" after \"executable\"").await?;
            input.expect(wire::CONTENTS, "\"contents\"").await?;
            true
        } else if token == wire::CONTENTS {
            false
        } else {
            let found = show(token);
            return Err(NarError::at(at, Problem::Unexpected { expected: "\"executable\" or \"contents\"", found }));
        };

        let at = input.pos();
        let size = input.len().await?;
        if size > self.options.max_file_size {
            return Err(NarError::at(at, Problem::FileTooLarge { size, max: self.options.max_file_size }));
        }
        if let Some(expected) = input.expected_size {
            let remaining = expected.saturating_sub(input.pos());
            if size.saturating_add(wire::padding(size)) > remaining {
                return Err(NarError::at(at, Problem::BeyondEnd { len: size, remaining }));
            }
        }
        let blob = self.files;
        self.files += 1;
        if size <= SMALL_FILE {
            let data = input.small_contents(size).await?;
            self.jobs.send(Job::Small { blob, data }).await.map_err(|_| stopped())?;
        } else {
            let (tx, rx) = mpsc::channel(CONTENT_QUEUE);
            self.jobs.send(Job::Large { blob, size, rx }).await.map_err(|_| stopped())?;
            input.stream_contents(size, tx).await?;
        }
        input.padding(size).await?;
        input.expect(wire::CLOSE, "\")\" closing the file").await?;
        Ok(Pending::File { blob, size, executable })
    }

    /// The rest of a symlink's node, after its type.
    async fn symlink(&mut self) -> Result<Pending, NarError> {
        let input = &mut self.input;
        input.expect(wire::TARGET, "\"target\"").await?;
        let at = input.pos();
        let len = input.len().await?;
        let bad = |reason| NarError::at(at, Problem::InvalidTarget { reason });
        if len == 0 {
            return Err(bad("empty"));
        }
        if len > MAX_TARGET {
            return Err(bad("longer than 4095 bytes"));
        }
        let target = input.body(len).await?;
        if target.contains(&0) {
            return Err(bad("contains NUL"));
        }
        let target = Bytes::copy_from_slice(target);
        input.expect(wire::CLOSE, "\")\" closing the symlink").await?;
        Ok(Pending::Symlink(target))
    }
}

/// An entry name: valid, and after the previous entry's.
async fn read_name(input: &mut Input, frame: &Frame) -> Result<Name, NarError> {
    let at = input.pos();
    let len = input.len().await?;
    if len > MAX_NAME {
        let name = format!("of {len} bytes");
        return Err(NarError::at(at, Problem::InvalidName { name, reason: "longer than 255 bytes" }));
    }
    let raw = input.body(len).await?;
    let name = Name::new(Bytes::copy_from_slice(raw)).map_err(|e| {
        let reason = match e {
            DirectoryError::InvalidName { reason, .. } => reason,
            _ => "invalid",
        };
        NarError::at(at, Problem::InvalidName { name: show(raw), reason })
    })?;
    if let Some((previous, _)) = frame.entries.last() {
        match name.cmp(previous) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => return Err(NarError::at(at, Problem::Duplicate { name: show(raw) })),
            std::cmp::Ordering::Less => {
                let previous = show(previous.as_bytes());
                return Err(NarError::at(at, Problem::Unsorted { name: show(raw), previous }));
            }
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NAR of one file of `len` pseudo-random bytes.
    fn file_nar(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for t in [wire::MAGIC, wire::OPEN, wire::TYPE, wire::REGULAR, wire::CONTENTS] {
            wire::put_str(&mut out, t);
        }
        let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        wire::put_str(&mut out, &data);
        wire::put_str(&mut out, wire::CLOSE);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_blocks_are_reused() {
        let nar = file_nar(96 << 20);
        let (jobs_tx, mut jobs_rx) = mpsc::channel(JOB_QUEUE);
        // A slow consumer of the contents, so that pieces stay referenced a while.
        let drain = tokio::spawn(async move {
            let mut n = 0;
            while let Some(job) = jobs_rx.recv().await {
                if let Job::Large { mut rx, .. } = job {
                    while let Some(piece) = rx.recv().await {
                        n += piece.len();
                        tokio::task::yield_now().await;
                    }
                }
            }
            n
        });
        let options = IngestOptions::default();
        let mut reader = &nar[..];
        let (pieces_tx, pieces_rx) = mpsc::channel(PIECE_QUEUE);
        let pump = Pump::new(&mut reader).run(pieces_tx);
        let parser = Parser { input: Input::new(pieces_rx, None), options: &options, jobs: jobs_tx, files: 0 };
        let (pumped, parsed) = futures::try_join!(pump, parser.run()).unwrap();
        assert_eq!(drain.await.unwrap(), 96 << 20);
        assert_eq!((parsed.size, pumped.size), (nar.len() as u64, nar.len() as u64));
        assert_eq!(parsed.files, 1);
        // 24 blocks' worth of data went through a handful of blocks.
        assert!(pumped.blocks <= SPARE_BLOCKS + 1, "{} blocks allocated", pumped.blocks);
    }
}
