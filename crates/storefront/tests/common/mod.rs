//! Shared helpers for the `storefront` integration tests: a real server
//! process on a loopback port, a deterministic PRNG, and small gRPC helpers.
#![allow(dead_code)]

pub mod fetch;
pub mod nix;
pub mod skopeo;
pub mod tls;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt::Debug,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use castore::{B3Digest, Directory, Name, Node, proto};
use tempfile::TempDir;
use tonic::{Code, Status};

/// A deterministic PRNG, the reference vectors (with absolute NAR paths) and
/// hex, shared with the other crates' tests (not every test uses each).
#[allow(unused_imports)]
pub use testkit::{Rng, Vector, hex, vectors};

/// How long a server gets to answer `/healthz` after it was spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Guard against a hang after SIGTERM (the server drains for at most 30 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(90);

/// A running `storefront serve` process, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    /// Holds the log file, and the data directory unless the caller owns it.
    _scratch: TempDir,
}

impl Server {
    /// A server on a fresh, temporary data directory. Like every `start*`
    /// but the `start_secure*` ones, it accepts anonymous writes, unless
    /// the extra flags name a `--write-token-file`.
    pub fn start() -> Server {
        Self::start_with(None, &[], true)
    }

    /// A server on a fresh data directory with extra `serve` flags.
    pub fn start_args(extra: &[&str]) -> Server {
        Self::start_with(None, extra, true)
    }

    /// A server on the caller's data directory (which outlives the server).
    pub fn start_in(data: &Path) -> Server {
        Self::start_with(Some(data), &[], true)
    }

    /// A server on the caller's data directory with extra `serve` flags.
    pub fn start_with_data_args(data: &Path, extra: &[&str]) -> Server {
        Self::start_with(Some(data), extra, true)
    }

    /// A server that checks write tokens (by default from the token file
    /// it creates in its data directory: [`Server::write_token`]).
    pub fn start_secure(extra: &[&str]) -> Server {
        Self::start_with(None, extra, false)
    }

    /// [`Server::start_secure`] on the caller's data directory.
    pub fn start_secure_in(data: &Path, extra: &[&str]) -> Server {
        Self::start_with(Some(data), extra, false)
    }

    fn start_with(data: Option<&Path>, extra: &[&str], anonymous_writes: bool) -> Server {
        Self::start_probed(data, extra, anonymous_writes, &[], &answers_http)
    }

    /// Spawns `serve` with `env` added to its environment and waits until
    /// `ready(addr)` (its /healthz answers).
    fn start_probed(
        data: Option<&Path>,
        extra: &[&str],
        anonymous_writes: bool,
        env: &[(&str, &str)],
        ready: &dyn Fn(SocketAddr) -> bool,
    ) -> Server {
        let scratch = tempfile::tempdir().expect("temp dir");
        let data = data.map(Path::to_path_buf).unwrap_or_else(|| scratch.path().join("data"));
        let anonymous_writes = anonymous_writes && !extra.contains(&"--write-token-file");
        let anonymous: &[&str] = if anonymous_writes { &["--allow-anonymous-writes"] } else { &[] };
        let log = scratch.path().join("server.log");
        let mut last_log = String::new();
        // The free port we picked may be taken by someone else before the
        // server binds it; then try another one.
        for _attempt in 0..5 {
            let addr = free_port();
            let log_file = std::fs::File::create(&log).expect("log file");
            let mut child = Command::new(env!("CARGO_BIN_EXE_storefront"))
                .arg("serve")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--data")
                .arg(&data)
                .args(anonymous)
                .args(extra)
                .env("STOREFRONT_LOG", "info,castore=debug")
                .env("NO_COLOR", "1")
                .env_remove("BLOB_SERVICE_ADDR")
                .env_remove("DIRECTORY_SERVICE_ADDR")
                .env_remove("PATH_INFO_SERVICE_ADDR")
                .env_remove("METADATA_ADDR")
                .env_remove("STOREFRONT_CONFIG")
                .env_remove("STOREFRONT_LISTEN")
                .env_remove("STOREFRONT_DATA")
                .env_remove("STOREFRONT_WRITE_TOKEN_FILE")
                .env_remove("STOREFRONT_READ_TOKEN_FILE")
                .env_remove("STOREFRONT_ALLOW_ANONYMOUS_WRITES")
                .env_remove("STOREFRONT_SIGNING_KEY")
                .env_remove("STOREFRONT_UPSTREAM")
                .env_remove("STOREFRONT_TRUSTED_PUBLIC_KEYS")
                .env_remove("STOREFRONT_NAR_COMPRESSION")
                .env_remove("STOREFRONT_PRIORITY")
                .env_remove("STOREFRONT_STORE_DIR")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("spawning the storefront binary");
            let deadline = Instant::now() + STARTUP_DEADLINE;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    if last_log.contains("Address already in use") || last_log.contains("AddrInUse") {
                        break; // next attempt, another port
                    }
                    panic!("storefront exited during start-up with {status}; its log:\n{last_log}");
                }
                if ready(addr) {
                    return Server { child: Some(child), addr, data, log, _scratch: scratch };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("storefront did not answer /healthz on {addr} within {STARTUP_DEADLINE:?}; its log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start storefront on a free port; last log:\n{last_log}");
    }

    /// `grpc+http://127.0.0.1:PORT`, for our client backends.
    pub fn url(&self) -> String {
        format!("grpc+http://{}", self.addr)
    }

    /// The URL for a package: `snix` (also the default) or `tvix`.
    pub fn url_for(&self, package: &str) -> String {
        match package {
            "snix" => self.url(),
            other => format!("{}?package={other}", self.url()),
        }
    }

    pub fn data(&self) -> &Path {
        &self.data
    }

    /// The token file a secure server without `--write-token-file` created.
    pub fn token_file(&self) -> PathBuf {
        self.data.join("write-tokens")
    }

    /// The first token of [`Server::token_file`].
    pub fn write_token(&self) -> String {
        let file = self.token_file();
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let token = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
        token.unwrap_or_else(|| panic!("no token in {}:\n{text}", file.display())).to_owned()
    }

    /// `grpc+http://:TOKEN@127.0.0.1:PORT`, for our client backends.
    pub fn url_with_token(&self, token: &str) -> String {
        format!("grpc+http://:{token}@{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server running").id() as i32
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit().await
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit (after a signal).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = child.id() as i32;
        // Wait off the async workers, so client connections in this process
        // keep answering the server's graceful-shutdown handshake.
        let wait = tokio::task::spawn_blocking(move || child.wait());
        match tokio::time::timeout(EXIT_DEADLINE, wait).await {
            Ok(status) => status.expect("join").expect("wait"),
            Err(_) => {
                // SAFETY: as above; the waiting thread reaps it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("storefront did not exit within {EXIT_DEADLINE:?}; its log:\n{}", self.log());
            }
        }
    }
}

/// Servers speaking HTTPS on their one port (`serve --tls-cert --tls-key`).
impl Server {
    /// A server with a fresh CA and certificate for 127.0.0.1, ::1 and
    /// localhost; like [`Server::start_args`], it accepts anonymous writes
    /// unless `extra` names a `--write-token-file`. Clients trust
    /// [`tls::TlsFiles::ca`].
    pub fn start_tls(extra: &[&str]) -> (Server, tls::TlsFiles) {
        let files = tls::TlsFiles::generate();
        let server = Self::start_tls_with(&files, None, extra);
        (server, files)
    }

    /// A server with the given certificate files, on the caller's data
    /// directory if given.
    pub fn start_tls_with(files: &tls::TlsFiles, data: Option<&Path>, extra: &[&str]) -> Server {
        let tls_args = files.serve_args();
        let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        Self::start_env(Some(&files.ca), data, &args, &[])
    }

    /// A server with `env` added to its environment (e.g. `SSL_CERT_FILE`
    /// for its `--upstream` caches). With `ca`, its TLS settings come from
    /// `extra` (flags or a `--config` file) and start-up is probed over
    /// HTTPS trusting the certificates in `ca`; without, over plain HTTP.
    pub fn start_env(ca: Option<&Path>, data: Option<&Path>, extra: &[&str], env: &[(&str, &str)]) -> Server {
        match ca {
            Some(ca) => Self::start_probed(data, extra, true, env, &|addr| {
                tls::try_https_request(addr, ca, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
            }),
            None => Self::start_probed(data, extra, true, env, &answers_http),
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `grpc+https://127.0.0.1:PORT`, for our client backends.
    pub fn grpcs_url(&self) -> String {
        format!("grpc+https://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- storefront log ({}) ---\n{}--- end of log ---", self.addr, self.log());
        }
    }
}

/// Whether a plain-HTTP server answers `/healthz` with 200.
fn answers_http(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/healthz"), Ok((200, _)))
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr")
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let resp = try_request(addr, "GET", path, &[], b"")?;
    Ok((resp.status, resp.text()))
}

/// An HTTP response, body decoded from chunked transfer encoding (but not
/// from any `Content-Encoding`).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status, headers and (the start of) the body, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = format!("HTTP {}\n", self.status);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(600)]).into_owned();
        s.push_str(&format!("\n{body}{}", if self.body.len() > 600 { "…" } else { "" }));
        s
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One request on a fresh connection (`Connection: close`); panics on an
/// I/O error.
#[track_caller]
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

pub fn head(addr: SocketAddr, path: &str) -> Response {
    request(addr, "HEAD", path, &[], b"")
}

/// One request on a fresh connection (`Connection: close`).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request_head(addr, method, path, headers, body).as_bytes())?;
    // A server may answer (401, 400) before reading the body and close: a
    // failed body write is then not the error, the answer is.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A reset after a complete answer (the server closed with our body unread).
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&raw, method == "HEAD")
}

/// The head of a one-request HTTP/1.1 exchange (`Connection: close`, a
/// Content-Length when there is a body or the method expects one).
pub fn request_head(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PUT" || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Parses a whole response read until the server closed the connection.
pub fn parse_response(raw: &[u8], head_only: bool) -> std::io::Result<Response> {
    let mut raw = raw;
    loop {
        let end = find(raw, b"\r\n\r\n")
            .ok_or_else(|| invalid(format!("no complete response head in {:?}", String::from_utf8_lossy(raw))))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("response head is not UTF-8".into()))?;
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
            return Err(invalid(format!("not an HTTP response: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        if (100..200).contains(&status) {
            raw = rest; // an interim response (100 Continue): the real one follows
            continue;
        }
        let headers: Vec<(String, String)> =
            lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
        let mut resp = Response { status, headers, body: Vec::new() };
        if head_only || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            resp.body = dechunk(rest)?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().map_err(|_| invalid(format!("bad Content-Length {len:?}")))?;
            if rest.len() < len {
                return Err(invalid(format!(
                    "response body cut short: Content-Length {len}, got {} bytes (status {status})",
                    rest.len()
                )));
            }
            resp.body = rest[..len].to_vec();
        } else {
            resp.body = rest.to_vec();
        }
        return Ok(resp);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").ok_or_else(|| invalid("chunked body cut short".into()))?;
        let size_text = std::str::from_utf8(&raw[..eol]).map_err(|_| invalid("bad chunk size".into()))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(invalid("chunked body cut short".into()));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A whole blob (or chunk) read through a [`castore::BlobService`].
pub async fn read_all(blobs: &dyn castore::BlobService, digest: &B3Digest) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut reader = blobs.open_read(digest).await.expect("open_read").unwrap_or_else(|| panic!("{digest} is missing"));
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.expect("read_to_end");
    out
}

/// The gRPC status a call or stream ended with, or its messages.
pub async fn collect<T>(resp: Result<tonic::Response<tonic::Streaming<T>>, Status>) -> Result<Vec<T>, Status> {
    let mut stream = resp?.into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.push(msg);
    }
    Ok(out)
}

/// Asserts that `result` failed with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, but the call succeeded with {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: wrong status code; message: {:?}", s.message());
            s
        }
    }
}

/// Asserts the status message mentions `needle` (case-insensitive).
#[track_caller]
pub fn expect_message(status: &Status, needle: &str, what: &str) {
    assert!(
        status.message().to_lowercase().contains(&needle.to_lowercase()),
        "{what}: message {:?} does not mention {needle:?}",
        status.message()
    );
}

/// The digest of a Directory message as sent (BLAKE3 of its encoding).
pub fn proto_digest(msg: &proto::Directory) -> B3Digest {
    B3Digest::of(&prost::Message::encode_to_vec(msg))
}

pub fn name(s: &str) -> Name {
    Name::new(Bytes::copy_from_slice(s.as_bytes())).expect("valid name")
}

pub fn file_node(contents: &[u8]) -> Node {
    Node::File { digest: B3Digest::of(contents), size: contents.len() as u64, executable: false }
}

/// An entry pointing at `child`, with the size of the deployed formula.
pub fn dir_node(child: &Directory) -> Node {
    Node::Directory { digest: child.digest(), size: child.size() }
}

pub fn dir(entries: Vec<(&str, Node)>) -> Directory {
    let mut d = Directory::default();
    for (n, node) in entries {
        d.add(name(n), node).expect("valid entry");
    }
    d
}

/// A multi-level tree with shared subdirectories, leaves first, root last.
/// `tag` makes every directory (and so every digest) unique to a caller.
///
/// ```text
/// root ── m1 → mid1 ── deep → deep ── la → leaf_a
///       │             │             └ lb → leaf_b
///       │             └ la → leaf_a
///       ├ m2 → mid2 ── lb → leaf_b
///       ├ shared → leaf_a
///       ├ readme (file), link (symlink)
/// ```
pub fn sample_tree(tag: &str) -> Vec<Directory> {
    let leaf_a = dir(vec![
        (&format!("a-{tag}"), file_node(format!("contents of a {tag}").as_bytes())),
        ("ln", Node::Symlink { target: "../somewhere".into() }),
    ]);
    let leaf_b = dir(vec![(
        &format!("b-{tag}"),
        Node::File { digest: B3Digest::of(tag.as_bytes()), size: tag.len() as u64, executable: true },
    )]);
    let deep = dir(vec![("la", dir_node(&leaf_a)), ("lb", dir_node(&leaf_b))]);
    let mid1 = dir(vec![("deep", dir_node(&deep)), ("f", file_node(b"f")), ("la", dir_node(&leaf_a))]);
    let mid2 = dir(vec![("lb", dir_node(&leaf_b))]);
    let root = dir(vec![
        ("link", Node::Symlink { target: "m1/deep".into() }),
        ("m1", dir_node(&mid1)),
        ("m2", dir_node(&mid2)),
        ("readme", file_node(b"hello\n")),
        ("shared", dir_node(&leaf_a)),
    ]);
    vec![leaf_a, leaf_b, deep, mid1, mid2, root]
}

/// Checks that `got` is a recursive Get answer for the closure `all` rooted
/// at `root`: root first, every directory of the closure exactly once,
/// each after a directory that refers to it, in breadth-first order (the
/// distance from the root never decreases).
#[track_caller]
pub fn assert_bfs(got: &[Directory], all: &[Directory], root: &B3Digest) {
    let by_digest: HashMap<B3Digest, &Directory> = all.iter().map(|d| (d.digest(), d)).collect();
    let mut depth = HashMap::from([(*root, 0usize)]);
    let mut queue = VecDeque::from([*root]);
    while let Some(d) = queue.pop_front() {
        let here = depth[&d];
        for (_, child, _) in by_digest[&d].directories() {
            if let std::collections::hash_map::Entry::Vacant(e) = depth.entry(child) {
                e.insert(here + 1);
                queue.push_back(child);
            }
        }
    }
    let digests: Vec<B3Digest> = got.iter().map(Directory::digest).collect();
    assert_eq!(digests.first(), Some(root), "the root must come first; got {digests:?}");
    let unique: HashSet<_> = digests.iter().copied().collect();
    assert_eq!(unique.len(), digests.len(), "a directory was sent twice: {digests:?}");
    let expected: HashSet<_> = depth.keys().copied().collect();
    assert_eq!(unique, expected, "recursive Get sent a different set of directories");
    let mut announced = HashSet::from([*root]);
    let mut last_depth = 0;
    for (i, got_dir) in got.iter().enumerate() {
        let d = digests[i];
        assert!(announced.contains(&d), "directory #{i} {d} came before any directory referring to it");
        assert!(depth[&d] >= last_depth, "directory #{i} {d} breaks breadth-first order: {digests:?}");
        last_depth = depth[&d];
        assert_eq!(got_dir, by_digest[&d], "directory #{i} differs from what was put");
        announced.extend(got_dir.directories().map(|(_, c, _)| c));
    }
}

/// A `storefront` command (the binary under test) with an environment that
/// does not leak the caller's configuration.
pub fn storefront() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_storefront"));
    for var in [
        "STOREFRONT_STORE",
        "STOREFRONT_CONFIG",
        "STOREFRONT_DATA",
        "STOREFRONT_LISTEN",
        "NIX_STORE_DIR",
        "STOREFRONT_TOKEN",
        "STOREFRONT_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    // `import` would pick up the token of a server in the default data
    // directory of whoever runs the tests.
    cmd.env("XDG_DATA_HOME", "/nonexistent/storefront-tests");
    cmd.env("NO_COLOR", "1").env("RUST_BACKTRACE", "0").env("STOREFRONT_LOG", "warn");
    cmd
}

/// `Basic base64(user:password)`, an `Authorization` header value.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes()))
}
