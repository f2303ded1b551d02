//! Pull-through from upstream binary caches (`--upstream URL`).
//!
//! A path this cache lacks is asked of each upstream in order
//! (`<hash>.narinfo`); the first narinfo that passes the checks wins, its
//! references are made present first (each through [`fetch`] again, so a
//! closure is pulled bottom-up and every path once), then its NAR is
//! streamed in, decompressed, ingested into the castore (deduplicated like
//! any other NAR), checked against NarHash/NarSize (and FileHash/FileSize,
//! when given) and only then made visible with a `PathInfo` put. A failure
//! anywhere leaves no PathInfo behind (at most unreferenced blobs).
//!
//! Decisions:
//! - **Trust.** A narinfo is accepted only with a valid `Sig` by one of
//!   `trusted_public_keys` (Nix's `require-sigs` rule). Nix would also take a
//!   content-addressed path without a signature, after checking that its
//!   store path follows from its CA field; we refuse those too: simpler, and
//!   never less safe. A narinfo that fails a check (unparsable, another
//!   store path, not signed by a trusted key) is logged as a warning and
//!   counts as a miss at that upstream, so the next upstream is asked.
//! - **Misses and failures.** 404 and 403 are misses (S3 answers 403 for
//!   an absent key, and Nix reads both as "not there"). Any other answer or
//!   a transport error is a failure: the next upstream is still asked, and
//!   when none has the path the request fails with
//!   [`CacheError::Upstream`] (502) naming what failed, instead of claiming
//!   the path does not exist. A NAR that fails to download or to verify is
//!   also tried at the next upstream that has the path. A path absent
//!   everywhere (and no failure) is remembered for [`MISS_TTL`], so a storm
//!   of lookups does not hammer the upstreams; at most [`MAX_MISSES`] are
//!   remembered.
//! - **URLs.** An upstream URL is a directory (a trailing `/` is added):
//!   `http://`, `https://` or `file:///dir` (a local binary cache, as
//!   `nix copy --to file://…` writes it). A narinfo's `URL` is resolved
//!   against it and must stay on the same origin (HTTP) or inside the
//!   directory (`file:`): the `URL` field is not covered by the signature,
//!   so it must not send this server anywhere else.
//! - **Sharing.** Concurrent fetches of one path share one task (which runs
//!   to the end even if every requester goes away, so the work is not lost).
//!   At most [`PARALLEL_DOWNLOADS`] NARs are downloaded at once across all
//!   upstreams; a path holds its download slot only while its own NAR
//!   streams in (never while waiting for its references), so deep closures
//!   cannot deadlock on the slots. A reference cycle (impossible in a real
//!   Nix store, but a trusted key could sign one) is refused instead of
//!   waiting forever.
use std::{
    collections::{HashMap, HashSet},
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{
    FutureExt, TryStreamExt,
    future::{BoxFuture, Shared},
};
use sha2::{Digest as _, Sha256};
use store::{
    NarInfo, NixHash, PathInfo, VerifyingKey,
    nar::{IngestOptions, NarError},
    store_path::DIGEST_LEN,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, BufReader},
    sync::Semaphore,
};

use crate::{BinaryCache, CacheConfig, CacheError, Compression};

mod source;

use source::{FileReader, Upstream, chain, redacted};

/// How long a path absent from every upstream is answered as absent
/// without asking again.
pub const MISS_TTL: Duration = Duration::from_secs(30);
/// Most misses remembered at once.
pub const MAX_MISSES: usize = 65_536;
/// NARs downloaded at once, across all upstreams.
pub const PARALLEL_DOWNLOADS: usize = 8;
/// narinfo requests at once, across all upstreams.
const PARALLEL_NARINFOS: usize = 32;
/// References of one path fetched at once.
const REFERENCE_FANOUT: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest narinfo accepted (one with thousands of references is ~100 KiB).
const MAX_NARINFO: u64 = 4 << 20;
/// Buffer between the compressed file and its decoder.
const READ_BUFFER: usize = 256 << 10;
/// Most bytes read after the NAR ended, to finish hashing the compressed
/// file (a decoder may stop at the end of its stream without reading on).
const MAX_TRAILING: u64 = 1 << 20;
const USER_AGENT: &str = concat!("storefront/", env!("CARGO_PKG_VERSION"));

type Digest = [u8; DIGEST_LEN];
type SharedFetch = Shared<BoxFuture<'static, Result<Option<PathInfo>, Arc<CacheError>>>>;
type Body = Box<dyn AsyncRead + Send + Unpin>;

/// The upstream caches of a [`BinaryCache`] and the fetches in flight.
pub struct Upstreams {
    caches: Vec<Upstream>,
    keys: Vec<VerifyingKey>,
    client: reqwest::Client,
    downloads: Semaphore,
    narinfos: Semaphore,
    state: Mutex<State>,
    miss_ttl: Duration,
    max_misses: usize,
}

/// What the fetches share, behind one lock (never held across an await).
#[derive(Default)]
struct State {
    /// The fetch of each path in flight; removed by its task when done.
    inflight: HashMap<Digest, SharedFetch>,
    /// Path in flight → the references it waits for (to refuse cycles).
    waits: HashMap<Digest, Vec<Digest>>,
    /// Paths no upstream had, until when that answer stands.
    misses: HashMap<Digest, Instant>,
}

impl State {
    fn is_miss(&mut self, digest: &Digest, now: Instant) -> bool {
        match self.misses.get(digest) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.misses.remove(digest);
                false
            }
            None => false,
        }
    }

    fn remember_miss(&mut self, digest: Digest, until: Instant, max: usize) {
        if self.misses.len() >= max && !self.misses.contains_key(&digest) {
            let now = Instant::now();
            self.misses.retain(|_, t| *t > now);
            if self.misses.len() >= max {
                // All fresh: forgetting them costs only repeated lookups.
                self.misses.clear();
            }
        }
        self.misses.insert(digest, until);
    }

    /// Whether `to` is `from` or waited for by it, directly or not.
    fn reaches(&self, from: Digest, to: Digest) -> bool {
        let mut stack = vec![from];
        let mut seen = HashSet::new();
        while let Some(d) = stack.pop() {
            if d == to {
                return true;
            }
            if seen.insert(d) {
                stack.extend(self.waits.get(&d).into_iter().flatten());
            }
        }
        false
    }
}

impl Upstreams {
    /// `None` when no upstream is configured; an error when upstreams are
    /// configured without a key to trust, or one is not a usable URL.
    pub(crate) fn new(config: &CacheConfig) -> Result<Option<Self>, CacheError> {
        if config.upstreams.is_empty() {
            return Ok(None);
        }
        if config.trusted_public_keys.is_empty() {
            let urls: Vec<String> = config.upstreams.iter().map(redacted).collect();
            return Err(CacheError::Config(format!(
                "upstream caches ({}) need at least one trusted public key: a path is pulled only when a \
                 key you trust signed it. Add --trusted-public-key NAME:BASE64 (cache.nixos.org's is \
                 cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=)",
                urls.join(", ")
            )));
        }
        let caches = config.upstreams.iter().map(Upstream::new).collect::<Result<_, _>>()?;
        // https:// upstreams are checked against the bundled Mozilla roots
        // and the system's (or $SSL_CERT_FILE's): a private cache with its
        // own CA works once that CA is trusted there.
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| CacheError::Config(format!("HTTP client for the upstream caches: {}", chain(&e))))?;
        Ok(Some(Self {
            caches,
            keys: config.trusted_public_keys.clone(),
            client,
            downloads: Semaphore::new(PARALLEL_DOWNLOADS),
            narinfos: Semaphore::new(PARALLEL_NARINFOS),
            state: Mutex::default(),
            miss_ttl: MISS_TTL,
            max_misses: MAX_MISSES,
        }))
    }

    /// The narinfo text at this upstream; `None` when it has none.
    async fn narinfo(&self, up: &Upstream, digest: &Digest) -> Result<Option<Vec<u8>>, String> {
        let _permit = self.narinfos.acquire().await.expect("the semaphore is never closed");
        let url = up.resolve(&format!("{}.narinfo", store::nix32::encode(digest)))?;
        let Some(body) = up.open(&self.client, &url).await? else { return Ok(None) };
        let mut text = Vec::new();
        body.take(MAX_NARINFO + 1).read_to_end(&mut text).await.map_err(|e| format!("{}: {e}", redacted(&url)))?;
        Ok(Some(text))
    }

    /// The narinfo, if it is for this path and signed by a trusted key;
    /// otherwise why not.
    fn accept(&self, text: &[u8], digest: &Digest, store_dir: &str) -> Result<NarInfo, String> {
        if text.len() as u64 > MAX_NARINFO {
            return Err(format!("larger than {MAX_NARINFO} bytes"));
        }
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_owned())?;
        let ni = NarInfo::parse(text, store_dir).map_err(|e| e.to_string())?;
        if ni.store_path.digest() != digest {
            return Err(format!("it describes another store path, {}", ni.store_path));
        }
        let fingerprint = ni.fingerprint(store_dir).ok_or_else(|| format!("NarHash {} is not sha256", ni.nar_hash))?;
        let trusted = ni.signatures.iter().any(|sig| self.keys.iter().any(|k| k.verify(&fingerprint, sig)));
        if !trusted {
            let names: Vec<&str> = ni.signatures.iter().map(|s| s.name.as_str()).collect();
            return Err(if names.is_empty() {
                "it is not signed (content-addressed paths need a signature too)".to_owned()
            } else {
                format!("no valid signature by a trusted key (signed by: {})", names.join(", "))
            });
        }
        Ok(ni)
    }

    /// Streams the NAR of `ni` from `up` into the castore, checks it, and
    /// puts its PathInfo (its references are stored already).
    async fn download(&self, cache: &BinaryCache, up: &Upstream, ni: &NarInfo) -> Result<PathInfo, Failure> {
        let path = &ni.store_path;
        let fail = |m: String| Failure::Upstream(format!("{path} from {up}: {m}"));
        let nar_sha256 =
            ni.nar_hash.as_sha256().ok_or_else(|| fail(format!("NarHash {} is not sha256", ni.nar_hash)))?;
        let compression: Compression = ni.compression.parse().map_err(|e: CacheError| fail(e.to_string()))?;
        let url = up.resolve(&ni.url).map_err(fail)?;
        // Only FileHash in sha256 is checked (Nix writes no other); the
        // NarHash check below is what makes the contents trustworthy.
        let file_sha256 = ni.file_hash.as_ref().and_then(NixHash::as_sha256);
        let hash_file = file_sha256.is_some() && !(compression == Compression::None && file_sha256 == Some(nar_sha256));

        let permit = self.downloads.acquire().await.expect("the semaphore is never closed");
        let started = Instant::now();
        let body = up
            .open(&self.client, &url)
            .await
            .map_err(fail)?
            .ok_or_else(|| fail(format!("{} is missing, though the narinfo names it", redacted(&url))))?;
        let mut file = FileReader { inner: body, sha: hash_file.then(Sha256::new), size: 0 };
        let ingested = {
            let mut nar = compression.decoder(BufReader::with_capacity(READ_BUFFER, &mut file));
            let options = IngestOptions { expected_size: Some(ni.nar_size), ..IngestOptions::default() };
            store::nar::ingest_with(&mut *nar, &*cache.blobs, &*cache.directories, &options).await
        };
        let ingested = match ingested {
            Ok(ingested) => ingested,
            Err(NarError::Storage(e)) => return Err(Failure::Local(e.into())),
            Err(e) => return Err(fail(format!("{e}; nothing was stored"))),
        };
        if (ingested.nar_size, ingested.nar_sha256) != (ni.nar_size, nar_sha256) {
            return Err(fail(format!(
                "the NAR has {} bytes and NarHash {}, but the narinfo says {} bytes and {}; nothing was stored",
                ingested.nar_size,
                NixHash::sha256(ingested.nar_sha256),
                ni.nar_size,
                ni.nar_hash
            )));
        }
        if ni.file_size.is_some() || hash_file {
            // What the decoder left unread is part of the file too.
            let mut rest = (&mut file).take(MAX_TRAILING);
            tokio::io::copy(&mut rest, &mut tokio::io::sink())
                .await
                .map_err(|e| fail(format!("reading the NAR: {e}")))?;
        }
        let file_size = file.size;
        if let Some(expected) = ni.file_size.filter(|n| *n != file_size) {
            return Err(fail(format!("FileSize says {expected} bytes, but {file_size} were read; nothing was stored")));
        }
        if let (Some(sha), Some(expected)) = (file.sha.take(), file_sha256) {
            let got: [u8; 32] = sha.finalize().into();
            if got != expected {
                return Err(fail(format!(
                    "the compressed NAR has FileHash {}, but the narinfo says {}; nothing was stored",
                    NixHash::sha256(got),
                    NixHash::sha256(expected)
                )));
            }
        }
        drop(permit);

        let info = PathInfo {
            store_path: path.clone(),
            node: ingested.node,
            references: ni.references.clone(),
            nar_size: ingested.nar_size,
            nar_sha256: ingested.nar_sha256,
            signatures: ni.signatures.clone(),
            deriver: ni.deriver.clone(),
            ca: ni.ca,
        };
        let stored = cache.paths.put(info).await.map_err(|e| Failure::Local(e.into()))?;
        if stored.nar_sha256 != nar_sha256 {
            // First writer wins: an upload got there first with another NAR.
            tracing::warn!(
                path = %path,
                upstream = %up,
                stored = %NixHash::sha256(stored.nar_sha256),
                pulled = %ni.nar_hash,
                "path was stored meanwhile with another NarHash; keeping the stored one"
            );
        }
        tracing::info!(
            path = %path,
            nar_bytes = ni.nar_size,
            file_bytes = file_size,
            upstream = %up,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pulled from upstream"
        );
        Ok(stored)
    }
}

/// Why a download failed: the upstream's fault (the next upstream may do
/// better) or the local store's (no point asking elsewhere).
enum Failure {
    Upstream(String),
    Local(CacheError),
}

/// Fetches the path with this digest (and its closure) from the upstreams
/// into the cache's store and returns its PathInfo (what the store holds);
/// `None` when no upstream has it (or none is configured). Concurrent calls
/// for one path share one fetch.
pub(crate) async fn fetch(cache: Arc<BinaryCache>, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, CacheError> {
    fetch_for(cache, digest, None).await
}

/// [`fetch`], on behalf of the fetch of `parent` when it is one of its
/// references. Boxed: fetches recurse through references.
fn fetch_for(
    cache: Arc<BinaryCache>,
    digest: Digest,
    parent: Option<Digest>,
) -> BoxFuture<'static, Result<Option<PathInfo>, CacheError>> {
    async move {
        let Some(ups) = cache.upstream.as_ref() else { return Ok(None) };
        let shared = {
            let mut state = ups.state.lock().expect("poisoned");
            if state.is_miss(&digest, Instant::now()) {
                return Ok(None);
            }
            if let Some(parent) = parent {
                if state.reaches(digest, parent) {
                    return Err(CacheError::Upstream(format!(
                        "{} and {} refer to each other (a reference cycle); refusing both",
                        store::nix32::encode(&parent),
                        store::nix32::encode(&digest)
                    )));
                }
                state.waits.entry(parent).or_default().push(digest);
            }
            match state.inflight.get(&digest) {
                Some(fetching) => fetching.clone(),
                None => {
                    let task = tokio::spawn(run(cache.clone(), digest));
                    let fetching = async move {
                        task.await.unwrap_or_else(|e| Err(Arc::new(CacheError::Upstream(format!("fetch failed: {e}")))))
                    }
                    .boxed()
                    .shared();
                    state.inflight.insert(digest, fetching.clone());
                    fetching
                }
            }
        };
        shared.await.map_err(|e| duplicate(&e))
    }
    .boxed()
}

/// The task fetching one path: pulls it, then retires its in-flight entry
/// (and remembers a miss) in one step.
async fn run(cache: Arc<BinaryCache>, digest: Digest) -> Result<Option<PathInfo>, Arc<CacheError>> {
    let result = pull(&cache, digest).await;
    let ups = cache.upstream.as_ref().expect("fetches run only with upstreams");
    let mut state = ups.state.lock().expect("poisoned");
    state.inflight.remove(&digest);
    state.waits.remove(&digest);
    if let Ok(None) = result {
        state.remember_miss(digest, Instant::now() + ups.miss_ttl, ups.max_misses);
    }
    result.map_err(Arc::new)
}

/// Asks each upstream in turn; see the module documentation. `Ok(None)`
/// only when every upstream answered and none had the path.
async fn pull(cache: &Arc<BinaryCache>, digest: Digest) -> Result<Option<PathInfo>, CacheError> {
    // Stored meanwhile (an upload, or a fetch that just finished)?
    if let Some(info) = cache.paths.get(&digest).await? {
        return Ok(Some(info));
    }
    let ups = cache.upstream.as_ref().expect("fetches run only with upstreams");
    let hash = store::nix32::encode(&digest);
    let mut failures = Vec::new();
    for up in &ups.caches {
        let text = match ups.narinfo(up, &digest).await {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(upstream = %up, error = %e, "upstream narinfo request failed");
                failures.push(e);
                continue;
            }
        };
        let ni = match ups.accept(&text, &digest, &cache.config.store_dir) {
            Ok(ni) => ni,
            Err(reason) => {
                tracing::warn!(upstream = %up, narinfo = %format!("{hash}.narinfo"), %reason, "refusing upstream narinfo");
                continue;
            }
        };
        ensure_references(cache, &ni).await?;
        match ups.download(cache, up, &ni).await {
            Ok(info) => return Ok(Some(info)),
            Err(Failure::Local(e)) => return Err(e),
            Err(Failure::Upstream(e)) => {
                tracing::warn!(error = %e, "upstream NAR download failed");
                failures.push(e);
            }
        }
    }
    if failures.is_empty() {
        return Ok(None);
    }
    Err(CacheError::Upstream(format!("{hash}: {}", failures.join("; "))))
}

/// Makes every reference of `ni` (other than itself) present, fetching
/// the missing ones; fails when one cannot be had.
async fn ensure_references(cache: &Arc<BinaryCache>, ni: &NarInfo) -> Result<(), CacheError> {
    let own = *ni.store_path.digest();
    futures::stream::iter(ni.references.iter().filter(|r| *r.digest() != own).map(Ok))
        .try_for_each_concurrent(REFERENCE_FANOUT, |r| async move {
            if cache.paths.get(r.digest()).await?.is_some() {
                return Ok(());
            }
            match fetch_for(cache.clone(), *r.digest(), Some(own)).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(CacheError::Upstream(format!(
                    "{}: its reference {r} is in no upstream cache (signed by a trusted key), so it cannot be stored",
                    ni.store_path
                ))),
                Err(CacheError::Upstream(m)) => {
                    Err(CacheError::Upstream(format!("{}: reference {r}: {m}", ni.store_path)))
                }
                Err(e) => Err(e),
            }
        })
        .await
}

/// A copy of a shared fetch's error for each of its requesters.
fn duplicate(e: &CacheError) -> CacheError {
    use castore::Error as E;
    match e {
        CacheError::NotFound(m) => CacheError::NotFound(m.clone()),
        CacheError::BadRequest(m) => CacheError::BadRequest(m.clone()),
        CacheError::Conflict(m) => CacheError::Conflict(m.clone()),
        CacheError::Unsupported(m) => CacheError::Unsupported(m.clone()),
        CacheError::TooLarge(m) => CacheError::TooLarge(m.clone()),
        CacheError::RangeNotSatisfiable(n) => CacheError::RangeNotSatisfiable(*n),
        CacheError::Upstream(m) => CacheError::Upstream(m.clone()),
        CacheError::Config(m) => CacheError::Config(m.clone()),
        CacheError::Store(e) => CacheError::Store(match e {
            E::InvalidRequest(m) => E::InvalidRequest(m.clone()),
            E::NotFound(m) => E::NotFound(m.clone()),
            E::FailedPrecondition(m) => E::FailedPrecondition(m.clone()),
            E::TooLarge(m) => E::TooLarge(m.clone()),
            E::Storage(m) => E::Storage(m.clone()),
            E::Remote(s) => E::Remote(s.clone()),
            E::Io(e) => E::Io(io::Error::new(e.kind(), e.to_string())),
        }),
    }
}

#[cfg(test)]
mod tests;
