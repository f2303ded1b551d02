//! [`Shared`]: what the spawned tasks share, and the checks they run: one
//! directory, one recursive Get, one blob with its chunks.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use castore::{
    B3Digest, BlobService, Directory, DirectoryService, Error, Result,
    kv::{KvStore, Table},
};
use futures::StreamExt;

use super::{CHUNK_CHECKS_PER_BLOB, ProblemKind, Store};

/// What the tasks share.
pub(super) struct Shared {
    pub(super) blobs: Arc<dyn BlobService>,
    pub(super) directories: Arc<dyn DirectoryService>,
    pub(super) kv: Option<Arc<dyn KvStore>>,
    pub(super) deep: bool,
    /// Chunks looked up so far, and whether they were there: chunks are
    /// shared between blobs, and each is looked up once (give or take a
    /// race between two blobs, which only costs a lookup).
    pub(super) chunks: Mutex<HashMap<B3Digest, bool>>,
    pub(super) bytes_read: AtomicU64,
}

impl Shared {
    pub(super) fn new(store: &Store, deep: bool) -> Self {
        Self {
            blobs: store.blobs.clone(),
            directories: store.directories.clone(),
            kv: store.kv.clone(),
            deep,
            chunks: Mutex::new(HashMap::new()),
            bytes_read: AtomicU64::new(0),
        }
    }

    /// One directory: the raw record with the engine (so a corrupt or
    /// misfiled record is told apart from an absent one), else a Get.
    pub(super) async fn load_dir(&self, digest: B3Digest) -> std::result::Result<Directory, ProblemKind> {
        let unreadable =
            |e: Error| ProblemKind::Unreadable { what: format!("directory {digest}"), error: e.to_string() };
        let Some(kv) = &self.kv else {
            return self
                .directories
                .get(&digest)
                .await
                .map_err(unreadable)?
                .ok_or(ProblemKind::MissingDirectory { digest });
        };
        let record = kv.get(Table::DIRECTORIES, digest.as_bytes()).await.map_err(unreadable)?;
        let record = record.ok_or(ProblemKind::MissingDirectory { digest })?;
        let dir =
            Directory::decode(&record).map_err(|e| ProblemKind::CorruptDirectory { digest, reason: e.to_string() })?;
        let actual = dir.digest();
        if actual != digest {
            return Err(ProblemKind::CorruptDirectory {
                digest,
                reason: format!("the record holds directory {actual}"),
            });
        }
        Ok(dir)
    }

    /// A recursive Get of `root`: whatever arrived before an error. The
    /// client checks digests and recorded sizes as they arrive; what an
    /// error cut off is read one by one afterwards.
    pub(super) async fn tree(&self, root: B3Digest) -> Vec<Directory> {
        let mut out = Vec::new();
        let mut stream = self.directories.get_recursive(&root);
        while let Some(next) = stream.next().await {
            match next {
                Ok(dir) => out.push(dir),
                Err(e) => {
                    tracing::debug!(%root, error = %e, "recursive Get failed; reading the rest one by one");
                    break;
                }
            }
        }
        out
    }

    /// Looks up a blob and the chunks of its chunk list; deep, reads it
    /// back and hashes it.
    pub(super) async fn check_blob(&self, digest: B3Digest, size: u64) -> Vec<ProblemKind> {
        let unreadable = |e: Error| ProblemKind::Unreadable { what: format!("blob {digest}"), error: e.to_string() };
        let chunks = match self.blobs.stat(&digest).await {
            Ok(Some(chunks)) => chunks,
            Ok(None) => return vec![ProblemKind::MissingBlob { digest }],
            Err(e) => return vec![unreadable(e)],
        };
        let mut problems = Vec::new();
        if !chunks.is_empty() {
            let total: u64 = chunks.iter().map(|c| c.size).sum();
            if total != size {
                problems.push(ProblemKind::BlobSize { digest, recorded: size, actual: total });
            }
            let missing: Vec<ProblemKind> = futures::stream::iter(chunks)
                .map(|c| async move { (c.digest, self.chunk_present(&c.digest).await) })
                .buffered(CHUNK_CHECKS_PER_BLOB)
                .filter_map(|(chunk, present)| async move {
                    match present {
                        Ok(true) => None,
                        Ok(false) => Some(ProblemKind::MissingChunk { blob: digest, chunk }),
                        Err(e) => {
                            Some(ProblemKind::Unreadable { what: format!("chunk {chunk}"), error: e.to_string() })
                        }
                    }
                })
                .collect()
                .await;
            problems.extend(missing);
        }
        if self.deep && problems.is_empty() {
            problems.extend(self.read_back(digest, size).await);
        }
        problems
    }

    /// Whether a chunk is stored: in the chunk table with the engine, else
    /// by a Stat of its digest (a chunk is readable as a blob of its own).
    async fn chunk_present(&self, chunk: &B3Digest) -> Result<bool> {
        if let Some(&known) = self.chunks.lock().expect("poisoned").get(chunk) {
            return Ok(known);
        }
        let present = match &self.kv {
            Some(kv) => kv.contains(Table::CHUNKS, chunk.as_bytes()).await?,
            None => self.blobs.has(chunk).await?,
        };
        self.chunks.lock().expect("poisoned").insert(*chunk, present);
        Ok(present)
    }

    /// Streams the blob through BLAKE3 and counts its bytes.
    async fn read_back(&self, digest: B3Digest, size: u64) -> Option<ProblemKind> {
        let unreadable = |e: Error| ProblemKind::Unreadable { what: format!("blob {digest}"), error: e.to_string() };
        let mut stream = match self.blobs.read_from(&digest, 0).await {
            Ok(Some(s)) => s,
            Ok(None) => return Some(ProblemKind::MissingBlob { digest }),
            Err(e) => return Some(unreadable(e)),
        };
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(piece) => {
                    hasher.update(&piece);
                    len += piece.len() as u64;
                    self.bytes_read.fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
                Err(e) => return Some(unreadable(e)),
            }
        }
        let actual = B3Digest::from(hasher.finalize());
        if actual != digest {
            return Some(ProblemKind::BlobContents { digest, actual });
        }
        (len != size).then_some(ProblemKind::BlobSize { digest, recorded: size, actual: len })
    }
}
