//! `storefront snapshotter`: containerd's proxy snapshotter on a unix
//! socket (see the `snapshotter` crate), fetching nix layers' store paths
//! over gRPC from `--store`.
use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Args;
use snapshotter::{GrpcFetcher, PathFetcher, Snapshotter};

#[derive(Args, Debug)]
pub struct SnapshotterArgs {
    /// The unix socket to serve on: containerd's `[proxy_plugins.NAME]
    /// address`.
    #[arg(long, env = "STOREFRONT_SNAPSHOTTER_SOCKET", value_name = "PATH")]
    socket: PathBuf,

    /// Where snapshots, fetched store paths (`store/`) and the metadata
    /// database live.
    #[arg(long, env = "STOREFRONT_SNAPSHOTTER_ROOT", value_name = "DIR")]
    root: PathBuf,

    /// The store nix layers' paths are fetched from (`grpc+http://…`,
    /// `grpc+https://…`, `grpc+unix:…`). Without it, ordinary layers work
    /// and nix layers are refused.
    #[arg(long, env = "STOREFRONT_STORE", value_name = "URL")]
    store: Option<String>,

    /// Accept only store paths whose NarHash carries a signature by one of
    /// these keys (`name:base64`, as Nix's trusted-public-keys); repeat for
    /// more. Without any, what the store sends is checked only against its
    /// own digests.
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    trusted_public_keys: Vec<String>,
}

pub async fn run(args: SnapshotterArgs) -> anyhow::Result<()> {
    let fetcher: Option<Arc<dyn PathFetcher>> = match &args.store {
        Some(url) => {
            let keys = args
                .trusted_public_keys
                .iter()
                .map(|k| k.parse::<store::VerifyingKey>().with_context(|| format!("--trusted-public-key {k:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let fetcher = fetch::Fetcher::connect(url).with_context(|| format!("connecting to --store {url}"))?;
            Some(Arc::new(GrpcFetcher::new(fetcher.trusted_keys(keys))))
        }
        None => {
            tracing::warn!("no --store: nix layers will be refused");
            None
        }
    };
    let snapshotter = Snapshotter::open(&args.root, fetcher)
        .with_context(|| format!("opening the snapshotter state in {}", args.root.display()))?;
    snapshotter::serve(snapshotter, &args.socket, shutdown_signal()).await?;
    tracing::info!("snapshotter stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot listen for signals; stop the snapshotter with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
