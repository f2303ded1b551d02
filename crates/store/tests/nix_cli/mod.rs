//! Runs the real Nix for the interop tests. Nix must be installed (CI
//! installs it): these tests fail, rather than skip, without it, so a
//! broken setup cannot pass for compatibility.
#![allow(dead_code)] // each test file uses its own part

use std::{
    path::Path,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

/// Runs a Nix command and returns its stdout; `nix` gets the experimental
/// `nix-command` feature. Panics with the command and its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = try_run(program, args);
    assert!(out.0, "`{program} {}` failed:\n{}", args.join(" "), out.2);
    out.1
}

/// Runs a Nix command: (succeeded, stdout, stderr).
pub fn try_run(program: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(program);
    if program == "nix" {
        cmd.args(["--extra-experimental-features", "nix-command"]);
    }
    let out = cmd.args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{program}` ({e}): these tests check compatibility against the real Nix; install Nix")
    });
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// A string no earlier run used, so each run makes fresh store paths (and
/// signatures from earlier runs cannot mix in).
pub fn nonce() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Store paths for a test: two files added as fixed-output paths and a
/// `builtins.toFile` text path referring to both, so it has references
/// (whose string order differs from their digest order in most runs).
/// Returns (text path, [file paths]).
pub fn make_paths(dir: &Path) -> (String, Vec<String>) {
    let nonce = nonce();
    let files: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| {
            let file = dir.join(n);
            std::fs::write(&file, format!("{n} {nonce}\n")).unwrap();
            run("nix-store", &["--add", file.to_str().unwrap()]).trim().to_owned()
        })
        .collect();
    let expr = format!(
        r#"builtins.toFile "storefront-test" "${{builtins.storePath "{}"}} ${{builtins.storePath "{}"}}""#,
        files[0], files[1]
    );
    let out = run("nix-instantiate", &["--eval", "--read-write-mode", "--json", "-E", &expr]);
    let text: String = serde_json::from_str(&out).unwrap();
    (text, files)
}

/// `nix path-info --json --sigs` of one path.
pub fn path_info(path: &str) -> serde_json::Value {
    let out = run("nix", &[&["path-info", "--json", "--sigs"], derivation_flag(path), &[path]].concat());
    let mut all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(all.len(), 1, "{out}");
    all.remove(0)
}

/// For a `.drv`, the flag that makes a `nix` command mean the file itself
/// rather than its outputs (which it would otherwise build).
pub fn derivation_flag(path: &str) -> &'static [&'static str] {
    if path.ends_with(".drv") { &["--derivation"] } else { &[] }
}

/// The store directory a path is in.
pub fn store_dir(path: &str) -> &str {
    path.rsplit_once('/').unwrap().0
}
