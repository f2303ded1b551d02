//! [`Walk`]: the state of one check. It owns the graph (ids, not digests,
//! for the edges) and the queues, and runs the tasks of [`Shared`], at most
//! `jobs` at a time; only it changes the graph, so it needs no locks.
use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, atomic::Ordering},
};

use castore::{B3Digest, Directory, Node, Result, kv::KvStore, kv::Table};
use futures::{StreamExt, TryStreamExt, stream::FuturesUnordered};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    MAX_NAR_JOBS, Options, PathProblem, Problem, ProblemKind, Progress, Report, Stage, Store, Unreferenced,
    checks::Shared,
};
use crate::{PathInfo, PathInfoService, StorePath};

/// The things that hold bytes or entries, as ids into the walk's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Object {
    Dir(u32),
    Blob(u32),
}

/// What records a size for a directory: a PathInfo's root entry or a
/// directory entry.
#[derive(Clone, Copy, Debug)]
enum Parent {
    Path(u32),
    Dir(u32),
}

/// A recorded size waiting for its directory to be read.
struct Edge {
    parent: Parent,
    name: String,
    size: u64,
}

struct DirRec {
    digest: B3Digest,
    /// Asked for (as a task of its own or as part of a recursive Get).
    requested: bool,
    /// Read: its children and files are known.
    loaded: bool,
    /// The two sizes castore's `Directory::size_matches` accepts.
    sizes: [u64; 2],
    children: Box<[u32]>,
    files: Box<[u32]>,
    waiting: Vec<Edge>,
}

impl DirRec {
    fn new(digest: B3Digest) -> Self {
        Self {
            digest,
            requested: false,
            loaded: false,
            sizes: [0; 2],
            children: Box::new([]),
            files: Box::new([]),
            waiting: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
struct BlobRec {
    digest: B3Digest,
    /// The size the first entry naming it records.
    size: u64,
}

/// What a task found.
enum Outcome {
    /// One directory, read on its own.
    Dir(u32, std::result::Result<Directory, ProblemKind>),
    /// A recursive Get: the directories received, before any error.
    Tree(Vec<Directory>),
    Blob(u32, Vec<ProblemKind>),
}

pub(super) struct Walk<'a> {
    progress: &'a watch::Sender<Progress>,
    shared: Arc<Shared>,
    paths_svc: Arc<dyn PathInfoService>,
    jobs: usize,
    paths: Vec<PathInfo>,
    dir_ids: HashMap<B3Digest, u32>,
    dirs: Vec<DirRec>,
    blob_ids: HashMap<B3Digest, u32>,
    blobs: Vec<BlobRec>,
    object_problems: Vec<(Object, ProblemKind)>,
    path_problems: Vec<PathProblem>,
    /// Directories to read: alone, or (`true`) with a recursive Get.
    dir_queue: VecDeque<(u32, bool)>,
    blob_queue: VecDeque<u32>,
    running: FuturesUnordered<JoinHandle<Outcome>>,
    /// Directories read (or found missing or corrupt).
    loaded_dirs: u64,
    /// The recorded sizes of the blobs found.
    bytes: u64,
}

impl<'a> Walk<'a> {
    pub(super) fn new(
        store: &Store,
        opts: &Options,
        progress: &'a watch::Sender<Progress>,
        paths: Vec<PathInfo>,
        path_problems: Vec<PathProblem>,
    ) -> Self {
        Self {
            progress,
            shared: Arc::new(Shared::new(store, opts.deep)),
            paths_svc: store.paths.clone(),
            jobs: opts.jobs.max(1),
            paths,
            dir_ids: HashMap::new(),
            dirs: Vec::new(),
            blob_ids: HashMap::new(),
            blobs: Vec::new(),
            object_problems: Vec::new(),
            path_problems,
            dir_queue: VecDeque::new(),
            blob_queue: VecDeque::new(),
            running: FuturesUnordered::new(),
            loaded_dirs: 0,
            bytes: 0,
        }
    }

    pub(super) fn set_stage(&self, stage: Stage) {
        self.progress.send_modify(|p| p.stage = stage);
    }

    /// Every reference (other than the path itself) must have a PathInfo.
    /// One missing from the listing is asked for once more: a path put while
    /// the listing ran may be missing from it.
    pub(super) async fn references(&mut self) {
        let listed: HashSet<&StorePath> = self.paths.iter().map(|p| &p.store_path).collect();
        let mut unlisted: Vec<(u32, StorePath)> = Vec::new();
        for (i, info) in self.paths.iter().enumerate() {
            for r in &info.references {
                if *r != info.store_path && !listed.contains(r) {
                    unlisted.push((i as u32, r.clone()));
                }
            }
        }
        let mut asked: HashMap<StorePath, std::result::Result<bool, String>> = HashMap::new();
        for (i, reference) in unlisted {
            let found = match asked.get(&reference) {
                Some(found) => found.clone(),
                None => {
                    let found = self.paths_svc.get(reference.digest()).await.map(|f| f.is_some());
                    let found = found.map_err(|e| e.to_string());
                    asked.insert(reference.clone(), found.clone());
                    found
                }
            };
            match found {
                Ok(true) => {}
                Ok(false) => self.path_problems.push((Some(i), ProblemKind::MissingReference { reference })),
                Err(error) => {
                    let what = format!("the PathInfo of reference {reference}");
                    self.path_problems.push((Some(i), ProblemKind::Unreadable { what, error }));
                }
            }
        }
    }

    /// Reads every directory and looks up every blob (and chunk) that some
    /// PathInfo reaches, each once.
    pub(super) async fn contents(&mut self) {
        self.set_stage(Stage::Contents);
        // Through a server, each path's tree comes in one recursive Get;
        // with the engine, directories are read one by one.
        let by_tree = self.shared.kv.is_none();
        for i in 0..self.paths.len() {
            let name = self.paths[i].store_path.to_string();
            match self.paths[i].node.clone() {
                Node::Directory { digest, size } => {
                    let id = self.dir(digest);
                    self.edge(id, Edge { parent: Parent::Path(i as u32), name, size });
                    self.request(id, by_tree);
                }
                Node::File { digest, size, .. } => {
                    if let Some(other) = self.blob(digest, size) {
                        let kind = ProblemKind::EntrySize { parent: None, name, blob: digest, recorded: size, other };
                        self.path_problems.push((Some(i as u32), kind));
                    }
                }
                Node::Symlink { .. } => {}
            }
        }
        loop {
            self.drain().await;
            // A recursive Get that failed part-way left directories that
            // were announced but never received: read those one by one.
            let stragglers: Vec<u32> =
                (0..self.dirs.len() as u32).filter(|&id| !self.dirs[id as usize].requested).collect();
            if stragglers.is_empty() {
                break;
            }
            for id in stragglers {
                self.request(id, false);
            }
        }
    }

    /// Queues directory `id` to be read, unless it was asked for already.
    fn request(&mut self, id: u32, tree: bool) {
        let d = &mut self.dirs[id as usize];
        if !d.requested {
            d.requested = true;
            self.dir_queue.push_back((id, tree));
        }
    }

    /// Runs queued tasks until none are left.
    async fn drain(&mut self) {
        loop {
            while self.running.len() < self.jobs {
                // Directories first: they find the blobs.
                if let Some((id, tree)) = self.dir_queue.pop_front() {
                    let d = &self.dirs[id as usize];
                    if d.loaded {
                        continue; // received in another path's recursive Get
                    }
                    let digest = d.digest;
                    let shared = self.shared.clone();
                    self.running.push(if tree {
                        tokio::spawn(async move { Outcome::Tree(shared.tree(digest).await) })
                    } else {
                        tokio::spawn(async move { Outcome::Dir(id, shared.load_dir(digest).await) })
                    });
                } else if let Some(id) = self.blob_queue.pop_front() {
                    let BlobRec { digest, size } = self.blobs[id as usize];
                    let shared = self.shared.clone();
                    self.running
                        .push(tokio::spawn(async move { Outcome::Blob(id, shared.check_blob(digest, size).await) }));
                } else {
                    break;
                }
            }
            let Some(done) = self.running.next().await else { return };
            match done {
                Ok(Outcome::Dir(id, Ok(dir))) => self.loaded(id, &dir, true),
                Ok(Outcome::Dir(id, Err(kind))) => {
                    // Marked as read, so it is not asked for again.
                    self.dirs[id as usize].loaded = true;
                    self.loaded_dirs += 1;
                    self.dirs[id as usize].waiting.clear();
                    self.object_problems.push((Object::Dir(id), kind));
                }
                Ok(Outcome::Tree(dirs)) => {
                    for dir in dirs {
                        let id = self.dir(dir.digest());
                        self.loaded(id, &dir, false);
                    }
                }
                Ok(Outcome::Blob(id, found)) => {
                    self.object_problems.extend(found.into_iter().map(|k| (Object::Blob(id), k)));
                }
                Err(e) => {
                    // A task panicked: nothing to attribute it to, so say it.
                    let what = "a check task".to_owned();
                    self.path_problems.push((None, ProblemKind::Unreadable { what, error: e.to_string() }));
                }
            }
            self.send_counts();
        }
    }

    fn send_counts(&self) {
        let directories = self.loaded_dirs;
        let chunks = self.shared.chunks.lock().expect("poisoned").len() as u64;
        let bytes_read = self.shared.bytes_read.load(Ordering::Relaxed);
        let (blobs, bytes) = (self.blobs.len() as u64, self.bytes);
        let problems = self.object_problems.len() as u64;
        self.progress.send_modify(|p| {
            (p.directories, p.blobs, p.chunks, p.bytes, p.bytes_read) = (directories, blobs, chunks, bytes, bytes_read);
            p.problems = problems;
        });
    }

    /// The id of directory `digest`.
    fn dir(&mut self, digest: B3Digest) -> u32 {
        if let Some(&id) = self.dir_ids.get(&digest) {
            return id;
        }
        let id = self.dirs.len() as u32;
        self.dirs.push(DirRec::new(digest));
        self.dir_ids.insert(digest, id);
        id
    }

    /// The id of blob `digest`, queued if new; for a known blob whose first
    /// entry recorded another size, that size.
    fn blob(&mut self, digest: B3Digest, size: u64) -> Option<u64> {
        if let Some(&id) = self.blob_ids.get(&digest) {
            let first = self.blobs[id as usize].size;
            return (first != size).then_some(first);
        }
        let id = self.blobs.len() as u32;
        self.blobs.push(BlobRec { digest, size });
        self.blob_ids.insert(digest, id);
        self.blob_queue.push_back(id);
        self.bytes += size;
        None
    }

    /// Checks a recorded size against directory `id` now if it was read,
    /// or once it is.
    fn edge(&mut self, id: u32, edge: Edge) {
        let d = &mut self.dirs[id as usize];
        if d.loaded {
            let sizes = d.sizes;
            self.check_size(id, sizes, edge);
        } else {
            d.waiting.push(edge);
        }
    }

    fn check_size(&mut self, child: u32, sizes: [u64; 2], edge: Edge) {
        if sizes.contains(&edge.size) {
            return;
        }
        let digest = self.dirs[child as usize].digest;
        match edge.parent {
            Parent::Path(i) => {
                let kind = ProblemKind::RootSize { directory: digest, recorded: edge.size, actual: sizes[0] };
                self.path_problems.push((Some(i), kind));
            }
            Parent::Dir(p) => {
                let parent = self.dirs[p as usize].digest;
                let kind = ProblemKind::ChildSize {
                    parent,
                    name: edge.name,
                    child: digest,
                    recorded: edge.size,
                    actual: sizes[0],
                };
                self.object_problems.push((Object::Dir(p), kind));
            }
        }
    }

    /// Records directory `id`'s contents: sizes waiting for it are checked,
    /// child directories queued (when `request`: a recursive Get brings them
    /// itself) and blobs queued.
    fn loaded(&mut self, id: u32, dir: &Directory, request: bool) {
        if self.dirs[id as usize].loaded {
            return; // also in an earlier recursive Get
        }
        let sizes = [dir.size(), dir.size_documented()];
        {
            let d = &mut self.dirs[id as usize];
            (d.loaded, d.requested, d.sizes) = (true, true, sizes);
        }
        self.loaded_dirs += 1;
        for edge in std::mem::take(&mut self.dirs[id as usize].waiting) {
            self.check_size(id, sizes, edge);
        }
        let mut children = Vec::new();
        let mut files = Vec::new();
        for (name, node) in dir.entries() {
            let name = String::from_utf8_lossy(name.as_bytes()).into_owned();
            match node {
                Node::Directory { digest, size } => {
                    let child = self.dir(*digest);
                    if request {
                        self.request(child, false);
                    }
                    children.push(child);
                    self.edge(child, Edge { parent: Parent::Dir(id), name, size: *size });
                }
                Node::File { digest, size, .. } => {
                    if let Some(other) = self.blob(*digest, *size) {
                        let parent = Some(self.dirs[id as usize].digest);
                        let kind = ProblemKind::EntrySize { parent, name, blob: *digest, recorded: *size, other };
                        self.object_problems.push((Object::Dir(id), kind));
                    }
                    files.push(self.blob_ids[digest]);
                }
                Node::Symlink { .. } => {}
            }
        }
        let d = &mut self.dirs[id as usize];
        d.children = children.into();
        d.files = files.into();
    }

    /// Turns object problems into problems naming every path that reaches
    /// the object, and adds the path problems.
    pub(super) fn attribute(&mut self) -> Vec<Problem> {
        let mut out: Vec<Problem> = Vec::new();
        let path_of = |i: u32| self.paths[i as usize].store_path.clone();
        for (path, kind) in std::mem::take(&mut self.path_problems) {
            out.push(Problem { kind, paths: path.map(path_of).into_iter().collect() });
        }
        let bad: HashSet<Object> = self.object_problems.iter().map(|(o, _)| *o).collect();
        let mut affected: HashMap<Object, Vec<StorePath>> = HashMap::new();
        if !bad.is_empty() {
            let mut memo: Vec<Option<Arc<[Object]>>> = vec![None; self.dirs.len()];
            for (i, info) in self.paths.iter().enumerate() {
                let reached: Arc<[Object]> = match &info.node {
                    Node::Directory { digest, .. } => self.reach(self.dir_ids[digest], &bad, &mut memo),
                    Node::File { digest, .. } => {
                        let o = Object::Blob(self.blob_ids[digest]);
                        if bad.contains(&o) { Arc::from([o]) } else { Arc::from([]) }
                    }
                    Node::Symlink { .. } => Arc::from([]),
                };
                for o in reached.iter() {
                    affected.entry(*o).or_default().push(path_of(i as u32));
                }
            }
        }
        for (object, kind) in &self.object_problems {
            let mut paths = affected.get(object).cloned().unwrap_or_default();
            // A path listed twice (a misfiled copy of its record) counts once.
            paths.sort();
            paths.dedup();
            out.push(Problem { kind: kind.clone(), paths });
        }
        out
    }

    /// The bad objects reachable from directory `start` (itself included),
    /// memoised per directory; iterative, as trees can be deep.
    fn reach(&self, start: u32, bad: &HashSet<Object>, memo: &mut [Option<Arc<[Object]>>]) -> Arc<[Object]> {
        let mut stack = vec![(start, false)];
        while let Some((d, expanded)) = stack.pop() {
            if memo[d as usize].is_some() {
                continue;
            }
            let rec = &self.dirs[d as usize];
            if !expanded {
                stack.push((d, true));
                stack.extend(rec.children.iter().filter(|c| memo[**c as usize].is_none()).map(|c| (*c, false)));
                continue;
            }
            let mut set: BTreeSet<Object> = BTreeSet::new();
            if bad.contains(&Object::Dir(d)) {
                set.insert(Object::Dir(d));
            }
            set.extend(rec.files.iter().map(|b| Object::Blob(*b)).filter(|o| bad.contains(o)));
            for c in rec.children.iter() {
                // A child still being expanded (a cycle, possible only in a
                // corrupt store) contributes nothing.
                if let Some(below) = &memo[*c as usize] {
                    set.extend(below.iter().copied());
                }
            }
            memo[d as usize] = Some(set.into_iter().collect());
        }
        memo[start as usize].clone().expect("computed")
    }

    /// Deep: renders the NAR of every path not already known broken and
    /// compares it with the PathInfo.
    pub(super) async fn nars(&mut self, problems: &mut Vec<Problem>) {
        let broken: HashSet<StorePath> = problems.iter().flat_map(|p| p.paths.iter().cloned()).collect();
        let todo: Vec<PathInfo> = self.paths.iter().filter(|p| !broken.contains(&p.store_path)).cloned().collect();
        self.progress.send_modify(|p| {
            p.stage = Stage::Nars;
            p.nars_total = todo.len() as u64;
        });
        let shared = self.shared.clone();
        let mut checks = futures::stream::iter(todo)
            .map(|info| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let found =
                        crate::nar::calculate(&info.node, shared.blobs.clone(), shared.directories.clone()).await;
                    (info, found)
                })
            })
            .buffer_unordered(self.jobs.min(MAX_NAR_JOBS));
        let mut done = 0;
        while let Some(joined) = checks.next().await {
            done += 1;
            let (info, found) = match joined {
                Ok(v) => v,
                Err(e) => {
                    let kind = ProblemKind::Unreadable { what: "a NAR check task".into(), error: e.to_string() };
                    problems.push(Problem { kind, paths: vec![] });
                    continue;
                }
            };
            let kind = match found {
                Ok((size, hash)) => {
                    self.shared.bytes_read.fetch_add(size, Ordering::Relaxed);
                    (size != info.nar_size || hash != info.nar_sha256).then_some(ProblemKind::NarMismatch {
                        recorded_size: info.nar_size,
                        recorded_hash: info.nar_sha256,
                        size,
                        hash,
                    })
                }
                Err(e) => Some(ProblemKind::Unreadable { what: "its NAR".into(), error: e.to_string() }),
            };
            if let Some(kind) = kind {
                problems.push(Problem { kind, paths: vec![info.store_path] });
            }
            let bytes_read = self.shared.bytes_read.load(Ordering::Relaxed);
            self.progress.send_modify(|p| {
                p.nars_done = done;
                p.bytes_read = bytes_read;
            });
        }
    }

    /// Directory and blob-index records that no PathInfo reached.
    pub(super) async fn unreferenced(&self, kv: &dyn KvStore) -> Result<Unreferenced> {
        let mut out = Unreferenced::default();
        let mut dirs = kv.scan(Table::DIRECTORIES);
        while let Some((key, _)) = dirs.try_next().await? {
            let reached = B3Digest::try_from(&key[..]).ok().and_then(|d| self.dir_ids.get(&d));
            if reached.is_none() {
                out.directories += 1;
            }
        }
        let mut blobs = kv.scan(Table::BLOBS);
        while let Some((key, _)) = blobs.try_next().await? {
            let reached = B3Digest::try_from(&key[..]).ok().and_then(|d| self.blob_ids.get(&d));
            if reached.is_none() {
                out.blobs += 1;
            }
        }
        Ok(out)
    }

    pub(super) fn report(&self, problems: Vec<Problem>, unreferenced: Option<Unreferenced>) -> Report {
        Report {
            paths: self.paths.len() as u64,
            directories: self.loaded_dirs,
            blobs: self.blobs.len() as u64,
            chunks: self.shared.chunks.lock().expect("poisoned").len() as u64,
            bytes: self.bytes,
            bytes_read: self.shared.bytes_read.load(Ordering::Relaxed),
            nars: self.progress.borrow().nars_done,
            problems,
            unreferenced,
        }
    }
}
