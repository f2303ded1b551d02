//! The local Nix store: which store path a command-line argument means, and
//! the metadata Nix keeps for a closure (`nix path-info --json --recursive`).
use std::{
    collections::{BTreeMap, HashSet},
    path::{Component, Path, PathBuf},
    process::Stdio,
};

use serde_json::Value;

use super::{ImportError, PathMeta};
use crate::{ContentAddress, DEFAULT_STORE_DIR, HashAlgo, NixHash, StorePath, signing::Signature};

/// Store paths per `nix path-info` call (keeps the argument list far below
/// the kernel's limit; closures of the batches overlap and are merged).
const BATCH: usize = 2000;
/// Symlinks followed while resolving one argument before giving up.
const MAX_SYMLINKS: usize = 40;

/// How to ask the local Nix installation about its store.
#[derive(Clone, Debug)]
pub struct LocalStore {
    /// The store directory store paths are spelled with (`/nix/store`).
    pub store_dir: String,
    /// The `nix` executable.
    pub nix: PathBuf,
    /// `--store URI` for `nix` (default: what Nix is configured with).
    pub nix_store_uri: Option<String>,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self { store_dir: DEFAULT_STORE_DIR.to_owned(), nix: PathBuf::from("nix"), nix_store_uri: None }
    }
}

impl LocalStore {
    /// The local store with store directory `store_dir`. For a store
    /// directory other than `/nix/store`, `nix` is run with
    /// `NIX_STORE_DIR=store_dir` (unless the environment already sets it);
    /// its database is found as Nix finds it (`NIX_STATE_DIR`, or
    /// [`LocalStore::nix_store_uri`]).
    pub fn new(store_dir: &str) -> Result<Self, ImportError> {
        crate::store_path::validate_store_dir(store_dir).map_err(|e| ImportError::Usage(e.to_string()))?;
        Ok(Self { store_dir: store_dir.to_owned(), ..Self::default() })
    }

    /// The store path an argument names: a store path, a path inside one
    /// (`/nix/store/…-hello/bin/hello`), or a symlink leading into the store
    /// such as a GC root (`./result`), resolved one link at a time so that a
    /// symlink *inside* a store path does not lead elsewhere.
    pub fn resolve(&self, arg: &Path) -> Result<StorePath, ImportError> {
        let fail = |reason: String| ImportError::Resolve { path: arg.display().to_string(), reason };
        let store_dir = Path::new(&self.store_dir);
        let start = if arg.is_absolute() {
            arg.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| fail(format!("current directory: {e}")))?.join(arg)
        };
        // `cur` holds no symlinks (except within the store directory's own
        // spelling, which is taken as given); `todo` is what is left to walk.
        let mut cur = PathBuf::from("/");
        let mut todo: Vec<PathBuf> = components_rev(&start);
        let mut links = 0;
        while let Some(part) = todo.pop() {
            if part.as_os_str() == ".." {
                cur.pop();
                continue;
            }
            cur.push(&part);
            if let Ok(rest) = cur.strip_prefix(store_dir) {
                if rest.as_os_str().is_empty() {
                    continue;
                }
                let base = rest.to_str().ok_or_else(|| fail("the store path name is not UTF-8".into()))?;
                return StorePath::from_basename(base).map_err(|e| fail(e.to_string()));
            }
            if store_dir.starts_with(&cur) {
                continue; // a parent of the store directory: not resolved
            }
            let meta = std::fs::symlink_metadata(&cur).map_err(|e| fail(format!("{}: {e}", cur.display())))?;
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(fail("too many levels of symbolic links".into()));
                }
                let target = std::fs::read_link(&cur).map_err(|e| fail(format!("{}: {e}", cur.display())))?;
                cur.pop();
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                todo.extend(components_rev(&target));
            }
        }
        Err(fail(format!("not inside the store directory {}", self.store_dir)))
    }

    /// Metadata of every path in the closures of `paths` (each path and
    /// everything it references, recursively), from the local Nix database.
    /// A path that is not valid there is an error naming it.
    pub async fn closure(&self, paths: &[StorePath]) -> Result<Vec<PathMeta>, ImportError> {
        let mut all: BTreeMap<StorePath, PathMeta> = BTreeMap::new();
        for batch in paths.chunks(BATCH) {
            let batch: Vec<&StorePath> = batch.iter().filter(|p| !all.contains_key(*p)).collect();
            if batch.is_empty() {
                continue;
            }
            let json = match self.path_info(&batch, true).await {
                Ok(json) => json,
                Err(e) => {
                    // Name the invalid paths if that is what went wrong.
                    let invalid = self.invalid(&batch).await?;
                    if !invalid.is_empty() {
                        return Err(ImportError::NotValid { paths: invalid, store_dir: self.store_dir.clone() });
                    }
                    return Err(e);
                }
            };
            for meta in parse_path_info(&json, &self.store_dir)? {
                match meta {
                    Entry::Valid(meta) => {
                        all.insert(meta.path.clone(), *meta);
                    }
                    Entry::Invalid(path) => {
                        return Err(ImportError::NotValid {
                            paths: vec![path.to_absolute(&self.store_dir)],
                            store_dir: self.store_dir.clone(),
                        });
                    }
                }
            }
        }
        let missing: Vec<String> =
            paths.iter().filter(|p| !all.contains_key(*p)).map(|p| p.to_absolute(&self.store_dir)).collect();
        if !missing.is_empty() {
            return Err(ImportError::NotValid { paths: missing, store_dir: self.store_dir.clone() });
        }
        Ok(all.into_values().collect())
    }

    /// Which of `paths` the local store does not know (one call, no closure).
    async fn invalid(&self, paths: &[&StorePath]) -> Result<Vec<String>, ImportError> {
        let json = self.path_info(paths, false).await?;
        let mut valid = HashSet::new();
        let mut invalid = Vec::new();
        for entry in parse_path_info(&json, &self.store_dir)? {
            match entry {
                Entry::Valid(meta) => valid.insert(meta.path),
                Entry::Invalid(path) => {
                    invalid.push(path.to_absolute(&self.store_dir));
                    true
                }
            };
        }
        Ok(invalid)
    }

    async fn path_info(&self, paths: &[&StorePath], recursive: bool) -> Result<Value, ImportError> {
        let mut cmd = std::process::Command::new(&self.nix);
        cmd.args(["--extra-experimental-features", "nix-command", "path-info", "--json", "--offline"]);
        if recursive {
            cmd.arg("--recursive");
        }
        if let Some(uri) = &self.nix_store_uri {
            cmd.arg("--store").arg(uri);
        }
        if self.store_dir != DEFAULT_STORE_DIR && std::env::var_os("NIX_STORE_DIR").is_none() {
            cmd.env("NIX_STORE_DIR", &self.store_dir);
        }
        cmd.arg("--");
        cmd.args(paths.iter().map(|p| p.to_absolute(&self.store_dir)));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let describe = || {
            let first = paths.first().map(|p| p.to_absolute(&self.store_dir)).unwrap_or_default();
            let more = if paths.len() > 1 { format!(" and {} more", paths.len() - 1) } else { String::new() };
            format!(
                "{} path-info --json{} {first}{more}",
                self.nix.display(),
                if recursive { " --recursive" } else { "" }
            )
        };
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| ImportError::Nix { command: describe(), message: e.to_string() })?
            .map_err(|e| ImportError::Nix {
                command: describe(),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    format!("{} not found: is Nix installed and on PATH?", self.nix.display())
                } else {
                    e.to_string()
                },
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("warning:"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ImportError::Nix { command: describe(), message: format!("{}: {message}", out.status) });
        }
        serde_json::from_slice(&out.stdout).map_err(|e| ImportError::Metadata(format!("{}: {e}", describe())))
    }
}

/// Components of a path, last first (so `pop` walks from the root).
fn components_rev(p: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(PathBuf::from(s)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

/// One record of `nix path-info --json` output.
#[derive(Debug)]
pub(crate) enum Entry {
    Valid(Box<PathMeta>),
    Invalid(StorePath),
}

/// Parses `nix path-info --json` output of any Nix version: an array of
/// objects with a `path` (Nix ≤ 2.18, `{"path":…,"valid":false}` for an
/// invalid path) or an object keyed by path (newer; `null` for an invalid
/// path). Hashes may be spelled `sha256:<nix32>`, SRI, or as an object with
/// `algorithm` and `hash`; paths absolute or as basenames; `ca` a string or
/// an object with `method` and `hash`.
pub(crate) fn parse_path_info(json: &Value, store_dir: &str) -> Result<Vec<Entry>, ImportError> {
    let bad = |what: String| ImportError::Metadata(format!("nix path-info --json: {what}"));
    let records: Vec<(String, &Value)> = match json {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let path = item.get("path").and_then(Value::as_str).ok_or_else(|| bad(format!("no path in {item}")))?;
                Ok((path.to_owned(), item))
            })
            .collect::<Result<_, ImportError>>()?,
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        other => return Err(bad(format!("expected an array or an object, got {other}"))),
    };
    records
        .into_iter()
        .map(|(path, v)| {
            let store_path = parse_path(&path, store_dir).map_err(bad)?;
            // Some versions nest the fields one level down.
            let v = v.get("info").filter(|i| i.is_object()).unwrap_or(v);
            if v.is_null() || v.get("valid").and_then(Value::as_bool) == Some(false) {
                return Ok(Entry::Invalid(store_path));
            }
            parse_record(store_path, v, store_dir)
                .map(|m| Entry::Valid(Box::new(m)))
                .map_err(|e| bad(format!("{path}: {e}")))
        })
        .collect()
}

fn parse_record(path: StorePath, v: &Value, store_dir: &str) -> Result<PathMeta, String> {
    let nar_hash = parse_hash(v.get("narHash").ok_or("no narHash")?)?;
    let nar_sha256 = nar_hash.as_sha256().ok_or_else(|| format!("narHash {nar_hash} is not sha256"))?;
    let nar_size = v.get("narSize").and_then(Value::as_u64).ok_or("no narSize")?;
    let references = match v.get("references") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(refs)) => refs
            .iter()
            .map(|r| {
                r.as_str()
                    .ok_or_else(|| format!("reference {r} is not a string"))
                    .and_then(|r| parse_path(r, store_dir))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("references: expected an array, got {other}")),
    };
    let deriver = match v.get("deriver") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.is_empty() || d == "unknown-deriver" => None,
        Some(Value::String(d)) => Some(parse_path(d, store_dir)?),
        Some(other) => return Err(format!("deriver: expected a string, got {other}")),
    };
    let signatures = match v.get("signatures") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(sigs)) => sigs
            .iter()
            .map(|s| {
                let s = s.as_str().ok_or_else(|| format!("signature {s} is not a string"))?;
                s.parse::<Signature>().map_err(|e| format!("signature {s:?}: {e}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("signatures: expected an array, got {other}")),
    };
    let ca = match v.get("ca") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.parse::<ContentAddress>().map_err(|e| e.to_string())?),
        Some(obj @ Value::Object(_)) => Some(parse_ca_object(obj)?),
        Some(other) => return Err(format!("ca: unexpected {other}")),
    };
    Ok(PathMeta { path, nar_sha256, nar_size, references, deriver, signatures, ca })
}

/// A store path, absolute (in `store_dir`) or as a basename.
fn parse_path(s: &str, store_dir: &str) -> Result<StorePath, String> {
    if s.starts_with('/') { StorePath::from_absolute(s, store_dir) } else { StorePath::from_basename(s) }
        .map_err(|e| e.to_string())
}

/// A hash as a string in any Nix spelling, or `{"algorithm": …, "hash": …}`.
fn parse_hash(v: &Value) -> Result<NixHash, String> {
    match v {
        Value::String(s) => NixHash::parse(s).map_err(|e| e.to_string()),
        Value::Object(o) => {
            let algo = o.get("algorithm").or_else(|| o.get("algo")).and_then(Value::as_str);
            let hash = o.get("hash").and_then(Value::as_str).ok_or_else(|| format!("hash object without hash: {v}"))?;
            match algo {
                Some(algo) => {
                    let algo: HashAlgo = algo.parse().map_err(|e: crate::HashError| e.to_string())?;
                    NixHash::parse_with_algo(hash, algo).or_else(|_| NixHash::parse(hash)).map_err(|e| e.to_string())
                }
                None => NixHash::parse(hash).map_err(|e| e.to_string()),
            }
        }
        other => Err(format!("expected a hash, got {other}")),
    }
}

/// `{"method": "nar"|"flat"|"text", "hash": …}` (newer Nix).
fn parse_ca_object(v: &Value) -> Result<ContentAddress, String> {
    let method = v.get("method").and_then(Value::as_str).ok_or_else(|| format!("ca without method: {v}"))?;
    let hash = parse_hash(v.get("hash").ok_or_else(|| format!("ca without hash: {v}"))?)?;
    let text = match method {
        "nar" => format!("fixed:r:{hash}"),
        "flat" => format!("fixed:{hash}"),
        "text" => format!("text:{hash}"),
        other => return Err(format!("content-addressing method {other:?} is not supported")),
    };
    text.parse().map_err(|e: crate::CaError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "kd8bsvyglhcjw0yxz3g8p9fzgzfn5fdb-a";
    const B: &str = "f7nsd1ldn7crysgja7lsf1v3va0c3v06-b";
    const DRV: &str = "0i06ry3zn2svzl3w9g13qbprb3m5067c-b.drv";

    fn valid(entries: Vec<Entry>) -> Vec<PathMeta> {
        entries
            .into_iter()
            .map(|e| match e {
                Entry::Valid(m) => *m,
                Entry::Invalid(p) => panic!("{p} invalid"),
            })
            .collect()
    }

    /// Nix 2.8 (the array form, SRI hashes, absolute paths).
    #[test]
    fn parses_the_array_form() {
        let json: Value = serde_json::from_str(&format!(
            r#"[{{"path":"/nix/store/{B}","narHash":"sha256-Te3aYUlwG+AsPRaI7mGYhc4QQkgWPrHmWPxn3vioBVw=","narSize":560,
                 "references":["/nix/store/{A}"],"deriver":"/nix/store/{DRV}","registrationTime":1795882144,"ultimate":true,
                 "signatures":["cache.example-1:{sig}"]}},
               {{"path":"/nix/store/hi8igg04hbqfaz6bzrwvs717d98zkvzl-f.txt","narHash":"sha256-0nPrxFAmJBmH/vtvtW4ktrocvlOswGN32GPe6QU0WgU=",
                 "narSize":136,"references":[],"ca":"fixed:r:sha1:sj2cbsz2flynk674qw8nl0i1py8c6x85"}},
               {{"path":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x","valid":false}}]"#,
            sig = data_encoding::BASE64.encode(&[7; 64])
        ))
        .unwrap();
        let mut entries = parse_path_info(&json, "/nix/store").unwrap();
        assert!(
            matches!(entries.pop(), Some(Entry::Invalid(p)) if p.to_string() == "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x")
        );
        let metas = valid(entries);
        assert_eq!(metas[0].path.to_string(), B);
        assert_eq!(metas[0].nar_size, 560);
        assert_eq!(
            NixHash::sha256(metas[0].nar_sha256).to_sri(),
            "sha256-Te3aYUlwG+AsPRaI7mGYhc4QQkgWPrHmWPxn3vioBVw="
        );
        assert_eq!(metas[0].references.iter().map(ToString::to_string).collect::<Vec<_>>(), [A]);
        assert_eq!(metas[0].deriver.as_ref().unwrap().to_string(), DRV);
        assert_eq!(metas[0].signatures[0].name, "cache.example-1");
        assert_eq!(metas[1].ca.unwrap().to_string(), "fixed:r:sha1:sj2cbsz2flynk674qw8nl0i1py8c6x85");
    }

    /// Newer Nix: an object keyed by path, `null` for invalid paths, nix32
    /// or structured hashes, basenames, a structured CA.
    #[test]
    fn parses_the_object_form() {
        let json: Value = serde_json::from_str(&format!(
            r#"{{"/nix/store/{B}":{{"narHash":"sha256:0s2k8a0yaf3wvkz4hmf5abj1nw7kdm6n2f23v2vlrma9xz6qryvn","narSize":560,
                  "references":["{A}"],"deriver":"{DRV}","signatures":[],"ca":null}},
                "/nix/store/{A}":{{"narHash":{{"algorithm":"sha256","format":"base16",
                  "hash":"5964cb3c2e1a4327e7886926a0b8f34f5523f0f8d40074764e38a8b8a4592c3d"}},"narSize":648,"references":[],
                  "ca":{{"method":"nar","hash":"sha256-Te3aYUlwG+AsPRaI7mGYhc4QQkgWPrHmWPxn3vioBVw="}}}},
                "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x":null}}"#
        ))
        .unwrap();
        let entries = parse_path_info(&json, "/nix/store").unwrap();
        assert_eq!(entries.iter().filter(|e| matches!(e, Entry::Invalid(_))).count(), 1);
        let metas = valid(entries.into_iter().filter(|e| matches!(e, Entry::Valid(_))).collect());
        let b = metas.iter().find(|m| m.path.to_string() == B).unwrap();
        assert_eq!(b.references[0].to_string(), A);
        assert_eq!(b.deriver.as_ref().unwrap().to_string(), DRV);
        let a = metas.iter().find(|m| m.path.to_string() == A).unwrap();
        assert_eq!(a.nar_sha256[0], 0x59);
        assert_eq!(
            a.ca.unwrap().to_string(),
            format!("fixed:r:{}", NixHash::parse("sha256-Te3aYUlwG+AsPRaI7mGYhc4QQkgWPrHmWPxn3vioBVw=").unwrap())
        );
    }

    #[test]
    fn other_store_dirs_and_bad_records() {
        let json: Value = serde_json::from_str(&format!(
            r#"[{{"path":"/gnu/store/{A}","narHash":"sha256-Te3aYUlwG+AsPRaI7mGYhc4QQkgWPrHmWPxn3vioBVw=","narSize":1,"references":["/gnu/store/{A}"]}}]"#
        ))
        .unwrap();
        let metas = valid(parse_path_info(&json, "/gnu/store").unwrap());
        assert_eq!(metas[0].references, [metas[0].path.clone()]);
        let err = parse_path_info(&json, "/nix/store").unwrap_err().to_string();
        assert!(err.contains("not inside the store directory"), "{err}");
        for bad in
            [r#"[{"narHash":"x"}]"#, r#"[{"path":"/nix/store/kd8bsvyglhcjw0yxz3g8p9fzgzfn5fdb-a","narSize":3}]"#, "3"]
        {
            assert!(parse_path_info(&serde_json::from_str(bad).unwrap(), "/nix/store").is_err(), "{bad}");
        }
    }

    #[test]
    fn resolves_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let sp = store.join(A);
        std::fs::create_dir_all(sp.join("bin")).unwrap();
        std::fs::create_dir_all(store.join(B)).unwrap();
        // A symlink inside a store path to another store path must not be followed.
        std::os::unix::fs::symlink(store.join(B), sp.join("other")).unwrap();
        std::os::unix::fs::symlink(&sp, tmp.path().join("result")).unwrap();
        std::os::unix::fs::symlink("result", tmp.path().join("result2")).unwrap();
        let local = LocalStore::new(store.to_str().unwrap()).unwrap();
        for arg in [
            sp.clone(),
            sp.join("bin/x"),
            sp.join("other/y"),
            tmp.path().join("result"),
            tmp.path().join("result2/bin"),
            tmp.path().join("result/../result/other"),
        ] {
            assert_eq!(local.resolve(&arg).unwrap().to_string(), A, "{}", arg.display());
        }
        let made_up = store.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x");
        assert_eq!(local.resolve(&made_up).unwrap().to_string(), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x");
        assert!(local.resolve(tmp.path()).is_err());
        assert!(local.resolve(&store).is_err());
        assert!(local.resolve(&store.join("not-a-store-path")).is_err());
    }
}
