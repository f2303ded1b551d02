//! skopeo, the real OCI client, with its state (auth file, runtime dir)
//! private to one test.
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use super::nix::tool;

/// skopeo, kept away from the caller's credentials and configuration.
pub struct Skopeo {
    home: TempDir,
}

impl Skopeo {
    pub fn new() -> Skopeo {
        tool("skopeo");
        Skopeo { home: tempfile::tempdir().unwrap() }
    }

    pub fn output(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("skopeo");
        cmd.args(args)
            .env("REGISTRY_AUTH_FILE", self.home.path().join("auth.json"))
            .env("XDG_RUNTIME_DIR", self.home.path())
            .env("HOME", self.home.path())
            .stdin(Stdio::null());
        cmd.output().unwrap_or_else(|e| panic!("running skopeo {args:?}: {e}"))
    }

    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "skopeo {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[track_caller]
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(!out.status.success(), "skopeo {args:?} succeeded, but should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `skopeo inspect` (parsed; the non-raw form also lists the tags).
    #[track_caller]
    pub fn inspect(&self, reference: &str) -> Value {
        let out = self.run(&["inspect", "--tls-verify=false", reference]);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("skopeo inspect {reference}: {e}"))
    }

    /// `skopeo inspect --raw`: the manifest's bytes.
    #[track_caller]
    pub fn raw(&self, reference: &str) -> Vec<u8> {
        self.run(&["inspect", "--raw", "--tls-verify=false", reference])
    }
}
