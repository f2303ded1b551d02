//! `storefront fetch`: store paths with their closures from a store over
//! gRPC, materialised in a store directory and checked (see the `fetch`
//! crate). Into the host's Nix store, the paths are registered with Nix
//! and `--add-root` makes a GC root; `--nix-snapshotter-builder` is the
//! same for nix-snapshotter's `external_builder` contract.
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use fetch::{FetchError, Fetched, Fetcher, HostNix, Progress, register_with_nix};
use store::{DEFAULT_STORE_DIR, StorePath, VerifyingKey};

use crate::{
    import::{DEFAULT_STORE, human_bytes, with_token},
    progress::{ProgressDisplay, style},
};

/// Where `--trusted-public-key`s come from when none is given (as `serve`).
const TRUSTED_KEYS_ENV: &str = "STOREFRONT_TRUSTED_PUBLIC_KEYS";

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Store paths to fetch with their closures: /nix/store/<hash>-<name>
    /// (a path inside one names it too), or <hash>-<name>.
    #[arg(value_name = "STOREPATH", required_unless_present = "nix_snapshotter_builder")]
    paths: Vec<String>,

    /// The store to fetch from: all three services (blobs, directories,
    /// PathInfo) at this address, as `import --store` takes it;
    /// `?package=tvix` talks to tvix servers.
    #[arg(long, env = "STOREFRONT_STORE", default_value = DEFAULT_STORE, value_name = "URL")]
    store: String,

    /// A file of tokens (one a line): the first is sent to the server. Without
    /// it, the token is the --store URL's password (`grpc+http://:TOKEN@host:port`),
    /// else $STOREFRONT_TOKEN, else the first one in the write token file
    /// `serve` creates in its default data directory, when readable. Needed
    /// only when the server has a read token file.
    #[arg(long, env = "STOREFRONT_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// The Nix store directory the paths belong to: signatures are over
    /// paths in it, and fetching into it (the default) fetches into the
    /// host's Nix store.
    #[arg(long, env = "NIX_STORE_DIR", default_value = DEFAULT_STORE_DIR, value_name = "DIR")]
    nix_store_dir: String,

    /// Where to write the paths, as DIR/<hash>-<name> (created if missing)
    /// [default: the Nix store directory]. Into the host's Nix store, the
    /// paths are registered with Nix; anywhere else, a path present in DIR
    /// counts as fetched.
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,

    /// Accept only paths signed by this key (`name:base64`, as Nix's
    /// trusted-public-keys; repeatable), or content-addressed ones whose
    /// store path their contents prove [env: STOREFRONT_TRUSTED_PUBLIC_KEYS,
    /// comma or space separated]. With keys, each path's tree is also
    /// checked against the signed NarHash. Without keys, the PathInfo is
    /// taken as sent and every blob and directory is checked against its
    /// digests (as `nix copy --no-check-sigs` checks a NAR against its
    /// narinfo).
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    trusted_public_keys: Vec<VerifyingKey>,

    /// Check each path's NarHash and NarSize against its tree even without
    /// trusted keys (a SHA-256 of every byte; always done with keys and when
    /// writing into the host Nix store, which records the hash).
    #[arg(long)]
    check_nar_hash: bool,

    /// Do not register the paths with the host Nix, even when writing into
    /// its store (Nix's GC will then delete them as invalid).
    #[arg(long, conflicts_with_all = ["add_root", "nix_snapshotter_builder"])]
    no_register: bool,

    /// Make LINK a symlink to the (one) STOREPATH and an indirect GC root of
    /// the host Nix, like nix-build's ./result.
    #[arg(long, short = 'o', visible_alias = "out-link", value_name = "LINK")]
    add_root: Option<PathBuf>,

    /// Act as nix-snapshotter's `external_builder`: fetch STORE_PATH with
    /// its closure into the host Nix store, register it, and make OUT_LINK a
    /// GC root for it. nix-snapshotter runs `<exe> <outLink> <storePath>`,
    /// so point it at a script running `exec storefront fetch
    /// --nix-snapshotter-builder "$@"`. The summary goes to stderr.
    #[arg(long, num_args = 2, value_names = ["OUT_LINK", "STORE_PATH"], conflicts_with_all = ["paths", "add_root", "store_dir"])]
    nix_snapshotter_builder: Option<Vec<String>>,

    /// Store paths written at once.
    #[arg(long, short, default_value_t = fetch::DEFAULT_JOBS, value_name = "N")]
    jobs: usize,
}

pub async fn run(args: FetchArgs) -> anyhow::Result<()> {
    store::store_path::validate_store_dir(&args.nix_store_dir)?;
    let builder = args.nix_snapshotter_builder.as_deref().map(|v| (PathBuf::from(&v[0]), v[1].clone()));
    let (raw_paths, add_root) = match &builder {
        Some((link, path)) => (vec![path.clone()], Some(link.clone())),
        None => (args.paths.clone(), args.add_root.clone()),
    };
    let target_dir = args.store_dir.clone().unwrap_or_else(|| PathBuf::from(&args.nix_store_dir));
    let roots = raw_paths
        .iter()
        .map(|p| parse_store_path(p, &args.nix_store_dir, &target_dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if add_root.is_some() && roots.len() != 1 {
        bail!("--add-root makes a GC root for one store path; {} were given", roots.len());
    }

    let host = is_host_store(&target_dir, &args.nix_store_dir)?;
    if !host {
        if builder.is_some() {
            bail!(
                "--nix-snapshotter-builder fetches into the host Nix store, and {} does not exist",
                args.nix_store_dir
            );
        }
        if add_root.is_some() {
            bail!("--add-root registers a GC root with the host Nix: fetch into its store ({})", args.nix_store_dir);
        }
        std::fs::create_dir_all(&target_dir).with_context(|| format!("creating {}", target_dir.display()))?;
    }
    let nix = match host && !args.no_register {
        true => Some(HostNix::new(args.nix_store_dir.clone()).context(
            "fetching into the host Nix store registers the paths with Nix (or pass --no-register, or --store-dir DIR)",
        )?),
        false => None,
    };

    let shown = castore::grpc::redacted(&args.store);
    let addr = with_token(args.store.clone(), args.token_file.as_deref())?;
    let mut fetcher = Fetcher::connect(&addr)?
        .store_dir(args.nix_store_dir.clone())
        .trusted_keys(trusted_keys(args.trusted_public_keys)?)
        .check_nar_hash(args.check_nar_hash)
        .jobs(args.jobs);
    if let Some(nix) = &nix {
        fetcher = fetcher.host_nix(nix.clone());
    }

    let display = ProgressDisplay::start(fetcher.progress(), "resolving the closure", {
        let bar_style = style("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes}  {msg}");
        move |bar, p: &Progress| {
            if p.paths_total == 0 {
                return;
            }
            bar.set_style(bar_style.clone());
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done.min(p.bytes_total));
            bar.set_message(format!(
                "{}/{} paths, {} downloaded, {} copied",
                p.paths_done,
                p.paths_total,
                human_bytes(p.downloaded),
                human_bytes(p.copied)
            ));
        }
    });
    let result = tokio::select! {
        r = fetcher.fetch(&roots, &target_dir) => r.map_err(|e| explained(e, &shown)),
        // Dropping the fetch removes every tree still being written.
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; nothing half-written was left")),
    };
    display.finish().await;
    let fetched = result.with_context(|| format!("fetching from {shown}"))?;

    let mut notes = Vec::new();
    if let Some(nix) = &nix {
        register_with_nix(nix, &fetched.placed).await?;
        if !fetched.placed.is_empty() {
            notes.push(format!("registered {} with Nix", count(fetched.placed.len() as u64, "path")));
        }
        if let Some(link) = &add_root {
            nix.add_root(link, &roots[0]).await?;
            notes.push(format!("GC root {}", link.display()));
        }
    }
    let line = summary_line(&fetched, &target_dir, &notes);
    if builder.is_some() {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

/// The error, with a hint when the store did not answer at all.
fn explained(e: FetchError, shown: &str) -> anyhow::Error {
    let unreachable = matches!(&e, FetchError::Store { error: castore::Error::Remote(s), .. }
        if s.code() == tonic::Code::Unavailable);
    let e = anyhow::Error::from(e);
    match unreachable {
        true => e.context(format!("cannot reach the store at {shown}; is `storefront serve` running there?")),
        false => e,
    }
}

/// A STOREPATH argument: absolute in the Nix store directory or in the
/// target directory (a path inside a store path names it), or a basename.
fn parse_store_path(arg: &str, nix_store_dir: &str, target_dir: &Path) -> anyhow::Result<StorePath> {
    if !arg.starts_with('/') {
        return StorePath::from_basename(arg).with_context(|| format!("{arg}: not a store path (<hash>-<name>)"));
    }
    if let Ok((path, _)) = StorePath::from_absolute_prefix(arg, nix_store_dir) {
        return Ok(path);
    }
    let target = target_dir.to_string_lossy();
    let (path, _) = StorePath::from_absolute_prefix(arg, target.trim_end_matches('/'))
        .with_context(|| format!("{arg}: not a store path in {nix_store_dir}"))?;
    Ok(path)
}

/// Whether `target_dir` is the host's Nix store: the Nix store directory
/// itself (an existing directory, symlinks resolved).
fn is_host_store(target_dir: &Path, nix_store_dir: &str) -> anyhow::Result<bool> {
    let Ok(nix) = std::fs::canonicalize(nix_store_dir) else { return Ok(false) };
    match std::fs::canonicalize(target_dir) {
        Ok(target) => Ok(target == nix),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{}", target_dir.display())),
    }
}

/// The keys given, else those of $STOREFRONT_TRUSTED_PUBLIC_KEYS.
fn trusted_keys(flags: Vec<VerifyingKey>) -> anyhow::Result<Vec<VerifyingKey>> {
    if !flags.is_empty() {
        return Ok(flags);
    }
    let env = std::env::var(TRUSTED_KEYS_ENV).unwrap_or_default();
    env.split([',', ' ', '\n'])
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().with_context(|| format!("{TRUSTED_KEYS_ENV}: key {s:?}")))
        .collect()
}

/// Waits for SIGINT or SIGTERM; names it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `fetched 3 paths (1.2 MiB NAR; 1.1 MiB downloaded, 96.0 KiB copied from
/// disk), 5 already present, in 0.84 s (1.4 MiB/s of NAR) into /nix/store; …`
fn summary_line(f: &Fetched, target_dir: &Path, notes: &[String]) -> String {
    let s = &f.summary;
    let secs = s.elapsed.as_secs_f64().max(1e-6);
    let adopted =
        if s.adopted > 0 { format!(", {} found complete on disk", count(s.adopted, "path")) } else { String::new() };
    let mut line = format!(
        "fetched {} ({} NAR; {} downloaded, {} copied from disk), {} already present{adopted}, in {secs:.2} s ({}/s of NAR) into {}",
        count(s.fetched, "path"),
        human_bytes(s.nar_bytes),
        human_bytes(s.downloaded),
        human_bytes(s.copied),
        s.skipped,
        human_bytes((s.nar_bytes as f64 / secs) as u64),
        target_dir.display(),
    );
    for n in notes {
        line.push_str("; ");
        line.push_str(n);
    }
    line
}
