//! castore throughput and memory benchmark (`cargo bench -p storefront-castore`).
//!
//! Prints Markdown tables. Every measured phase runs in a fresh child process
//! (this binary, re-executed), so its peak RSS (VmHWM) belongs to that phase
//! alone and no page of one phase's store is shared with the next; the
//! harness, shared with the NAR benchmark, is `testkit::bench`.
//!
//! Workloads, generated under a temporary directory (default `/tmp`, override
//! with `CASTORE_BENCH_TMP`) and synced to disk before any timing, so input
//! files are read from a clean page cache and their writeback does not compete
//! with the store's:
//! - one pseudo-random 1 GiB file (`CASTORE_BENCH_LARGE_MIB` to change);
//! - 20,000 pseudo-random files of 0–4 KiB in 200 directories
//!   (`bench::small_tree`, also the NAR benchmark's small-file NAR);
//! - a 256 MiB pseudo-random file and a copy with 16 small edits spread
//!   through it, ingested with average chunk sizes from 64 KiB to 1 MiB.
//!
//! `CASTORE_BENCH_RUNS` (default 5) repeats each throughput phase; the median
//! is reported with the range. Stores and exports are kept until the end and
//! deleted with the work directory (see `scripts/bench` on why). The tables
//! go to stdout, progress to stderr; `scripts/bench` writes them, with the
//! machine's description, to docs/benchmarks.md.
use std::{collections::HashSet, fmt::Write as _, path::Path, sync::Arc, time::Instant};

use castore::{
    B3Digest, BlobService, Node,
    blob::{ChunkedBlobService, Chunker},
    dirsvc::KvDirectoryService,
    kv::{EmbeddedStore, KvStore, MemoryStore},
};
use testkit::{
    Rng,
    bench::{
        self, MIB, Out, Res, SMALL_DIRS, SMALL_FILES, Stat, Step, WorkDir, env_usize, proc_status_kib, table_head, yes,
    },
};
use tokio::io::AsyncReadExt;

const DEDUP_MIB: usize = 256;
const DEDUP_EDITS: usize = 16;
/// (min, avg, max) chunk sizes compared; the default is measured among them.
/// Each is min = avg/4, max = 4·avg (FastCDC's usual spread, as in Chunker::default).
const CHUNK_CONFIGS: [(usize, usize, usize); 5] = [
    (16 << 10, 64 << 10, 256 << 10),
    (32 << 10, 128 << 10, 512 << 10),
    (64 << 10, 256 << 10, 1 << 20),
    (128 << 10, 512 << 10, 2 << 20),
    (256 << 10, 1 << 20, 4 << 20),
];

const TARGET_MEM_MIBS: f64 = 1024.0;
const TARGET_EMB_MIBS: f64 = 500.0;
const TARGET_FILES: f64 = 20_000.0;

// ---------------------------------------------------------------- data

fn write_random(path: &Path, size: u64, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    Rng::new(seed).write(&mut f, size, &mut vec![0u8; 4 << 20]).unwrap();
    f.sync_all().unwrap();
}

/// The small-file workload (`bench::small_tree`) as files under `root`.
fn write_small_tree(root: &Path) -> u64 {
    use std::os::unix::fs::PermissionsExt;
    let mut dir = root.to_owned();
    bench::small_tree(|step| match step {
        Step::Enter(name) => {
            dir.push(name);
            std::fs::create_dir_all(&dir).unwrap();
        }
        Step::File { name, data, executable } => {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            if executable {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        Step::Leave => {
            dir.pop();
        }
    })
}

/// Copies `base` to `edited` with DEDUP_EDITS small edits spread through it
/// (cycling: insert 64 bytes, overwrite 64 bytes, delete 64 bytes).
fn write_edited(base: &Path, edited: &Path) -> String {
    let data = std::fs::read(base).unwrap();
    let mut rng = Rng::new(7);
    let stride = data.len() / DEDUP_EDITS;
    let mut out = Vec::with_capacity(data.len() + 4096);
    let mut pos = 0;
    let mut junk = [0u8; 64];
    for e in 0..DEDUP_EDITS {
        let at = e * stride + rng.below(stride as u64 - 64) as usize;
        out.extend_from_slice(&data[pos..at]);
        rng.fill(&mut junk);
        pos = match e % 3 {
            0 => {
                out.extend_from_slice(&junk);
                at
            }
            1 => {
                out.extend_from_slice(&junk);
                at + 64
            }
            _ => at + 64,
        };
    }
    out.extend_from_slice(&data[pos..]);
    std::fs::write(edited, &out).unwrap();
    std::fs::File::open(edited).unwrap().sync_all().unwrap();
    format!("{DEDUP_EDITS} edits of 64 bytes (insert / overwrite / delete), one per 1/{DEDUP_EDITS} of the file")
}

// ---------------------------------------------------------------- child side

/// User + system CPU time of this process so far (all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn open_kv(backend: &str, store: &str) -> Arc<dyn KvStore> {
    match backend {
        "memory" => Arc::new(MemoryStore::new()),
        "embedded" => Arc::new(EmbeddedStore::open(Path::new(store)).unwrap()),
        other => panic!("unknown backend {other}"),
    }
}

fn node_fields(node: &Node) -> (B3Digest, u64) {
    match node {
        Node::File { digest, size, .. } | Node::Directory { digest, size } => (*digest, *size),
        Node::Symlink { .. } => panic!("symlink root"),
    }
}

async fn read_all(blobs: &dyn BlobService, digest: &B3Digest) -> u64 {
    let mut r = blobs.open_read(digest).await.unwrap().expect("blob present");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break n;
        }
        n += k as u64;
    }
}

/// Drops the page cache of every (clean) chunk file, so reads go to the disk.
fn evict(dir: &Path) {
    use std::os::fd::AsRawFd;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            evict(&p);
        } else if let Ok(f) = std::fs::File::open(&p) {
            // SAFETY: plain syscall on an fd we own.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

async fn child(args: Vec<String>) {
    let a = |i: usize| args[i].as_str();
    let mut out = Out::new();
    out.set("rss0_kib", proc_status_kib("VmRSS"));
    match a(0) {
        // ingest BACKEND STORE PATH [EXPORT_TARGET]: fs::ingest, then (memory
        // only, same process) read back or export.
        "ingest" => {
            let kv = open_kv(a(1), a(2));
            let blobs = ChunkedBlobService::new(kv.clone());
            let dirs = KvDirectoryService::new(kv.clone());
            let t = Instant::now();
            let node = castore::fs::ingest(&blobs, &dirs, Path::new(a(3))).await.unwrap();
            out.set("ingest_s", t.elapsed().as_secs_f64());
            out.set("hwm_kib", proc_status_kib("VmHWM"));
            let (digest, size) = node_fields(&node);
            out.set("digest", digest.to_hex());
            out.set("size", size);
            if a(1) == "memory" {
                match &node {
                    Node::File { .. } => {
                        let t = Instant::now();
                        assert_eq!(read_all(&blobs, &digest).await, size);
                        out.set("read_s", t.elapsed().as_secs_f64());
                    }
                    _ => {
                        let t = Instant::now();
                        castore::fs::export(&blobs, &dirs, &node, Path::new(a(4))).await.unwrap();
                        out.set("export_s", t.elapsed().as_secs_f64());
                    }
                }
            }
        }
        // read STORE DIGEST SIZE cold|hot
        "read" => {
            let kv = open_kv("embedded", a(1));
            if a(4) == "cold" {
                evict(Path::new(&format!("{}.chunks", a(1))));
            }
            let blobs = ChunkedBlobService::new(kv);
            let digest: B3Digest = a(2).parse().unwrap();
            let t = Instant::now();
            assert_eq!(read_all(&blobs, &digest).await, a(3).parse::<u64>().unwrap());
            out.set("read_s", t.elapsed().as_secs_f64());
            out.set("hwm_kib", proc_status_kib("VmHWM"));
        }
        // export STORE DIGEST SIZE TARGET
        "export" => {
            let kv = open_kv("embedded", a(1));
            let blobs = ChunkedBlobService::new(kv.clone());
            let dirs = KvDirectoryService::new(kv);
            let node = Node::Directory { digest: a(2).parse().unwrap(), size: a(3).parse().unwrap() };
            let t = Instant::now();
            castore::fs::export(&blobs, &dirs, &node, Path::new(a(4))).await.unwrap();
            out.set("export_s", t.elapsed().as_secs_f64());
        }
        // dedup BACKEND STORE MIN AVG MAX BASE EDITED
        "dedup" => {
            let kv = open_kv(a(1), a(2));
            let chunker = Chunker::new(a(3).parse().unwrap(), a(4).parse().unwrap(), a(5).parse().unwrap());
            let blobs = ChunkedBlobService::with_chunker(kv.clone(), chunker);
            let dirs = KvDirectoryService::new(kv);
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let base = castore::fs::ingest(&blobs, &dirs, Path::new(a(6))).await.unwrap();
            out.set("base_s", t.elapsed().as_secs_f64());
            out.set("base_cpu_s", cpu_seconds() - cpu);
            let t = Instant::now();
            let edited = castore::fs::ingest(&blobs, &dirs, Path::new(a(7))).await.unwrap();
            out.set("edited_s", t.elapsed().as_secs_f64());
            let (bd, _) = node_fields(&base);
            let (ed, esize) = node_fields(&edited);
            let base_chunks = blobs.stat(&bd).await.unwrap().unwrap();
            let edited_chunks = blobs.stat(&ed).await.unwrap().unwrap();
            let known: HashSet<B3Digest> = base_chunks.iter().map(|c| c.digest).collect();
            let mut seen = HashSet::new();
            let new_bytes: u64 = edited_chunks
                .iter()
                .filter(|c| !known.contains(&c.digest) && seen.insert(c.digest))
                .map(|c| c.size)
                .sum();
            out.set("chunks", base_chunks.len());
            out.set("new_bytes", new_bytes);
            out.set("edited_size", esize);
        }
        // disk SOURCE TARGET: the filesystem's own durable write speed for
        // this data: copy with 4 MiB writes, then fsync.
        "disk" => out.set("disk_s", bench::copy_fsync(Path::new(a(1)), Path::new(a(2)))),
        other => panic!("unknown phase {other}"),
    }
    out.print();
}

// ---------------------------------------------------------------- parent side

fn fs_type(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path, zeroed out-struct.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return "unknown".into();
    }
    match s.f_type as u64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs (memory-backed!)".into(),
        0x9123_683E => "btrfs".into(),
        0x5846_5342 => "xfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        other => format!("statfs type {other:#x}"),
    }
}

fn parent() {
    let runs = env_usize("CASTORE_BENCH_RUNS", 5).max(1);
    let large_mib = env_usize("CASTORE_BENCH_LARGE_MIB", 1024) as u64;
    let work = WorkDir::new("castore");
    let w = work.path();
    let fstype = fs_type(w);
    let started = Instant::now();
    eprintln!("castore bench: work dir {} ({fstype}), {runs} run(s) per phase", w.display());

    // Inputs.
    let large = w.join("large.bin");
    let large_bytes = large_mib << 20;
    write_random(&large, large_bytes, 1);
    let tree = w.join("tree");
    let tree_bytes = write_small_tree(&tree);
    let base = w.join("dedup-base.bin");
    write_random(&base, (DEDUP_MIB as u64) << 20, 2);
    let edited = w.join("dedup-edited.bin");
    let edits = write_edited(&base, &edited);
    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    eprintln!("inputs written in {:.1}s", started.elapsed().as_secs_f64());

    let l = large.to_str().unwrap();
    // Nothing is deleted before the end: on a journal-less ext4, creating
    // files soon after deleting many is slowed by inode allocation skipping
    // recently freed inodes, which would charge one phase for another's cleanup.
    let store = |name: &str| w.join(name).join("store.redb").to_str().unwrap().to_owned();
    let path = |name: &str| w.join(name).to_str().unwrap().to_owned();

    // (a, c, d) Large file. The runs of one measurement are back to back,
    // so that one kind of phase does not set up the next (a cold read, for
    // one, frees a GiB of page cache, which this VM hands back to its host).
    let (mut mem_in, mut mem_read, mut mem_hwm) = (vec![], vec![], vec![]);
    let (mut emb_in, mut emb_hot, mut emb_cold, mut emb_hwm, mut disk) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let r = bench::run_child(&["ingest", "memory", "", l]);
        mem_in.push(large_bytes as f64 / MIB / r.f64("ingest_s"));
        mem_read.push(large_bytes as f64 / MIB / r.f64("read_s"));
        mem_hwm.push(r.f64("hwm_kib") / 1024.0);
    }
    let mut stored = Vec::new();
    for i in 0..runs {
        // The plain copy right before each embedded run: the same disk, as
        // nearly as possible in the same state.
        let r = bench::run_child(&["disk", l, &path(&format!("disk-{i}.bin"))]);
        disk.push(large_bytes as f64 / MIB / r.f64("disk_s"));
        let s = store(&format!("large-{i}"));
        let r = bench::run_child(&["ingest", "embedded", &s, l]);
        emb_in.push(large_bytes as f64 / MIB / r.f64("ingest_s"));
        emb_hwm.push(r.f64("hwm_kib") / 1024.0);
        stored.push((s, r["digest"].clone(), r["size"].clone()));
    }
    for (s, digest, size) in &stored {
        let r = bench::run_child(&["read", s, digest, size, "hot"]);
        emb_hot.push(large_bytes as f64 / MIB / r.f64("read_s"));
    }
    for (s, digest, size) in &stored {
        let r = bench::run_child(&["read", s, digest, size, "cold"]);
        emb_cold.push(large_bytes as f64 / MIB / r.f64("read_s"));
    }
    eprintln!("large file done at {:.1}s", started.elapsed().as_secs_f64());

    // (b, c) Small files.
    let t = tree.to_str().unwrap();
    let n = SMALL_FILES as f64;
    let (mut mem_small, mut mem_export, mut emb_small, mut emb_export) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let r = bench::run_child(&["ingest", "memory", "", t, &path(&format!("export-memory-{i}"))]);
        mem_small.push(n / r.f64("ingest_s"));
        mem_export.push(n / r.f64("export_s"));
    }
    for i in 0..runs {
        let s = store(&format!("small-{i}"));
        let r = bench::run_child(&["ingest", "embedded", &s, t]);
        emb_small.push(n / r.f64("ingest_s"));
        let r = bench::run_child(&["export", &s, &r["digest"], &r["size"], &path(&format!("export-embedded-{i}"))]);
        emb_export.push(n / r.f64("export_s"));
    }
    eprintln!("small files done at {:.1}s", started.elapsed().as_secs_f64());

    // (d) Memory bound: embedded peak RSS for a 4× smaller blob.
    let r = bench::run_child(&["ingest", "embedded", &store("bound"), base.to_str().unwrap()]);
    let emb_hwm_small = r.f64("hwm_kib") / 1024.0;

    // (e) Chunk sizes.
    let mut chunk_rows = String::new();
    let dedup_bytes = (DEDUP_MIB << 20) as f64;
    let chunk_runs = env_usize("CASTORE_BENCH_CHUNK_RUNS", runs).max(1);
    // Per row: average, embedded ingest and CPU medians, share of new bytes.
    let mut rows: Vec<(usize, f64, f64, f64)> = Vec::new();
    for (min, avg, max) in CHUNK_CONFIGS {
        let (mn, av, mx) = (min.to_string(), avg.to_string(), max.to_string());
        let (b, ed) = (base.to_str().unwrap(), edited.to_str().unwrap());
        let (mut mem, mut emb, mut emb_edit, mut emb_cpu) = (vec![], vec![], vec![], vec![]);
        let mut last = Res::default();
        // Back to back per backend: these rows are compared with each other.
        for _ in 0..chunk_runs {
            let r = bench::run_child(&["dedup", "memory", "", &mn, &av, &mx, b, ed]);
            mem.push(dedup_bytes / MIB / r.f64("base_s"));
        }
        for i in 0..chunk_runs {
            let r = bench::run_child(&["dedup", "embedded", &store(&format!("dedup-{avg}-{i}")), &mn, &av, &mx, b, ed]);
            emb.push(dedup_bytes / MIB / r.f64("base_s"));
            emb_cpu.push(r.f64("base_cpu_s") * (1u64 << 30) as f64 / dedup_bytes);
            emb_edit.push(r.f64("edited_size") / MIB / r.f64("edited_s"));
            last = r;
        }
        let (emb, emb_cpu) = (Stat::of(emb), Stat::of(emb_cpu));
        let new_share = last.f64("new_bytes") / last.f64("edited_size");
        rows.push((avg, emb.med, emb_cpu.med, new_share));
        let is_default = {
            let d = Chunker::default();
            (d.min, d.avg, d.max) == (min, avg, max)
        };
        writeln!(
            chunk_rows,
            "| {} / {} / {} KiB{} | {} | {} | {} | {} | {} | {:.0} KiB | {:.2} % |",
            min >> 10,
            avg >> 10,
            max >> 10,
            if is_default { " (default)" } else { "" },
            Stat::of(mem).show(0),
            emb.show(0),
            emb_cpu.show(2),
            Stat::of(emb_edit).show(0),
            last["chunks"],
            dedup_bytes / last.f64("chunks") / 1024.0,
            100.0 * new_share,
        )
        .unwrap();
    }
    eprintln!("chunk sizes done at {:.1}s", started.elapsed().as_secs_f64());

    let (mem_in, mem_read, emb_in, emb_hot, emb_cold, disk) =
        (Stat::of(mem_in), Stat::of(mem_read), Stat::of(emb_in), Stat::of(emb_hot), Stat::of(emb_cold), Stat::of(disk));
    let (mem_small, mem_export, emb_small, emb_export) =
        (Stat::of(mem_small), Stat::of(mem_export), Stat::of(emb_small), Stat::of(emb_export));
    let (mem_hwm, emb_hwm) = (Stat::of(mem_hwm), Stat::of(emb_hwm));
    let large_label =
        if large_mib.is_multiple_of(1024) { format!("{} GiB", large_mib / 1024) } else { format!("{large_mib} MiB") };

    let mut o = String::new();
    writeln!(
        o,
        "Work directory: {fstype}. {runs} runs per measurement, back to back, each phase in a fresh \
         process; figures are medians, with (min–max) when runs differ. Inputs are synced first and \
         read from the page cache. Embedded ingest times include the durable commit (syncfs, then \
         the redb commit).\n"
    )
    .unwrap();
    writeln!(o, "{}", table_head(&["Measurement", "Memory", "Embedded"])).unwrap();
    writeln!(
        o,
        "| Large-file ingest, one {large_label} pseudo-random file (MiB/s) | {} | {} |",
        mem_in.show(0),
        emb_in.show(0)
    )
    .unwrap();
    writeln!(
        o,
        "| Same data, plain single-file copy (4 MiB writes) + fsync, same filesystem (MiB/s) | – | {} |",
        disk.show(0)
    )
    .unwrap();
    writeln!(
        o,
        "| Small-file ingest, {SMALL_FILES} files of 0–4 KiB ({:.1} MiB) in {SMALL_DIRS} directories (files/s) | {} | {} |",
        tree_bytes as f64 / MIB,
        mem_small.show(0),
        emb_small.show(0)
    )
    .unwrap();
    writeln!(
        o,
        "| Large blob sequential read, `open_read` (MiB/s) | {} | {} page cache hot; {} cold |",
        mem_read.show(0),
        emb_hot.show(0),
        emb_cold.show(0)
    )
    .unwrap();
    writeln!(o, "| Small-tree export, `fs::export` (files/s) | {} | {} |", mem_export.show(0), emb_export.show(0))
        .unwrap();
    writeln!(
        o,
        "| Peak RSS (VmHWM) of the {large_label} ingest process (MiB) | {} (the store itself holds {large_mib}) | {} |",
        mem_hwm.show(0),
        emb_hwm.show(0)
    )
    .unwrap();
    writeln!(o, "| Peak RSS (VmHWM) of a {DEDUP_MIB} MiB ingest process (MiB) | – | {emb_hwm_small:.0} |").unwrap();

    writeln!(o, "\n### Chunk sizes\n").unwrap();
    writeln!(
        o,
        "A {DEDUP_MIB} MiB pseudo-random file is ingested, then a copy with {edits}. \"New bytes\" is the \
         size of the copy's chunks that were not already stored, over the copy's size (lower is better). \
         Ingest speeds are for the first file (all new); {chunk_runs} runs per row, back to back per backend, \
         so most find the memory of the previous run already backed by the host. CPU time (user + system, \
         all threads) does not depend on how fast the disk is at the moment: it shows what each chunk \
         costs the embedded store.\n"
    )
    .unwrap();
    let columns = [
        "min / avg / max",
        "Ingest, memory (MiB/s)",
        "Ingest, embedded (MiB/s)",
        "Embedded ingest CPU time (s per GiB)",
        "Edited copy, embedded (MiB/s)",
        "Chunks",
        "Mean chunk",
        "New bytes / total",
    ];
    writeln!(o, "{}", table_head(&columns)).unwrap();
    o.push_str(&chunk_rows);
    // The default against its neighbours, from the medians above.
    let default_avg = Chunker::default().avg;
    if let Some(d) = rows.iter().position(|r| r.0 == default_avg) {
        let (_, d_speed, d_cpu, d_new) = rows[d];
        let compare = |r: &(usize, f64, f64, f64)| {
            format!(
                "{} KiB: {:+.0} % CPU per GiB, {:+.0} % embedded ingest speed, {:.1}× the new bytes",
                r.0 >> 10,
                100.0 * (r.2 / d_cpu - 1.0),
                100.0 * (r.1 / d_speed - 1.0),
                r.3 / d_new
            )
        };
        let neighbours: Vec<String> =
            [d.checked_sub(1), Some(d + 1)].into_iter().flatten().filter_map(|i| rows.get(i)).map(compare).collect();
        writeln!(
            o,
            "\nAgainst the default ({} KiB average), one step either way: {}.",
            default_avg >> 10,
            neighbours.join("; ")
        )
        .unwrap();
    }

    let mem_overhead = mem_hwm.max - large_mib as f64;
    let bounded =
        emb_hwm.max <= 256.0 && emb_hwm.max <= emb_hwm_small + 64.0 && mem_overhead <= 0.25 * large_mib as f64;
    writeln!(o, "\n### Targets\n").unwrap();
    writeln!(o, "{}", table_head(&["Target", "Measured (median)", "Met"])).unwrap();
    writeln!(
        o,
        "| Large-file ingest into memory ≥ 1 GiB/s | {:.0} MiB/s | {} |",
        mem_in.med,
        yes(mem_in.med >= TARGET_MEM_MIBS)
    )
    .unwrap();
    writeln!(
        o,
        "| Large-file ingest into embedded ≥ 500 MiB/s | {:.0} MiB/s (plain single-file copy + fsync: {:.0} MiB/s) | {} |",
        emb_in.med,
        disk.med,
        yes(emb_in.med >= TARGET_EMB_MIBS)
    )
    .unwrap();
    writeln!(
        o,
        "| ≥ 20,000 small files/s | {:.0} files/s memory, {:.0} files/s embedded | {} memory, {} embedded |",
        mem_small.med,
        emb_small.med,
        yes(mem_small.med >= TARGET_FILES),
        yes(emb_small.med >= TARGET_FILES)
    )
    .unwrap();
    writeln!(
        o,
        "| Memory bounded during large ingest | embedded: {:.0} MiB peak for {large_label}, {emb_hwm_small:.0} MiB for {DEDUP_MIB} MiB; memory: peak − stored data = {:.0} MiB | {} |",
        emb_hwm.max,
        mem_overhead,
        yes(bounded)
    )
    .unwrap();
    writeln!(o, "\nBench wall time: {:.0} s.", started.elapsed().as_secs_f64()).unwrap();
    print!("{o}");
    work.finish();
}

fn main() {
    bench::main(child, parent);
}
