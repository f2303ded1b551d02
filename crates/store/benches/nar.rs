//! NAR ingest and rendering benchmark (`cargo bench -p storefront-store --bench nar`).
//!
//! Prints a Markdown section (stdout; progress on stderr) that
//! `scripts/bench-nar` puts into docs/benchmarks.md. Every measured phase
//! runs in a fresh child process (this binary, re-executed; the harness,
//! shared with the castore benchmark, is `testkit::bench`), and the phases of one run follow each other, so that
//! the figures compared in one row of a run saw the machine in one state.
//!
//! Inputs, written under a temporary directory (default `/tmp`, override with
//! `CASTORE_BENCH_TMP`) and synced before any timing:
//! - a mixed NAR of about 1 GiB (`NAR_BENCH_MIB`): six large pseudo-random
//!   files, 80 files of 0.5–2.5 MiB, 10,000 files of 0–8 KiB in 40
//!   directories, some executables and a symlink; and the same tree unpacked
//!   by `nix-store --restore`, for castore's own filesystem ingest as a
//!   baseline;
//! - a small-file NAR: 20,000 files of 0–4 KiB in 221 directories, the same
//!   tree as the castore benchmark's small files (`bench::small_tree`).
//!
//! Measured: `openssl dgst -sha256` of the mixed NAR (the hashing limit every
//! ingest pays), the `sha2` crate on the same bytes in memory; NAR ingest
//! from the page-cached file with the contents thrown away (parsing and
//! SHA-256 alone), into castore's blob pipeline over a store that drops
//! every record (the CPU-bound rate of a whole ingest), into the memory and
//! the embedded (`redb:`) backends, next to castore's `fs::ingest` of the
//! same tree and a plain copy of the NAR file with fsync (the disk's bound);
//! rendering from the embedded backend with its chunk files in the page
//! cache (whole, from the middle to the end, as a stream of `Bytes`), the
//! same store rendered whole through castore's gRPC clients from a server in
//! the same process (loopback TCP), and `calculate`. `NAR_BENCH_RUNS`
//! (default 3) repeats each phase; medians are reported with (min–max).
use std::{
    collections::BTreeMap, fmt::Write as _, io::Write as _, path::Path, process::Command, sync::Arc, time::Instant,
};

use bytes::Bytes;
use castore::{
    B3Digest, BlobService, DirectoryService, Node,
    blob::ChunkedBlobService,
    kv::{KvStore, Table},
};
use futures::{StreamExt, stream::BoxStream};
use sha2::{Digest, Sha256};
use store::nar::{self, NarReader};
use testkit::{
    Rng,
    bench::{self, MIB, Out, Res, SMALL_DIRS, Stat, Step, WorkDir, env_usize, proc_status_kib, table_head, yes},
    hex,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const TARGET_INGEST_SHARE: f64 = 0.70;
const TARGET_RENDER_MIBS: f64 = 1024.0;
/// Directory gets, one after another, timed after a render.
const ROUND_TRIPS: usize = 200;

// ---------------------------------------------------------------- inputs

/// Writes a NAR token by token.
struct NarWriter {
    out: std::io::BufWriter<std::fs::File>,
    buf: Vec<u8>,
    files: u64,
}

impl NarWriter {
    fn new(path: &Path) -> Self {
        let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
        let mut w = Self { out, buf: vec![0; 4 << 20], files: 0 };
        w.s(b"nix-archive-1");
        w
    }
    fn s(&mut self, b: &[u8]) {
        self.out.write_all(&(b.len() as u64).to_le_bytes()).unwrap();
        self.out.write_all(b).unwrap();
        self.out.write_all(&[0; 8][..(b.len().wrapping_neg() & 7)]).unwrap();
    }
    fn entry(&mut self, name: &str) {
        for t in [&b"entry"[..], b"(", b"name", name.as_bytes(), b"node"] {
            self.s(t);
        }
    }
    /// A regular file of `size` bytes, which `contents` writes.
    fn file_with(&mut self, size: u64, executable: bool, contents: impl FnOnce(&mut Self)) {
        self.files += 1;
        for t in [&b"("[..], b"type", b"regular"] {
            self.s(t);
        }
        if executable {
            self.s(b"executable");
            self.s(b"");
        }
        self.s(b"contents");
        self.out.write_all(&size.to_le_bytes()).unwrap();
        contents(self);
        self.out.write_all(&[0; 8][..(size.wrapping_neg() & 7) as usize]).unwrap();
        self.s(b")");
    }
    /// A regular file of `size` bytes from `rng`.
    fn file(&mut self, rng: &mut Rng, size: u64, executable: bool) {
        self.file_with(size, executable, |w| rng.write(&mut w.out, size, &mut w.buf).unwrap());
    }
    fn symlink(&mut self, target: &str) {
        for t in [&b"("[..], b"type", b"symlink", b"target", target.as_bytes(), b")"] {
            self.s(t);
        }
    }
    fn open_dir(&mut self) {
        for t in [&b"("[..], b"type", b"directory"] {
            self.s(t);
        }
    }
    fn close(&mut self) {
        self.s(b")");
    }
    /// The tree `bench::tree` (or `bench::small_tree`) generates, calling
    /// `walk` with this writer's side of each step.
    fn tree(&mut self, walk: impl FnOnce(&mut dyn FnMut(Step<'_>)) -> u64) {
        walk(&mut |step| match step {
            Step::Enter(name) => {
                self.entry(name);
                self.open_dir();
            }
            Step::File { name, data, executable } => {
                self.entry(name);
                self.file_with(data.len() as u64, executable, |w| w.out.write_all(data).unwrap());
                self.close();
            }
            Step::Leave => {
                self.close();
                self.close();
            }
        });
    }
    fn finish(self) -> u64 {
        let file = self.out.into_inner().unwrap();
        file.sync_all().unwrap();
        self.files
    }
}

/// The mixed NAR; returns its file count.
fn write_mixed(path: &Path, mib: u64) -> u64 {
    let mut w = NarWriter::new(path);
    let mut rng = Rng::new(1);
    let large = (mib.saturating_sub(160) << 20) / 6;
    w.open_dir();
    w.entry("bin");
    w.open_dir();
    for i in 0..4 {
        w.entry(&format!("tool-{i}"));
        let size = 64 * 1024 + rng.below(512 * 1024);
        w.file(&mut rng, size, true);
        w.close();
    }
    w.close();
    w.close();
    for i in 0..6 {
        w.entry(&format!("large-{i}"));
        w.file(&mut rng, large, i == 0);
        w.close();
    }
    w.entry("link");
    w.symlink("large-0");
    w.close();
    w.entry("medium");
    w.open_dir();
    for i in 0..80 {
        w.entry(&format!("m{i:03}"));
        let size = (512 << 10) + rng.below(2 << 20);
        w.file(&mut rng, size, false);
        w.close();
    }
    w.close();
    w.close();
    w.entry("small");
    w.open_dir();
    w.tree(|visit| bench::tree(&mut rng, &[("d", 40)], 250, 8192, visit));
    w.close();
    w.close();
    w.close();
    w.finish()
}

/// The small-file NAR: the small-file workload (`bench::small_tree`).
fn write_small(path: &Path) -> u64 {
    let mut w = NarWriter::new(path);
    w.open_dir();
    w.tree(|visit| bench::small_tree(visit));
    w.close();
    w.finish()
}

// ---------------------------------------------------------------- child side

/// Takes blobs without storing or hashing them: NAR ingest with this is the
/// parser and SHA-256 alone (every file gets the same made-up digest).
struct DiscardBlobs;

#[async_trait::async_trait]
impl BlobService for DiscardBlobs {
    async fn stat(&self, _: &B3Digest) -> castore::Result<Option<Vec<castore::ChunkMeta>>> {
        Ok(None)
    }
    async fn open_read(&self, _: &B3Digest) -> castore::Result<Option<castore::BlobReader>> {
        Ok(None)
    }
    async fn put(
        &self,
        r: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
        _: Option<&B3Digest>,
    ) -> castore::Result<B3Digest> {
        let mut buf = vec![0u8; 1 << 20];
        while r.read(&mut buf).await? > 0 {}
        Ok(B3Digest::from([0; 32]))
    }
    async fn put_bytes(&self, _: Bytes, _: Option<&B3Digest>) -> castore::Result<B3Digest> {
        Ok(B3Digest::from([0; 32]))
    }
    async fn put_stream(
        &self,
        mut pieces: BoxStream<'_, std::io::Result<Bytes>>,
        _: Option<&B3Digest>,
    ) -> castore::Result<B3Digest> {
        while pieces.next().await.transpose()?.is_some() {}
        Ok(B3Digest::from([0; 32]))
    }
}

/// A record store that drops what it is given: castore's blob pipeline over
/// it does all the chunking and hashing of an ingest, and keeps nothing.
struct DropKv;

#[async_trait::async_trait]
impl KvStore for DropKv {
    async fn get(&self, _: Table, _: &[u8]) -> castore::Result<Option<Bytes>> {
        Ok(None)
    }
    async fn contains(&self, _: Table, _: &[u8]) -> castore::Result<bool> {
        Ok(false)
    }
    async fn put(&self, _: Table, _: Vec<(Bytes, Bytes)>) -> castore::Result<()> {
        Ok(())
    }
    fn scan(&self, _: Table) -> BoxStream<'static, castore::Result<(Bytes, Bytes)>> {
        futures::stream::empty().boxed()
    }
    fn scan_prefix(&self, _: Table, _: Bytes) -> BoxStream<'static, castore::Result<(Bytes, Bytes)>> {
        futures::stream::empty().boxed()
    }
    /// Every record is absent: a swap from absent succeeds (and its new
    /// value is dropped), any other is answered with "absent".
    async fn compare_and_swap(
        &self,
        _: Table,
        _: Bytes,
        current: Option<Bytes>,
        _: Option<Bytes>,
    ) -> castore::Result<Result<(), Option<Bytes>>> {
        Ok(if current.is_none() { Ok(()) } else { Err(None) })
    }
}

fn stores(backend: &str, store: &str) -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
    let memory_dirs = || castore::directory_service_from_url("memory:").unwrap();
    let addr = match backend {
        "discard" => return (Arc::new(DiscardBlobs), memory_dirs()),
        "drop" => return (Arc::new(ChunkedBlobService::new(Arc::new(DropKv))), memory_dirs()),
        "memory" => "memory:".to_owned(),
        "embedded" => format!("redb:{store}"),
        other => panic!("unknown backend {other}"),
    };
    (castore::blob_service_from_url(&addr).unwrap(), castore::directory_service_from_url(&addr).unwrap())
}

/// The embedded store at `store` as rendering sees it: `local` opens it in
/// this process; `grpc` serves it from this process on 127.0.0.1 (TCP,
/// TCP_NODELAY on accepted sockets, as `storefront serve` sets) and returns
/// gRPC clients of that server, so every blob and directory fetch crosses
/// the loopback network stack.
async fn render_stores(via: &str, store: &str) -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
    let (blobs, dirs) = stores("embedded", store);
    if via == "local" {
        return (blobs, dirs);
    }
    assert_eq!(via, "grpc", "unknown way to reach the store");
    let incoming =
        tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).unwrap().with_nodelay(Some(true));
    let port = incoming.local_addr().unwrap().port();
    let server = tonic::transport::Server::builder()
        .add_service(castore::grpc::blob_service_server(blobs))
        .add_service(castore::grpc::directory_service_server(dirs))
        .serve_with_incoming(incoming);
    tokio::spawn(async move { server.await.unwrap() });
    let addr = format!("grpc+http://127.0.0.1:{port}");
    (castore::blob_service_from_url(&addr).unwrap(), castore::directory_service_from_url(&addr).unwrap())
}

/// CPU time (user + system, all threads) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn dir_node(digest: &str, size: &str) -> Node {
    Node::Directory { digest: digest.parse::<B3Digest>().unwrap(), size: size.parse().unwrap() }
}

async fn child(args: Vec<String>) {
    let a = |i: usize| args[i].as_str();
    let mut out = Out::new();
    let root = |out: &mut Out, node: Node| {
        let Node::Directory { digest, size } = node else { panic!("a directory") };
        out.set("digest", digest.to_hex());
        out.set("size", size);
    };
    match a(0) {
        // ingest BACKEND STORE NAR: NAR ingest from the page-cached file.
        "ingest" => {
            let (blobs, dirs) = stores(a(1), a(2));
            let mut file = tokio::fs::File::open(a(3)).await.unwrap();
            file.set_max_buf_size(4 << 20);
            let t = Instant::now();
            let got = nar::ingest(&mut file, blobs.as_ref(), dirs.as_ref()).await.unwrap();
            out.set("s", t.elapsed().as_secs_f64());
            out.set("hwm_kib", proc_status_kib("VmHWM"));
            out.set("nar_size", got.nar_size);
            out.set("sha256", hex(&got.nar_sha256));
            root(&mut out, got.node);
        }
        // fsingest BACKEND STORE TREE: castore's filesystem ingest, the baseline.
        "fsingest" => {
            let (blobs, dirs) = stores(a(1), a(2));
            let t = Instant::now();
            let node = castore::fs::ingest(blobs.as_ref(), dirs.as_ref(), Path::new(a(3))).await.unwrap();
            out.set("s", t.elapsed().as_secs_f64());
            root(&mut out, node);
        }
        // render VIA STORE DIGEST SIZE FROM: read from FROM to the end
        // (AsyncRead), VIA `local` or `grpc` (`render_stores`).
        "render" => {
            let (blobs, dirs) = render_stores(a(1), a(2)).await;
            let node = dir_node(a(3), a(4));
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let mut reader = NarReader::open(&node, blobs, dirs.clone()).await.unwrap();
            out.set("open_s", t.elapsed().as_secs_f64());
            let from: u64 = a(5).parse().unwrap();
            if from > 0 {
                reader.seek(std::io::SeekFrom::Start(from)).await.unwrap();
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = reader.read(&mut buf).await.unwrap();
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            assert_eq!(n, reader.len() - from);
            out.set("s", t.elapsed().as_secs_f64());
            out.set("cpu_s", cpu_seconds() - cpu);
            out.set("bytes", n);
            out.set("hwm_kib", proc_status_kib("VmHWM"));
            // One request at a time: what each file would cost if rendering
            // waited for one fetch before asking for the next.
            let Node::Directory { digest, .. } = node else { unreachable!() };
            let t = Instant::now();
            for _ in 0..ROUND_TRIPS {
                dirs.get(&digest).await.unwrap().unwrap();
            }
            out.set("rtt_s", t.elapsed().as_secs_f64() / ROUND_TRIPS as f64);
        }
        // stream STORE DIGEST SIZE: the whole NAR as a stream of Bytes.
        "stream" => {
            let (blobs, dirs) = stores("embedded", a(1));
            let node = dir_node(a(2), a(3));
            let t = Instant::now();
            let mut reader = NarReader::open(&node, blobs, dirs).await.unwrap();
            let mut n = 0u64;
            while let Some(piece) = reader.next().await {
                n += piece.unwrap().len() as u64;
            }
            assert_eq!(n, reader.len());
            out.set("s", t.elapsed().as_secs_f64());
        }
        // calculate STORE DIGEST SIZE
        "calculate" => {
            let (blobs, dirs) = stores("embedded", a(1));
            let node = dir_node(a(2), a(3));
            let t = Instant::now();
            let (size, hash) = nar::calculate(&node, blobs, dirs).await.unwrap();
            out.set("s", t.elapsed().as_secs_f64());
            out.set("nar_size", size);
            out.set("sha256", hex(&hash));
        }
        // write-mixed PATH [MIB]: writes the mixed NAR (for experiments by hand).
        "write-mixed" => {
            let mib = args.get(2).map_or(1024, |m| m.parse().unwrap());
            out.set("files", write_mixed(Path::new(a(1)), mib));
        }
        // sha2 NAR: the sha2 crate over the file's bytes, already in memory.
        "sha2" => {
            let data = std::fs::read(a(1)).unwrap();
            let t = Instant::now();
            let hash = Sha256::digest(&data);
            out.set("s", t.elapsed().as_secs_f64());
            out.set("sha256", hex(&hash));
        }
        // disk SOURCE TARGET: copy with 4 MiB writes, then fsync.
        "disk" => out.set("s", bench::copy_fsync(Path::new(a(1)), Path::new(a(2)))),
        other => panic!("unknown phase {other}"),
    }
    out.print();
}

// ---------------------------------------------------------------- parent side

/// Wall time of `openssl dgst -sha256 FILE`, checking its answer.
fn openssl(path: &Path, want: &str) -> f64 {
    let t = Instant::now();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(path)
        .output()
        .expect("openssl must be installed for this benchmark");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(line.split_whitespace().next(), Some(want), "openssl and ingest disagree on the NarHash");
    secs
}

fn parent() {
    let runs = env_usize("NAR_BENCH_RUNS", 3).max(1);
    let mib = env_usize("NAR_BENCH_MIB", 1024) as u64;
    let work = WorkDir::new("nar");
    let w = work.path();
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    eprintln!("nar bench: work dir {}, {runs} run(s) per phase", w.display());

    let mixed = w.join("mixed.nar");
    let mixed_files = write_mixed(&mixed, mib);
    let small = w.join("small.nar");
    let small_files = write_small(&small);
    let mixed_bytes = std::fs::metadata(&mixed).unwrap().len() as f64;
    let small_bytes = std::fs::metadata(&small).unwrap().len() as f64;
    // The same tree on disk, for castore's own ingest.
    let tree = w.join("tree");
    let restored = Command::new("nix-store")
        .arg("--restore")
        .arg(&tree)
        .stdin(std::fs::File::open(&mixed).unwrap())
        .status()
        .is_ok_and(|s| s.success());
    if !restored {
        eprintln!("nar bench: nix-store --restore is not available; the fs::ingest baseline is left out");
    }
    let _ = Command::new("sync").status();
    eprintln!("inputs written in {:.1}s", started.elapsed().as_secs_f64());
    let store = |name: &str| w.join(name).join("castore.redb").to_str().unwrap().to_owned();
    let path = |name: &str| w.join(name).to_str().unwrap().to_owned();
    let rate = |bytes: f64, r: &Res| bytes / MIB / r.f64("s");

    // Ingest, one run of every kind after another.
    let (m, t) = (mixed.to_str().unwrap(), tree.to_str().unwrap());
    let mut series: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut add = |k: &'static str, v: f64| series.entry(k).or_default().push(v);
    let mut sha256 = String::new();
    let mut root = (String::new(), String::new());
    let mut stored = Vec::new();
    for i in 0..runs {
        for backend in ["discard", "drop", "memory"] {
            let r = bench::run_child(&["ingest", backend, "", m]);
            assert_eq!(r.f64("nar_size"), mixed_bytes);
            if sha256.is_empty() {
                sha256 = r["sha256"].clone();
            }
            assert_eq!(r["sha256"], sha256);
            add(backend, rate(mixed_bytes, &r));
            if backend == "memory" {
                add("memory_hwm", r.f64("hwm_kib") / 1024.0);
                root = (r["digest"].clone(), r["size"].clone());
            }
        }
        if restored {
            let r = bench::run_child(&["fsingest", "memory", "", t]);
            assert_eq!((&r["digest"], &r["size"]), (&root.0, &root.1), "fs::ingest gives the same root");
            add("fs_memory", rate(mixed_bytes, &r));
        }
        let r = bench::run_child(&["disk", m, &path(&format!("copy-{i}.nar"))]);
        add("disk", rate(mixed_bytes, &r));
        let s = store(&format!("mixed-{i}"));
        let r = bench::run_child(&["ingest", "embedded", &s, m]);
        assert_eq!((&r["sha256"], &r["digest"]), (&sha256, &root.0));
        add("embedded", rate(mixed_bytes, &r));
        add("embedded_hwm", r.f64("hwm_kib") / 1024.0);
        stored.push(s);
        if restored {
            let r = bench::run_child(&["fsingest", "embedded", &store(&format!("fs-{i}")), t]);
            add("fs_embedded", rate(mixed_bytes, &r));
        }
        let r = bench::run_child(&["sha2", m]);
        assert_eq!(r["sha256"], sha256);
        add("sha2", rate(mixed_bytes, &r));
        add("openssl", mixed_bytes / MIB / openssl(&mixed, &sha256));
    }
    eprintln!("mixed ingest done at {:.1}s", started.elapsed().as_secs_f64());

    // Rendering from the embedded store, chunk files in the page cache.
    let (digest, size) = (root.0.as_str(), root.1.as_str());
    let half = (mixed_bytes as u64 / 2).to_string();
    for s in &stored {
        let r = bench::run_child(&["render", "local", s, digest, size, "0"]);
        add("render", rate(mixed_bytes, &r));
        add("render_hwm", r.f64("hwm_kib") / 1024.0);
        add("open_ms", r.f64("open_s") * 1000.0);
        let r = bench::run_child(&["render", "grpc", s, digest, size, "0"]);
        add("render_grpc", rate(mixed_bytes, &r));
        add("render_grpc_cores", r.f64("cpu_s") / r.f64("s"));
        add("open_grpc_ms", r.f64("open_s") * 1000.0);
        let r = bench::run_child(&["render", "local", s, digest, size, &half]);
        add("middle", r.f64("bytes") / MIB / r.f64("s"));
        let r = bench::run_child(&["stream", s, digest, size]);
        add("stream", rate(mixed_bytes, &r));
        let r = bench::run_child(&["calculate", s, digest, size]);
        assert_eq!(r["sha256"], sha256);
        add("calculate", rate(mixed_bytes, &r));
    }
    eprintln!("rendering done at {:.1}s", started.elapsed().as_secs_f64());

    // Small files.
    let sm = small.to_str().unwrap();
    for i in 0..runs {
        let r = bench::run_child(&["ingest", "memory", "", sm]);
        add("small_memory", small_files as f64 / r.f64("s"));
        let s = store(&format!("small-{i}"));
        let r = bench::run_child(&["ingest", "embedded", &s, sm]);
        add("small_embedded", small_files as f64 / r.f64("s"));
        let (digest, size) = (r["digest"].clone(), r["size"].clone());
        let r = bench::run_child(&["render", "local", &s, &digest, &size, "0"]);
        add("small_render", small_files as f64 / r.f64("s"));
        let r = bench::run_child(&["render", "grpc", &s, &digest, &size, "0"]);
        add("small_render_grpc", small_files as f64 / r.f64("s"));
        add("small_render_grpc_cores", r.f64("cpu_s") / r.f64("s"));
        add("rtt_us", r.f64("rtt_s") * 1e6);
    }
    eprintln!("small files done at {:.1}s", started.elapsed().as_secs_f64());

    let stat = |k: &str| series.get(k).map(|v| Stat::of(v.clone()));
    let get = |k: &str| stat(k).map_or_else(|| "–".to_owned(), |s| s.show(0));
    let med = |k: &str| stat(k).map_or(f64::NAN, |s| s.med);
    let hash_limit = med("openssl");
    let share = |k: &str| {
        if series.contains_key(k) { format!("{:.0} %", 100.0 * med(k) / hash_limit) } else { "–".into() }
    };
    let large = ((mib.saturating_sub(160) << 20) / 6) as f64 / MIB;

    let mut o = String::new();
    let mut line = |s: String| writeln!(o, "{s}").unwrap();
    line(format!(
        "The mixed NAR: {:.0} MiB, {mixed_files} files (six of {large:.0} MiB, 80 of 0.5–2.5 MiB, 10,000 of \
         0–8 KiB in 40 directories, a few executables and a symlink), read from a page-cached file through \
         `tokio::fs::File`. {runs} runs; each figure is the median, with (min–max); every phase ran in a fresh \
         process. Load average before the run: {load}. Embedded ingest includes the durable commit.\n",
        mixed_bytes / MIB
    ));
    line(table_head(&["Measurement", "MiB/s", "Share of `openssl dgst -sha256`"]));
    let rows: [(&str, &str); 14] = [
        ("openssl", "`openssl dgst -sha256` of the NAR file: the hashing limit"),
        ("sha2", "`sha2` crate (what ingest uses), same bytes already in memory"),
        ("discard", "NAR ingest, parsing and SHA-256 only (contents thrown away)"),
        ("drop", "NAR ingest into castore's blob pipeline over a store that drops every record (the CPU-bound rate)"),
        ("memory", "NAR ingest into memory (`memory:`)"),
        ("fs_memory", "castore `fs::ingest` of the same tree into memory (no SHA-256), for comparison"),
        ("embedded", "NAR ingest into embedded (`redb:`), durable"),
        ("fs_embedded", "castore `fs::ingest` of the same tree into embedded, for comparison"),
        ("disk", "Plain copy of the NAR file (4 MiB writes) + fsync, same filesystem: the disk's bound"),
        ("render", "Render from embedded, warm: whole NAR, `AsyncRead` with 1 MiB reads"),
        (
            "render_grpc",
            "Render from embedded through gRPC over loopback TCP, warm: whole NAR, `AsyncRead` with 1 MiB reads",
        ),
        ("middle", "Render from embedded, warm: seek to the middle, read to the end"),
        ("stream", "Render from embedded, warm: whole NAR as a stream of `Bytes`"),
        ("calculate", "`calculate` (NarSize + NarHash) from embedded, warm"),
    ];
    for (k, what) in rows {
        let share = if ["render", "render_grpc", "middle", "stream"].contains(&k) { "–".into() } else { share(k) };
        line(format!("| {what} | {} | {share} |", get(k)));
    }
    line(format!(
        "\nOpening a reader (directory closure and layout of {mixed_files} files) took {:.1} ms ({:.1} ms through \
         gRPC). Peak RSS: NAR ingest into memory {:.0} MiB (the store holds the contents), into embedded {:.0} MiB; \
         render {:.0} MiB.\n",
        med("open_ms"),
        med("open_grpc_ms"),
        med("memory_hwm"),
        med("embedded_hwm"),
        med("render_hwm")
    ));
    line(format!(
        "The small-file NAR: {small_files} files of 0–4 KiB in {SMALL_DIRS} directories ({:.1} MiB).\n",
        small_bytes / MIB
    ));
    line(table_head(&["Measurement", "files/s"]));
    line(format!("| NAR ingest into memory | {} |", get("small_memory")));
    line(format!("| NAR ingest into embedded (`redb:`), durable | {} |", get("small_embedded")));
    line(format!("| Render from embedded, warm | {} |", get("small_render")));
    line(format!("| Render from embedded through gRPC over loopback TCP, warm | {} |", get("small_render_grpc")));
    let cores = |k: &str| stat(k).map_or_else(|| "–".to_owned(), |s| s.show(2));
    line(format!(
        "\nThrough gRPC, client and server share this machine's {} cores: the render processes used {} (mixed) \
         and {} (small files) cores' worth of CPU time over their wall time. One request at a time (a directory \
         `Get`, {ROUND_TRIPS} in a row) takes {} µs, so fetching one file after another would render at most \
         {:.0} files/s.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cores("render_grpc_cores"),
        cores("small_render_grpc_cores"),
        stat("rtt_us").map_or_else(|| "–".to_owned(), |s| s.show(0)),
        1e6 / med("rtt_us"),
    ));

    let target = TARGET_INGEST_SHARE * hash_limit;
    line("\n### NAR targets\n".into());
    line(table_head(&["Target", "Measured (median)", "Met"]));
    for (k, what) in
        [("embedded", "into embedded (`redb:`)"), ("memory", "into memory"), ("drop", "CPU-bound (records dropped)")]
    {
        line(format!(
            "| NAR ingest {what} ≥ 70 % of `openssl dgst -sha256` ({target:.0} MiB/s) | {:.0} MiB/s ({}) | {} |",
            med(k),
            share(k),
            yes(med(k) >= target)
        ));
    }
    line(format!(
        "| Render from embedded, warm, ≥ 1 GiB/s | {:.0} MiB/s | {} |",
        med("render"),
        yes(med("render") >= TARGET_RENDER_MIBS)
    ));
    line(format!("\nBench wall time: {:.0} s.", started.elapsed().as_secs_f64()));
    print!("{o}");
    work.finish();
}

fn main() {
    bench::main(child, parent);
}
