//! Tokens on the real server: writes over HTTP and gRPC need a write token,
//! `--read-token-file` makes reads private, the default token file is made
//! once and reused, and `storefront import` sends the token.
mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use castore::{
    B3Digest,
    proto::{self, blob_service_client::BlobServiceClient},
};
use common::*;
use store::pathinfo::{GrpcPathInfoService, PathInfoService};
use tonic::{Code, metadata::MetadataValue};

const CACHE_INFO: &[u8] = b"StoreDir: /nix/store\n";

/// An HTTP request off the async workers.
async fn send(server: &Server, method: &'static str, path: &'static str, auth: Option<String>) -> Response {
    let addr = server.addr;
    let body: &[u8] = if method == "PUT" { CACHE_INFO } else { b"" };
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| ("Authorization", a)).into_iter().collect();
        request(addr, method, path, &headers, body)
    })
    .await
    .unwrap()
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

fn basic(user: &str, token: &str) -> Option<String> {
    Some(basic_auth(user, token))
}

/// A 401 with the challenge of its protocol: Basic (what makes curl, so
/// Nix, send netrc credentials), or for the registry a Bearer token realm.
#[track_caller]
fn assert_refused(resp: &Response, needle: &str) {
    assert_eq!(resp.status, 401, "expected 401, got:\n{}", resp.describe());
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge == "Basic realm=\"storefront\""
            || (challenge.starts_with("Bearer realm=\"http://") && challenge.contains("/v2/token\"")),
        "{}",
        resp.describe()
    );
    assert!(resp.text().contains(needle), "the refusal does not say {needle:?}: {}", resp.text());
}

#[track_caller]
fn assert_accepted(resp: &Response, what: &str) {
    assert!(resp.is_success(), "{what}:\n{}", resp.describe());
}

/// A raw BlobService client on a plain channel: metadata is set by hand.
async fn raw_blobs(server: &Server) -> BlobServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    BlobServiceClient::new(channel)
}

/// A one-message BlobService/Put, with `authorization` metadata if given.
async fn raw_put(server: &Server, data: &'static [u8], auth: Option<&str>) -> Result<B3Digest, tonic::Status> {
    let mut req = tonic::Request::new(futures::stream::iter([proto::BlobChunk { data: Bytes::from_static(data) }]));
    if let Some(auth) = auth {
        req.metadata_mut().insert("authorization", MetadataValue::try_from(auth).unwrap());
    }
    let resp = raw_blobs(server).await.put(req).await?;
    Ok(B3Digest::try_from(&resp.into_inner().digest).expect("digest"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_writes_need_a_write_token() {
    let server = Server::start_secure(&[]);
    let token = server.write_token();

    assert_refused(&send(&server, "PUT", "/nix-cache-info", None).await, "write token");
    assert_refused(&send(&server, "PUT", "/nix-cache-info", bearer("wrong")).await, "not one");
    assert_refused(&send(&server, "PUT", "/nix-cache-info", basic("nix", "wrong")).await, "write token");
    assert_refused(&send(&server, "PUT", "/nix-cache-info", basic(&token, "")).await, "write token");
    assert_refused(&send(&server, "DELETE", "/nix-cache-info", None).await, "write token");
    // POST to an unknown path: refused before routing, whatever the path.
    assert_refused(&send(&server, "POST", "/v2/x/blobs/uploads/", None).await, "write token");

    assert_accepted(&send(&server, "PUT", "/nix-cache-info", bearer(&token)).await, "Bearer");
    assert_accepted(&send(&server, "PUT", "/nix-cache-info", basic("nix", &token)).await, "Basic as nix");
    assert_accepted(&send(&server, "PUT", "/nix-cache-info", basic("", &token)).await, "Basic, no user");

    // Reads are public, with or without a (wrong) token.
    let info = send(&server, "GET", "/nix-cache-info", None).await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert!(info.text().contains("StoreDir: /nix/store"), "{}", info.text());
    assert_eq!(send(&server, "GET", "/nix-cache-info", bearer("wrong")).await.status, 200);
    assert_eq!(send(&server, "GET", "/metrics", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_puts_need_a_write_token() {
    let server = Server::start_secure(&[]);
    let token = server.write_token();
    let data: &'static [u8] = b"only with a token";
    let digest = B3Digest::of(data);

    let status = raw_put(&server, data, None).await.expect_err("a Put without a token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    expect_message(&status, "write token", "Put without a token");
    let status = raw_put(&server, data, Some("Bearer wrong")).await.expect_err("a Put with a wrong token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Nothing was stored; reads stay public.
    let stat = proto::StatBlobRequest { digest: digest.to_bytes(), ..Default::default() };
    expect_code(raw_blobs(&server).await.stat(stat).await, Code::NotFound, "Stat after the refused Put");

    assert_eq!(raw_put(&server, data, Some(&format!("Bearer {token}"))).await.expect("Put with the token"), digest);
    let blobs = castore::blob_service_from_url(&server.url()).unwrap();
    assert!(read_all(&*blobs, &digest).await == data, "a public read of what was put");

    // Our client backends: the token in the URL's password, under both
    // package names; without it, every kind of Put is refused.
    let with_token =
        castore::blob_service_from_url(&format!("{}?package=tvix", server.url_with_token(&token))).unwrap();
    let other = with_token.put_bytes(Bytes::from_static(b"through the client"), None).await.expect("client Put");
    assert!(blobs.has(&other).await.unwrap());
    let dirs = castore::directory_service_from_url(&server.url_for("tvix")).unwrap();
    let tree = sample_tree("auth");
    match dirs.put_closure(tree.clone()).await {
        Err(castore::Error::Remote(s)) if s.code() == Code::Unauthenticated => {}
        other => panic!("tvix DirectoryService/Put without a token: {other:?}"),
    }
    assert_eq!(dirs.get(&tree.last().unwrap().digest()).await.unwrap(), None, "the refused closure is absent");
    let dirs = castore::directory_service_from_url(&server.url_with_token(&token)).unwrap();
    dirs.put_closure(tree).await.expect("DirectoryService/Put with the token");

    let transport = castore::grpc::connect(&url::Url::parse(&server.url()).unwrap()).unwrap();
    let paths = GrpcPathInfoService::new(transport);
    let info = store::PathInfo {
        store_path: store::StorePath::from_basename("00000000000000000000000000000000-auth").unwrap(),
        node: castore::Node::File { digest, size: data.len() as u64, executable: false },
        references: vec![],
        nar_size: 0,
        nar_sha256: [0; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    };
    match paths.put(info).await {
        Err(castore::Error::Remote(s)) if s.code() == Code::Unauthenticated => {}
        other => panic!("PathInfoService/Put without a token: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tokens_make_reads_private() {
    let dir = tempfile::tempdir().unwrap();
    let read_file = dir.path().join("read-tokens");
    std::fs::write(&read_file, "# readers\nreader-one\n\n  reader-two  \n").unwrap();
    let server = Server::start_secure(&["--read-token-file", read_file.to_str().unwrap()]);
    let writer = server.write_token();

    assert_refused(&send(&server, "GET", "/nix-cache-info", None).await, "reading needs a token");
    assert_refused(&send(&server, "GET", "/nix-cache-info", bearer("wrong")).await, "not one");
    assert_refused(&send(&server, "GET", "/metrics", None).await, "reading needs a token");
    for auth in [bearer("reader-one"), basic("nix", "reader-two"), bearer(&writer)] {
        let resp = send(&server, "GET", "/nix-cache-info", auth.clone()).await;
        assert_eq!(resp.status, 200, "{auth:?}: {}", resp.text());
    }
    assert_eq!(send(&server, "GET", "/metrics", bearer("reader-one")).await.status, 200);
    let healthz = send(&server, "GET", "/healthz", None).await;
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok\n"), "/healthz stays public");
    // A read token does not write.
    assert_refused(&send(&server, "PUT", "/nix-cache-info", bearer("reader-one")).await, "write token");

    let digest = B3Digest::of(b"absent");
    let anonymous = castore::blob_service_from_url(&server.url()).unwrap();
    match anonymous.stat(&digest).await {
        Err(castore::Error::Remote(s)) if s.code() == Code::Unauthenticated => {
            expect_message(&s, "reading needs a token", "Stat without a token");
        }
        other => panic!("Stat without a token: {other:?}"),
    }
    let reader = castore::blob_service_from_url(&server.url_with_token("reader-two")).unwrap();
    assert_eq!(reader.stat(&digest).await.expect("Stat with a read token"), None);
    match reader.put_bytes(Bytes::from_static(b"reader writes"), None).await {
        Err(castore::Error::Remote(s)) if s.code() == Code::Unauthenticated => {}
        other => panic!("Put with a read token: {other:?}"),
    }
    let written = castore::blob_service_from_url(&server.url_with_token(&writer))
        .unwrap()
        .put_bytes(Bytes::from_static(b"writer writes"), None)
        .await
        .expect("Put with the write token");
    assert!(reader.has(&written).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_token_file_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_secure_in(&data, &[]);
    let file = server.token_file();
    let mode = std::fs::metadata(&file).expect("the token file exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().next().is_some_and(|l| l.starts_with('#')), "a comment says what the file is:\n{text}");
    let token = server.write_token();
    assert!(token.len() >= 43, "a short token: {token:?}");
    let log = server.log();
    assert!(
        log.contains(&format!("write token file created at {}", file.display())),
        "the log does not say where:\n{log}"
    );
    assert!(!log.contains(&token), "the log shows the token:\n{log}");
    server.terminate().await;

    let server = Server::start_secure_in(&data, &[]);
    assert_eq!(server.write_token(), token, "a restart made a new token");
    assert!(!server.log().contains("created"), "a restart created the file again:\n{}", server.log());
    assert!(server.log().contains(&file.display().to_string()), "the log names the token file:\n{}", server.log());
    assert_accepted(&send(&server, "PUT", "/nix-cache-info", bearer(&token)).await, "the old token after a restart");

    // Another server's token is not this one's.
    let other = Server::start_secure(&[]);
    assert_ne!(other.write_token(), token, "two data directories share a token");
    assert_refused(&send(&other, "PUT", "/nix-cache-info", bearer(&token)).await, "not one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_writes_and_token_files() {
    let server = Server::start_args(&[]); // --allow-anonymous-writes
    assert_accepted(&send(&server, "PUT", "/nix-cache-info", None).await, "anonymous PUT");
    assert_accepted(&send(&server, "PUT", "/nix-cache-info", bearer("junk")).await, "PUT with junk");
    raw_put(&server, b"anonymous", None).await.expect("anonymous gRPC Put");
    assert!(!server.token_file().exists(), "no token file is made when writes are anonymous");

    // A given token file: its tokens, and no default file.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "first\nsecond\n").unwrap();
    let server = Server::start_secure(&["--write-token-file", tokens.to_str().unwrap()]);
    assert_accepted(&send(&server, "PUT", "/nix-cache-info", bearer("second")).await, "the second token");
    assert_refused(&send(&server, "PUT", "/nix-cache-info", None).await, "write token");
    assert!(!server.token_file().exists());

    // An empty token file is refused at start-up.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# no tokens yet\n\n").unwrap();
    let data = dir.path().join("data");
    let out = serve_until_exit(&["--data", data.to_str().unwrap(), "--write-token-file", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no token") && stderr.contains("--allow-anonymous-writes"), "{stderr}");
}

/// `storefront serve ARGS` on a free port, which must exit by itself.
fn serve_until_exit(args: &[&str]) -> Output {
    let mut child = storefront()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storefront serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("storefront serve {args:?} kept running: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn import(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    storefront()
        .arg("import")
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running storefront import")
}

async fn has_path(server: &Server, path: &str, token: &str) -> bool {
    let path = store::StorePath::from_absolute(path, nix::STORE_DIR).unwrap();
    let transport = castore::grpc::connect(&url::Url::parse(&server.url_with_token(token)).unwrap()).unwrap();
    GrpcPathInfoService::new(transport).get(path.digest()).await.expect("PathInfo Get").is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn import_sends_the_token() {
    let fx = nix::fixture();
    let server = Server::start_secure(&[]);
    let token = server.write_token();

    let out = import(&["--store", &server.url(), &fx.top], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "import without a token succeeded: {stderr}");
    assert!(stderr.contains("write token") && stderr.contains("--token-file"), "not a clear error:\n{stderr}");
    assert!(!has_path(&server, &fx.top, &token).await, "a path went in without a token");

    let token_file = server.token_file();
    let token_arg = token_file.to_str().unwrap();
    let out = import(&["--store", &server.url(), "--token-file", token_arg, &fx.top], &[]);
    assert!(out.status.success(), "import with --token-file: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(&token), "the summary shows the token: {stdout}");
    assert!(has_path(&server, &fx.top, &token).await);

    // A server in the default data directory: its token is found there.
    let xdg = tempfile::tempdir().unwrap();
    let server = Server::start_secure_in(&xdg.path().join("storefront"), &[]);
    let out = import(&["--store", &server.url(), &fx.top], &[("XDG_DATA_HOME", xdg.path())]);
    assert!(out.status.success(), "import with the default token file: {}", String::from_utf8_lossy(&out.stderr));
    assert!(has_path(&server, &fx.top, &server.write_token()).await);

    // STOREFRONT_TOKEN_FILE works like --token-file; a file without a token is refused.
    let server = Server::start_secure(&[]);
    let out = import(&["--store", &server.url(), &fx.top], &[("STOREFRONT_TOKEN_FILE", &server.token_file())]);
    assert!(out.status.success(), "import with STOREFRONT_TOKEN_FILE: {}", String::from_utf8_lossy(&out.stderr));
    let empty = xdg.path().join("empty");
    std::fs::write(&empty, "# none\n").unwrap();
    let out = import(&["--store", &server.url(), "--token-file", empty.to_str().unwrap(), &fx.top], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no token"), "{out:?}");
}
