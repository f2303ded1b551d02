//! narinfo files interoperate with the real Nix: we read what `nix copy`
//! writes, field for field as `nix path-info` reports it, write it back
//! byte for byte, and Nix accepts a narinfo we re-sign.
mod nix_cli;

use std::{collections::BTreeSet, path::Path};

use nix_cli::{derivation_flag, make_paths, path_info, run, store_dir, try_run};
use sha2::{Digest, Sha256};
use store::{ContentAddress, NarInfo, NixHash, SigningKey, StorePath};

/// `nix copy --to file://<cache>?compression=<c> <path>` (with its closure).
fn copy_to_cache(cache: &Path, compression: &str, path: &str) {
    let to = format!("file://{}?compression={compression}", cache.display());
    run("nix", &[&["copy", "--to", &to], derivation_flag(path), &[path]].concat());
}

fn narinfo_path(cache: &Path, path: &str, dir: &str) -> std::path::PathBuf {
    cache.join(format!("{}.narinfo", StorePath::from_absolute(path, dir).unwrap().hash_part()))
}

#[test]
fn reads_and_writes_what_nix_copy_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (text_path, files) = make_paths(tmp.path());
    let dir = store_dir(&text_path);
    // A derivation (never built): text-addressed, with a reference.
    let expr = format!(
        r#"derivation {{ name = "storefront-test"; system = "x"; builder = builtins.storePath "{}"; }}"#,
        files[0]
    );
    let drv = run("nix-instantiate", &["-E", &expr]);
    let drv = drv.trim();
    let sk = SigningKey::generate("storefront-test-narinfo-1").unwrap();
    let sk_file = tmp.path().join("sk");
    std::fs::write(&sk_file, sk.to_secret_string()).unwrap();
    run("nix", &["store", "sign", "--key-file", sk_file.to_str().unwrap(), &text_path]);

    for compression in ["none", "xz"] {
        let cache = tmp.path().join(format!("cache-{compression}"));
        copy_to_cache(&cache, compression, &text_path);
        copy_to_cache(&cache, compression, drv);
        let mut seen = 0;
        for path in [text_path.as_str(), &files[0], &files[1], drv] {
            let text = std::fs::read_to_string(narinfo_path(&cache, path, dir)).unwrap();
            let ni = NarInfo::parse(&text, dir).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(ni.render(dir), text, "rendering changed it");
            check_against_path_info(&ni, path, dir);
            assert_eq!(ni.compression, compression);
            let file = std::fs::read(cache.join(&ni.url)).unwrap();
            assert_eq!(ni.file_hash, Some(NixHash::sha256(Sha256::digest(&file).into())));
            assert_eq!(ni.file_size, Some(file.len() as u64));
            if path == drv {
                assert!(matches!(ni.ca, Some(ContentAddress::Text { .. })), "{text}");
                assert_eq!(ni.references, [StorePath::from_absolute(&files[0], dir).unwrap()]);
            }
            if path == text_path {
                assert_eq!(ni.signatures.len(), 1);
                assert!(sk.verifying_key().verify(&ni.fingerprint(dir).unwrap(), &ni.signatures[0]));
            }
            seen += 1;
        }
        assert_eq!(seen, 4);
    }
}

/// Every field `nix path-info --json --sigs` knows agrees with the narinfo.
fn check_against_path_info(ni: &NarInfo, path: &str, dir: &str) {
    let info = path_info(path);
    assert_eq!(ni.store_path.to_absolute(dir), path);
    assert_eq!(ni.nar_hash, NixHash::parse(info["narHash"].as_str().unwrap()).unwrap(), "{info}");
    assert_eq!(ni.nar_size, info["narSize"].as_u64().unwrap());
    let refs: BTreeSet<String> = ni.references.iter().map(|r| r.to_absolute(dir)).collect();
    let nix_refs: BTreeSet<String> =
        info["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    assert_eq!(refs, nix_refs);
    assert_eq!(ni.deriver.as_ref().map(|d| d.to_absolute(dir)).as_deref(), info["deriver"].as_str());
    assert_eq!(ni.ca.map(|ca| ca.to_string()).as_deref(), info["ca"].as_str(), "{info}");
    let sigs: Vec<String> = ni.signatures.iter().map(|s| s.to_string()).collect();
    let nix_sigs: Vec<&str> =
        info["signatures"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap()).collect()).unwrap_or_default();
    assert_eq!(sigs, nix_sigs);
}

#[test]
fn nix_trusts_our_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = make_paths(tmp.path());
    let dir = store_dir(&path);
    let cache = tmp.path().join("cache");
    copy_to_cache(&cache, "none", &path);

    // Without its content address the path needs a trusted signature.
    let file = narinfo_path(&cache, &path, dir);
    let mut ni = NarInfo::parse(&std::fs::read_to_string(&file).unwrap(), dir).unwrap();
    assert!(ni.ca.is_some());
    ni.ca = None;
    let sk = SigningKey::generate("storefront-test-trust-1").unwrap();
    ni.signatures = vec![sk.sign(&ni.fingerprint(dir).unwrap())];
    std::fs::write(&file, ni.render(dir)).unwrap();

    let copy_from = |target: &str, trusted: &str| {
        let from = format!("file://{}", cache.display());
        let to = tmp.path().join(target);
        let to = to.to_str().unwrap();
        let args = ["copy", "--from", &from, "--to", to, "--option", "trusted-public-keys", trusted, &path];
        try_run("nix", &args)
    };
    let other = SigningKey::generate("storefront-test-trust-1").unwrap().verifying_key().to_string();
    let (ok, _, stderr) = copy_from("untrusted", &other);
    assert!(!ok && stderr.contains("lacks a valid signature"), "{stderr}");
    let (ok, _, stderr) = copy_from("trusted", &sk.verifying_key().to_string());
    assert!(ok, "Nix refused our signature:\n{stderr}");
}
