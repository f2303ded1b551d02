//! Helpers for the `storefront fetch` tests: running the command, checking
//! that a fetched tree is what Nix has (contents, modes, mtime 1, NAR
//! hash), and that a failed fetch left nothing half-written.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use super::{
    Server,
    nix::{STORE_DIR, output, run, tool},
    storefront,
};

/// `storefront fetch ARGS…` (standard input closed), its output.
pub fn fetch(args: &[&str]) -> Output {
    storefront().arg("fetch").args(args).stdin(Stdio::null()).output().expect("running storefront fetch")
}

/// `storefront import --store URL PATHS…`, which must succeed.
pub fn import(server: &Server, paths: &[String]) {
    let out = storefront()
        .args(["import", "--store", &server.url()])
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .expect("running storefront import");
    assert!(out.status.success(), "storefront import failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Stdout of a successful run; a panic with both streams otherwise.
#[track_caller]
pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "storefront fetch failed with {}:\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Stderr of a failed run, which must mention every needle.
#[track_caller]
pub fn failed(out: Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "storefront fetch should have failed; stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(stderr.contains(n), "the error does not mention {n:?}:\n{stderr}");
    }
    stderr
}

/// The numbers of a summary line: (fetched, already present).
pub fn counts(summary: &str) -> (u64, u64) {
    let n = |after: &str| -> u64 {
        let at = summary.find(after).unwrap_or_else(|| panic!("no {after:?} in {summary:?}"));
        summary[..at].split_whitespace().last().unwrap().parse().unwrap()
    };
    let fetched =
        summary.strip_prefix("fetched ").and_then(|s| s.split_whitespace().next()).map(|n| n.parse().unwrap());
    (fetched.unwrap_or_else(|| panic!("not a summary: {summary:?}")), n(" already present"))
}

/// The text before `what` in a summary line (`12.0 MiB` before ` downloaded`).
pub fn amount<'a>(summary: &'a str, what: &str) -> &'a str {
    let at = summary.find(what).unwrap_or_else(|| panic!("no {what:?} in {summary:?}"));
    let before = &summary[..at];
    let start = before.rfind(['(', ';', ',']).map(|i| i + 1).unwrap_or(0);
    before[start..].trim()
}

/// Names in a directory, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// `nix-store --dump PATH | sha256sum`: the NAR hash of any tree, as hex.
pub fn nar_sha256_hex(path: &Path) -> String {
    let script = "set -o pipefail; nix-store --dump \"$1\" | sha256sum";
    let out = run(Command::new("bash").args(["-c", script, "bash"]).arg(path));
    out.split_whitespace().next().expect("sha256sum output").to_owned()
}

/// Nix's NarHash of a valid store path, as hex.
pub fn nix_nar_hash_hex(store_path: &str) -> String {
    let nix32 = run(Command::new(tool("nix-store")).args(["-q", "--hash", store_path])).trim().to_owned();
    let hash = store::NixHash::parse(&nix32).expect("nix-store -q --hash");
    hash.to_base16_string().trim_start_matches("sha256:").to_owned()
}

/// Checks that `fetched` (a tree written by the fetcher) is the store path
/// `original`: `diff -r`, symlinks as links; Nix's modes (files 0444, or
/// 0555 when executable; directories 0555) and mtime 1 on every entry,
/// symlinks included; and the NAR of the tree is the NarHash Nix recorded.
pub fn assert_like_store_path(fetched: &Path, original: &str) {
    let diff = output(Command::new(tool("diff")).args(["-r", "--no-dereference"]).arg(original).arg(fetched));
    assert!(
        diff.status.success(),
        "{} differs from {original}:\n{}{}",
        fetched.display(),
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    assert_nix_layout(fetched);
    assert_eq!(nar_sha256_hex(fetched), nix_nar_hash_hex(original), "NAR hash of {}", fetched.display());
}

/// Nix's modes and mtime 1 on every entry of a tree.
pub fn assert_nix_layout(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.mode() & 0o7777;
        let want = if meta.is_symlink() {
            0o777
        } else if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            0o555
        } else if meta.mode() & 0o100 != 0 {
            0o555
        } else {
            0o444
        };
        assert_eq!(mode, want, "mode of {}", p.display());
        assert_eq!(meta.mtime(), 1, "mtime of {}", p.display());
    }
}

/// After a failed fetch into `dir`: no temporary trees, nothing named
/// `forbidden`, and every entry is a whole, correct store path.
pub fn assert_nothing_half_written(dir: &Path, forbidden: &[&str]) {
    for name in entries(dir) {
        assert!(!name.starts_with('.'), "a temporary tree was left behind in {}: {name}", dir.display());
        assert!(!forbidden.iter().any(|f| name.ends_with(f)), "{name} was written in {}", dir.display());
        let original = format!("{STORE_DIR}/{name}");
        assert_like_store_path(&dir.join(&name), &original);
    }
}

/// A script running `storefront fetch --nix-snapshotter-builder "$@"`, what
/// nix-snapshotter's `external_builder` points at (it runs `<exe> <outLink>
/// <storePath>`).
pub fn builder_script(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("storefront-nix-builder");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec {} fetch --nix-snapshotter-builder \"$@\"\n", env!("CARGO_BIN_EXE_storefront")),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Deletes store paths from the host Nix store (they must be unreferenced
/// and rootless: paths of a closure only the calling test builds).
pub fn nix_delete(paths: &[String]) {
    run(Command::new(tool("nix-store")).arg("--delete").args(paths));
    for p in paths {
        assert!(!Path::new(p).exists(), "{p} is still there after nix-store --delete");
    }
}

/// Whether Nix knows `path` as valid.
pub fn nix_valid(path: &str) -> bool {
    output(Command::new(tool("nix-store")).args(["--check-validity", path])).status.success()
}

/// The closure's paths by name suffix (`-sf-fixture-data` → its path).
pub fn path_named<'a>(paths: &'a [String], suffix: &str) -> &'a str {
    paths.iter().find(|p| p.ends_with(suffix)).unwrap_or_else(|| panic!("no {suffix} in {paths:?}"))
}
