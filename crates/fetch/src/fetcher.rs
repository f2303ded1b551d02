//! [`Fetcher`]: closures of store paths from a store's three services to
//! a directory on disk, each path verified before it appears.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use castore::{
    B3Digest, BlobService, Directory, DirectoryService, Node,
    fs::{Commit, ExportOptions, Layout, Source, Staged},
};
use futures::{StreamExt, TryStreamExt};
use store::{NixHash, PathInfo, PathInfoService, StorePath, VerifyingKey, import::Target};
use tokio::sync::watch;

use crate::{
    FetchError, HostNix,
    local::{LocalIndex, PathCandidates},
    nar::{nar_hash_of_staged, nar_hash_of_tree},
    trust,
};

/// Store paths written at once by default. Each path's files are
/// themselves written several at a time.
pub const DEFAULT_JOBS: usize = 8;

/// Small files' contents kept in memory per path being written, so that its
/// NAR hash need not open them again.
const RETAIN_BYTES: u64 = 32 << 20;

/// Most paths whose directory closures are asked for in one call.
const DIRECTORY_WINDOW: usize = 64;

/// Earlier builds of one package name offered as sources of identical files.
const EARLIER_PER_NAME: usize = 2;

/// Where a fetch is. A path is done when it was placed or found present.
/// Bytes count NAR bytes of the paths being fetched: file contents as they
/// are written, the rest of a path's NAR when it is placed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub paths_done: u64,
    pub paths_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// File contents read from the store so far.
    pub downloaded: u64,
    /// File contents copied from identical files on disk so far.
    pub copied: u64,
}

/// What a fetch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Paths written by this fetch.
    pub fetched: u64,
    /// Paths that were present already (or placed meanwhile by another
    /// fetch of the same path).
    pub skipped: u64,
    /// Paths found on disk in the host store but unknown to Nix, whose
    /// contents were checked and which are to be registered.
    pub adopted: u64,
    /// NAR bytes of the fetched paths.
    pub nar_bytes: u64,
    /// File contents read from the store.
    pub downloaded: u64,
    /// File contents copied from identical files on disk instead.
    pub copied: u64,
    pub elapsed: Duration,
}

/// The outcome of [`Fetcher::fetch`].
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// The whole closure of the roots, references before the paths naming them.
    pub closure: Vec<PathInfo>,
    /// The paths this fetch placed in the target (fetched or adopted),
    /// references first: what [`crate::register_with_nix`] is given.
    pub placed: Vec<PathInfo>,
    pub summary: Summary,
}

/// Where one fetch reports: its progress channel, and its own byte
/// counts (the channel may be shared by fetches running at once).
struct Report {
    progress: watch::Sender<Progress>,
    bytes: Arc<Bytes>,
}

#[derive(Default)]
struct Bytes {
    fetched: AtomicU64,
    copied: AtomicU64,
}

/// What happened to one path of the closure.
enum Outcome {
    Fetched {
        nar_bytes: u64,
    },
    /// Someone else placed it first; ours was identical and is gone.
    Raced,
    Adopted,
}

/// Fetches closures of store paths over a store's blob, directory and
/// PathInfo services into a directory, as `<dir>/<hash>-<name>`.
///
/// Every path is written beside its target, verified (each blob's BLAKE3
/// as it arrives, each directory's digest; with trusted keys, into the host
/// Nix store or with [`Fetcher::check_nar_hash`], also the NAR
/// serialisation of the finished tree against the PathInfo's NarHash and
/// NarSize; with trusted keys, a signature over those), laid out as Nix
/// lays out its store (read-only, mtime 1), and renamed into place without
/// replacing anything. A failure anywhere removes what was being written;
/// paths already placed stay (they are complete). Identical file contents
/// already on disk (present paths of the closure, files placed earlier in
/// the fetch, the same places in earlier builds of the same packages) are
/// linked or copied, and checked, rather than fetched.
pub struct Fetcher {
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    paths: Arc<dyn PathInfoService>,
    store_dir: String,
    trusted_keys: Vec<VerifyingKey>,
    jobs: usize,
    host: Option<HostNix>,
    check_nar_hash: bool,
    progress: watch::Sender<Progress>,
}

impl Fetcher {
    /// All three services at one address, as `storefront import --store`
    /// takes it: `grpc+http://host:port`, `grpc+https://…`,
    /// `grpc+unix:/path.sock`, `?package=tvix` for tvix servers; the token
    /// is the address's password or `$STOREFRONT_TOKEN`. One HTTP/2
    /// connection carries all three. (Local addresses, `redb:` and
    /// `memory:`, open a store in this process.)
    pub fn connect(store_url: &str) -> Result<Fetcher, FetchError> {
        let target = Target::open(store_url)
            .map_err(|error| FetchError::Connect { url: castore::grpc::redacted(store_url), error })?;
        Ok(Self::new(target.blobs, target.directories, target.paths))
    }

    pub fn new(
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        paths: Arc<dyn PathInfoService>,
    ) -> Fetcher {
        Fetcher {
            blobs,
            directories,
            paths,
            store_dir: store::DEFAULT_STORE_DIR.to_owned(),
            trusted_keys: Vec::new(),
            jobs: DEFAULT_JOBS,
            host: None,
            check_nar_hash: false,
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// The store directory the paths belong to (default `/nix/store`):
    /// signatures are over paths in it, and errors name paths in it. The
    /// directory written to is [`Fetcher::fetch`]'s.
    pub fn store_dir(mut self, store_dir: impl Into<String>) -> Self {
        self.store_dir = store_dir.into();
        self
    }

    /// Accept only paths signed by one of `keys` (or whose content address
    /// proves their store path). A signature covers the NarHash, not the
    /// castore tree, so with keys every path's NAR hash is checked too.
    /// Without keys the PathInfo is trusted as the server sends it, and the
    /// tree is checked against its root digest (every blob, every
    /// directory), as `nix copy --no-check-sigs` checks a NAR against its
    /// narinfo.
    pub fn trusted_keys(mut self, keys: Vec<VerifyingKey>) -> Self {
        self.trusted_keys = keys;
        self
    }

    /// Also check each path's NarHash and NarSize against its tree when no
    /// key requires it and the target is not the host Nix store (those two
    /// always check: the hash is what is signed, and what Nix records).
    /// Costs a SHA-256 of every byte.
    pub fn check_nar_hash(mut self, on: bool) -> Self {
        self.check_nar_hash = on;
        self
    }

    /// Whether paths are checked against their NarHash before they appear.
    fn checks_nar_hash(&self) -> bool {
        self.check_nar_hash || !self.trusted_keys.is_empty() || self.host.is_some()
    }

    /// Store paths written at once (at least 1).
    pub fn jobs(mut self, n: usize) -> Self {
        self.jobs = n.max(1);
        self
    }

    /// The target is the host Nix store: a path is present when Nix knows
    /// it as valid (a path on disk that Nix does not know is checked
    /// against its NarHash and adopted, to be registered, or refused). The
    /// fetch's target directory must be `nix`'s store directory, which also
    /// becomes [`Fetcher::store_dir`]. Registering is left to the caller
    /// ([`crate::register_with_nix`] with [`Fetched::placed`]).
    pub fn host_nix(mut self, nix: HostNix) -> Self {
        self.store_dir = nix.store_dir().to_owned();
        self.host = Some(nix);
        self
    }

    /// Progress of [`Fetcher::fetch`] (reset when a fetch starts; fetches
    /// running at once on one fetcher share it: give each its own with
    /// [`Fetcher::fetch_reporting`]).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Materialises the closures of `roots` as `<target_dir>/<hash>-<name>`,
    /// skipping paths present there, and returns the closure's PathInfos
    /// (references first), the paths placed, and a summary. Fails on the
    /// first path that cannot be fetched or verified, naming it; what was
    /// being written is removed (also when the future is dropped).
    pub async fn fetch(&self, roots: &[StorePath], target_dir: &Path) -> Result<Fetched, FetchError> {
        self.fetch_reporting(roots, target_dir, &self.progress).await
    }

    /// [`Fetcher::fetch`], publishing its progress on `progress`.
    pub async fn fetch_reporting(
        &self,
        roots: &[StorePath],
        target_dir: &Path,
        progress: &watch::Sender<Progress>,
    ) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        progress.send_replace(Progress::default());
        if let Some(nix) = &self.host {
            check_host_dir(nix, target_dir)?;
        }
        let closure = store::pathinfo::closure(&*self.paths, roots).await.map_err(|e| match e {
            castore::Error::NotFound(m) => FetchError::NotFound(m),
            error => FetchError::Store { what: "the closure's PathInfos".into(), error },
        })?;
        self.check_consistent(&closure, roots)?;

        let present = self.present(&closure, target_dir).await?;
        let (skipped, todo): (Vec<&PathInfo>, Vec<&PathInfo>) =
            closure.iter().partition(|i| present.contains(&i.store_path));
        progress.send_modify(|p| {
            p.paths_total = closure.len() as u64;
            p.paths_done = skipped.len() as u64;
            p.bytes_total = todo.iter().map(|i| i.nar_size).sum();
        });
        // Every path is checked before anything is written.
        for info in &todo {
            trust::check(info, &self.trusted_keys, &self.store_dir)?;
        }

        let index = Arc::new(LocalIndex::new(target_dir));
        let earlier = if todo.is_empty() { HashMap::new() } else { earlier_builds(&closure, &todo, target_dir).await };
        if !todo.is_empty() && !skipped.is_empty() {
            index.add_present(&skipped, &*self.directories).await;
        }
        let mut summary = Summary { skipped: skipped.len() as u64, ..Summary::default() };
        let report = Report { progress: progress.clone(), bytes: Arc::default() };
        let (index, report, earlier) = (&index, &report, &earlier);
        // Directory closures come a window of paths at a time, one call
        // each, a window ahead of the paths being written. The first
        // windows are small, so writing starts soon.
        // Owned items: a stream of borrowed ones makes a future the
        // compiler cannot prove `Send`.
        let mut windows: Vec<Vec<PathInfo>> = Vec::new();
        let mut rest = todo.as_slice();
        while !rest.is_empty() {
            let (window, after) = rest.split_at(rest.len().min(DIRECTORY_WINDOW.min(8 << windows.len().min(3))));
            windows.push(window.iter().map(|i| (*i).clone()).collect());
            rest = after;
        }
        let outcomes: Vec<(StorePath, Outcome)> = futures::stream::iter(windows)
            .map(|window| async move {
                let closures = self.closures_of(&window).await;
                futures::stream::iter(window.into_iter().map(move |info| (info, closures.clone())))
            })
            .buffered(2)
            .flatten()
            .map(|(info, closures)| async move {
                let local = Arc::new(PathCandidates {
                    index: index.clone(),
                    earlier: earlier.get(info.store_path.name()).cloned().unwrap_or_default(),
                });
                let outcome = self.fetch_one(&info, target_dir, local, report, closures).await?;
                report.progress.send_modify(|p| p.paths_done += 1);
                Ok::<_, FetchError>((info.store_path, outcome))
            })
            .buffer_unordered(self.jobs)
            .try_collect()
            .await?;

        let mut placed: HashSet<StorePath> = HashSet::new();
        for (path, outcome) in outcomes {
            match outcome {
                Outcome::Fetched { nar_bytes } => {
                    summary.fetched += 1;
                    summary.nar_bytes += nar_bytes;
                    placed.insert(path);
                }
                Outcome::Raced => summary.skipped += 1,
                Outcome::Adopted => {
                    summary.adopted += 1;
                    placed.insert(path);
                }
            }
        }
        summary.downloaded = report.bytes.fetched.load(Ordering::Relaxed);
        summary.copied = report.bytes.copied.load(Ordering::Relaxed);
        summary.elapsed = started.elapsed();
        let placed = closure.iter().filter(|i| placed.contains(&i.store_path)).cloned().collect();
        Ok(Fetched { closure, placed, summary })
    }

    fn show(&self, path: &StorePath) -> String {
        path.to_absolute(&self.store_dir)
    }

    /// Every root and every reference has a PathInfo under exactly its
    /// name (castore's client checks only the digest of an answer), and no
    /// directory claims more entries than its NAR could hold.
    fn check_consistent(&self, closure: &[PathInfo], roots: &[StorePath]) -> Result<(), FetchError> {
        let by_digest: HashMap<&[u8; 20], &StorePath> =
            closure.iter().map(|i| (i.store_path.digest(), &i.store_path)).collect();
        for wanted in roots.iter().chain(closure.iter().flat_map(|i| i.references.iter())) {
            match by_digest.get(wanted.digest()) {
                Some(got) if *got == wanted => {}
                Some(got) => {
                    return Err(FetchError::Inconsistent {
                        path: self.show(wanted),
                        reason: format!("the store answered with a PathInfo for {}", self.show(got)),
                    });
                }
                None => {
                    return Err(FetchError::Inconsistent {
                        path: self.show(wanted),
                        reason: "missing from the closure the store sent".into(),
                    });
                }
            }
        }
        for info in closure {
            // Each entry adds 2 to a directory's size and far more than 2
            // bytes to the NAR: a larger size is a tree that expands
            // beyond what the (possibly signed) NarSize allows.
            if let Node::Directory { size, .. } = info.node
                && size > info.nar_size
            {
                return Err(FetchError::Inconsistent {
                    path: self.show(&info.store_path),
                    reason: format!(
                        "its root directory claims {size} entries, more than its NAR of {} bytes can hold",
                        info.nar_size
                    ),
                });
            }
        }
        Ok(())
    }

    /// The paths of `closure` already in the target.
    async fn present(&self, closure: &[PathInfo], target_dir: &Path) -> Result<HashSet<StorePath>, FetchError> {
        let paths: Vec<StorePath> = closure.iter().map(|i| i.store_path.clone()).collect();
        if let Some(nix) = &self.host {
            return nix.valid(&paths).await;
        }
        let target_dir = target_dir.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut present = HashSet::new();
            for p in paths {
                match std::fs::symlink_metadata(target_dir.join(p.to_string())) {
                    Ok(_) => {
                        present.insert(p);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(FetchError::io(format!("looking for {p} in {}", target_dir.display()), e)),
                }
            }
            Ok(present)
        })
        .await
        .map_err(|e| FetchError::io("looking for present paths", std::io::Error::other(e)))?
    }

    /// The directory closures of `window`'s paths, in one
    /// [`DirectoryService::get_closures`]. Empty if that fails: each path
    /// then asks for its own, and a failure names it.
    async fn closures_of(&self, window: &[PathInfo]) -> Arc<HashMap<B3Digest, Directory>> {
        let roots: Vec<B3Digest> = window
            .iter()
            .filter_map(|i| match &i.node {
                Node::Directory { digest, .. } => Some(*digest),
                _ => None,
            })
            .collect();
        if roots.is_empty() {
            return Arc::default();
        }
        match self.directories.get_closures(roots).map_ok(|d| (d.digest(), d)).try_collect().await {
            Ok(closures) => Arc::new(closures),
            Err(e) => {
                tracing::debug!(error = %e, "no directory closures for a window of paths; asking path by path");
                Arc::default()
            }
        }
    }

    async fn fetch_one(
        &self,
        info: &PathInfo,
        target_dir: &Path,
        local: Arc<PathCandidates>,
        report: &Report,
        closures: Arc<HashMap<B3Digest, Directory>>,
    ) -> Result<Outcome, FetchError> {
        let base = info.store_path.to_string();
        let target = target_dir.join(&base);
        if self.host.is_some() && tokio::fs::symlink_metadata(&target).await.is_ok() {
            // On disk but not valid in Nix: an earlier fetch that stopped
            // before registering, or something else entirely.
            self.adopt(info, &target).await?;
            report.progress.send_modify(|p| p.bytes_done += info.nar_size);
            return Ok(Outcome::Adopted);
        }
        let (progress, bytes) = (report.progress.clone(), report.bytes.clone());
        let options = ExportOptions {
            layout: Layout::NixStore,
            retain_bytes: if self.checks_nar_hash() { RETAIN_BYTES } else { 0 },
            local: Some(local.clone()),
            on_bytes: Some(Arc::new(move |source, n| {
                match source {
                    Source::Fetched => bytes.fetched.fetch_add(n, Ordering::Relaxed),
                    Source::Copied => bytes.copied.fetch_add(n, Ordering::Relaxed),
                };
                progress.send_modify(|p| {
                    p.bytes_done += n;
                    match source {
                        Source::Fetched => p.downloaded += n,
                        Source::Copied => p.copied += n,
                    }
                })
            })),
        };
        let materialise = |error| FetchError::Materialise { path: self.show(&info.store_path), error };
        let staged = match &info.node {
            Node::Directory { digest, .. } if closures.contains_key(digest) => {
                castore::fs::stage_closure(&*self.blobs, closures, &info.node, &target, &options).await
            }
            _ => castore::fs::stage(&*self.blobs, &*self.directories, &info.node, &target, &options).await,
        }
        .map_err(materialise)?;
        if self.checks_nar_hash()
            && let Err(e) = self.verify(info, &staged).await
        {
            staged.discard().await;
            return Err(e);
        }
        let files = staged.files().to_vec();
        let written = staged.stats().fetched + staged.stats().copied;
        let commit = staged.commit().map_err(materialise)?;
        report.progress.send_modify(|p| p.bytes_done += info.nar_size.saturating_sub(written));
        match commit {
            Commit::Created => {
                local.index.add_staged(&base, &files);
                Ok(Outcome::Fetched { nar_bytes: info.nar_size })
            }
            // Another fetch placed the path meanwhile: complete and checked
            // by its writer; in the host store, whoever wrote it, it is
            // checked here before it is registered.
            Commit::Exists if self.host.is_some() => {
                self.adopt(info, &target).await?;
                Ok(Outcome::Adopted)
            }
            Commit::Exists => Ok(Outcome::Raced),
        }
    }

    /// Checks a path found on disk in the host store against its PathInfo.
    async fn adopt(&self, info: &PathInfo, target: &Path) -> Result<(), FetchError> {
        let (size, sha) =
            nar_hash_of_tree(target).await.map_err(|e| FetchError::io(format!("hashing {}", target.display()), e))?;
        if (size, sha) != (info.nar_size, info.nar_sha256) {
            return Err(FetchError::Conflict {
                path: self.show(&info.store_path),
                reason: format!(
                    "its NAR is {} ({size} bytes), the store's is {} ({} bytes)",
                    NixHash::sha256(sha),
                    NixHash::sha256(info.nar_sha256),
                    info.nar_size
                ),
            });
        }
        Ok(())
    }

    /// Checks a staged tree against its PathInfo before it is committed.
    async fn verify(&self, info: &PathInfo, staged: &Staged) -> Result<(), FetchError> {
        let (size, sha) = nar_hash_of_staged(&info.node, staged)
            .await
            .map_err(|e| FetchError::io(format!("hashing {}", staged.path().display()), e))?;
        if (size, sha) != (info.nar_size, info.nar_sha256) {
            return Err(FetchError::NarMismatch {
                path: self.show(&info.store_path),
                expected_hash: NixHash::sha256(info.nar_sha256).to_string(),
                expected_size: info.nar_size,
                actual_hash: NixHash::sha256(sha).to_string(),
                actual_size: size,
            });
        }
        Ok(())
    }
}

/// Directories in the target that are not paths of `closure` but share a
/// name with a path to fetch (`<other hash>-hello-2.12`), by that name:
/// most likely earlier builds of the same package, whose files a new build
/// mostly repeats at the same places ([`PathCandidates`]). At most
/// [`EARLIER_PER_NAME`] per name; only the target's listing is read.
async fn earlier_builds(closure: &[PathInfo], todo: &[&PathInfo], target_dir: &Path) -> HashMap<String, Vec<String>> {
    let names: HashSet<String> = todo.iter().map(|i| i.store_path.name().to_owned()).collect();
    let in_closure: HashSet<StorePath> = closure.iter().map(|i| i.store_path.clone()).collect();
    let dir = target_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut found: HashMap<String, Vec<String>> = HashMap::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(path) = StorePath::from_basename_bytes(entry.file_name().as_encoded_bytes()) else { continue };
            if in_closure.contains(&path) || !names.contains(path.name()) {
                continue;
            }
            let builds = found.entry(path.name().to_owned()).or_default();
            if builds.len() < EARLIER_PER_NAME {
                builds.push(path.to_string());
            }
        }
        found
    })
    .await
    .unwrap_or_default()
}

/// The target of a host-Nix fetch must be that store's directory.
fn check_host_dir(nix: &HostNix, target_dir: &Path) -> Result<(), FetchError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(|e| FetchError::io(format!("{}", p.display()), e));
    if canonical(target_dir)? != canonical(Path::new(nix.store_dir()))? {
        return Err(FetchError::Usage(format!(
            "the host Nix store is {}, but the fetch writes to {}",
            nix.store_dir(),
            target_dir.display()
        )));
    }
    Ok(())
}
