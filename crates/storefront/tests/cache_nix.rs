//! The binary cache with the real Nix (issue 4's acceptance): `nix copy
//! --to http://…` uploads an offline-built closure with netrc credentials
//! (every upload compression Nix offers, with and without `.ls` listings and
//! client signatures), then `nix copy --from` and substitution bring it into
//! a separate (chroot) store with `require-sigs` and only the server's key
//! trusted. Uploads that are unauthenticated, inconsistent, cut off or
//! missing references store nothing; NARs shared by several paths and
//! concurrent uploads work; a second server pulls through from the first
//! (or from a plain static cache), fetching each NAR once and refusing what
//! it cannot trust; NARs resume with `Range` (also with the real `curl`).
//!
//! Every Nix command runs with its own narinfo cache and configuration
//! ([`NixClient`]); each test has its own servers. Tools: nix-bin, curl,
//! xz-utils, zstd.
#[path = "common/cache.rs"]
mod cache;
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use cache::*;
use common::{
    Server,
    nix::{self, Fixture, fixture, tool},
};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// The fixture path whose name ends with `-sf-fixture-<name>`.
fn fx_path<'a>(fx: &'a Fixture, name: &str) -> &'a str {
    let suffix = format!("-sf-fixture-{name}");
    fx.paths.iter().find(|p| p.ends_with(&suffix)).unwrap_or_else(|| panic!("no {name} in {:?}", fx.paths))
}

/// `nix path-info --json` output by path.
fn path_info_by_path(json: &str) -> BTreeMap<String, Value> {
    match serde_json::from_str::<Value>(json).expect("path-info JSON") {
        Value::Array(items) => items.into_iter().map(|i| (i["path"].as_str().expect("path").to_owned(), i)).collect(),
        Value::Object(map) => map.into_iter().collect(),
        other => panic!("unexpected path-info output {other}"),
    }
}

fn string_set(v: &Value) -> BTreeSet<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

/// Brings the fixture closure from `url` into a fresh chroot store with
/// `require-sigs` and only `trusted` keys, and checks it there: every path
/// arrived, NarHash/NarSize/references agree with the system store, the
/// paths carry a signature by each of `signed_by`, and `nix store verify` and
/// `nix-store --verify-path` pass.
#[track_caller]
fn assert_copy_from(url: &str, trusted: &[&Key], signed_by: &[&Key], fx: &Fixture) {
    assert_copy_from_with(NixClient::new().trust(trusted), url, signed_by, fx);
}

/// [`assert_copy_from`] with a client of the caller's (trusted keys, netrc).
#[track_caller]
fn assert_copy_from_with(client: NixClient, url: &str, signed_by: &[&Key], fx: &Fixture) {
    let root = client.store_root("dest");
    let out = client.copy_from(url, &root, &[&fx.top]);
    assert!(
        out.status.success(),
        "nix copy --from {url} --to {root} (require-sigs) failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let source = nix::path_info_json(&fx.paths);
    let dest = path_info_by_path(&client.nix_ok(&["path-info", "--store", &root, "--json", "-r", &fx.top]));
    let want: BTreeSet<&String> = fx.paths.iter().collect();
    let got: BTreeSet<&String> = dest.keys().collect();
    assert_eq!(got, want, "the closure in the new store differs from the source closure");
    for p in &fx.paths {
        let (s, d) = (&source[p], &dest[p]);
        assert_eq!(d["narHash"], s["narHash"], "{p}: NarHash in the new store vs the source store");
        assert_eq!(d["narSize"], s["narSize"], "{p}: NarSize in the new store vs the source store");
        assert_eq!(string_set(&d["references"]), string_set(&s["references"]), "{p}: references");
        let sigs = string_set(&d["signatures"]);
        for key in signed_by {
            assert!(
                sigs.iter().any(|s| s.starts_with(&format!("{}:", key.name))),
                "{p}: no signature by {} in the new store: {sigs:?}",
                key.name
            );
        }
        let verify = nix::output(client.command("nix-store").args(["--store", &root, "--verify-path", p]));
        assert!(
            verify.status.success(),
            "nix-store --store {root} --verify-path {p}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    // Contents and signatures (against the trusted keys) of the whole closure.
    client.nix_ok(&["store", "verify", "--store", &root, "-r", &fx.top]);
}

/// Substitutes the fixture closure from `url` (`substituters = url`, only
/// `trusted` keys) into a fresh chroot store with `nix-store -r`, and checks
/// every path there.
#[track_caller]
fn assert_substitutes(url: &str, trusted: &[&Key], fx: &Fixture) {
    let client = NixClient::new().trust(trusted).set("substituters", url);
    let root = client.store_root("substituted");
    let out = nix::output(client.command("nix-store").args(["--store", &root, "-r", &fx.top]));
    assert!(
        out.status.success(),
        "nix-store --store {root} -r {} with substituters = {url} failed with {}:\n{}",
        fx.top,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &fx.paths {
        let verify = nix::output(client.command("nix-store").args(["--store", &root, "--verify-path", p]));
        assert!(
            verify.status.success(),
            "substituted {p}: nix-store --verify-path: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}

/// The narinfo the server serves for `path`, which must exist; checks it
/// against what Nix says about the path.
#[track_caller]
fn served_narinfo(server: &Server, path: &str, info: &nix::NixInfo) -> String {
    let resp = get(server.addr, &narinfo_path(path));
    assert_eq!(resp.status, 200, "GET narinfo of {path}:\n{}", resp.describe());
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/x-nix-narinfo"), "GET narinfo of {path}: Content-Type {content_type:?}");
    let text = resp.text();
    let h = head(server.addr, &narinfo_path(path));
    assert_eq!(h.status, 200, "HEAD narinfo of {path}:\n{}", h.describe());
    assert_eq!(narinfo_value(&text, "StorePath"), path, "StorePath:\n{text}");
    assert_eq!(narinfo_value(&text, "NarHash"), info.nar_hash_nix32, "{path}: NarHash:\n{text}");
    assert_eq!(narinfo_value(&text, "NarSize"), info.nar_size.to_string(), "{path}: NarSize:\n{text}");
    let refs: BTreeSet<String> =
        narinfo_value(&text, "References").split_whitespace().map(|r| format!("{}/{r}", nix::STORE_DIR)).collect();
    assert_eq!(refs, info.references, "{path}: References:\n{text}");
    text
}

/// The signature key names of narinfo text.
fn sig_names(text: &str) -> Vec<String> {
    narinfo_values(text, "Sig").iter().map(|s| s.split(':').next().unwrap().to_owned()).collect()
}

/// A `nix copy --to file://…?compression=none` cache of the fixture closure:
/// real narinfos and NARs as Nix writes them, for raw uploads.
struct FileCache {
    dir: tempfile::TempDir,
}

impl FileCache {
    fn of(fx: &Fixture) -> FileCache {
        let dir = tempfile::tempdir().expect("temp dir");
        nix::copy_to_file_cache(std::slice::from_ref(&fx.top), dir.path());
        FileCache { dir }
    }

    fn narinfo(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.narinfo", hash_part(path)))).expect("narinfo")
    }

    /// The NAR's URL (`nar/<filehash>.nar`) and bytes.
    fn nar(&self, path: &str) -> (String, Vec<u8>) {
        let url = narinfo_value(&self.narinfo(path), "URL");
        assert!(url.starts_with("nar/") && url.ends_with(".nar"), "{url}");
        let bytes = std::fs::read(self.dir.path().join(&url)).expect("NAR file");
        (url, bytes)
    }
}

/// Uploads `path`'s NAR and narinfo as Nix would (HEAD the NAR, PUT it if
/// absent, PUT the narinfo); asserts both succeed.
#[track_caller]
fn upload_path(server: &Server, files: &FileCache, path: &str, auth: &str) {
    let (url, nar) = files.nar(path);
    let h = [("Authorization", auth)];
    if head(server.addr, &format!("/{url}")).status != 200 {
        let resp =
            request(server.addr, "PUT", &format!("/{url}"), &[h[0], ("Content-Type", "application/x-nix-nar")], &nar);
        assert!(resp.is_success(), "PUT {url} ({path}):\n{}", resp.describe());
    }
    let ni = files.narinfo(path);
    let resp = request(
        server.addr,
        "PUT",
        &narinfo_path(path),
        &[h[0], ("Content-Type", "text/x-nix-narinfo")],
        ni.as_bytes(),
    );
    assert!(resp.is_success(), "PUT narinfo of {path}:\n{ni}\n{}", resp.describe());
}

/// Runs `tool args… FILE` on a temp file holding `data`; returns stdout.
fn filter_through(tool_name: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in");
    std::fs::write(&file, data).unwrap();
    let out = nix::output(Command::new(tool(tool_name)).args(args).arg(&file));
    assert!(out.status.success(), "{tool_name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn decompress(compression: &str, data: &[u8]) -> Vec<u8> {
    match compression {
        "none" => data.to_vec(),
        "zstd" => filter_through("zstd", &["-dc"], data),
        "xz" => filter_through("xz", &["-dc"], data),
        other => panic!("no decompressor for {other}"),
    }
}

// ------------------------------------------------- 1. nix copy there and back

/// `nix copy --to http://…` (Nix's default xz upload compression) with
/// netrc credentials, then `nix copy --from` into a chroot store that
/// trusts only the server's key.
#[test]
fn nix_copy_to_with_netrc_then_signed_copy_into_another_store() {
    let fx = fixture();
    let key = Key::generate("sf-test-copy-1");
    let token = "copy-token-8f3a1c";
    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    NixClient::new().netrc(token).copy_to(&cache_url(&server, ""), &[&fx.top]);

    let info = nix::nix_info(&fx.paths);
    for p in &fx.paths {
        let text = served_narinfo(&server, p, &info[p]);
        assert_eq!(sig_names(&text), vec![key.name.clone()], "{p}: the server's signature (and only it):\n{text}");
        let url = narinfo_value(&text, "URL");
        let resp = get(server.addr, &format!("/{url}"));
        assert_eq!(resp.status, 200, "GET {url}:\n{}", resp.describe());
        let compression = narinfo_values(&text, "Compression").pop().unwrap_or_else(|| "bzip2".into());
        let encoding = resp.header("content-encoding").unwrap_or("identity");
        assert_eq!(encoding, "identity", "GET {url} without Accept-Encoding came back encoded");
        assert_eq!(
            decompress(&compression, &resp.body),
            nix::dump(p),
            "{p}: the NAR served differs from nix-store --dump"
        );
    }
    assert_copy_from(&cache_url(&server, ""), &[&key], &[&key], fx);
    assert_substitutes(&cache_url(&server, ""), &[&key], fx);
    // Copying again (another client, no narinfo cache) finds everything there.
    NixClient::new().netrc(token).copy_to(&cache_url(&server, ""), &[&fx.top]);
}

/// The same with `?compression=zstd` uploads that the client signs
/// (`secret-key=`): the served narinfos keep the client's signature beside
/// the server's, and a client trusting only the uploader's key accepts them.
#[test]
fn nix_copy_zstd_signed_upload_round_trips() {
    let fx = fixture();
    let key = Key::generate("sf-test-copy-zstd");
    let uploader = Key::generate("sf-test-uploader");
    let token = "zstd-token-27b9";
    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    let url = cache_url(&server, &format!("?compression=zstd&secret-key={}", uploader.secret()));
    NixClient::new().netrc(token).copy_to(&url, &[&fx.top]);
    let info = nix::nix_info(&fx.paths);
    for p in &fx.paths {
        let text = served_narinfo(&server, p, &info[p]);
        let mut names = sig_names(&text);
        names.sort();
        assert_eq!(names, vec![key.name.clone(), uploader.name.clone()], "{p}: signatures:\n{text}");
    }
    assert_copy_from(&cache_url(&server, ""), &[&key], &[&key, &uploader], fx);
    assert_copy_from(&cache_url(&server, ""), &[&uploader], &[&uploader], fx);
}

/// `?compression=bzip2` (the closure) and `?compression=br` (one small
/// path: brotli is slow) uploads.
#[test]
fn nix_copy_bzip2_and_brotli_uploads() {
    let fx = fixture();
    let leaf = fx_path(fx, "leaf");
    let info = nix::nix_info(&fx.paths);
    let key = Key::generate("sf-test-copy-bz2-br");
    let token = "bz2-token-5a0f";
    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    NixClient::new().netrc(token).copy_to(&cache_url(&server, "?compression=bzip2"), &[&fx.top]);
    assert_copy_from(&cache_url(&server, ""), &[&key], &[&key], fx);

    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    NixClient::new().netrc(token).copy_to(&cache_url(&server, "?compression=br"), &[leaf]);
    let text = served_narinfo(&server, leaf, &info[leaf]);
    let url = narinfo_value(&text, "URL");
    let resp = get(server.addr, &format!("/{url}"));
    assert_eq!(resp.status, 200, "GET {url}:\n{}", resp.describe());
    assert_eq!(narinfo_value(&text, "Compression"), "none", "{text}");
    assert!(resp.body == nix::dump(leaf), "{leaf} uploaded with br: the NAR served differs from nix-store --dump");
}

/// A content-addressed path (`nix-store --add`) keeps its CA field, so a
/// client with `require-sigs` accepts it without trusting any signature.
#[test]
fn content_addressed_path_needs_no_trusted_signature() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sf-cache-ca-file");
    std::fs::write(&file, "a content-addressed file for the storefront binary cache tests\n").unwrap();
    let path = nix::run(Command::new(tool("nix-store")).arg("--add").arg(&file)).trim().to_owned();
    let json = nix::path_info_json(std::slice::from_ref(&path));
    let ca = json[&path]["ca"].as_str().unwrap_or_else(|| panic!("{path} has no CA: {}", json[&path])).to_owned();

    let key = Key::generate("sf-test-ca");
    let token = "ca-token-b7e2";
    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    NixClient::new().netrc(token).copy_to(&cache_url(&server, ""), &[&path]);
    let resp = get(server.addr, &narinfo_path(&path));
    assert_eq!(resp.status, 200, "GET narinfo of {path}:\n{}", resp.describe());
    assert_eq!(narinfo_value(&resp.text(), "CA"), ca, "CA line:\n{}", resp.text());

    let stranger = Key::generate("sf-test-ca-stranger");
    let client = NixClient::new().trust(&[&stranger]);
    let root = client.store_root("dest");
    let out = client.copy_from(&cache_url(&server, ""), &root, &[&path]);
    assert!(
        out.status.success(),
        "nix copy --from of a CA path (require-sigs, server key untrusted): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = path_info_by_path(&client.nix_ok(&["path-info", "--store", &root, "--json", &path]));
    assert_eq!(copied[&path]["ca"], json[&path]["ca"], "CA in the new store");
    assert_eq!(copied[&path]["narHash"], json[&path]["narHash"], "NarHash in the new store");
}

/// `--read-token-file`: reads need a token, which Nix sends from netrc.
#[test]
fn private_cache_reads_with_netrc() {
    let fx = fixture();
    let key = Key::generate("sf-test-private");
    let (write, read) = ("private-write-token-c1", "private-read-token-c2");
    let dir = tempfile::tempdir().unwrap();
    let read_file = dir.path().join("read-tokens");
    std::fs::write(&read_file, format!("# readers\n{read}\n")).unwrap();
    let (server, _tokens) =
        secure_server(write, &["--signing-key", key.secret(), "--read-token-file", read_file.to_str().unwrap()]);
    NixClient::new().netrc(write).copy_to(&cache_url(&server, "?compression=none"), &[&fx.top]);

    for path in ["/nix-cache-info".to_owned(), narinfo_path(&fx.top)] {
        let resp = get(server.addr, &path);
        assert_eq!(resp.status, 401, "anonymous GET {path} on a private cache:\n{}", resp.describe());
        let resp = request(server.addr, "GET", &path, &[("Authorization", &basic_auth("nix", read))], b"");
        assert_eq!(resp.status, 200, "GET {path} with the read token:\n{}", resp.describe());
    }
    let client = NixClient::new().trust(&[&key]);
    let root = client.store_root("denied");
    let out = client.copy_from(&cache_url(&server, ""), &root, &[&fx.top]);
    assert!(!out.status.success(), "nix copy --from a private cache without credentials succeeded");
    assert_copy_from_with(NixClient::new().trust(&[&key]).netrc(read), &cache_url(&server, ""), &[&key], fx);
}

/// The same with `?compression=none&write-nar-listing=true`: the `.ls`
/// listings come back as uploaded.
#[test]
fn nix_copy_uncompressed_upload_with_listing_round_trips() {
    let fx = fixture();
    let key = Key::generate("sf-test-copy-none");
    let token = "none-token-5d1e";
    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    NixClient::new().netrc(token).copy_to(&cache_url(&server, "?compression=none&write-nar-listing=true"), &[&fx.top]);
    for p in &fx.paths {
        let ls = format!("/{}.ls", hash_part(p));
        let resp = get(server.addr, &ls);
        assert_eq!(resp.status, 200, "GET {ls} after write-nar-listing=true:\n{}", resp.describe());
        let content_type = resp.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "GET {ls}: Content-Type {content_type:?}");
        assert_eq!(resp.header("content-encoding"), None, "GET {ls}: uploaded without Content-Encoding");
        let json: Value = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("GET {ls}: not JSON ({e}):\n{}", resp.describe()));
        assert_eq!(json["version"], 1, "{ls}: {json}");
        assert!(json["root"]["type"].is_string(), "{ls}: no root entry: {json}");
    }
    let top_ls: Value = serde_json::from_slice(&get(server.addr, &format!("/{}.ls", hash_part(&fx.top))).body).unwrap();
    assert_eq!(top_ls["root"]["type"], "directory", "{top_ls}");
    assert!(top_ls["root"]["entries"]["refs"].is_object(), "{top_ls}");
    assert_copy_from(&cache_url(&server, ""), &[&key], &[&key], fx);
}

/// `--nar-compression zstd|xz`: narinfos point at NARs compressed on the
/// fly, which decompress to the NAR and which Nix substitutes from.
#[test]
fn compressed_nars_served_on_the_fly_round_trip() {
    let fx = fixture();
    let data = fx_path(fx, "data");
    let want = nix::dump(data);
    let info = nix::nix_info(&fx.paths);
    for (compression, ext) in [("zstd", ".nar.zst"), ("xz", ".nar.xz")] {
        let key = Key::generate(&format!("sf-test-served-{compression}"));
        let token = "served-token-77aa";
        let (server, _tokens) =
            secure_server(token, &["--signing-key", key.secret(), "--nar-compression", compression]);
        NixClient::new().netrc(token).copy_to(&cache_url(&server, "?compression=none"), &[&fx.top]);
        let text = served_narinfo(&server, data, &info[data]);
        assert_eq!(narinfo_value(&text, "Compression"), compression, "{text}");
        let url = narinfo_value(&text, "URL");
        assert!(url.starts_with("nar/") && url.ends_with(ext), "URL {url} for --nar-compression {compression}");
        let resp = get(server.addr, &format!("/{url}"));
        assert_eq!(resp.status, 200, "GET {url}:\n{}", resp.describe());
        assert!(resp.body.len() < want.len() / 2, "{url}: {} bytes for a {}-byte NAR", resp.body.len(), want.len());
        assert!(decompress(compression, &resp.body) == want, "{url} does not decompress to nix-store --dump {data}");
        if let Some(size) = narinfo_values(&text, "FileSize").pop() {
            assert_eq!(size, resp.body.len().to_string(), "FileSize vs the bytes served at {url}");
        }
        if let Some(hash) = narinfo_values(&text, "FileHash").pop() {
            assert_eq!(hash, format!("sha256:{}", sha256_nix32(&resp.body)), "FileHash vs the bytes served at {url}");
        }
        assert_copy_from(&cache_url(&server, ""), &[&key], &[&key], fx);
    }
}

// ---------------------------------------------------- 2. untrusted signatures

#[test]
fn copy_from_fails_when_the_servers_key_is_not_trusted() {
    let fx = fixture();
    let key = Key::generate("sf-test-untrusted");
    let other = Key::generate("sf-test-someone-else");
    let token = "untrusted-token-0c4d";
    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    NixClient::new().netrc(token).copy_to(&cache_url(&server, "?compression=none"), &[&fx.top]);

    let client = NixClient::new().trust(&[&other]);
    let root = client.store_root("dest");
    let out = client.copy_from(&cache_url(&server, ""), &root, &[&fx.top]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nix copy --from succeeded although the server's key is not trusted:\n{stderr}");
    assert!(stderr.contains("lacks a valid signature"), "unexpected failure:\n{stderr}");
    let info = client.nix(&["path-info", "--store", &root, &fx.top]);
    assert!(!info.status.success(), "{} is in the new store although its signature is untrusted", fx.top);
}

// -------------------------------------------------------------- 3. credentials

#[test]
fn writes_need_a_token() {
    let fx = fixture();
    let leaf = fx_path(fx, "leaf");
    let files = FileCache::of(fx);
    let token = "the-right-token-91f2";
    let (server, _tokens) = secure_server(token, &[]);
    let (nar_url, nar) = files.nar(leaf);
    let narinfo = files.narinfo(leaf);

    // Reads are public.
    let info = get(server.addr, "/nix-cache-info");
    assert_eq!(info.status, 200, "GET /nix-cache-info without credentials:\n{}", info.describe());

    let wrong_basic = basic_auth("nix", "not-the-token");
    let wrong_bearer = bearer("not-the-token");
    let nar_path = format!("/{nar_url}");
    let uploads: [(&str, &[u8]); 3] = [
        (&nar_path, &nar),
        (&narinfo_path(leaf), narinfo.as_bytes()),
        ("/nix-cache-info", b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 1\n"),
    ];
    for (path, body) in uploads {
        let resp = request(server.addr, "PUT", path, &[], body);
        assert_eq!(resp.status, 401, "unauthenticated PUT {path}:\n{}", resp.describe());
        for auth in [&wrong_basic, &wrong_bearer] {
            let resp = request(server.addr, "PUT", path, &[("Authorization", auth)], body);
            assert!(
                resp.status == 401 || resp.status == 403,
                "PUT {path} with a wrong token ({auth}):\n{}",
                resp.describe()
            );
        }
    }
    assert_eq!(head(server.addr, &narinfo_path(leaf)).status, 404, "a refused narinfo upload is visible");
    assert_eq!(get(server.addr, &narinfo_path(leaf)).status, 404, "a refused narinfo upload is visible");
    assert_eq!(head(server.addr, &nar_path).status, 404, "a refused NAR upload is visible");

    // nix copy with a wrong token, or none, fails and stores nothing.
    for client in [NixClient::new().netrc("not-the-token"), NixClient::new()] {
        let out = client.nix(&["copy", "--to", &cache_url(&server, "?compression=none"), &fx.top]);
        assert!(!out.status.success(), "nix copy --to with bad credentials succeeded");
        for p in &fx.paths {
            assert_eq!(get(server.addr, &narinfo_path(p)).status, 404, "{p} arrived without credentials");
        }
    }

    // The right token works as Bearer and as the Basic password.
    let resp = request(server.addr, "PUT", &nar_path, &[("Authorization", &bearer(token))], &nar);
    assert!(resp.is_success(), "PUT {nar_url} with the right Bearer token:\n{}", resp.describe());
    let resp = request(
        server.addr,
        "PUT",
        &narinfo_path(leaf),
        &[("Authorization", &basic_auth("x", token))],
        narinfo.as_bytes(),
    );
    assert!(resp.is_success(), "PUT narinfo with the right token as Basic password:\n{}", resp.describe());
    assert_eq!(get(server.addr, &narinfo_path(leaf)).status, 200);
}

// ------------------------------------------------- 4. inconsistent uploads

#[test]
fn inconsistent_or_cut_off_uploads_store_nothing() {
    let fx = fixture();
    let (leaf, data, link) = (fx_path(fx, "leaf"), fx_path(fx, "data"), fx_path(fx, "link"));
    let files = FileCache::of(fx);
    let token = "consistency-token-44e0";
    let auth = bearer(token);
    let h = [("Authorization", auth.as_str())];
    let (server, _tokens) = secure_server(token, &[]);
    let info = nix::nix_info(&fx.paths);
    let put = |path: &str, body: &[u8]| request(server.addr, "PUT", path, &h, body);
    let absent = |path: &str, why: &str| {
        for method in ["GET", "HEAD"] {
            let resp = request(server.addr, method, &narinfo_path(path), &[], b"");
            assert_eq!(resp.status, 404, "{method} narinfo of {path} after {why}:\n{}", resp.describe());
        }
    };

    // (a) The real NAR of leaf under its own file hash, then narinfos that
    // disagree with it.
    let (leaf_url, leaf_nar) = files.nar(leaf);
    assert_eq!(sha256_nix32(&leaf_nar), leaf_url["nar/".len()..leaf_url.len() - 4], "file cache layout");
    let resp = put(&format!("/{leaf_url}"), &leaf_nar);
    assert!(resp.is_success(), "PUT {leaf_url}:\n{}", resp.describe());
    let good = files.narinfo(leaf);
    let wrong_hash = narinfo_replace(&good, "NarHash", &info[data].nar_hash_nix32);
    let resp = put(&narinfo_path(leaf), wrong_hash.as_bytes());
    assert_eq!(resp.status, 400, "PUT narinfo whose NarHash is not its NAR's:\n{wrong_hash}\n{}", resp.describe());
    absent(leaf, "a narinfo with the wrong NarHash");
    let wrong_size = narinfo_replace(&good, "NarSize", &(info[leaf].nar_size + 8).to_string());
    let resp = put(&narinfo_path(leaf), wrong_size.as_bytes());
    assert_eq!(resp.status, 400, "PUT narinfo whose NarSize is not its NAR's:\n{wrong_size}\n{}", resp.describe());
    absent(leaf, "a narinfo with the wrong NarSize");

    // (b) A NAR body whose sha256 is not the file hash in its name.
    let (data_url, data_nar) = files.nar(data);
    let (_, link_nar) = files.nar(link);
    let resp = put(&format!("/{data_url}"), &link_nar);
    assert_eq!(resp.status, 400, "PUT {data_url} with another path's NAR as body:\n{}", resp.describe());
    let data_narinfo = files.narinfo(data);
    let resp = put(&narinfo_path(data), data_narinfo.as_bytes());
    assert_eq!(resp.status, 400, "PUT narinfo naming a NAR that was refused:\n{}", resp.describe());
    absent(data, "its NAR was refused");

    // (c) The right NAR, cut off mid-stream.
    let early = put_truncated(server.addr, &format!("/{data_url}"), &h, data_nar.len(), &data_nar[..2 << 20]);
    if let Some(resp) = &early {
        assert!(!resp.is_success(), "a cut-off NAR upload was answered with success:\n{}", resp.describe());
    }
    let resp = put(&narinfo_path(data), data_narinfo.as_bytes());
    assert_eq!(resp.status, 400, "PUT narinfo naming a NAR whose upload was cut off:\n{}", resp.describe());
    absent(data, "its NAR upload was cut off");

    // What was refused works when right.
    let resp = put(&format!("/{data_url}"), &data_nar);
    assert!(resp.is_success(), "PUT {data_url} whole:\n{}", resp.describe());
    let resp = put(&narinfo_path(data), data_narinfo.as_bytes());
    assert!(resp.is_success(), "PUT narinfo of {data} after its NAR:\n{}", resp.describe());
    served_narinfo(&server, data, &info[data]);
    let resp = put(&narinfo_path(leaf), good.as_bytes());
    assert!(resp.is_success(), "PUT the right narinfo of {leaf}:\n{}", resp.describe());
    let text = served_narinfo(&server, leaf, &info[leaf]);
    let served = get(server.addr, &format!("/{}", narinfo_value(&text, "URL")));
    assert_eq!(served.status, 200);
    assert!(served.body == leaf_nar, "{leaf}: the NAR served differs from the one uploaded");
}

// ------------------------------------------------------ 5. missing references

#[test]
fn narinfo_with_missing_references_is_refused_until_they_arrive() {
    let fx = fixture();
    let (app, data, leaf) = (fx_path(fx, "app"), fx_path(fx, "data"), fx_path(fx, "leaf"));
    let files = FileCache::of(fx);
    let token = "refs-token-a3b8";
    let auth = basic_auth("nix", token);
    let (server, _tokens) = secure_server(token, &[]);
    let info = nix::nix_info(&fx.paths);
    assert!(info[app].references.contains(data) && info[app].references.contains(leaf), "fixture: app's references");

    let (app_url, app_nar) = files.nar(app);
    let resp = request(server.addr, "PUT", &format!("/{app_url}"), &[("Authorization", &auth)], &app_nar);
    assert!(resp.is_success(), "PUT {app_url}:\n{}", resp.describe());
    let app_narinfo = files.narinfo(app);
    let resp = request(server.addr, "PUT", &narinfo_path(app), &[("Authorization", &auth)], app_narinfo.as_bytes());
    assert_eq!(resp.status, 409, "PUT narinfo of {app} before its references:\n{}", resp.describe());
    for method in ["GET", "HEAD"] {
        let resp = request(server.addr, method, &narinfo_path(app), &[], b"");
        assert_eq!(resp.status, 404, "{method} narinfo of {app} after the refusal:\n{}", resp.describe());
    }

    // One reference is not enough.
    upload_path(&server, &files, leaf, &auth);
    let resp = request(server.addr, "PUT", &narinfo_path(app), &[("Authorization", &auth)], app_narinfo.as_bytes());
    assert_eq!(resp.status, 409, "PUT narinfo of {app} with {data} still missing:\n{}", resp.describe());
    assert_eq!(get(server.addr, &narinfo_path(app)).status, 404);

    // With every reference in, as Nix would retry (HEAD the NAR, PUT it if absent).
    upload_path(&server, &files, data, &auth);
    upload_path(&server, &files, app, &auth);
    served_narinfo(&server, app, &info[app]);
}

// ------------------------------------------------------------ 6. pull-through

/// Server A (signing with A's key) holds the closure; B has `--upstream` A
/// (through a counting proxy) and its own key.
struct PullThrough {
    key_a: Key,
    key_b: Key,
    a: Server,
    proxy: TestHttpServer,
    b: Server,
    _tokens: tempfile::TempDir,
}

fn pull_through_setup(fx: &Fixture, tag: &str, a_args: &[&str]) -> PullThrough {
    let key_a = Key::generate(&format!("sf-test-upstream-a-{tag}"));
    let key_b = Key::generate(&format!("sf-test-puller-b-{tag}"));
    let token = "upstream-token-6e19";
    let mut args = vec!["--signing-key", key_a.secret()];
    args.extend_from_slice(a_args);
    let (a, tokens) = secure_server(token, &args);
    NixClient::new().netrc(token).copy_to(&cache_url(&a, "?compression=none"), &[&fx.top]);
    let proxy = counting_proxy(a.addr);
    let b = Server::start_args(&[
        "--upstream",
        &proxy.url(),
        "--trusted-public-key",
        &key_a.public,
        "--signing-key",
        key_b.secret(),
    ]);
    PullThrough { key_a, key_b, a, proxy, b, _tokens: tokens }
}

#[test]
fn pull_through_serves_a_path_it_never_had() {
    let fx = fixture();
    // A serves zstd-compressed NARs, which B must decompress.
    let PullThrough { key_a, key_b, a, proxy, b, _tokens } =
        pull_through_setup(fx, "serve", &["--nar-compression", "zstd"]);
    assert_eq!(head(b.addr, "/0123456789abcdfghijklmnpqrsvwxyz.narinfo").status, 404, "a path nobody has");

    // A client that trusts only B substitutes the closure from B.
    assert_substitutes(&cache_url(&b, ""), &[&key_b], fx);
    assert_copy_from(&cache_url(&b, ""), &[&key_b], &[&key_b], fx);
    assert!(!proxy.nar_gets().is_empty(), "B served the closure without asking A: {:?}", proxy.requests());

    // B's narinfos carry A's signature (kept) and B's own.
    let info = nix::nix_info(&fx.paths);
    for p in &fx.paths {
        let text = served_narinfo(&b, p, &info[p]);
        let names = sig_names(&text);
        assert!(names.contains(&key_a.name) && names.contains(&key_b.name), "{p}: signatures {names:?}:\n{text}");
    }
    // A's signature as B serves it is valid to a client trusting only A.
    assert_copy_from(&cache_url(&b, ""), &[&key_a], &[&key_a], fx);

    // B has the closure now: A gone, B still serves every narinfo and NAR.
    drop(a);
    let before = proxy.requests().len();
    for p in &fx.paths {
        let text = served_narinfo(&b, p, &info[p]);
        let url = narinfo_value(&text, "URL");
        let resp = get(b.addr, &format!("/{url}"));
        assert_eq!(resp.status, 200, "GET {url} from B with A stopped:\n{}", resp.describe());
        let compression = narinfo_values(&text, "Compression").pop().unwrap_or_else(|| "bzip2".into());
        assert!(decompress(&compression, &resp.body) == nix::dump(p), "{p}: B's NAR differs from nix-store --dump");
    }
    assert_copy_from(&cache_url(&b, ""), &[&key_b], &[&key_b], fx);
    let after: Vec<_> = proxy.requests().into_iter().skip(before).collect();
    assert!(after.is_empty(), "B asked its upstream for paths it already has: {after:?}");
}

#[test]
fn concurrent_misses_fetch_from_upstream_once() {
    let fx = fixture();
    let setup = pull_through_setup(fx, "once", &[]);
    let (b, proxy) = (&setup.b, &setup.proxy);
    let top_hash = hash_part(&fx.top).to_owned();
    let want_nar = nix::dump(&fx.top);

    let fire = |path: String| -> Vec<Response> {
        let barrier = Arc::new(Barrier::new(10));
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let (barrier, path, addr) = (barrier.clone(), path.clone(), b.addr);
                std::thread::spawn(move || {
                    barrier.wait();
                    get(addr, &path)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("request thread")).collect()
    };

    let started = Instant::now();
    let answers = fire(narinfo_path(&fx.top));
    for (i, resp) in answers.iter().enumerate() {
        assert_eq!(resp.status, 200, "concurrent narinfo GET #{i} on B:\n{}", resp.describe());
        assert_eq!(resp.body, answers[0].body, "concurrent narinfo GETs on B answered differently");
    }
    let url = narinfo_value(&answers[0].text(), "URL");
    let compression = narinfo_values(&answers[0].text(), "Compression").pop().unwrap_or_else(|| "bzip2".into());
    for (i, resp) in fire(format!("/{url}")).iter().enumerate() {
        assert_eq!(resp.status, 200, "concurrent NAR GET #{i} on B:\n{}", resp.describe());
        assert!(decompress(&compression, &resp.body) == want_nar, "concurrent NAR GET #{i}: not the NAR of {}", fx.top);
    }
    let elapsed = started.elapsed();

    let nar_gets = proxy.nar_gets();
    let mut per_url: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &nar_gets {
        *per_url.entry(p.as_str()).or_default() += 1;
    }
    let top_fetches: usize = per_url.iter().filter(|(u, _)| u.contains(&top_hash)).map(|(_, n)| n).sum();
    let narinfo_gets = proxy.requests().iter().filter(|(_, p)| *p == narinfo_path(&fx.top)).count();
    let all = proxy.requests();
    assert_eq!(
        top_fetches, 1,
        "A served the NAR of {} {top_fetches} times for 10+10 concurrent requests on B ({elapsed:?}); upstream requests: {all:#?}",
        fx.top
    );
    assert!(
        per_url.values().all(|n| *n == 1),
        "B fetched a NAR from A more than once: {per_url:#?} ({narinfo_gets} narinfo GETs of the top path)"
    );
    assert!(per_url.len() <= fx.paths.len(), "B fetched more NARs than the closure has: {per_url:#?}");
}

/// `nix copy --to file://DIR?compression=…&secret-key=…` of the fixture
/// closure, served read-only like nginx would: a stock Nix binary cache.
fn plain_upstream(fx: &Fixture, key: &Key, compression: &str) -> (tempfile::TempDir, TestHttpServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}?compression={compression}&secret-key={}", dir.path().display(), key.secret());
    NixClient::new().copy_to(&url, &[&fx.top]);
    let server = static_files(dir.path().to_owned());
    (dir, server)
}

/// B pulls through from a stock binary cache (static files, xz NARs under
/// `nar/<filehash>.nar.xz`, signed by the uploader's key).
#[test]
fn pull_through_from_a_plain_nix_cache() {
    let fx = fixture();
    let upstream_key = Key::generate("sf-test-plain-upstream");
    let key_b = Key::generate("sf-test-plain-puller");
    let (_dir, upstream) = plain_upstream(fx, &upstream_key, "xz");
    let b = Server::start_args(&[
        "--upstream",
        &upstream.url(),
        "--trusted-public-key",
        &upstream_key.public,
        "--signing-key",
        key_b.secret(),
    ]);
    assert_copy_from(&cache_url(&b, ""), &[&key_b], &[&key_b, &upstream_key], fx);
    let info = nix::nix_info(&fx.paths);
    for p in &fx.paths {
        let names = sig_names(&served_narinfo(&b, p, &info[p]));
        assert!(names.contains(&upstream_key.name) && names.contains(&key_b.name), "{p}: signatures {names:?}");
    }
    let nar_gets = upstream.nar_gets();
    let distinct: BTreeSet<&String> = nar_gets.iter().collect();
    assert_eq!(distinct.len(), fx.paths.len(), "NARs fetched from the upstream: {nar_gets:#?}");
    assert_eq!(nar_gets.len(), fx.paths.len(), "a NAR was fetched from the upstream twice: {nar_gets:#?}");
}

/// B refuses what it cannot trust from an upstream: paths signed by a key
/// it does not trust, unsigned paths, and NARs that are not what the
/// narinfo says. Good paths beside them still come through.
#[test]
fn pull_through_refuses_untrusted_or_corrupt_upstream_paths() {
    let fx = fixture();
    let (leaf, data, link) = (fx_path(fx, "leaf"), fx_path(fx, "data"), fx_path(fx, "link"));
    let upstream_key = Key::generate("sf-test-bad-upstream");
    let stranger = Key::generate("sf-test-bad-stranger");
    let key_b = Key::generate("sf-test-bad-puller");
    let (dir, upstream) = plain_upstream(fx, &upstream_key, "none");
    let not_served = |b: &Server, path: &str, why: &str| {
        for attempt in 0..2 {
            let resp = get(b.addr, &narinfo_path(path));
            assert_ne!(resp.status, 200, "B served {path} ({why}; attempt {attempt}):\n{}", resp.describe());
        }
    };

    // (i) B trusts another key than the one the upstream's paths carry.
    let b = Server::start_args(&[
        "--upstream",
        &upstream.url(),
        "--trusted-public-key",
        &stranger.public,
        "--signing-key",
        key_b.secret(),
    ]);
    not_served(&b, &fx.top, "signed by an untrusted key");
    not_served(&b, data, "signed by an untrusted key");
    let client = NixClient::new().trust(&[&key_b]);
    let root = client.store_root("untrusted");
    assert!(!client.copy_from(&cache_url(&b, ""), &root, &[&fx.top]).status.success(), "copy via B succeeded");
    drop(b);

    // (ii) leaf's NAR swapped for another valid NAR; link's narinfo unsigned.
    let leaf_narinfo = std::fs::read_to_string(dir.path().join(format!("{}.narinfo", hash_part(leaf)))).unwrap();
    let leaf_url = narinfo_value(&leaf_narinfo, "URL");
    std::fs::write(dir.path().join(&leaf_url), nix::dump(link)).unwrap();
    let link_narinfo = dir.path().join(format!("{}.narinfo", hash_part(link)));
    let unsigned: String = std::fs::read_to_string(&link_narinfo)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("Sig:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&link_narinfo, unsigned).unwrap();
    let b = Server::start_args(&[
        "--upstream",
        &upstream.url(),
        "--trusted-public-key",
        &upstream_key.public,
        "--signing-key",
        key_b.secret(),
    ]);
    not_served(&b, leaf, "its upstream NAR does not match NarHash");
    not_served(&b, link, "its upstream narinfo is unsigned");
    not_served(&b, &fx.top, "its closure has a corrupt and an unsigned path");
    let info = nix::nix_info(&fx.paths);
    served_narinfo(&b, data, &info[data]);
    let client = NixClient::new().trust(&[&key_b]);
    let root = client.store_root("corrupt");
    assert!(!client.copy_from(&cache_url(&b, ""), &root, &[&fx.top]).status.success(), "copy via B succeeded");
}

// ------------------------------------------------------- 6b. shared NARs, races

/// Builds (offline) derivations named `names` whose outputs are the same
/// one-line file: different store paths, the same NAR.
fn identical_outputs(names: &[&str]) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in names {
        let expr = dir.path().join(format!("{name}.nix"));
        std::fs::write(
            &expr,
            format!(
                r#"derivation {{
  name = "{name}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo 'the same contents in every one' > $out" ];
}}"#
            ),
        )
        .unwrap();
        let out = nix::run(
            Command::new(tool("nix-build"))
                .arg(&expr)
                .args(["--option", "sandbox", "false", "--option", "substituters", ""])
                .arg("--out-link")
                .arg(dir.path().join(format!("result-{name}"))),
        );
        paths.push(out.trim().to_owned());
    }
    (dir, paths)
}

/// Paths with identical NARs share one NAR file name: Nix HEADs it, skips
/// the upload when the cache says it is there, and PUTs only the narinfo.
/// Whatever the HEAD says, each narinfo must be accepted.
#[test]
fn paths_sharing_one_nar_upload_in_one_copy_and_in_later_copies() {
    let (_dir, paths) = identical_outputs(&["sf-cache-same-a", "sf-cache-same-b", "sf-cache-same-c"]);
    assert_eq!(nix::dump(&paths[0]), nix::dump(&paths[1]), "fixture: the NARs should be identical");
    let key = Key::generate("sf-test-shared-nar");
    let token = "shared-token-0b77";
    let uploader = NixClient::new().netrc(token);
    // a and b together, then c alone (its NAR already there).
    for query in ["?compression=xz", "?compression=none"] {
        let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
        uploader.copy_to(&cache_url(&server, query), &[&paths[0], &paths[1]]);
        NixClient::new().netrc(token).copy_to(&cache_url(&server, query), &[&paths[2]]);
        let info = nix::nix_info(&paths);
        for p in &paths {
            served_narinfo(&server, p, &info[p]);
        }
        let client = NixClient::new().trust(&[&key]);
        let root = client.store_root("dest");
        let out = client.copy_from(&cache_url(&server, ""), &root, &[&paths[0], &paths[1], &paths[2]]);
        assert!(out.status.success(), "nix copy --from ({query}): {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Four uploaders PUT the same closure at once, each references first and
/// each its own NAR too (no HEAD): every PUT succeeds and the closure is
/// complete. (Concurrent `nix copy --to` cannot be used: Nix 2.8 itself fails
/// with "coroutine has finished" when a path it is about to upload becomes
/// valid meanwhile, against any server.)
#[test]
fn concurrent_uploads_of_the_same_closure() {
    let fx = fixture();
    let files = Arc::new(FileCache::of(fx));
    let key = Key::generate("sf-test-concurrent-upload");
    let token = "race-token-4c21";
    let (server, _tokens) = secure_server(token, &["--signing-key", key.secret()]);
    let order = fx.topological();
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (files, order, barrier, addr) = (files.clone(), order.clone(), barrier.clone(), server.addr);
            let auth = basic_auth(&format!("uploader{i}"), token);
            std::thread::spawn(move || {
                barrier.wait();
                let mut failures = Vec::new();
                for p in &order {
                    let (url, nar) = files.nar(p);
                    let h = [("Authorization", auth.as_str())];
                    let resp = request(addr, "PUT", &format!("/{url}"), &h, &nar);
                    if !resp.is_success() {
                        failures.push(format!("uploader {i}: PUT {url}:\n{}", resp.describe()));
                    }
                    let resp = request(addr, "PUT", &narinfo_path(p), &h, files.narinfo(p).as_bytes());
                    if !resp.is_success() {
                        failures.push(format!("uploader {i}: PUT narinfo of {p}:\n{}", resp.describe()));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = threads.into_iter().flat_map(|t| t.join().expect("uploader thread")).collect();
    assert!(failures.is_empty(), "concurrent uploads of one closure failed:\n{}", failures.join("\n"));
    assert_copy_from(&cache_url(&server, ""), &[&key], &[&key], fx);
}

// ------------------------------------------------------------------ 7. ranges

#[test]
fn range_requests_and_curl_resume() {
    let fx = fixture();
    let data = fx_path(fx, "data");
    // The token file the server creates when given none.
    let server = Server::start_secure(&[]);
    let token = server.write_token();
    let anonymous = NixClient::new().nix(&["copy", "--to", &cache_url(&server, "?compression=none"), data]);
    assert!(!anonymous.status.success(), "nix copy --to without the created token succeeded");
    NixClient::new().netrc(&token).copy_to(&cache_url(&server, "?compression=none"), &[data]);
    let info = nix::nix_info(&[data.to_owned()]);
    let text = served_narinfo(&server, data, &info[data]);
    let url = format!("/{}", narinfo_value(&text, "URL"));
    assert!(url.ends_with(".nar"), "default --nar-compression should be none: {text}");
    let full = nix::dump(data);
    let len = full.len();
    assert!(len > 4 << 20, "the fixture's data path should be several MiB, is {len} bytes");

    let resp = head(server.addr, &url);
    assert_eq!(resp.status, 200, "HEAD {url}:\n{}", resp.describe());
    assert_eq!(resp.header("accept-ranges"), Some("bytes"), "HEAD {url}:\n{}", resp.describe());
    assert_eq!(resp.header("content-length"), Some(len.to_string().as_str()), "HEAD {url}");

    let resp = get(server.addr, &url);
    assert_eq!(resp.status, 200, "GET {url}:\n{}", resp.describe());
    assert_eq!(resp.header("accept-ranges"), Some("bytes"), "GET {url}");
    assert!(resp.body == full, "GET {url}: not nix-store --dump {data}");

    let range = |spec: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![("Range", spec)];
        headers.extend_from_slice(extra);
        request(server.addr, "GET", &url, &headers, b"")
    };
    let n = len / 2 + 3;
    let cases = [
        (format!("bytes={n}-"), n, len - 1),
        (format!("bytes=100-{}", 100 + 65536), 100, 100 + 65536),
        ("bytes=-1000".to_owned(), len - 1000, len - 1),
        (format!("bytes={}-{}", len - 1, len + 5000), len - 1, len - 1),
    ];
    for (spec, first, last) in &cases {
        let resp = range(spec, &[]);
        assert_eq!(resp.status, 206, "Range: {spec}:\n{}", resp.describe());
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {first}-{last}/{len}").as_str()),
            "Range: {spec}:\n{}",
            resp.describe()
        );
        assert!(resp.body == full[*first..=*last], "Range: {spec}: wrong bytes ({} received)", resp.body.len());
    }
    // A range request stays uncompressed even when the client takes zstd.
    let resp = range(&format!("bytes={n}-"), &[("Accept-Encoding", "zstd")]);
    assert_eq!(resp.status, 206, "Range with Accept-Encoding: zstd:\n{}", resp.describe());
    assert_eq!(resp.header("content-encoding"), None, "a 206 must not be content-encoded:\n{}", resp.describe());
    assert!(resp.body == full[n..], "Range with Accept-Encoding: zstd: wrong bytes");
    // Without Range, zstd may be offered; either way the bytes decode to the NAR.
    let resp = request(server.addr, "GET", &url, &[("Accept-Encoding", "zstd")], b"");
    assert_eq!(resp.status, 200, "GET with Accept-Encoding: zstd:\n{}", resp.describe());
    let body = match resp.header("content-encoding") {
        None | Some("identity") => resp.body.clone(),
        Some("zstd") => decompress("zstd", &resp.body),
        Some(other) => panic!("GET with Accept-Encoding: zstd came back with Content-Encoding: {other}"),
    };
    assert!(body == full, "GET with Accept-Encoding: zstd: does not decode to the NAR");

    // The same NAR compressed on the fly under `.nar.zst` and `.nar.xz`.
    for (compression, ext) in [("zstd", ".zst"), ("xz", ".xz")] {
        let resp = get(server.addr, &format!("{url}{ext}"));
        assert_eq!(resp.status, 200, "GET {url}{ext}:\n{}", resp.describe());
        assert!(resp.body.len() < len / 2, "{url}{ext}: {} bytes for a {len}-byte NAR", resp.body.len());
        assert!(decompress(compression, &resp.body) == full, "{url}{ext} does not decompress to the NAR");
    }

    for spec in [format!("bytes={len}-"), format!("bytes={}-{}", len + 10, len + 20)] {
        let resp = range(&spec, &[]);
        assert_eq!(resp.status, 416, "unsatisfiable Range: {spec}:\n{}", resp.describe());
    }

    // curl: a rate-limited download killed half-way, then resumed with -C -.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nar");
    let full_url = format!("http://{}{url}", server.addr);
    let mut slow = Command::new(tool("curl"))
        .args(["-sS", "--fail", "--limit-rate", "1M", "-o"])
        .arg(&out)
        .arg(&full_url)
        .stdin(Stdio::null())
        .spawn()
        .expect("curl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if got >= 1 << 20 {
            break;
        }
        assert!(slow.try_wait().unwrap().is_none(), "curl --limit-rate 1M ended before 1 MiB of {len} bytes");
        assert!(Instant::now() < deadline, "curl wrote {got} bytes in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    slow.kill().expect("killing curl");
    slow.wait().unwrap();
    let partial = std::fs::metadata(&out).unwrap().len() as usize;
    assert!(partial < len, "curl finished ({partial} bytes) before it was killed");
    let resumed =
        nix::output(Command::new(tool("curl")).args(["-sS", "--fail", "-C", "-", "-o"]).arg(&out).arg(&full_url));
    assert!(
        resumed.status.success(),
        "curl -C - (resuming at {partial}) failed with {}: {}",
        resumed.status,
        String::from_utf8_lossy(&resumed.stderr)
    );
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), len, "resumed download from {partial}: length");
    assert!(got == full, "the resumed download (from byte {partial}) differs from nix-store --dump {data}");
}

// ---------------------------------------------------------------- 8. basics

#[test]
fn cache_info_and_absent_paths() {
    let server = Server::start_args(&["--priority", "7"]);
    let resp = get(server.addr, "/nix-cache-info");
    assert_eq!(resp.status, 200, "GET /nix-cache-info:\n{}", resp.describe());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/x-nix-cache-info"), "Content-Type {ct:?}");
    let text = resp.text();
    assert_eq!(narinfo_value(&text, "StoreDir"), "/nix/store", "{text}");
    assert_eq!(narinfo_value(&text, "WantMassQuery"), "1", "{text}");
    assert_eq!(narinfo_value(&text, "Priority"), "7", "--priority 7:\n{text}");
    assert_eq!(head(server.addr, "/nix-cache-info").status, 200);

    for method in ["GET", "HEAD"] {
        let resp = request(server.addr, method, "/0123456789abcdfghijklmnpqrsvwxyz.narinfo", &[], b"");
        assert_eq!(resp.status, 404, "{method} narinfo of an absent path:\n{}", resp.describe());
        let resp = request(server.addr, method, "/nar/0123456789abcdfghijklmnpqrsvwxyz.nar", &[], b"");
        assert_eq!(resp.status, 404, "{method} an absent NAR:\n{}", resp.describe());
    }
    for bad in
        ["/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo", "/short.narinfo", "/0123456789abcdfghijklmnpqrsvwxyz0.narinfo"]
    {
        let resp = get(server.addr, bad);
        assert!(resp.status == 404 || resp.status == 400, "GET {bad}:\n{}", resp.describe());
    }
    // A Nix client sees an empty cache, not an error.
    let client = NixClient::new();
    let out = client.nix(&[
        "path-info",
        "--store",
        &cache_url(&server, ""),
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-absent",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not valid"), "nix path-info of an absent path: {stderr}");
}

// ------------------------------------------------------------------ 9. logs

/// `nix store copy-log --to http://…`: the build log comes back as text.
#[test]
fn build_logs_upload_and_download() {
    let dir = tempfile::tempdir().unwrap();
    let expr = dir.path().join("log.nix");
    std::fs::write(
        &expr,
        r#"derivation {
  name = "sf-cache-log";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo 'a line in the build log of sf-cache-log'; echo done > $out" ];
  salt = "storefront-cache-log-v1";
}"#,
    )
    .unwrap();
    let out_link = dir.path().join("result");
    let built = nix::run(
        Command::new(tool("nix-build"))
            .arg(&expr)
            .args(["--option", "sandbox", "false", "--option", "substituters", ""])
            .arg("--out-link")
            .arg(&out_link),
    );
    let drv = nix::run(Command::new(tool("nix-store")).args(["-q", "--deriver", built.trim()])).trim().to_owned();
    let client = NixClient::new();
    let log = client.nix_ok(&["log", &drv]);
    assert!(log.contains("a line in the build log"), "nix log {drv}: {log:?}");

    let token = "log-token-d00d";
    let (server, _tokens) = secure_server(token, &[]);
    let denied = client.nix(&["store", "copy-log", "--to", &cache_url(&server, ""), &drv]);
    assert!(!denied.status.success(), "copy-log without credentials succeeded");
    NixClient::new().netrc(token).nix_ok(&["store", "copy-log", "--to", &cache_url(&server, ""), &drv]);

    let base = Path::new(&drv).file_name().unwrap().to_str().unwrap();
    let resp = get(server.addr, &format!("/log/{base}"));
    assert_eq!(resp.status, 200, "GET /log/{base}:\n{}", resp.describe());
    assert!(resp.header("content-type").unwrap_or_default().starts_with("text/plain"), "{}", resp.describe());
    assert_eq!(resp.text(), log, "the log served differs from nix log");
}

// ------------------------------------------------------------ 10. side files

/// What Nix uploads beside paths (`.ls`, realisations, `nix-cache-info`)
/// is accepted before the path exists, needs a token, and comes back with
/// the Content-Type and Content-Encoding it was uploaded with.
#[test]
fn side_files_come_back_as_uploaded() {
    let token = "side-token-3f6b";
    let auth = bearer(token);
    let (server, _tokens) = secure_server(token, &[]);
    let listing = br#"{"version":1,"root":{"type":"regular","size":2,"narOffset":96}}"#;
    let listing_xz = filter_through("xz", &["-c"], listing);
    let realisation = br#"{"id":"sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s!out","outPath":"3r8w9p3ryv094d7x2a59s562y59sk71k-leaf","signatures":[],"dependentRealisations":{}}"#;
    let files: [(&str, &str, Option<&str>, &[u8]); 3] = [
        ("/0123456789abcdfghijklmnpqrsvwxyz.ls", "application/json", Some("xz"), &listing_xz),
        (
            "/realisations/sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s!out.doi",
            "application/json",
            None,
            realisation,
        ),
        ("/1123456789abcdfghijklmnpqrsvwxyz.ls", "application/json", None, listing),
    ];
    for (path, content_type, encoding, body) in files {
        let mut headers = vec![("Content-Type", content_type)];
        if let Some(e) = encoding {
            headers.push(("Content-Encoding", e));
        }
        let resp = request(server.addr, "PUT", path, &headers, body);
        assert_eq!(resp.status, 401, "unauthenticated PUT {path}:\n{}", resp.describe());
        assert_eq!(get(server.addr, path).status, 404, "{path} visible after a refused upload");
        headers.push(("Authorization", &auth));
        let resp = request(server.addr, "PUT", path, &headers, body);
        assert!(resp.is_success(), "PUT {path}:\n{}", resp.describe());
        let resp = get(server.addr, path);
        assert_eq!(resp.status, 200, "GET {path}:\n{}", resp.describe());
        assert!(resp.body == body, "GET {path}: not the bytes uploaded:\n{}", resp.describe());
        let got_type = resp.header("content-type").unwrap_or_default();
        assert!(got_type.starts_with(content_type), "GET {path}: Content-Type {got_type:?}, uploaded {content_type}");
        assert_eq!(resp.header("content-encoding"), encoding, "GET {path}: Content-Encoding");
    }
    let resp = request(
        server.addr,
        "PUT",
        "/nix-cache-info",
        &[("Authorization", &auth), ("Content-Type", "text/x-nix-cache-info")],
        b"StoreDir: /nix/store\n",
    );
    assert!(resp.is_success(), "PUT /nix-cache-info (what Nix sends to a cache without one):\n{}", resp.describe());
    let text = get(server.addr, "/nix-cache-info").text();
    assert_eq!(narinfo_value(&text, "StoreDir"), "/nix/store", "{text}");
}
