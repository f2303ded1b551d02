//! [`Importer`]: puts store paths of a local store directory into a
//! [`Target`], contents first, PathInfos in dependency order.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
};

use castore::Node;
use futures::{StreamExt, TryStreamExt, stream::FuturesUnordered};
use tokio::{sync::watch, task::JoinHandle};

use super::{Failure, ImportError, PathMeta, Progress, Summary, Target};
use crate::{NixHash, StorePath};

/// Store paths ingested at once by default. Each ingest is itself parallel
/// (files are read and stored by several tasks), so this mostly keeps the
/// pipeline full when paths are small.
pub const DEFAULT_JOBS: usize = 8;
/// PathInfo puts in flight at once.
const PARALLEL_PUTS: usize = 32;
/// Presence checks (PathInfo gets) in flight at once.
const PARALLEL_GETS: usize = 64;

/// Imports store paths, given their metadata, from a store directory.
///
/// Paths already stored are skipped; the others are ingested from
/// `<store dir>/<basename>` (at most `jobs` at a time), checked against
/// their NarHash and NarSize unless verification is off, and their
/// PathInfos put as soon as every reference is stored. A path that fails
/// takes the paths that reference it with it, and nothing else: the
/// [`Summary`] lists the failures.
pub struct Importer {
    target: Target,
    store_dir: PathBuf,
    jobs: usize,
    verify: bool,
    progress: watch::Sender<Progress>,
}

impl Importer {
    /// An importer reading contents from `store_dir` (where the paths'
    /// basenames are found on disk).
    pub fn new(target: Target, store_dir: impl Into<PathBuf>) -> Self {
        Self {
            target,
            store_dir: store_dir.into(),
            jobs: DEFAULT_JOBS,
            verify: true,
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Store paths ingested at once (at least 1).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// Whether to check each stored tree's NAR hash and size against the
    /// metadata (default: on).
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Progress of the running import.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Imports every path in `metas` (a closure, usually: a reference to a
    /// path that is neither in `metas` nor stored fails the referring path).
    ///
    /// Fails as a whole only when the store cannot be asked what it holds.
    pub async fn import(&self, metas: Vec<PathMeta>) -> Result<Summary, ImportError> {
        let mut metas = metas;
        let mut seen = HashSet::new();
        metas.retain(|m| seen.insert(m.path.clone()));
        self.progress.send_replace(Progress {
            paths_total: metas.len() as u64,
            bytes_total: metas.iter().map(|m| m.nar_size).sum(),
            ..Progress::default()
        });

        // What is stored already (the importing paths, and references to
        // paths outside them) is left alone.
        let mut to_check: Vec<StorePath> = metas.iter().map(|m| m.path.clone()).collect();
        let outside: Vec<StorePath> = {
            let mut o: Vec<StorePath> =
                metas.iter().flat_map(|m| m.references.iter()).filter(|r| !seen.contains(*r)).cloned().collect();
            o.sort();
            o.dedup();
            o
        };
        to_check.extend(outside.iter().cloned());
        let present: HashMap<StorePath, bool> = futures::stream::iter(to_check)
            .map(|p| {
                let paths = self.target.paths.clone();
                async move { Ok::<_, castore::Error>((p.clone(), paths.get(p.digest()).await?.is_some())) }
            })
            .buffer_unordered(PARALLEL_GETS)
            .try_collect()
            .await?;

        let mut summary = Summary::default();
        metas.retain(|m| {
            let skip = present[&m.path];
            if skip {
                summary.skipped += 1;
            }
            !skip
        });
        self.progress.send_modify(|p| {
            p.paths_done = summary.skipped;
            p.bytes_total = metas.iter().map(|m| m.nar_size).sum();
        });

        let mut run = Run::new(metas, &present);
        for (i, error) in std::mem::take(&mut run.initial_failures) {
            run.fail(i, error, &mut summary);
        }
        self.drive(&mut run, &mut summary).await;
        self.progress.send_modify(|p| p.paths_done = p.paths_total);
        summary.failures.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(summary)
    }

    async fn drive(&self, run: &mut Run, summary: &mut Summary) {
        let mut ingests = FuturesUnordered::new();
        let mut puts = FuturesUnordered::new();
        loop {
            while ingests.len() < self.jobs {
                let Some(i) = run.queue.pop_front() else { break };
                if run.paths[i].state != State::Queued {
                    continue; // failed meanwhile
                }
                run.paths[i].state = State::Ingesting;
                ingests
                    .push(joined(i, self.spawn_ingest(run.paths[i].meta.as_ref().expect("queued path has metadata"))));
            }
            while puts.len() < PARALLEL_PUTS {
                let Some(i) = run.ready.pop_front() else { break };
                if run.paths[i].state != State::Ingested {
                    continue;
                }
                run.paths[i].state = State::Putting;
                let meta = run.paths[i].meta.take().expect("metadata");
                let node = run.paths[i].node.take().expect("ingested path has a node");
                puts.push(joined(i, self.spawn_put(meta.into_path_info(node))));
            }
            if ingests.is_empty() && puts.is_empty() {
                break;
            }
            tokio::select! {
                Some((i, result)) = ingests.next(), if !ingests.is_empty() => {
                    let size = run.paths[i].nar_size;
                    self.progress.send_modify(|p| p.bytes_done += size);
                    match result {
                        Ok(node) if run.paths[i].state == State::Ingesting => {
                            run.paths[i].node = Some(node);
                            run.paths[i].state = State::Ingested;
                            if run.paths[i].waiting == 0 {
                                run.ready.push_back(i);
                            }
                        }
                        Ok(_) => {} // a reference failed meanwhile
                        Err(e) => run.fail(i, e, summary),
                    }
                }
                Some((i, result)) = puts.next(), if !puts.is_empty() => {
                    match result {
                        Ok(()) => {
                            run.paths[i].state = State::Done;
                            summary.imported += 1;
                            summary.bytes += run.paths[i].nar_size;
                            self.progress.send_modify(|p| p.paths_done += 1);
                            for d in std::mem::take(&mut run.paths[i].dependents) {
                                let dep = &mut run.paths[d].waiting;
                                *dep -= 1;
                                if *dep == 0 && run.paths[d].state == State::Ingested {
                                    run.ready.push_back(d);
                                }
                            }
                        }
                        Err(e) => run.fail(i, e, summary),
                    }
                }
            }
        }
        // Whatever is left waited for references that never came (a
        // reference cycle in the metadata).
        for i in 0..run.paths.len() {
            if !matches!(run.paths[i].state, State::Done | State::Failed) {
                let waiting = run.paths[i].waiting;
                run.fail(
                    i,
                    format!("never stored: still waiting for {waiting} references (a reference cycle?)"),
                    summary,
                );
            }
        }
    }

    fn spawn_ingest(&self, meta: &PathMeta) -> JoinHandle<Result<Node, String>> {
        let target = self.target.clone();
        let fs_path = self.store_dir.join(meta.path.to_string());
        let expected = (meta.nar_size, meta.nar_sha256);
        let verify = self.verify;
        tokio::spawn(async move {
            let node = castore::fs::ingest(&*target.blobs, &*target.directories, &fs_path)
                .await
                .map_err(|e| format!("ingesting {}: {e}", fs_path.display()))?;
            if verify {
                let got = target
                    .nar
                    .calculate_nar(&node)
                    .await
                    .map_err(|e| format!("calculating the NAR hash of the stored tree: {e}"))?;
                if got != expected {
                    return Err(format!(
                        "the stored tree renders to a NAR of {} bytes with hash {}, but the Nix database \
                             records {} bytes with hash {} (was the path modified on disk?)",
                        got.0,
                        NixHash::sha256(got.1),
                        expected.0,
                        NixHash::sha256(expected.1)
                    ));
                }
            }
            Ok(node)
        })
    }

    fn spawn_put(&self, info: crate::pathinfo::PathInfo) -> JoinHandle<Result<(), String>> {
        let paths = self.target.paths.clone();
        tokio::spawn(async move {
            let sha = info.nar_sha256;
            match paths.put(info).await {
                Ok(stored) => super::check_same_nar(&stored, &sha),
                Err(e) => Err(format!("putting the PathInfo: {e}")),
            }
        })
    }
}

/// A spawned task's result, tagged with its path (a panic is that path's failure).
async fn joined<T>(i: usize, task: JoinHandle<Result<T, String>>) -> (usize, Result<T, String>) {
    (i, task.await.unwrap_or_else(|e| Err(format!("task failed: {e}"))))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Queued,
    Ingesting,
    Ingested,
    Putting,
    Done,
    Failed,
}

struct Path {
    meta: Option<PathMeta>,
    path: StorePath,
    nar_size: u64,
    state: State,
    node: Option<Node>,
    /// References (other than itself) not stored yet.
    waiting: usize,
    /// Paths of this import that reference this one.
    dependents: Vec<usize>,
}

/// The paths of one import and what is left to do.
struct Run {
    paths: Vec<Path>,
    /// To ingest, references before the paths that refer to them.
    queue: VecDeque<usize>,
    /// Ingested, every reference stored: the PathInfo can go.
    ready: VecDeque<usize>,
    initial_failures: Vec<(usize, String)>,
}

impl Run {
    fn new(metas: Vec<PathMeta>, present: &HashMap<StorePath, bool>) -> Self {
        let index: HashMap<StorePath, usize> = metas.iter().enumerate().map(|(i, m)| (m.path.clone(), i)).collect();
        let mut paths: Vec<Path> = metas
            .into_iter()
            .map(|m| Path {
                path: m.path.clone(),
                nar_size: m.nar_size,
                meta: Some(m),
                state: State::Queued,
                node: None,
                waiting: 0,
                dependents: Vec::new(),
            })
            .collect();
        let mut initial_failures = Vec::new();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); paths.len()];
        for i in 0..paths.len() {
            let meta = paths[i].meta.as_ref().expect("metadata");
            let mut refs: Vec<&StorePath> = meta.references.iter().filter(|r| **r != meta.path).collect();
            refs.sort();
            refs.dedup();
            let mut missing = Vec::new();
            for r in refs {
                match index.get(r) {
                    Some(&j) => edges[i].push(j),
                    None if present.get(r).copied().unwrap_or(false) => {}
                    None => missing.push(r.to_string()),
                }
            }
            if !missing.is_empty() {
                initial_failures.push((
                    i,
                    format!("references paths that are neither stored nor being imported: {}", missing.join(", ")),
                ));
            }
        }
        for (i, refs) in edges.iter().enumerate() {
            paths[i].waiting = refs.len();
            for &j in refs {
                paths[j].dependents.push(i);
            }
        }
        let queue = topological(&edges);
        Run { paths, queue, ready: VecDeque::new(), initial_failures }
    }

    /// Marks `i` failed, and with it every path that (transitively) refers to it.
    fn fail(&mut self, i: usize, error: String, summary: &mut Summary) {
        let mut stack = vec![(i, error)];
        while let Some((i, error)) = stack.pop() {
            if matches!(self.paths[i].state, State::Failed | State::Done) {
                continue;
            }
            self.paths[i].state = State::Failed;
            self.paths[i].meta = None;
            self.paths[i].node = None;
            let failed = self.paths[i].path.clone();
            for &d in &self.paths[i].dependents {
                stack.push((d, format!("its reference {failed} could not be imported")));
            }
            summary.failures.push(Failure { path: failed, error });
        }
    }
}

/// An order of the nodes in which every node comes after those it has
/// edges to (references first); nodes on a cycle come in some order.
fn topological(edges: &[Vec<usize>]) -> VecDeque<usize> {
    let mut order = VecDeque::with_capacity(edges.len());
    let mut visited = vec![false; edges.len()];
    for root in 0..edges.len() {
        if visited[root] {
            continue;
        }
        visited[root] = true;
        // (node, index of the next edge to follow)
        let mut stack = vec![(root, 0)];
        while let Some((node, next)) = stack.last_mut() {
            if let Some(&child) = edges[*node].get(*next) {
                *next += 1;
                if !visited[child] {
                    visited[child] = true;
                    stack.push((child, 0));
                }
            } else {
                order.push_back(*node);
                stack.pop();
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sp(n: u8, name: &str) -> StorePath {
        StorePath::from_parts([n; 20], name).unwrap()
    }

    /// Metadata for `path` as it is on disk under `dir`, computed in a
    /// scratch store.
    async fn meta_of(dir: &Path, path: &StorePath, references: Vec<StorePath>) -> PathMeta {
        let scratch = Target::open("memory:").unwrap();
        let node =
            castore::fs::ingest(&*scratch.blobs, &*scratch.directories, &dir.join(path.to_string())).await.unwrap();
        let (nar_size, nar_sha256) = scratch.nar.calculate_nar(&node).await.unwrap();
        PathMeta { path: path.clone(), nar_sha256, nar_size, references, deriver: None, signatures: vec![], ca: None }
    }

    #[tokio::test]
    async fn imports_in_dependency_order_and_fails_only_dependents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b, c, d, e, x) = (sp(1, "a"), sp(2, "b"), sp(3, "c"), sp(4, "d"), sp(5, "e"), sp(6, "missing-on-disk"));
        std::fs::write(dir.join(a.to_string()), b"a file").unwrap();
        for p in [&b, &c, &d, &e] {
            std::fs::create_dir(dir.join(p.to_string())).unwrap();
            std::fs::write(dir.join(p.to_string()).join("f"), p.to_string()).unwrap();
        }
        std::os::unix::fs::symlink("f", dir.join(c.to_string()).join("l")).unwrap();
        let mut metas = vec![
            // Listed dependents first: the importer must order them.
            meta_of(dir, &c, vec![b.clone(), c.clone(), a.clone()]).await,
            meta_of(dir, &b, vec![a.clone()]).await,
            meta_of(dir, &a, vec![]).await,
            meta_of(dir, &e, vec![x.clone()]).await,
        ];
        let mut wrong = meta_of(dir, &d, vec![]).await;
        wrong.nar_sha256[0] ^= 1;
        metas.push(wrong);
        metas.push(PathMeta {
            path: x.clone(),
            nar_sha256: [0; 32],
            nar_size: 1,
            references: vec![],
            deriver: None,
            signatures: vec![],
            ca: None,
        });

        let target = Target::open("memory:").unwrap();
        let importer = Importer::new(target.clone(), dir).jobs(2);
        let progress = importer.progress();
        let summary = importer.import(metas.clone()).await.unwrap();
        assert_eq!((summary.imported, summary.skipped), (3, 0), "{summary:?}");
        let failed: Vec<(&StorePath, &str)> = summary.failures.iter().map(|f| (&f.path, f.error.as_str())).collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(failed.iter().any(|(p, e)| **p == d && e.contains("Nix database records")), "{failed:?}");
        assert!(failed.iter().any(|(p, e)| **p == x && e.contains("ingesting")), "{failed:?}");
        assert!(failed.iter().any(|(p, msg)| **p == e && msg.contains(&format!("reference {x}"))), "{failed:?}");
        for p in [&a, &b, &c] {
            let info = target.paths.get(p.digest()).await.unwrap().expect("imported");
            let meta = metas.iter().find(|m| m.path == *p).unwrap();
            assert_eq!((info.nar_size, info.nar_sha256), (meta.nar_size, meta.nar_sha256));
        }
        for p in [&d, &e, &x] {
            assert!(target.paths.get(p.digest()).await.unwrap().is_none(), "{p} became visible");
        }
        let p = progress.borrow().clone();
        assert_eq!((p.paths_done, p.paths_total), (6, 6));

        // Again: the three are skipped, the rest fails the same way.
        let summary = Importer::new(target.clone(), dir).verify(false).import(metas).await.unwrap();
        assert_eq!((summary.imported, summary.skipped, summary.failures.len()), (1, 3, 2), "{summary:?}");
        // (without verification the wrong NarHash of d goes unnoticed)
        assert!(target.paths.get(d.digest()).await.unwrap().is_some());
    }

    #[test]
    fn topological_puts_references_first() {
        // 0 → 1 → 2, 0 → 2, 3 alone, 4 ↔ 5 (a cycle still yields both)
        let edges = vec![vec![1, 2], vec![2], vec![], vec![], vec![5], vec![4]];
        let order: Vec<usize> = topological(&edges).into();
        assert_eq!(order.len(), 6);
        let pos = |n: usize| order.iter().position(|&x| x == n).unwrap();
        assert!(pos(2) < pos(1) && pos(1) < pos(0));
        assert!(order.contains(&3) && order.contains(&4) && order.contains(&5));
    }
}
