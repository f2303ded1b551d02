//! The OCI registry with a real client (issue 5's acceptance): skopeo
//! pushes an arbitrary multi-layer OCI image (gzip and uncompressed
//! layers, written here as an OCI layout without network) to a server that
//! needs a write token, and pulls it back byte-identical; it pushes through
//! upload sessions with `PATCH` (checked in `/metrics`); a Docker schema 2
//! push works the same; without (or with wrong) credentials a push fails and
//! stores nothing; reads stay public (or need a read token when the server
//! has a read token file), and the `/v2/` version check challenges clients
//! so that they send their credentials. Tools: skopeo, tar, gzip.
mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{Rng, Server, request, skopeo::Skopeo};
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn sha256(data: &[u8]) -> String {
    registry::oci::Digest::of(data).to_string()
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("`{name}` is not installed: these tests need it (Debian: apt-get install {name})"))
}

/// An OCI image layout written by hand: the tag `v1` names a manifest with
/// a config and three layers (gzip, uncompressed — or gzip too without
/// `plain` —, and a large gzip one spanning several castore chunks).
struct Layout {
    dir: tempfile::TempDir,
    manifest: Vec<u8>,
    /// Every blob (config, layers, manifest) by digest.
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Layout {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn reference(&self) -> String {
        format!("oci:{}:v1", self.path().display())
    }

    fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }
}

#[track_caller]
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A tar of `files` (name → contents), made by the real tar.
fn tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let src = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let path = src.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    run(Command::new(tool("tar"))
        .args(["--sort=name", "--mtime=@1", "--owner=0", "--group=0", "-cf", "-", "-C"])
        .arg(src.path())
        .arg("."))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer");
    std::fs::write(&file, data).unwrap();
    run(Command::new(tool("gzip")).args(["-n", "-c"]).arg(&file))
}

fn write_layout(seed: u64, plain: bool) -> Layout {
    let mut rng = Rng::new(seed);
    let small = tar(&[("etc/hello", format!("hello {seed}\n").into_bytes()), ("bin/tool", rng.bytes(30_000))]);
    let uncompressed = tar(&[("usr/share/data", rng.bytes(50_000)), ("usr/share/doc/README", b"read me\n".to_vec())]);
    let large = tar(&[("opt/big", rng.bytes(3 << 20))]);
    let middle =
        if plain { (uncompressed.clone(), &uncompressed, false) } else { (gzip(&uncompressed), &uncompressed, true) };
    let layers = [(gzip(&small), &small, true), middle, (gzip(&large), &large, true)];
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/tool"], "Env": [format!("SEED={seed}")] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(_, t, _)| sha256(t)).collect::<Vec<_>>() },
    }))
    .unwrap();
    let descriptor =
        |media_type: &str, data: &[u8]| json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() });
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|(blob, _, gz)| {
            let t = if *gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" };
            descriptor(t, blob)
        }).collect::<Vec<_>>(),
        "annotations": { "org.example.seed": seed.to_string() },
    }))
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let blob_dir = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).unwrap();
    let mut blobs = BTreeMap::new();
    for data in layers.into_iter().map(|(b, _, _)| b).chain([config, manifest.clone()]) {
        let digest = sha256(&data);
        std::fs::write(blob_dir.join(digest.trim_start_matches("sha256:")), &data).unwrap();
        blobs.insert(digest, data);
    }
    std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "v1" },
        }],
    });
    std::fs::write(dir.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Layout { dir, manifest, blobs }
}

/// Every blob of an OCI layout directory, by digest.
fn layout_blobs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (format!("sha256:{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn docker_ref(server: &Server, name: &str) -> String {
    format!("docker://{}/{name}", server.addr)
}

/// The count of registry requests with `method` and `status` in `/metrics`.
fn registry_requests(server: &Server, method: &str, status: u16) -> u64 {
    let text = common::get(server.addr, "/metrics").text();
    let needle = format!("storefront_requests_total{{kind=\"registry\",method=\"{method}\",status=\"{status}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&needle)).map(|n| n.trim().parse().unwrap()).unwrap_or(0)
}

fn creds(token: &str) -> String {
    format!("skopeo:{token}")
}

#[test]
fn push_and_pull_back_identical() {
    let server = Server::start_secure(&[]);
    let token = server.write_token();
    let skopeo = Skopeo::new();
    let layout = write_layout(1, true);
    let dest = docker_ref(&server, "some/name:v1");

    let patches_before = registry_requests(&server, "PATCH", 202);
    skopeo.run(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds(&token),
        &layout.reference(),
        &dest,
    ]);
    // skopeo uploads each blob through a session: POST, PATCH, PUT.
    assert!(
        registry_requests(&server, "PATCH", 202) >= patches_before + 4,
        "skopeo's uploads did not go through PATCH:\n{}",
        common::get(server.addr, "/metrics").text()
    );

    // The manifest is served as pushed: byte for byte, by tag and digest.
    let raw = skopeo.run(&["inspect", "--raw", "--tls-verify=false", &dest]);
    assert!(raw == layout.manifest, "the served manifest differs:\n{}", String::from_utf8_lossy(&raw));
    let by_digest = docker_ref(&server, &format!("some/name@{}", layout.manifest_digest()));
    assert!(skopeo.run(&["inspect", "--raw", "--tls-verify=false", &by_digest]) == layout.manifest);
    let head = request(server.addr, "HEAD", "/v2/some/name/manifests/v1", &[], b"");
    assert_eq!(head.status, 200, "{}", head.describe());
    assert_eq!(head.header("docker-content-digest"), Some(layout.manifest_digest().as_str()));
    assert_eq!(head.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(head.header("content-length"), Some(layout.manifest.len().to_string().as_str()));

    // Pulled back into a fresh layout (anonymously: reads are public).
    let back = tempfile::tempdir().unwrap();
    let back_ref = format!("oci:{}:v1", back.path().display());
    skopeo.run(&["copy", "--preserve-digests", "--src-tls-verify=false", &dest, &back_ref]);
    let index: Value = serde_json::from_slice(&std::fs::read(back.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], layout.manifest_digest());
    let pulled = layout_blobs(back.path());
    assert_eq!(pulled.keys().collect::<Vec<_>>(), layout.blobs.keys().collect::<Vec<_>>());
    for (digest, data) in &layout.blobs {
        assert!(pulled[digest] == *data, "blob {digest} came back different");
    }

    // The registry's own answers on the real listener: its JSON, not the
    // binary cache's catch-all; and the cache still answers its own paths.
    let tags = common::get(server.addr, "/v2/some/name/tags/list");
    assert_eq!(tags.status, 200, "{}", tags.describe());
    assert_eq!(serde_json::from_slice::<Value>(&tags.body).unwrap(), json!({"name": "some/name", "tags": ["v1"]}));
    let missing = common::get(server.addr, "/v2/some/absent/manifests/v1");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(serde_json::from_slice::<Value>(&missing.body).unwrap()["errors"][0]["code"], "NAME_UNKNOWN");
    assert_eq!(common::get(server.addr, "/nix-cache-info").status, 200);

    // skopeo's default push (it may compress the uncompressed layer) to
    // another repository: the blobs already here are mounted or pushed
    // again, and everything resolves (skopeo verifies every digest).
    let other = docker_ref(&server, "some/other:v1");
    skopeo.run(&["copy", "--dest-tls-verify=false", "--dest-creds", &creds(&token), &layout.reference(), &other]);
    let dir = tempfile::tempdir().unwrap();
    skopeo.run(&["copy", "--src-tls-verify=false", &other, &format!("dir:{}", dir.path().display())]);
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);

    let catalog = common::get(server.addr, "/v2/_catalog");
    assert_eq!(
        serde_json::from_slice::<Value>(&catalog.body).unwrap(),
        json!({"repositories": ["some/name", "some/other"]})
    );
}

#[test]
fn docker_schema2_push() {
    let server = Server::start_secure(&[]);
    let token = server.write_token();
    let skopeo = Skopeo::new();
    // Only gzip layers: a conversion to schema 2 then changes no blob.
    let layout = write_layout(2, false);
    let dest = docker_ref(&server, "docker/image:v2s2");
    skopeo.run(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds(&token),
        &layout.reference(),
        &dest,
    ]);
    let raw = skopeo.run(&["inspect", "--raw", "--tls-verify=false", &dest]);
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    let head = request(server.addr, "HEAD", "/v2/docker/image/manifests/v2s2", &[], b"");
    assert_eq!(head.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(head.header("docker-content-digest"), Some(sha256(&raw).as_str()));

    // Pulled back as is: the same manifest, and the source's blobs.
    let dir = tempfile::tempdir().unwrap();
    skopeo.run(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &format!("dir:{}", dir.path().display()),
    ]);
    assert!(std::fs::read(dir.path().join("manifest.json")).unwrap() == raw);
    for layer in manifest["layers"].as_array().unwrap().iter().chain([&manifest["config"]]) {
        let digest = layer["digest"].as_str().unwrap();
        let data = std::fs::read(dir.path().join(digest.trim_start_matches("sha256:"))).unwrap();
        assert!(layout.blobs.get(digest) == Some(&data), "blob {digest} differs from the source's");
    }
}

#[test]
fn pushes_without_credentials_fail_and_store_nothing() {
    let server = Server::start_secure(&[]);
    let skopeo = Skopeo::new();
    let layout = write_layout(3, true);
    let dest = docker_ref(&server, "denied/image:v1");
    let err = skopeo.fail(&["copy", "--dest-tls-verify=false", &layout.reference(), &dest]);
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");
    let err = skopeo.fail(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "x:not-the-token",
        &layout.reference(),
        &dest,
    ]);
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");
    let catalog = common::get(server.addr, "/v2/_catalog");
    assert_eq!(serde_json::from_slice::<Value>(&catalog.body).unwrap(), json!({"repositories": []}));
    for digest in layout.blobs.keys() {
        let resp = request(server.addr, "HEAD", &format!("/v2/denied/image/blobs/{digest}"), &[], b"");
        assert_eq!(resp.status, 404);
    }
    assert_eq!(registry_requests(&server, "PATCH", 202), 0);
}

#[test]
fn version_check_challenges_and_read_tokens() {
    // Public reads, write tokens: the version check challenges clients that
    // send nothing (so that they send their credentials) and tells a good
    // token from a bad one; reads themselves need nothing.
    let server = Server::start_secure(&[]);
    let token = server.write_token();
    let ping = |headers: &[(&str, &str)]| request(server.addr, "GET", "/v2/", headers, b"");
    let refused = ping(&[]);
    assert_eq!(refused.status, 401, "{}", refused.describe());
    let realm = format!("http://{}/v2/token", server.addr);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(format!("Bearer realm=\"{realm}\",service=\"storefront\"").as_str())
    );
    // The token realm: credentials holding a token get it back, none get
    // an anonymous token (which counts as none), wrong ones get 401.
    let realm_get =
        |headers: &[(&str, &str)]| request(server.addr, "GET", "/v2/token?service=storefront", headers, b"");
    let issued = realm_get(&[("authorization", &common::basic_auth("any", &token))]);
    assert_eq!(issued.status, 200, "{}", issued.describe());
    assert_eq!(serde_json::from_slice::<Value>(&issued.body).unwrap()["token"], token.as_str());
    let anonymous: Value = serde_json::from_slice(&realm_get(&[]).body).unwrap();
    let anonymous = anonymous["token"].as_str().unwrap().to_owned();
    assert_eq!(realm_get(&[("authorization", &common::basic_auth("any", "wrong"))]).status, 401);
    assert_eq!(ping(&[("authorization", &format!("Bearer {anonymous}"))]).status, 401);
    let read =
        request(server.addr, "GET", "/v2/x/tags/list", &[("authorization", &format!("Bearer {anonymous}"))], b"");
    assert_ne!(read.status, 401, "an anonymous token reads what is public");
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(refused.header("docker-distribution-api-version"), Some("registry/2.0"));
    assert_eq!(serde_json::from_slice::<Value>(&refused.body).unwrap()["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(ping(&[("authorization", &format!("Bearer {token}"))]).status, 200);
    let bare = request(server.addr, "GET", "/v2", &[("authorization", &format!("Bearer {token}"))], b"");
    assert_eq!((bare.status, bare.text()), (200, "{}".to_owned()));
    assert_eq!(ping(&[("authorization", "Bearer wrong")]).status, 401);
    let write = request(server.addr, "POST", "/v2/x/blobs/uploads/", &[], b"");
    assert_eq!(write.status, 401);
    assert_eq!(serde_json::from_slice::<Value>(&write.body).unwrap()["errors"][0]["code"], "UNAUTHORIZED");
    let skopeo = Skopeo::new();
    let layout = write_layout(4, true);
    let dest = docker_ref(&server, "pub/image:v1");
    skopeo.run(&["copy", "--dest-tls-verify=false", "--dest-creds", &creds(&token), &layout.reference(), &dest]);
    skopeo.run(&["inspect", "--tls-verify=false", &dest]);

    // Private reads: the same with a read token.
    let dir = tempfile::tempdir().unwrap();
    let read_tokens = dir.path().join("read-tokens");
    std::fs::write(&read_tokens, "reader-secret\n").unwrap();
    let private = Server::start_secure(&["--read-token-file", read_tokens.to_str().unwrap()]);
    let ping = |headers: &[(&str, &str)]| request(private.addr, "GET", "/v2/", headers, b"");
    assert_eq!(ping(&[]).status, 401);
    assert_eq!(ping(&[("authorization", "Bearer reader-secret")]).status, 200);
    let dest = docker_ref(&private, "priv/image:v1");
    skopeo.run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds(&private.write_token()),
        &layout.reference(),
        &dest,
    ]);
    let err = skopeo.fail(&["inspect", "--tls-verify=false", &dest]);
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");
    skopeo.run(&["inspect", "--tls-verify=false", "--creds", "reader:reader-secret", &dest]);
    let manifest = request(private.addr, "GET", "/v2/priv/image/manifests/v1", &[], b"");
    assert_eq!(manifest.status, 401);
    assert_eq!(serde_json::from_slice::<Value>(&manifest.body).unwrap()["errors"][0]["code"], "UNAUTHORIZED");
}
