//! `storefront`: the command-line entry point. It parses flags, loads the
//! configuration and wires crates together; protocol logic lives in them.
use clap::{Parser, Subcommand};

mod auth;
mod config;
mod fetch;
mod image;
mod import;
mod metrics;
mod progress;
mod serve;
mod snapshotter;
mod verify;

#[derive(Parser)]
#[command(name = "storefront", version, about = "Serve Nix store paths from one content-addressed copy")]
struct Cli {
    /// Log filter, e.g. `info` or `storefront=debug,castore=debug`.
    #[arg(long, env = "STOREFRONT_LOG", default_value = "info", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (tvix/snix castore and store), the Nix binary cache and
    /// /metrics on one address.
    Serve(config::ServeArgs),
    /// Import store paths with their closures (from the local Nix store, a
    /// `nix-store --export` stream, or a NAR) into a store.
    Import(import::ImportArgs),
    /// Define and list images made of store paths (served by the registry).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Load the package index that `pkgs/…` image names resolve through.
    #[command(subcommand)]
    Packages(image::PackagesCommand),
    /// Materialise store paths with their closures from a store over gRPC.
    Fetch(fetch::FetchArgs),
    /// Run a containerd proxy snapshotter that fetches nix layers over gRPC.
    Snapshotter(snapshotter::SnapshotterArgs),
    /// Check a store's integrity: every PathInfo's tree, directories and chunks.
    Verify(verify::VerifyArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(args.resolve()?)),
        Command::Import(args) => runtime.block_on(import::run(args)),
        Command::Image(cmd) => runtime.block_on(image::run_image(cmd)),
        Command::Packages(cmd) => runtime.block_on(image::run_packages(cmd)),
        // On a worker: the fetch wakes often (replies, blocking-pool
        // trips), and a worker handles that without a thread switch.
        Command::Fetch(args) => runtime.block_on(async { tokio::spawn(fetch::run(args)).await? }),
        Command::Snapshotter(args) => runtime.block_on(snapshotter::run(args)),
        Command::Verify(args) => runtime.block_on(verify::run(args)),
    }
}
