//! `storefront verify` on a real Nix closure: clean after an import, with
//! the data directory opened directly and through a server; then with the
//! embedded store damaged offline (a chunk file deleted, a directory record
//! removed, another overwritten, a PathInfo whose reference is missing),
//! every problem reported with the store path it breaks, and exit status 1.
mod common;

use std::{
    path::Path,
    process::{Output, Stdio},
    sync::Arc,
};

use bytes::Bytes;
use castore::{
    B3Digest, Directory, Name, Node,
    kv::{KvStore, Table},
};
use common::{
    Server,
    nix::{self, fixture},
    storefront,
};
use prost::Message;
use serde_json::Value;
use store::{PathInfo, StorePath, pathinfo::PATH_INFO, verify::Store};

fn run(args: &[&str]) -> Output {
    storefront().arg("verify").args(args).stdin(Stdio::null()).output().expect("running storefront verify")
}

/// Runs verify and checks its exit status; returns stdout.
#[track_caller]
fn verify_with_status(args: &[&str], code: i32) -> String {
    let out = run(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "storefront verify {args:?}: wrong exit status\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `verify --json` with the expected exit status; returns the report.
#[track_caller]
fn verify_json(args: &[&str], code: i32) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let stdout = verify_with_status(&args, code);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}):\n{stdout}"))
}

fn import_into(data: &Path, path: &str) {
    let out = storefront()
        .args(["import", "--data", data.to_str().unwrap(), path])
        .stdin(Stdio::null())
        .output()
        .expect("running storefront import");
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn store_path(abs: &str) -> StorePath {
    StorePath::from_absolute(abs, nix::STORE_DIR).expect("store path")
}

fn path_ending(suffix: &str) -> String {
    fixture().paths.iter().find(|p| p.ends_with(suffix)).unwrap_or_else(|| panic!("no {suffix} path")).clone()
}

/// The problems of a JSON report as (kind, affected paths), sorted.
fn problems(report: &Value) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            let paths = p["paths"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
            (p["kind"].as_str().unwrap().to_owned(), paths)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_store_is_clean_directly_and_through_a_server() {
    let fx = fixture();
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    import_into(data.path(), &fx.top);
    let n = fx.paths.len() as u64;

    let text = verify_with_status(&["--data", data_arg], 0);
    assert!(text.contains(&format!("checked {n} paths")) && text.trim_end().ends_with("clean"), "{text}");
    let report = verify_json(&["--data", data_arg], 0);
    assert_eq!((report["clean"].as_bool(), report["paths"].as_u64()), (Some(true), Some(n)), "{report}");
    assert!(report["chunks"].as_u64().unwrap() > 1, "the multi-MiB file's chunks were looked up: {report}");
    assert!(report["directories"].as_u64().unwrap() >= 8, "{report}");
    assert_eq!(
        report["unreferenced"],
        serde_json::json!({"directories": 0, "blobs": 0}),
        "an import leaves no garbage"
    );
    let deep = verify_json(&["--data", data_arg, "--deep", "-j", "2"], 0);
    assert_eq!(deep["nars"].as_u64(), Some(n), "{deep}");
    assert!(deep["bytes_read"].as_u64().unwrap() > 2 * 10_000_000, "blobs and NARs re-read: {deep}");

    let server = Server::start_in(data.path());
    let url = server.url();
    let remote = verify_json(&["--store", &url], 0);
    for key in ["paths", "directories", "blobs", "chunks", "bytes"] {
        assert_eq!(remote[key], report[key], "{key} through the server vs directly");
    }
    assert_eq!(remote["unreferenced"], Value::Null, "not counted through a server");
    let deep = verify_json(&["--store", &url, "--deep"], 0);
    assert_eq!(deep["nars"].as_u64(), Some(n), "{deep}");

    // Cannot check: the server holds the database; nothing listens.
    let out = run(&["--data", data_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--store", "grpc+http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The damage done to a data directory, and the paths it must be reported
/// with.
struct Damage {
    chunk: B3Digest,
    missing_dir: B3Digest,
    corrupt_dir: B3Digest,
    orphan: StorePath,
    missing_ref: StorePath,
}

/// The child `name` of a directory.
fn child(dir: &Directory, name: &str) -> Node {
    dir.get(&Name::new(Bytes::copy_from_slice(name.as_bytes())).unwrap())
        .unwrap_or_else(|| panic!("no entry {name}"))
        .clone()
}

async fn subdir(store: &Store, dir: &Directory, name: &str) -> (B3Digest, Directory) {
    let Node::Directory { digest, .. } = child(dir, name) else { panic!("{name} is not a directory") };
    (digest, store.directories.get(&digest).await.unwrap().expect("stored"))
}

async fn root_dir(store: &Store, path: &str) -> Directory {
    let info = store.paths.get(store_path(path).digest()).await.unwrap().expect("imported");
    let Node::Directory { digest, .. } = info.node else { panic!("{path} is not a directory") };
    store.directories.get(&digest).await.unwrap().expect("stored")
}

/// Damages the embedded store in `data` (no server running): deletes one
/// chunk file of the data path's multi-MiB file, removes a directory record
/// of the data path, overwrites the app path's `lib` directory with bytes
/// that are no directory, and adds a PathInfo whose reference is absent.
async fn damage(data: &Path) -> Damage {
    let db = data.join("castore.redb");
    let kv = castore::kv::open_url(&url::Url::parse(&format!("redb:{}", db.display())).unwrap()).unwrap().unwrap();
    let store = Store::engine(kv.clone());
    let data_path = path_ending("-sf-fixture-data");
    let root = root_dir(&store, &data_path).await;
    let (_, share) = subdir(&store, &root, "share").await;
    let Node::File { digest: big, .. } = child(&share, "big.txt") else { panic!("big.txt is not a file") };
    let chunks = store.blobs.stat(&big).await.unwrap().expect("big.txt stored");
    assert!(chunks.len() > 2, "big.txt has a chunk list");
    let chunk = chunks[1].digest;
    let hex = chunk.to_hex();
    let file = data.join("castore.redb.chunks").join(&hex[..2]).join(&hex);
    std::fs::remove_file(&file).unwrap_or_else(|e| panic!("deleting {}: {e}", file.display()));

    let (_, doc) = subdir(&store, &share, "doc").await;
    let (missing_dir, _) = subdir(&store, &doc, "deep").await;
    let record = kv.get(Table::DIRECTORIES, missing_dir.as_bytes()).await.unwrap();
    assert_eq!(
        kv.compare_and_swap(Table::DIRECTORIES, missing_dir.to_bytes(), record, None).await.unwrap(),
        Ok(()),
        "removing a directory record"
    );

    let app = root_dir(&store, &path_ending("-sf-fixture-app")).await;
    let (corrupt_dir, _) = subdir(&store, &app, "lib").await;
    let record = kv.get(Table::DIRECTORIES, corrupt_dir.as_bytes()).await.unwrap();
    let garbage = Bytes::from_static(b"\xff\xff\xff not a directory");
    assert_eq!(
        kv.compare_and_swap(Table::DIRECTORIES, corrupt_dir.to_bytes(), record, Some(garbage)).await.unwrap(),
        Ok(())
    );

    let orphan = StorePath::from_parts([0x42; 20], "sf-verify-orphan").unwrap();
    let missing_ref = StorePath::from_parts([0x43; 20], "sf-verify-missing").unwrap();
    let info = PathInfo {
        store_path: orphan.clone(),
        node: Node::Symlink { target: Bytes::from_static(b"/nix/store/nowhere") },
        references: vec![missing_ref.clone()],
        nar_size: 120,
        nar_sha256: [0; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    };
    // Around the PathInfo service, which would refuse it.
    let record = Bytes::from(info.to_proto().encode_to_vec());
    kv.put(PATH_INFO, vec![(Bytes::copy_from_slice(orphan.digest()), record)]).await.unwrap();
    drop(store);
    close(kv);
    Damage { chunk, missing_dir, corrupt_dir, orphan, missing_ref }
}

/// Releases the database (the last handle closes it), so the binary can open it.
fn close(kv: Arc<dyn KvStore>) {
    assert_eq!(Arc::strong_count(&kv), 1, "a handle to the database is still open");
    drop(kv);
}

#[tokio::test(flavor = "multi_thread")]
async fn damage_is_reported_with_the_paths_it_breaks() {
    let fx = fixture();
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    import_into(data.path(), &fx.top);
    let d = damage(data.path()).await;
    let data_path = path_ending("-sf-fixture-data");
    let app_path = path_ending("-sf-fixture-app");
    let orphan = d.orphan.to_absolute(nix::STORE_DIR);

    // Directly: each problem once, naming the paths whose trees it breaks.
    let report = verify_json(&["--data", data_arg], 1);
    assert_eq!(report["clean"], false);
    assert_eq!(
        problems(&report),
        [
            ("corrupt-directory".to_owned(), vec![app_path.clone()]),
            ("missing-chunk".to_owned(), vec![data_path.clone()]),
            ("missing-directory".to_owned(), vec![data_path.clone()]),
            ("missing-reference".to_owned(), vec![orphan.clone()]),
        ],
        "{report:#}"
    );
    let text = verify_with_status(&["--data", data_arg], 1);
    for needle in [
        format!("problem: missing chunk {}", d.chunk),
        format!("problem: missing directory {}", d.missing_dir),
        format!("problem: corrupt directory {}", d.corrupt_dir),
        format!("problem: missing reference {}", d.missing_ref),
        format!("  {data_path}\n"),
        format!("  {app_path}\n"),
        format!("  {orphan}\n"),
        "4 problems affecting 3 of".to_owned(),
    ] {
        assert!(text.contains(&needle), "the report does not say {needle:?}:\n{text}");
    }

    // Through a server on the damaged store: the same paths, as far as the
    // protocol tells (a directory the server cannot decode is unreadable).
    let server = Server::start_in(data.path());
    let report = verify_json(&["--store", &server.url()], 1);
    assert_eq!(
        problems(&report),
        [
            ("missing-chunk".to_owned(), vec![data_path.clone()]),
            ("missing-directory".to_owned(), vec![data_path.clone()]),
            ("missing-reference".to_owned(), vec![orphan.clone()]),
            ("unreadable".to_owned(), vec![app_path.clone()]),
        ],
        "{report:#}"
    );
    let unreadable = report["problems"].as_array().unwrap().iter().find(|p| p["kind"] == "unreadable").unwrap();
    assert!(unreadable["message"].as_str().unwrap().contains(&d.corrupt_dir.to_string()), "{unreadable}");
}
