//! Closures: a set of store paths plus everything they reference,
//! transitively, as recorded in PathInfo.
use std::collections::{HashMap, HashSet};

use castore::{Error, Result};
use futures::{StreamExt, stream::FuturesUnordered};

use super::{PathInfo, PathInfoService};
use crate::{StorePath, store_path::DIGEST_LEN};

/// PathInfo lookups in flight while walking a closure.
const PARALLEL_GETS: usize = 32;

/// The closure of `roots`, references before the paths that refer to them
/// (so putting them in this order satisfies every reference check).
///
/// Fails with `NotFound` naming every path that is missing, whether a root
/// or a reference (the latter means the store is inconsistent). One call of
/// [`PathInfoService::closure`]: over gRPC, one round trip where the server
/// has storefront's batch call.
pub async fn closure(paths: &dyn PathInfoService, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
    let digests: Vec<[u8; DIGEST_LEN]> = roots.iter().map(|r| *r.digest()).collect();
    match paths.closure(&digests).await {
        Ok(infos) => Ok(references_first(infos)),
        // A missing root is named by its hash alone: give its whole name.
        Err(Error::NotFound(m)) => Err(Error::NotFound(
            roots.iter().fold(m, |m, r| m.replace(&crate::nix32::encode(r.digest()), &r.to_string())),
        )),
        Err(e) => Err(e),
    }
}

/// Walks the closure of the paths with digests `roots` with
/// [`PathInfoService::get`], several lookups at a time: each path once, in
/// no particular order.
pub(crate) async fn walk<P: PathInfoService + ?Sized>(paths: &P, roots: &[[u8; DIGEST_LEN]]) -> Result<Vec<PathInfo>> {
    // A path is named by its digest alone until a reference gives its name.
    let mut seen: HashSet<[u8; DIGEST_LEN]> = roots.iter().copied().collect();
    let mut queue: Vec<([u8; DIGEST_LEN], String)> = seen.iter().map(|d| (*d, crate::nix32::encode(d))).collect();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut pending: FuturesUnordered<_> = FuturesUnordered::new();
    loop {
        while pending.len() < PARALLEL_GETS
            && let Some((digest, name)) = queue.pop()
        {
            pending.push(async move { (paths.get(&digest).await, name) });
        }
        let Some((result, name)) = pending.next().await else { break };
        match result? {
            Some(info) => {
                for r in &info.references {
                    if seen.insert(*r.digest()) {
                        queue.push((*r.digest(), r.to_string()));
                    }
                }
                found.push(info);
            }
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(Error::NotFound(format!("not in the store: {}", missing.join(", "))));
    }
    Ok(found)
}

/// Checks that `infos`, a closure some server sent for `roots`, is exactly
/// that: each path once, every root and every reference present, nothing
/// that no root reaches.
pub(crate) fn check_exact(roots: &[[u8; DIGEST_LEN]], infos: &[PathInfo]) -> Result<()> {
    let mut by_digest: HashMap<&[u8; DIGEST_LEN], &PathInfo> = HashMap::with_capacity(infos.len());
    for info in infos {
        if by_digest.insert(info.store_path.digest(), info).is_some() {
            return Err(Error::Storage(format!("the server sent {} twice in a closure", info.store_path)));
        }
    }
    let mut reached: HashSet<&[u8; DIGEST_LEN]> = HashSet::with_capacity(infos.len());
    let mut stack: Vec<&[u8; DIGEST_LEN]> = roots.iter().collect();
    while let Some(digest) = stack.pop() {
        if !reached.insert(digest) {
            continue;
        }
        let Some(info) = by_digest.get(digest) else {
            return Err(Error::Storage(format!("the server's closure lacks {}", crate::nix32::encode(digest))));
        };
        stack.extend(info.references.iter().map(StorePath::digest));
    }
    if let Some(stray) = infos.iter().find(|i| !reached.contains(i.store_path.digest())) {
        return Err(Error::Storage(format!(
            "the server's closure holds {}, which no path asked for reaches",
            stray.store_path
        )));
    }
    Ok(())
}

/// Orders `infos` so that every path comes after the paths it references
/// that are in the set (self-references and references outside the set are
/// ignored). Ties are broken by store path, so the order is deterministic.
pub fn references_first(mut infos: Vec<PathInfo>) -> Vec<PathInfo> {
    infos.sort_by(|a, b| a.store_path.cmp(&b.store_path));
    let index: HashMap<&StorePath, usize> = infos.iter().enumerate().map(|(i, p)| (&p.store_path, i)).collect();
    // Depth-first post-order with an explicit stack (closures can be deep).
    let mut state = vec![0u8; infos.len()]; // 0 new, 1 on the stack, 2 done
    let mut order = Vec::with_capacity(infos.len());
    for start in 0..infos.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((node, next)) = stack.last_mut() {
            let refs = &infos[*node].references;
            if let Some(r) = refs.get(*next) {
                *next += 1;
                if let Some(&child) = index.get(r)
                    && state[child] == 0
                {
                    state[child] = 1;
                    stack.push((child, 0));
                }
            } else {
                state[*node] = 2;
                order.push(*node);
                stack.pop();
            }
        }
    }
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    order.into_iter().map(|i| slots[i].take().expect("each path once")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pathinfo::test_info as info, url::path_info_service_from_url};

    fn assert_references_first(order: &[PathInfo]) {
        let pos: HashMap<_, _> = order.iter().enumerate().map(|(i, p)| (&p.store_path, i)).collect();
        for (i, p) in order.iter().enumerate() {
            for r in &p.references {
                if let Some(&j) = pos.get(r) {
                    assert!(j <= i, "{} comes before its reference {r}", p.store_path);
                }
            }
        }
    }

    #[tokio::test]
    async fn walks_references_and_orders_them() {
        let blobs = castore::blob_service_from_url("memory:").unwrap();
        let dirs = castore::directory_service_from_url("memory:").unwrap();
        let paths = path_info_service_from_url("memory:", blobs, dirs).unwrap();
        // 1 ← 2 ← 3 (3 refers to itself too), 1 ← 4, 5 unrelated.
        for i in [info(1, &[]), info(2, &[1]), info(3, &[2, 3, 1]), info(4, &[1]), info(5, &[])] {
            paths.put(i).await.unwrap();
        }
        let root = info(3, &[]).store_path;
        let got = closure(&*paths, &[root]).await.unwrap();
        let mut names: Vec<String> = got.iter().map(|p| p.store_path.name().to_owned()).collect();
        assert_references_first(&got);
        names.sort();
        assert_eq!(names, ["p1", "p2", "p3"]);

        let missing = info(9, &[]).store_path;
        match closure(&*paths, std::slice::from_ref(&missing)).await {
            Err(Error::NotFound(m)) => assert!(m.contains(&missing.to_string()), "{m}"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn deep_chains_do_not_overflow() {
        // 250 paths, each referring to the previous one, given newest first.
        let chain: Vec<PathInfo> =
            (1..=250u8).rev().map(|i| if i > 1 { info(i, &[i - 1]) } else { info(1, &[]) }).collect();
        let order = references_first(chain);
        assert_eq!(order.len(), 250);
        assert_references_first(&order);
        assert_eq!(order[0].store_path.digest()[0], 1);
    }
}
