//! `storefront import` with the real Nix: a closure built offline with
//! `nix-build` goes in over gRPC, with `--data`, as a `nix-store --export`
//! stream and as NARs with narinfos from `nix copy`; every PathInfo must say
//! what Nix says, and every path must render to the NAR Nix makes of it.
mod common;

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
    sync::Arc,
};

use castore::{BlobService, DirectoryService};
use common::{
    Server,
    nix::{self, NixInfo, fixture},
    storefront,
};
use store::{
    NixHash, StorePath,
    nar::NarReader,
    pathinfo::{GrpcPathInfoService, PathInfo, PathInfoService},
};
use tokio::io::AsyncReadExt;

fn import(args: &[&str]) -> Output {
    storefront().arg("import").args(args).stdin(Stdio::null()).output().expect("running storefront import")
}

/// Stdout of a successful run; a panic with both streams otherwise.
#[track_caller]
fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "storefront import failed with {}:\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Stderr of a failed run, which must mention every needle.
#[track_caller]
fn failed(out: Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "storefront import should have failed; stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(stderr.contains(n), "the error does not mention {n:?}:\n{stderr}");
    }
    stderr
}

fn store_path(abs: &str) -> StorePath {
    StorePath::from_absolute(abs, nix::STORE_DIR).expect("store path")
}

fn path_infos(url: &str) -> GrpcPathInfoService {
    GrpcPathInfoService::new(castore::grpc::connect(&url::Url::parse(url).unwrap()).unwrap())
}

async fn get(url: &str, path: &str) -> Option<PathInfo> {
    path_infos(url).get(store_path(path).digest()).await.expect("PathInfo Get")
}

/// Checks that the server has a PathInfo for every path of `nix`, saying
/// what Nix says, fetched under both package names; returns them.
async fn assert_matches_nix(server: &Server, nix: &BTreeMap<String, NixInfo>) -> BTreeMap<String, PathInfo> {
    let mut first: BTreeMap<String, PathInfo> = BTreeMap::new();
    for package in ["snix", "tvix"] {
        let svc = path_infos(&server.url_for(package));
        for (path, want) in nix {
            let info = svc
                .get(store_path(path).digest())
                .await
                .unwrap_or_else(|e| panic!("Get {path} ({package}): {e}"))
                .unwrap_or_else(|| panic!("no PathInfo for {path} ({package})"));
            let what = format!("{path} ({package})");
            assert_eq!(info.store_path.to_absolute(nix::STORE_DIR), *path, "{what}: store path");
            let hash = NixHash::sha256(info.nar_sha256);
            assert_eq!(hash.to_string(), want.nar_hash_nix32, "{what}: NarHash vs nix-store -q --hash");
            let json_hash = &want.nar_hash_json;
            if json_hash.starts_with("sha256-") {
                assert_eq!(hash.to_sri(), *json_hash, "{what}: NarHash vs nix path-info --json");
            } else {
                assert_eq!(Some(hash), NixHash::parse(json_hash).ok(), "{what}: NarHash vs nix path-info --json");
            }
            assert_eq!(info.nar_size, want.nar_size, "{what}: NarSize");
            let refs: std::collections::BTreeSet<String> =
                info.references.iter().map(|r| r.to_absolute(nix::STORE_DIR)).collect();
            assert_eq!(refs, want.references, "{what}: references");
            assert_eq!(info.references.len(), want.references.len(), "{what}: a reference listed twice");
            assert_eq!(info.deriver.as_ref().map(|d| d.to_absolute(nix::STORE_DIR)), want.deriver, "{what}: deriver");
            let sigs: Vec<String> = info.signatures.iter().map(ToString::to_string).collect();
            assert_eq!(sigs, want.signatures, "{what}: signatures");
            assert_eq!(info.ca.map(|c| c.to_string()), want.ca, "{what}: CA");
            match first.get(path) {
                Some(snix) => assert_eq!(&info, snix, "{path}: tvix and snix clients see different PathInfos"),
                None => {
                    first.insert(path.clone(), info);
                }
            }
        }
    }
    first
}

/// Renders every path from the server (castore clients over gRPC): the
/// bytes must be the NAR `nix-store --dump` makes, and `nix-store
/// --restore` of them must give the tree in the Nix store.
async fn assert_renders(server: &Server, infos: &BTreeMap<String, PathInfo>) {
    let url = server.url();
    let blobs: Arc<dyn BlobService> = castore::blob_service_from_url(&url).unwrap();
    let dirs: Arc<dyn DirectoryService> = castore::directory_service_from_url(&url).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for (i, (path, info)) in infos.iter().enumerate() {
        let mut reader = NarReader::open(&info.node, blobs.clone(), dirs.clone()).await.expect("NarReader::open");
        assert_eq!(reader.len(), info.nar_size, "{path}: rendered NAR length");
        let mut nar = Vec::new();
        reader.read_to_end(&mut nar).await.expect("rendering the NAR");
        let dumped = nix::dump(path);
        assert!(
            nar == dumped,
            "{path}: the rendered NAR differs from nix-store --dump ({} vs {} bytes)",
            nar.len(),
            dumped.len()
        );
        nix::restore_and_diff(&nar, &scratch.path().join(format!("r{i}")), path);
    }
}

fn summary_counts(stdout: &str) -> (u64, u64) {
    let n = |after: &str| -> u64 {
        let at = stdout.find(after).unwrap_or_else(|| panic!("no {after:?} in {stdout:?}"));
        stdout[..at].split_whitespace().last().unwrap().trim_start_matches('(').parse().unwrap()
    };
    (n(" path"), n(" already present"))
}

#[tokio::test(flavor = "multi_thread")]
async fn closure_over_grpc_matches_nix_and_renders() {
    let fx = fixture();
    let server = Server::start();
    // A GC root (like ./result) names the top path.
    let out = ok(import(&["--store", &server.url(), fx.gc_root.to_str().unwrap()]));
    assert_eq!(summary_counts(&out), (fx.paths.len() as u64, 0), "{out}");
    let nix = nix::nix_info(&fx.paths);
    let infos = assert_matches_nix(&server, &nix).await;
    assert_renders(&server, &infos).await;

    // Again, through the tvix package and a path inside a store path: all present.
    let app = fx.paths.iter().find(|p| p.ends_with("-sf-fixture-app")).expect("app in the closure");
    let out = ok(import(&["--store", &server.url_for("tvix"), &format!("{app}/bin/own-script")]));
    assert_eq!(summary_counts(&out), (0, nix::closure(app).len() as u64), "{out}");
    let out = ok(import(&["--store", &server.url(), "--no-verify", "-j", "1", &fx.top]));
    assert_eq!(summary_counts(&out), (0, fx.paths.len() as u64), "{out}");
    assert_eq!(assert_matches_nix(&server, &nix).await, infos, "a second import changed a PathInfo");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_dir_import_then_serve() {
    let fx = fixture();
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let out = ok(import(&["--data", data_arg, &fx.top]));
    assert_eq!(summary_counts(&out), (fx.paths.len() as u64, 0), "{out}");
    let out = ok(import(&["--data", data_arg, &fx.top]));
    assert_eq!(summary_counts(&out), (0, fx.paths.len() as u64), "{out}");

    let server = Server::start_in(data.path());
    let nix = nix::nix_info(&fx.paths);
    let infos = assert_matches_nix(&server, &nix).await;
    assert_renders(&server, &infos).await;
    // The server holds the database: --data must say so.
    failed(import(&["--data", data_arg, &fx.top]), &["in use", "--store"]);
}

/// Pipes a `nix-store --export` stream of `paths` into `storefront import --export -`.
fn import_export_of(server: &Server, stream: &[u8]) -> Output {
    let mut child = storefront()
        .args(["import", "--store", &server.url(), "--export", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storefront import --export -");
    let mut stdin = child.stdin.take().unwrap();
    let stream = stream.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&stream));
    let out = child.wait_with_output().expect("storefront import");
    let _ = writer.join();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn export_stream_gives_identical_pathinfos() {
    let fx = fixture();
    let direct = Server::start();
    ok(import(&["--store", &direct.url(), &fx.top]));
    let nix = nix::nix_info(&fx.paths);
    let want = assert_matches_nix(&direct, &nix).await;

    // `nix-store --export $(nix-store -qR top) | storefront import --export -`, a real pipe.
    let server = Server::start();
    let mut producer = Command::new(nix::tool("nix-store"))
        .arg("--export")
        .args(&fx.paths)
        .stdout(Stdio::piped())
        .spawn()
        .expect("nix-store --export");
    let out = storefront()
        .args(["import", "--store", &server.url(), "--export", "-"])
        .stdin(producer.stdout.take().unwrap())
        .output()
        .expect("storefront import --export -");
    assert!(producer.wait().unwrap().success());
    let stdout = ok(out);
    assert_eq!(summary_counts(&stdout), (fx.paths.len() as u64, 0), "{stdout}");
    assert_eq!(assert_matches_nix(&server, &nix).await, want, "export import differs from the direct import");

    // The same stream from a file, again: everything present.
    let stream = nix::export(&fx.paths);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &stream).unwrap();
    let stdout = ok(import(&["--store", &server.url(), "--export", file.path().to_str().unwrap()]));
    assert_eq!(summary_counts(&stdout), (0, fx.paths.len() as u64), "{stdout}");

    // Paths in reverse dependency order (single-path exports joined): held
    // until their references arrive.
    let reversed: Vec<u8> = {
        let mut s = Vec::new();
        for p in fx.topological().iter().rev() {
            let one = nix::export(std::slice::from_ref(p));
            s.extend_from_slice(&one[..one.len() - 8]); // without its end marker
        }
        s.extend_from_slice(&0u64.to_le_bytes());
        s
    };
    let server = Server::start();
    let stdout = ok(import_export_of(&server, &reversed));
    assert_eq!(summary_counts(&stdout), (fx.paths.len() as u64, 0), "{stdout}");
    assert_eq!(assert_matches_nix(&server, &nix).await, want, "out-of-order import differs");

    // References that never come: the path fails, naming them, and stays absent.
    let server = Server::start();
    let top_refs = &nix[&fx.top].references;
    let stderr = failed(import_export_of(&server, &nix::export(std::slice::from_ref(&fx.top))), &["never arrived"]);
    for r in top_refs {
        let base = r.rsplit('/').next().unwrap();
        assert!(stderr.contains(base), "the error does not name the missing reference {base}:\n{stderr}");
    }
    assert!(get(&server.url(), &fx.top).await.is_none(), "a path with missing references became visible");

    // A truncated stream fails clearly.
    let server = Server::start();
    failed(import_export_of(&server, &stream[..stream.len() / 2]), &["export", "truncated"]);
}

/// The narinfo of `path` in a `file://` cache and the NAR file it points to.
fn cache_files(cache: &Path, path: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let hash = store_path(path).hash_part();
    let narinfo = cache.join(format!("{hash}.narinfo"));
    let text = std::fs::read_to_string(&narinfo).unwrap_or_else(|e| panic!("{}: {e}", narinfo.display()));
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL line");
    assert!(text.contains("Compression: none"), "{text}");
    (narinfo, cache.join(url), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_files_with_narinfo_or_flags() {
    let fx = fixture();
    let cache = tempfile::tempdir().unwrap();
    nix::copy_to_file_cache(std::slice::from_ref(&fx.top), cache.path());
    let nix = nix::nix_info(&fx.paths);

    // With narinfos from `nix copy`, references first.
    let server = Server::start();
    for path in fx.topological() {
        let (narinfo, nar, _) = cache_files(cache.path(), &path);
        let out = ok(import(&[
            "--store",
            &server.url(),
            "--nar",
            nar.to_str().unwrap(),
            "--narinfo",
            narinfo.to_str().unwrap(),
        ]));
        assert_eq!(summary_counts(&out), (1, 0), "{out}");
    }
    let infos = assert_matches_nix(&server, &nix).await;
    assert_renders(&server, &infos).await;

    // With flags.
    let server = Server::start();
    for path in fx.topological() {
        let (_, nar, _) = cache_files(cache.path(), &path);
        let want = &nix[&path];
        let mut args = vec!["--store".to_owned(), server.url(), "--nar".into(), nar.display().to_string()];
        args.extend(["--store-path".into(), path.clone()]);
        for r in &want.references {
            args.extend(["--reference".into(), r.clone()]);
        }
        if let Some(d) = &want.deriver {
            args.extend(["--deriver".into(), d.clone()]);
        }
        ok(import(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    assert_eq!(assert_matches_nix(&server, &nix).await, infos);

    // A narinfo whose NarHash does not match the NAR: refused, nothing stored.
    let server = Server::start();
    let leaf = fx.paths.iter().find(|p| p.ends_with("-sf-fixture-leaf")).unwrap();
    let top = &fx.top;
    let (_, leaf_nar, leaf_text) = cache_files(cache.path(), leaf);
    let (_, _, top_text) = cache_files(cache.path(), top);
    let top_hash = top_text.lines().find(|l| l.starts_with("NarHash: ")).unwrap();
    let bad: String = leaf_text
        .lines()
        .map(|l| if l.starts_with("NarHash: ") { top_hash } else { l })
        .map(|l| format!("{l}\n"))
        .collect();
    let bad_narinfo = cache.path().join("bad.narinfo");
    std::fs::write(&bad_narinfo, bad).unwrap();
    failed(
        import(&[
            "--store",
            &server.url(),
            "--nar",
            leaf_nar.to_str().unwrap(),
            "--narinfo",
            bad_narinfo.to_str().unwrap(),
        ]),
        &["NarHash", leaf.rsplit('/').next().unwrap()],
    );
    assert!(get(&server.url(), leaf).await.is_none(), "a mismatching NAR became visible");

    // A reference that is not stored: refused.
    let app = fx.paths.iter().find(|p| p.ends_with("-sf-fixture-app")).unwrap();
    let (app_narinfo, app_nar, _) = cache_files(cache.path(), app);
    failed(
        import(&[
            "--store",
            &server.url(),
            "--nar",
            app_nar.to_str().unwrap(),
            "--narinfo",
            app_narinfo.to_str().unwrap(),
        ]),
        &["not stored"],
    );
    assert!(get(&server.url(), app).await.is_none());
}

/// A NAR token.
fn token(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len() + (s.len().wrapping_neg() & 7), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_nars_fail_and_store_nothing() {
    let fx = fixture();
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data = fx.paths.iter().find(|p| p.ends_with("-sf-fixture-data")).unwrap();
    let full = nix::dump(data);

    let truncated = dir.path().join("truncated.nar");
    std::fs::write(&truncated, &full[..full.len() - 100]).unwrap();
    let unsorted = dir.path().join("unsorted.nar");
    let mut nar = Vec::new();
    for t in [&b"nix-archive-1"[..], b"(", b"type", b"directory"] {
        token(&mut nar, t);
    }
    for name in [b"b", b"a"] {
        for t in [&b"entry"[..], b"(", b"name", name, b"node", b"(", b"type", b"regular", b"contents", b"x", b")", b")"]
        {
            token(&mut nar, t);
        }
    }
    token(&mut nar, b")");
    std::fs::write(&unsorted, &nar).unwrap();

    for (file, name, needle) in [(&truncated, "bad-truncated", "truncated"), (&unsorted, "bad-unsorted", "sort")] {
        let path = format!("{}/0123456789abcdfghijklmnpqrsvwxyz-{name}", nix::STORE_DIR);
        let stderr = failed(
            import(&["--store", &server.url(), "--nar", file.to_str().unwrap(), "--store-path", &path]),
            &[needle, name],
        );
        assert!(stderr.contains("invalid NAR"), "{stderr}");
        assert!(get(&server.url(), &path).await.is_none(), "{name}: a bad NAR left a PathInfo");
    }
    // The same via standard input.
    let path = format!("{}/0123456789abcdfghijklmnpqrsvwxyz-bad-stdin", nix::STORE_DIR);
    let out = storefront()
        .args(["import", "--store", &server.url(), "--nar", "-", "--store-path", &path])
        .stdin(std::fs::File::open(&truncated).unwrap())
        .output()
        .unwrap();
    failed(out, &["truncated"]);
    assert!(get(&server.url(), &path).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_not_in_the_local_store_fail_naming_them() {
    let fx = fixture();
    let server = Server::start();
    let made_up = format!("{}/00000000000000000000000000000000-storefront-made-up", nix::STORE_DIR);
    failed(import(&["--store", &server.url(), &fx.top, &made_up]), &[&made_up, "not valid"]);
    assert!(get(&server.url(), &fx.top).await.is_none(), "nothing is imported when an argument is invalid");
    let data = tempfile::tempdir().unwrap();
    failed(import(&["--data", data.path().to_str().unwrap(), &made_up]), &[&made_up, "not valid"]);
    failed(import(&["--store", &server.url(), "/etc"]), &["/etc", "not inside the store directory"]);
    failed(import(&["--store", "grpc+http://127.0.0.1:1", &fx.top]), &["cannot reach"]);
}

/// A Nix store in another directory (`NIX_STORE_DIR`), with `--store-dir`.
#[tokio::test(flavor = "multi_thread")]
async fn other_store_dir() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let env = [
        ("NIX_STORE_DIR", store_dir.clone()),
        ("NIX_STATE_DIR", root.path().join("state")),
        ("NIX_LOG_DIR", root.path().join("log")),
    ];
    let src = root.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/file"), b"contents\n").unwrap();
    std::os::unix::fs::symlink("sub/file", src.join("link")).unwrap();
    let added = nix::run(Command::new(nix::tool("nix-store")).envs(env.clone()).arg("--add").arg(&src));
    let added = added.trim();
    let store_dir = store_dir.to_str().unwrap();
    assert!(added.starts_with(store_dir), "{added}");
    let hash = nix::run(Command::new(nix::tool("nix-store")).envs(env.clone()).args(["-q", "--hash", added]));

    let server = Server::start();
    let out = storefront()
        .envs(env.clone())
        .args(["import", "--store", &server.url(), "--store-dir", store_dir, added])
        .output()
        .unwrap();
    assert_eq!(summary_counts(&ok(out)), (1, 0));
    let path = StorePath::from_absolute(added, store_dir).unwrap();
    let info = path_infos(&server.url()).get(path.digest()).await.unwrap().expect("PathInfo");
    assert_eq!(NixHash::sha256(info.nar_sha256).to_string(), hash.trim());
    assert!(info.ca.is_some(), "nix-store --add makes a content-addressed path");
}
