//! A private containerd for tests: its own `--root`, state directory,
//! sockets, `/opt` and config in a temporary directory, so that it never
//! touches a system containerd; logging (at debug level) to a file; stopped
//! on drop, after its tasks, containers and images are removed, with any
//! mount left under its directory unmounted.
//!
//! Needs root (overlayfs, runc), containerd 1.7 with `ctr` and
//! `containerd-shim-runc-v2`, and runc: `scripts/install-containerd`
//! installs them on Debian 12. Tests that use it fail, never skip, when one
//! is missing. Declared by a test with
//! `#[path = "common/containerd.rs"] mod containerd;`.
#![allow(dead_code)]

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// How long containerd gets to answer `ctr version` after it was spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// The default limit for one `ctr` command.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// The containerd series these tests are written for (the spec's facts).
pub const SERIES: &str = "1.7.";
/// containerd's default state directory, where shims put their sockets.
const RUN_DIR: &str = "/run/containerd";

/// The path of a tool, or a panic that says how to get it.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run scripts/install-containerd (containerd 1.7 from Debian 13, and runc)")
    })
}

/// Panics unless this process runs as root (containerd's overlayfs
/// snapshotter and runc need it).
#[track_caller]
pub fn assert_root() {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test runs a real containerd and runc, which need root (euid is {euid})");
}

/// Runs `cmd` with stdin from /dev/null, killing it after `timeout`;
/// stdout and stderr are captured through files (no pipe to fill up).
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!("{cmd:?} did not finish within {timeout:?}; its stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// A running containerd of our own, stopped (and cleaned up) on drop.
pub struct Containerd {
    child: Option<Child>,
    /// Whether /run/containerd existed before we started (the runc shims
    /// put their sockets in /run/containerd/s, whatever the config says).
    had_run_dir: bool,
    dir: TempDir,
    /// The containerd namespace every `ctr` call of this value uses.
    pub namespace: String,
    /// What `containerd --version` printed.
    pub version: String,
}

impl Containerd {
    /// Starts containerd in a fresh temporary directory and waits until it
    /// answers. Panics (with its log) when it does not come up.
    pub fn start(namespace: &str) -> Containerd {
        Self::start_with(namespace, "", &[])
    }

    /// [`Containerd::start`] with `extra_config` appended to config.toml
    /// (e.g. `[proxy_plugins.NAME]` tables, the transfer service's
    /// `unpack_config`) and `env` added to containerd's environment (e.g.
    /// `SSL_CERT_FILE`).
    pub fn start_with(namespace: &str, extra_config: &str, env: &[(&str, &str)]) -> Containerd {
        assert_root();
        let containerd = tool("containerd");
        tool("ctr");
        tool("runc");
        tool("containerd-shim-runc-v2");
        let version = output_within(Command::new(&containerd).arg("--version"), Duration::from_secs(30));
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        assert!(
            version.split_whitespace().nth(2).is_some_and(|v| v.trim_start_matches('v').starts_with(SERIES)),
            "containerd {SERIES}x is needed, `containerd --version` says {version:?}; run scripts/install-containerd"
        );

        let dir = tempfile::Builder::new().prefix("sf-containerd-").tempdir().expect("temp dir");
        let d = dir.path();
        for sub in ["root", "state", "opt", "fifo", "runc"] {
            std::fs::create_dir_all(d.join(sub)).expect("containerd directories");
        }
        // Every address and directory of containerd's own: nothing at
        // /run/containerd, /var/lib/containerd or /opt/containerd. The CRI
        // plugin (CNI, a streaming server) and NRI are not wanted here.
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            opt = d.join("opt").display(),
        );
        let config = format!("{config}\n{extra_config}\n");
        std::fs::write(d.join("config.toml"), config).expect("config.toml");
        let had_run_dir = Path::new(RUN_DIR).exists();
        let log = File::create(d.join("containerd.log")).expect("containerd.log");
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let mut containerd =
            Containerd { child: Some(child), had_run_dir, dir, namespace: namespace.to_owned(), version };

        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = containerd.child.as_mut().unwrap().try_wait().expect("try_wait") {
                containerd.child = None;
                panic!("containerd exited during start-up with {status}; its log:\n{}", containerd.log());
            }
            if containerd.socket().exists()
                && output_within(&mut containerd.ctr_command(&["version"]), Duration::from_secs(10)).status.success()
            {
                return containerd;
            }
            if Instant::now() > deadline {
                panic!("containerd did not answer within {STARTUP_DEADLINE:?}; its log:\n{}", containerd.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The directory everything of this containerd lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `ctr -a SOCKET -n NAMESPACE ARGS…`, not yet run.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool("ctr"));
        cmd.arg("--address").arg(self.socket()).arg("--namespace").arg(&self.namespace).args(args);
        for var in ["CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "CONTAINERD_SNAPSHOTTER", "CONTAINERD_RUNTIME"] {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Runs `ctr ARGS…`, whatever its exit status.
    pub fn ctr(&self, args: &[&str]) -> Output {
        output_within(&mut self.ctr_command(args), CTR_TIMEOUT)
    }

    /// Runs `ctr ARGS…` and returns its stdout; panics with its output and
    /// containerd's log unless it succeeds.
    #[track_caller]
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}\n(containerd's log follows)",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The arguments that keep `ctr run` out of /run/containerd: its I/O
    /// FIFOs and runc's state go under [`Containerd::dir`].
    pub fn run_flags(&self) -> Vec<String> {
        vec![
            "--fifo-dir".into(),
            self.dir().join("fifo").display().to_string(),
            "--runc-root".into(),
            self.dir().join("runc").display().to_string(),
        ]
    }

    /// `ctr run --rm [run_flags] IMAGE ID [COMMAND…]`: the container's
    /// output (stdout and stderr) and exit status.
    pub fn run(&self, image: &str, id: &str, command: &[&str]) -> (ExitStatus, String, String) {
        let flags = self.run_flags();
        let mut args: Vec<&str> = vec!["run", "--rm"];
        args.extend(flags.iter().map(String::as_str));
        args.extend([image, id]);
        args.extend(command);
        let out = self.ctr(&args);
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Image names in the namespace (`ctr images ls -q`).
    pub fn images(&self) -> Vec<String> {
        self.ctr_ok(&["images", "ls", "-q"]).lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    }

    /// Best effort: kills and deletes every task, deletes every container
    /// and image of the namespace.
    fn remove_everything(&self) {
        let quiet = |args: &[&str]| {
            let out = output_within(&mut self.ctr_command(args), Duration::from_secs(30));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        for line in quiet(&["tasks", "ls", "-q"]).lines().filter(|l| !l.is_empty()) {
            quiet(&["tasks", "kill", "--signal", "SIGKILL", line]);
            quiet(&["tasks", "delete", "--force", line]);
        }
        for line in quiet(&["containers", "ls", "-q"]).lines().filter(|l| !l.is_empty()) {
            quiet(&["containers", "delete", line]);
        }
        let images: Vec<String> =
            quiet(&["images", "ls", "-q"]).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        if !images.is_empty() {
            let mut args = vec!["images", "rm", "--sync"];
            args.extend(images.iter().map(String::as_str));
            quiet(&args);
        }
    }

    /// Processes whose command line names our socket: the runc shims this
    /// containerd started (they outlive it by design).
    fn our_shims(&self) -> Vec<i32> {
        let needle = self.socket().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("containerd-shim") && cmdline.contains(&needle)
            })
            .collect()
    }

    /// Mount points under [`Containerd::dir`], deepest first.
    fn our_mounts(&self) -> Vec<String> {
        let prefix = self.dir().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo)
            .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        mounts
    }

    /// Mount points still under [`Containerd::dir`] (none, after a clean run).
    pub fn leftover_mounts(&self) -> Vec<String> {
        self.our_mounts()
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(d) = octal {
            out.push(d.iter().fold(0u8, |v, b| v.wrapping_mul(8).wrapping_add(b - b'0')));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if let Some(mut child) = self.child.take() {
            if panicking {
                eprintln!(
                    "--- containerd log ({}) ---\n{}\n--- end of containerd log ---",
                    self.dir().display(),
                    self.log()
                );
            }
            if child.try_wait().ok().flatten().is_none() {
                self.remove_everything();
                // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(15);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for pid in self.our_shims() {
            // SAFETY: kill(2) on a shim of the containerd we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for mount in self.our_mounts() {
            let Ok(c) = std::ffi::CString::new(mount.clone()) else { continue };
            // SAFETY: umount2(2) with a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                eprintln!("could not unmount {mount}: {}", std::io::Error::last_os_error());
            }
        }
        if !self.had_run_dir {
            // Only when empty: what we (our shims) made there, nothing else.
            let _ = std::fs::remove_dir(Path::new(RUN_DIR).join("s"));
            let _ = std::fs::remove_dir(RUN_DIR);
        }
    }
}
