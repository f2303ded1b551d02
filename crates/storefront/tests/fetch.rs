//! `storefront fetch` against a real `storefront serve` holding a closure
//! built with the real Nix: into an empty directory (the trees must be what
//! Nix has, down to modes, mtimes and NAR hashes), twice (nothing is read
//! the second time), from two processes at once, and into the host's Nix
//! store as nix-snapshotter's external builder (the paths valid in Nix with
//! the NarHash it had recorded, the out-link a GC root). The host-store
//! tests build closures of their own (salted) and delete them from the
//! host store first, so no other test's paths are touched.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use common::{
    Server,
    fetch::{
        amount, assert_like_store_path, assert_nix_layout, builder_script, counts, entries, failed, fetch, import,
        nix_delete, nix_valid, ok, path_named,
    },
    nix::{self, build_fixture, fixture, run, tool},
};

#[test]
fn fetch_into_an_empty_directory_is_what_nix_has() {
    let fx = fixture();
    let server = Server::start();
    import(&server, std::slice::from_ref(&fx.top));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let dir_arg = dir.to_str().unwrap();

    let out = ok(fetch(&["--store", &server.url(), "--store-dir", dir_arg, &fx.top]));
    assert_eq!(counts(&out), (fx.paths.len() as u64, 0), "{out}");
    let mut want: Vec<String> = fx.paths.iter().map(|p| p.trim_start_matches("/nix/store/").to_owned()).collect();
    want.sort();
    assert_eq!(entries(&dir), want, "exactly the closure, nothing else");
    for p in &fx.paths {
        assert_like_store_path(&dir.join(Path::new(p).file_name().unwrap()), p);
    }
    // The symlinks are verbatim, whether relative, absolute or dangling.
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let data_dir = dir.join(Path::new(data).file_name().unwrap());
    assert_eq!(std::fs::read_link(data_dir.join("dangling")).unwrap(), Path::new("/nonexistent/dangling"));
    assert_eq!(std::fs::read_link(data_dir.join("bin/readme-link")).unwrap(), Path::new("../share/doc/README"));

    // Again: everything is present, nothing is read.
    let out = ok(fetch(&["--store", &server.url(), "--store-dir", dir_arg, &fx.top]));
    assert_eq!(counts(&out), (0, fx.paths.len() as u64), "{out}");
    assert_eq!(amount(&out, " downloaded"), "0 B", "{out}");

    // A tvix client, a path inside a store path, a basename.
    let dir2 = tmp.path().join("store2");
    let app = path_named(&fx.paths, "-sf-fixture-app");
    let out = ok(fetch(&[
        "--store",
        &server.url_for("tvix"),
        "--store-dir",
        dir2.to_str().unwrap(),
        &format!("{app}/bin/own-script"),
        Path::new(data).file_name().unwrap().to_str().unwrap(),
    ]));
    assert_eq!(counts(&out).0, nix::closure(app).len() as u64, "{out}");
    assert_like_store_path(&dir2.join(Path::new(app).file_name().unwrap()), app);
}

#[test]
fn identical_files_are_copied_from_disk() {
    let fx = fixture();
    let server = Server::start();
    import(&server, std::slice::from_ref(&fx.top));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let dir_arg = dir.to_str().unwrap();
    // The data path first; the app's own-script is a copy of its bin/hello.
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let out = ok(fetch(&["--store", &server.url(), "--store-dir", dir_arg, data]));
    assert_eq!(amount(&out, " copied from disk"), "0 B", "{out}");
    let out = ok(fetch(&["--store", &server.url(), "--store-dir", dir_arg, &fx.top]));
    let hello = std::fs::metadata(Path::new(data).join("bin/hello")).unwrap().len();
    assert_eq!(amount(&out, " copied from disk"), format!("{hello} B"), "{out}");
    let app = path_named(&fx.paths, "-sf-fixture-app");
    assert_like_store_path(&dir.join(Path::new(app).file_name().unwrap()), app);
}

#[test]
fn two_processes_fetch_one_closure_at_once() {
    let fx = fixture();
    let server = Server::start();
    import(&server, std::slice::from_ref(&fx.top));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let spawn = || {
        common::storefront()
            .args(["fetch", "--store", &server.url(), "--store-dir", dir.to_str().unwrap(), &fx.top])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("storefront fetch")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (ok(a.wait_with_output().unwrap()), ok(b.wait_with_output().unwrap()));
    // Every path was written once; the loser of a race counts it present.
    let ((fa, sa), (fb, sb)) = (counts(&a), counts(&b));
    assert_eq!(fa + fb, fx.paths.len() as u64, "{a}\n{b}");
    assert_eq!((fa + sa, fb + sb), (fx.paths.len() as u64, fx.paths.len() as u64), "{a}\n{b}");
    assert_eq!(entries(&dir).len(), fx.paths.len(), "only whole paths: {:?}", entries(&dir));
    for p in &fx.paths {
        assert_like_store_path(&dir.join(Path::new(p).file_name().unwrap()), p);
    }
}

/// Nix's own record of a path: `nix path-info --json` NarHash (SRI),
/// `nix-store -q --hash`, NarSize, references, deriver.
type Record = (String, String, String, u64, Vec<String>, Option<String>);

fn nix_record(paths: &[String]) -> Vec<Record> {
    let info = nix::nix_info(paths);
    info.into_values()
        .map(|i| (i.path, i.nar_hash_json, i.nar_hash_nix32, i.nar_size, i.references.into_iter().collect(), i.deriver))
        .collect()
}

/// Builds a closure of this test's own (salted), puts it in a server, and
/// deletes it from the host store.
fn built_served_and_deleted(salt: &str) -> (nix::Fixture, Server, Vec<Record>) {
    let fx = build_fixture(salt);
    let record = nix_record(&fx.paths);
    let server = Server::start();
    import(&server, std::slice::from_ref(&fx.top));
    std::fs::remove_file(&fx.gc_root).unwrap();
    nix_delete(&fx.paths);
    assert!(fx.paths.iter().all(|p| !nix_valid(p)));
    (fx, server, record)
}

#[test]
fn external_builder_leaves_a_valid_rooted_closure() {
    let (fx, server, before) = built_served_and_deleted("storefront-fetch-builder-v1");
    let tmp = tempfile::tempdir().unwrap();
    let script = builder_script(tmp.path());
    let link = tmp.path().join("gcroots/1/result");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();

    // Exactly how nix-snapshotter calls it: `<exe> <outLink> <storePath>`,
    // the store in the environment.
    let run_builder = || {
        Command::new(&script)
            .arg(&link)
            .arg(&fx.top)
            .env("STOREFRONT_STORE", server.url())
            .env("XDG_DATA_HOME", "/nonexistent/storefront-tests")
            .env_remove("STOREFRONT_TOKEN")
            .env_remove("NIX_STORE_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run_builder();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the builder failed: {stderr}");
    assert!(out.stdout.is_empty(), "the builder printed on stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(counts(stderr.trim()), (fx.paths.len() as u64, 0), "{stderr}");

    for p in &fx.paths {
        run(Command::new(tool("nix-store")).args(["--verify-path", p]));
        assert_nix_layout(Path::new(p));
    }
    assert_eq!(nix_record(&fx.paths), before, "Nix's record differs from the one before the deletion");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&fx.top));
    let roots = run(Command::new(tool("nix-store")).args(["--gc", "--print-roots"]));
    let want = format!("{} -> {}", link.display(), fx.top);
    assert!(roots.lines().any(|l| l == want), "{want} is not among the GC roots:\n{roots}");

    // Called again (a second snapshot of the same layer): all valid.
    let out = run_builder();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the builder failed: {stderr}");
    assert_eq!(counts(stderr.trim()), (0, fx.paths.len() as u64), "{stderr}");
}

#[test]
fn host_store_adopts_complete_paths_and_refuses_strangers() {
    let (fx, server, before) = built_served_and_deleted("storefront-fetch-adopt-v1");
    // Written into the store without telling Nix (as a fetch interrupted
    // between its renames and the registration leaves them).
    let out = ok(fetch(&["--store", &server.url(), "--no-register", &fx.top]));
    assert_eq!(counts(&out), (fx.paths.len() as u64, 0), "{out}");
    assert!(fx.paths.iter().all(|p| Path::new(p).exists() && !nix_valid(p)));
    // The next fetch checks them on disk and registers them.
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("result");
    let out = ok(fetch(&["--store", &server.url(), "--add-root", link.to_str().unwrap(), &fx.top]));
    assert!(out.contains(&format!("{} paths found complete on disk", fx.paths.len())), "{out}");
    assert!(fx.paths.iter().all(|p| nix_valid(p)));
    assert_eq!(nix_record(&fx.paths), before);

    // A stranger where the top path belongs: refused, and left alone.
    std::fs::remove_file(&link).unwrap();
    nix_delete(std::slice::from_ref(&fx.top));
    /// Removes the stranger if the test stops while it is there; never a
    /// path Nix knows.
    struct Cleanup<'a>(&'a str);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if Path::new(self.0).join("not-it").exists() && !nix_valid(self.0) {
                let _ = std::fs::remove_dir_all(self.0);
            }
        }
    }
    let _cleanup = Cleanup(&fx.top);
    std::fs::create_dir(&fx.top).unwrap();
    std::fs::write(Path::new(&fx.top).join("not-it"), b"something else").unwrap();
    failed(fetch(&["--store", &server.url(), &fx.top]), &[&fx.top, "does not know it", "nix-store --delete"]);
    assert!(Path::new(&fx.top).join("not-it").exists());
    assert!(!nix_valid(&fx.top));
    std::fs::remove_dir_all(&fx.top).unwrap();
    let out = ok(fetch(&["--store", &server.url(), &fx.top]));
    assert_eq!(counts(&out), (1, fx.paths.len() as u64 - 1), "{out}");
    run(Command::new(tool("nix-store")).args(["--verify-path", &fx.top]));
}

#[test]
fn usage_errors_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let dir_arg = dir.to_str().unwrap();
    let some = "/nix/store/00000000000000000000000000000000-x";
    failed(fetch(&["--store-dir", dir_arg, "--add-root", "/tmp/x", some]), &["--add-root", "host Nix"]);
    failed(fetch(&["--store-dir", dir_arg, "not a path"]), &["not a store path"]);
    failed(fetch(&["--store-dir", dir_arg, "--trusted-public-key", "nonsense", some]), &["nonsense"]);
    // Nothing listens there: the address is named.
    failed(fetch(&["--store", "grpc+http://127.0.0.1:9", "--store-dir", dir_arg, some]), &["127.0.0.1:9"]);
}
