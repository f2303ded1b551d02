//! Images generated from store paths (issue 5's acceptance), with real
//! clients: an offline closure built with `nix-build` is imported, `storefront
//! image add` defines an image, and skopeo pulls both flavours into OCI
//! layouts. The ordinary image's layers, unpacked in order with GNU tar,
//! hold the whole closure with Nix's modes, and its entrypoint runs under
//! `chroot`; the nix-snapshotter image has the spec's media types,
//! annotations and mount points, and its closure-info path is fetchable
//! with `nix copy` and over gRPC. Digests survive restarts and match
//! across servers; concurrent first requests build once; package-named
//! images (`pkgs/…`) resolve through an imported `nix-env` index, also
//! pulling paths through from an upstream cache; writes need a token.
//!
//! Tools: nix-bin, skopeo, tar, gzip, diff, chroot (root), busybox-static.
#[path = "common/cache.rs"]
mod cache;
mod common;
#[path = "common/images.rs"]
mod images;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{Arc, Barrier, Mutex},
};

use bytes::Bytes;
use cache::{Key, NixClient, get, head, narinfo_path, narinfo_value, request};
use castore::kv::{KvStore, MemoryStore, Table};
use common::Server;
use futures::stream::BoxStream;
use images::*;
use serde_json::{Value, json};
use store::{
    StorePath,
    pathinfo::{GrpcPathInfoService, PathInfoService},
};

fn path_infos(server: &Server) -> GrpcPathInfoService {
    GrpcPathInfoService::new(castore::grpc::connect(&url::Url::parse(&server.url()).unwrap()).unwrap())
}

fn store_path(abs: &str) -> StorePath {
    StorePath::from_absolute(abs, common::nix::STORE_DIR).expect("store path")
}

/// `HEAD /v2/NAME/manifests/REF`: the status and `Docker-Content-Digest`.
fn head_manifest(server: &Server, name: &str, reference: &str) -> (u16, Option<String>) {
    let resp =
        request(server.addr, "HEAD", &format!("/v2/{name}/manifests/{reference}"), &[("Accept", OCI_MANIFEST)], b"");
    (resp.status, resp.header("docker-content-digest").map(str::to_owned))
}

/// `GET /v2/NAME/manifests/REF`, which must succeed: the exact bytes, checked
/// against `Docker-Content-Digest` and `Content-Type`.
#[track_caller]
fn manifest_bytes(server: &Server, name: &str, reference: &str) -> Vec<u8> {
    let resp =
        request(server.addr, "GET", &format!("/v2/{name}/manifests/{reference}"), &[("Accept", OCI_MANIFEST)], b"");
    assert_eq!(resp.status, 200, "GET manifest {name}:{reference}:\n{}", resp.describe());
    assert_eq!(resp.header("content-type"), Some(OCI_MANIFEST), "{name}:{reference}");
    assert_eq!(resp.header("docker-content-digest"), Some(sha256(&resp.body).as_str()), "{name}:{reference}");
    resp.body
}

/// A registry error answer: status 404, JSON, one of `codes`; its message.
#[track_caller]
fn assert_registry_error(resp: &common::Response, codes: &[&str]) -> String {
    assert_eq!(resp.status, 404, "{}", resp.describe());
    assert_eq!(resp.header("content-type"), Some("application/json"), "{}", resp.describe());
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{e}: {}", resp.describe()));
    let code = body["errors"][0]["code"].as_str().unwrap_or_default();
    assert!(codes.contains(&code), "error code {code:?}, expected one of {codes:?}: {body}");
    body["errors"][0]["message"].as_str().unwrap_or_default().to_owned()
}

/// The config's `Env` as pairs.
fn config_env(config: &Value) -> Vec<(String, String)> {
    config["config"]["Env"]
        .as_array()
        .expect("config Env")
        .iter()
        .map(|e| {
            let (k, v) = e.as_str().unwrap().split_once('=').expect("KEY=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[track_caller]
fn assert_demo_config(config: &Value, what: &str) {
    assert_eq!(config["architecture"], "amd64", "{what}: {config}");
    assert_eq!(config["os"], "linux", "{what}: {config}");
    assert_eq!(config["config"]["Entrypoint"], json!(["/bin/prog"]), "{what}: {config}");
    let env = config_env(config);
    assert!(env.contains(&("FOO".into(), "bar".into())), "{what}: Env lacks FOO=bar: {config}");
    assert!(env.iter().any(|(k, v)| k == "PATH" && v.contains("/bin")), "{what}: Env lacks a PATH: {config}");
    assert_eq!(config["rootfs"]["type"], "layers", "{what}: {config}");
}

/// Checks the farm (copy-to-root) entries of a listing: the symlinks the
/// fixture's copy-to-root paths must give, every symlink absolute into a
/// copy-to-root path (or a closure path for the extras), `/tmp` 1777.
#[track_caller]
fn assert_farm(lines: &[TarLine], fx: &ImageFixture, what: &str) {
    let links: BTreeMap<&str, &str> =
        lines.iter().filter(|l| l.is_symlink()).map(|l| (l.path(), l.link.as_deref().unwrap())).collect();
    let want = [
        ("bin/prog", format!("{}/bin/prog", fx.app)),
        ("bin/prog-again", format!("{}/bin/prog-again", fx.app)),
        ("share/app/config", format!("{}/share/app/config", fx.app)),
        ("bin/sh", format!("{}/bin/sh", fx.busybox)),
        ("bin/busybox", format!("{}/bin/busybox", fx.busybox)),
        ("usr/bin/env", format!("{}/bin/env", fx.busybox)),
        ("etc/ssl/certs/ca-bundle.crt", format!("{}/etc/ssl/certs/ca-bundle.crt", fx.certs)),
        ("etc/ssl/certs/ca-certificates.crt", format!("{}/etc/ssl/certs/ca-bundle.crt", fx.certs)),
    ];
    for (at, target) in &want {
        assert_eq!(
            links.get(at).copied(),
            Some(target.as_str()),
            "{what}: /{at} should link to {target}; links: {links:#?}"
        );
    }
    for (at, target) in &links {
        assert!(target.starts_with("/nix/store/"), "{what}: /{at} -> {target} is not absolute into the store");
    }
    let tmp = lines.iter().find(|l| l.path() == "tmp").unwrap_or_else(|| panic!("{what}: no tmp/ entry"));
    assert_eq!(tmp.mode, "drwxrwxrwt", "{what}: /tmp");
}

// ------------------------------------------------------- 1-2. ordinary image

#[test]
fn ordinary_image_unpacks_and_runs() {
    let fx = image_fixture();
    let server = Server::start();
    import_fixture(&server, fx, None);
    let (digest, nix_digest) = image_add(&server, "demo/app:v1", &demo_args(fx));
    assert_ne!(digest, nix_digest);
    assert_eq!(head_manifest(&server, "demo/app", "v1"), (200, Some(digest.clone())));

    let skopeo = Skopeo::new();
    let reference = docker_ref(&server, "demo/app:v1");
    // The non-raw form reads the config and lists the tags.
    let inspect = skopeo.inspect(&reference);
    assert_eq!(inspect["Digest"], digest, "{inspect:#}");
    assert_eq!(inspect["RepoTags"], json!(["v1"]), "{inspect:#}");
    assert_eq!(inspect["Architecture"], "amd64", "{inspect:#}");
    assert_eq!(inspect["Os"], "linux", "{inspect:#}");
    let raw = skopeo.raw(&reference);
    assert_eq!(sha256(&raw), digest, "the manifest skopeo read does not hash to the digest image add printed");

    let layout = skopeo.copy_to_layout(&reference);
    assert_eq!(layout.digest, digest);
    assert!(layout.manifest_bytes == raw, "skopeo --preserve-digests changed the manifest");
    let m = &layout.manifest;
    assert_eq!(m["schemaVersion"], 2, "{m:#}");
    assert_eq!(m["mediaType"], OCI_MANIFEST, "{m:#}");
    assert_eq!(m["config"]["mediaType"], OCI_CONFIG, "{m:#}");
    let layers = layout.layers();
    assert!(layers.len() >= 2, "store layers and a farm layer: {m:#}");
    assert!(layers.len() <= 100, "more layers than the budget: {}", layers.len());
    for l in layers {
        assert_eq!(l["mediaType"], OCI_LAYER_TAR, "layers are uncompressed by default: {l}");
        assert!(l.get("annotations").is_none(), "an ordinary layer with annotations: {l}");
    }
    let digests: Vec<&str> = layers.iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(layout.config["rootfs"]["diff_ids"], json!(digests), "diff_ids must be the layer digests");
    assert_demo_config(&layout.config, "ordinary config");

    // Every layer: mtime 1, owner 0/0, sorted; each closure path in exactly
    // one layer, with the host store's modes and symlink targets.
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    let mut farm = Vec::new();
    for (i, d) in digests.iter().enumerate() {
        let lines = tar_list(&layout.blob_path(d));
        assert!(component_sorted(&lines), "layer {i} is not sorted: {lines:#?}");
        for l in &lines {
            assert_eq!(l.owner, "0/0", "layer {i}: {l:?}");
            assert_eq!(l.time, "1970-01-01 00:00:01", "layer {i}: {l:?}");
            if l.path() == "nix" || l.path() == "nix/store" {
                assert!(l.is_dir(), "layer {i}: {l:?}");
                continue;
            }
            let Some(in_store) = l.path().strip_prefix("nix/store/") else {
                farm.push(l.clone());
                continue;
            };
            if !in_store.contains('/') {
                assert!(placed.insert(in_store.to_owned(), i).is_none(), "{in_store} is in two layers");
            }
            let host = Path::new("/").join(l.path());
            let (mode, _, _) = mode_of(&host);
            let host_meta = std::fs::symlink_metadata(&host).unwrap();
            if host_meta.file_type().is_symlink() {
                assert!(l.is_symlink(), "layer {i}: {l:?} should be a symlink");
                let target = std::fs::read_link(&host).unwrap();
                assert_eq!(l.link.as_deref(), Some(target.to_str().unwrap()), "layer {i}: symlink target of {l:?}");
            } else {
                let want = if host_meta.is_dir() { 'd' } else { '-' };
                assert_eq!(format!("{want}{}", rwx(mode)), l.mode, "layer {i}: mode of {}", l.path());
                assert!(
                    matches!(l.mode.as_str(), "dr-xr-xr-x" | "-r--r--r--" | "-r-xr-xr-x"),
                    "layer {i}: {l:?}: store modes are 0555 and 0444"
                );
                if host_meta.is_file() {
                    assert_eq!(l.size, host_meta.len(), "layer {i}: size of {}", l.path());
                }
            }
        }
    }
    let want: BTreeMap<String, ()> = fx.basenames().into_iter().map(|b| (b, ())).collect();
    assert_eq!(
        placed.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the layers hold another set of store paths than the closure"
    );
    assert_farm(&farm, fx, "ordinary image");

    // Unpacked in order: the whole closure, as in the Nix store.
    let rootfs = Scratch::new();
    for d in &digests {
        untar(&layout.blob_path(d), rootfs.path());
    }
    let root = rootfs.path();
    for p in &fx.paths {
        let unpacked = root.join(p.trim_start_matches('/'));
        assert_same_tree(Path::new(p), &unpacked);
        for entry in walk(&unpacked) {
            let meta = std::fs::symlink_metadata(&entry).unwrap();
            let (mode, uid, gid) = mode_of(&entry);
            assert_eq!((uid, gid), (0, 0), "{}", entry.display());
            if meta.is_dir() {
                assert_eq!(mode, 0o555, "directory {}", entry.display());
            } else if meta.is_file() {
                assert!(mode == 0o444 || mode == 0o555, "file {}: {mode:o}", entry.display());
                let host = Path::new("/").join(entry.strip_prefix(root).unwrap());
                assert_eq!(mode, mode_of(&host).0, "file {}: executable bit", entry.display());
            }
        }
    }
    for p in [&fx.single, &fx.note] {
        assert!(std::fs::symlink_metadata(root.join(p.trim_start_matches('/'))).unwrap().is_file(), "{p}");
    }
    let link = |at: &str| std::fs::read_link(root.join(at)).unwrap_or_else(|e| panic!("/{at}: {e}"));
    assert_eq!(link("bin/prog"), Path::new(&format!("{}/bin/prog", fx.app)));
    assert_eq!(link("bin/sh"), Path::new(&format!("{}/bin/sh", fx.busybox)));
    assert_eq!(link("usr/bin/env"), Path::new(&format!("{}/bin/env", fx.busybox)));
    assert_eq!(mode_of(&root.join("tmp")).0, 0o1777, "/tmp");

    // The entrypoint runs under chroot, with the config's environment.
    let entrypoint: Vec<String> =
        layout.config["config"]["Entrypoint"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().into()).collect();
    let args: Vec<&str> = entrypoint.iter().map(String::as_str).collect();
    let out = chroot(root, &args, &config_env(&layout.config));
    assert_eq!(String::from_utf8_lossy(&out.stdout), prog_output("bar"));
    // /usr/bin/env from the farm works too.
    let out = chroot(root, &["/usr/bin/env"], &[("X".into(), "y".into())]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "X=y\n");

    // A plain copy (skopeo compresses the layers for the OCI layout,
    // checking every digest it reads) works too.
    let plain = Scratch::new();
    skopeo.run(&["copy", "--src-tls-verify=false", &reference, &format!("oci:{}:v1", plain.path().display())]);
}

// ----------------------------------------------------- 3. nix-snapshotter image

#[tokio::test(flavor = "multi_thread")]
async fn nix_snapshotter_image_matches_the_spec() {
    let fx = image_fixture();
    let key = Key::generate("sf-img-test-1");
    let server = Server::start_args(&["--signing-key", key.secret()]);
    import_fixture(&server, fx, None);
    let (ordinary, digest) = image_add(&server, "demo/app:v1", &demo_args(fx));

    let skopeo = Skopeo::new();
    let reference = docker_ref(&server, "nix-snapshotter/demo/app:v1");
    let inspect = skopeo.inspect(&reference);
    assert_eq!(inspect["Digest"], digest, "{inspect:#}");
    assert_eq!(inspect["RepoTags"], json!(["v1"]), "{inspect:#}");
    let layout = skopeo.copy_to_layout(&reference);
    assert_eq!(layout.digest, digest);
    let m = &layout.manifest;
    assert_eq!(m["schemaVersion"], 2, "{m:#}");
    assert_eq!(m["mediaType"], OCI_MANIFEST, "{m:#}");
    assert_eq!(m["config"]["mediaType"], OCI_CONFIG, "{m:#}");
    let layers = layout.layers();
    assert_eq!(layers.len(), 1, "one nix layer: {m:#}");
    let layer = &layers[0];
    assert_eq!(layer["mediaType"], OCI_LAYER_GZIP, "{m:#}");

    // Annotations: the legacy per-path form and nix-closure, nothing else.
    let annotations: BTreeMap<String, String> = layer["annotations"]
        .as_object()
        .unwrap_or_else(|| panic!("the nix layer has no annotations: {m:#}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string annotation").to_owned()))
        .collect();
    let closure_info = annotations.get(NIX_CLOSURE).unwrap_or_else(|| panic!("no {NIX_CLOSURE}: {m:#}")).clone();
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    want.insert(NIX_LAYER.into(), "true".into());
    for (i, p) in fx.paths.iter().enumerate() {
        want.insert(format!("{NIX_STORE_PATH}.{i}"), p.clone());
    }
    want.insert(NIX_CLOSURE.into(), closure_info.clone());
    assert_eq!(annotations, want, "the nix layer's annotations");
    assert!(m.get("annotations").is_none_or(|a| a.get(NIX_LAYER).is_none()), "paths belong on the layer: {m:#}");
    assert!(
        closure_info.starts_with("/nix/store/") && basename(&closure_info).len() > 33,
        "{NIX_CLOSURE} is not a store path: {closure_info}"
    );
    assert!(!fx.paths.contains(&closure_info));

    // The layer: gzip without name or time; its tar is the config's diff id.
    let gz = &layout.blobs[layer["digest"].as_str().unwrap()];
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "not gzip");
    assert_eq!(gz[3] & 0x08, 0, "the gzip header has a file name");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "the gzip header has a modification time");
    let tar = gunzip(gz);
    assert_eq!(layout.config["rootfs"]["diff_ids"], json!([sha256(&tar)]), "diff_ids");
    assert_demo_config(&layout.config, "nix-snapshotter config");
    let tar_file = layout.dir.path().join("nix-layer.tar");
    std::fs::write(&tar_file, &tar).unwrap();
    let lines = tar_list(&tar_file);
    assert!(component_sorted(&lines), "the nix layer is not sorted: {lines:#?}");
    let mut farm = Vec::new();
    let mut mount_points = BTreeSet::new();
    let mut store_dirs = Vec::new();
    for l in &lines {
        assert_eq!(l.owner, "0/0", "{l:?}");
        assert_eq!(l.time, "1970-01-01 00:00:00", "{l:?}");
        match l.path() {
            "nix" | "nix/store" => store_dirs.push((l.path().to_owned(), l.mode.clone())),
            p if p.starts_with("nix/") => {
                let base = p.strip_prefix("nix/store/").unwrap_or_else(|| panic!("unexpected {l:?}"));
                assert!(!base.contains('/'), "contents of a store path in the nix layer: {l:?}");
                let path = format!("/nix/store/{base}");
                assert!(fx.paths.contains(&path), "{path} is not in the closure");
                let want = if fx.is_file(&path) { "-r-xr-xr-x" } else { "drwxr-xr-x" };
                assert_eq!(l.mode, want, "mount point {path}");
                assert_eq!(l.size, 0, "{l:?}");
                mount_points.insert(path);
            }
            _ => farm.push(l.clone()),
        }
    }
    assert_eq!(mount_points, fx.paths.iter().cloned().collect(), "mount points");
    assert_farm(&farm, fx, "nix-snapshotter image");
    for l in &farm {
        assert!(l.is_symlink() || l.is_dir(), "the farm holds only directories and symlinks: {l:?}");
    }
    // The same farm as the ordinary image's last layer (but for times).
    let ordinary_manifest: Value = serde_json::from_slice(&manifest_bytes(&server, "demo/app", "v1")).unwrap();
    let last = ordinary_manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_owned();
    let resp = get(server.addr, &format!("/v2/demo/app/blobs/{last}"));
    assert_eq!(resp.status, 200);
    let last_file = layout.dir.path().join("farm.tar");
    std::fs::write(&last_file, &resp.body).unwrap();
    let strip = |ls: &[TarLine]| -> Vec<(String, String, Option<String>)> {
        ls.iter().map(|l| (l.mode.clone(), l.path().to_owned(), l.link.clone())).collect()
    };
    assert_eq!(strip(&farm), strip(&tar_list(&last_file)), "the two flavours' copy-to-root entries differ");
    assert_eq!(head_manifest(&server, "demo/app", "v1").1, Some(ordinary));

    // The closure-info path: a narinfo from the same server…
    let ci_narinfo = get(server.addr, &narinfo_path(&closure_info));
    assert_eq!(ci_narinfo.status, 200, "GET narinfo of {closure_info}:\n{}", ci_narinfo.describe());
    let text = ci_narinfo.text();
    assert_eq!(narinfo_value(&text, "StorePath"), closure_info, "{text}");
    let refs: BTreeSet<String> = narinfo_value(&text, "References").split_whitespace().map(str::to_owned).collect();
    assert_eq!(refs, fx.basenames().into_iter().collect(), "References of {closure_info}:\n{text}");
    // … over gRPC …
    let info = path_infos(&server)
        .get(store_path(&closure_info).digest())
        .await
        .expect("PathInfo Get")
        .unwrap_or_else(|| panic!("no PathInfo for {closure_info} over gRPC"));
    let refs: BTreeSet<String> = info.references.iter().map(|r| r.to_absolute("/nix/store")).collect();
    assert_eq!(refs, fx.paths.iter().cloned().collect(), "PathInfo references of {closure_info}");
    // … and into another store with `nix copy` (signatures required: the
    // server's key is trusted), `store-paths` listing exactly the closure.
    let client = NixClient::new().trust(&[&key]);
    let dest = client.store_root("dest");
    let out = client.copy_from(&http_url(&server), &dest, &[&closure_info]);
    assert!(
        out.status.success(),
        "nix copy --from {} {closure_info} failed:\n{}",
        http_url(&server),
        String::from_utf8_lossy(&out.stderr)
    );
    let listed =
        std::fs::read_to_string(Path::new(&dest).join(closure_info.trim_start_matches('/')).join("store-paths"))
            .expect("store-paths in the copied closure-info path");
    assert_eq!(listed, fx.paths.iter().map(|p| format!("{p}\n")).collect::<String>(), "store-paths");
    let copied: BTreeSet<String> =
        client.nix_ok(&["path-info", "--store", &dest, "-r", &closure_info]).lines().map(str::to_owned).collect();
    let mut want: BTreeSet<String> = fx.paths.iter().cloned().collect();
    want.insert(closure_info.clone());
    assert_eq!(copied, want, "nix path-info -r of the copied closure-info path");

    // Unpacked: empty mount points and the farm.
    let rootfs = Scratch::new();
    untar(&tar_file, rootfs.path());
    for p in &fx.paths {
        let at = rootfs.path().join(p.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&at).unwrap();
        if fx.is_file(p) {
            assert!(meta.is_file() && meta.len() == 0, "{p}: an empty file");
        } else {
            assert!(meta.is_dir() && std::fs::read_dir(&at).unwrap().next().is_none(), "{p}: an empty directory");
        }
    }
    // `nix/` and `nix/store/` as nix-snapshotter makes them (MkdirAll
    // 0755) and as the ordinary layers have them (checked last: `nix/`
    // is 0555 today).
    let want_dirs = [("nix".to_owned(), "drwxr-xr-x".to_owned()), ("nix/store".to_owned(), "drwxr-xr-x".to_owned())];
    assert_eq!(store_dirs, want_dirs, "the nix layer's store directories");
}

// ----------------------------------------------------------- 4. determinism

#[tokio::test(flavor = "multi_thread")]
async fn digests_survive_restarts_and_match_across_servers() {
    let fx = image_fixture();
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(data.path());
    import_fixture(&server, fx, None);
    let (ordinary, nix) = image_add(&server, "demo/app:v1", &demo_args(fx));
    let ordinary_bytes = manifest_bytes(&server, "demo/app", "v1");
    let nix_bytes = manifest_bytes(&server, "nix-snapshotter/demo/app", "v1");
    assert_eq!(sha256(&ordinary_bytes), ordinary);
    assert_eq!(sha256(&nix_bytes), nix);
    // Adding it again changes nothing.
    assert_eq!(image_add(&server, "demo/app:v1", &demo_args(fx)), (ordinary.clone(), nix.clone()));
    let status = server.terminate().await;
    assert!(status.success(), "{status}");

    // Restarted on the same data: the same manifests, the same blobs.
    let server = Server::start_in(data.path());
    assert_eq!(head_manifest(&server, "demo/app", "v1"), (200, Some(ordinary.clone())));
    assert_eq!(head_manifest(&server, "nix-snapshotter/demo/app", "v1"), (200, Some(nix.clone())));
    assert!(manifest_bytes(&server, "demo/app", "v1") == ordinary_bytes);
    assert!(manifest_bytes(&server, "nix-snapshotter/demo/app", "v1") == nix_bytes);
    for (repo, bytes) in [("demo/app", &ordinary_bytes), ("nix-snapshotter/demo/app", &nix_bytes)] {
        let m: Value = serde_json::from_slice(bytes).unwrap();
        for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
            let digest = d["digest"].as_str().unwrap();
            let resp = get(server.addr, &format!("/v2/{repo}/blobs/{digest}"));
            assert_eq!(resp.status, 200, "GET {repo} blob {digest} after a restart:\n{}", resp.describe());
            assert_eq!(sha256(&resp.body), digest, "{repo} blob {digest} after a restart");
            assert_eq!(Some(resp.body.len() as u64), d["size"].as_u64());
        }
    }
    let list = ok("storefront image list", image(&server, &["list"]));
    assert!(list.lines().any(|l| l.starts_with("demo/app:v1")), "image list after a restart:\n{list}");

    // Another server with the same closure and spec: byte-identical
    // manifests, also under another name.
    let other = Server::start();
    import_fixture(&other, fx, None);
    assert_eq!(image_add(&other, "demo/app:v1", &demo_args(fx)), (ordinary.clone(), nix.clone()));
    assert!(manifest_bytes(&other, "demo/app", "v1") == ordinary_bytes);
    assert!(manifest_bytes(&other, "nix-snapshotter/demo/app", "v1") == nix_bytes);
    assert_eq!(image_add(&other, "elsewhere/named:v9", &demo_args(fx)), (ordinary.clone(), nix.clone()));
    // A different spec is a different image.
    let mut args = demo_args(fx);
    args.extend(["--env".to_owned(), "BAR=baz".to_owned()]);
    let (o2, n2) = image_add(&other, "demo/app:v2", &args);
    assert_ne!(o2, ordinary);
    assert_ne!(n2, nix);
    assert_eq!(head_manifest(&other, "demo/app", "v1"), (200, Some(ordinary)));

    // The runtime settings go into both configs exactly as given.
    let mut args = demo_args(fx);
    args.extend(
        ["--cmd", "-x", "--cmd", "two words", "--workdir", "/tmp", "--user", "1000:100", "--arch", "arm64"]
            .map(str::to_owned),
    );
    image_add(&other, "demo/app:v3", &args);
    for repo in ["demo/app", "nix-snapshotter/demo/app"] {
        let m: Value = serde_json::from_slice(&manifest_bytes(&other, repo, "v3")).unwrap();
        let digest = m["config"]["digest"].as_str().unwrap();
        let config: Value =
            serde_json::from_slice(&get(other.addr, &format!("/v2/{repo}/blobs/{digest}")).body).unwrap();
        assert_eq!(config["architecture"], "arm64", "{repo}: {config}");
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/prog"]), "{repo}: {config}");
        assert_eq!(config["config"]["Cmd"], json!(["-x", "two words"]), "{repo}: {config}");
        assert_eq!(config["config"]["WorkingDir"], "/tmp", "{repo}: {config}");
        assert_eq!(config["config"]["User"], "1000:100", "{repo}: {config}");
    }
}

// ----------------------------------------------------------- 4. concurrency

/// A KvStore that counts the records it is asked to put.
struct CountingKv {
    inner: MemoryStore,
    puts: Mutex<usize>,
}

impl CountingKv {
    fn puts(&self) -> usize {
        *self.puts.lock().unwrap()
    }
}

#[async_trait::async_trait]
impl KvStore for CountingKv {
    async fn get(&self, table: Table, key: &[u8]) -> castore::Result<Option<Bytes>> {
        self.inner.get(table, key).await
    }

    async fn contains(&self, table: Table, key: &[u8]) -> castore::Result<bool> {
        self.inner.contains(table, key).await
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> castore::Result<()> {
        *self.puts.lock().unwrap() += records.len();
        self.inner.put(table, records).await
    }

    fn scan(&self, table: Table) -> BoxStream<'static, castore::Result<(Bytes, Bytes)>> {
        self.inner.scan(table)
    }

    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, castore::Result<(Bytes, Bytes)>> {
        self.inner.scan_prefix(table, prefix)
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> castore::Result<Result<(), Option<Bytes>>> {
        *self.puts.lock().unwrap() += 1;
        self.inner.compare_and_swap(table, key, current, new).await
    }
}

/// `n` requests at once (a barrier), each on its own connection: the answers.
fn concurrently(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<common::Response> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let path = path.to_owned();
            std::thread::spawn(move || {
                barrier.wait();
                request(addr, "GET", &path, &[("Accept", OCI_MANIFEST)], b"")
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[track_caller]
fn assert_all_same(resps: &[common::Response], what: &str) -> String {
    for r in resps {
        assert_eq!(r.status, 200, "{what}:\n{}", r.describe());
        assert!(r.body == resps[0].body, "{what}: concurrent first requests got different manifests");
    }
    let digest = sha256(&resps[0].body);
    for r in resps {
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()), "{what}");
    }
    digest
}

/// A registry in this process over a server's castore and PathInfo
/// services (gRPC) and its own counting record store, with the demo spec
/// recorded but not built (`image add` builds both flavours at once, so
/// only a spec recorded directly has first requests left).
struct InProcess {
    meta: Arc<CountingKv>,
    addr: std::net::SocketAddr,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    async fn start(server: &Server, fx: &ImageFixture) -> InProcess {
        let url = server.url();
        let blobs = castore::blob_service_from_url(&url).unwrap();
        let dirs = castore::directory_service_from_url(&url).unwrap();
        let paths = store::url::path_info_service_from_url(&url, blobs.clone(), dirs.clone()).unwrap();
        let meta = Arc::new(CountingKv { inner: MemoryStore::new(), puts: Mutex::new(0) });
        let reg = registry::Registry::new(registry::RegistryConfig::default(), blobs, dirs, paths, meta.clone());
        let spec = registry::images::ImageSpec {
            paths: vec![fx.app.clone()],
            copy_to_root: vec![fx.app.clone(), fx.busybox.clone()],
            entrypoint: Some(vec!["/bin/prog".into()]),
            env: vec!["FOO=bar".into()],
            arch: "amd64".into(),
            ..Default::default()
        };
        registry::images::spec::put(&*meta, "demo/app", "v1", &spec).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move { axum::serve(listener, registry::router(reg)).await });
        InProcess { meta, addr, serving }
    }

    /// `n` concurrent GETs of `repo:v1`'s manifest: its digest, and how
    /// many records they wrote.
    async fn first_gets(&self, repo: &str, n: usize) -> (String, usize) {
        let before = self.meta.puts();
        let (addr, path) = (self.addr, format!("/v2/{repo}/manifests/v1"));
        let resps = tokio::task::spawn_blocking(move || concurrently(addr, &path, n)).await.unwrap();
        (assert_all_same(&resps, repo), self.meta.puts() - before)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Concurrent first requests build a manifest once. Observed without
/// server changes: a registry in this process over the server's services
/// (so the same store paths) and a record store counting its writes; 8
/// concurrent first GETs per flavour must write exactly the records one
/// GET writes on a twin registry (a second build would write its records
/// again: first writer wins, so they are puts all the same), and agree
/// with what the real server built for the same spec. On the real server,
/// 8 concurrent first GETs of package-named images (built on first request)
/// agree.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_requests_build_once() {
    let fx = image_fixture();
    let server = Server::start();
    import_fixture(&server, fx, None);
    let (want_ordinary, want_nix) = image_add(&server, "demo/app:v1", &demo_args(fx));

    let single = InProcess::start(&server, fx).await;
    let concurrent = InProcess::start(&server, fx).await;
    for (repo, want) in [("demo/app", &want_ordinary), ("nix-snapshotter/demo/app", &want_nix)] {
        let (one, one_writes) = single.first_gets(repo, 1).await;
        assert_eq!(&one, want, "{repo}: the in-process registry built another manifest than the server");
        assert!(one_writes > 0, "{repo}: a first GET wrote no record");
        let (eight, eight_writes) = concurrent.first_gets(repo, 8).await;
        assert_eq!(&eight, want, "{repo}");
        assert_eq!(
            eight_writes, one_writes,
            "{repo}: 8 concurrent first GETs wrote {eight_writes} records, one GET writes {one_writes}: built more than once"
        );
        // Built: later requests only read.
        let (again, writes) = concurrent.first_gets(repo, 8).await;
        assert_eq!((&again, writes), (want, 0), "{repo}: requests after the build wrote records");
    }
    drop((single, concurrent));

    // The real server: a package-named image is built on first request.
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index.json");
    std::fs::write(&index, nix_env_index(&[("app", &fx.app), ("dep", &fx.dep)]).to_string()).unwrap();
    ok("storefront packages import", packages_import(&server, &index, &[]));
    let a = server.addr;
    let resps =
        tokio::task::spawn_blocking(move || concurrently(a, "/v2/pkgs/dep/app/manifests/latest", 8)).await.unwrap();
    let digest = assert_all_same(&resps, "pkgs/dep/app");
    assert_eq!(head_manifest(&server, "pkgs/app/dep", "latest"), (200, Some(digest)));
    let resps =
        tokio::task::spawn_blocking(move || concurrently(a, "/v2/nix-snapshotter/pkgs/app/manifests/latest", 8))
            .await
            .unwrap();
    assert_all_same(&resps, "nix-snapshotter/pkgs/app");
}

// ---------------------------------------------------------------- 5. errors

#[test]
fn errors_name_what_is_missing() {
    let fx = image_fixture();
    let server = Server::start();
    import_fixture(&server, fx, None);
    let missing = "/nix/store/00000000000000000000000000000000-sf-img-not-imported";
    let other = "/nix/store/11111111111111111111111111111111-sf-img-also-missing";
    let out = image(&server, &["add", "demo/broken:v1", "--path", &fx.app, missing, "--path", other]);
    failed("image add with paths not in the store", out, &[basename(missing), basename(other)]);
    let out = image(&server, &["add", "demo/broken:v1", "--path", &fx.app, "--copy-to-root", missing]);
    failed("image add with a copy-to-root path not in the store", out, &[basename(missing)]);
    let out = image(&server, &["add", "demo/broken:v1", "--path", "/etc"]);
    failed("image add with a path outside the store", out, &["/etc"]);
    let out = image(&server, &["add", "demo/broken:v1", "--path", &fx.app, "--env", "NOEQUALS"]);
    failed("image add with a bad --env", out, &["NOEQUALS"]);
    // Nothing was recorded.
    let list = ok("storefront image list", image(&server, &["list"]));
    assert!(!list.contains("demo/broken"), "a failed add was recorded:\n{list}");
    for repo in ["demo/broken", "nix-snapshotter/demo/broken"] {
        assert_registry_error(
            &get(server.addr, &format!("/v2/{repo}/manifests/v1")),
            &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"],
        );
    }

    // Unknown tags of a defined image, unknown names, unknown digests.
    image_add(&server, "demo/app:v1", &demo_args(fx));
    for repo in ["demo/app", "nix-snapshotter/demo/app"] {
        // The brief allows either code for an unknown tag (but see the
        // report: NAME_UNKNOWN "no repository" while its tags list answers).
        assert_registry_error(
            &get(server.addr, &format!("/v2/{repo}/manifests/nosuchtag")),
            &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"],
        );
        let head = head(server.addr, &format!("/v2/{repo}/manifests/nosuchtag"));
        assert_eq!(head.status, 404, "{}", head.describe());
        let tags = get(server.addr, &format!("/v2/{repo}/tags/list"));
        assert_eq!(tags.status, 200, "{}", tags.describe());
        assert_eq!(serde_json::from_slice::<Value>(&tags.body).unwrap()["tags"], json!(["v1"]), "{repo} tags");
    }
    assert_registry_error(&get(server.addr, "/v2/no/such/image/manifests/v1"), &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]);
    let zero = format!("sha256:{}", "0".repeat(64));
    assert_registry_error(&get(server.addr, &format!("/v2/demo/app/blobs/{zero}")), &["BLOB_UNKNOWN"]);
    let skopeo = Skopeo::new();
    let err = skopeo.fail(&["inspect", "--raw", "--tls-verify=false", &docker_ref(&server, "demo/app:nosuchtag")]);
    assert!(err.contains("manifest unknown") || err.contains("name unknown"), "{err}");
    // Names under the generated prefixes cannot be defined.
    let out = image(&server, &["add", "nix-snapshotter/mine:v1", "--path", &fx.app]);
    failed("image add under nix-snapshotter/", out, &["nix-snapshotter/"]);
    let out = image(&server, &["add", "pkgs/mine:v1", "--path", &fx.app]);
    failed("image add under pkgs/", out, &["pkgs/"]);
    // Last (it fails today): a defined (generated) repository with an
    // unknown digest: the manifest is unknown, not the name.
    assert_registry_error(&get(server.addr, &format!("/v2/demo/app/manifests/{zero}")), &["MANIFEST_UNKNOWN"]);
}

// ------------------------------------------------------- 6. package images

#[test]
fn package_named_images() {
    let fx = image_fixture();
    let server = Server::start();
    import_fixture(&server, fx, None);
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index.json");
    let json = nix_env_index(&[("app", &fx.app), ("dep", &fx.dep)]);
    std::fs::write(&index, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let out = ok("storefront packages import", packages_import(&server, &index, &[]));
    assert!(out.contains('2'), "packages import should say how many: {out}");

    let skopeo = Skopeo::new();
    let a = skopeo.raw(&docker_ref(&server, "pkgs/app/dep:latest"));
    let b = skopeo.raw(&docker_ref(&server, "pkgs/dep/app"));
    assert!(a == b, "pkgs/app/dep and pkgs/dep/app differ");
    let digest = sha256(&a);
    let inspect = skopeo.inspect(&docker_ref(&server, "pkgs/dep/app:latest"));
    assert_eq!(inspect["Digest"], digest, "{inspect:#}");
    assert_eq!(head_manifest(&server, "pkgs/dep/dep/app", "latest"), (200, Some(digest.clone())), "duplicates");

    // The image holds the packages' closure and links them into /.
    let layout = skopeo.copy_to_layout(&docker_ref(&server, "pkgs/app/dep:latest"));
    assert_eq!(layout.digest, digest);
    let rootfs = Scratch::new();
    for l in layout.layers() {
        assert_eq!(l["mediaType"], OCI_LAYER_TAR);
        untar(&layout.blob_path(l["digest"].as_str().unwrap()), rootfs.path());
    }
    for p in &fx.paths {
        assert_same_tree(Path::new(p), &rootfs.path().join(p.trim_start_matches('/')));
    }
    assert_eq!(std::fs::read_link(rootfs.path().join("bin/prog")).unwrap(), Path::new(&format!("{}/bin/prog", fx.app)));
    assert_eq!(
        std::fs::read_link(rootfs.path().join("share/greeting")).unwrap(),
        Path::new(&format!("{}/share/greeting", fx.dep))
    );

    // The nix-snapshotter flavour of a package image.
    let nix: Value = serde_json::from_slice(&skopeo.raw(&docker_ref(&server, "nix-snapshotter/pkgs/app"))).unwrap();
    let ann = &nix["layers"][0]["annotations"];
    assert_eq!(ann[NIX_LAYER], "true", "{nix:#}");
    let listed: Vec<&str> =
        (0..fx.paths.len()).map(|i| ann[format!("{NIX_STORE_PATH}.{i}")].as_str().unwrap_or("")).collect();
    assert_eq!(listed, fx.paths.iter().map(String::as_str).collect::<Vec<_>>(), "{nix:#}");
    assert!(ann[NIX_CLOSURE].as_str().is_some(), "{nix:#}");

    // Unknown packages: MANIFEST_UNKNOWN naming them.
    let message =
        assert_registry_error(&get(server.addr, "/v2/pkgs/app/nosuchpkg/manifests/latest"), &["MANIFEST_UNKNOWN"]);
    assert!(message.contains("nosuchpkg") && !message.contains("app,"), "{message}");
    let message = assert_registry_error(
        &get(server.addr, "/v2/nix-snapshotter/pkgs/zzunknown/manifests/latest"),
        &["MANIFEST_UNKNOWN"],
    );
    assert!(message.contains("zzunknown"), "{message}");
    let err = skopeo.fail(&["inspect", "--raw", "--tls-verify=false", &docker_ref(&server, "pkgs/nosuchpkg")]);
    assert!(err.contains("manifest unknown") && err.contains("nosuchpkg"), "{err}");
    // `shell` without bash and coreutils in the index names them.
    let message =
        assert_registry_error(&get(server.addr, "/v2/pkgs/shell/app/manifests/latest"), &["MANIFEST_UNKNOWN"]);
    assert!(message.contains("bash") && message.contains("coreutils"), "{message}");

    // With them (busybox standing in for both), `shell` gives a shell.
    let index2 = dir.path().join("shell.json");
    let json = nix_env_index(&[("bash", &fx.busybox), ("coreutils", &fx.busybox)]);
    std::fs::write(&index2, json.to_string()).unwrap();
    ok("storefront packages import", packages_import(&server, &index2, &[]));
    let layout = skopeo.copy_to_layout(&docker_ref(&server, "pkgs/shell/app"));
    let rootfs = Scratch::new();
    for l in layout.layers() {
        untar(&layout.blob_path(l["digest"].as_str().unwrap()), rootfs.path());
    }
    let out = chroot(rootfs.path(), &["/bin/sh", "-c", "echo shell works; FOO=pkgs /bin/prog"], &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("shell works\n{}", prog_output("pkgs")));
}

// ------------------------------------------------- 7. packages pulled through

#[tokio::test(flavor = "multi_thread")]
async fn package_images_pull_paths_through_upstream() {
    let fx = image_fixture();
    let key_a = Key::generate("sf-img-upstream-a");
    let a = Server::start_args(&["--signing-key", key_a.secret()]);
    import_fixture(&a, fx, None);
    let b = Server::start_args(&["--upstream", &http_url(&a), "--trusted-public-key", &key_a.public]);
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index.json");
    std::fs::write(&index, nix_env_index(&[("app", &fx.app)]).to_string()).unwrap();
    ok("storefront packages import into B", packages_import(&b, &index, &[]));
    let b_paths = path_infos(&b);
    for p in &fx.paths {
        assert!(b_paths.get(store_path(p).digest()).await.unwrap().is_none(), "B has {p} before anyone asked");
    }

    let skopeo = Skopeo::new();
    let inspect = skopeo.inspect(&docker_ref(&b, "pkgs/app"));
    let digest = inspect["Digest"].as_str().unwrap().to_owned();
    for p in &fx.paths {
        assert!(b_paths.get(store_path(p).digest()).await.unwrap().is_some(), "B did not fetch {p} from A");
    }
    // A gone: B has everything, and serves the image and the narinfos.
    drop(a);
    for p in &fx.paths {
        let resp = get(b.addr, &narinfo_path(p));
        assert_eq!(resp.status, 200, "B's narinfo of {p} with A stopped:\n{}", resp.describe());
    }
    let layout = skopeo.copy_to_layout(&docker_ref(&b, "pkgs/app"));
    assert_eq!(layout.digest, digest);
    let rootfs = Scratch::new();
    for l in layout.layers() {
        untar(&layout.blob_path(l["digest"].as_str().unwrap()), rootfs.path());
    }
    for p in &fx.paths {
        assert_same_tree(Path::new(p), &rootfs.path().join(p.trim_start_matches('/')));
    }
    skopeo.raw(&docker_ref(&b, "nix-snapshotter/pkgs/app"));
}

// ------------------------------------------------------------------ 8. auth

#[test]
fn image_add_needs_a_write_token_on_a_secure_server() {
    let fx = image_fixture();
    let server = Server::start_secure(&[]);
    let token = server.write_token();
    import_fixture(&server, fx, Some(&token));

    let mut args = vec!["add".to_owned(), "demo/app:v1".to_owned()];
    args.extend(demo_args(fx));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = failed("image add without a token", image(&server, &args), &["401"]);
    assert!(stderr.contains("token"), "the refusal should say a token is needed: {stderr}");
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-tokens");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let mut with_wrong = args.clone();
    with_wrong.extend(["--token-file", wrong.to_str().unwrap()]);
    failed("image add with a wrong token", image(&server, &with_wrong), &["401"]);
    assert_eq!(head_manifest(&server, "demo/app", "v1").0, 404, "a refused add was recorded");
    let index = dir.path().join("index.json");
    std::fs::write(&index, nix_env_index(&[("app", &fx.app)]).to_string()).unwrap();
    failed("packages import without a token", packages_import(&server, &index, &[]), &["401"]);

    let token_file = server.token_file();
    let mut with_token = args.clone();
    with_token.extend(["--token-file", token_file.to_str().unwrap()]);
    let stdout = ok("image add with the token", image(&server, &with_token));
    let added = parse_added(&stdout);
    assert_eq!(head_manifest(&server, "demo/app", "v1"), (200, Some(added["ordinary"].1.clone())));
    ok(
        "packages import with the token",
        packages_import(&server, &index, &["--token-file", token_file.to_str().unwrap()]),
    );
    // Reads stay public.
    let skopeo = Skopeo::new();
    skopeo.inspect(&docker_ref(&server, "demo/app:v1"));
    skopeo.inspect(&docker_ref(&server, "pkgs/app"));
    let list = ok("image list", image(&server, &["list"]));
    assert!(list.contains("demo/app:v1"), "{list}");
}
