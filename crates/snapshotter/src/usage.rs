//! Disk usage of a snapshot's directory, counted as containerd does:
//! allocated blocks (not apparent sizes) and inodes, each inode once
//! however many hard links it has, the directory itself included.
use std::{collections::HashSet, os::unix::fs::MetadataExt, path::Path};

use crate::meta::Usage;

pub fn disk_usage(root: &Path) -> std::io::Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(usage)
}
