//! Signatures interoperate with the real Nix: its keys sign like ours,
//! byte for byte, and it reads the keys we generate.
mod nix_cli;

use std::path::Path;

use nix_cli::{make_paths, path_info, run, store_dir};
use store::{NixHash, Signature, SigningKey, StorePath, VerifyingKey, signing::fingerprint};

/// Our fingerprint of a path, from what `nix path-info --json` says.
fn fingerprint_of(path: &str) -> String {
    let info = path_info(path);
    let dir = store_dir(path);
    let nar_hash = NixHash::parse(info["narHash"].as_str().unwrap()).unwrap();
    let refs: Vec<StorePath> = info["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| StorePath::from_absolute(r.as_str().unwrap(), dir).unwrap())
        .collect();
    assert_eq!(refs.len(), 2);
    fingerprint(
        dir,
        &StorePath::from_absolute(path, dir).unwrap(),
        &nar_hash.as_sha256().unwrap(),
        info["narSize"].as_u64().unwrap(),
        &refs,
    )
}

/// The signature Nix recorded for `path` under `key_name`.
fn nix_signature(path: &str, key_name: &str) -> Signature {
    let info = path_info(path);
    let sigs: Vec<Signature> =
        info["signatures"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().parse().unwrap()).collect();
    let mine: Vec<&Signature> = sigs.iter().filter(|s| s.name == key_name).collect();
    assert_eq!(mine.len(), 1, "{info}");
    mine[0].clone()
}

fn sign_with_nix(key_file: &Path, path: &str) {
    run("nix", &["store", "sign", "--key-file", key_file.to_str().unwrap(), path]);
}

#[test]
fn nix_keys_sign_like_ours() {
    let dir = tempfile::tempdir().unwrap();
    let (sk_file, pk_file) = (dir.path().join("sk"), dir.path().join("pk"));
    let name = "storefront-test-nix-1";
    run("nix-store", &["--generate-binary-cache-key", name, sk_file.to_str().unwrap(), pk_file.to_str().unwrap()]);
    let sk = SigningKey::from_file(&sk_file).unwrap();
    let pk_text = std::fs::read_to_string(&pk_file).unwrap();
    let pk: VerifyingKey = pk_text.parse().unwrap();
    assert_eq!(sk.verifying_key(), pk);
    assert_eq!(pk.to_string(), pk_text.trim());
    assert_eq!(sk.to_secret_string(), std::fs::read_to_string(&sk_file).unwrap().trim());

    let (path, _) = make_paths(dir.path());
    sign_with_nix(&sk_file, &path);
    let nix_sig = nix_signature(&path, name);
    let fp = fingerprint_of(&path);
    assert_eq!(sk.sign(&fp), nix_sig, "fingerprint {fp}");
    assert!(pk.verify(&fp, &nix_sig));
}

#[test]
fn nix_reads_our_keys() {
    let dir = tempfile::tempdir().unwrap();
    let name = "storefront-test-ours-1";
    let sk = SigningKey::generate(name).unwrap();
    let sk_file = dir.path().join("sk");
    std::fs::write(&sk_file, sk.to_secret_string()).unwrap();

    let (path, _) = make_paths(dir.path());
    sign_with_nix(&sk_file, &path);
    let nix_sig = nix_signature(&path, name);
    let fp = fingerprint_of(&path);
    assert_eq!(sk.sign(&fp), nix_sig);
    assert!(sk.verifying_key().verify(&fp, &nix_sig));
}
