//! `storefront import`: store paths (with their closures) from the local Nix
//! store, `nix-store --export` streams, or single NARs, into a store: a
//! running server over gRPC (`--store`) or a data directory opened directly
//! (`--data`).
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use store::{
    ContentAddress, DEFAULT_STORE_DIR, NarInfo, StorePath,
    import::{self, Importer, LocalStore, NarFileMeta, Progress, Summary, Target},
    signing::Signature,
};
use tokio::sync::watch;

use crate::progress::{ProgressDisplay, style};

/// The default `--store`: a server on this machine, at `serve`'s default address.
pub(crate) const DEFAULT_STORE: &str = "grpc+http://127.0.0.1:8000";

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["paths", "export", "nar"]))]
pub struct ImportArgs {
    /// Store paths to import with their closures: store paths, paths inside
    /// them (/nix/store/…-hello/bin/hello), or symlinks to them (./result).
    paths: Vec<PathBuf>,

    /// The store to import into: all three services (blobs, directories,
    /// PathInfo) at this address [env: STOREFRONT_STORE] [default:
    /// grpc+http://127.0.0.1:8000]. `?package=tvix` talks to tvix servers.
    // STOREFRONT_STORE is read in `open_target`, so that it does not
    // conflict with --data.
    #[arg(long, value_name = "URL")]
    store: Option<String>,

    /// Open the embedded store in this data directory directly (as `serve
    /// --data` lays it out) instead of talking to a server. The server
    /// must not be running.
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    data: Option<PathBuf>,

    /// A file of tokens (one a line, as `serve --write-token-file`): the
    /// first is sent to the server as the write token. Without it, the
    /// token is the --store URL's password (`grpc+http://:TOKEN@host:port`),
    /// else $STOREFRONT_TOKEN, else the first one in the write token file
    /// `serve` creates in its default data directory, when readable.
    /// Unused with --data.
    #[arg(long, env = "STOREFRONT_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// The Nix store directory the paths live in.
    #[arg(long, env = "NIX_STORE_DIR", default_value = DEFAULT_STORE_DIR, value_name = "DIR")]
    store_dir: String,

    /// Store URI for `nix path-info` (`--store`), for a Nix store other
    /// than the default one.
    #[arg(long, value_name = "URI")]
    nix_store: Option<String>,

    /// Store paths ingested at once.
    #[arg(long, short, default_value_t = import::DEFAULT_JOBS, value_name = "N")]
    jobs: usize,

    /// Do not check that each stored tree renders to the NarHash and
    /// NarSize recorded by Nix.
    #[arg(long)]
    no_verify: bool,

    /// Import a `nix-store --export` stream from FILE (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["paths", "nar"])]
    export: Option<PathBuf>,

    /// Import one NAR file (`-`: standard input), described by --narinfo or
    /// by --store-path and the other metadata flags.
    #[arg(long, value_name = "FILE", conflicts_with = "paths")]
    nar: Option<PathBuf>,

    /// The .narinfo describing --nar (its NarHash and NarSize must match).
    #[arg(long, value_name = "FILE", requires = "nar", conflicts_with = "store_path")]
    narinfo: Option<PathBuf>,

    /// The store path of --nar.
    #[arg(long, value_name = "PATH", requires = "nar")]
    store_path: Option<String>,

    /// A reference of --nar (repeatable; references must be stored already).
    #[arg(long = "reference", value_name = "PATH", requires = "store_path")]
    references: Vec<String>,

    /// The deriver (.drv) of --nar.
    #[arg(long, value_name = "PATH", requires = "store_path")]
    deriver: Option<String>,

    /// A signature of --nar, `keyname:base64` (repeatable).
    #[arg(long = "sig", value_name = "SIG", requires = "store_path")]
    signatures: Vec<String>,

    /// The content address of --nar (`fixed:r:sha256:…`, `text:sha256:…`).
    #[arg(long, value_name = "CA", requires = "store_path")]
    ca: Option<String>,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    store::store_path::validate_store_dir(&args.store_dir)?;
    let (target, where_to) = open_target(&args).await?;
    let started = Instant::now();
    let progress = watch::Sender::new(Progress::default());
    let bar = progress_display(progress.subscribe(), args.export.is_some());

    let result = if let Some(export) = &args.export {
        import_export(&target, export, &args.store_dir, &progress).await
    } else if let Some(nar) = &args.nar {
        import_nar(&target, nar, &args).await
    } else {
        import_paths(&target, &args, &progress).await
    };
    bar.finish().await;
    let summary = result?;
    println!("{}", summary_line(&summary, started.elapsed(), &where_to));
    if !summary.is_success() {
        for f in &summary.failures {
            eprintln!("error: {}: {}", f.path.to_absolute(&args.store_dir), f.error);
        }
        let total = summary.failures.len() as u64 + summary.imported + summary.skipped;
        bail!("{} of {total} paths could not be imported", summary.failures.len());
    }
    Ok(())
}

/// Opens the store to import into, and checks that it answers.
async fn open_target(args: &ImportArgs) -> anyhow::Result<(Target, String)> {
    if let Some(data) = &args.data {
        let url = crate::config::embedded_store_url(data);
        let target =
            Target::open(&url).map_err(|e| crate::config::embedded_open_error(data, &url, e, "import through it"))?;
        return Ok((target, data.display().to_string()));
    }
    let addr = args
        .store
        .clone()
        .or_else(|| std::env::var("STOREFRONT_STORE").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_STORE.to_owned());
    let url = castore::grpc::redacted(&addr);
    let addr = with_token(addr, args.token_file.as_deref())?;
    let target = Target::open(&addr).with_context(|| format!("opening the store {url}"))?;
    // The first call tells an unreachable server, or one without the
    // PathInfo service, apart from everything later.
    if let Err(e) = target.paths.get(&[0; 20]).await {
        match e {
            castore::Error::Remote(s) if s.code() == tonic::Code::Unimplemented => bail!(
                "{url} does not serve the PathInfo service (store.v1); is it a castore-only server? ({})",
                s.message()
            ),
            e => bail!("cannot reach the store at {url}: {e}; is `storefront serve` running there?"),
        }
    }
    Ok((target, url))
}

/// `addr` with the write token in its password: the first token of
/// `token_file`; failing that, unless the address or $STOREFRONT_TOKEN
/// holds one already, the first of the local server's default token file
/// (so `serve` and `import` on one machine need no setup).
pub(crate) fn with_token(addr: String, token_file: Option<&Path>) -> anyhow::Result<String> {
    let Ok(mut url) = castore::parse_service_address(&addr) else {
        return Ok(addr); // Target::open says what is wrong with it
    };
    if !url.scheme().starts_with("grpc+") {
        return Ok(addr);
    }
    let token = match token_file {
        Some(file) => crate::auth::client_token(Some(file))?,
        None if url.password().is_some() || !url.has_host() => None,
        None => crate::auth::client_token(None)?,
    };
    let Some(token) = token else {
        return Ok(addr);
    };
    if url.set_password(Some(&token)).is_err() {
        bail!("{} cannot carry a token (it has no host); set {} instead", url.scheme(), castore::grpc::TOKEN_ENV);
    }
    Ok(url.into())
}

async fn import_paths(
    target: &Target,
    args: &ImportArgs,
    progress: &watch::Sender<Progress>,
) -> anyhow::Result<Summary> {
    let mut local = LocalStore::new(&args.store_dir)?;
    local.nix_store_uri = args.nix_store.clone();
    let mut roots = Vec::with_capacity(args.paths.len());
    for p in &args.paths {
        roots.push(local.resolve(p)?);
    }
    let metas = local.closure(&roots).await?;
    let importer = Importer::new(target.clone(), &args.store_dir).jobs(args.jobs).verify(!args.no_verify);
    // Forward the importer's progress to the display.
    let mut rx = importer.progress();
    let tx = progress.clone();
    let forward = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            tx.send_replace(p);
        }
    });
    let summary = importer.import(metas).await;
    drop(importer);
    let _ = forward.await;
    Ok(summary?)
}

async fn import_export(
    target: &Target,
    file: &Path,
    store_dir: &str,
    progress: &watch::Sender<Progress>,
) -> anyhow::Result<Summary> {
    if file == Path::new("-") {
        return Ok(import::import_export(target, tokio::io::stdin(), store_dir, progress).await?);
    }
    let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
    if let Ok(meta) = f.metadata().await
        && meta.is_file()
    {
        progress.send_modify(|p| p.bytes_total = meta.len());
    }
    import::import_export(target, f, store_dir, progress).await.with_context(|| format!("importing {}", file.display()))
}

async fn import_nar(target: &Target, nar: &Path, args: &ImportArgs) -> anyhow::Result<Summary> {
    let meta = match &args.narinfo {
        Some(narinfo) => {
            let text = std::fs::read_to_string(narinfo).with_context(|| format!("reading {}", narinfo.display()))?;
            let info =
                NarInfo::parse(&text, &args.store_dir).with_context(|| format!("parsing {}", narinfo.display()))?;
            if info.compression != "none" && !starts_with_nar_magic(nar) {
                bail!(
                    "{}: the narinfo says Compression: {}, and the file is not a plain NAR; decompress it first",
                    nar.display(),
                    info.compression
                );
            }
            NarFileMeta::from_narinfo(&info)?
        }
        None => {
            let parse = |s: &str| -> anyhow::Result<StorePath> {
                let p = if s.starts_with('/') {
                    StorePath::from_absolute(s, &args.store_dir)
                } else {
                    StorePath::from_basename(s)
                };
                Ok(p?)
            };
            NarFileMeta {
                path: Some(parse(args.store_path.as_deref().context("--nar needs --narinfo or --store-path")?)?),
                references: args.references.iter().map(|r| parse(r)).collect::<anyhow::Result<_>>()?,
                deriver: args.deriver.as_deref().map(parse).transpose()?,
                signatures: args
                    .signatures
                    .iter()
                    .map(|s| s.parse::<Signature>().with_context(|| format!("--sig {s}")))
                    .collect::<anyhow::Result<_>>()?,
                ca: args
                    .ca
                    .as_deref()
                    .map(|c| c.parse::<ContentAddress>().with_context(|| format!("--ca {c}")))
                    .transpose()?,
                expected: None,
            }
        }
    };
    let what = meta.path.as_ref().map(|p| p.to_absolute(&args.store_dir)).unwrap_or_default();
    let result = if nar == Path::new("-") {
        import::import_nar(target, &mut tokio::io::stdin(), meta).await
    } else {
        import::import_nar_file(target, nar, meta).await
    };
    result.with_context(|| format!("importing {} as {what}", nar.display()))
}

fn starts_with_nar_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 24];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[8..21] == b"nix-archive-1"
}

/// `imported 3 paths (1.2 MiB NAR), 5 already present, in 0.84 s (1.4 MiB/s, 3.6 paths/s) into …`
fn summary_line(s: &Summary, elapsed: Duration, where_to: &str) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let failed = if s.failures.is_empty() { String::new() } else { format!(", {} failed", s.failures.len()) };
    format!(
        "imported {} path{} ({} NAR), {} already present{failed}, in {:.2} s ({}/s, {:.1} paths/s) into {where_to}",
        s.imported,
        if s.imported == 1 { "" } else { "s" },
        human_bytes(s.bytes),
        s.skipped,
        secs,
        human_bytes((s.bytes as f64 / secs) as u64),
        (s.imported + s.skipped) as f64 / secs,
    )
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// The progress bar of an import. `by_bytes`: the bar follows the bytes
/// read (a stream whose path count is unknown until its end), else the
/// paths done.
fn progress_display(rx: watch::Receiver<Progress>, by_bytes: bool) -> ProgressDisplay {
    let paths_bar = style("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} paths  {msg}");
    let bytes_bar = style("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes}  {msg}");
    ProgressDisplay::start(rx, "starting", move |shown, p: &Progress| {
        if by_bytes {
            let paths = format!("{} path{}", p.paths_done, if p.paths_done == 1 { "" } else { "s" });
            if p.bytes_total > 0 {
                shown.set_style(bytes_bar.clone());
                shown.set_length(p.bytes_total);
                shown.set_position(p.bytes_done);
                shown.set_message(paths);
            } else {
                shown.set_message(format!("{paths}, {} read", human_bytes(p.bytes_done)));
            }
        } else if p.paths_total > 0 {
            shown.set_style(paths_bar.clone());
            shown.set_length(p.paths_total);
            shown.set_position(p.paths_done);
            shown.set_message(format!("{} / {}", human_bytes(p.bytes_done), human_bytes(p.bytes_total)));
        }
    })
}
