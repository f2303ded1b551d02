//! The "copy to root" layer: each copy-to-root store path's tree recreated
//! under `/`, directories as directories and everything else as an absolute
//! symlink into the store path (`/bin/hello` → `/nix/store/…-hello/bin/hello`),
//! plus what containers expect to find: `/tmp`, `/usr/bin/env`, and CA
//! certificates when the closure has them.
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use castore::{B3Digest, Directory, DirectoryService, Node};
use futures::TryStreamExt;
use store::{PathInfo, StorePath};

use crate::error::RegistryError;

/// What the farm puts at a path (relative to `/`, no leading slash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FarmEntry {
    Dir,
    /// `/tmp`: world-writable, sticky.
    TmpDir,
    Symlink(Bytes),
}

/// Where CA bundles are looked for in closure paths, and where they are
/// linked (the names Debian- and Nix-built programs look at).
const CERT_BUNDLE: [&str; 4] = ["etc", "ssl", "certs", "ca-bundle.crt"];
const CERT_LINKS: [&str; 2] = ["etc/ssl/certs/ca-bundle.crt", "etc/ssl/certs/ca-certificates.crt"];

/// The farm's entries, sorted by path. Where two copy-to-root paths put
/// something at the same place, directories merge and otherwise the first
/// path (in the order given) wins.
pub async fn entries(
    copy_to_root: &[StorePath],
    closure: &[PathInfo],
    store_dir: &str,
    directories: &dyn DirectoryService,
) -> Result<BTreeMap<String, FarmEntry>, RegistryError> {
    let infos: HashMap<&StorePath, &PathInfo> = closure.iter().map(|i| (&i.store_path, i)).collect();
    let mut farm = BTreeMap::new();
    for path in copy_to_root {
        let info =
            infos.get(path).ok_or_else(|| RegistryError::internal(format!("{path} is not in the image's closure")))?;
        let Node::Directory { digest, .. } = &info.node else { continue };
        let dirs = fetch_closure(directories, digest).await?;
        let base = path.to_absolute(store_dir);
        let mut stack = vec![(String::new(), *digest)];
        while let Some((prefix, digest)) = stack.pop() {
            let dir = dirs.get(&digest).ok_or_else(|| missing(&digest))?;
            for (name, node) in dir.entries() {
                let rel = format!("{prefix}{}", String::from_utf8_lossy(name.as_bytes()));
                match node {
                    Node::Directory { digest, .. } => {
                        match farm.get(&rel) {
                            None => {
                                farm.insert(rel.clone(), FarmEntry::Dir);
                            }
                            Some(FarmEntry::Dir) => {}
                            Some(_) => continue, // a symlink is there already: it wins
                        }
                        stack.push((format!("{rel}/"), *digest));
                    }
                    _ => {
                        farm.entry(rel.clone()).or_insert_with(|| FarmEntry::Symlink(format!("{base}/{rel}").into()));
                    }
                }
            }
        }
    }
    farm.entry("tmp".into()).or_insert(FarmEntry::TmpDir);
    if !farm.contains_key("usr/bin/env")
        && let Some(env) = find_in_closure(closure, &["bin", "env"], store_dir, directories).await?
    {
        add_link(&mut farm, "usr/bin/env", env);
    }
    if let Some(bundle) = find_in_closure(closure, &CERT_BUNDLE, store_dir, directories).await? {
        for link in CERT_LINKS {
            if !farm.contains_key(link) {
                add_link(&mut farm, link, bundle.clone());
            }
        }
    }
    Ok(farm)
}

/// Adds a symlink and the directories above it, unless a symlink stands
/// where one of those directories would go.
fn add_link(farm: &mut BTreeMap<String, FarmEntry>, path: &str, target: String) {
    let mut parent = String::new();
    for part in path.split('/').take(path.split('/').count() - 1) {
        parent = if parent.is_empty() { part.to_owned() } else { format!("{parent}/{part}") };
        match farm.get(&parent) {
            Some(FarmEntry::Dir | FarmEntry::TmpDir) => {}
            Some(FarmEntry::Symlink(_)) => return,
            None => {
                farm.insert(parent.clone(), FarmEntry::Dir);
            }
        }
    }
    farm.insert(path.to_owned(), FarmEntry::Symlink(target.into()));
}

/// The absolute path of `rel` in the first closure path (by name order)
/// that has it as a file or symlink.
async fn find_in_closure(
    closure: &[PathInfo],
    rel: &[&str],
    store_dir: &str,
    directories: &dyn DirectoryService,
) -> Result<Option<String>, RegistryError> {
    let mut sorted: Vec<&PathInfo> = closure.iter().collect();
    sorted.sort_by(|a, b| a.store_path.cmp(&b.store_path));
    for info in sorted {
        if let Some(node) = lookup(directories, &info.node, rel).await?
            && !matches!(node, Node::Directory { .. })
        {
            return Ok(Some(format!("{}/{}", info.store_path.to_absolute(store_dir), rel.join("/"))));
        }
    }
    Ok(None)
}

/// The node at `rel` below `node`, if there is one.
async fn lookup(directories: &dyn DirectoryService, node: &Node, rel: &[&str]) -> Result<Option<Node>, RegistryError> {
    let mut node = node.clone();
    for part in rel {
        let Node::Directory { digest, .. } = node else { return Ok(None) };
        let dir = directories.get(&digest).await?.ok_or_else(|| missing(&digest))?;
        match dir.entries().find(|(n, _)| n.as_bytes() == part.as_bytes()) {
            Some((_, next)) => node = next.clone(),
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

async fn fetch_closure(
    directories: &dyn DirectoryService,
    root: &B3Digest,
) -> Result<HashMap<B3Digest, Directory>, RegistryError> {
    let dirs: Vec<Directory> = directories.get_recursive(root).try_collect().await?;
    Ok(dirs.into_iter().map(|d| (d.digest(), d)).collect())
}

fn missing(digest: &B3Digest) -> RegistryError {
    RegistryError::internal(format!("directory {digest} is missing from the castore"))
}
