//! A real Garage cluster on loopback, for tests of storefront on S3-style
//! object storage (Garage is the engine the scale-out tests run on).
//!
//! ```no_run
//! let mut cluster = testkit::garage::Cluster::start(3);
//! let url = cluster.bucket_url("test-1"); // objectstore+s3://KEY:SECRET@bucket/test-1?endpoint=…
//! cluster.stop_node(2); // SIGKILL; the others keep serving
//! ```
//!
//! The binary comes from `$STOREFRONT_GARAGE` or else `scripts/install-garage`
//! (which builds Garage once into a cache directory, ~12 minutes on two
//! cores, and prints its path). Each node gets its own directory, sqlite
//! metadata, loopback ports picked free, the shared RPC secret and an admin
//! token; the nodes are connected, each given a 1 GB role in zone `dc1`, the
//! layout applied (replication factor = node count, at most 3), one bucket
//! created, and one key allowed to read, write and own it. Dropping the
//! cluster kills every node and removes their data.
//!
//! Calls block (they run the `garage` CLI): from async tests call them in
//! `tokio::task::spawn_blocking` or on a multi-threaded runtime.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The S3 region the nodes answer to.
pub const REGION: &str = "garage";

/// How long the cluster may take to come up (it takes ~2.5 s).
const STARTUP: Duration = Duration::from_secs(60);

/// A running cluster; dropping it kills every node.
pub struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    bucket: String,
    key_id: String,
    secret: String,
}

struct Node {
    config: PathBuf,
    log: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    /// `<id>@127.0.0.1:<rpc port>`.
    address: String,
    child: Option<Child>,
}

/// The `garage` binary: `$STOREFRONT_GARAGE`, else what
/// `scripts/install-garage` prints (building it the first time).
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("STOREFRONT_GARAGE") {
                return PathBuf::from(path);
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-garage");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(out.status.success(), "{} failed ({})", script.display(), out.status);
            let path = PathBuf::from(String::from_utf8(out.stdout).expect("a UTF-8 path").trim());
            assert!(path.is_file(), "{} printed {}, which is not a file", script.display(), path.display());
            path
        })
        .clone()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("binding a loopback port").local_addr().expect("its address").port()
}

/// `bytes` random bytes in hex (secrets of a throwaway cluster).
fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("reading /dev/urandom");
    crate::hex(&buf)
}

impl Cluster {
    /// Starts `nodes` nodes (1 to 3 for replication factors 1 to 3; more
    /// keep factor 3) and sets up one bucket and key. Panics, with the
    /// nodes' logs, if the cluster does not come up.
    pub fn start(nodes: usize) -> Cluster {
        assert!(nodes >= 1, "a cluster needs a node");
        binary(); // install it (once) before anything else
        let dir = tempfile::Builder::new().prefix("garage-").tempdir().expect("a temporary directory");
        let rpc_secret = random_hex(32);
        let admin_token = random_hex(16);
        let replication = nodes.min(3);
        let mut cluster = Cluster {
            nodes: (0..nodes)
                .map(|i| {
                    let root = dir.path().join(format!("node{i}"));
                    std::fs::create_dir_all(&root).expect("node directory");
                    let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
                    let config = root.join("garage.toml");
                    std::fs::write(
                        &config,
                        format!(
                            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#,
                            root = root.display()
                        ),
                    )
                    .expect("writing the node config");
                    Node {
                        config,
                        log: root.join("garage.log"),
                        s3_port,
                        rpc_port,
                        address: String::new(),
                        child: None,
                    }
                })
                .collect(),
            dir,
            bucket: "storefront".to_owned(),
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..nodes {
            cluster.spawn(i);
        }
        let deadline = Instant::now() + STARTUP;
        for i in 0..nodes {
            let id = cluster.retry(i, deadline, &["node", "id", "-q"]);
            cluster.nodes[i].address = id.trim().to_owned();
            assert!(
                cluster.nodes[i].address.ends_with(&format!("@127.0.0.1:{}", cluster.nodes[i].rpc_port)),
                "node {i} id: {id}"
            );
        }
        for i in 1..nodes {
            let peer = cluster.nodes[i].address.clone();
            cluster.retry(0, deadline, &["node", "connect", &peer]);
        }
        for i in 0..nodes {
            let id = cluster.nodes[i].address.split('@').next().expect("an id").to_owned();
            cluster.retry(0, deadline, &["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        }
        cluster.retry(0, deadline, &["layout", "apply", "--version", "1"]);
        let bucket = cluster.bucket.clone();
        cluster.retry(0, deadline, &["bucket", "create", &bucket]);
        let key = cluster.retry(0, deadline, &["key", "create", "storefront-tests"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {name:?} in `garage key create` output:\n{key}"))
        };
        cluster.key_id = field("Key ID:");
        cluster.secret = field("Secret key:");
        cluster.retry(
            0,
            deadline,
            &["bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", "storefront-tests"],
        );
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("node log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting garage node {i}: {e}"));
        node.child = Some(child);
    }

    /// Runs the `garage` CLI against node `i`, returning its output.
    pub fn garage(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new(binary())
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .output()
            .map_err(|e| format!("running garage: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("garage {}: {}\n{text}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// [`Cluster::garage`] until it succeeds (nodes still starting, the
    /// layout still spreading), or panics with the logs at `deadline`.
    fn retry(&self, i: usize, deadline: Instant, args: &[&str]) -> String {
        loop {
            match self.garage(i, args) {
                Ok(out) => return out,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{e}\n{}", self.logs()),
            }
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- garage node {i} ---\n{}", std::fs::read_to_string(&n.log).unwrap_or_default()))
            .collect()
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn s3_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The access key ID and secret allowed on the bucket.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.key_id, &self.secret)
    }

    /// An `objectstore+s3:` address for objects under `prefix` in the
    /// bucket, through node 0, credentials included (so tests need no
    /// process-wide environment).
    pub fn bucket_url(&self, prefix: &str) -> String {
        self.bucket_url_via(0, prefix)
    }

    /// [`Cluster::bucket_url`] through node `i`'s S3 endpoint.
    pub fn bucket_url_via(&self, i: usize, prefix: &str) -> String {
        format!(
            "objectstore+s3://{}:{}@{}/{prefix}?endpoint={}&region={REGION}",
            self.key_id,
            self.secret,
            self.bucket,
            self.s3_endpoint(i)
        )
    }

    /// The AWS environment for a client of node `i` (for child processes
    /// such as a storefront replica given an address without credentials).
    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.s3_endpoint(i)),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Kills node `i` (SIGKILL) and waits for it to exit.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes node `i` (SIGSTOP): unlike a killed node, its connections
    /// stay open and unanswered, as with a host that hangs or drops off
    /// the network, so peers notice only by timing out.
    pub fn freeze_node(&mut self, i: usize) {
        self.signal(i, "STOP");
    }

    /// Resumes a frozen node (SIGCONT).
    pub fn thaw_node(&mut self, i: usize) {
        self.signal(i, "CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let child = self.nodes[i].child.as_ref().unwrap_or_else(|| panic!("node {i} is not running"));
        let status = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} node {i}");
    }

    /// Starts a stopped node `i` again, with its data; returns once its
    /// RPC answers.
    pub fn restart_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn(i);
        self.retry(i, Instant::now() + STARTUP, &["node", "id", "-q"]);
    }

    /// Where the nodes keep their data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A frozen node still dies of SIGKILL.
            self.stop_node(i);
        }
    }
}
