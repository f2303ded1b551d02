//! The real Nix, for tests: a small offline closure built with `nix-build`,
//! and what Nix says about store paths (`nix path-info --json`,
//! `nix-store -q`). Tests that need Nix fail with a clear message when a
//! tool is missing (CI installs `nix-bin`); they never skip.
//!
//! The fixture is built once per test process and kept alive by a GC root
//! in a temporary directory ([`Fixture::gc_root`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use serde_json::Value;
use tempfile::TempDir;

/// The default store directory, where the fixture is built.
pub const STORE_DIR: &str = "/nix/store";

/// `mk = name: script: …;`, the Nix binding the tests' offline closures
/// build with: a derivation running `script` with the host's `/bin/sh`
/// (the sandbox is off), `salt` making its paths unique to one caller.
pub fn mk_binding(salt: &str) -> String {
    format!(
        r#"  mk = name: script: derivation {{
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
    salt = "{salt}";
  }};
"#
    )
}

/// Where Debian's `busybox-static` puts its binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// `busybox = mk "NAME" …;`, a binding (after [`mk_binding`]) of a
/// derivation holding the host's static busybox as `$out/bin/busybox`: a
/// shell for images that have none. Its builder reads [`HOST_BUSYBOX`], so
/// the sandbox must be off.
pub fn busybox_binding(name: &str) -> String {
    format!(
        r#"  busybox = mk "{name}" ''
    set -e
    mkdir -p $out/bin
    cp {HOST_BUSYBOX} $out/bin/busybox
    chmod 0555 $out/bin/busybox
  '';
"#
    )
}

/// The fixture's Nix expression: five derivations with files, executables,
/// relative, absolute and dangling symlinks, empty files and directories,
/// nested directories, a multi-MiB file, a single-file output, an output
/// that is a symlink, references between them and a self-reference.
/// `salt` makes every store path unique to a caller that needs fresh ones.
pub fn fixture_expr(salt: &str) -> String {
    format!(
        r#"
let
{mk}  leaf = mk "sf-fixture-leaf" ''printf 'a single file\n' > $out'';
  data = mk "sf-fixture-data" ''
    set -e
    mkdir -p $out/share/doc/deep/deeper $out/bin $out/empty-dir
    echo hello > $out/share/doc/README
    : > $out/share/empty-file
    seq 1 1500000 > $out/share/big.txt
    head -c 300000 /dev/zero | tr '\0' 'x' > $out/share/doc/deep/deeper/x
    printf '#!/bin/sh\necho hi\n' > $out/bin/hello
    chmod +x $out/bin/hello
    ln -s ../share/doc/README $out/bin/readme-link
    ln -s hello $out/bin/hi
    ln -s /nonexistent/dangling $out/dangling
  '';
  app = mk "sf-fixture-app" ''
    set -e
    mkdir -p $out/bin $out/lib
    ln -s ${{data}}/bin/hello $out/bin/hello
    ln -s ${{leaf}} $out/lib/leaf
    echo "uses ${{data}}" > $out/lib/config
    echo "$out" > $out/lib/self
    cp ${{data}}/bin/hello $out/bin/own-script
  '';
  link = mk "sf-fixture-link" ''ln -s ${{app}}/bin/hello $out'';
in mk "sf-fixture-top" ''
  set -e
  mkdir $out
  echo ${{app}} ${{link}} ${{leaf}} > $out/refs
''
"#,
        mk = mk_binding(salt),
    )
}

/// A built closure.
pub struct Fixture {
    /// The top store path (absolute).
    pub top: String,
    /// Every path of the closure (absolute), as `nix-store -qR` lists them.
    pub paths: Vec<String>,
    /// A GC-root symlink to `top`, like `./result`.
    pub gc_root: PathBuf,
    _dir: TempDir,
}

impl Fixture {
    /// The closure's paths with references before the paths naming them.
    pub fn topological(&self) -> Vec<String> {
        let refs: HashMap<String, Vec<String>> =
            self.paths.iter().map(|p| (p.clone(), references(p).into_iter().filter(|r| r != p).collect())).collect();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        while out.len() < self.paths.len() {
            let before = out.len();
            for p in &self.paths {
                if !done.contains(p) && refs[p].iter().all(|r| done.contains(r)) {
                    done.insert(p.clone());
                    out.push(p.clone());
                }
            }
            assert!(out.len() > before, "reference cycle in {:?}", self.paths);
        }
        out
    }
}

/// The shared fixture closure, built on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| build_fixture("storefront-tests-v1"))
}

/// Builds [`fixture_expr`] with `salt` (see there) and returns the closure.
pub fn build_fixture(salt: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let expr = dir.path().join("fixture.nix");
    std::fs::write(&expr, fixture_expr(salt)).expect("writing fixture.nix");
    let gc_root = dir.path().join("result");
    let top = run(Command::new(tool("nix-build"))
        .arg(&expr)
        .args(["--option", "sandbox", "false", "--option", "substituters", ""])
        .arg("--out-link")
        .arg(&gc_root));
    let top = top.trim().to_owned();
    assert!(top.starts_with(STORE_DIR), "nix-build printed {top:?}");
    let paths = closure(&top);
    assert!(paths.len() >= 5, "the fixture closure has {} paths: {paths:?}", paths.len());
    Fixture { top, paths, gc_root, _dir: dir }
}

/// The path of a tool, or a panic that says how to get it.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: these tests need the real Nix (Debian: apt-get install nix-bin) and diffutils"
        )
    })
}

/// Runs a command; panics with its stderr unless it succeeds; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed with {}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs a command and returns its output, whatever its status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn lines(s: &str) -> Vec<String> {
    s.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// What Nix says about one store path, from both of its interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixInfo {
    pub path: String,
    /// `nix path-info --json` narHash, as printed (SRI on Nix 2.8).
    pub nar_hash_json: String,
    /// `nix-store -q --hash`: `sha256:<nix32>`.
    pub nar_hash_nix32: String,
    pub nar_size: u64,
    /// Absolute, sorted.
    pub references: BTreeSet<String>,
    pub deriver: Option<String>,
    pub signatures: Vec<String>,
    pub ca: Option<String>,
}

/// `nix path-info --json` for `paths` (no closure), by path.
pub fn path_info_json(paths: &[String]) -> BTreeMap<String, Value> {
    let out = run(Command::new(tool("nix"))
        .args(["--extra-experimental-features", "nix-command", "path-info", "--json", "--offline"])
        .args(paths));
    let json: Value = serde_json::from_str(&out).expect("path-info JSON");
    match json {
        Value::Array(items) => items.into_iter().map(|i| (i["path"].as_str().expect("path").to_owned(), i)).collect(),
        Value::Object(map) => map.into_iter().collect(),
        other => panic!("unexpected path-info output {other}"),
    }
}

/// `nix-store -qR`: the closure of `path`.
pub fn closure(path: &str) -> Vec<String> {
    lines(&run(Command::new(tool("nix-store")).args(["-qR", path])))
}

/// `nix-store -q --references`.
pub fn references(path: &str) -> Vec<String> {
    lines(&run(Command::new(tool("nix-store")).args(["-q", "--references", path])))
}

/// What Nix says about each of `paths`, checking that its two interfaces agree.
pub fn nix_info(paths: &[String]) -> BTreeMap<String, NixInfo> {
    let json = path_info_json(paths);
    paths
        .iter()
        .map(|p| {
            let j = json.get(p).unwrap_or_else(|| panic!("nix path-info said nothing about {p}"));
            let q = |flag: &str| run(Command::new(tool("nix-store")).args(["-q", flag, p])).trim().to_owned();
            let size: u64 = q("--size").parse().expect("nix-store -q --size");
            assert_eq!(j["narSize"].as_u64(), Some(size), "{p}: path-info and nix-store disagree on the size");
            let refs: BTreeSet<String> = references(p).into_iter().collect();
            let json_refs: BTreeSet<String> =
                j["references"].as_array().expect("references").iter().map(|r| abs(r.as_str().unwrap())).collect();
            assert_eq!(json_refs, refs, "{p}: path-info and nix-store disagree on the references");
            let deriver = q("--deriver");
            let deriver = (deriver != "unknown-deriver").then_some(deriver);
            assert_eq!(j["deriver"].as_str().map(abs), deriver, "{p}: deriver");
            let info = NixInfo {
                path: p.clone(),
                nar_hash_json: j["narHash"].as_str().expect("narHash").to_owned(),
                nar_hash_nix32: q("--hash"),
                nar_size: size,
                references: refs,
                deriver,
                signatures: j["signatures"]
                    .as_array()
                    .map(|s| s.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default(),
                ca: j["ca"].as_str().map(str::to_owned),
            };
            (p.clone(), info)
        })
        .collect()
}

fn abs(p: &str) -> String {
    if p.starts_with('/') { p.to_owned() } else { format!("{STORE_DIR}/{p}") }
}

/// `nix-store --dump PATH`: the NAR Nix makes of a path.
pub fn dump(path: &str) -> Vec<u8> {
    let out = output(Command::new(tool("nix-store")).args(["--dump", path]));
    assert!(out.status.success(), "nix-store --dump {path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `nix-store --export PATHS…`.
pub fn export(paths: &[String]) -> Vec<u8> {
    let out = output(Command::new(tool("nix-store")).arg("--export").args(paths));
    assert!(out.status.success(), "nix-store --export: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Unpacks `nar` with `nix-store --restore` at `dest` (which must not
/// exist) and compares the tree with `original` using `diff -r` (symlinks
/// compared as links).
pub fn restore_and_diff(nar: &[u8], dest: &Path, original: &str) {
    use std::io::Write;
    let mut child = Command::new(tool("nix-store"))
        .arg("--restore")
        .arg(dest)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nix-store --restore");
    child.stdin.take().expect("stdin").write_all(nar).expect("writing the NAR to nix-store --restore");
    let out = child.wait_with_output().expect("nix-store --restore");
    assert!(out.status.success(), "nix-store --restore of {original}: {}", String::from_utf8_lossy(&out.stderr));
    let diff = output(Command::new(tool("diff")).args(["-r", "--no-dereference"]).arg(original).arg(dest));
    assert!(
        diff.status.success(),
        "{original} differs from what we rendered:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}

/// `nix copy --to file://DIR?compression=none PATHS…`: a binary cache
/// directory with `<hash>.narinfo` and `nar/<filehash>.nar` files.
pub fn copy_to_file_cache(paths: &[String], dir: &Path) {
    run(Command::new(tool("nix"))
        .args(["--extra-experimental-features", "nix-command", "copy", "--offline", "--to"])
        .arg(format!("file://{}?compression=none", dir.display()))
        .args(paths));
}
