//! Two storefront replicas on one Garage bucket (issue 7's acceptance): a
//! real 3-node Garage cluster on loopback, replicas A and B on the same
//! bucket through different nodes (B with a near cache on its own disk),
//! sharing a write token and a signing key.
//! A closure is imported and an image defined through A; through B skopeo
//! pulls the image (both flavours, the digests A reported), Nix substitutes
//! the closure from B's binary cache (only the shared key trusted), and the
//! closure comes back over gRPC (`storefront fetch`, and every NAR rendered
//! and checked by `verify --deep`). A chunked registry upload started on A
//! is continued and finished on B. Then the Garage node neither replica
//! talks to is killed, and everything still reads through both.
//!
//! Tools: garage (`scripts/install-garage`), nix-bin, skopeo,
//! busybox-static, diff.
#[path = "common/cache.rs"]
mod cache;
mod common;
#[path = "common/images.rs"]
mod images;
#[path = "common/replicas.rs"]
mod replicas;

use std::{collections::BTreeMap, process::Stdio, time::Instant};

use cache::{Key, NixClient, get, head, narinfo_path, request};
use common::{Rng, nix, storefront};
use images::{ImageFixture, Skopeo, SkopeoExt, demo_args, docker_ref, image_add, image_fixture};
use replicas::{Replica, Tokens, assert_clean};
use serde_json::Value;
use testkit::garage::Cluster;

/// The image both replicas serve.
const IMAGE: &str = "replicas/app";

fn sha256(data: &[u8]) -> String {
    images::sha256(data)
}

/// What must read the same through a replica before and after a Garage
/// node goes away: the image's manifests and blobs, the closure's narinfos
/// and NARs (Nix, require-sigs), and the closure over gRPC.
fn assert_reads(
    replica: &Replica,
    tokens: &Tokens,
    key: &Key,
    fx: &ImageFixture,
    digests: &(String, String),
    what: &str,
) {
    let started = Instant::now();
    let skopeo = Skopeo::new();
    for (reference, digest) in [
        (docker_ref(&replica.server, &format!("{IMAGE}:latest")), &digests.0),
        (docker_ref(&replica.server, &format!("nix-snapshotter/{IMAGE}:latest")), &digests.1),
    ] {
        let raw = skopeo.raw(&reference);
        assert_eq!(&sha256(&raw), digest, "{what}: the manifest of {reference} is not the one A defined");
        let layout = skopeo.copy_to_layout(&reference);
        assert_eq!(&layout.digest, digest, "{what}: skopeo copy of {reference}");
        assert!(!layout.layers().is_empty(), "{what}: {reference} has no layers");
    }

    for path in &fx.paths {
        let resp = get(replica.server.addr, &narinfo_path(path));
        assert_eq!(resp.status, 200, "{what}: narinfo of {path}: {}", resp.describe());
        assert!(resp.text().contains(&format!("Sig: {}:", key.name)), "{what}: {path} is not signed by the shared key");
    }
    let client = NixClient::new().trust(&[key]);
    let root = client.store_root("dest");
    let out = client.copy_from(&replica.http_url(), &root, &[&fx.app]);
    assert!(
        out.status.success(),
        "{what}: nix copy --from {} (require-sigs) failed:\n{}",
        replica.http_url(),
        String::from_utf8_lossy(&out.stderr)
    );
    let source = nix::path_info_json(&fx.paths);
    let dest: BTreeMap<String, Value> =
        match serde_json::from_str(&client.nix_ok(&["path-info", "--store", &root, "--json", "-r", &fx.app]))
            .expect("path-info JSON")
        {
            Value::Array(items) => items.into_iter().map(|i| (i["path"].as_str().unwrap().to_owned(), i)).collect(),
            Value::Object(map) => map.into_iter().collect(),
            other => panic!("unexpected path-info output {other}"),
        };
    assert_eq!(dest.keys().collect::<Vec<_>>(), fx.paths.iter().collect::<Vec<_>>(), "{what}: substituted closure");
    for p in &fx.paths {
        assert_eq!(dest[p]["narHash"], source[p]["narHash"], "{what}: {p}: NarHash after substitution");
    }

    // Over gRPC: every NAR rendered through the replica and checked
    // against its PathInfo, whose NarHash is Nix's.
    let report = replicas::verify(&["--store", &replica.grpc_url(tokens), "--deep"]);
    assert_eq!(report.0, Some(0), "{what}: verify --deep through the replica: {:#}", report.1);
    // The closure, and the closure-info path the nix-snapshotter image names.
    let nars = report.1["nars"].as_u64().unwrap_or_default();
    assert!(nars > fx.paths.len() as u64 && nars == report.1["paths"].as_u64().unwrap(), "{what}: {:#}", report.1);
    eprintln!("{what}: reads through {} in {:.1} s", replica.server.addr, started.elapsed().as_secs_f64());
}

/// `storefront fetch` of the closure from the replica over gRPC into a
/// plain directory: every path arrives, equal to the original. (No key to
/// trust: an import from the local Nix store carries no signatures, and
/// the server signs narinfos, not PathInfos; fetch still checks every
/// NarHash.)
fn assert_fetches(replica: &Replica, tokens: &Tokens, fx: &ImageFixture) {
    let dir = images::Scratch::new();
    let out = storefront()
        .args(["fetch", "--store", &replica.grpc_url(tokens), "--store-dir"])
        .arg(dir.path())
        .arg(&fx.app)
        .stdin(Stdio::null())
        .output()
        .expect("running storefront fetch");
    assert!(
        out.status.success(),
        "storefront fetch from {} failed:\nstdout: {}\nstderr: {}",
        replica.server.addr,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &fx.paths {
        let fetched = dir.path().join(images::basename(path));
        let diff = nix::output(
            std::process::Command::new(nix::tool("diff")).args(["-r", "--no-dereference"]).arg(path).arg(&fetched),
        );
        assert!(diff.status.success(), "{path} fetched from B differs:\n{}", String::from_utf8_lossy(&diff.stdout));
    }
}

/// The OCI chunked upload: POST and the first PATCH on A, the second PATCH
/// and the closing PUT on B; the blob then reads back from A.
fn chunked_upload_across_replicas(a: &Replica, b: &Replica, tokens: &Tokens) {
    let data = Rng::new(7).bytes(3 << 20);
    let digest = sha256(&data);
    let auth = format!("Bearer {}", tokens.token);
    let auth = [("Authorization", auth.as_str())];
    let resp = request(a.server.addr, "POST", "/v2/replicas/upload/blobs/uploads/", &auth, b"");
    assert_eq!(resp.status, 202, "POST on A: {}", resp.describe());
    let location = resp.header("location").expect("a Location").to_owned();
    let half = data.len() / 2;
    let range = format!("0-{}", half - 1);
    let headers = [auth[0], ("Content-Range", range.as_str()), ("Content-Type", "application/octet-stream")];
    let resp = request(a.server.addr, "PATCH", &location, &headers, &data[..half]);
    assert_eq!(resp.status, 202, "PATCH on A: {}", resp.describe());
    let location = resp.header("location").unwrap_or(&location).to_owned();

    let resp = request(b.server.addr, "GET", &location, &auth, b"");
    assert_eq!(resp.status, 204, "the session, asked on B: {}", resp.describe());
    assert_eq!(resp.header("range"), Some(range.as_str()), "B sees A's part");
    let range = format!("{half}-{}", data.len() - 1);
    let headers = [auth[0], ("Content-Range", range.as_str()), ("Content-Type", "application/octet-stream")];
    let resp = request(b.server.addr, "PATCH", &location, &headers, &data[half..]);
    assert_eq!(resp.status, 202, "PATCH on B: {}", resp.describe());
    let location = resp.header("location").unwrap_or(&location).to_owned();
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = request(b.server.addr, "PUT", &format!("{location}{sep}digest={digest}"), &auth, b"");
    assert_eq!(resp.status, 201, "PUT on B: {}", resp.describe());

    let blob = format!("/v2/replicas/upload/blobs/{digest}");
    let resp = head(b.server.addr, &blob);
    assert_eq!(resp.status, 200, "HEAD of the blob on B: {}", resp.describe());
    assert_eq!(resp.header("content-length"), Some(data.len().to_string().as_str()));
    let resp = get(a.server.addr, &blob);
    assert_eq!(resp.status, 200, "the blob through A: {}", resp.describe());
    assert!(resp.body == data, "the blob read through A differs from what was uploaded");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_garage_serve_what_either_stored() {
    let started = Instant::now();
    let fx = image_fixture();
    let key = Key::generate("sf-replicas-1");
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await.unwrap();
    eprintln!("garage up in {:.1} s", started.elapsed().as_secs_f64());
    let tokens = Tokens::new("replicas-token-5d1e");
    // A talks to node 0, B to node 1; node 2 is the one that goes away.
    let prefix = format!("replicas-{}", std::process::id());
    let (url_a, url_b) = (cluster.bucket_url_via(0, &prefix), cluster.bucket_url_via(1, &prefix));
    let a = Replica::start(&url_a, &tokens, &["--signing-key", key.secret()]);
    // B keeps what it reads in a near cache on its own disk, as the
    // deployment guide suggests (a `&` of the nested address as %26).
    let near = tempfile::tempdir().unwrap();
    let cached_b = format!(
        "cache:?near=redb:{}&far={}&immutable=pathinfo",
        near.path().join("near.redb").display(),
        url_b.replace('%', "%25").replace('&', "%26")
    );
    let b = Replica::start(&cached_b, &tokens, &["--signing-key", key.secret()]);

    let out = storefront()
        .args(["import", "--store", &a.grpc_url(&tokens)])
        .arg(&fx.gc_root)
        .stdin(Stdio::null())
        .output()
        .expect("running storefront import");
    images::ok("storefront import through A", out);
    let mut args = demo_args(fx);
    args.extend(["--token-file".to_owned(), tokens.file_arg().to_owned()]);
    let digests = image_add(&a.server, IMAGE, &args);
    eprintln!("imported and defined through A at {:.1} s", started.elapsed().as_secs_f64());

    assert_reads(&b, &tokens, &key, fx, &digests, "B");
    assert_fetches(&b, &tokens, fx);
    chunked_upload_across_replicas(&a, &b, &tokens);
    let report = assert_clean(&url_b, &[]);
    assert_eq!(report["paths"].as_u64(), Some(fx.paths.len() as u64 + 1), "the closure and a closure-info: {report:#}");
    let near_chunks = count_files(&near.path().join("near.redb.chunks"));
    assert!(near_chunks > 0, "B's reads left no chunk in its near cache");
    eprintln!("B read everything at {:.1} s", started.elapsed().as_secs_f64());

    // Killing a node blocks only for as long as the process takes to die.
    cluster.stop_node(2);
    for (replica, name) in [(&b, "B without node 2"), (&a, "A without node 2")] {
        assert_reads(replica, &tokens, &key, fx, &digests, name);
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Files under `dir`, recursively (0 if it does not exist).
fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { count_files(&e.path()) } else { 1 }).sum()
}
