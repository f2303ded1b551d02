//! The host's Nix: which paths it knows, registering fetched paths with it,
//! and GC roots — through `nix-store`, so whatever Nix keeps in its
//! database stays its own business.
//!
//! - [`HostNix::valid`]: `nix-store --check-validity --print-invalid`.
//! - [`register_with_nix`]: `nix-store --register-validity --hash-given`,
//!   which takes on standard input, per path: the path, its NarHash
//!   (`sha256:<base16>`; Nix 2.8 parses any encoding after the algorithm),
//!   its NarSize, its deriver (an empty line for none), the number of
//!   references and one reference a line. References must be valid already
//!   or in the same batch; Nix registers the batch in one transaction and
//!   leaves paths that are valid already alone. It does not hash the paths
//!   (`--hash-given`): the fetcher checked every NarHash on disk.
//!   Signatures and content addresses cannot be given this way, so Nix
//!   records neither.
//! - [`HostNix::add_root`]: `nix-store --realise PATH --add-root LINK`: a
//!   symlink LINK → PATH registered as an indirect root
//!   (`/nix/var/nix/gcroots/auto/…` → LINK), which `nix-store --gc
//!   --print-roots` lists and the GC honours while LINK exists.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Stdio,
};

use store::{NixHash, PathInfo, StorePath, pathinfo::references_first};
use tokio::io::AsyncWriteExt;

use crate::FetchError;

/// Store paths per `nix-store --check-validity` call, to keep command lines short.
const CHECK_BATCH: usize = 500;

/// The host's Nix store at a store directory, driven through `nix-store`.
#[derive(Clone, Debug)]
pub struct HostNix {
    store_dir: String,
    nix_store: PathBuf,
}

impl HostNix {
    /// The host Nix store at `store_dir`, with `nix-store` found on `PATH`.
    pub fn new(store_dir: impl Into<String>) -> Result<Self, FetchError> {
        let nix_store = find_on_path("nix-store").ok_or_else(|| {
            FetchError::Usage("`nix-store` is not on PATH: registering paths with the host Nix needs it".into())
        })?;
        Ok(Self::with_nix_store(store_dir, nix_store))
    }

    /// The host Nix store at `store_dir`, driven by the `nix-store` at `nix_store`.
    pub fn with_nix_store(store_dir: impl Into<String>, nix_store: PathBuf) -> Self {
        Self { store_dir: store_dir.into(), nix_store }
    }

    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    /// Which of `paths` Nix knows as valid.
    pub async fn valid(&self, paths: &[StorePath]) -> Result<HashSet<StorePath>, FetchError> {
        let mut valid: HashSet<StorePath> = paths.iter().cloned().collect();
        for batch in paths.chunks(CHECK_BATCH) {
            let args: Vec<String> = batch.iter().map(|p| p.to_absolute(&self.store_dir)).collect();
            let out = self.run(&["--check-validity", "--print-invalid"], &args, None).await?;
            for line in out.lines().filter(|l| !l.is_empty()) {
                let invalid = StorePath::from_absolute(line, &self.store_dir).map_err(|e| FetchError::Nix {
                    command: "nix-store --check-validity".into(),
                    message: format!("printed {line:?}, not a store path: {e}"),
                })?;
                valid.remove(&invalid);
            }
        }
        Ok(valid)
    }

    /// Makes `link` a symlink to `path` (which must be valid) and a GC root.
    pub async fn add_root(&self, link: &Path, path: &StorePath) -> Result<(), FetchError> {
        let link = std::path::absolute(link).map_err(|e| FetchError::io(format!("{}", link.display()), e))?;
        let args = [path.to_absolute(&self.store_dir), "--add-root".into(), link.display().to_string()];
        self.run(&["--realise"], &args, None).await?;
        Ok(())
    }

    /// Runs `nix-store FLAGS ARGS` with `input` on standard input; its
    /// standard output, or its standard error in the error.
    async fn run(&self, flags: &[&str], args: &[String], input: Option<String>) -> Result<String, FetchError> {
        let command = format!("nix-store {}", flags.join(" "));
        let mut cmd = tokio::process::Command::new(&self.nix_store);
        cmd.args(flags)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child =
            cmd.spawn().map_err(|e| FetchError::Nix { command: command.clone(), message: e.to_string() })?;
        let stdin = child.stdin.take();
        // Fed while its output is read, so neither side waits on a full pipe.
        let feed = async move {
            if let (Some(mut stdin), Some(text)) = (stdin, input) {
                stdin.write_all(text.as_bytes()).await?;
                stdin.shutdown().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (fed, out) = tokio::join!(feed, child.wait_with_output());
        let out = out.map_err(|e| FetchError::Nix { command: command.clone(), message: e.to_string() })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !out.status.success() {
            return Err(FetchError::Nix { command, message: format!("{}: {stderr}", out.status) });
        }
        if let Err(e) = fed {
            return Err(FetchError::Nix { command, message: format!("writing its input: {e}; {stderr}") });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Registers `infos` (paths in the host store, complete and checked) with
/// the host Nix, references first, in one transaction; paths valid already
/// are left as they are.
pub async fn register_with_nix(nix: &HostNix, infos: &[PathInfo]) -> Result<(), FetchError> {
    if infos.is_empty() {
        return Ok(());
    }
    let ordered = references_first(infos.to_vec());
    nix.run(&["--register-validity", "--hash-given"], &[], Some(registration(&ordered, nix.store_dir()))).await?;
    Ok(())
}

/// The input `nix-store --register-validity --hash-given` reads.
fn registration(infos: &[PathInfo], store_dir: &str) -> String {
    let mut text = String::new();
    for info in infos {
        let mut refs: Vec<String> = info.references.iter().map(|r| r.to_absolute(store_dir)).collect();
        refs.sort_unstable();
        refs.dedup();
        text.push_str(&info.store_path.to_absolute(store_dir));
        text.push('\n');
        text.push_str(&NixHash::sha256(info.nar_sha256).to_base16_string());
        text.push('\n');
        text.push_str(&format!("{}\n", info.nar_size));
        if let Some(d) = &info.deriver {
            text.push_str(&d.to_absolute(store_dir));
        }
        text.push('\n');
        text.push_str(&format!("{}\n", refs.len()));
        for r in refs {
            text.push_str(&r);
            text.push('\n');
        }
    }
    text
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    use castore::Node;

    use super::*;

    #[test]
    fn registration_lists_hash_size_deriver_and_references() {
        let p = |b: u8, n: &str| StorePath::from_parts([b; 20], n).unwrap();
        let info = PathInfo {
            store_path: p(1, "app"),
            node: Node::Symlink { target: "x".into() },
            references: vec![p(2, "lib"), p(1, "app"), p(2, "lib")],
            nar_size: 4242,
            nar_sha256: [0xab; 32],
            signatures: vec![],
            deriver: Some(p(3, "app.drv")),
            ca: None,
        };
        let leaf = PathInfo { store_path: p(2, "lib"), references: vec![], deriver: None, ..info.clone() };
        let text = registration(&[leaf, info.clone()], "/nix/store");
        let lines: Vec<&str> = text.lines().collect();
        let (app, lib, drv) = (p(1, "app"), p(2, "lib"), p(3, "app.drv"));
        let abs = |s: &StorePath| s.to_absolute("/nix/store");
        let hash = format!("sha256:{}", "ab".repeat(32));
        let (a, l, d) = (abs(&app), abs(&lib), abs(&drv));
        let mut refs = [a.as_str(), l.as_str()];
        refs.sort();
        let want = [l.as_str(), &hash, "4242", "", "0", &a, &hash, "4242", &d, "2", refs[0], refs[1]];
        assert_eq!(lines, want);
    }
}
