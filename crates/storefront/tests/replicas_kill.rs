//! A replica killed during an import (issue 7's acceptance): replica A on
//! a 3-node Garage cluster is SIGKILLed while `storefront import` sends it a
//! closure of many paths, several times at random points (after a random
//! number of PathInfos and blobs arrived, plus a random delay), and started
//! again on the same storage each time. After every kill `storefront verify
//! --storage` must find the bucket clean (no PathInfo naming a missing
//! directory, blob or chunk), and finally the import, run again, completes
//! with every path present; a deep verify then renders every NAR to the
//! NarHash Nix recorded.
//!
//! Tools: garage (`scripts/install-garage`), nix-bin.
mod common;
#[path = "common/replicas.rs"]
mod replicas;

use std::{
    process::{Child, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use common::{Rng, http_get, nix, storefront};
use replicas::{Replica, Tokens, assert_clean};
use testkit::garage::Cluster;

/// Paths in the closure.
const PATHS: usize = 30;
/// Kills before the import may finish.
const KILLS: usize = 3;

/// A closure of [`PATHS`] derivations, each referring to the one before it
/// and to one halfway back, with a dozen files: small ones, one of a few
/// hundred KiB, and on every third path a multi-MiB one (several chunks).
fn expr() -> String {
    let mut out = String::from("let\n");
    out.push_str(&nix::mk_binding("storefront-kill-v1"));
    for i in 0..PATHS {
        let refs = if i == 0 { String::new() } else { format!("${{p{}}} ${{p{}}}", i - 1, i / 2) };
        let big = if i % 3 == 0 { format!("seq 1 {} > $out/share/big\n", 300_000 + i) } else { String::new() };
        out.push_str(&format!(
            r#"  p{i} = mk "sf-kill-{i:02}" ''
    set -e
    mkdir -p $out/bin $out/share/doc/deep
    echo "{refs}" > $out/share/refs
    seq {i} 7 {end} > $out/share/numbers
    {big}for j in 1 2 3 4 5 6 7 8; do echo "file $j of path {i}" > $out/share/doc/deep/f$j; done
    printf '#!/bin/sh\necho {i}\n' > $out/bin/run-{i}
    chmod +x $out/bin/run-{i}
    ln -s ../share/numbers $out/bin/numbers
  '';
"#,
            end = 400_000 + i * 13,
        ));
    }
    out.push_str(&format!("in p{}\n", PATHS - 1));
    out
}

/// The closure, built once, kept alive by a GC root.
struct Closure {
    top: String,
    _gc_root: tempfile::TempDir,
}

fn closure() -> &'static Closure {
    static CLOSURE: OnceLock<Closure> = OnceLock::new();
    CLOSURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kill.nix");
        std::fs::write(&file, expr()).unwrap();
        let top = nix::run(
            std::process::Command::new(nix::tool("nix-build"))
                .arg(&file)
                .args(["--option", "sandbox", "false", "--option", "substituters", ""])
                .arg("--out-link")
                .arg(dir.path().join("result")),
        );
        let top = top.trim().to_owned();
        let paths = nix::closure(&top);
        assert_eq!(paths.len(), PATHS, "the closure: {paths:?}");
        Closure { top, _gc_root: dir }
    })
}

fn start_import(replica: &Replica, tokens: &Tokens, top: &str) -> Child {
    storefront()
        .args(["import", "--store", &replica.grpc_url(tokens), "-j", "4", top])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning storefront import")
}

/// Successful gRPC calls of `method` (`PathInfoService/Put`) the replica
/// has answered, from its /metrics.
fn calls(replica: &Replica, method: &str) -> u64 {
    let Ok((200, text)) = http_get(replica.server.addr, "/metrics") else { return 0 };
    let needle = format!("kind=\"grpc\",method=\"{method}\",status=\"Ok\"");
    text.lines()
        .filter(|l| l.starts_with("storefront_requests_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_import_leaves_a_clean_store_and_the_import_completes() {
    let started = Instant::now();
    let top = &closure().top;
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await.unwrap();
    let tokens = Tokens::new("kill-token-93c1");
    let storage = cluster.bucket_url_via(0, &format!("kill-{}", std::process::id()));
    let mut a = Replica::start(&storage, &tokens, &[]);
    // A fixed seed unless one is given, printed so a failure can be replayed.
    let seed = std::env::var("STOREFRONT_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0007);
    eprintln!("seed {seed} (STOREFRONT_KILL_SEED); garage up at {:.1} s", started.elapsed().as_secs_f64());
    let mut rng = Rng::new(seed);

    let mut stored_before = 0;
    for round in 0..KILLS {
        // Kill once the replica has stored a random number of PathInfos
        // (or, early on, blobs), and then a little later still.
        let (method, at_least) = if rng.below(2) == 0 {
            ("PathInfoService/Put", 1 + rng.below(PATHS as u64 / 2))
        } else {
            ("BlobService/Put", 1 + rng.below(40))
        };
        let delay = Duration::from_millis(rng.below(300));
        let mut import = start_import(&a, &tokens, top);
        let deadline = Instant::now() + Duration::from_secs(60);
        while calls(&a, method) < at_least && import.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "round {round}: no progress in 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        tokio::time::sleep(delay).await;
        let finished_first = import.try_wait().unwrap().is_some();
        a.kill().await;
        let out = import.wait_with_output().unwrap();
        eprintln!(
            "round {round}: killed after {at_least} {method} + {delay:?} at {:.1} s; import {}",
            started.elapsed().as_secs_f64(),
            if out.status.success() { "had finished" } else { "failed" }
        );
        assert!(
            finished_first || !out.status.success(),
            "round {round}: the import survived its server's death:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );

        // Whatever the kill interrupted, the bucket holds no broken path.
        let report = assert_clean(&storage, &[]);
        let stored = report["paths"].as_u64().unwrap();
        assert!(stored >= stored_before, "round {round}: paths vanished ({stored_before} → {stored})");
        eprintln!("  {stored} paths stored, unreferenced {}", report["unreferenced"]);
        stored_before = stored;
        a.restart();
    }
    assert!(stored_before < PATHS as u64, "no kill interrupted the import (all {PATHS} paths were stored)");

    // The import, run again, completes: the paths stored stay, the rest arrive.
    let out = start_import(&a, &tokens, top).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the last import failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{stored_before} already present")), "{stdout}");
    let report = assert_clean(&storage, &["--deep"]);
    assert_eq!(report["paths"].as_u64(), Some(PATHS as u64), "{report:#}");
    assert_eq!(report["nars"].as_u64(), Some(PATHS as u64), "{report:#}");
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
