//! The snapshotter with a real containerd 1.7 and runc (issue 6's
//! acceptance): `storefront serve` over TLS holds a Nix closure built here
//! (a static busybox, a multi-MiB single-file path, a script using both);
//! `storefront snapshotter` runs as containerd's proxy snapshotter with no
//! Nix anywhere near it (its PATH is empty); `ctr image pull --local=false
//! --snapshotter storefront` of the nix-snapshotter image makes the
//! snapshotter fetch the closure over gRPC, and `ctr run` runs the script,
//! which reads the big file through the bind-mounted store paths. A second
//! image pushed here — an ordinary busybox base layer, then a nix layer —
//! runs a busybox command reading a store path. Removing the images
//! releases the store paths: shared ones only once no snapshot roots them.
//!
//! Needs root, containerd 1.7 with `ctr` and runc (`scripts/install-containerd`),
//! Nix (`nix-bin`, on the test side only), GNU tar, md5sum and a static
//! busybox at /bin/busybox (Debian `busybox-static`). It fails, never
//! skips, when one is missing.
mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::{
    collections::BTreeSet,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Server, nix, storefront, tls};
use containerd::Containerd;
use serde_json::{Value, json};

const NAMESPACE: &str = "sf-snapshotter-test";
const SNAPSHOTTER: &str = "storefront";
const GREETING: &str = "hello through the storefront snapshotter";
const NOTE: &str = "a note fetched over gRPC";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const NIX_CLOSURE: &str = "containerd.io/snapshot/nix-closure";
/// How long containerd's garbage collection gets to reach the snapshotter.
const RELEASE_DEADLINE: Duration = Duration::from_secs(60);

/// Four derivations: the host's static busybox copied into the store, a
/// ~6 MB single-file path, a script run by that busybox printing a
/// greeting and the big file's MD5, and a note (a directory with a text
/// file) for the second image. Built with the sandbox off (the builder
/// reads /bin/busybox).
fn closure_expr() -> String {
    format!(
        r#"
let
{mk}{busybox}  blob = mk "sf-snap-blob" ''seq 1 800000 > $out'';
  note = mk "sf-snap-note" ''
    set -e
    mkdir -p $out
    echo "{NOTE}" > $out/greeting
  '';
  hello = mk "sf-snap-hello" ''
    set -e
    mkdir -p $out/bin
    printf '#!${{busybox}}/bin/busybox sh\necho "{GREETING}: $*"\n${{busybox}}/bin/busybox md5sum ${{blob}}\n' > $out/bin/hello
    chmod 0555 $out/bin/hello
  '';
in {{ inherit hello note; }}
"#,
        mk = nix::mk_binding("storefront-snapshotter-test-v1"),
        busybox = nix::busybox_binding("sf-snap-busybox"),
    )
}

struct Closure {
    hello: String,
    blob: String,
    /// hello's closure (hello, busybox, blob).
    paths: Vec<String>,
    note: String,
    _gc_root: tempfile::TempDir,
}

fn build_closure() -> Closure {
    let dir = tempfile::tempdir().expect("temp dir");
    let expr = dir.path().join("closure.nix");
    std::fs::write(&expr, closure_expr()).expect("writing closure.nix");
    let built = nix::run(
        Command::new(nix::tool("nix-build"))
            .arg(&expr)
            .args(["--option", "sandbox", "false", "--option", "substituters", ""])
            .arg("--out-link")
            .arg(dir.path().join("result")),
    );
    let outs: Vec<String> = built.lines().map(str::to_owned).collect();
    let find = |suffix: &str| {
        outs.iter().find(|p| p.ends_with(suffix)).cloned().unwrap_or_else(|| panic!("no {suffix} in {outs:?}"))
    };
    let (hello, note) = (find("-sf-snap-hello"), find("-sf-snap-note"));
    let mut paths = nix::closure(&hello);
    paths.sort();
    assert_eq!(paths.len(), 3, "hello's closure: {paths:?}");
    let blob = paths.iter().find(|p| p.ends_with("-sf-snap-blob")).cloned().expect("the blob in the closure");
    let size = std::fs::metadata(&blob).expect("the blob").len();
    assert!(size > 5 << 20, "the blob is {size} bytes, not several MiB");
    assert_eq!(nix::closure(&note), vec![note.clone()]);
    Closure { hello, blob, paths, note, _gc_root: dir }
}

fn base(path: &str) -> String {
    path.trim_start_matches("/nix/store/").to_owned()
}

/// `storefront ARGS…` trusting the test CA; its stdout, or a panic.
#[track_caller]
fn storefront_ok(ca: &Path, args: &[&str]) -> String {
    let out = nix::output(storefront().env("SSL_CERT_FILE", ca).args(args));
    assert!(
        out.status.success(),
        "storefront {args:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `storefront snapshotter`, killed on drop (its log printed
/// when a test fails).
struct SnapshotterProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl SnapshotterProcess {
    fn start(store: &str, ca: &Path) -> SnapshotterProcess {
        let dir = tempfile::Builder::new().prefix("sf-snapshotter-").tempdir().expect("temp dir");
        let log = File::create(dir.path().join("snapshotter.log")).expect("log file");
        let mut process = SnapshotterProcess { child: None, dir };
        let child = Command::new(env!("CARGO_BIN_EXE_storefront"))
            .arg("snapshotter")
            .arg("--socket")
            .arg(process.socket())
            .arg("--root")
            .arg(process.root())
            .args(["--store", store])
            // No Nix (nor anything else) it could run: paths come over gRPC.
            .env_clear()
            .env("PATH", "/nonexistent")
            .env("SSL_CERT_FILE", ca)
            .env("STOREFRONT_LOG", "info,snapshotter=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawning storefront snapshotter");
        process.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !process.socket().exists() {
            if let Some(status) = process.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("storefront snapshotter exited with {status}; its log:\n{}", process.log());
            }
            assert!(Instant::now() < deadline, "the snapshotter socket did not appear; log:\n{}", process.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("snapshotter.sock")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("snapshotter.log")).unwrap_or_default()
    }

    /// The entries of its store directory.
    fn store(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.root().join("store"))
            .expect("the snapshotter's store directory")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The snapshot directories it has.
    fn snapshot_dirs(&self) -> usize {
        std::fs::read_dir(self.root().join("snapshots")).expect("the snapshots directory").count()
    }

    /// Waits until its store holds exactly `want`.
    #[track_caller]
    fn wait_for_store(&self, want: &BTreeSet<String>, what: &str) {
        let deadline = Instant::now() + RELEASE_DEADLINE;
        while self.store() != *want {
            assert!(
                Instant::now() < deadline,
                "{what}: the snapshotter's store holds {:?}, expected {want:?}",
                self.store()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SnapshotterProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- snapshotter log ---\n{}\n--- end of snapshotter log ---", self.log());
        }
    }
}

/// config.toml additions: the proxy snapshotter, and the transfer
/// service's unpack platforms (listing any replaces the default
/// overlayfs entry, so it is listed again).
fn containerd_config(socket: &Path) -> String {
    format!(
        r#"
[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = "{socket}"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "overlayfs"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "{SNAPSHOTTER}"
"#,
        socket = socket.display()
    )
}

/// `ctr run --rm --snapshotter storefront IMAGE ID COMMAND…`: status, stdout, stderr.
fn run(ctd: &Containerd, image: &str, id: &str, command: &[&str]) -> (std::process::ExitStatus, String, String) {
    let flags = ctd.run_flags();
    let mut args: Vec<&str> = vec!["run", "--rm", "--snapshotter", SNAPSHOTTER];
    args.extend(flags.iter().map(String::as_str));
    args.extend([image, id]);
    args.extend(command);
    let out = ctd.ctr(&args);
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[track_caller]
fn assert_ran(run: &(std::process::ExitStatus, String, String), lines: &[&str]) {
    let (status, stdout, stderr) = run;
    assert!(
        status.success() && lines.iter().all(|want| stdout.lines().any(|l| l == *want)),
        "ctr run exited with {status}; expected the lines {lines:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         (the logs follow)"
    );
}

#[track_caller]
fn pull(ctd: &Containerd, reference: &str) {
    ctd.ctr_ok(&[
        "images",
        "pull",
        "--local=false",
        "--platform",
        "linux/amd64",
        "--snapshotter",
        SNAPSHOTTER,
        reference,
    ]);
}

/// One HTTPS request to the server; panics unless it answers 2xx.
#[track_caller]
fn https(server: &Server, ca: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let resp = tls::try_https_request(server.addr, ca, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(resp.is_success(), "{method} {path}:\n{}", resp.describe());
    resp.body
}

fn sha256(data: &[u8]) -> String {
    registry::oci::Digest::of(data).to_string()
}

/// Pushes `repo:tag` (busybox as an ordinary first layer, then the nix
/// layer of `nix_repo`'s nix-snapshotter image with its annotations, the
/// config's diff ids to match) and returns the manifest's digest.
fn push_busybox_plus_nix_layer(server: &Server, ca: &Path, nix_repo: &str, repo: &str, tag: &str) -> String {
    let accept = [("Accept", OCI_MANIFEST)];
    let nix_manifest: Value =
        serde_json::from_slice(&https(server, ca, "GET", &format!("/v2/{nix_repo}/manifests/{tag}"), &accept, b""))
            .expect("the nix-snapshotter manifest");
    let nix_layer = nix_manifest["layers"][0].clone();
    assert!(nix_layer["annotations"][NIX_CLOSURE].is_string(), "not a nix layer: {nix_manifest:#}");
    let blob = |digest: &str| https(server, ca, "GET", &format!("/v2/{nix_repo}/blobs/{digest}"), &[], b"");
    let nix_config: Value =
        serde_json::from_slice(&blob(nix_manifest["config"]["digest"].as_str().unwrap())).expect("config");
    let nix_layer_bytes = blob(nix_layer["digest"].as_str().unwrap());

    // The base layer: /bin/busybox and a /bin/sh link, as GNU tar writes them.
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy(nix::HOST_BUSYBOX, tree.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).unwrap();
    let tar = dir.path().join("base.tar");
    nix::run(
        Command::new(nix::tool("tar"))
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&tree)
            .arg("bin"),
    );
    let base_layer = std::fs::read(&tar).unwrap();

    let mut config = nix_config.clone();
    let nix_diff_id = nix_config["rootfs"]["diff_ids"][0].clone();
    config["rootfs"]["diff_ids"] = json!([sha256(&base_layer), nix_diff_id]);
    config["config"]["Entrypoint"] = json!(["/bin/busybox"]);
    let config = serde_json::to_vec(&config).unwrap();
    for data in [&base_layer, &config, &nix_layer_bytes] {
        https(server, ca, "POST", &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)), &[], data);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len() },
        "layers": [
            { "mediaType": OCI_LAYER_TAR, "digest": sha256(&base_layer), "size": base_layer.len() },
            nix_layer,
        ],
    }))
    .unwrap();
    https(server, ca, "PUT", &format!("/v2/{repo}/manifests/{tag}"), &[("Content-Type", OCI_MANIFEST)], &manifest);
    sha256(&manifest)
}

#[test]
fn containerd_runs_nix_snapshotter_images_through_the_snapshotter() {
    containerd::assert_root();
    let closure = build_closure();
    let (server, certs) = Server::start_tls(&[]);
    let ca = certs.ca.as_path();
    let imported = storefront_ok(ca, &["import", "--store", &server.grpcs_url(), &closure.hello, &closure.note]);
    assert!(imported.contains("imported 4 paths"), "{imported}");
    let entrypoint = format!("{}/bin/hello", closure.hello);
    let https_url = server.https_url();
    storefront_ok(
        ca,
        &[
            "image",
            "add",
            "sf-snap/hello:v1",
            "--path",
            &closure.hello,
            "--entrypoint",
            &entrypoint,
            "--entrypoint",
            "from-containerd",
            "--server",
            &https_url,
        ],
    );
    storefront_ok(ca, &["image", "add", "sf-snap/note:v1", "--path", &closure.note, "--server", &https_url]);
    push_busybox_plus_nix_layer(&server, ca, "nix-snapshotter/sf-snap/note", "sf-snap/mixed", "v1");

    let snapshotter = SnapshotterProcess::start(&server.grpcs_url(), ca);
    let ca_str = ca.to_str().expect("UTF-8 path");
    let ctd =
        Containerd::start_with(NAMESPACE, &containerd_config(&snapshotter.socket()), &[("SSL_CERT_FILE", ca_str)]);
    eprintln!("{}; containerd in {}", ctd.version, ctd.dir().display());
    assert_eq!(snapshotter.store(), BTreeSet::new());

    // 1. The nix-snapshotter image of the script: pulled, its closure
    // fetched into the snapshotter's store (the closure-info path too).
    let hello_ref = format!("{}/nix-snapshotter/sf-snap/hello:v1", server.addr);
    pull(&ctd, &hello_ref);
    let store = snapshotter.store();
    let hello_store: BTreeSet<String> = closure.paths.iter().map(|p| base(p)).collect();
    assert!(hello_store.is_subset(&store), "{hello_store:?} are not all in the snapshotter's store {store:?}");
    assert_eq!(store.len(), hello_store.len() + 1, "the closure and its closure-info path: {store:?}");
    let info_path = store.difference(&hello_store).next().unwrap().clone();
    let listed = std::fs::read_to_string(snapshotter.root().join("store").join(&info_path).join("store-paths"))
        .expect("the closure-info path's store-paths");
    assert_eq!(listed.lines().map(str::to_owned).collect::<Vec<_>>(), closure.paths, "store-paths");
    let fetched_blob = snapshotter.root().join("store").join(base(&closure.blob));
    assert!(
        std::fs::read(&fetched_blob).unwrap() == std::fs::read(&closure.blob).unwrap(),
        "the multi-MiB path arrived with other bytes"
    );

    // … and run: the script and the busybox it runs are bind-mounted store
    // paths; the MD5 of the big file is the host's.
    let md5 = nix::run(Command::new(nix::tool("md5sum")).arg(&closure.blob));
    let md5 = md5.trim();
    let run1 = run(&ctd, &hello_ref, "sf-snap-1", &[]);
    assert_ran(&run1, &[&format!("{GREETING}: from-containerd"), md5]);
    let busybox = format!("{}/bin/busybox", closure.paths.iter().find(|p| p.ends_with("-sf-snap-busybox")).unwrap());
    let run2 = run(&ctd, &hello_ref, "sf-snap-2", &[&busybox, "sh", "-c", "echo listing; ls /nix/store"]);
    assert_ran(&run2, &["listing"]);
    let listed: Vec<&str> = run2.1.lines().skip_while(|l| *l != "listing").skip(1).collect();
    let want: Vec<&str> = hello_store.iter().map(String::as_str).collect();
    assert_eq!(listed, want, "the container's /nix/store");
    let run3 = run(&ctd, &hello_ref, "sf-snap-3", &[&busybox, "sh", "-c", &format!("echo x > {}/new", closure.hello)]);
    assert!(!run3.0.success(), "a store path was writable in the container: {run3:?}");

    // 2. busybox as an ordinary base layer, then a nix layer.
    let mixed_ref = format!("{}/nix-snapshotter/sf-snap/mixed:v1", server.addr);
    pull(&ctd, &mixed_ref);
    let note_greeting = format!("{}/greeting", closure.note);
    let run4 = run(&ctd, &mixed_ref, "sf-snap-4", &["/bin/busybox", "cat", &note_greeting]);
    assert_ran(&run4, &[NOTE]);
    let run5 = run(&ctd, &mixed_ref, "sf-snap-5", &["/bin/sh", "-c", "ls /nix/store; ls /bin"]);
    assert_ran(&run5, &[&base(&closure.note), "busybox", "sh"]);
    let store = snapshotter.store();
    assert!(store.contains(&base(&closure.note)) && store.is_superset(&hello_store), "{store:?}");
    assert_eq!(store.len(), hello_store.len() + 3, "note and its closure-info path added: {store:?}");
    let note_store: BTreeSet<String> = store.difference(&hello_store).filter(|b| **b != info_path).cloned().collect();

    // 3. Removal: containerd's garbage collection removes the snapshots,
    // the snapshotter releases what no snapshot roots any more.
    assert_eq!(ctd.ctr_ok(&["containers", "ls", "-q"]).trim(), "", "containers left after ctr run --rm");
    assert_eq!(ctd.leftover_mounts(), Vec::<String>::new(), "mounts left after ctr run --rm");
    ctd.ctr_ok(&["images", "rm", "--sync", &hello_ref]);
    snapshotter.wait_for_store(&note_store, "after removing the first image");
    ctd.ctr_ok(&["images", "rm", "--sync", &mixed_ref]);
    snapshotter.wait_for_store(&BTreeSet::new(), "after removing both images");
    let snapshots = ctd.ctr_ok(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
    assert_eq!(snapshots.lines().skip(1).count(), 0, "snapshots left:\n{snapshots}");
    assert_eq!(snapshotter.snapshot_dirs(), 0, "snapshot directories left");
    let log = snapshotter.log();
    assert!(log.contains("nix layer's store paths present"), "no nix layer was prepared:\n{log}");
}
