//! `serve --tls-cert/--tls-key` (issue 6): the one port speaks HTTPS for
//! every face of the server, and the clients in this repository trust a
//! private CA through `SSL_CERT_FILE`.
//!
//! With a CA and server certificate made per test (rcgen): the binary cache
//! answers the real `curl` (nix-cache-info, a NAR range) and the real Nix
//! (`nix copy --to` and `--from https://…` with `NIX_SSL_CERT_FILE`); gRPC over
//! `grpc+https` carries `storefront import` and reads back through our
//! client backends; `storefront image add --server https://…` and skopeo
//! (with a cert dir holding `ca.crt`) pull and push images; a server pulls
//! through from an `--upstream https://…`; ALPN offers h2 and curl speaks
//! HTTP/2. Every client refuses the certificate when it does not trust the
//! CA. A plain-HTTP request to the port gets a 400 naming the problem,
//! garbage and silent clients are dropped without holding up anyone else,
//! SIGHUP loads a new certificate (and keeps the old one when the new files
//! are broken), the RSA and EC key forms work from the TOML file and the
//! environment, and start-up refuses a missing, garbled or mismatched key
//! with a message naming the file. Tools: curl, nix-bin, skopeo,
//! busybox-static (the image fixture).
// Its re-exports of common's HTTP helpers are for cache_nix.rs.
#[allow(unused_imports)]
#[path = "common/cache.rs"]
mod cache;
mod common;
#[path = "common/images.rs"]
mod images;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use cache::{Key, NixClient, narinfo_path, narinfo_value};
use castore::grpc::{GrpcBlobService, GrpcDirectoryService, Package, PackageRewrite};
use common::{
    Server, http_get,
    nix::{self, fixture, tool},
    storefront,
    tls::{TlsFiles, client_config, https_get, try_https_request},
};
use images::{Skopeo, demo_args, image_fixture, ok, parse_added};
use store::{PathInfoService, StorePath, pathinfo::GrpcPathInfoService};
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// The handshake deadline `serve` gives a client (serve/tls.rs).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ helpers

/// `curl --silent --show-error ARGS…`, whatever its outcome.
fn curl(args: &[&str]) -> Output {
    Command::new(tool("curl"))
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .env_remove("CURL_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("running curl")
}

/// `curl --cacert CA ARGS…`, which must succeed; returns stdout.
#[track_caller]
fn curl_ok(ca: &Path, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["--fail", "--cacert", ca.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = curl(&all);
    assert!(out.status.success(), "curl {all:?} failed with {}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Stderr of a command that must fail, mentioning one of `needles`.
#[track_caller]
fn failed_with_any(what: &str, out: Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} should have failed; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        needles.iter().any(|n| stderr.to_lowercase().contains(&n.to_lowercase())),
        "{what}: the error mentions none of {needles:?}:\n{stderr}"
    );
    stderr
}

/// `nix ARGS…` trusting `ca` through NIX_SSL_CERT_FILE (Nix 2.8 has no
/// `ssl-cert-file` setting), or, without `ca`, only the system's CAs.
fn nix_with_ca(client: &NixClient, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = client.command("nix");
    cmd.args(args).env_remove("NIX_SSL_CERT_FILE").env_remove("SSL_CERT_FILE");
    if let Some(ca) = ca {
        cmd.env("NIX_SSL_CERT_FILE", ca);
    }
    nix::output(&mut cmd)
}

/// A `storefront` client command that trusts `ca` through `SSL_CERT_FILE`
/// (none: neither the CA nor a cert dir of the caller's).
fn client(ca: Option<&Path>) -> Command {
    let mut cmd = storefront();
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR").stdin(Stdio::null());
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    cmd
}

/// `storefront import --store URL GC_ROOT`, whatever its outcome.
fn import(url: &str, ca: Option<&Path>, gc_root: &Path) -> Output {
    client(ca).args(["import", "--store", url]).arg(gc_root).output().expect("running storefront import")
}

/// Our gRPC client backends over TLS, trusting only `ca` (in-process: the
/// test's own environment stays untouched).
fn grpc_transport(server: &Server, ca: &Path) -> castore::grpc::Transport {
    let pem = std::fs::read(ca).expect("reading the CA");
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
    let channel = tonic::transport::Endpoint::from_shared(server.https_url())
        .unwrap()
        .tls_config(tls)
        .expect("TLS client config")
        .connect_lazy();
    PackageRewrite::speak(channel, Package::Snix)
}

/// The store path of an absolute path.
fn store_path(path: &str) -> StorePath {
    StorePath::from_absolute(path, nix::STORE_DIR).expect("a store path")
}

/// A TLS handshake offering `alpn`; returns the protocol the server chose.
fn negotiated_alpn(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> Option<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(client_config(ca, alpn), name).expect("client connection");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("TLS handshake");
    }
    conn.alpn_protocol().map(<[u8]>::to_vec)
}

/// Spawns `storefront serve ARGS…` (with `env`) that must fail during
/// start-up; returns its stderr.
#[track_caller]
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut child = storefront()
        .env("STOREFRONT_LOG", "info")
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--allow-anonymous-writes", "--data"])
        .arg(data.path())
        .args(args)
        .env_remove("STOREFRONT_TLS_CERT")
        .env_remove("STOREFRONT_TLS_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning storefront serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("storefront serve {args:?} kept running: it should have refused its TLS settings");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "storefront serve {args:?} exited successfully:\n{stderr}");
    assert!(!stderr.contains("storefront serving"), "it started serving:\n{stderr}");
    stderr
}

/// The committed RSA (PKCS#1) and EC (SEC1) test keys and certificates.
fn key_fixture(name: &str) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls-keys");
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

// ------------------------------------------------------------------- tests

/// The binary cache over HTTPS: curl reads nix-cache-info and a NAR range;
/// the real Nix uploads a closure (`nix copy --to https://…`) and copies it
/// into a fresh chroot store (`nix copy --from`), checking the server's
/// signature; without the CA, curl and Nix refuse the server.
#[test]
fn binary_cache_over_https_with_curl_and_nix() {
    let fx = fixture();
    let key = Key::generate("tls-test-1");
    let (server, tls) = Server::start_tls(&["--signing-key", key.secret()]);
    let url = server.https_url();
    let log = server.log();
    assert!(log.contains(&format!("url=https://{}", server.addr)), "the startup line names the https URL:\n{log}");

    let info = String::from_utf8(curl_ok(&tls.ca, &[&format!("{url}/nix-cache-info")])).unwrap();
    assert!(info.contains("StoreDir: /nix/store"), "nix-cache-info over https: {info}");
    let untrusted = curl(&["--fail", &format!("{url}/nix-cache-info")]);
    assert_eq!(untrusted.status.code(), Some(60), "curl without the CA must refuse the certificate: {untrusted:?}");

    // Upload with the real Nix over https.
    let nix_client = NixClient::new().trust(&[&key]);
    let top = fx.top.as_str();
    let out = nix_with_ca(&nix_client, Some(&tls.ca), &["copy", "--to", &url, top]);
    ok("nix copy --to https", out);

    // A NAR range over https, byte for byte the NAR Nix makes.
    let narinfo = String::from_utf8(curl_ok(&tls.ca, &[&format!("{url}{}", narinfo_path(top))])).unwrap();
    let nar_url = format!("{url}/{}", narinfo_value(&narinfo, "URL"));
    let nar = nix::dump(top);
    assert!(nar.len() > 200, "the top path's NAR is too small for a range test");
    let range = curl_ok(&tls.ca, &["--range", "100-199", &nar_url]);
    assert_eq!(range, nar[100..200], "NAR bytes 100-199 over https");

    // Substitute into a fresh store, then the same without the CA.
    let root = nix_client.store_root("store");
    ok("nix copy --from https", nix_with_ca(&nix_client, Some(&tls.ca), &["copy", "--from", &url, "--to", &root, top]));
    let listed = nix_client.nix_ok(&["path-info", "--store", &root, "--recursive", top]);
    for p in &fx.paths {
        assert!(listed.contains(p.as_str()), "{p} did not arrive in the chroot store:\n{listed}");
    }
    let stranger = NixClient::new().trust(&[&key]);
    let root = stranger.store_root("store");
    let out = nix_with_ca(&stranger, None, &["copy", "--from", &url, "--to", &root, top]);
    failed_with_any("nix copy --from without the CA", out, &["SSL peer certificate"]);
}

/// gRPC over `grpc+https`: `storefront import` (our `connect`, trusting
/// the CA through SSL_CERT_FILE) stores a closure, and our client backends
/// read it back over TLS: the NAR rendered from the blobs and directories
/// they fetch has Nix's NarHash. Without the CA the import is refused.
/// SIGTERM with TLS connections open still ends the server cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_https_with_ssl_cert_file() {
    let fx = fixture();
    let (mut server, tls) = Server::start_tls(&[]);

    let out = import(&server.grpcs_url(), None, &fx.gc_root);
    failed_with_any("import without the CA", out, &["invalid peer certificate: UnknownIssuer"]);
    let out = import(&server.grpcs_url(), Some(&tls.ca), &fx.gc_root);
    ok("import over grpc+https", out);

    let transport = grpc_transport(&server, &tls.ca);
    let paths = GrpcPathInfoService::new(transport.clone());
    let blobs: Arc<dyn castore::BlobService> = Arc::new(GrpcBlobService::new(transport.clone()));
    let directories: Arc<dyn castore::DirectoryService> = Arc::new(GrpcDirectoryService::new(transport));
    let nix_infos = nix::nix_info(&fx.paths);
    for p in &fx.paths {
        let info =
            paths.get(store_path(p).digest()).await.expect("PathInfo Get").unwrap_or_else(|| panic!("{p} missing"));
        let (size, sha) =
            store::nar::calculate(&info.node, blobs.clone(), directories.clone()).await.expect("rendering the NAR");
        let expected = &nix_infos[p];
        assert_eq!(size, expected.nar_size, "{p}: NAR size read back over TLS");
        assert_eq!(format!("sha256:{}", store::nix32::encode(&sha)), expected.nar_hash_nix32, "{p}: NarHash");
    }

    // The health service answers over TLS too.
    let mut health = tonic_health::pb::health_client::HealthClient::new(grpc_transport(&server, &tls.ca));
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // SIGTERM with TLS connections open: they drain and the server exits 0.
    let status = server.terminate().await;
    assert!(status.success(), "storefront exited with {status} after SIGTERM; log:\n{}", server.log());
    drop(health);
}

/// The registry over HTTPS: `storefront image add --server https://…`
/// (reqwest, trusting SSL_CERT_FILE) defines an image, skopeo pulls it with
/// a cert dir holding `ca.crt` and pushes it back under another name;
/// without the CA both are refused.
#[test]
fn registry_over_https_with_skopeo() {
    let fx = image_fixture();
    let (server, tls) = Server::start_tls(&[]);
    ok("import", import(&server.grpcs_url(), Some(&tls.ca), &fx.gc_root));

    let image_add = |ca: Option<&Path>| {
        client(ca)
            .args(["image", "add", "demo:v1"])
            .args(demo_args(fx))
            .args(["--server", &server.https_url()])
            .output()
            .expect("running storefront image add")
    };
    failed_with_any("image add without the CA", image_add(None), &["UnknownIssuer"]);
    let added = parse_added(&ok("image add over https", image_add(Some(&tls.ca))));
    let (reference, digest) = &added["ordinary"];
    assert_eq!(reference, &format!("{}/demo:v1", server.addr));

    let skopeo = Skopeo::new();
    let source = format!("docker://{reference}");
    let layout = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:v1", layout.path().display());
    let refused = skopeo.fail(&["copy", &source, &dest]);
    assert!(
        refused.contains("certificate") || refused.contains("x509"),
        "skopeo without the CA failed for another reason:\n{refused}"
    );
    let cert_dir = tls.cert_dir.to_str().unwrap();
    skopeo.run(&["copy", "--preserve-digests", "--src-cert-dir", cert_dir, &source, &dest]);
    let index = std::fs::read_to_string(layout.path().join("index.json")).unwrap();
    assert!(index.contains(digest.as_str()), "skopeo pulled another manifest than {digest}: {index}");

    // Push it back under another name, then read that over https.
    let pushed = format!("docker://{}/pushed:v2", server.addr);
    skopeo.run(&["copy", "--preserve-digests", "--dest-cert-dir", cert_dir, &dest, &pushed]);
    let raw = skopeo.run(&["inspect", "--raw", "--cert-dir", cert_dir, &pushed]);
    assert_eq!(registry::oci::Digest::of(&raw).to_string(), *digest, "the pushed manifest differs");
}

/// A server pulls through from an `--upstream https://…` whose CA it trusts
/// through SSL_CERT_FILE; with another CA there, the upstream is refused
/// (a 502 naming the failure, not a 404).
#[test]
fn upstream_over_https() {
    let fx = fixture();
    let key = Key::generate("tls-upstream-1");
    let (upstream, tls) = Server::start_tls(&["--signing-key", key.secret()]);
    ok("import", import(&upstream.grpcs_url(), Some(&tls.ca), &fx.gc_root));
    let args = ["--upstream", &upstream.https_url(), "--trusted-public-key", &key.public];

    let ca = tls.ca.to_str().unwrap();
    let trusting = Server::start_env(None, None, &args, &[("SSL_CERT_FILE", ca)]);
    let resp = common::get(trusting.addr, &narinfo_path(&fx.top));
    assert_eq!(resp.status, 200, "pull-through over https: {}", resp.describe());
    let nar = common::get(trusting.addr, &format!("/{}", narinfo_value(&resp.text(), "URL")));
    assert_eq!(nar.body, nix::dump(&fx.top), "the NAR pulled through over https");

    let other = TlsFiles::generate();
    let other_ca = other.ca.to_str().unwrap();
    let distrusting = Server::start_env(None, None, &args, &[("SSL_CERT_FILE", other_ca)]);
    let resp = common::get(distrusting.addr, &narinfo_path(&fx.top));
    assert_eq!(resp.status, 502, "an upstream with an untrusted certificate: {}", resp.describe());
    let log = distrusting.log();
    assert!(log.to_lowercase().contains("certificate"), "the log names no certificate problem:\n{log}");
}

/// HTTP/2 and HTTP/1.1 over TLS: ALPN offers h2 first and http/1.1, and
/// curl speaks either.
#[test]
fn alpn_and_http2() {
    let (server, tls) = Server::start_tls(&[]);
    assert_eq!(negotiated_alpn(server.addr, &tls.ca, &[b"h2", b"http/1.1"]).as_deref(), Some(&b"h2"[..]));
    assert_eq!(negotiated_alpn(server.addr, &tls.ca, &[b"http/1.1"]).as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(negotiated_alpn(server.addr, &tls.ca, &[]), None, "no ALPN offered, none chosen");
    let url = format!("{}/healthz", server.https_url());
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl_ok(&tls.ca, &[flag, "--write-out", "\n%{http_version}", &url]);
        assert_eq!(String::from_utf8(out).unwrap(), format!("ok\n\n{version}"), "curl {flag}");
    }
    assert_eq!(https_get(server.addr, &tls.ca, "/healthz").text(), "ok\n");
}

/// Plain HTTP to the TLS port gets a 400 that says to use https; TLS
/// garbage is dropped; clients that connect and say nothing hold up no one,
/// and are cut off after the handshake deadline. The server logs none of it
/// as a warning or an error.
#[test]
fn bad_and_silent_clients() {
    let (server, tls) = Server::start_tls(&[]);
    let (status, body) = http_get(server.addr, "/healthz").expect("a plain-HTTP answer");
    assert_eq!(status, 400, "plain HTTP on the TLS port: {body}");
    assert!(body.contains("HTTPS"), "the answer does not say to use HTTPS: {body}");

    // A TLS record header followed by nonsense: the server hangs up.
    let mut garbage = TcpStream::connect(server.addr).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest); // an alert, then EOF (or a reset)
    assert!(rest.len() < 100, "the server answered garbage with {} bytes", rest.len());

    // Silent clients, and one that stops halfway through its ClientHello.
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    let mut partial = TcpStream::connect(server.addr).unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    silent.push(partial);
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(https_get(server.addr, &tls.ca, "/healthz").status, 200);
    }
    let took = start.elapsed();
    // Blocked behind the silent ones, they would take 10 s each at least.
    assert!(took < Duration::from_secs(8), "requests beside silent clients took {took:?}");

    // After the deadline the server closes them.
    for conn in &mut silent {
        conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT + Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "a silent client got bytes instead of a close"),
            Err(e) => assert!(
                !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                "a silent client was not cut off within {:?}",
                HANDSHAKE_TIMEOUT + Duration::from_secs(15)
            ),
        }
    }
    let waited = opened.elapsed();
    assert!(waited >= HANDSHAKE_TIMEOUT - Duration::from_millis(500), "silent clients were cut off early ({waited:?})");
    assert_eq!(https_get(server.addr, &tls.ca, "/healthz").status, 200, "still serving");
    let log = server.log();
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "bad clients made the server complain:\n{log}");
}

/// SIGHUP rereads the certificate files: new connections get the new
/// certificate; broken files leave the current one in place.
#[test]
fn sighup_reloads_the_certificate() {
    let (server, tls) = Server::start_tls(&[]);
    let renewed = TlsFiles::generate();
    std::fs::copy(&renewed.cert, &tls.cert).unwrap();
    std::fs::copy(&renewed.key, &tls.key).unwrap();
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_https_request(server.addr, &renewed.ca, "GET", "/healthz", &[], b"").is_err() {
        assert!(Instant::now() < deadline, "the renewed certificate was not served; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(try_https_request(server.addr, &tls.ca, "GET", "/healthz", &[], b"").is_err(), "the old one still is");
    assert!(server.log().contains("TLS certificate reloaded"), "{}", server.log());

    std::fs::write(&tls.key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n").unwrap();
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("not reloaded") {
        assert!(Instant::now() < deadline, "no complaint about the broken key; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.log().contains(tls.key.to_str().unwrap()), "the complaint names no file:\n{}", server.log());
    assert_eq!(https_get(server.addr, &renewed.ca, "/healthz").status, 200, "the renewed certificate stays");
}

/// The RSA (PKCS#1) key form from the TOML file's tls_cert/tls_key, the EC
/// (SEC1) form from STOREFRONT_TLS_CERT/STOREFRONT_TLS_KEY.
#[test]
fn rsa_and_ec_keys_from_file_and_environment() {
    let (cert, key) = key_fixture("rsa-pkcs1");
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("serve.toml");
    std::fs::write(&toml, format!("tls_cert = {:?}\ntls_key = {:?}\n", cert.display(), key.display())).unwrap();
    let server = Server::start_env(Some(&cert), None, &["--config", toml.to_str().unwrap()], &[]);
    let resp = curl_ok(&cert, &[&format!("{}/healthz", server.https_url())]);
    assert_eq!(resp, b"ok\n");

    let (cert, key) = key_fixture("ec-sec1");
    let env = [("STOREFRONT_TLS_CERT", cert.to_str().unwrap()), ("STOREFRONT_TLS_KEY", key.to_str().unwrap())];
    let server = Server::start_env(Some(&cert), None, &[], &env);
    let resp = curl_ok(&cert, &["--http2", &format!("https://localhost:{}/healthz", server.addr.port())]);
    assert_eq!(resp, b"ok\n", "by name (localhost) too");
}

/// Start-up refuses half a TLS configuration and unusable files, naming
/// what is wrong.
#[test]
fn startup_refuses_bad_tls_settings() {
    let tls = TlsFiles::generate();
    let (cert, key) = (tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    let err = serve_fails(&["--tls-cert", cert], &[]);
    assert!(err.contains("--tls-key"), "certificate without key:\n{err}");
    let err = serve_fails(&[], &[("STOREFRONT_TLS_KEY", key)]);
    assert!(err.contains("--tls-cert"), "key without certificate:\n{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let missing = dir.path().join("missing.key");
    let missing = missing.to_str().unwrap();
    let err = serve_fails(&["--tls-cert", cert, "--tls-key", missing], &[]);
    assert!(err.contains(missing) && err.contains("No such file"), "missing key:\n{err}");

    let garbled = file("garbled.key", "-----BEGIN PRIVATE KEY-----\n%%% not base64 %%%\n-----END PRIVATE KEY-----\n");
    let err = serve_fails(&["--tls-cert", cert, "--tls-key", &garbled], &[]);
    assert!(err.contains(&garbled), "garbled key:\n{err}");

    let not_a_key = file("junk.key", "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n");
    let err = serve_fails(&["--tls-cert", cert, "--tls-key", &not_a_key], &[]);
    assert!(err.contains(&not_a_key) && err.contains("not a private key"), "junk key:\n{err}");

    let err = serve_fails(&["--tls-cert", cert, "--tls-key", cert], &[]);
    assert!(err.contains("no PEM PRIVATE KEY"), "a certificate given as the key:\n{err}");

    let other = TlsFiles::generate();
    let err = serve_fails(&["--tls-cert", cert, "--tls-key", other.key.to_str().unwrap()], &[]);
    assert!(err.contains("does not go with"), "someone else's key:\n{err}");

    let empty = file("empty.pem", "");
    let err = serve_fails(&["--tls-cert", &empty, "--tls-key", key], &[]);
    assert!(err.contains(&empty) && err.contains("no PEM CERTIFICATE"), "empty certificate file:\n{err}");
}
