//! Helpers for the binary-cache acceptance tests (`tests/cache_nix.rs`):
//! a small HTTP/1.1 client over `std::net::TcpStream`, a counting HTTP
//! proxy, Nix signing keys, secured servers, and a Nix client whose state
//! (narinfo cache, configuration) is private to one test.
//!
//! Declared from `cache_nix.rs` with `#[path]` (the shared `common/mod.rs`
//! belongs to another test suite).
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tempfile::TempDir;

use crate::common::{
    Server,
    nix::{self, tool},
};

// ---------------------------------------------------------------- HTTP client

pub use crate::common::{Response, get, head, parse_response, request, try_request};

/// Sends a request head announcing `declared_len` body bytes, then only
/// `sent`, then closes the connection: an upload cut off mid-stream.
/// Returns whatever the server answered before the close (usually nothing).
pub fn put_truncated(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    declared_len: usize,
    sent: &[u8],
) -> Option<Response> {
    assert!(sent.len() < declared_len, "put_truncated must send less than it declares");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {declared_len}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("writing the request head");
    for piece in sent.chunks(64 << 10) {
        if stream.write_all(piece).is_err() {
            break;
        }
    }
    // Give the server time to take in what arrived, then cut the upload.
    std::thread::sleep(Duration::from_millis(300));
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    drop(stream);
    // Let the server notice and clean up.
    std::thread::sleep(Duration::from_millis(300));
    parse_response(&raw, false).ok()
}

#[allow(unused_imports)]
pub use crate::common::basic_auth;

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ------------------------------------------- test HTTP servers: proxy, files

/// A request as a [`TestHttpServer`] handler sees it.
pub struct Incoming {
    pub method: String,
    pub path: String,
    /// Without Host, Connection and Content-Length.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

type Handler = dyn Fn(&Incoming) -> Response + Send + Sync;

/// A minimal threaded HTTP/1.1 server (keep-alive, Content-Length bodies)
/// answering with `handler`, recording every request as `(method, path)`.
/// Its threads end with the test process.
pub struct TestHttpServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    answered: Arc<Mutex<Vec<(String, String, u16)>>>,
}

impl TestHttpServer {
    pub fn start(handler: impl Fn(&Incoming) -> Response + Send + Sync + 'static) -> TestHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test HTTP server");
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let answered: Arc<Mutex<Vec<(String, String, u16)>>> = Arc::default();
        let logs = (seen.clone(), answered.clone());
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (logs, handler) = (logs.clone(), handler.clone());
                std::thread::spawn(move || {
                    let _ = serve_connection(conn, &*handler, &logs.0, &logs.1);
                });
            }
        });
        TestHttpServer { addr, seen, answered }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request answered so far, with the status it got.
    pub fn answered(&self) -> Vec<(String, String, u16)> {
        self.answered.lock().unwrap().clone()
    }

    /// The paths of GET requests under `/nar/`.
    pub fn nar_gets(&self) -> Vec<String> {
        self.requests().into_iter().filter(|(m, p)| m == "GET" && p.starts_with("/nar/")).map(|(_, p)| p).collect()
    }
}

/// A reverse proxy in front of `upstream` that counts what passes (e.g.
/// what a pull-through cache asks its upstream). Responses are read whole
/// and re-sent with a Content-Length.
pub fn counting_proxy(upstream: SocketAddr) -> TestHttpServer {
    TestHttpServer::start(move |req| {
        let hdrs: Vec<(&str, &str)> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        try_request(upstream, &req.method, &req.path, &hdrs, &req.body).unwrap_or_else(|e| Response {
            status: 502,
            headers: vec![],
            body: format!("proxy: upstream failed: {e}\n").into_bytes(),
        })
    })
}

/// Serves the files under `dir` read-only (GET and HEAD), like nginx in
/// front of a `nix copy --to file://DIR` cache.
pub fn static_files(dir: PathBuf) -> TestHttpServer {
    TestHttpServer::start(move |req| {
        let rel = req.path.split('?').next().unwrap_or_default().trim_start_matches('/');
        let file = dir.join(rel);
        let found = (req.method == "GET" || req.method == "HEAD")
            && !rel.split('/').any(|c| c == ".." || c.is_empty())
            && file.is_file();
        if !found {
            return Response { status: 404, headers: vec![], body: b"not found\n".to_vec() };
        }
        let body = std::fs::read(&file).unwrap_or_default();
        let content_type = if rel.ends_with(".narinfo") {
            "text/x-nix-narinfo"
        } else if rel == "nix-cache-info" {
            "text/x-nix-cache-info"
        } else {
            "application/octet-stream"
        };
        Response { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body }
    })
}

fn serve_connection(
    conn: TcpStream,
    handler: &Handler,
    log: &Mutex<Vec<(String, String)>>,
    answered: &Mutex<Vec<(String, String, u16)>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
        let mut headers = Vec::new();
        let mut body_len = 0usize;
        let mut close = false;
        let mut expect_continue = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                let (n, v) = (n.trim().to_owned(), v.trim().to_owned());
                if n.eq_ignore_ascii_case("content-length") {
                    body_len = v.parse().unwrap_or(0);
                } else if n.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                } else if n.eq_ignore_ascii_case("expect") {
                    expect_continue = v.eq_ignore_ascii_case("100-continue");
                } else if !n.eq_ignore_ascii_case("host") {
                    headers.push((n, v));
                }
            }
        }
        if expect_continue {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut body = vec![0; body_len];
        reader.read_exact(&mut body)?;
        log.lock().unwrap().push((method.clone(), path.clone()));
        let resp = handler(&Incoming { method: method.clone(), path: path.clone(), headers, body });
        answered.lock().unwrap().push((method.clone(), path, resp.status));
        let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
        for (n, v) in &resp.headers {
            let skip = ["transfer-encoding", "connection", "content-length", "keep-alive"];
            if !skip.iter().any(|s| n.eq_ignore_ascii_case(s)) {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        let len = match resp.header("content-length") {
            Some(l) if method == "HEAD" => l.parse().unwrap_or(0),
            _ => resp.body.len(),
        };
        out.push_str(&format!("Content-Length: {len}\r\n\r\n"));
        writer.write_all(out.as_bytes())?;
        if method != "HEAD" {
            writer.write_all(&resp.body)?;
        }
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

// ------------------------------------------------------------ keys and servers

/// A Nix binary-cache key pair made by `nix-store --generate-binary-cache-key`.
pub struct Key {
    pub name: String,
    pub secret_file: PathBuf,
    /// `name:base64(32 bytes)`, as `trusted-public-keys` takes it.
    pub public: String,
    _dir: TempDir,
}

impl Key {
    pub fn generate(name: &str) -> Key {
        let dir = tempfile::tempdir().expect("temp dir");
        let (sk, pk) = (dir.path().join("sk"), dir.path().join("pk"));
        nix::run(Command::new(tool("nix-store")).arg("--generate-binary-cache-key").arg(name).arg(&sk).arg(&pk));
        let public = std::fs::read_to_string(&pk).expect("reading the public key").trim().to_owned();
        assert!(public.starts_with(&format!("{name}:")), "public key {public:?}");
        Key { name: name.to_owned(), secret_file: sk, public, _dir: dir }
    }

    pub fn secret(&self) -> &str {
        self.secret_file.to_str().expect("UTF-8 temp path")
    }
}

/// A server whose writes need `token` (given with `--write-token-file`), and
/// the directory holding the token file.
pub fn secure_server(token: &str, extra: &[&str]) -> (Server, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("write-tokens");
    std::fs::write(&file, format!("# tokens for the cache_nix tests\n{token}\n")).expect("writing the token file");
    let mut args = vec!["--write-token-file", file.to_str().expect("UTF-8 temp path")];
    args.extend_from_slice(extra);
    (Server::start_secure(&args), dir)
}

/// `http://127.0.0.1:PORT` plus `query` (e.g. `?compression=zstd`).
pub fn cache_url(server: &Server, query: &str) -> String {
    format!("http://{}{query}", server.addr)
}

// ------------------------------------------------------------------ Nix client

/// Nix commands with configuration and caches private to one test: the
/// narinfo cache (`XDG_CACHE_HOME`) in a temporary directory, no user
/// configuration, no substituters, no negative or positive narinfo caching,
/// `require-sigs = true` and no trusted keys unless set.
pub struct NixClient {
    dir: TempDir,
    settings: Vec<(String, String)>,
}

impl Default for NixClient {
    fn default() -> Self {
        Self::new()
    }
}

impl NixClient {
    pub fn new() -> NixClient {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = [
            ("experimental-features", "nix-command"),
            ("substituters", ""),
            ("narinfo-cache-negative-ttl", "0"),
            ("narinfo-cache-positive-ttl", "0"),
            ("require-sigs", "true"),
            ("trusted-public-keys", ""),
            ("sandbox", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        NixClient { dir, settings }
    }

    /// Sets (or replaces) a Nix setting.
    pub fn set(mut self, key: &str, value: &str) -> NixClient {
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn trust(self, keys: &[&Key]) -> NixClient {
        let keys: Vec<&str> = keys.iter().map(|k| k.public.as_str()).collect();
        self.set("trusted-public-keys", &keys.join(" "))
    }

    /// Credentials for 127.0.0.1 in a netrc file (`netrc-file`).
    pub fn netrc(self, password: &str) -> NixClient {
        let file = self.dir.path().join("netrc");
        std::fs::write(&file, format!("machine 127.0.0.1 login nix password {password}\n")).expect("writing netrc");
        let file = file.to_str().expect("UTF-8 temp path").to_owned();
        self.set("netrc-file", &file)
    }

    /// A path for a fresh chroot store (`--store DIR`: the store lives in
    /// `DIR/nix/store`, its database in `DIR/nix/var/nix/db`).
    pub fn store_root(&self, name: &str) -> String {
        let root = self.dir.path().join(name);
        assert!(!root.exists(), "store root {} used twice", root.display());
        root.to_str().expect("UTF-8 temp path").to_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A Nix tool with this client's environment.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(tool(name));
        let config: String = self.settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        cmd.env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("NIX_CONFIG", config)
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_USER_CONF_FILES")
            .stdin(Stdio::null());
        cmd
    }

    /// `nix ARGS…`, whatever its outcome.
    pub fn nix(&self, args: &[&str]) -> Output {
        nix::output(self.command("nix").args(args))
    }

    /// `nix ARGS…`, which must succeed; returns stdout.
    #[track_caller]
    pub fn nix_ok(&self, args: &[&str]) -> String {
        let out = self.nix(args);
        assert!(
            out.status.success(),
            "nix {} failed with {}:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// `nix copy --to URL PATHS…` from the system store, which must succeed.
    #[track_caller]
    pub fn copy_to(&self, url: &str, paths: &[&str]) {
        let mut args = vec!["copy", "--to", url];
        args.extend_from_slice(paths);
        self.nix_ok(&args);
    }

    /// `nix copy --from URL --to ROOT PATHS…`, whatever its outcome.
    pub fn copy_from(&self, url: &str, root: &str, paths: &[&str]) -> Output {
        let mut args = vec!["copy", "--from", url, "--to", root];
        args.extend_from_slice(paths);
        self.nix(&args)
    }
}

impl Drop for NixClient {
    fn drop(&mut self) {
        // Store paths are read-only; make the tree removable (also when not root).
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ------------------------------------------------------------ narinfo helpers

/// The narinfo path of a store path: `/<hash>.narinfo`.
pub fn narinfo_path(store_path: &str) -> String {
    format!("/{}.narinfo", hash_part(store_path))
}

/// The 32-character hash of a store path.
pub fn hash_part(store_path: &str) -> &str {
    let base = store_path.rsplit('/').next().unwrap();
    &base[..32]
}

/// The values of `key` in narinfo text.
pub fn narinfo_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// The one value of `key` in narinfo text; panics when absent.
#[track_caller]
pub fn narinfo_value(text: &str, key: &str) -> String {
    let vals = narinfo_values(text, key);
    assert_eq!(vals.len(), 1, "narinfo should have exactly one {key}:\n{text}");
    vals.into_iter().next().unwrap()
}

/// Replaces the value of `key` in narinfo text.
#[track_caller]
pub fn narinfo_replace(text: &str, key: &str, value: &str) -> String {
    assert!(narinfo_values(text, key).len() == 1, "no single {key} in\n{text}");
    text.lines()
        .map(|l| match l.split_once(':') {
            Some((k, _)) if k == key => format!("{k}: {value}\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// `nix-hash --type sha256 --flat --base32` of `data`: the nix32 sha256.
pub fn sha256_nix32(data: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("data");
    std::fs::write(&file, data).expect("writing a temp file");
    nix::run(Command::new(tool("nix-hash")).args(["--type", "sha256", "--flat", "--base32"]).arg(&file))
        .trim()
        .to_owned()
}
