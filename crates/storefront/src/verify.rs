//! `storefront verify`: checks a store's integrity (the logic is
//! `store::verify`) and reports every problem with the store paths it
//! breaks. Exit status: 0 clean, 1 problems found, 2 the check could not
//! run — so scripts and the replica tests can tell "damaged" from "down".
use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::HumanBytes;
use store::{
    DEFAULT_STORE_DIR,
    verify::{self, Options, Progress, Report, Stage, Store},
};
use tokio::sync::watch;

use crate::progress::{ProgressDisplay, style};

/// The default `--store`: a server on this machine, at `serve`'s default address.
const DEFAULT_STORE: &str = "grpc+http://127.0.0.1:8000";

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").args(["store", "data", "storage"]))]
pub struct VerifyArgs {
    /// The store to check through a server: `grpc+http://host:port` (its
    /// PathInfo, directory and blob services; a read token goes in the
    /// password, `grpc+http://:TOKEN@host:port`, or $STOREFRONT_TOKEN)
    /// [env: STOREFRONT_STORE] [default: grpc+http://127.0.0.1:8000].
    /// Engine URLs are accepted too (as --storage).
    #[arg(long, value_name = "URL")]
    store: Option<String>,

    /// Open the embedded store in this data directory directly (as `serve
    /// --data` lays it out). The server must not be running.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Open a storage engine directly, as `serve --storage` does
    /// (`objectstore+s3://bucket/prefix?endpoint=…`, `redb:PATH`): every
    /// chunk is checked and unreferenced records are counted. Safe while
    /// replicas run on a shared object store.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,

    /// Also re-read every blob (checking its BLAKE3 and length) and render
    /// every path's NAR (checking NarHash and NarSize): reads everything.
    #[arg(long)]
    deep: bool,

    /// Checks in flight at once.
    #[arg(long, short, default_value_t = verify::DEFAULT_JOBS, value_name = "N")]
    jobs: usize,

    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,

    /// Do not count the directory and blob records no PathInfo reaches
    /// (one scan of each table, with --data or --storage).
    #[arg(long)]
    no_unreferenced: bool,

    /// The Nix store directory paths are printed under.
    #[arg(long, env = "NIX_STORE_DIR", default_value = DEFAULT_STORE_DIR, value_name = "DIR")]
    store_dir: String,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let code = match check(&args).await {
        Ok((report, elapsed)) => {
            if args.json {
                println!("{}", json(&report, &args.store_dir, elapsed));
            } else {
                print!("{}", text(&report, &args.store_dir, elapsed));
            }
            if report.is_clean() { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::io::stdout().flush()?;
    std::process::exit(code)
}

/// Opens the store, runs the check with a progress display, and closes the
/// store again.
async fn check(args: &VerifyArgs) -> anyhow::Result<(Report, Duration)> {
    store::store_path::validate_store_dir(&args.store_dir)?;
    let store = open(args)?;
    let started = Instant::now();
    let progress = watch::Sender::new(Progress::default());
    let display = progress_display(progress.subscribe());
    let opts = Options { deep: args.deep, jobs: args.jobs, unreferenced: !args.no_unreferenced };
    let result = verify::verify(&store, &opts, &progress).await;
    display.finish().await;
    Ok((result.context("checking the store")?, started.elapsed()))
}

fn open(args: &VerifyArgs) -> anyhow::Result<Store> {
    if let Some(data) = &args.data {
        let url = crate::config::embedded_store_url(data);
        return Store::open(&url).map_err(|e| crate::config::embedded_open_error(data, &url, e, "check through it"));
    }
    if let Some(storage) = &args.storage {
        if storage.starts_with("grpc+") {
            bail!("--storage takes an engine URL; check a server with --store {storage}");
        }
        return Store::open(storage).with_context(|| format!("opening the storage {storage}"));
    }
    let addr = args
        .store
        .clone()
        .or_else(|| std::env::var("STOREFRONT_STORE").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_STORE.to_owned());
    Store::open(&addr).with_context(|| format!("opening the store {}", castore::grpc::redacted(&addr)))
}

/// The counts line, what no PathInfo reaches, then each problem with the
/// paths it breaks (indented), and a last line saying clean or not.
fn text(report: &Report, store_dir: &str, elapsed: Duration) -> String {
    let mut out = format!(
        "checked {} paths: {} directories, {} blobs ({}), {} chunks",
        report.paths,
        report.directories,
        report.blobs,
        HumanBytes(report.bytes),
        report.chunks
    );
    if report.nars > 0 || report.bytes_read > 0 {
        out.push_str(&format!(", {} NARs, {} re-read", report.nars, HumanBytes(report.bytes_read)));
    }
    out.push_str(&format!(" in {:.2} s\n", elapsed.as_secs_f64()));
    if let Some(u) = &report.unreferenced {
        out.push_str(&format!(
            "unreferenced (no PathInfo reaches them; not errors): {} directories, {} multi-chunk blobs\n",
            u.directories, u.blobs
        ));
    }
    for p in &report.problems {
        out.push_str(&format!("problem: {}\n", p.kind));
        for path in &p.paths {
            out.push_str(&format!("  {}\n", path.to_absolute(store_dir)));
        }
    }
    if report.is_clean() {
        out.push_str("clean\n");
    } else {
        let broken: std::collections::HashSet<_> = report.problems.iter().flat_map(|p| &p.paths).collect();
        out.push_str(&format!(
            "{} problem{} affecting {} of {} paths\n",
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" },
            broken.len(),
            report.paths
        ));
    }
    out
}

fn json(report: &Report, store_dir: &str, elapsed: Duration) -> serde_json::Value {
    let problems: Vec<serde_json::Value> = report
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "kind": p.kind.code(),
                "message": p.kind.to_string(),
                "paths": p.paths.iter().map(|s| s.to_absolute(store_dir)).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "clean": report.is_clean(),
        "paths": report.paths,
        "directories": report.directories,
        "blobs": report.blobs,
        "chunks": report.chunks,
        "bytes": report.bytes,
        "bytes_read": report.bytes_read,
        "nars": report.nars,
        "unreferenced": report.unreferenced.map(|u| serde_json::json!({
            "directories": u.directories,
            "blobs": u.blobs,
        })),
        "problems": problems,
        "seconds": elapsed.as_secs_f64(),
    })
}

/// A spinner with the counts (a bar while NARs render).
fn progress_display(rx: watch::Receiver<Progress>) -> ProgressDisplay {
    let nars = style("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} NARs  {msg}");
    ProgressDisplay::start(rx, "listing paths", move |shown, p: &Progress| {
        let problems = if p.problems > 0 { format!(", {} problems", p.problems) } else { String::new() };
        match p.stage {
            Stage::Listing => shown.set_message(format!("listing paths: {}", p.paths)),
            Stage::Contents | Stage::Unreferenced | Stage::Done => shown.set_message(format!(
                "{} paths: {} directories, {} blobs ({}), {} chunks{}{problems}",
                p.paths,
                p.directories,
                p.blobs,
                HumanBytes(p.bytes),
                p.chunks,
                if p.bytes_read > 0 { format!(", {} re-read", HumanBytes(p.bytes_read)) } else { String::new() },
            )),
            Stage::Nars => {
                shown.set_style(nars.clone());
                shown.set_length(p.nars_total);
                shown.set_position(p.nars_done);
                shown.set_message(format!("{} re-read{problems}", HumanBytes(p.bytes_read)));
            }
        }
    })
}
