//! Rendering a castore node as a NAR: [`NarReader`] (streaming, seekable)
//! and [`calculate`] (NarSize and NarHash without keeping the NAR).
//!
//! [`NarReader::open`] fetches the directory closure once and lays the whole
//! NAR out as a [`castore::render::Layout`]: every token goes into one
//! buffer of literal bytes, and each file's contents are a blob segment.
//! The NAR's length is known before a byte is read, and any offset is found
//! by binary search over the segments, so a range is served without
//! rendering what comes before it. Reading is
//! [`castore::render::LayoutReader`]'s: upcoming blobs are fetched
//! concurrently within a bounded read-ahead, [`NarReader::set_end`] keeps a
//! short range from reading ahead at all, and every blob must yield exactly
//! the size its directory entry records (a short or long blob is an error,
//! never a silently different NAR).
use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use castore::{
    B3Digest, BlobService, Directory, DirectoryService, Error, Node,
    render::{Layout, LayoutBuilder, LayoutReader, TooLarge, castore_error},
};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::{sha::ShaPipe, wire};

fn too_large(_: TooLarge) -> Error {
    Error::InvalidRequest("the NAR of this node would be larger than 2^64 bytes".into())
}

/// Lays a NAR out: tokens as literal bytes, file contents as blobs.
#[derive(Default)]
struct Builder(LayoutBuilder);

impl Builder {
    fn token(&mut self, s: &[u8]) -> Result<(), Error> {
        let before = self.0.len();
        self.0.write_with(|meta| wire::put_str(meta, s)).map_err(too_large)?;
        debug_assert_eq!(self.0.len() - before, wire::token_len(s.len() as u64));
        Ok(())
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
        // The length field, the contents, their padding.
        self.0.bytes(&size.to_le_bytes()).map_err(too_large)?;
        self.0.blob(digest, size).map_err(too_large)?;
        self.0.zeros(wire::padding(size) as usize).map_err(too_large)?;
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
}

/// The NAR of `node`, laid out from its directory closure.
async fn layout(node: &Node, directories: &dyn DirectoryService) -> Result<Layout, Error> {
    let dirs: HashMap<B3Digest, Directory> = match node {
        Node::Directory { digest, .. } => {
            directories.get_recursive(digest).map_ok(|d| (d.digest(), d)).try_collect().await?
        }
        _ => HashMap::new(),
    };
    layout_of(node, &dirs)
}

/// The NAR of `node` laid out from its directory closure `dirs` at hand
/// (empty for a file or symlink): tokens as literal bytes, each file's
/// contents a blob segment. For callers that have the closure already (the
/// fetcher, which hashes a tree it just wrote).
pub fn layout_of(node: &Node, dirs: &HashMap<B3Digest, Directory>) -> Result<Layout, Error> {
    let mut b = Builder::default();
    b.token(wire::MAGIC)?;
    b.node(node, dirs)?;
    Ok(b.0.finish())
}

/// A node rendered as a NAR: [`AsyncRead`] + [`AsyncSeek`], and a
/// [`Stream`] of [`Bytes`] (the same bytes without a copy into a buffer).
///
/// A [`LayoutReader`] over the NAR's layout ([`NarReader::into_inner`]).
/// Spawns tokio tasks to fetch blobs, so it must be used within a tokio
/// runtime. Errors are [`io::Error`]s; those of the castore carry the
/// [`castore::Error`] inside ([`io::Error::get_ref`]).
pub struct NarReader(LayoutReader);

impl std::fmt::Debug for NarReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarReader").field("len", &self.0.len()).field("pos", &self.0.position()).finish_non_exhaustive()
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
        let layout = Arc::new(layout(node, directories.as_ref()).await?);
        Ok(Self(LayoutReader::new(layout, blobs)))
    }

    /// The NAR's length (NarSize).
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Always false: a NAR holds at least its magic and one node.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Offset of the next byte a read returns.
    pub fn position(&self) -> u64 {
        self.0.position()
    }

    /// Makes reads end (EOF) at offset `end` (at most [`NarReader::len`]),
    /// and fetches nothing past it: for serving a byte range, so that a
    /// short range does not read ahead into the rest of the NAR.
    pub fn set_end(&mut self, end: u64) {
        self.0.set_end(end)
    }

    /// The NAR's layout, shareable with other readers of the same NAR.
    pub fn layout(&self) -> &Arc<Layout> {
        self.0.layout()
    }

    /// The generic reader underneath.
    pub fn into_inner(self) -> LayoutReader {
        self.0
    }
}

impl AsyncRead for NarReader {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncSeek for NarReader {
    #[inline]
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().0).start_seek(position)
    }

    #[inline]
    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().0).poll_complete(cx)
    }
}

impl Stream for NarReader {
    type Item = io::Result<Bytes>;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().0).poll_next(cx)
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
    use castore::{Name, render::Segment};
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

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
        let layout = layout(&node, dirs.as_ref()).await.unwrap();
        let mut pos = 0;
        let mut prev_meta = false;
        let mut blob_bytes = 0;
        for (start, seg) in layout.segments() {
            assert_eq!(start, pos);
            let (is_meta, len) = match seg {
                Segment::Bytes(b) => (true, b.len() as u64),
                Segment::Blob { size, .. } => {
                    blob_bytes += size;
                    (false, size)
                }
            };
            assert!(len > 0);
            // Token runs are merged: two never follow each other.
            assert!(!(is_meta && prev_meta));
            prev_meta = is_meta;
            pos += len;
        }
        assert_eq!(pos, layout.len());
        assert_eq!(layout.len() % 8, 0);
        assert_eq!(layout.literal_len() as u64 + blob_bytes, layout.len());
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

        let layout = reader.layout().clone();
        let size = layout.len();
        let starts: Vec<u64> = layout.segments().map(|(start, _)| start).collect();
        let mut buf = vec![0u8; 64];
        for &seg_start in starts.iter().step_by(5).chain(starts.last()) {
            for start in seg_start.saturating_sub(3)..(seg_start + 4).min(size) {
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
