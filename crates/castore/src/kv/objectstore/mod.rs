//! [`ObjectStoreKv`]: one object per record in object storage, through the
//! `object_store` crate: S3 and S3-compatible servers (Garage, MinIO, Ceph
//! RGW, Cloudflare R2, GCS's S3 API), local files, or process memory. Many
//! storefront processes can share one bucket: that is how replicas scale
//! out (a `cache:` in front keeps hot chunks on each replica's disk).
//!
//! # Addresses
//!
//! - `objectstore+s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:3900&region=garage`
//! - `objectstore+s3://KEY_ID:SECRET@BUCKET/PREFIX` (credentials in the
//!   address, percent-encoded; logs show the secret as `***`)
//! - `objectstore+file:///var/lib/storefront/objects` (one directory)
//! - `objectstore+memory:` (for tests; one store per distinct address in a
//!   process, e.g. `objectstore+memory:///test-1`)
//!
//! S3 settings come from the usual AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …); options in the address win:
//!
//! | option | default | |
//! |---|---|---|
//! | `endpoint` | AWS | a custom S3 endpoint; buckets are then addressed by path |
//! | `region` | `us-east-1` | must match the server's (Garage: its `s3_region`) |
//! | `allow_http` | true for an `http://` endpoint | |
//! | `virtual_hosted` | true without an endpoint | bucket in the host name |
//! | `timeout` | 5s | per request; a stuck request is abandoned and retried |
//! | `connect_timeout` | 2s | |
//! | `retries` | 30 | retries of a failed request, with exponential backoff (to 5 s) |
//! | `retry_timeout` | 120s | no retry starts later than this after the first try (a hung Garage node stalls ~70 s) |
//! | `conditional` | `auto` | `true`/`false`: whether the server enforces conditional writes (below) |
//! | `concurrency` | 16 | chunks of one put written at once, records of a scan read at once |
//!
//! One client serves each address in a process: the four services opened on
//! one address share its connections.
//!
//! # Layout
//!
//! Record `key` of `table` is the object `PREFIX/TABLE/k<hex(key)>`.
//! Lower-case hex keeps byte order, so a prefix scan is one listing that
//! starts after an offset (S3's `StartAfter`) and stops when names leave the
//! prefix; S3 lists in byte order, pages of 1000. (Local directories list
//! in no order: there a prefix scan sorts the matching names, not values.)
//! The castore's tables hold the value as it is (a chunk object *is* the
//! chunk). Every other table's objects carry a 17-byte envelope: a tag
//! (value or tombstone) and a random nonce that makes each write distinct.
//!
//! # Writes
//!
//! Castore records are content-addressed, so a plain PUT is idempotent and
//! is retried freely; a chunk is first asked for (HEAD) so that storing
//! content again sends no bytes. Chunks of one put are written
//! concurrently (chunks name nothing, so their mutual order cannot matter);
//! the records of any other table are written one after the other, in the
//! order given, which keeps [`KvStore::put`]'s promise (a directory is
//! stored only after its children).
//!
//! Records of other tables may be mutable. With a server that enforces
//! conditional writes (AWS S3, R2, MinIO, Ceph RGW), a put creates with
//! `If-None-Match: *` and [`KvStore::compare_and_swap`] reads the record
//! and writes with `If-Match: <etag>`; a deletion writes a tombstone under
//! the same condition (S3 has no conditional DELETE), and get, contains and
//! the scans treat tombstones as absent. A 412 or 409 means another writer
//! came first: the record is read again and either retried or reported as
//! the conflict. When a write's answer is lost (a timeout), the record is
//! read again: its nonce tells whether the write took effect; if another
//! write replaced it meanwhile the outcome is unknown and the caller gets
//! an error rather than a guess. Tombstones are never removed (each costs
//! one small object).
//!
//! # Last writer wins
//!
//! Some servers accept the conditional headers and ignore them (Garage 2.5
//! does: a second `If-None-Match: *` PUT replaces the object). With
//! `conditional=auto` the engine probes the server before its first write
//! to a mutable table (it creates a probe object twice, then updates it with
//! a wrong etag) and, if a condition is ignored, logs a warning and follows
//! this rule; `conditional=false` chooses it outright, `objectstore+file:`
//! always. Within one client (one address in one process) every
//! read–compare–write of a record holds a lock, so it stays atomic there;
//! between processes the last writer wins, with deletions as plain DELETEs. This cannot lose a complete path:
//! castore records are content-addressed; a PathInfo is written only once
//! its contents and references are stored, so whichever of two racing
//! writers wins names a complete path; a tag is a pointer that the last
//! push sets; an upload session is advanced by one client at a time.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{
    StreamExt, TryStreamExt,
    future::ready,
    stream::{self, BoxStream},
};
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion, path::Path};
use tracing::{info, warn};

use super::{KvStore, Table};
use crate::{Error, Result};

mod options;
mod record;

use options::{Backend, Conditional};
use record::NONCE;

/// How mutable records are kept consistent between writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// The server enforces `If-None-Match` / `If-Match`: compare-and-swap is
    /// atomic across every process sharing the store.
    Conditional,
    /// Atomic within one client (one address in one process: the services
    /// opened on it share the client); between clients the last writer
    /// wins (see the module docs).
    LastWriterWins,
}

/// Records as objects; clones share one client.
#[derive(Clone)]
pub struct ObjectStoreKv {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    backend: Backend,
    prefix: Vec<String>,
    requested: Conditional,
    consistency: tokio::sync::OnceCell<Consistency>,
    /// Record locks (by hash of the object name) for last-writer-wins.
    locks: Vec<tokio::sync::Mutex<()>>,
    concurrency: usize,
    retries: usize,
    label: String,
}

const LOCK_STRIPES: usize = 64;

/// Stores open in this process by address, so the services opened on one
/// address share a client (and `objectstore+memory:` its records).
static OPEN: Mutex<Option<HashMap<String, Weak<Inner>>>> = Mutex::new(None);

impl ObjectStoreKv {
    /// Opens the store an `objectstore+s3:`, `objectstore+file:` or
    /// `objectstore+memory:` address names. Nothing is sent to the server
    /// until the first request.
    pub fn open(url: &url::Url) -> Result<Self> {
        let mut open = OPEN.lock().expect("poisoned");
        let open = open.get_or_insert_with(HashMap::new);
        if let Some(inner) = open.get(url.as_str()).and_then(Weak::upgrade) {
            return Ok(Self { inner });
        }
        open.retain(|_, inner| inner.strong_count() > 0);
        let o = options::open(url)?;
        let inner = Arc::new(Inner {
            store: o.store,
            backend: o.backend,
            prefix: o.prefix,
            requested: o.conditional,
            consistency: tokio::sync::OnceCell::new(),
            locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            concurrency: o.concurrency,
            retries: o.retries,
            label: o.label,
        });
        open.insert(url.as_str().to_owned(), Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// How mutable records are kept consistent, probing the server on the
    /// first call when the address says `conditional=auto`.
    pub async fn consistency(&self) -> Result<Consistency> {
        self.inner.consistency().await
    }
}

/// What one read–compare–write step decided.
enum Step<R> {
    /// Answer `R` without writing.
    Done(R),
    /// Write the value (`None`: delete), then answer `R`.
    Write(Option<Bytes>, R),
}

/// A record as read: its value (`None` for a tombstone), the nonce of the
/// write that stored it (enveloped tables) and its etag.
struct Stored {
    value: Option<Bytes>,
    nonce: Option<[u8; NONCE]>,
    etag: Option<String>,
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Inner {
    fn storage(&self, e: object_store::Error) -> Error {
        Error::Storage(format!("{}: {e}", self.label))
    }

    fn path(&self, table: Table, key: &[u8]) -> Path {
        record::path(&self.prefix, table, Some(&record::object_name(key)))
    }

    async fn consistency(&self) -> Result<Consistency> {
        self.consistency
            .get_or_try_init(|| async {
                Ok(match self.requested {
                    Conditional::On => Consistency::Conditional,
                    Conditional::Off => Consistency::LastWriterWins,
                    Conditional::Auto => self.probe().await?,
                })
            })
            .await
            .copied()
    }

    /// Finds out whether the server enforces conditional writes: a second
    /// create of one object must fail, and so must an update with a wrong
    /// etag.
    async fn probe(&self) -> Result<Consistency> {
        let name = format!("probe-{}", data_encoding::HEXLOWER.encode(&record::nonce()));
        let path = Path::from_iter(self.prefix.iter().map(String::as_str).chain(["_probe", name.as_str()]));
        let create = || self.store.put_opts(&path, PutPayload::from_static(b"probe"), PutMode::Create.into());
        let ignored = match create().await {
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                Some("conditional puts are not supported")
            }
            Err(e) => return Err(self.storage(e)),
            Ok(_) => match create().await {
                Ok(_) => Some("a second If-None-Match: * PUT replaced the object"),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let stale = UpdateVersion { e_tag: Some("\"storefront-probe\"".into()), version: None };
                    match self
                        .store
                        .put_opts(&path, PutPayload::from_static(b"stale"), PutMode::Update(stale).into())
                        .await
                    {
                        Ok(_) => Some("a PUT with a wrong If-Match etag replaced the object"),
                        Err(object_store::Error::Precondition { .. }) => None,
                        Err(e) => return Err(self.storage(e)),
                    }
                }
                Err(e) => return Err(self.storage(e)),
            },
        };
        if let Err(e) = self.store.delete(&path).await {
            warn!(store = %self.label, error = %e, "could not delete the conditional-write probe {path}");
        }
        Ok(match ignored {
            None => {
                info!(store = %self.label, "the object store enforces conditional writes");
                Consistency::Conditional
            }
            Some(why) => {
                warn!(
                    store = %self.label,
                    "the object store ignores conditional writes ({why}): registry tags and upload sessions \
                     are last-writer-wins between storefront processes sharing it, atomic only within each \
                     process (set conditional=false to skip this probe)"
                );
                Consistency::LastWriterWins
            }
        })
    }

    /// The object at `path`, `None` if there is none.
    async fn read(&self, table: Table, path: &Path) -> Result<Option<Stored>> {
        let got = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.storage(e)),
        };
        let etag = got.meta.e_tag.clone();
        let bytes = got.bytes().await.map_err(|e| self.storage(e))?;
        Ok(Some(if record::is_raw(table) {
            Stored { value: Some(bytes), nonce: None, etag }
        } else {
            let envelope = record::decode(path, bytes)?;
            Stored { value: envelope.value, nonce: Some(envelope.nonce), etag }
        }))
    }

    async fn value(&self, table: Table, path: &Path) -> Result<Option<Bytes>> {
        Ok(self.read(table, path).await?.and_then(|s| s.value))
    }

    /// A content-addressed record: stored unless there.
    async fn put_raw(&self, table: Table, key: Bytes, value: Bytes) -> Result<()> {
        let path = self.path(table, &key);
        // Chunks are large: a HEAD spares sending one that is there. Blob
        // indexes and directories are small, so PUTting again is cheaper.
        if table == Table::CHUNKS {
            match self.store.head(&path).await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.storage(e)),
            }
        }
        self.store.put_opts(&path, value.into(), PutMode::Overwrite.into()).await.map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Deletes an object, retrying: a DELETE is idempotent, but the client
    /// sends it as a batch request (POST), which it does not retry after a
    /// timeout.
    async fn delete(&self, path: &Path) -> Result<()> {
        let mut pause = Duration::from_millis(200);
        let mut failures = 0;
        loop {
            match self.store.delete(path).await {
                Ok(()) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e @ object_store::Error::Generic { .. }) if failures < self.retries => {
                    failures += 1;
                    warn!(store = %self.label, error = %e, "deleting {path} failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(self.storage(e)),
            }
        }
    }

    /// Reads the record, asks `decide` what to do with its value, and
    /// writes under the store's [`Consistency`], until a write succeeds or
    /// `decide` answers without one.
    async fn modify<R: Clone>(
        &self,
        table: Table,
        key: &[u8],
        decide: impl Fn(Option<&Bytes>) -> Step<R>,
    ) -> Result<R> {
        let consistency = self.consistency().await?;
        let path = self.path(table, key);
        let _locked = match consistency {
            Consistency::LastWriterWins => {
                let mut h = std::hash::DefaultHasher::new();
                path.hash(&mut h);
                Some(self.locks[h.finish() as usize % LOCK_STRIPES].lock().await)
            }
            Consistency::Conditional => None,
        };
        // Writes sent, by nonce, with the answer each one gives if it took effect.
        let mut sent: Vec<([u8; NONCE], R)> = Vec::new();
        // The etag (`None`: absent) a write whose answer was lost expected.
        let mut lost: Option<Option<String>> = None;
        let mut failures = 0;
        loop {
            let stored = self.read(table, &path).await?;
            if let Some(nonce) = stored.as_ref().and_then(|s| s.nonce)
                && let Some((_, answer)) = sent.iter().find(|(n, _)| *n == nonce)
            {
                return Ok(answer.clone());
            }
            if let Some(expected) = lost.take()
                && stored.as_ref().map(|s| s.etag.clone().unwrap_or_default()) != expected
            {
                return Err(Error::Storage(format!(
                    "{}: a write to {path} got no answer and the record has changed since: \
                     whether the write took effect is unknown",
                    self.label
                )));
            }
            let (new, answer) = match decide(stored.as_ref().and_then(|s| s.value.as_ref())) {
                Step::Done(answer) => return Ok(answer),
                Step::Write(new, answer) => (new, answer),
            };
            let nonce = record::nonce();
            let payload = record::encode(new.as_ref(), &nonce);
            if consistency == Consistency::LastWriterWins {
                match new {
                    Some(_) => {
                        self.store
                            .put_opts(&path, payload, PutMode::Overwrite.into())
                            .await
                            .map_err(|e| self.storage(e))?;
                    }
                    None => self.delete(&path).await?,
                }
                return Ok(answer);
            }
            let mode = match &stored {
                None => PutMode::Create,
                Some(Stored { etag: Some(etag), .. }) => {
                    PutMode::Update(UpdateVersion { e_tag: Some(etag.clone()), version: None })
                }
                Some(_) => {
                    return Err(Error::Storage(format!(
                        "{}: {path} has no etag to write it conditionally",
                        self.label
                    )));
                }
            };
            sent.push((nonce, answer.clone()));
            match self.store.put_opts(&path, payload, mode.into()).await {
                Ok(_) => return Ok(answer),
                // Another writer came first: read again.
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
                // Only a request that may have reached the server can have
                // taken effect; others fail now.
                Err(e @ object_store::Error::Generic { .. }) if failures < self.retries => {
                    failures += 1;
                    warn!(store = %self.label, error = %e, "a conditional write to {path} failed; checking whether it took effect");
                    lost = Some(stored.map(|s| s.etag.unwrap_or_default()));
                }
                Err(e) => return Err(self.storage(e)),
            }
        }
    }
}

#[async_trait]
impl KvStore for ObjectStoreKv {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.value(table, &self.inner.path(table, key)).await
    }

    async fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        let path = self.inner.path(table, key);
        if !record::is_raw(table) {
            // A tombstone is an object too: look inside.
            return Ok(self.inner.value(table, &path).await?.is_some());
        }
        match self.inner.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.inner.storage(e)),
        }
    }

    async fn put(&self, table: Table, records: Vec<(Bytes, Bytes)>) -> Result<()> {
        let inner = &self.inner;
        if record::is_raw(table) {
            let at_once = if table == Table::CHUNKS { inner.concurrency } else { 1 };
            return stream::iter(records)
                .map(|(key, value)| inner.put_raw(table, key, value))
                .buffer_unordered(at_once)
                .try_collect()
                .await;
        }
        for (key, value) in records {
            inner
                .modify(table, &key, |actual| match actual {
                    Some(_) => Step::Done(()),
                    None => Step::Write(Some(value.clone()), ()),
                })
                .await?;
        }
        Ok(())
    }

    fn scan(&self, table: Table) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        let inner = self.inner.clone();
        let listing = inner.store.list(Some(&record::path(&inner.prefix, table, None)));
        records(inner, table, listing.map_ok(|meta| meta.location).boxed(), false)
    }

    fn scan_prefix(&self, table: Table, prefix: Bytes) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
        if let Err(refused) = super::not_chunks(table, "prefix scan") {
            return stream::iter([Err(refused)]).boxed();
        }
        let inner = self.inner.clone();
        let dir = record::path(&inner.prefix, table, None);
        let first = record::object_name(&prefix);
        let starts = move |path: &Path| path.filename().is_some_and(|name| name.starts_with(&first));
        let names = if inner.backend == Backend::File {
            // Directory order is no order: sort the matching names (values
            // are read afterwards, in that order).
            let listing = inner.store.list(Some(&dir));
            stream::once(async move {
                let mut paths: Vec<Path> =
                    listing.map_ok(|meta| meta.location).try_filter(|p| ready(starts(p))).try_collect().await?;
                paths.sort();
                Ok::<_, object_store::Error>(stream::iter(paths.into_iter().map(Ok)))
            })
            .try_flatten()
            .boxed()
        } else {
            let after = record::path(&inner.prefix, table, Some(&record::list_after(&prefix)));
            inner
                .store
                .list_with_offset(Some(&dir), &after)
                .map_ok(|meta| meta.location)
                .try_take_while(move |p| ready(Ok(starts(p))))
                .boxed()
        };
        records(inner, table, names, true)
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: Bytes,
        current: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<Result<(), Option<Bytes>>> {
        super::not_chunks(table, "compare-and-swap")?;
        if record::is_raw(table) {
            return Err(Error::InvalidRequest(format!(
                "{} is content-addressed: no compare-and-swap on it",
                table.name()
            )));
        }
        self.inner
            .modify(table, &key, |actual| {
                if actual != current.as_ref() {
                    Step::Done(Err(actual.cloned()))
                } else if actual == new.as_ref() {
                    Step::Done(Ok(()))
                } else {
                    Step::Write(new.clone(), Ok(()))
                }
            })
            .await
    }
}

/// The records whose object names `names` lists, read `concurrency` at a
/// time (in the listed order when `ordered`), without tombstones and
/// records deleted since the listing.
fn records(
    inner: Arc<Inner>,
    table: Table,
    names: BoxStream<'static, object_store::Result<Path>>,
    ordered: bool,
) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
    let at_once = inner.concurrency;
    let reads = names
        // A table never written has no directory (local files).
        .take_while(|r| ready(!matches!(r, Err(e) if is_not_found(e))))
        .map(move |listed| {
            let inner = inner.clone();
            async move {
                let path = listed.map_err(|e| inner.storage(e))?;
                let Some(key) = record::key_of(&path) else { return Ok(None) };
                Ok(inner.value(table, &path).await?.map(|value| (key, value)))
            }
        });
    let found = if ordered { reads.buffered(at_once).boxed() } else { reads.buffer_unordered(at_once).boxed() };
    found.try_filter_map(|r| ready(Ok(r))).boxed()
}
