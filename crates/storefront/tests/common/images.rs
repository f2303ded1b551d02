//! Helpers for the image-generation acceptance tests
//! (`tests/registry_images.rs`): an offline closure built with `nix-build`
//! that runs under `chroot` (a static busybox copied into the store), the
//! `storefront image`/`packages` commands, skopeo kept away from the
//! caller's configuration, OCI layouts read back from disk, and GNU tar
//! listings.
//!
//! Declared from `registry_images.rs` with `#[path]` (the shared
//! `common/mod.rs` belongs to other test suites). Tools: nix-bin, skopeo,
//! tar, gzip, diff, chroot, busybox-static (`/bin/busybox`, statically
//! linked).
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::{
    Server,
    nix::{self, STORE_DIR, tool},
    storefront,
};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const NIX_LAYER: &str = "containerd.io/snapshot/nix-layer";
pub const NIX_STORE_PATH: &str = "containerd.io/snapshot/nix-store-path";
pub const NIX_CLOSURE: &str = "containerd.io/snapshot/nix-closure";

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    registry::oci::Digest::of(data).to_string()
}

// ------------------------------------------------------------------ fixture

/// The statically linked busybox the fixture copies into the store, so
/// that its programs run under `chroot` with nothing from the host.
pub const BUSYBOX: &str = "/bin/busybox";

/// What `/bin/prog` prints, with `FOO` set to `foo_value`.
pub fn prog_output(foo_value: &str) -> String {
    format!(
        "hello from prog\ngreetings from the dependency\na single-file output\n\
         a note from builtins.toFile ({SALT})\nFOO={foo_value}\n"
    )
}

const SALT: &str = "storefront-image-tests-v1";

/// The fixture: `app` has `bin/prog`, a busybox `sh` script (shebang into
/// the store) that prints a line and reads files from its dependencies;
/// `dep` has files, a non-executable and an executable file, relative and
/// absolute symlinks and an empty directory; `single` is a derivation whose
/// output is one regular file and `note` a `builtins.toFile` path (also a
/// single file, content-addressed); `certs` has
/// `etc/ssl/certs/ca-bundle.crt` and `busybox` has `bin/env`.
fn expr() -> String {
    format!(
        r#"
let
  salt = "{SALT}";
{mk}  busybox = mk "sf-img-busybox" ''
    set -e
    mkdir -p $out/bin
    cp {BUSYBOX} $out/bin/busybox
    for a in sh env cat echo ls; do ln -s busybox $out/bin/$a; done
  '';
  certs = mk "sf-img-certs" ''
    set -e
    mkdir -p $out/etc/ssl/certs
    echo "not a real certificate bundle" > $out/etc/ssl/certs/ca-bundle.crt
  '';
  single = mk "sf-img-single" ''printf 'a single-file output\n' > $out'';
  note = builtins.toFile "sf-img-note" "a note from builtins.toFile (${{salt}})\n";
  dep = mk "sf-img-dep" ''
    set -e
    mkdir -p $out/share/doc $out/lib $out/empty
    echo "greetings from the dependency" > $out/share/greeting
    ln -s greeting $out/share/greeting-link
    ln -s ${{single}} $out/lib/single
    printf '#!/bin/false\n' > $out/lib/tool
    chmod +x $out/lib/tool
  '';
in mk "sf-img-app" ''
  set -e
  mkdir -p $out/bin $out/share/app
  cat > $out/bin/prog <<EOS
  #!${{busybox}}/bin/sh
  echo "hello from prog"
  ${{busybox}}/bin/cat ${{dep}}/share/greeting
  ${{busybox}}/bin/cat ${{single}}
  ${{busybox}}/bin/cat ${{note}}
  echo "FOO=\$FOO"
  EOS
  chmod +x $out/bin/prog
  ln -s prog $out/bin/prog-again
  echo "certificates: ${{certs}}" > $out/share/app/config
''
"#,
        mk = nix::mk_binding(SALT),
    )
}

/// The built closure.
pub struct ImageFixture {
    /// `sf-img-app` (the top path).
    pub app: String,
    pub dep: String,
    pub busybox: String,
    pub certs: String,
    pub single: String,
    pub note: String,
    /// Every path of the closure, sorted.
    pub paths: Vec<String>,
    /// A GC root (`./result`) for `app`.
    pub gc_root: PathBuf,
    _dir: TempDir,
}

impl ImageFixture {
    /// The closure's basenames, sorted.
    pub fn basenames(&self) -> Vec<String> {
        self.paths.iter().map(|p| basename(p).to_owned()).collect()
    }

    /// Whether the store path is a single regular file.
    pub fn is_file(&self, path: &str) -> bool {
        std::fs::symlink_metadata(path).unwrap().is_file()
    }
}

pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

/// The fixture, built on first use (offline, no sandbox: the builder copies
/// the host's static busybox).
pub fn image_fixture() -> &'static ImageFixture {
    static FIXTURE: OnceLock<ImageFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let busybox = Path::new(BUSYBOX);
        assert!(
            busybox.is_file(),
            "{BUSYBOX} is missing: these tests copy a statically linked busybox into the fixture \
             (Debian: apt-get install busybox-static)"
        );
        let ldd = Command::new("ldd").arg(busybox).output();
        if let Ok(ldd) = ldd {
            let text = String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
            assert!(
                !text.contains("=>"),
                "{BUSYBOX} is dynamically linked ({text}); install busybox-static, not busybox"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("images.nix");
        std::fs::write(&file, expr()).expect("writing images.nix");
        let gc_root = dir.path().join("result");
        let app = nix::run(
            Command::new(tool("nix-build"))
                .arg(&file)
                .args(["--option", "sandbox", "false", "--option", "substituters", ""])
                .arg("--out-link")
                .arg(&gc_root),
        );
        let app = app.trim().to_owned();
        assert!(app.starts_with(STORE_DIR) && app.ends_with("-sf-img-app"), "nix-build printed {app:?}");
        let mut paths = nix::closure(&app);
        paths.sort();
        let find = |name: &str| -> String {
            let suffix = format!("-sf-img-{name}");
            paths.iter().find(|p| p.ends_with(&suffix)).unwrap_or_else(|| panic!("no {name} in {paths:?}")).clone()
        };
        let fx = ImageFixture {
            dep: find("dep"),
            busybox: find("busybox"),
            certs: find("certs"),
            single: find("single"),
            note: find("note"),
            app: app.clone(),
            paths: paths.clone(),
            gc_root,
            _dir: dir,
        };
        assert_eq!(paths.len(), 6, "the image fixture's closure: {paths:?}");
        fx
    })
}

// ------------------------------------------------------- storefront commands

/// A command's output; panics with both streams unless it succeeded.
#[track_caller]
pub fn ok(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed with {}:\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Stderr of a command that must fail and mention every needle.
#[track_caller]
pub fn failed(what: &str, out: Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what} should have failed; stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(stderr.contains(n), "{what}: the error does not mention {n:?}:\n{stderr}");
    }
    stderr
}

/// `storefront import --store <server> <fixture>` (with `token` when the
/// server needs one).
pub fn import_fixture(server: &Server, fx: &ImageFixture, token: Option<&str>) {
    let url = match token {
        Some(t) => server.url_with_token(t),
        None => server.url(),
    };
    let out = storefront()
        .args(["import", "--store", &url])
        .arg(&fx.gc_root)
        .stdin(Stdio::null())
        .output()
        .expect("running storefront import");
    ok("storefront import", out);
}

/// `http://127.0.0.1:PORT`.
pub fn http_url(server: &Server) -> String {
    format!("http://{}", server.addr)
}

/// `storefront image ARGS… --server <server>`, whatever its outcome.
pub fn image(server: &Server, args: &[&str]) -> Output {
    storefront()
        .arg("image")
        .args(args)
        .args(["--server", &http_url(server)])
        .stdin(Stdio::null())
        .output()
        .expect("running storefront image")
}

/// `storefront packages import FILE --server <server>`, whatever its outcome.
pub fn packages_import(server: &Server, file: &Path, extra: &[&str]) -> Output {
    storefront()
        .args(["packages", "import"])
        .arg(file)
        .args(["--server", &http_url(server)])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running storefront packages import")
}

/// The arguments of the test's image: `--path app --copy-to-root app
/// busybox --entrypoint /bin/prog --env FOO=bar` (the path through the GC
/// root, as a user would give `./result`).
pub fn demo_args(fx: &ImageFixture) -> Vec<String> {
    let root = fx.gc_root.to_str().unwrap().to_owned();
    ["--path", &root, "--copy-to-root", &fx.app, &fx.busybox, "--entrypoint", "/bin/prog", "--env", "FOO=bar"]
        .map(str::to_owned)
        .to_vec()
}

/// The two images `image add` reported: flavour → (reference, digest).
#[track_caller]
pub fn parse_added(stdout: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "unexpected `image add` output line {line:?} in:\n{stdout}");
        let digest = parts[2].trim_start_matches('(').trim_end_matches(')');
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "no digest in `image add` output line {line:?}");
        out.insert(parts[0].to_owned(), (parts[1].to_owned(), digest.to_owned()));
    }
    out
}

/// `image add NAME ARGS…`, which must succeed; the (ordinary,
/// nix-snapshotter) digests, checked against the references printed.
#[track_caller]
pub fn image_add(server: &Server, name: &str, args: &[String]) -> (String, String) {
    let mut all = vec!["add", name];
    all.extend(args.iter().map(String::as_str));
    let stdout = ok(&format!("storefront image add {name}"), image(server, &all));
    let added = parse_added(&stdout);
    let full = if name.contains(':') { name.to_owned() } else { format!("{name}:latest") };
    let ordinary = added.get("ordinary").unwrap_or_else(|| panic!("no ordinary image in:\n{stdout}"));
    let nix = added.get("nix-snapshotter").unwrap_or_else(|| panic!("no nix-snapshotter image in:\n{stdout}"));
    assert_eq!(ordinary.0, format!("{}/{full}", server.addr), "{stdout}");
    assert_eq!(nix.0, format!("{}/nix-snapshotter/{full}", server.addr), "{stdout}");
    assert_eq!(added.len(), 2, "{stdout}");
    (ordinary.1.clone(), nix.1.clone())
}

// ------------------------------------------------------------------- skopeo

pub use crate::common::skopeo::Skopeo;

/// What the image tests do with skopeo beyond running it.
pub trait SkopeoExt {
    fn copy_to_layout(&self, reference: &str) -> OciLayout;
}

impl SkopeoExt for Skopeo {
    /// `skopeo copy --preserve-digests REF oci:DIR:v1` into a fresh layout.
    #[track_caller]
    fn copy_to_layout(&self, reference: &str) -> OciLayout {
        let dir = Scratch::new();
        let dest = format!("oci:{}:v1", dir.path().display());
        self.run(&["copy", "--preserve-digests", "--src-tls-verify=false", reference, &dest]);
        OciLayout::read(dir)
    }
}

pub fn docker_ref(server: &Server, name: &str) -> String {
    format!("docker://{}/{name}", server.addr)
}

/// A temporary directory that stays removable when it holds read-only
/// trees (unpacked layers, chroot stores).
pub struct Scratch(TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(tempfile::tempdir().expect("temp dir"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(self.0.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An OCI image layout that skopeo wrote, with its one image read back.
pub struct OciLayout {
    pub dir: Scratch,
    /// The digest `index.json` names.
    pub digest: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Value,
    pub config: Value,
    /// Every blob by digest; each was checked against its file name.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl OciLayout {
    #[track_caller]
    fn read(dir: Scratch) -> OciLayout {
        let index: Value = serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let manifests = index["manifests"].as_array().expect("index.json manifests");
        assert_eq!(manifests.len(), 1, "index.json: {index}");
        let digest = manifests[0]["digest"].as_str().unwrap().to_owned();
        let mut blobs = BTreeMap::new();
        for e in std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let name = format!("sha256:{}", e.file_name().to_string_lossy());
            let data = std::fs::read(e.path()).unwrap();
            assert_eq!(sha256(&data), name, "a blob of the layout does not match its name");
            blobs.insert(name, data);
        }
        let manifest_bytes = blobs.get(&digest).unwrap_or_else(|| panic!("no manifest blob {digest}")).clone();
        let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
        let config_digest = manifest["config"]["digest"].as_str().expect("config digest");
        let config: Value = serde_json::from_slice(&blobs[config_digest]).expect("config JSON");
        // Every blob the manifest names, with its size.
        for d in std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().unwrap()) {
            let digest = d["digest"].as_str().unwrap();
            let blob = blobs.get(digest).unwrap_or_else(|| panic!("the layout lacks blob {digest}"));
            assert_eq!(d["size"].as_u64(), Some(blob.len() as u64), "size of {digest} in the manifest");
        }
        OciLayout { dir, digest, manifest_bytes, manifest, config, blobs }
    }

    /// The layer descriptors.
    pub fn layers(&self) -> &Vec<Value> {
        self.manifest["layers"].as_array().expect("layers")
    }

    /// The file of a blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.path().join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }
}

// ---------------------------------------------------------------------- tar

/// One line of `tar -tv --full-time --numeric-owner` (TZ=UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarLine {
    /// `drwxr-xr-x`, `-r--r--r--`, `lrwxrwxrwx`, …
    pub mode: String,
    /// `uid/gid`.
    pub owner: String,
    pub size: u64,
    /// `1970-01-01 00:00:01`.
    pub time: String,
    /// As listed (directories end in `/`).
    pub name: String,
    pub link: Option<String>,
}

impl TarLine {
    /// The name without a trailing slash.
    pub fn path(&self) -> &str {
        self.name.trim_end_matches('/')
    }

    pub fn is_dir(&self) -> bool {
        self.mode.starts_with('d')
    }

    pub fn is_symlink(&self) -> bool {
        self.mode.starts_with('l')
    }

    pub fn is_file(&self) -> bool {
        self.mode.starts_with('-')
    }
}

/// GNU tar's listing of a tar file.
#[track_caller]
pub fn tar_list(file: &Path) -> Vec<TarLine> {
    let out = nix::output(
        Command::new(tool("tar")).env("TZ", "UTC").args(["-tv", "--full-time", "--numeric-owner", "-f"]).arg(file),
    );
    assert!(out.status.success(), "tar -tvf {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8 listing");
    text.lines()
        .map(|line| {
            let mut rest = line;
            let mut fields = Vec::new();
            for _ in 0..5 {
                rest = rest.trim_start();
                let end = rest.find(' ').unwrap_or_else(|| panic!("unexpected tar listing line {line:?}"));
                fields.push(&rest[..end]);
                rest = &rest[end..];
            }
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let (name, link) = match fields[0].starts_with('l') {
                true => {
                    let (n, l) = rest.split_once(" -> ").unwrap_or_else(|| panic!("symlink without target: {line:?}"));
                    (n.to_owned(), Some(l.to_owned()))
                }
                false => (rest.to_owned(), None),
            };
            TarLine {
                mode: fields[0].to_owned(),
                owner: fields[1].to_owned(),
                size: fields[2].parse().unwrap_or_else(|_| panic!("size in {line:?}")),
                time: format!("{} {}", fields[3], fields[4]),
                name,
                link,
            }
        })
        .collect()
}

/// `chroot ROOT ARGS…` with exactly the environment `env` (no PATH
/// unless given); chroot needs root.
pub fn chroot(root: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`chroot` is not installed (Debian: coreutils)"));
    let mut cmd = Command::new(found);
    cmd.arg(root).args(args).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    let out = nix::output(&mut cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {} (these tests must run as root):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tar -xf FILE -C DIR` (as root: modes and owners as archived).
#[track_caller]
pub fn untar(file: &Path, dir: &Path) {
    nix::run(
        Command::new(tool("tar")).args(["--same-permissions", "--same-owner", "-xf"]).arg(file).arg("-C").arg(dir),
    );
}

/// `gzip -dc`.
#[track_caller]
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.gz");
    std::fs::write(&file, data).unwrap();
    let out = nix::output(Command::new(tool("gzip")).arg("-dc").arg(&file));
    assert!(out.status.success(), "gzip -dc: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Whether the listing is sorted by path, component by component (a
/// directory's entries directly after it).
pub fn component_sorted(lines: &[TarLine]) -> bool {
    lines.windows(2).all(|w| {
        let a: Vec<&str> = w[0].path().split('/').collect();
        let b: Vec<&str> = w[1].path().split('/').collect();
        a < b
    })
}

/// The `rwx` string of permission bits, as `ls` and `tar -tv` print them
/// (with the sticky bit).
pub fn rwx(mode: u32) -> String {
    let mut s = String::new();
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (shift, mode & 0o1000 != 0, x) {
            (0, true, true) => 't',
            (0, true, false) => 'T',
            (_, _, true) => 'x',
            _ => '-',
        });
    }
    s
}

/// The permission bits and owner of a path (not following symlinks).
pub fn mode_of(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

/// `diff -r --no-dereference A B`, which must find no difference.
#[track_caller]
pub fn assert_same_tree(want: &Path, got: &Path) {
    let diff = nix::output(Command::new(tool("diff")).args(["-r", "--no-dereference"]).arg(want).arg(got));
    assert!(
        diff.status.success(),
        "{} differs from {}:\n{}{}",
        got.display(),
        want.display(),
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}

/// Every path below `root` (itself included), not following symlinks.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// A package index in the shape of `nix-env -qaP --json --out-path`.
pub fn nix_env_index(packages: &[(&str, &str)]) -> Value {
    let mut map = serde_json::Map::new();
    for (attr, path) in packages {
        let name = basename(path)[33..].to_owned();
        map.insert(
            format!("nixpkgs.{attr}"),
            serde_json::json!({
                "name": name,
                "pname": name,
                "version": "",
                "system": "x86_64-linux",
                "outputName": "out",
                "outputs": { "out": path },
            }),
        );
    }
    Value::Object(map)
}
