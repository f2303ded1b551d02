//! `nix-store --export` streams.
//!
//! The format, as Nix writes it (every integer a u64 little-endian, every
//! string a NAR-style token: length, bytes, zero padding to 8):
//! ```text
//! stream = { 1 path }* 0
//! path   = NAR  0x4558494e ("NIXE")  str(store path)  count { str(reference) }*count
//!          str(deriver, or "")  0            (1 str(signature): a legacy form, ignored)
//! ```
//! The store path comes *after* its NAR, so a NAR is ingested before it is
//! known which path it is; it streams straight into the castore
//! ([`crate::nar::ingest`]) through [`NarFrame`], which finds the NAR's end
//! by following its tokens and never reads past it.
use std::{
    collections::{HashMap, HashSet},
    io,
    pin::Pin,
    task::{Context, Poll},
};

use futures::{StreamExt, stream::FuturesUnordered};
use tokio::{
    io::{AsyncBufRead, AsyncRead, AsyncReadExt, BufReader, ReadBuf},
    sync::{mpsc, watch},
};

use super::{Failure, ImportError, Progress, Summary, Target};
use crate::{StorePath, nar, pathinfo::PathInfo};

/// The marker after each NAR ("NIXE").
const EXPORT_MAGIC: u64 = 0x4558_494e;
/// Longest store path (or signature) string accepted.
const MAX_STRING: u64 = 64 << 10;
/// Most references accepted for one path.
const MAX_REFERENCES: u64 = 1 << 20;
/// Read buffer for the stream.
const BUFFER: usize = 1 << 20;
/// Tokens after which a data string follows (not a keyword or parenthesis).
const DATA_FOLLOWS: [&[u8]; 3] = [b"contents", b"name", b"target"];
/// Keyword tokens are short; longer tokens are never parentheses.
const KEYWORD_MAX: usize = 16;

/// What the stream says about a path after its NAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedPath {
    pub path: StorePath,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
}

/// Reads a `nix-store --export` stream: [`ExportReader::next_path`], then
/// the NAR through [`ExportReader::nar`] to its end, then
/// [`ExportReader::finish_path`], until `next_path` says the stream ended.
pub struct ExportReader<R> {
    inner: R,
    store_dir: String,
    /// Bytes consumed from the stream.
    offset: u64,
    frame: Frame,
    paths: u64,
}

/// Where [`NarFrame`] is within the NAR's tokens.
#[derive(Default)]
struct Frame {
    /// Parentheses open; the NAR ends when the outermost one closes.
    depth: u64,
    /// Whether the first parenthesis was seen.
    started: bool,
    finished: bool,
    /// The next token is data (a file's contents, a name, a target), so
    /// its bytes mean nothing to the framing.
    data_next: bool,
    /// The current token's length field, as far as it was seen.
    len_buf: [u8; 8],
    len_have: usize,
    /// Inside a token body: its length, with padding, and bytes left.
    body: Option<Body>,
    /// The start of a keyword token (not data, at most [`KEYWORD_MAX`] bytes).
    captured: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Body {
    len: u64,
    total: u64,
    left: u64,
    capture: bool,
}

impl Frame {
    /// Follows bytes of the NAR; returns how many belong to it (all, unless
    /// the NAR ends within them).
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() && !self.finished {
            let rest = &bytes[at..];
            match self.body {
                None => {
                    let n = (8 - self.len_have).min(rest.len());
                    self.len_buf[self.len_have..self.len_have + n].copy_from_slice(&rest[..n]);
                    self.len_have += n;
                    at += n;
                    if self.len_have == 8 {
                        self.len_have = 0;
                        let len = u64::from_le_bytes(self.len_buf);
                        let total = len.saturating_add(len.wrapping_neg() & 7);
                        let is_data = std::mem::take(&mut self.data_next);
                        let capture = !is_data && len <= KEYWORD_MAX as u64;
                        self.captured.clear();
                        self.body = Some(Body { len, total, left: total, capture });
                        if total == 0 {
                            self.end_token();
                        }
                    }
                }
                Some(mut body) => {
                    let n = body.left.min(rest.len() as u64) as usize;
                    let pos = body.total - body.left;
                    if body.capture && pos < body.len {
                        let k = ((body.len - pos) as usize).min(n);
                        self.captured.extend_from_slice(&rest[..k]);
                    }
                    at += n;
                    body.left -= n as u64;
                    self.body = Some(body);
                    if body.left == 0 {
                        self.end_token();
                    }
                }
            }
        }
        at
    }

    fn end_token(&mut self) {
        let capture = self.body.take().is_some_and(|b| b.capture);
        if !capture {
            return;
        }
        match &self.captured[..] {
            b"(" => {
                self.depth += 1;
                self.started = true;
            }
            b")" => {
                self.depth = self.depth.saturating_sub(1);
                self.finished = self.started && self.depth == 0;
            }
            t if DATA_FOLLOWS.contains(&t) => self.data_next = true,
            _ => {}
        }
    }
}

impl<R: AsyncBufRead + Unpin + Send> ExportReader<R> {
    /// A stream whose store paths live in `store_dir`.
    pub fn new(inner: R, store_dir: &str) -> Self {
        Self { inner, store_dir: store_dir.to_owned(), offset: 0, frame: Frame::default(), paths: 0 }
    }

    /// Bytes read from the stream so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    async fn u64(&mut self, what: &str) -> Result<u64, ImportError> {
        let mut b = [0; 8];
        self.inner.read_exact(&mut b).await.map_err(|e| self.io_error(e, what))?;
        self.offset += 8;
        Ok(u64::from_le_bytes(b))
    }

    async fn string(&mut self, what: &str) -> Result<String, ImportError> {
        let len = self.u64(what).await?;
        if len > MAX_STRING {
            return Err(self.error(format!("{what}: a string of {len} bytes (at most {MAX_STRING} expected)")));
        }
        let padded = (len + (len.wrapping_neg() & 7)) as usize;
        let mut b = vec![0; padded];
        self.inner.read_exact(&mut b).await.map_err(|e| self.io_error(e, what))?;
        self.offset += padded as u64;
        if b[len as usize..].iter().any(|&x| x != 0) {
            return Err(self.error(format!("{what}: padding is not zero")));
        }
        b.truncate(len as usize);
        String::from_utf8(b).map_err(|_| self.error(format!("{what}: not UTF-8")))
    }

    fn error(&self, message: String) -> ImportError {
        ImportError::Export(format!("at byte {}: {message}", self.offset))
    }

    fn io_error(&self, e: io::Error, what: &str) -> ImportError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.error(format!("the stream ends early (truncated) while reading {what}"))
        } else {
            ImportError::Io(e)
        }
    }

    /// Whether another path follows (`false`: the stream ended properly).
    pub async fn next_path(&mut self) -> Result<bool, ImportError> {
        match self.u64("the marker before a path (1) or the end marker (0)").await? {
            1 => {
                self.frame = Frame::default();
                self.paths += 1;
                Ok(true)
            }
            0 => {
                let rest = tokio::io::AsyncBufReadExt::fill_buf(&mut self.inner).await?;
                if !rest.is_empty() {
                    return Err(self.error("data after the end marker".into()));
                }
                Ok(false)
            }
            n => Err(self.error(format!(
                "expected 1 (a path follows) or 0 (end of stream), found {n}: not a nix-store --export stream"
            ))),
        }
    }

    /// The current path's NAR, to be read to its end.
    pub fn nar(&mut self) -> NarFrame<'_, R> {
        NarFrame { reader: self }
    }

    /// Reads what follows the NAR: the path, its references and deriver.
    pub async fn finish_path(&mut self) -> Result<ExportedPath, ImportError> {
        if !self.frame.finished {
            return Err(self.error("the NAR was not read to its end".into()));
        }
        let n = self.paths;
        let magic = self.u64("the export marker after a NAR").await?;
        if magic != EXPORT_MAGIC {
            return Err(self.error(format!(
                "path #{n}: expected the marker 0x4558494e (\"NIXE\") after the NAR, found {magic:#x}"
            )));
        }
        let path = self.store_path(&format!("path #{n}: store path")).await?;
        let count = self.u64("reference count").await?;
        if count > MAX_REFERENCES {
            return Err(self.error(format!("{path}: {count} references")));
        }
        let mut references = Vec::with_capacity(count as usize);
        for i in 0..count {
            references.push(self.store_path(&format!("{path}: reference {i}")).await?);
        }
        let deriver = self.string(&format!("{path}: deriver")).await?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            Some(
                StorePath::from_absolute(&deriver, &self.store_dir)
                    .map_err(|e| self.error(format!("{path}: deriver: {e}")))?,
            )
        };
        match self.u64("the signature flag").await? {
            0 => {}
            1 => {
                self.string("legacy signature").await?;
            }
            n => return Err(self.error(format!("{path}: expected 0 or 1 after the deriver, found {n}"))),
        }
        Ok(ExportedPath { path, references, deriver })
    }

    async fn store_path(&mut self, what: &str) -> Result<StorePath, ImportError> {
        let s = self.string(what).await?;
        StorePath::from_absolute(&s, &self.store_dir).map_err(|e| self.error(format!("{what}: {e}")))
    }
}

/// One NAR of an export stream as an [`AsyncRead`] that ends where the NAR
/// ends (found by following its tokens; the NAR ingest validates it).
pub struct NarFrame<'a, R> {
    reader: &'a mut ExportReader<R>,
}

impl<R: AsyncBufRead + Unpin + Send> AsyncRead for NarFrame<'_, R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self.get_mut().reader;
        let before = buf.filled().len();
        while buf.remaining() > 0 && !this.frame.finished {
            let avail = match Pin::new(&mut this.inner).poll_fill_buf(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending if buf.filled().len() > before => break,
                Poll::Pending => return Poll::Pending,
            };
            if avail.is_empty() {
                break; // the stream ended within the NAR: ingest reports it truncated
            }
            let take = avail.len().min(buf.remaining());
            let n = this.frame.feed(&avail[..take]);
            buf.put_slice(&avail[..n]);
            Pin::new(&mut this.inner).consume(n);
            this.offset += n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

/// Imports a `nix-store --export` stream (as `nix-store --export $(nix-store
/// -qR PATH)` writes it): each NAR streams into the castore, and each
/// PathInfo is put as soon as its references are stored: at once for a
/// stream in dependency order, otherwise held until they arrive. References
/// that never arrive and are not stored fail their paths.
///
/// A malformed stream stops the import (paths complete before it are
/// stored) and is the error; failures of single paths are in the summary.
pub async fn import_export(
    target: &Target,
    reader: impl AsyncRead + Send + Unpin,
    store_dir: &str,
    progress: &watch::Sender<Progress>,
) -> Result<Summary, ImportError> {
    let mut export = ExportReader::new(BufReader::with_capacity(BUFFER, reader), store_dir);
    let (tx, rx) = mpsc::channel(64);
    let putter = tokio::spawn(put_in_order(target.clone(), rx, progress.clone()));
    let read = async {
        while export.next_path().await? {
            let n = export.paths;
            let start = export.offset();
            let ingested = nar::ingest(&mut export.nar(), &*target.blobs, &*target.directories)
                .await
                .map_err(|e| ImportError::Export(format!("the NAR of path #{n} (at byte {start}): {e}")))?;
            let exported = export.finish_path().await?;
            progress.send_modify(|p| {
                p.bytes_done = export.offset();
                p.paths_total += 1;
            });
            let info = PathInfo {
                store_path: exported.path,
                node: ingested.node,
                references: exported.references,
                nar_size: ingested.nar_size,
                nar_sha256: ingested.nar_sha256,
                signatures: Vec::new(),
                deriver: exported.deriver,
                ca: None,
            };
            if tx.send(info).await.is_err() {
                break; // the putter stopped; its error is reported below
            }
        }
        Ok::<_, ImportError>(())
    }
    .await;
    drop(tx);
    let summary = putter.await.map_err(|e| ImportError::Export(format!("PathInfo task failed: {e}")))?;
    read?;
    summary
}

/// PathInfo puts of a stream in flight at once.
const PARALLEL_PUTS: usize = 32;

/// What became of one put.
enum Put {
    Imported(PathInfo),
    Skipped(PathInfo),
    Failed(StorePath, String),
}

/// Puts PathInfos as they come, several at once, each as soon as its
/// references are stored (held until then).
async fn put_in_order(
    target: Target,
    mut rx: mpsc::Receiver<PathInfo>,
    progress: watch::Sender<Progress>,
) -> Result<Summary, ImportError> {
    let mut summary = Summary::default();
    let mut stored: HashSet<StorePath> = HashSet::new();
    let mut failed: HashSet<StorePath> = HashSet::new();
    let mut in_flight: HashSet<StorePath> = HashSet::new();
    // A held path and the references it still waits for.
    let mut held: HashMap<StorePath, (PathInfo, HashSet<StorePath>)> = HashMap::new();
    let mut waiters: HashMap<StorePath, Vec<StorePath>> = HashMap::new();
    let mut ready: Vec<PathInfo> = Vec::new();
    let mut puts = FuturesUnordered::new();
    let mut open = true;
    loop {
        while puts.len() < PARALLEL_PUTS {
            let Some(info) = ready.pop() else { break };
            in_flight.insert(info.store_path.clone());
            puts.push(put_one(target.clone(), info));
        }
        if !open && puts.is_empty() {
            break;
        }
        tokio::select! {
            received = rx.recv(), if open && puts.len() < PARALLEL_PUTS => {
                let Some(info) = received else {
                    open = false;
                    continue;
                };
                let path = info.store_path.clone();
                let seen = |p: &StorePath| {
                    stored.contains(p) || failed.contains(p) || in_flight.contains(p) || held.contains_key(p)
                };
                if seen(&path) || ready.iter().any(|r| r.store_path == path) {
                    continue; // the same path twice in one stream
                }
                let mut missing = HashSet::new();
                for r in info.references.iter().filter(|r| **r != path) {
                    if stored.contains(r) || missing.contains(r) {
                        continue;
                    }
                    if failed.contains(r) || in_flight.contains(r) || held.contains_key(r)
                        || ready.iter().any(|x| x.store_path == *r)
                    {
                        missing.insert(r.clone());
                    } else if target.paths.get(r.digest()).await?.is_some() {
                        stored.insert(r.clone()); // stored before this import
                    } else {
                        missing.insert(r.clone()); // may come later in the stream
                    }
                }
                if missing.is_empty() {
                    ready.push(info);
                } else {
                    for r in &missing {
                        waiters.entry(r.clone()).or_default().push(path.clone());
                    }
                    held.insert(path, (info, missing));
                }
            }
            Some(done) = puts.next(), if !puts.is_empty() => {
                progress.send_modify(|p| p.paths_done += 1);
                let path = match done {
                    Put::Imported(info) => {
                        summary.imported += 1;
                        summary.bytes += info.nar_size;
                        info.store_path
                    }
                    Put::Skipped(info) => {
                        summary.skipped += 1;
                        info.store_path
                    }
                    Put::Failed(path, error) => {
                        in_flight.remove(&path);
                        failed.insert(path.clone());
                        summary.failures.push(Failure { path, error });
                        continue;
                    }
                };
                in_flight.remove(&path);
                stored.insert(path.clone());
                for w in waiters.remove(&path).unwrap_or_default() {
                    if let Some((_, missing)) = held.get_mut(&w) {
                        missing.remove(&path);
                        if missing.is_empty() {
                            ready.push(held.remove(&w).expect("held").0);
                        }
                    }
                }
            }
        }
    }
    let mut left: Vec<_> = held.into_values().collect();
    left.sort_by(|a, b| a.0.store_path.cmp(&b.0.store_path));
    for (info, missing) in left {
        let list = |want_failed: bool| {
            let mut v: Vec<String> =
                missing.iter().filter(|r| failed.contains(*r) == want_failed).map(ToString::to_string).collect();
            v.sort();
            v.join(", ")
        };
        let (never, broken) = (list(false), list(true));
        let error = match (never.is_empty(), broken.is_empty()) {
            (false, true) => format!("references never arrived in the stream and are not stored: {never}"),
            (true, false) => format!("references could not be imported: {broken}"),
            _ => format!(
                "references never arrived in the stream and are not stored: {never}; \
                 references could not be imported: {broken}"
            ),
        };
        summary.failures.push(Failure { path: info.store_path, error });
        progress.send_modify(|p| p.paths_done += 1);
    }
    summary.failures.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(summary)
}

/// Puts one PathInfo unless its path is stored already (with the same NarHash).
async fn put_one(target: Target, info: PathInfo) -> Put {
    let path = info.store_path.clone();
    let sha = info.nar_sha256;
    let stored = match target.paths.get(path.digest()).await {
        Ok(Some(stored)) => Put::Skipped(stored),
        Ok(None) => match target.paths.put(info).await {
            Ok(stored) => Put::Imported(stored),
            Err(e) => return Put::Failed(path, format!("putting the PathInfo: {e}")),
        },
        Err(e) => return Put::Failed(path, format!("asking the store for the path: {e}")),
    };
    let (Put::Imported(info) | Put::Skipped(info)) = &stored else { unreachable!() };
    match super::check_same_nar(info, &sha) {
        Ok(()) => stored,
        Err(message) => Put::Failed(path, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + (s.len().wrapping_neg() & 7), 0);
    }

    fn tokens(out: &mut Vec<u8>, ts: &[&[u8]]) {
        for t in ts {
            token(out, t);
        }
    }

    /// A NAR whose names, contents and targets look like framing tokens.
    fn tricky_nar() -> Vec<u8> {
        let mut n = Vec::new();
        tokens(&mut n, &[b"nix-archive-1", b"(", b"type", b"directory"]);
        for (name, body) in [(&b"("[..], &b")"[..]), (b")", b"("), (b"contents", b"name"), (b"name", b"target")] {
            tokens(
                &mut n,
                &[b"entry", b"(", b"name", name, b"node", b"(", b"type", b"regular", b"contents", body, b")", b")"],
            );
        }
        tokens(
            &mut n,
            &[b"entry", b"(", b"name", b"t", b"node", b"(", b"type", b"symlink", b"target", b")", b")", b")"],
        );
        tokens(
            &mut n,
            &[b"entry", b"(", b"name", b"x", b"node", b"(", b"type", b"regular", b"executable", b"", b"contents"],
        );
        token(&mut n, &vec![b')'; 3 << 20]);
        tokens(&mut n, &[b")", b")", b")"]);
        n
    }

    #[test]
    fn frame_finds_the_end_of_a_nar() {
        let nar = tricky_nar();
        let mut stream = nar.clone();
        stream.extend_from_slice(&EXPORT_MAGIC.to_le_bytes());
        for piece in [1, 3, 8, 4096, usize::MAX] {
            let mut frame = Frame::default();
            let mut taken = 0;
            for chunk in stream.chunks(piece.min(stream.len())) {
                taken += frame.feed(chunk);
                if frame.finished {
                    break;
                }
            }
            assert!(frame.finished, "piece size {piece}");
            assert_eq!(taken, nar.len(), "piece size {piece}");
        }
        // A truncated NAR never finishes.
        let mut frame = Frame::default();
        assert_eq!(frame.feed(&nar[..nar.len() - 8]), nar.len() - 8);
        assert!(!frame.finished);
    }

    fn export_of(nar: &[u8], path: &str, refs: &[&str], deriver: &str) -> Vec<u8> {
        let mut s = 1u64.to_le_bytes().to_vec();
        s.extend_from_slice(nar);
        s.extend_from_slice(&EXPORT_MAGIC.to_le_bytes());
        token(&mut s, path.as_bytes());
        s.extend_from_slice(&(refs.len() as u64).to_le_bytes());
        for r in refs {
            token(&mut s, r.as_bytes());
        }
        token(&mut s, deriver.as_bytes());
        s.extend_from_slice(&0u64.to_le_bytes());
        s
    }

    const A: &str = "/nix/store/kd8bsvyglhcjw0yxz3g8p9fzgzfn5fdb-a";
    const B: &str = "/nix/store/f7nsd1ldn7crysgja7lsf1v3va0c3v06-b";
    const DRV: &str = "/nix/store/0i06ry3zn2svzl3w9g13qbprb3m5067c-b.drv";

    #[tokio::test]
    async fn reads_paths_and_trailers() {
        let nar = tricky_nar();
        let mut stream = export_of(&nar, A, &[], "");
        stream.extend(export_of(&nar, B, &[A, B], DRV));
        stream.extend_from_slice(&0u64.to_le_bytes());
        let mut r = ExportReader::new(BufReader::with_capacity(64, &stream[..]), "/nix/store");
        let mut seen = Vec::new();
        while r.next_path().await.unwrap() {
            let mut got = Vec::new();
            r.nar().read_to_end(&mut got).await.unwrap();
            assert_eq!(got, nar);
            seen.push(r.finish_path().await.unwrap());
        }
        assert_eq!(r.offset(), stream.len() as u64);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].path.to_absolute("/nix/store"), A);
        assert!(seen[0].references.is_empty() && seen[0].deriver.is_none());
        assert_eq!(seen[1].references.iter().map(|r| r.to_absolute("/nix/store")).collect::<Vec<_>>(), [A, B]);
        assert_eq!(seen[1].deriver.as_ref().unwrap().to_absolute("/nix/store"), DRV);
    }

    #[tokio::test]
    async fn refuses_malformed_streams() {
        let nar = tricky_nar();
        let good = export_of(&nar, A, &[], "");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (2u64.to_le_bytes().to_vec(), "not a nix-store --export stream"),
            ([&good[..], &[0; 8], &[1]].concat(), "data after the end marker"),
            (good.clone(), "truncated"),
            ([&good[..good.len() - 60]].concat(), "truncated"),
            (
                {
                    let mut s = good.clone();
                    let at = 8 + nar.len();
                    s[at] ^= 1;
                    [&s[..], &[0; 8]].concat()
                },
                "NIXE",
            ),
            (
                [&export_of(&nar, "/gnu/store/kd8bsvyglhcjw0yxz3g8p9fzgzfn5fdb-a", &[], "")[..], &[0; 8]].concat(),
                "store",
            ),
        ];
        for (stream, needle) in cases {
            let mut r = ExportReader::new(BufReader::new(&stream[..]), "/nix/store");
            let result = async {
                while r.next_path().await? {
                    let mut sink = Vec::new();
                    r.nar().read_to_end(&mut sink).await?;
                    r.finish_path().await?;
                }
                Ok::<_, ImportError>(())
            }
            .await;
            let err = result.expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
        }
    }
}
