//! Closure-info paths against the real Nix: the path, NarHash, NarSize,
//! references and CA that `nix store make-content-addressed` gives a
//! derivation output with the same `store-paths` file and references; the
//! no-reference case against `nix-store --add` and `--add-fixed
//! --recursive sha256`; the NAR byte for byte against `nix-store --dump`;
//! `compress_hash` against `nix-hash --truncate`. Then storing: the closure
//! must be present, and storing twice changes nothing.
mod nix_cli;

use std::sync::Arc;

use bytes::Bytes;
use castore::{BlobService, DirectoryService, Error, Node};
use futures::TryStreamExt;
use nix_cli::{make_paths, nonce, path_info, run, store_dir};
use sha2::{Digest, Sha256};
use store::{
    ContentAddress, NixHash, PathInfo, PathInfoService, StorePath,
    closure_info::{closure_info, put_closure_info, store_paths_file},
    nar,
    store_path::{compress_hash, make_source_path},
    url::path_info_service_from_url,
};

struct Stores {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    paths: Arc<dyn PathInfoService>,
}

fn memory() -> Stores {
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
    Stores { blobs, dirs, paths }
}

fn json_paths(v: &serde_json::Value, dir: &str) -> Vec<StorePath> {
    v.as_array().unwrap().iter().map(|r| StorePath::from_absolute(r.as_str().unwrap(), dir).unwrap()).collect()
}

/// Copies a path of the local Nix store (its NAR and what `nix path-info`
/// says) into `stores`; its references must be there already.
async fn import(stores: &Stores, path: &str) {
    let dir = store_dir(path);
    let bytes = dump(path);
    let ingested = nar::ingest(&mut &bytes[..], &*stores.blobs, &*stores.dirs).await.unwrap();
    let info = path_info(path);
    assert_eq!(NixHash::sha256(ingested.nar_sha256), NixHash::parse(info["narHash"].as_str().unwrap()).unwrap());
    let ca = info["ca"].as_str().map(|ca| ca.parse::<ContentAddress>().unwrap());
    stores
        .paths
        .put(PathInfo {
            store_path: StorePath::from_absolute(path, dir).unwrap(),
            node: ingested.node,
            references: json_paths(&info["references"], dir),
            nar_size: ingested.nar_size,
            nar_sha256: ingested.nar_sha256,
            signatures: vec![],
            deriver: None,
            ca,
        })
        .await
        .unwrap();
}

fn dump(path: &str) -> Vec<u8> {
    let out = std::process::Command::new("nix-store").args(["--dump", path]).output().unwrap();
    assert!(out.status.success(), "nix-store --dump {path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `nix store make-content-addressed PATH`: `{PATH: its content-addressed
/// twin}` (its closure is rewritten too, but only PATH is reported).
fn make_content_addressed(path: &str) -> serde_json::Value {
    let out = run("nix", &["store", "make-content-addressed", "--option", "substituters", "", "--json", path]);
    let mut out: serde_json::Value = serde_json::from_str(&out).unwrap();
    out["rewrites"].take()
}

/// Nix builds a directory with the same `store-paths` file (so its
/// references are the closure, found by Nix's own scan) and makes it
/// content-addressed; ours is the same path with the same metadata, and
/// stored, it renders to the same NAR.
#[tokio::test]
async fn matches_nix_make_content_addressed() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, files) = make_paths(tmp.path());
    let dir = store_dir(&text).to_owned();
    // `make-content-addressed` rewrites every path of the closure that is
    // not already a `source` path, so the closure is made of such paths:
    // two added files and a content-addressed copy of a text file that
    // refers to them (itself a check of `make_source_path` with references).
    let with_refs = make_content_addressed(&text)[&text].as_str().unwrap().to_owned();
    let info = path_info(&with_refs);
    let refs = json_paths(&info["references"], &dir);
    assert_eq!(refs.len(), 2, "{info}");
    let nar_sha256 = NixHash::parse(info["narHash"].as_str().unwrap()).unwrap().as_sha256().unwrap();
    let name = StorePath::from_absolute(&with_refs, &dir).unwrap().name().to_owned();
    assert_eq!(make_source_path(&name, &nar_sha256, &refs, &dir).unwrap().to_absolute(&dir), with_refs);

    let mut closure_abs = [with_refs.clone(), files[0].clone(), files[1].clone()];
    closure_abs.sort();
    let closure: Vec<StorePath> = closure_abs.iter().map(|p| StorePath::from_absolute(p, &dir).unwrap()).collect();

    let inputs: Vec<String> = closure_abs.iter().map(|p| format!(r#"(builtins.storePath "{p}")"#)).collect();
    let expr = format!(
        r#"derivation {{
            name = "closure-info"; system = builtins.currentSystem; builder = "/bin/sh";
            PATH = "/usr/bin:/bin";
            args = [ "-c" "mkdir $out && printf '%s\n' $paths > $out/store-paths" ];
            paths = [ {} ];
        }}"#,
        inputs.join(" ")
    );
    let built = run("nix-build", &["--no-out-link", "--option", "substituters", "", "-E", &expr]);
    let built = built.trim();
    let built_info = path_info(built);
    assert_eq!(json_paths(&built_info["references"], &dir).len(), 3, "Nix scanned all three: {built_info}");
    let rewrites = make_content_addressed(built);
    let nix_path = rewrites[built].as_str().unwrap_or_else(|| panic!("{rewrites}")).to_owned();
    let nix = path_info(&nix_path);

    let ours = closure_info("closure-info", &closure, &dir).unwrap();
    assert_eq!(ours.store_path.to_absolute(&dir), nix_path);
    assert_eq!(NixHash::sha256(ours.nar_sha256), NixHash::parse(nix["narHash"].as_str().unwrap()).unwrap());
    assert_eq!(ours.nar_size, nix["narSize"].as_u64().unwrap());
    assert_eq!(ours.references, json_paths(&nix["references"], &dir), "{nix}");
    assert_eq!(Some(ours.ca().to_string().as_str()), nix["ca"].as_str());
    assert_eq!(ours.nar(), dump(&nix_path));
    let file = std::fs::read(format!("{nix_path}/store-paths")).unwrap();
    assert_eq!(&ours.store_paths[..], &file[..]);

    // Stored: the closure first (references first), then the closure info.
    let stores = memory();
    for p in [&files[0], &files[1], &with_refs] {
        import(&stores, p).await;
    }
    let stored =
        put_closure_info("closure-info", &closure, &dir, &stores.blobs, &stores.dirs, &*stores.paths).await.unwrap();
    assert_eq!(stored.store_path, ours.store_path);
    assert_eq!(stored.references, ours.references);
    assert_eq!((stored.nar_size, stored.nar_sha256), (ours.nar_size, ours.nar_sha256));
    assert_eq!(stored.ca, Some(ours.ca()));
    let rendered = nar::calculate(&stored.node, stores.blobs.clone(), stores.dirs.clone()).await.unwrap();
    assert_eq!(rendered, (ours.nar_size, ours.nar_sha256));
    let whole = store::pathinfo::closure(&*stores.paths, std::slice::from_ref(&stored.store_path)).await.unwrap();
    assert_eq!(whole.len(), 4);
}

/// Without references, the same directory added by `nix-store --add` (and
/// `--add-fixed --recursive sha256`) has the path `make_source_path` gives,
/// and `nix-store --dump` writes our NAR byte for byte.
#[test]
fn no_reference_path_matches_nix_store_add() {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("closure-info-{}", nonce());
    let closure: Vec<StorePath> =
        (1..=3u8).map(|i| StorePath::from_parts([i * 40; 20], &format!("p{i}")).unwrap()).collect();
    let ours = closure_info(&name, &closure, "/nix/store").unwrap();
    let src = tmp.path().join(&name);
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("store-paths"), store_paths_file(&closure, "/nix/store")).unwrap();
    let src = src.to_str().unwrap();

    assert_eq!(dump(src), ours.nar());
    let added = run("nix-store", &["--add", src]).trim().to_owned();
    let fixed = run("nix-store", &["--add-fixed", "--recursive", "sha256", src]).trim().to_owned();
    assert_eq!(added, fixed);
    let dir = store_dir(&added);
    let expected = make_source_path(&name, &ours.nar_sha256, &[], dir).unwrap();
    assert_eq!(expected.to_absolute(dir), added);
    let info = path_info(&added);
    assert_eq!(info["ca"].as_str(), Some(ours.ca().to_string().as_str()));
    assert_eq!(info["narSize"].as_u64(), Some(ours.nar_size));
    assert!(info["references"].as_array().unwrap().is_empty());
}

/// `nix-hash --truncate` prints `compress_hash` of the SHA-256.
#[test]
fn compress_hash_matches_nix_hash_truncate() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, contents) in [format!("storefront {}", nonce()), String::new(), "x".repeat(1000)].iter().enumerate() {
        let file = tmp.path().join(format!("f{i}"));
        std::fs::write(&file, contents).unwrap();
        let file = file.to_str().unwrap();
        let ours = compress_hash(&Sha256::digest(contents.as_bytes()));
        let hex = run("nix-hash", &["--flat", "--type", "sha256", "--truncate", file]);
        assert_eq!(hex.trim(), data_encoding::HEXLOWER.encode(&ours));
        let b32 = run("nix-hash", &["--flat", "--type", "sha256", "--truncate", "--base32", file]);
        assert_eq!(b32.trim(), store::nix32::encode(&ours));
    }
}

/// A PathInfo with symlink contents (nothing to upload).
fn symlink_info(seed: u8, references: &[StorePath]) -> PathInfo {
    PathInfo {
        store_path: StorePath::from_parts([seed; 20], &format!("p{seed}")).unwrap(),
        node: Node::Symlink { target: Bytes::from_static(b"x") },
        references: references.to_vec(),
        nar_size: 1,
        nar_sha256: [seed; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

#[tokio::test]
async fn put_needs_the_closure_and_is_idempotent() {
    let stores = memory();
    let leaf = symlink_info(1, &[]);
    let top = symlink_info(2, std::slice::from_ref(&leaf.store_path));
    let closure = [top.store_path.clone(), leaf.store_path.clone()];
    let put = || put_closure_info("img-closure", &closure, "/nix/store", &stores.blobs, &stores.dirs, &*stores.paths);

    let err = put().await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    stores.paths.put(leaf.clone()).await.unwrap();
    stores.paths.put(top.clone()).await.unwrap();

    let first = put().await.unwrap();
    let second = put().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.store_path, closure_info("img-closure", &closure, "/nix/store").unwrap().store_path);
    assert!(first.signatures.is_empty() && first.deriver.is_none());
    let Node::Directory { .. } = first.node else { panic!("{:?}", first.node) };
    let all: Vec<PathInfo> = stores.paths.list().try_collect().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(stores.paths.get(first.store_path.digest()).await.unwrap(), Some(first.clone()));

    // Another store dir or another closure is another path.
    let other = closure_info("img-closure", &closure[..1], "/nix/store").unwrap();
    assert_ne!(other.store_path, first.store_path);
    let err = put_closure_info("bad/name", &closure, "/nix/store", &stores.blobs, &stores.dirs, &*stores.paths)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
}
