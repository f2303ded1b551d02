//! Grouping a closure's store paths into image layers, the way Nixery does.
//!
//! 1. A graph: a synthetic root with an edge to every requested path
//!    (`roots`), an edge from each path to each path it references
//!    (self-references and references outside the closure are ignored),
//!    and an extra root edge to every *big* or *popular* path, so that it
//!    lands in a layer of its own and that layer is shared between images:
//!    - big: a NAR of at least [`BIG_PATH_SIZE`] bytes;
//!    - popular: a popularity above 1 and at least the closure's
//!      [`POPULAR_PERCENTILE`]th percentile (nearest rank over the
//!      closure's popularity values), so roughly the top tenth.
//!
//!    Paths no root reaches (a caller's closure with extras) get a root edge
//!    too, first those no closure path refers to, then any left (cycles),
//!    in path order, so every path is placed.
//! 2. The dominator tree of that graph from the synthetic root (Cooper,
//!    Harvey and Kennedy's iterative algorithm). Each child of the root is a
//!    candidate layer holding itself and everything it dominates: a path
//!    only one package leads to stays in that package's layer, a path
//!    several packages share (or a big or popular one) gets its own.
//! 3. Each candidate is rated popularity of its head × the sum of its NAR
//!    sizes (saturating). Popularity comes from the caller's map, keyed by
//!    store path *name* (the part after the hash, e.g. `glibc-2.40-66`, as
//!    Nixery's popularity data is); a path missing from a non-empty map has
//!    popularity 1; with an empty map, a path's popularity is the number of
//!    closure paths that refer to it (at least 1). Popularity is at least 1.
//! 4. Over the budget, the candidates are sorted by rating and every one
//!    from the budget-th down is merged into a single last layer (rating:
//!    the sum), as Nixery does: the small or unpopular paths share one
//!    layer, the valuable layers stay separate.
//! 5. Layers are returned highest rating first (the merged one too, by its
//!    summed rating); ties go by the layers' first paths.
//!
//! Paths are ordered as Nix orders them: by full path string (the same as by
//! basename, within one store directory). The result depends only on the
//! set of paths, their references, sizes and popularity, never on the order
//! of the inputs.
use std::collections::{HashMap, HashSet};

use store::StorePath;

/// Layers Nixery allows for store paths: 94, plus one for the symlink farm,
/// leaves room under Docker's limit of 125 for images built `FROM` it.
pub const DEFAULT_BUDGET: usize = 94;
/// A path whose NAR is at least this big gets a layer of its own.
pub const BIG_PATH_SIZE: u64 = 16 << 20;
/// Paths at or above this percentile of popularity (and above 1) get a
/// layer of their own.
pub const POPULAR_PERCENTILE: usize = 90;

/// A store path of the closure, with what grouping needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathNode {
    pub path: StorePath,
    pub nar_size: u64,
    /// Referenced paths, as in its PathInfo (self included or not).
    pub references: Vec<StorePath>,
}

/// A layer: its store paths (sorted by full path) and its rating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub paths: Vec<StorePath>,
    /// Popularity × total NAR size; for the merged layer, the sum of the
    /// merged layers' ratings.
    pub rating: u64,
}

/// Groups `closure` into at most `budget` layers (a budget of 0 counts as
/// 1), every path in exactly one layer, highest rating first. `roots` are
/// the requested paths (those not in `closure` are ignored); a path listed
/// twice in `closure` counts once, as first listed. See the module
/// documentation for the algorithm.
pub fn group_layers(
    roots: &[StorePath],
    closure: &[PathNode],
    popularity: &HashMap<String, u64>,
    budget: usize,
) -> Vec<Layer> {
    let graph = Graph::new(roots, closure, popularity);
    let idom = dominators(&graph.succ);

    // Children in the dominator tree; node 0 is the synthetic root.
    let n = graph.succ.len();
    let mut children = vec![Vec::new(); n];
    for v in 1..n {
        children[idom[v]].push(v);
    }
    let mut layers: Vec<(Vec<usize>, u64)> = children[0]
        .iter()
        .map(|&head| {
            let mut members = vec![head];
            let mut i = 0;
            while i < members.len() {
                members.extend_from_slice(&children[members[i]]);
                i += 1;
            }
            members.sort_unstable();
            let size = members.iter().fold(0u64, |s, &m| s.saturating_add(graph.size[m]));
            (members, graph.popularity[head].saturating_mul(size))
        })
        .collect();

    let by_rating = |a: &(Vec<usize>, u64), b: &(Vec<usize>, u64)| b.1.cmp(&a.1).then_with(|| a.0[0].cmp(&b.0[0]));
    layers.sort_by(by_rating);
    let budget = budget.max(1);
    if layers.len() > budget {
        let rest = layers.split_off(budget - 1);
        let mut members: Vec<usize> = rest.iter().flat_map(|(m, _)| m.iter().copied()).collect();
        members.sort_unstable();
        let rating = rest.iter().fold(0u64, |s, (_, r)| s.saturating_add(*r));
        layers.push((members, rating));
        layers.sort_by(by_rating);
    }
    layers
        .into_iter()
        .map(|(members, rating)| Layer { paths: members.iter().map(|&m| graph.paths[m - 1].clone()).collect(), rating })
        .collect()
}

/// The graph of step 1. Node 0 is the synthetic root; node `v ≥ 1` is
/// `paths[v - 1]`, the closure's paths in path order, so sorting node ids
/// sorts paths.
struct Graph {
    paths: Vec<StorePath>,
    size: Vec<u64>,
    popularity: Vec<u64>,
    /// Successors, sorted, without duplicates or self-edges.
    succ: Vec<Vec<usize>>,
}

impl Graph {
    fn new(roots: &[StorePath], closure: &[PathNode], popularity: &HashMap<String, u64>) -> Self {
        let mut nodes: Vec<(String, &PathNode)> = Vec::with_capacity(closure.len());
        let mut seen = HashSet::new();
        for node in closure {
            if seen.insert(&node.path) {
                nodes.push((node.path.to_string(), node));
            }
        }
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let n = nodes.len() + 1;
        let id: HashMap<&StorePath, usize> =
            nodes.iter().enumerate().map(|(i, (_, node))| (&node.path, i + 1)).collect();

        let paths: Vec<StorePath> = nodes.iter().map(|(_, node)| node.path.clone()).collect();
        let mut size = vec![0; n];
        let mut succ = vec![Vec::new(); n];
        let mut referrers = vec![0u64; n];
        for (i, (_, node)) in nodes.iter().enumerate() {
            let v = i + 1;
            size[v] = node.nar_size;
            let mut out: Vec<usize> =
                node.references.iter().filter_map(|r| id.get(r).copied()).filter(|&w| w != v).collect();
            out.sort_unstable();
            out.dedup();
            for &w in &out {
                referrers[w] += 1;
            }
            succ[v] = out;
        }

        let pop: Vec<u64> = (0..n)
            .map(|v| {
                if v == 0 {
                    1
                } else if popularity.is_empty() {
                    referrers[v].max(1)
                } else {
                    popularity.get(paths[v - 1].name()).copied().unwrap_or(1).max(1)
                }
            })
            .collect();
        let threshold = {
            let mut values: Vec<u64> = pop[1..].to_vec();
            values.sort_unstable();
            let rank = (values.len() * POPULAR_PERCENTILE).div_ceil(100);
            values.get(rank.saturating_sub(1)).copied().unwrap_or(u64::MAX)
        };

        let mut top: Vec<usize> = roots.iter().filter_map(|r| id.get(r).copied()).collect();
        top.extend((1..n).filter(|&v| size[v] >= BIG_PATH_SIZE || (pop[v] > 1 && pop[v] >= threshold)));
        top.sort_unstable();
        top.dedup();
        succ[0] = top;

        // Every path reachable: first the unreferenced ones, then the rest.
        let mut reached = vec![false; n];
        reach(&succ, 0, &mut reached);
        for pass in [true, false] {
            for v in 1..n {
                if !reached[v] && (!pass || referrers[v] == 0) {
                    succ[0].push(v);
                    reach(&succ, v, &mut reached);
                }
            }
        }
        succ[0].sort_unstable();

        Self { paths, size, popularity: pop, succ }
    }
}

/// Marks everything reachable from `start`.
fn reach(succ: &[Vec<usize>], start: usize, reached: &mut [bool]) {
    if reached[start] {
        return;
    }
    reached[start] = true;
    let mut stack = vec![start];
    while let Some(v) = stack.pop() {
        for &w in &succ[v] {
            if !reached[w] {
                reached[w] = true;
                stack.push(w);
            }
        }
    }
}

/// Immediate dominators from node 0 (Cooper, Harvey, Kennedy: "A Simple,
/// Fast Dominance Algorithm"), for a graph where 0 reaches every node;
/// `idom[0] == 0`.
fn dominators(succ: &[Vec<usize>]) -> Vec<usize> {
    let n = succ.len();
    // Postorder by an explicit-stack depth-first search.
    let mut order = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    let mut stack = vec![(0usize, 0usize)];
    visited[0] = true;
    while let Some((v, i)) = stack.last_mut() {
        if let Some(&w) = succ[*v].get(*i) {
            *i += 1;
            if !visited[w] {
                visited[w] = true;
                stack.push((w, 0));
            }
        } else {
            order.push(*v);
            stack.pop();
        }
    }
    debug_assert_eq!(order.len(), n, "every node is reachable");
    let mut post = vec![0; n];
    for (i, &v) in order.iter().enumerate() {
        post[v] = i;
    }
    let mut preds = vec![Vec::new(); n];
    for (v, out) in succ.iter().enumerate() {
        for &w in out {
            preds[w].push(v);
        }
    }

    const UNDEFINED: usize = usize::MAX;
    let mut idom = vec![UNDEFINED; n];
    idom[0] = 0;
    let intersect = |idom: &[usize], mut a: usize, mut b: usize| {
        while a != b {
            while post[a] < post[b] {
                a = idom[a];
            }
            while post[b] < post[a] {
                b = idom[b];
            }
        }
        a
    };
    let mut changed = true;
    while changed {
        changed = false;
        for &v in order.iter().rev().skip(1) {
            let mut new = UNDEFINED;
            for &p in &preds[v] {
                if idom[p] != UNDEFINED {
                    new = if new == UNDEFINED { p } else { intersect(&idom, p, new) };
                }
            }
            if idom[v] != new {
                idom[v] = new;
                changed = true;
            }
        }
    }
    idom
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// A store path named `name`, its digest derived from the name.
    fn p(name: &str) -> StorePath {
        let digest: [u8; 32] = Sha256::digest(name.as_bytes()).into();
        StorePath::from_parts(digest[..20].try_into().unwrap(), name).unwrap()
    }

    fn node(name: &str, nar_size: u64, references: &[&str]) -> PathNode {
        PathNode { path: p(name), nar_size, references: references.iter().map(|r| p(r)).collect() }
    }

    /// Each layer's names, sorted by name (layers keep path order, which
    /// follows the hashes).
    fn names(layers: &[Layer]) -> Vec<Vec<&str>> {
        layers
            .iter()
            .map(|l| {
                let mut names: Vec<&str> = l.paths.iter().map(|p| p.name()).collect();
                names.sort_unstable();
                names
            })
            .collect()
    }

    fn ratings(layers: &[Layer]) -> Vec<u64> {
        layers.iter().map(|l| l.rating).collect()
    }

    /// Every closure path in exactly one layer, layers non-empty and sorted
    /// by path, highest rating first.
    fn check_partition(closure: &[PathNode], layers: &[Layer]) {
        let mut seen = HashSet::new();
        for l in layers {
            assert!(!l.paths.is_empty());
            let strings: Vec<String> = l.paths.iter().map(|p| p.to_string()).collect();
            assert!(strings.windows(2).all(|w| w[0] < w[1]), "layer paths sorted by path: {strings:?}");
            for p in &l.paths {
                assert!(seen.insert(p.clone()), "{p} in two layers");
            }
        }
        let all: HashSet<StorePath> = closure.iter().map(|n| n.path.clone()).collect();
        assert_eq!(seen, all, "every path exactly once");
        assert!(layers.windows(2).all(|w| w[0].rating >= w[1].rating), "highest rating first");
    }

    /// A popularity map that knows none of the test's paths: every path
    /// has popularity 1, so nothing is popular.
    fn unpopular() -> HashMap<String, u64> {
        HashMap::from([("not-in-the-closure".to_owned(), 100)])
    }

    /// Two applications, each with private dependencies, sharing one
    /// library: each application's layer holds its private paths, the
    /// shared library (dominated by nothing but the root) has its own.
    #[test]
    fn private_paths_stay_shared_paths_split() {
        let closure = [
            node("app-one", 5 * MIB, &["one-priv", "shared-lib", "app-one"]),
            node("one-priv", MIB, &["one-priv-dep", "shared-lib"]),
            node("one-priv-dep", MIB, &[]),
            node("app-two", 3 * MIB, &["two-priv", "shared-lib"]),
            node("two-priv", MIB, &[]),
            node("shared-lib", 2 * MIB, &[]),
        ];
        let roots = [p("app-one"), p("app-two")];
        let one = vec!["app-one", "one-priv", "one-priv-dep"];
        let two = vec!["app-two", "two-priv"];
        let shared = vec!["shared-lib"];

        // Without a map, shared-lib's popularity is its 3 referrers.
        let layers = group_layers(&roots, &closure, &HashMap::new(), DEFAULT_BUDGET);
        check_partition(&closure, &layers);
        assert_eq!(names(&layers), [one.clone(), shared.clone(), two.clone()]);
        assert_eq!(ratings(&layers), [7 * MIB, 3 * 2 * MIB, 4 * MIB]);

        let layers = group_layers(&roots, &closure, &unpopular(), DEFAULT_BUDGET);
        check_partition(&closure, &layers);
        assert_eq!(names(&layers), [one, two, shared]);
        assert_eq!(ratings(&layers), [7 * MIB, 4 * MIB, 2 * MIB]);
    }

    /// A → B, A → C, B → D, C → D. D is dominated by A alone, so it stays
    /// in A's layer, unless it is popular: without a popularity map its two
    /// referrers make it the closure's most popular path, and it gets a
    /// layer of its own.
    #[test]
    fn diamond() {
        let closure =
            [node("a", MIB, &["b", "c"]), node("b", MIB, &["d"]), node("c", MIB, &["d"]), node("d", MIB, &[])];
        let roots = [p("a")];
        let layers = group_layers(&roots, &closure, &unpopular(), DEFAULT_BUDGET);
        check_partition(&closure, &layers);
        assert_eq!(names(&layers), [vec!["a", "b", "c", "d"]]);
        assert_eq!(ratings(&layers), [4 * MIB]);

        let layers = group_layers(&roots, &closure, &HashMap::new(), DEFAULT_BUDGET);
        check_partition(&closure, &layers);
        assert_eq!(names(&layers), [vec!["a", "b", "c"], vec!["d"]]);
        assert_eq!(ratings(&layers), [3 * MIB, 2 * MIB]);

        // Popularity data that names D does the same; its rating uses it.
        let known = HashMap::from([("d".to_owned(), 100), ("a".to_owned(), 2)]);
        let layers = group_layers(&roots, &closure, &known, DEFAULT_BUDGET);
        assert_eq!(names(&layers), [vec!["d"], vec!["a", "b", "c"]]);
        assert_eq!(ratings(&layers), [100 * MIB, 2 * 3 * MIB]);
    }

    /// A big path deep in one application's tree gets its own layer, with
    /// what only it refers to; just under the size, it stays.
    #[test]
    fn big_path_split_out() {
        let closure = |big: u64| {
            [
                node("app", MIB, &["lib"]),
                node("lib", MIB, &["big"]),
                node("big", big, &["big-dep"]),
                node("big-dep", MIB, &[]),
            ]
        };
        let roots = [p("app")];
        let layers = group_layers(&roots, &closure(BIG_PATH_SIZE), &unpopular(), DEFAULT_BUDGET);
        check_partition(&closure(BIG_PATH_SIZE), &layers);
        assert_eq!(names(&layers), [vec!["big", "big-dep"], vec!["app", "lib"]]);
        assert_eq!(ratings(&layers), [BIG_PATH_SIZE + MIB, 2 * MIB]);

        let layers = group_layers(&roots, &closure(BIG_PATH_SIZE - 1), &unpopular(), DEFAULT_BUDGET);
        assert_eq!(names(&layers), [vec!["app", "big", "big-dep", "lib"]]);
    }

    /// Popularity data in Nixery's style (percentiles): the popular path
    /// under one application is split out; only paths at or above the
    /// 90th percentile count.
    #[test]
    fn popular_path_split_out() {
        let mut closure: Vec<PathNode> = (0..9).map(|i| node(&format!("dep-{i}"), MIB, &[])).collect();
        let deps: Vec<String> = (0..9).map(|i| format!("dep-{i}")).collect();
        let mut refs: Vec<&str> = deps.iter().map(String::as_str).collect();
        refs.push("glibc-2.40");
        closure.push(node("app", MIB, &refs));
        closure.push(node("glibc-2.40", 2 * MIB, &[]));
        let popularity: HashMap<String, u64> =
            (0..9).map(|i| (format!("dep-{i}"), 50 + i)).chain([("glibc-2.40".to_owned(), 100)]).collect();
        let layers = group_layers(&[p("app")], &closure, &popularity, DEFAULT_BUDGET);
        check_partition(&closure, &layers);
        // 11 values: the 90th percentile is the 10th smallest, dep-8's 58.
        let split: Vec<Vec<&str>> = names(&layers);
        assert_eq!(split[0], ["glibc-2.40"]);
        assert_eq!(split.len(), 2 + 1, "glibc and dep-8 split out: {split:?}");
        assert!(split.contains(&vec!["dep-8"]));
        assert_eq!(layers[0].rating, 200 * MIB);
    }

    /// A deterministic DAG of `n` paths, the first `roots` of them roots;
    /// path i refers to up to three later paths.
    fn random_closure(n: usize, seed: u64) -> Vec<PathNode> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        (0..n)
            .map(|i| {
                let refs = if i + 1 < n {
                    (0..next() % 4).map(|_| i + 1 + (next() as usize) % (n - i - 1)).collect()
                } else {
                    vec![]
                };
                PathNode {
                    path: p(&format!("path-{i}")),
                    nar_size: 1 + next() % (4 * MIB),
                    references: refs.iter().map(|j| p(&format!("path-{j}"))).collect(),
                }
            })
            .collect()
    }

    #[test]
    fn budget_is_enforced() {
        let closure = random_closure(300, 7);
        let roots: Vec<StorePath> = closure[..150].iter().map(|n| n.path.clone()).collect();
        let popularity = HashMap::new();
        let all = group_layers(&roots, &closure, &popularity, usize::MAX);
        check_partition(&closure, &all);
        assert!(all.len() > DEFAULT_BUDGET, "the test needs more candidates than the budget: {}", all.len());
        let total: u64 = all.iter().map(|l| l.rating).sum();
        for budget in [DEFAULT_BUDGET, 10, 2, 1, 0] {
            let layers = group_layers(&roots, &closure, &popularity, budget);
            check_partition(&closure, &layers);
            assert_eq!(layers.len(), budget.max(1));
            assert_eq!(layers.iter().map(|l| l.rating).sum::<u64>(), total, "merging keeps the sum of ratings");
            // The best budget-1 candidates are kept as they were.
            for l in &all[..budget.max(1) - 1] {
                assert!(layers.contains(l), "{l:?} kept");
            }
        }
        assert_eq!(group_layers(&roots, &closure, &popularity, 1)[0].paths.len(), 300);
    }

    #[test]
    fn deterministic_whatever_the_input_order() {
        let closure = random_closure(300, 11);
        let roots: Vec<StorePath> = closure[..40].iter().map(|n| n.path.clone()).collect();
        let popularity = HashMap::from([("path-250".to_owned(), 90), ("path-3".to_owned(), 7)]);
        let first = group_layers(&roots, &closure, &popularity, DEFAULT_BUDGET);
        check_partition(&closure, &first);

        let mut shuffled: Vec<PathNode> = closure.iter().rev().cloned().collect();
        shuffled.rotate_left(77);
        for n in &mut shuffled {
            n.references.reverse();
            if let Some(r) = n.references.first().cloned() {
                n.references.push(r);
            }
        }
        let mut roots2 = roots.clone();
        roots2.reverse();
        roots2.push(roots[0].clone());
        assert_eq!(group_layers(&roots2, &shuffled, &popularity, DEFAULT_BUDGET), first);
        assert_eq!(group_layers(&roots, &closure, &popularity, DEFAULT_BUDGET), first);
    }

    /// Self-references, references and roots outside the closure, paths
    /// listed twice, and paths no root reaches (one chain, one cycle).
    #[test]
    fn odd_inputs() {
        let closure = [
            node("app", MIB, &["app", "lib", "elsewhere"]),
            node("lib", MIB, &["lib"]),
            node("app", 99 * MIB, &[]),
            node("orphan", MIB, &["orphan-dep"]),
            node("orphan-dep", MIB, &[]),
            node("cycle-x", MIB, &["cycle-y"]),
            node("cycle-y", MIB, &["cycle-x"]),
        ];
        let layers = group_layers(&[p("app"), p("not-here")], &closure, &unpopular(), DEFAULT_BUDGET);
        check_partition(&closure, &layers);
        let mut sets = names(&layers);
        sets.sort();
        assert_eq!(sets, [vec!["app", "lib"], vec!["cycle-x", "cycle-y"], vec!["orphan", "orphan-dep"]]);
        assert!(layers.iter().all(|l| l.rating == 2 * MIB), "the first `app` counts: {layers:?}");
        assert!(group_layers(&[], &[], &HashMap::new(), DEFAULT_BUDGET).is_empty());
        let alone = group_layers(&[], &closure[..2], &HashMap::new(), DEFAULT_BUDGET);
        assert_eq!(names(&alone), [vec!["app", "lib"]]);
    }

    /// The dominator tree against the definition (d dominates v when v is
    /// unreachable from 0 without d) on random graphs with cycles.
    #[test]
    fn dominators_match_the_definition() {
        let mut state = 3u64;
        let mut next = move |m: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize % m
        };
        for _ in 0..50 {
            let n = 2 + next(40);
            let mut succ: Vec<Vec<usize>> = (0..n).map(|_| (0..next(4)).map(|_| next(n)).collect()).collect();
            // Make everything reachable: a spanning chain of random parents.
            for v in 1..n {
                let parent = next(v);
                succ[parent].push(v);
            }
            for (v, out) in succ.iter_mut().enumerate() {
                out.retain(|&w| w != v && w != 0);
                out.sort_unstable();
                out.dedup();
            }
            let idom = dominators(&succ);
            for v in 1..n {
                let mut chain = HashSet::new();
                let mut d = idom[v];
                loop {
                    chain.insert(d);
                    if d == 0 {
                        break;
                    }
                    d = idom[d];
                }
                for d in 0..n {
                    if d == v {
                        continue;
                    }
                    let mut reached = vec![false; n];
                    reached[d] = d != 0; // blocked
                    if d != 0 {
                        reach(&succ, 0, &mut reached);
                    }
                    let dominates = d == 0 || !reached[v];
                    assert_eq!(chain.contains(&d), dominates, "n={n} v={v} d={d} succ={succ:?} idom={idom:?}");
                }
            }
        }
    }
}
