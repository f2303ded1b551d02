//! storefront replicas on a shared Garage bucket, for the scale-out tests
//! (`tests/replicas*.rs`): a write token file every replica is given, a
//! replica that can be killed (SIGKILL) and started again on the same
//! storage, and `storefront verify --storage` of the bucket.
//!
//! Declared from the test files with `#[path]`, like `common/cache.rs`.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::{Server, storefront};

/// One write token in a file, shared by every replica: a client may write
/// through any of them with it.
pub struct Tokens {
    pub token: String,
    pub file: PathBuf,
    _dir: TempDir,
}

impl Tokens {
    pub fn new(token: &str) -> Tokens {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("write-tokens");
        std::fs::write(&file, format!("# the replicas' shared write token\n{token}\n")).expect("writing the tokens");
        Tokens { token: token.to_owned(), file, _dir: dir }
    }

    pub fn file_arg(&self) -> &str {
        self.file.to_str().expect("UTF-8 temp path")
    }
}

/// A `storefront serve` on `--storage URL`, with a data directory of its
/// own (its tokens and local state) that outlives restarts.
pub struct Replica {
    pub server: Server,
    args: Vec<String>,
    data: TempDir,
}

impl Replica {
    /// Starts a replica on `storage` that takes writes with the shared
    /// token; `extra` are more `serve` flags (a signing key).
    pub fn start(storage: &str, tokens: &Tokens, extra: &[&str]) -> Replica {
        let data = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> =
            ["--storage", storage, "--write-token-file", tokens.file_arg()].map(str::to_owned).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let server = Self::spawn(data.path(), &args);
        Replica { server, args, data }
    }

    fn spawn(data: &Path, args: &[String]) -> Server {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_secure_in(data, &args)
    }

    /// Kills the process (SIGKILL: no shutdown, writes cut wherever they
    /// are) and waits for it.
    pub async fn kill(&mut self) {
        self.server.signal(libc::SIGKILL);
        let status = self.server.wait_exit().await;
        assert!(!status.success(), "a killed replica exited with {status}");
    }

    /// Starts the replica again on the same storage and data directory (on
    /// another port).
    pub fn restart(&mut self) {
        self.server = Self::spawn(self.data.path(), &self.args);
    }

    /// `grpc+http://:TOKEN@127.0.0.1:PORT`.
    pub fn grpc_url(&self, tokens: &Tokens) -> String {
        self.server.url_with_token(&tokens.token)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }
}

/// `storefront verify ARGS… --json`, whatever its outcome: exit status and
/// the report (`Null` when it printed none).
pub fn verify(args: &[&str]) -> (Option<i32>, Value, Output) {
    let out = storefront()
        .arg("verify")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("running storefront verify");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, out)
}

/// `storefront verify --storage URL`, which must find the store clean;
/// returns the report.
#[track_caller]
pub fn assert_clean(storage: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--storage", storage];
    args.extend_from_slice(extra);
    let (code, report, out) = verify(&args);
    assert_eq!(
        code,
        Some(0),
        "verify {extra:?} of the shared storage is not clean:\n{}\nstderr: {}",
        serde_json::to_string_pretty(&report).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    report
}
