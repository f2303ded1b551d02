//! The harness both benchmarks share (`crates/castore/benches/castore.rs`
//! and `crates/store/benches/nar.rs`, each `harness = false`).
//!
//! A benchmark binary runs [`main`]: as the parent it makes a [`WorkDir`],
//! writes its inputs and runs every measured phase with [`run_child`] in a
//! fresh process (the same binary, re-executed), so that a phase's peak RSS
//! (VmHWM) is its own and no page of one phase's store is shared with the
//! next; the child reports with [`Out`], the parent reads a [`Res`], sums up
//! the runs with [`Stat`] and prints Markdown.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::Rng;

pub const MIB: f64 = (1u64 << 20) as f64;

/// Tells a re-executed benchmark binary that it is a child running one phase.
const CHILD_ENV: &str = "STOREFRONT_BENCH_CHILD";

/// Runs a benchmark binary: `child` with the phase's arguments (on a
/// multi-threaded Tokio runtime) when [`run_child`] started it, else `parent`.
pub fn main<F: Future<Output = ()>>(child: impl FnOnce(Vec<String>) -> F, parent: impl FnOnce()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        let args = std::env::args().skip(1).filter(|a| a != "--bench").collect();
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(child(args));
    } else {
        parent();
    }
}

/// The number in environment variable `name`, or `default` when it is unset
/// or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------- child side

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`), 0 if missing.
pub fn proc_status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The filesystem's own durable write speed for some data: copies `src` to
/// the new file `dst` with 4 MiB writes, then fsyncs; returns the seconds.
pub fn copy_fsync(src: &Path, dst: &Path) -> f64 {
    let t = Instant::now();
    let mut src = std::fs::File::open(src).unwrap();
    let mut dst = std::fs::File::create_new(dst).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).unwrap();
    }
    dst.sync_all().unwrap();
    t.elapsed().as_secs_f64()
}

/// What a phase reports to the parent: `key=value` pairs (neither with a
/// space), printed as one `RESULT` line.
#[derive(Default)]
pub struct Out(BTreeMap<String, String>);

impl Out {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set(&mut self, k: &str, v: impl ToString) {
        self.0.insert(k.into(), v.to_string());
    }
    pub fn print(self) {
        let mut line = String::from("RESULT");
        for (k, v) in self.0 {
            write!(line, " {k}={v}").unwrap();
        }
        println!("{line}");
    }
}

// ---------------------------------------------------------------- parent side

/// A phase's report ([`Out`]) as the parent reads it; `res["key"]` is a value.
#[derive(Default)]
pub struct Res(BTreeMap<String, String>);

impl Res {
    /// A value as a number; panics when it is missing.
    pub fn f64(&self, k: &str) -> f64 {
        self[k].parse().unwrap()
    }
}

impl std::ops::Index<&str> for Res {
    type Output = String;
    fn index(&self, k: &str) -> &String {
        self.0.get(k).unwrap_or_else(|| panic!("missing {k}"))
    }
}

/// Runs one phase in a fresh process (this binary, with `args`) and returns
/// its report; panics, with its output, when the phase fails.
pub fn run_child(args: &[&str]) -> Res {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(exe).env(CHILD_ENV, "1").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!("phase {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    }
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("phase printed RESULT");
    Res(line.split(' ').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

/// Median, min and max of one measurement's runs.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub med: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// The figures of a series of at least one run.
    pub fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self { med: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
    }

    /// The median with `decimals` decimals, followed by `(min–max)` when
    /// the runs differ at that precision.
    pub fn show(&self, decimals: usize) -> String {
        let [med, min, max] = [self.med, self.min, self.max].map(|x| format!("{x:.decimals$}"));
        if min == max { med } else { format!("{med} ({min}–{max})") }
    }
}

/// A target's verdict, for the "Met" column.
pub fn yes(b: bool) -> &'static str {
    if b { "**yes**" } else { "**no**" }
}

/// The first two lines of a Markdown table: the column names and the
/// separator (no newline at the end).
pub fn table_head(columns: &[&str]) -> String {
    format!("| {} |\n|{}", columns.join(" | "), "---|".repeat(columns.len()))
}

// ---------------------------------------------------------------- inputs

/// One step of a walk through a generated tree ([`tree`]).
pub enum Step<'a> {
    /// Into a new directory `name` inside the current one.
    Enter(&'a str),
    /// A file of the current directory.
    File { name: &'a str, data: &'a [u8], executable: bool },
    /// Back out of the directory entered last.
    Leave,
}

/// Generates a tree of small files, step by step. `levels` names, from
/// the top, each level's directories and how many each directory above
/// holds (`[("d", 20), ("s", 10)]`: d00…d19, each holding s00…s09); every
/// directory of the last level holds `files` files f000…, each of a size
/// in 0..=`max_size` and then its bytes drawn from `rng` (nothing for an
/// empty file), every 16th executable. Returns the files' total size.
pub fn tree(rng: &mut Rng, levels: &[(&str, usize)], files: usize, max_size: u64, visit: impl FnMut(Step<'_>)) -> u64 {
    fn walk(
        rng: &mut Rng,
        levels: &[(&str, usize)],
        files: usize,
        buf: &mut [u8],
        visit: &mut impl FnMut(Step<'_>),
    ) -> u64 {
        let mut total = 0;
        let Some((&(prefix, count), deeper)) = levels.split_first() else {
            for i in 0..files {
                let size = rng.below(buf.len() as u64) as usize;
                if size > 0 {
                    rng.fill(&mut buf[..size]);
                }
                visit(Step::File { name: &format!("f{i:03}"), data: &buf[..size], executable: i % 16 == 0 });
                total += size as u64;
            }
            return total;
        };
        for d in 0..count {
            visit(Step::Enter(&format!("{prefix}{d:02}")));
            total += walk(rng, deeper, files, buf, visit);
            visit(Step::Leave);
        }
        total
    }
    let mut visit = visit;
    walk(rng, levels, files, &mut vec![0; max_size as usize + 1], &mut visit)
}

/// The small-file workload both benchmarks measure: [`SMALL_FILES`] files
/// of 0–4 KiB in 20 × 10 directories ([`SMALL_DIRS`] with the top one),
/// the same bytes on every run.
pub fn small_tree(visit: impl FnMut(Step<'_>)) -> u64 {
    tree(&mut Rng::new(42), &[("d", 20), ("s", 10)], SMALL_FILES / 200, 4096, visit)
}

pub const SMALL_FILES: usize = 20_000;
pub const SMALL_DIRS: usize = 20 * 10 + 20 + 1;

// ---------------------------------------------------------------- work directory

/// Seconds to leave between a benchmark's cleanup and the next run.
///
/// On ext4 without a journal, creating files in the minutes after many were
/// deleted is slow: inode allocation skips inodes freed less than 60 s ago
/// (360 s while their inode table block is dirty) and tests every candidate.
/// A run ends by deleting tens of thousands of files, so the next one (of
/// either benchmark: they share the stamp file) waits until that no longer
/// shows rather than measure it; `CASTORE_BENCH_NO_WAIT` skips the wait (on
/// filesystems without this behaviour, or when in a hurry).
pub const QUIET_SECS: u64 = 420;

/// A benchmark's temporary work directory, under `CASTORE_BENCH_TMP`
/// (default `/tmp`), which must be on a real disk. Nothing in it is deleted
/// before [`WorkDir::finish`]: deleting many files slows creating them for
/// minutes (see [`QUIET_SECS`]), which would charge one phase for another's
/// cleanup.
pub struct WorkDir {
    dir: tempfile::TempDir,
    stamp: PathBuf,
    name: String,
}

impl WorkDir {
    /// Waits until the last benchmark's cleanup is [`QUIET_SECS`] old, then
    /// makes `NAME-bench-…`; `name` also starts the messages on stderr.
    pub fn new(name: &str) -> Self {
        let base = std::env::var("CASTORE_BENCH_TMP").unwrap_or_else(|_| "/tmp".into());
        let stamp = Path::new(&base).join(".castore-bench-cleanup");
        wait_after_cleanup(name, &stamp);
        let dir = tempfile::Builder::new().prefix(&format!("{name}-bench-")).tempdir_in(&base).unwrap();
        Self { dir, stamp, name: name.to_owned() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes the directory and records when, for the next run's wait.
    pub fn finish(self) {
        eprintln!("{} bench: deleting {}", self.name, self.dir.path().display());
        drop(self.dir);
        let _ = std::fs::write(&self.stamp, b"");
    }
}

fn wait_after_cleanup(name: &str, stamp: &Path) {
    if std::env::var_os("CASTORE_BENCH_NO_WAIT").is_some() {
        return;
    }
    let Some(age) = std::fs::metadata(stamp).ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()) else {
        return;
    };
    if age.as_secs() < QUIET_SECS {
        let wait = QUIET_SECS - age.as_secs();
        eprintln!(
            "{name} bench: a benchmark deleted its files {} s ago; waiting {wait} s so that inode allocation \
             is not slowed by them (CASTORE_BENCH_NO_WAIT=1 skips this)",
            age.as_secs()
        );
        std::thread::sleep(Duration::from_secs(wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_shows_a_range_only_when_runs_differ() {
        assert_eq!(Stat::of(vec![3.0, 1.0, 2.0]).show(0), "2 (1–3)");
        assert_eq!(Stat::of(vec![1.01, 1.02]).show(0), "1");
        assert_eq!(Stat::of(vec![1.01, 1.02]).show(2), "1.02 (1.01–1.02)");
    }

    #[test]
    fn table_head_has_a_separator_per_column() {
        assert_eq!(table_head(&["a", "b"]), "| a | b |\n|---|---|");
    }

    #[test]
    fn tree_walks_every_level() {
        let (mut depth, mut files, mut dirs) = (0i32, 0, 0);
        let total = tree(&mut Rng::new(1), &[("d", 3), ("s", 2)], 5, 10, |step| match step {
            Step::Enter(_) => {
                depth += 1;
                dirs += 1;
            }
            Step::File { data, .. } => {
                assert_eq!(depth, 2);
                assert!(data.len() <= 10);
                files += 1;
            }
            Step::Leave => depth -= 1,
        });
        assert_eq!((depth, dirs, files), (0, 3 + 3 * 2, 3 * 2 * 5));
        assert!(total <= 30 * 10);
    }
}
