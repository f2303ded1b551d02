//! The ordinary (layered) image with a real containerd (issue 5's
//! acceptance): a Nix closure built offline — a statically linked busybox
//! and a `#!…/busybox sh` script using it — is imported into a server and
//! defined as an image with `storefront image add`; a private containerd
//! 1.7 (see `common/containerd.rs`) pulls it with `ctr image pull
//! --plain-http`, by tag and by digest, and `ctr run` runs it under runc:
//! the entrypoint prints its line, and the image's /nix/store holds exactly
//! the closure.
//!
//! Needs root, containerd 1.7 with `ctr` and runc (`scripts/install-containerd`),
//! Nix (`nix-bin`) and a static busybox at /bin/busybox (Debian
//! `busybox-static`). It fails, never skips, when one is missing.
mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{Server, nix, storefront};
use containerd::Containerd;

const NAMESPACE: &str = "storefront-test";
const GREETING: &str = "hello from a Nix-built program";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Two derivations: the host's static busybox copied into the store, and a
/// script run by it (so the script refers to the busybox path). Built with
/// the sandbox off (the builder reads /bin/busybox).
fn closure_expr() -> String {
    format!(
        r#"
let
{mk}{busybox}in mk "sf-ctr-hello" ''
  set -e
  mkdir -p $out/bin
  printf '#!${{busybox}}/bin/busybox sh\necho "{GREETING}: $*"\n' > $out/bin/hello
  chmod 0555 $out/bin/hello
''
"#,
        mk = nix::mk_binding("storefront-containerd-test-v1"),
        busybox = nix::busybox_binding("sf-ctr-busybox"),
    )
}

/// Panics unless `path` is a statically linked ELF executable (one without
/// a PT_INTERP program header), since it must run in an image that has no
/// dynamic loader.
fn assert_static_elf(path: &Path) {
    let elf = std::fs::read(path).unwrap_or_else(|e| {
        panic!("{}: {e}; install a static busybox there (Debian: apt-get install busybox-static)", path.display())
    });
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF") && elf[4] == 2,
        "{} is not a 64-bit ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let dynamic = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) == 3) // PT_INTERP
    });
    assert!(
        !dynamic,
        "{} is dynamically linked: the image needs a static busybox (Debian: apt-get install busybox-static)",
        path.display()
    );
}

struct Closure {
    /// The script's store path (the top of the closure).
    hello: String,
    busybox: String,
    paths: Vec<String>,
    _gc_root: tempfile::TempDir,
}

fn build_closure() -> Closure {
    assert_static_elf(Path::new(nix::HOST_BUSYBOX));
    let dir = tempfile::tempdir().expect("temp dir");
    let expr = dir.path().join("closure.nix");
    std::fs::write(&expr, closure_expr()).expect("writing closure.nix");
    let out_link: PathBuf = dir.path().join("result");
    let hello = nix::run(
        Command::new(nix::tool("nix-build"))
            .arg(&expr)
            .args(["--option", "sandbox", "false", "--option", "substituters", ""])
            .arg("--out-link")
            .arg(&out_link),
    );
    let hello = hello.trim().to_owned();
    let paths = nix::closure(&hello);
    let busybox = paths.iter().find(|p| p.ends_with("-sf-ctr-busybox")).cloned();
    let busybox = busybox.unwrap_or_else(|| panic!("no busybox in the closure {paths:?}"));
    assert_eq!(paths.len(), 2, "the closure: {paths:?}");
    Closure { hello, busybox, paths, _gc_root: dir }
}

/// Runs a `storefront` subcommand; its stdout, or a panic with both streams.
#[track_caller]
fn storefront_ok(args: &[&str]) -> String {
    let out = nix::output(storefront().args(args));
    assert!(
        out.status.success(),
        "storefront {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DIGEST column of `ctr images ls` for `reference`.
fn listed_digest(ctd: &Containerd, reference: &str) -> Option<String> {
    let list = ctd.ctr_ok(&["images", "ls"]);
    list.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.first() == Some(&reference)).then(|| cols.get(2).map(|d| d.to_string())).flatten()
    })
}

/// Asserts that `ctr run` succeeded and printed `line` (alone on a line).
#[track_caller]
fn assert_ran(run: &(std::process::ExitStatus, String, String), line: &str) {
    let (status, stdout, stderr) = run;
    assert!(
        status.success() && stdout.lines().any(|l| l == line),
        "ctr run exited with {status}; expected the line {line:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         (containerd's log follows)"
    );
}

#[test]
fn containerd_pulls_and_runs_the_layered_image() {
    containerd::assert_root();
    let closure = build_closure();
    let server = Server::start();
    let server_url = format!("http://{}", server.addr);

    let imported = storefront_ok(&["import", "--store", &server.url(), &closure.hello]);
    assert!(imported.contains("imported 2 paths") || imported.contains("already present"), "{imported}");
    let entrypoint = format!("{}/bin/hello", closure.hello);
    let added = storefront_ok(&[
        "image",
        "add",
        "ctr/hello:v1",
        "--path",
        &closure.hello,
        "--entrypoint",
        &entrypoint,
        "--entrypoint",
        "from-containerd",
        "--server",
        &server_url,
    ]);
    // `ordinary   127.0.0.1:PORT/ctr/hello:v1  (sha256:…)`
    let digest = added
        .lines()
        .find(|l| l.starts_with("ordinary"))
        .and_then(|l| l.rsplit_once('(').map(|(_, d)| d.trim_end_matches(')').to_owned()))
        .unwrap_or_else(|| panic!("storefront image add printed no ordinary image:\n{added}"));
    let head = common::head(server.addr, "/v2/ctr/hello/manifests/v1");
    assert_eq!(head.status, 200, "{}", head.describe());
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()), "{}", head.describe());
    assert_eq!(head.header("content-type"), Some(OCI_MANIFEST), "{}", head.describe());

    let ctd = Containerd::start(NAMESPACE);
    eprintln!("{}; containerd in {}", ctd.version, ctd.dir().display());

    // By tag: pulled (content fetched, digests verified, layers unpacked
    // into overlayfs snapshots with their diff IDs checked) and run.
    let by_tag = format!("{}/ctr/hello:v1", server.addr);
    ctd.ctr_ok(&["images", "pull", "--plain-http", &by_tag]);
    assert_eq!(listed_digest(&ctd, &by_tag).as_deref(), Some(digest.as_str()), "containerd's image digest");
    let run = ctd.run(&by_tag, "ctr-test-1", &[]);
    assert_ran(&run, &format!("{GREETING}: from-containerd"));

    // By digest; the image's /nix/store is the closure, nothing more.
    let by_digest = format!("{}/ctr/hello@{digest}", server.addr);
    ctd.ctr_ok(&["images", "pull", "--plain-http", &by_digest]);
    assert_eq!(listed_digest(&ctd, &by_digest).as_deref(), Some(digest.as_str()));
    let busybox = format!("{}/bin/busybox", closure.busybox);
    let run = ctd.run(&by_digest, "ctr-test-2", &[&busybox, "sh", "-c", "echo by-digest; ls /nix/store"]);
    assert_ran(&run, "by-digest");
    let listed: Vec<&str> = run.1.lines().skip_while(|l| *l != "by-digest").skip(1).collect();
    let mut want: Vec<&str> = closure.paths.iter().map(|p| p.trim_start_matches("/nix/store/")).collect();
    want.sort();
    assert_eq!(listed, want, "the image's /nix/store");

    // The entrypoint again, by digest.
    let run = ctd.run(&by_digest, "ctr-test-3", &[&entrypoint, "again"]);
    assert_ran(&run, &format!("{GREETING}: again"));

    // Clean up: no container, task or mount left; the images removed.
    assert_eq!(ctd.ctr_ok(&["containers", "ls", "-q"]).trim(), "", "containers left after ctr run --rm");
    assert_eq!(ctd.ctr_ok(&["tasks", "ls", "-q"]).trim(), "", "tasks left after ctr run --rm");
    assert_eq!(ctd.leftover_mounts(), Vec::<String>::new(), "mounts left after ctr run --rm");
    ctd.ctr_ok(&["images", "rm", "--sync", &by_tag, &by_digest]);
    assert_eq!(ctd.images(), Vec::<String>::new());
}
