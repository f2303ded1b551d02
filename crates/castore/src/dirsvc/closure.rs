//! Validation of a directory closure sent leaves first, root last.
use std::collections::{HashMap, HashSet};

use crate::{B3Digest, Directory, Error, Result};

/// Checks a closure and returns each directory's digest (same order).
///
/// `stored` answers for children not in `dirs`: it returns the stored
/// directory, or `None` when it does not exist. Checked: the stream is not
/// empty; every child is earlier in the stream or stored, with a `size` that
/// fits it under either formula; every directory is reachable from the last
/// one (the root).
pub async fn validate_closure<F, Fut>(dirs: &[Directory], stored: F) -> Result<Vec<B3Digest>>
where
    F: Fn(B3Digest) -> Fut,
    Fut: Future<Output = Result<Option<Directory>>>,
{
    if dirs.is_empty() {
        return Err(Error::InvalidRequest("empty directory stream: nothing to put".into()));
    }
    let digests: Vec<B3Digest> = dirs.iter().map(Directory::digest).collect();
    let mut seen: HashMap<B3Digest, usize> = HashMap::with_capacity(dirs.len());
    for (i, dir) in dirs.iter().enumerate() {
        for (name, child, size) in dir.directories() {
            let fits = match seen.get(&child) {
                Some(&j) => dirs[j].size_matches(size),
                None => match stored(child).await? {
                    Some(c) => c.size_matches(size),
                    None => {
                        return Err(Error::InvalidRequest(format!(
                            "directory {} refers to unknown directory {child} (entry {name:?}); \
                             send children before their parents",
                            digests[i]
                        )));
                    }
                },
            };
            if !fits {
                return Err(Error::InvalidRequest(format!(
                    "directory {} records size {size} for child {child} (entry {name:?}), \
                     which fits neither size formula",
                    digests[i]
                )));
            }
        }
        seen.entry(digests[i]).or_insert(i);
    }

    // Everything sent must hang below the root.
    let mut reachable = HashSet::from([digests[dirs.len() - 1]]);
    let mut queue = vec![dirs.len() - 1];
    while let Some(i) = queue.pop() {
        for (_, child, _) in dirs[i].directories() {
            if let Some(&j) = seen.get(&child)
                && reachable.insert(child)
            {
                queue.push(j);
            }
        }
    }
    if let Some(stray) = digests.iter().find(|d| !reachable.contains(d)) {
        return Err(Error::InvalidRequest(format!(
            "directory {stray} is not below the root {} (the last directory sent)",
            digests[dirs.len() - 1]
        )));
    }
    Ok(digests)
}
