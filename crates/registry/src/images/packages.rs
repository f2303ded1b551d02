//! Package-named images, Nixery style: `pkgs/shell/git/htop` is an image
//! of those packages, resolved through a package index that users load
//! (`storefront packages import FILE`, the output of
//! `nix-env -qaP --json --out-path`, or a plain `{"attr": "/nix/store/…"}`
//! map). Names are sorted and deduplicated before anything is built, so
//! `pkgs/htop/git` and `pkgs/git/htop` are one image.
use std::collections::BTreeSet;

use bytes::Bytes;
use castore::kv::{KvStore, Table};
use serde_json::Value;

use super::spec::ImageSpec;
use crate::error::RegistryError;

/// The package index: attribute name → JSON array of store paths.
const PACKAGES: Table = Table::named("oci-packages");
/// The repository prefix of package-named images.
pub const PREFIX: &str = "pkgs/";
/// The meta-package `shell`: a usable interactive shell. The first name of
/// each group that the index has is taken; a group with none is an error.
const SHELL: [&[&str]; 2] = [&["bashInteractive", "bash"], &["coreutils"]];
/// Added to `shell` when the index has them.
const SHELL_EXTRAS: [&str; 3] = ["moreutils", "nano", "less"];

/// Parses an index file and returns `(attribute, store paths)` pairs.
///
/// From `nix-env -qaP --json --out-path` each package contributes its
/// `meta.outputsToInstall` outputs when listed, else its default output
/// (`outputName`, else `out`) plus `bin` when there is one. A leading
/// `nixpkgs.` in attribute names is dropped (it names the channel).
pub fn parse_index(json: &[u8]) -> Result<Vec<(String, Vec<String>)>, RegistryError> {
    let bad = |m: String| super::invalid_spec(format!("package index: {m}"));
    let value: Value = serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(map) = value else { return Err(bad("not a JSON object".into())) };
    let mut out = Vec::with_capacity(map.len());
    for (attr, entry) in map {
        let attr = attr.strip_prefix("nixpkgs.").unwrap_or(&attr).to_owned();
        let paths: Vec<String> = match &entry {
            Value::String(p) => vec![p.clone()],
            Value::Array(a) => a
                .iter()
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("{attr}: a list of store paths must hold only strings")))?,
            Value::Object(o) => {
                outputs_to_install(o).ok_or_else(|| bad(format!("{attr}: no output paths (use --out-path)")))?
            }
            _ => return Err(bad(format!("{attr}: expected a store path, a list of them, or a nix-env entry"))),
        };
        if paths.is_empty() {
            return Err(bad(format!("{attr}: no store paths")));
        }
        out.push((attr, paths));
    }
    Ok(out)
}

fn outputs_to_install(entry: &serde_json::Map<String, Value>) -> Option<Vec<String>> {
    let outputs = entry.get("outputs")?.as_object()?;
    let path = |name: &str| outputs.get(name).and_then(Value::as_str).map(str::to_owned);
    let wanted: Vec<String> = match entry.get("meta").and_then(|m| m.get("outputsToInstall")).and_then(Value::as_array)
    {
        Some(list) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        None => {
            let default = entry.get("outputName").and_then(Value::as_str).unwrap_or("out").to_owned();
            let mut names = vec![default];
            if outputs.contains_key("bin") && names[0] != "bin" {
                names.insert(0, "bin".to_owned());
            }
            names
        }
    };
    let paths: Vec<String> = wanted.iter().filter_map(|n| path(n)).collect();
    (!paths.is_empty()).then_some(paths)
}

/// Stores (or replaces) index entries; returns how many.
pub async fn import(meta: &dyn KvStore, entries: Vec<(String, Vec<String>)>) -> Result<usize, RegistryError> {
    let n = entries.len();
    for (attr, paths) in entries {
        let value = serde_json::to_vec(&paths).expect("strings serialize");
        castore::kv::set(meta, PACKAGES, Bytes::from(attr), Some(value.into())).await?;
    }
    Ok(n)
}

async fn lookup(meta: &dyn KvStore, attr: &str) -> Result<Option<Vec<String>>, RegistryError> {
    match meta.get(PACKAGES, attr.as_bytes()).await? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| RegistryError::internal(format!("package index entry {attr} is unreadable: {e}"))),
        None => Ok(None),
    }
}

/// The image spec of a package-named repository (`name` without `pkgs/`):
/// every package's paths, linked into `/` too. Unknown names are
/// `MANIFEST_UNKNOWN` naming them.
pub async fn spec_for(meta: &dyn KvStore, name: &str) -> Result<ImageSpec, RegistryError> {
    let mut names: BTreeSet<&str> = name.split('/').filter(|n| !n.is_empty()).collect();
    let mut paths = BTreeSet::new();
    let mut unknown = Vec::new();
    if names.remove("shell") {
        for group in SHELL {
            let mut found = false;
            for attr in group {
                if let Some(p) = lookup(meta, attr).await? {
                    paths.extend(p);
                    found = true;
                    break;
                }
            }
            if !found {
                unknown.push(format!("shell (needs {})", group.join(" or ")));
            }
        }
        for attr in SHELL_EXTRAS {
            if let Some(p) = lookup(meta, attr).await? {
                paths.extend(p);
            }
        }
    }
    for attr in &names {
        match lookup(meta, attr).await? {
            Some(p) => paths.extend(p),
            None => unknown.push((*attr).to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(RegistryError::manifest_unknown(format!(
            "unknown package{}: {} (load packages with `storefront packages import`)",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        )));
    }
    if paths.is_empty() {
        return Err(RegistryError::manifest_unknown(format!("{PREFIX}{name} names no package")));
    }
    let paths: Vec<String> = paths.into_iter().collect();
    Ok(ImageSpec { copy_to_root: paths.clone(), paths, ..ImageSpec::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_env_output_is_understood() {
        let json = br#"{
            "nixpkgs.hello": {"name": "hello-2.12", "outputName": "out", "outputs": {"out": "/nix/store/aaaa-hello-2.12"}},
            "nixpkgs.openssl": {"name": "openssl-3", "outputName": "out",
                "outputs": {"bin": "/nix/store/bbbb-openssl-3-bin", "out": "/nix/store/cccc-openssl-3", "dev": "/nix/store/dddd-openssl-3-dev"}},
            "curl": {"outputs": {"bin": "/nix/store/eeee-curl-bin", "man": "/nix/store/ffff-curl-man"},
                "meta": {"outputsToInstall": ["bin", "man"]}},
            "plain": "/nix/store/gggg-plain",
            "several": ["/nix/store/hhhh-a", "/nix/store/iiii-b"]
        }"#;
        let mut parsed = parse_index(json).unwrap();
        parsed.sort();
        assert_eq!(
            parsed,
            vec![
                ("curl".into(), vec!["/nix/store/eeee-curl-bin".into(), "/nix/store/ffff-curl-man".into()]),
                ("hello".into(), vec!["/nix/store/aaaa-hello-2.12".into()]),
                ("openssl".into(), vec!["/nix/store/bbbb-openssl-3-bin".into(), "/nix/store/cccc-openssl-3".into()]),
                ("plain".into(), vec!["/nix/store/gggg-plain".into()]),
                ("several".into(), vec!["/nix/store/hhhh-a".into(), "/nix/store/iiii-b".into()]),
            ]
        );
        assert!(parse_index(b"[1]").is_err());
        assert!(parse_index(br#"{"x": {"name": "no outputs"}}"#).is_err());
        assert!(parse_index(br#"{"x": 3}"#).is_err());
    }

    #[tokio::test]
    async fn names_resolve_sorted_and_unknown_ones_are_named() {
        let kv = castore::kv::MemoryStore::new();
        let index = br#"{"git": "/nix/store/aaaa-git", "htop": "/nix/store/bbbb-htop",
            "bash": "/nix/store/cccc-bash", "coreutils": "/nix/store/dddd-coreutils"}"#;
        assert_eq!(import(&kv, parse_index(index).unwrap()).await.unwrap(), 4);
        let a = spec_for(&kv, "git/htop").await.unwrap();
        let b = spec_for(&kv, "htop/git/htop").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.paths, vec!["/nix/store/aaaa-git", "/nix/store/bbbb-htop"]);
        assert_eq!(a.copy_to_root, a.paths);
        let shell = spec_for(&kv, "shell/git").await.unwrap();
        assert_eq!(shell.paths, vec!["/nix/store/aaaa-git", "/nix/store/cccc-bash", "/nix/store/dddd-coreutils"]);
        let err = spec_for(&kv, "git/nosuch/other").await.unwrap_err().to_string();
        assert!(err.contains("nosuch") && err.contains("other"), "{err}");
    }
}
