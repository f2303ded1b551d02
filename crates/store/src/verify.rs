//! Checking a whole store's integrity: every PathInfo, the directory tree
//! and the blobs it names, their chunks (with direct engine access), the
//! references between paths, and with `deep` the bytes themselves.
//!
//! Writers that go through the services cannot leave a PathInfo whose
//! closure is incomplete (architecture invariant 2), but a store can still
//! be damaged from outside them: a disk or an object store losing objects,
//! an operator deleting records, a bug, or a crash the engine did not
//! survive as promised. This pass is how an operator (and the replica kill
//! tests) find out.
//!
//! Each directory, blob and chunk is checked once however many paths share
//! it: the walk keeps a compact graph of what it saw (ids, not digests, for
//! the edges), and only when something is wrong does it work out which
//! paths reach each bad object, so every problem names the store paths it
//! affects. Work runs as spawned tasks, at most [`Options::jobs`] at a time;
//! deep checks stream (a blob or a NAR is hashed as it is read, never held).
use std::{fmt, sync::Arc};

use castore::{
    B3Digest, BlobService, DirectoryService, Error, Result,
    blob::ChunkedBlobService,
    dirsvc::KvDirectoryService,
    grpc::{GrpcBlobService, GrpcDirectoryService},
    kv::KvStore,
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::watch;
use walk::Walk;

use crate::{
    NixHash, PathInfo, PathInfoService, StorePath, nix32,
    pathinfo::{GrpcPathInfoService, KvPathInfoService, PATH_INFO},
    proto,
};

/// Checks in flight by default.
pub const DEFAULT_JOBS: usize = 16;
/// Chunk presence checks in flight for one blob (a 1 GiB blob has ~4000).
const CHUNK_CHECKS_PER_BLOB: usize = 16;
/// NARs rendered at once in a deep check, at most (each reads ahead).
const MAX_NAR_JOBS: usize = 8;

/// The store to check: its three services and, when it was opened directly
/// rather than through a server, the engine underneath.
///
/// With the engine, directory records are read raw (so a record that does
/// not decode or hashes to another digest is reported as such), every chunk
/// of every blob is looked up in the chunk table, and records that no
/// PathInfo reaches can be counted. Through a server, the walk checks what
/// the protocol exposes: PathInfo List, recursive directory Get, blob Stat
/// (of each blob, and of each chunk its chunk list names).
#[derive(Clone)]
pub struct Store {
    pub paths: Arc<dyn PathInfoService>,
    pub blobs: Arc<dyn BlobService>,
    pub directories: Arc<dyn DirectoryService>,
    pub kv: Option<Arc<dyn KvStore>>,
}

impl Store {
    /// A server (`grpc+http://…` and the other gRPC forms) or an engine
    /// (`redb:PATH`, `memory:`, or any other URL `castore::kv::open_url`
    /// knows).
    pub fn open(addr: &str) -> Result<Self> {
        let url = castore::parse_service_address(addr)?;
        if url.scheme().starts_with("grpc+") {
            let transport = castore::grpc::connect(&url)?;
            return Ok(Self {
                paths: Arc::new(GrpcPathInfoService::new(transport.clone())),
                blobs: Arc::new(GrpcBlobService::new(transport.clone())),
                directories: Arc::new(GrpcDirectoryService::new(transport)),
                kv: None,
            });
        }
        let kv = castore::kv::open_url(&url)?.ok_or_else(|| {
            Error::InvalidRequest(format!("unknown store address {addr:?}; use {}", castore::SERVICE_ADDRESS_FORMS))
        })?;
        Ok(Self::engine(kv))
    }

    /// The services over an engine opened by the caller.
    pub fn engine(kv: Arc<dyn KvStore>) -> Self {
        let blobs: Arc<dyn BlobService> = Arc::new(ChunkedBlobService::new(kv.clone()));
        let directories: Arc<dyn DirectoryService> = Arc::new(KvDirectoryService::new(kv.clone()));
        let paths = Arc::new(KvPathInfoService::new(kv.clone(), blobs.clone(), directories.clone()));
        Self { paths, blobs, directories, kv: Some(kv) }
    }
}

/// What to check, and how much at once.
#[derive(Clone, Debug)]
pub struct Options {
    /// Re-read every blob (checking its BLAKE3 and length) and render every
    /// path's NAR (checking NarHash and NarSize).
    pub deep: bool,
    /// Checks in flight (directory and blob lookups, reads).
    pub jobs: usize,
    /// With engine access, count directory and blob-index records no
    /// PathInfo reaches (one scan of each of those two tables).
    pub unreferenced: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { deep: false, jobs: DEFAULT_JOBS, unreferenced: true }
    }
}

/// Where a check is, for a progress display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    #[default]
    Listing,
    /// Directories, blobs and chunks.
    Contents,
    /// Rendering NARs (deep).
    Nars,
    /// Counting unreferenced records.
    Unreferenced,
    Done,
}

/// Counts so far, sent while a check runs.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub stage: Stage,
    pub paths: u64,
    pub directories: u64,
    pub blobs: u64,
    pub chunks: u64,
    /// Bytes of the blobs checked (their recorded sizes).
    pub bytes: u64,
    /// Bytes re-read and hashed (deep).
    pub bytes_read: u64,
    pub nars_done: u64,
    pub nars_total: u64,
    pub problems: u64,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// PathInfo records checked.
    pub paths: u64,
    /// Distinct directories read and validated.
    pub directories: u64,
    /// Distinct blobs looked up.
    pub blobs: u64,
    /// Distinct chunks looked up (those named by chunk lists; a blob of one
    /// chunk is its own chunk and counts as a blob only).
    pub chunks: u64,
    /// Bytes of the blobs checked, by their recorded sizes.
    pub bytes: u64,
    /// Bytes re-read and hashed: blobs, then NARs (deep only).
    pub bytes_read: u64,
    /// NARs rendered and compared with their PathInfo (deep only).
    pub nars: u64,
    pub problems: Vec<Problem>,
    /// Records no PathInfo reaches, when counted.
    pub unreferenced: Option<Unreferenced>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Records that no PathInfo reaches: left behind by interrupted imports
/// and uploads (what a future garbage collection would remove), but also
/// blobs other layers keep (registry uploads, the cache's `.ls` files and
/// logs), so information rather than a problem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unreferenced {
    pub directories: u64,
    /// Chunk lists of multi-chunk blobs (one-chunk blobs live only in the
    /// chunk table, which is not scanned: that would read every byte).
    pub blobs: u64,
}

/// One thing wrong, with the store paths whose closure it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Sorted; empty only for a PathInfo record too corrupt to name its path.
    pub paths: Vec<StorePath>,
}

/// What is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A PathInfo record that does not decode or is invalid (engine access).
    CorruptPathInfo {
        key: String,
        reason: String,
    },
    /// A PathInfo record stored under another path's key.
    MisfiledPathInfo {
        key: String,
    },
    /// A reference without a PathInfo.
    MissingReference {
        reference: StorePath,
    },
    /// The size a PathInfo's root entry records does not fit its directory.
    RootSize {
        directory: B3Digest,
        recorded: u64,
        actual: u64,
    },
    MissingDirectory {
        digest: B3Digest,
    },
    /// A directory record that does not decode, is invalid, or is not the
    /// directory its key names.
    CorruptDirectory {
        digest: B3Digest,
        reason: String,
    },
    /// A directory records a size for a child that does not fit it.
    ChildSize {
        parent: B3Digest,
        name: String,
        child: B3Digest,
        recorded: u64,
        actual: u64,
    },
    /// Two entries record different sizes for one blob (this one differs
    /// from the first seen).
    EntrySize {
        parent: Option<B3Digest>,
        name: String,
        blob: B3Digest,
        recorded: u64,
        other: u64,
    },
    MissingBlob {
        digest: B3Digest,
    },
    /// The blob's chunks (or, deep, its bytes) add up to another length
    /// than its entry records.
    BlobSize {
        digest: B3Digest,
        recorded: u64,
        actual: u64,
    },
    /// Deep: the blob's bytes hash to another digest.
    BlobContents {
        digest: B3Digest,
        actual: B3Digest,
    },
    /// A chunk the blob's chunk list names is absent.
    MissingChunk {
        blob: B3Digest,
        chunk: B3Digest,
    },
    /// Deep: the path's NAR does not render to its NarHash/NarSize.
    NarMismatch {
        recorded_size: u64,
        recorded_hash: [u8; 32],
        size: u64,
        hash: [u8; 32],
    },
    /// Reading something failed (other than it being absent).
    Unreadable {
        what: String,
        error: String,
    },
}

impl ProblemKind {
    /// A stable name for machine-readable output.
    pub fn code(&self) -> &'static str {
        match self {
            ProblemKind::CorruptPathInfo { .. } => "corrupt-pathinfo",
            ProblemKind::MisfiledPathInfo { .. } => "misfiled-pathinfo",
            ProblemKind::MissingReference { .. } => "missing-reference",
            ProblemKind::RootSize { .. } => "root-size",
            ProblemKind::MissingDirectory { .. } => "missing-directory",
            ProblemKind::CorruptDirectory { .. } => "corrupt-directory",
            ProblemKind::ChildSize { .. } => "child-size",
            ProblemKind::EntrySize { .. } => "entry-size",
            ProblemKind::MissingBlob { .. } => "missing-blob",
            ProblemKind::BlobSize { .. } => "blob-size",
            ProblemKind::BlobContents { .. } => "blob-contents",
            ProblemKind::MissingChunk { .. } => "missing-chunk",
            ProblemKind::NarMismatch { .. } => "nar-mismatch",
            ProblemKind::Unreadable { .. } => "unreadable",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::CorruptPathInfo { key, reason } => write!(f, "corrupt PathInfo record {key}: {reason}"),
            ProblemKind::MisfiledPathInfo { key } => {
                write!(f, "PathInfo record stored under the key of another path ({key})")
            }
            ProblemKind::MissingReference { reference } => write!(f, "missing reference {reference} (no PathInfo)"),
            ProblemKind::RootSize { directory, recorded, actual } => {
                write!(f, "root directory {directory} has size {actual}, the PathInfo records {recorded}")
            }
            ProblemKind::MissingDirectory { digest } => write!(f, "missing directory {digest}"),
            ProblemKind::CorruptDirectory { digest, reason } => write!(f, "corrupt directory {digest}: {reason}"),
            ProblemKind::ChildSize { parent, name, child, recorded, actual } => {
                write!(f, "directory {parent} records size {recorded} for {name:?} ({child}), which has size {actual}")
            }
            ProblemKind::EntrySize { parent, name, blob, recorded, other } => {
                let parent = parent.map_or("the root".to_owned(), |p| format!("directory {p}"));
                write!(f, "entry {name:?} of {parent} records size {recorded} for blob {blob}, another entry {other}")
            }
            ProblemKind::MissingBlob { digest } => write!(f, "missing blob {digest}"),
            ProblemKind::BlobSize { digest, recorded, actual } => {
                write!(f, "blob {digest} holds {actual} bytes, its entry records {recorded}")
            }
            ProblemKind::BlobContents { digest, actual } => {
                write!(f, "blob {digest} is corrupt: its bytes hash to {actual}")
            }
            ProblemKind::MissingChunk { blob, chunk } => write!(f, "missing chunk {chunk} of blob {blob}"),
            ProblemKind::NarMismatch { recorded_size, recorded_hash, size, hash } => write!(
                f,
                "NAR renders to {} ({size} bytes), the PathInfo records {} ({recorded_size} bytes)",
                NixHash::sha256(*hash),
                NixHash::sha256(*recorded_hash)
            ),
            ProblemKind::Unreadable { what, error } => write!(f, "cannot read {what}: {error}"),
        }
    }
}

/// Checks `store`. An `Err` means the check could not run (the store does
/// not answer, or listing its PathInfo failed at once); everything found
/// wrong while it ran is in [`Report::problems`].
pub async fn verify(store: &Store, opts: &Options, progress: &watch::Sender<Progress>) -> Result<Report> {
    let (paths, path_problems) = list(store, progress).await?;
    let mut walk = Walk::new(store, opts, progress, paths, path_problems);
    walk.references().await;
    walk.contents().await;
    let mut problems = walk.attribute();
    if opts.deep {
        walk.nars(&mut problems).await;
    }
    let unreferenced = match (&store.kv, opts.unreferenced) {
        (Some(kv), true) => {
            walk.set_stage(Stage::Unreferenced);
            Some(walk.unreferenced(kv.as_ref()).await?)
        }
        _ => None,
    };
    problems.sort_by(|a, b| a.paths.cmp(&b.paths).then_with(|| a.kind.code().cmp(b.kind.code())));
    let report = walk.report(problems, unreferenced);
    progress.send_modify(|p| {
        p.stage = Stage::Done;
        p.problems = report.problems.len() as u64;
    });
    Ok(report)
}

/// A problem of one path (or of a record naming none).
type PathProblem = (Option<u32>, ProblemKind);

/// Every PathInfo of the store. With the engine the records are read raw,
/// so a corrupt one is a problem naming its key rather than the end of the
/// listing.
async fn list(store: &Store, progress: &watch::Sender<Progress>) -> Result<(Vec<PathInfo>, Vec<PathProblem>)> {
    let mut infos = Vec::new();
    let mut problems = Vec::new();
    let count = |infos: &Vec<PathInfo>| {
        if infos.len().is_multiple_of(256) {
            progress.send_modify(|p| p.paths = infos.len() as u64);
        }
    };
    match &store.kv {
        Some(kv) => {
            let mut records = kv.scan(PATH_INFO);
            while let Some((key, value)) = records.try_next().await? {
                let name = record_name(&key);
                let decoded = proto::PathInfo::decode(&value[..])
                    .map_err(|e| e.to_string())
                    .and_then(|msg| PathInfo::from_proto(msg).map_err(|e| e.to_string()));
                match decoded {
                    Ok(info) if key[..] == info.store_path.digest()[..] => infos.push(info),
                    Ok(info) => {
                        problems.push((Some(infos.len() as u32), ProblemKind::MisfiledPathInfo { key: name }));
                        infos.push(info);
                    }
                    Err(reason) => problems.push((None, ProblemKind::CorruptPathInfo { key: name, reason })),
                }
                count(&infos);
            }
        }
        None => {
            let mut listed = store.paths.list();
            while let Some(next) = listed.next().await {
                match next {
                    Ok(info) => infos.push(info),
                    // A server ends the listing at its first failure.
                    Err(e) if infos.is_empty() => return Err(e),
                    Err(e) => {
                        let what = format!("the PathInfo listing after {} records", infos.len());
                        problems.push((None, ProblemKind::Unreadable { what, error: e.to_string() }));
                        break;
                    }
                }
                count(&infos);
            }
        }
    }
    progress.send_modify(|p| p.paths = infos.len() as u64);
    Ok((infos, problems))
}

/// A PathInfo key as its store path hash when it has the length of one.
fn record_name(key: &[u8]) -> String {
    if key.len() == crate::store_path::DIGEST_LEN { nix32::encode(key) } else { data_encoding::HEXLOWER.encode(key) }
}

mod checks;
#[cfg(test)]
mod tests;
mod walk;
