//! `storefront image` and `storefront packages`: clients of the server's
//! `/storefront/v1/` API (the registry's image specs and package index).
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::auth;

/// Where the server is and how to authenticate to it.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The storefront server (https:// trusts the system's CAs, or those
    /// in the file $SSL_CERT_FILE names).
    #[arg(long, env = "STOREFRONT_SERVER", default_value = "http://127.0.0.1:8000")]
    server: url::Url,
    /// A file of write tokens (as `serve --write-token-file`); the first is
    /// sent. Default: $STOREFRONT_TOKEN, else the token file `serve`
    /// creates in its default data directory, when readable.
    #[arg(long, env = "STOREFRONT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Define (or redefine) an image from store paths: served as NAME:TAG
    /// (layered, for any client) and nix-snapshotter/NAME:TAG.
    Add(Box<AddArgs>),
    /// List the images defined on the server.
    List(ServerArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// NAME[:TAG] (tag default: latest).
    reference: String,
    /// Store paths (or links to them, like ./result) whose closure is the image.
    #[arg(long = "path", required = true, num_args = 1..)]
    paths: Vec<String>,
    /// Store paths whose trees are also linked into / (/bin/…, /etc/…).
    #[arg(long, num_args = 1..)]
    copy_to_root: Vec<String>,
    /// The entrypoint; repeat for each argument (`--entrypoint sh --entrypoint -c`).
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Option<Vec<String>>,
    /// The default command; repeat for each argument.
    #[arg(long, allow_hyphen_values = true)]
    cmd: Option<Vec<String>>,
    /// KEY=VALUE environment entries.
    #[arg(long, num_args = 1..)]
    env: Vec<String>,
    #[arg(long)]
    workdir: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// OCI architecture.
    #[arg(long, default_value = "amd64")]
    arch: String,
    /// Compress the layered image's store-path layers (kept in castore once
    /// made); default: uncompressed, rendered on each pull, nothing stored.
    #[arg(long, value_parser = ["gzip", "zstd"])]
    layer_compression: Option<String>,
    /// The store directory the paths are in.
    #[arg(long, env = "NIX_STORE_DIR", default_value = store::DEFAULT_STORE_DIR)]
    store_dir: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum PackagesCommand {
    /// Load a package index (`nix-env -qaP --json --out-path` output, or a
    /// JSON map of attribute → store path(s)) for `pkgs/…` image names.
    Import {
        /// The index file, or - for standard input.
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run_image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Add(args) => add(*args).await,
        ImageCommand::List(server) => {
            let list = call(&server, reqwest::Method::GET, "storefront/v1/images", None).await?;
            for entry in list.as_array().into_iter().flatten() {
                let spec = &entry["spec"];
                println!(
                    "{}:{}\t{}",
                    entry["name"].as_str().unwrap_or("?"),
                    entry["tag"].as_str().unwrap_or("?"),
                    spec["paths"].as_array().map(|p| p.len()).unwrap_or(0).to_string() + " path(s)"
                );
            }
            Ok(())
        }
    }
}

pub async fn run_packages(cmd: PackagesCommand) -> anyhow::Result<()> {
    let PackagesCommand::Import { file, server } = cmd;
    let body = if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading standard input")?;
        buf
    } else {
        std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
    };
    let answer = call(&server, reqwest::Method::POST, "storefront/v1/packages", Some(body)).await?;
    println!("imported {} package(s)", answer["imported"]);
    Ok(())
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let resolve = |list: &[String]| -> anyhow::Result<Vec<String>> {
        list.iter().map(|p| resolve_store_path(p, &args.store_dir)).collect()
    };
    let spec = json!({
        "paths": resolve(&args.paths)?,
        "copy_to_root": resolve(&args.copy_to_root)?,
        "entrypoint": args.entrypoint,
        "cmd": args.cmd,
        "env": args.env,
        "workdir": args.workdir,
        "user": args.user,
        "arch": args.arch,
        "layer_compression": args.layer_compression,
    });
    let spec = strip_nulls(spec);
    let (name, tag) = registry::images::split_reference(&args.reference);
    let path = format!("storefront/v1/images/{name}:{tag}");
    let answer = call(&args.server, reqwest::Method::PUT, &path, Some(serde_json::to_vec(&spec)?)).await?;
    let host = args.server.server.host_str().unwrap_or("localhost").to_owned();
    let host = match args.server.server.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    for image in answer["images"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {host}/{}  ({})",
            image["flavour"].as_str().unwrap_or("?"),
            image["reference"].as_str().unwrap_or("?"),
            image["digest"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// A store path as given, or the store path a link (like `./result`) or a
/// path inside one points into.
fn resolve_store_path(arg: &str, store_dir: &str) -> anyhow::Result<String> {
    if arg.starts_with(&format!("{store_dir}/")) {
        return Ok(arg.to_owned());
    }
    let real = std::fs::canonicalize(arg).with_context(|| format!("{arg}: not a store path, and it does not exist"))?;
    let real = real.to_string_lossy();
    match store::StorePath::from_absolute_prefix(&real, store_dir) {
        Ok((path, _)) => Ok(path.to_absolute(store_dir)),
        Err(_) => bail!("{arg} resolves to {real}, which is not in the store {store_dir}"),
    }
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        v => v,
    }
}

/// One API call; a refusal becomes an error with the server's message.
async fn call(
    server: &ServerArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Value> {
    let url = server.server.join(path).with_context(|| format!("{}: not a base URL", server.server))?;
    // Trusts the bundled Mozilla roots plus the system's, or the
    // certificates in $SSL_CERT_FILE: a server with a private CA works.
    let client = reqwest::Client::builder().build().context("setting up the HTTP client")?;
    let mut req = client.request(method, url.clone());
    if let Some(token) = auth::client_token(server.token_file.as_deref())? {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach the server at {}", server.server))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the server's answer")?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if !status.is_success() {
        let message = value["error"].as_str().map(str::to_owned).unwrap_or_else(|| text.trim().to_owned());
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "{url}: {status}: {message}\n(give the server's write token with --token-file FILE or STOREFRONT_TOKEN)"
            );
        }
        bail!("{url}: {status}: {message}");
    }
    Ok(value)
}
