use std::path::{Path, PathBuf};

use axum::{http::StatusCode, response::IntoResponse};
use store::{SigningKey, StorePath, nar::NarReader, nix32};

use super::*;
use url::Url;

const STORE: &str = store::DEFAULT_STORE_DIR;

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A reference vector's NAR bytes (a NAR made by Nix).
fn vector(name: &str) -> Vec<u8> {
    let v = testkit::vectors().into_iter().find(|v| v.name == name).expect("vector");
    let bytes = std::fs::read(&v.nar).expect("vector NAR");
    assert_eq!(bytes.len() as u64, v.nar_size);
    bytes
}

fn path(seed: u8, name: &str) -> StorePath {
    StorePath::from_parts([seed; 20], name).unwrap()
}

/// A cache over memory services, pulling from `upstreams`.
fn new_cache(upstreams: &[&Url], keys: &[&SigningKey]) -> Arc<BinaryCache> {
    let config = CacheConfig {
        upstreams: upstreams.iter().map(|u| (*u).clone()).collect(),
        trusted_public_keys: keys.iter().map(|k| k.verifying_key()).collect(),
        ..CacheConfig::default()
    };
    memory_cache(config)
}

fn memory_cache(config: CacheConfig) -> Arc<BinaryCache> {
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = store::url::path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
    BinaryCache::new(config, blobs, dirs, paths, Arc::new(castore::kv::MemoryStore::new())).unwrap()
}

/// The NAR a stored path renders to.
async fn render(cache: &BinaryCache, info: &PathInfo) -> Vec<u8> {
    let mut reader = NarReader::open(&info.node, cache.blobs.clone(), cache.directories.clone()).await.unwrap();
    let mut nar = Vec::new();
    reader.read_to_end(&mut nar).await.unwrap();
    nar
}

async fn stored(cache: &BinaryCache, path: &StorePath) -> Option<PathInfo> {
    cache.paths.get(path.digest()).await.unwrap()
}

/// A binary cache directory, as `nix copy --to file://…` writes one.
struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("nar")).unwrap();
        Self { tmp }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// `file:///…/` (without the trailing slash, which must not matter).
    fn url(&self) -> Url {
        Url::from_file_path(self.path()).unwrap()
    }

    /// Writes `nar` compressed as `c` and a narinfo for it, signed by
    /// `key`; returns the narinfo.
    async fn publish(
        &self,
        path: &StorePath,
        nar: &[u8],
        references: &[&StorePath],
        c: Compression,
        key: Option<&SigningKey>,
    ) -> NarInfo {
        let mut file = Vec::new();
        c.encoder(nar).read_to_end(&mut file).await.unwrap();
        let file_sha = sha256(&file);
        let url = format!("nar/{}.nar{}", nix32::encode(&file_sha), c.extension());
        std::fs::write(self.path().join(&url), &file).unwrap();
        let mut ni = NarInfo {
            store_path: path.clone(),
            url,
            compression: c.name().to_owned(),
            file_hash: Some(NixHash::sha256(file_sha)),
            file_size: Some(file.len() as u64),
            nar_hash: NixHash::sha256(sha256(nar)),
            nar_size: nar.len() as u64,
            references: references.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            signatures: Vec::new(),
            ca: None,
        };
        if let Some(key) = key {
            ni.signatures.push(key.sign(&ni.fingerprint(STORE).unwrap()));
        }
        self.write_narinfo(&ni);
        ni
    }

    /// (Re)writes the narinfo file of `ni` under its own hash.
    fn write_narinfo(&self, ni: &NarInfo) {
        self.write_narinfo_as(ni.store_path.digest(), ni);
    }

    fn write_narinfo_as(&self, digest: &Digest, ni: &NarInfo) {
        std::fs::write(self.path().join(format!("{}.narinfo", nix32::encode(digest))), ni.render(STORE)).unwrap();
    }
}

/// Serves a directory over real HTTP on loopback, counting requests by
/// path; every response waits `delay`, and with `status` set every
/// request gets that status instead.
struct Server {
    url: Url,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    async fn start(dir: PathBuf, delay: Duration, status: Option<StatusCode>) -> Self {
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move |uri: http::Uri| {
            let (dir, counter) = (dir.clone(), counter.clone());
            async move {
                *counter.lock().unwrap().entry(uri.path().to_owned()).or_default() += 1;
                tokio::time::sleep(delay).await;
                if let Some(status) = status {
                    return status.into_response();
                }
                match tokio::fs::read(dir.join(uri.path().trim_start_matches('/'))).await {
                    Ok(bytes) => bytes.into_response(),
                    Err(_) => StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        Self { url: serve(app).await, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

/// Serves `app` on a loopback port until the test ends.
async fn serve(app: axum::Router) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}").parse().unwrap()
}

fn narinfo_file(path: &StorePath) -> String {
    format!("/{}.narinfo", path.hash_part())
}

#[test]
fn configuration() {
    let none = Upstreams::new(&CacheConfig::default()).unwrap();
    assert!(none.is_none());

    let url: Url = "https://cache.example/sub".parse().unwrap();
    let no_key = CacheConfig { upstreams: vec![url.clone()], ..CacheConfig::default() };
    let Err(CacheError::Config(m)) = Upstreams::new(&no_key) else { panic!("an upstream without keys") };
    assert!(m.contains("https://cache.example/sub") && m.contains("--trusted-public-key"), "{m}");

    let key = SigningKey::generate("k").unwrap().verifying_key();
    let with = |u: &str| CacheConfig {
        upstreams: vec![u.parse().unwrap()],
        trusted_public_keys: vec![key.clone()],
        ..CacheConfig::default()
    };
    let ups = Upstreams::new(&with("https://cache.example/sub")).unwrap().unwrap();
    assert_eq!(ups.caches[0].base.as_str(), "https://cache.example/sub/");
    assert_eq!(ups.caches[0].resolve("nar/x.nar.xz").unwrap().as_str(), "https://cache.example/sub/nar/x.nar.xz");
    assert!(ups.caches[0].resolve("https://elsewhere.example/x.nar").is_err());
    assert!(ups.caches[0].resolve("http://cache.example/sub/x.nar").is_err(), "another scheme is another origin");
    let file = Upstreams::new(&with("file:///srv/cache")).unwrap().unwrap();
    assert_eq!(file.caches[0].base.as_str(), "file:///srv/cache/");
    assert!(file.caches[0].resolve("nar/a.nar").is_ok());
    assert!(file.caches[0].resolve("../etc/passwd").is_err());
    assert!(file.caches[0].resolve("/etc/passwd").is_err());
    for bad in ["s3://bucket", "ftp://host/x", "https://host/x?region=1"] {
        assert!(matches!(Upstreams::new(&with(bad)), Err(CacheError::Config(_))), "{bad}");
    }
    // Passwords stay out of messages.
    let secret: Url = "https://user:hunter2@cache.example/".parse().unwrap();
    assert!(!redacted(&secret).contains("hunter2"));
}

#[test]
fn misses_are_bounded_and_expire() {
    let mut state = State::default();
    let now = Instant::now();
    let later = now + Duration::from_secs(30);
    for i in 0..10u8 {
        state.remember_miss([i; 20], later, 4);
        assert!(state.misses.len() <= 4);
    }
    assert!(state.is_miss(&[9; 20], now));
    assert!(!state.is_miss(&[0; 20], now), "evicted");
    assert!(!state.is_miss(&[9; 20], later), "expired");
    assert!(!state.misses.contains_key(&[9; 20]), "an expired miss is dropped when seen");

    state.waits.insert([1; 20], vec![[2; 20]]);
    state.waits.insert([2; 20], vec![[3; 20]]);
    assert!(state.reaches([1; 20], [3; 20]));
    assert!(!state.reaches([3; 20], [1; 20]));
}

/// A path with a reference (and a self-reference) is pulled from a
/// file:// cache: the reference first, both PathInfos as the upstream
/// described them, and both NARs render back byte for byte.
#[tokio::test]
async fn pulls_a_path_with_its_references() {
    let key = SigningKey::generate("test-1").unwrap();
    let up = Dir::new();
    let (lib, app) = (path(1, "lib"), path(2, "app"));
    let (lib_nar, app_nar) = (vector("file-big"), vector("dir-nested"));
    let lib_ni = up.publish(&lib, &lib_nar, &[], Compression::Zstd, Some(&key)).await;
    let app_ni = up.publish(&app, &app_nar, &[&app, &lib], Compression::Xz, Some(&key)).await;

    let cache = new_cache(&[&up.url()], &[&key]);
    let info = fetch(cache.clone(), *app.digest()).await.unwrap().expect("pulled");
    assert_eq!(info.store_path, app);
    assert_eq!(info.references, [app.clone(), lib.clone()]);
    assert_eq!((info.nar_size, NixHash::sha256(info.nar_sha256)), (app_ni.nar_size, app_ni.nar_hash));
    assert_eq!(info.signatures, app_ni.signatures);
    assert_eq!(stored(&cache, &app).await, Some(info.clone()));
    assert_eq!(render(&cache, &info).await, app_nar);

    let lib_info = stored(&cache, &lib).await.expect("the reference was pulled too");
    assert_eq!(lib_info.signatures, lib_ni.signatures);
    assert_eq!(render(&cache, &lib_info).await, lib_nar);

    // Stored now: the same record, even with the upstream gone.
    drop(up);
    assert_eq!(fetch(cache.clone(), *app.digest()).await.unwrap(), Some(info));
}

/// Narinfos without a trusted signature (none, a foreign key under the
/// trusted name, a CA path unsigned, a signature over other facts) or
/// for another path are refused, as misses, and nothing is stored.
#[tokio::test]
async fn refuses_untrusted_narinfos() {
    let key = SigningKey::generate("test-1").unwrap();
    let impostor = SigningKey::generate("test-1").unwrap();
    let up = Dir::new();
    let nar = vector("file-hello");
    let unsigned = path(1, "unsigned");
    up.publish(&unsigned, &nar, &[], Compression::None, None).await;
    let foreign = path(2, "foreign");
    up.publish(&foreign, &nar, &[], Compression::None, Some(&impostor)).await;
    let ca = path(3, "ca");
    let mut ca_ni = up.publish(&ca, &nar, &[], Compression::None, None).await;
    ca_ni.ca = Some(format!("fixed:r:{}", ca_ni.nar_hash).parse().unwrap());
    up.write_narinfo(&ca_ni);
    // Signed, then a reference added: the signature no longer fits.
    let altered = path(4, "altered");
    let mut altered_ni = up.publish(&altered, &nar, &[], Compression::None, Some(&key)).await;
    altered_ni.references.push(path(9, "extra"));
    up.write_narinfo(&altered_ni);
    // A valid narinfo, but filed under another path's hash.
    let other = path(5, "other");
    let honest = up.publish(&path(6, "honest"), &nar, &[], Compression::None, Some(&key)).await;
    up.write_narinfo_as(other.digest(), &honest);

    let cache = new_cache(&[&up.url()], &[&key]);
    for p in [&unsigned, &foreign, &ca, &altered, &other] {
        assert_eq!(fetch(cache.clone(), *p.digest()).await.unwrap(), None, "{p}");
        assert_eq!(stored(&cache, p).await, None, "{p}");
    }
    let all: Vec<PathInfo> = cache.paths.list().try_collect().await.unwrap();
    assert!(all.is_empty(), "{all:?}");
    // The honest narinfo itself is fine: the checks are not just failing.
    assert!(fetch(cache.clone(), *path(6, "honest").digest()).await.unwrap().is_some());
}

/// NARs that do not match their narinfo are errors naming the problem,
/// and no PathInfo is stored; a reference no upstream has is an error
/// for the path that needs it.
#[tokio::test]
async fn mismatched_nars_store_nothing() {
    let key = SigningKey::generate("test-1").unwrap();
    let up = Dir::new();
    let (nar, other_nar) = (vector("dir-one-file"), vector("dir-sorting"));

    // NarHash of another NAR (signed as such).
    let wrong_hash = path(1, "wrong-hash");
    let mut ni = up.publish(&wrong_hash, &nar, &[], Compression::Xz, None).await;
    ni.nar_hash = NixHash::sha256(sha256(&other_nar));
    ni.signatures = vec![key.sign(&ni.fingerprint(STORE).unwrap())];
    up.write_narinfo(&ni);

    // The right NAR, but FileHash says otherwise.
    let wrong_file = path(2, "wrong-file");
    let mut ni = up.publish(&wrong_file, &nar, &[], Compression::Gzip, Some(&key)).await;
    ni.file_hash = Some(NixHash::sha256([7; 32]));
    up.write_narinfo(&ni);

    // A reference that no upstream has.
    let orphan = path(4, "orphan");
    up.publish(&orphan, &nar, &[&path(5, "absent")], Compression::None, Some(&key)).await;

    // A NAR file that is not there.
    let no_nar = path(3, "no-nar");
    let ni = up.publish(&no_nar, &nar, &[], Compression::None, Some(&key)).await;
    std::fs::remove_file(up.path().join(&ni.url)).unwrap();

    let cache = new_cache(&[&up.url()], &[&key]);
    for (p, want) in [
        (&wrong_hash, "NarHash"),
        (&wrong_file, "FileHash"),
        (&no_nar, "is missing"),
        (&orphan, "5-absent is in no upstream cache"),
    ] {
        match fetch(cache.clone(), *p.digest()).await {
            Err(CacheError::Upstream(m)) => assert!(m.contains(want) && m.contains(p.name()), "{p}: {m}"),
            other => panic!("{p}: {other:?}"),
        }
        assert_eq!(stored(&cache, p).await, None, "{p}");
    }
    // Failures are not remembered as misses: fixed upstream, fixed answer.
    up.publish(&no_nar, &nar, &[], Compression::None, Some(&key)).await;
    assert!(fetch(cache.clone(), *no_nar.digest()).await.unwrap().is_some());
}

/// A miss is `None`, remembered for a while (the upstream is not asked
/// again), then asked again.
#[tokio::test]
async fn a_miss_is_none_and_remembered() {
    let key = SigningKey::generate("test-1").unwrap();
    let up = Dir::new();
    let server = Server::start(up.path().to_owned(), Duration::ZERO, None).await;
    let mut cache = new_cache(&[&server.url], &[&key]);
    Arc::get_mut(&mut cache).unwrap().upstream.as_mut().unwrap().miss_ttl = Duration::from_millis(300);
    let late = path(1, "late");
    assert_eq!(fetch(cache.clone(), *late.digest()).await.unwrap(), None);
    assert_eq!(server.hits(&narinfo_file(&late)), 1);

    up.publish(&late, &vector("file-exec"), &[], Compression::Bzip2, Some(&key)).await;
    assert_eq!(fetch(cache.clone(), *late.digest()).await.unwrap(), None, "the miss is remembered");
    assert_eq!(server.hits(&narinfo_file(&late)), 1, "and the upstream not asked again");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let info = fetch(cache.clone(), *late.digest()).await.unwrap().expect("asked again once expired");
    assert_eq!(render(&cache, &info).await, vector("file-exec"));
    assert_eq!(server.hits(&narinfo_file(&late)), 2);
}

/// Ten concurrent fetches of one path (with a reference), over HTTP:
/// one narinfo request and one NAR download each, the same answer for
/// all; afterwards the store answers without the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fetches_share_one_download() {
    let key = SigningKey::generate("test-1").unwrap();
    let up = Dir::new();
    let (lib, app) = (path(1, "lib"), path(2, "app"));
    let lib_ni = up.publish(&lib, &vector("file-big"), &[], Compression::Zstd, Some(&key)).await;
    let app_ni = up.publish(&app, &vector("dir-nested"), &[&lib], Compression::Xz, Some(&key)).await;
    let server = Server::start(up.path().to_owned(), Duration::from_millis(100), None).await;
    let cache = new_cache(&[&server.url], &[&key]);

    let results = futures::future::join_all((0..10).map(|_| tokio::spawn(fetch(cache.clone(), *app.digest())))).await;
    let infos: Vec<PathInfo> = results.into_iter().map(|r| r.unwrap().unwrap().expect("pulled")).collect();
    assert!(infos.iter().all(|i| *i == infos[0]));
    for file in [narinfo_file(&app), narinfo_file(&lib), format!("/{}", app_ni.url), format!("/{}", lib_ni.url)] {
        assert_eq!(server.hits(&file), 1, "{file}");
    }
    assert_eq!(server.total_hits(), 4);
    let ups = cache.upstream.as_ref().unwrap();
    assert!(ups.state.lock().unwrap().inflight.is_empty(), "finished fetches leave the in-flight map");

    assert_eq!(fetch(cache.clone(), *app.digest()).await.unwrap(), Some(infos[0].clone()));
    assert_eq!(server.total_hits(), 4);
    assert_eq!(render(&cache, &infos[0]).await, vector("dir-nested"));
}

/// Upstreams are asked in order: a miss at the first, the path from the
/// second; with both holding it, the first one's copy wins. A failing
/// upstream does not stop the others, but when no one has the path the
/// failure is reported rather than a miss.
#[tokio::test]
async fn upstreams_are_tried_in_order() {
    let (key1, key2) = (SigningKey::generate("one").unwrap(), SigningKey::generate("two").unwrap());
    let (first, second) = (Dir::new(), Dir::new());
    let first_server = Server::start(first.path().to_owned(), Duration::ZERO, None).await;
    let nar = vector("symlink-abs");
    let only_second = path(1, "only-second");
    second.publish(&only_second, &nar, &[], Compression::None, Some(&key2)).await;
    let both = path(2, "both");
    let in_first = first.publish(&both, &nar, &[], Compression::Xz, Some(&key1)).await;
    let in_second = second.publish(&both, &nar, &[], Compression::Zstd, Some(&key2)).await;

    let cache = new_cache(&[&first_server.url, &second.url()], &[&key1, &key2]);
    let info = fetch(cache.clone(), *only_second.digest()).await.unwrap().expect("from the second");
    assert_eq!(first_server.hits(&narinfo_file(&only_second)), 1, "the first was asked");
    assert_eq!(info.signatures[0].name, "two");
    let info = fetch(cache.clone(), *both.digest()).await.unwrap().expect("from the first");
    assert_eq!(info.signatures, in_first.signatures);
    assert_ne!(info.signatures, in_second.signatures);

    let broken = Server::start(first.path().to_owned(), Duration::ZERO, Some(StatusCode::BAD_GATEWAY)).await;
    let cache = new_cache(&[&broken.url, &second.url()], &[&key1, &key2]);
    assert!(fetch(cache.clone(), *only_second.digest()).await.unwrap().is_some(), "past the broken one");
    let absent = path(3, "absent");
    match fetch(cache.clone(), *absent.digest()).await {
        Err(e @ CacheError::Upstream(_)) => {
            let m = e.to_string();
            assert!(m.contains(broken.url.as_str()) && m.contains("502"), "{m}");
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        }
        other => panic!("{other:?}"),
    }
}

/// A reference cycle (a trusted key could sign one) fails instead of
/// waiting forever.
#[tokio::test]
async fn reference_cycles_fail() {
    let key = SigningKey::generate("test-1").unwrap();
    let up = Dir::new();
    let (a, b) = (path(1, "a"), path(2, "b"));
    up.publish(&a, &vector("file-hello"), &[&b], Compression::None, Some(&key)).await;
    up.publish(&b, &vector("file-exec"), &[&a], Compression::None, Some(&key)).await;
    let cache = new_cache(&[&up.url()], &[&key]);
    let result = tokio::time::timeout(Duration::from_secs(10), fetch(cache.clone(), *a.digest())).await;
    match result.expect("no deadlock") {
        Err(CacheError::Upstream(m)) => assert!(m.contains("cycle"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!((stored(&cache, &a).await, stored(&cache, &b).await), (None, None));
}

/// Another storefront as the upstream, through its own router: its
/// narinfos (signed on the fly by its key) and NARs are what a second
/// one pulls.
#[tokio::test]
async fn pulls_from_another_storefront() {
    let key = Arc::new(SigningKey::generate("first-1").unwrap());
    let first = memory_cache(CacheConfig { signing_key: Some(key.clone()), ..CacheConfig::default() });
    let (lib, app) = (path(1, "lib"), path(2, "app"));
    for (p, name, refs) in [(&lib, "file-big", vec![]), (&app, "dir-sorting", vec![lib.clone()])] {
        let nar = vector(name);
        let ingested = store::nar::ingest(&mut &nar[..], &*first.blobs, &*first.directories).await.unwrap();
        first
            .paths
            .put(PathInfo {
                store_path: p.clone(),
                node: ingested.node,
                references: refs,
                nar_size: ingested.nar_size,
                nar_sha256: ingested.nar_sha256,
                signatures: Vec::new(),
                deriver: None,
                ca: None,
            })
            .await
            .unwrap();
    }
    let url = serve(crate::router(first.clone())).await;
    let second = new_cache(&[&url], &[&key]);
    let info = fetch(second.clone(), *app.digest()).await.unwrap().expect("pulled from the first");
    assert_eq!(info.signatures.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["first-1"]);
    assert_eq!(render(&second, &info).await, vector("dir-sorting"));
    let lib_info = stored(&second, &lib).await.expect("with its reference");
    assert_eq!(render(&second, &lib_info).await, vector("file-big"));
    assert_eq!(fetch(second.clone(), [9; 20]).await.unwrap(), None);
}
