//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (a session, a
//! monolithic upload with `?digest=`, or a cross-repository mount), then
//! `PATCH`, `GET` (status), `PUT ?digest=` (finish) and `DELETE` on
//! `/v2/<name>/blobs/uploads/<id>`.
//!
//! Nothing of a session lives in process memory, so any replica sharing
//! the metadata engine can take the next request. A session is a record in
//! `oci-uploads` (repository, times, and the list of chunks received so
//! far), changed only by compare-and-swap: each `PATCH` streams its body
//! into castore as one blob (SHA-256 and length computed on the way) and
//! then appends `(BLAKE3, size, SHA-256)` to the list, swapping against the
//! record it started from. A chunk that does not start where the upload
//! stands (or loses that race) is refused with 416 and the current `Range`.
//!
//! Finishing does not copy: the chunks already are the blob's content. The
//! blob record (`oci-blobs`: SHA-256 → size and parts) lists them, and
//! reads stream them one after the other. Only the digest check may read
//! data back, when there are several chunks (a one-chunk upload, the usual
//! case, hashed its chunk on the way in). A digest mismatch stores no
//! record, so nothing becomes visible; the chunks are unreferenced garbage.
//!
//! Sessions expire after [`SESSION_TTL`] without a chunk: they are refused
//! (404 `BLOB_UPLOAD_UNKNOWN`) and removed when touched, and swept from
//! the table at most hourly, on the next new session.
use std::{
    sync::{Arc, atomic::Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;

use super::{
    DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID, blobs,
    records::{self, BlobRecord, Part, REPO_BLOBS, Session},
    routing::{self, BadReference, Query, parse_digest},
};
use crate::{
    Registry,
    error::{ErrorCode, RegistryError},
    oci::Digest,
};

/// Largest blob accepted (one layer of a very large image).
pub const MAX_BLOB_SIZE: u64 = 64 << 30;
/// Most chunks in one upload (keeps a session record small).
pub const MAX_PARTS: usize = 10_000;
/// A session without a chunk for this long is gone.
pub const SESSION_TTL: u64 = 24 * 3600;
/// How often expired sessions are swept from the table.
const SWEEP_INTERVAL: u64 = 3600;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh upload id: 128 random bits, spelled as a UUID (v4).
fn new_id() -> Result<String, RegistryError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| RegistryError::internal(format!("reading the OS random source: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = data_encoding::HEXLOWER.encode(&b);
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// `Range: 0-<last byte>` as the reference registry sends it (`0-0` before
/// any byte arrived).
fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// The answer to every request on a session that stays open.
fn progress(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, upload_location(name, id))
        .header(header::RANGE, range_value(size))
        .header(DOCKER_UPLOAD_UUID, id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

/// 201 for a blob now in repository `name`.
fn created(name: &str, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

/// 416 for a chunk that does not continue the upload.
fn out_of_order(name: &str, id: &str, size: u64, why: String) -> RegistryError {
    RegistryError::new(ErrorCode::RangeInvalid, why)
        .with_header(header::LOCATION, upload_location(name, id))
        .with_header(header::RANGE, range_value(size))
        .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
        .with_header(DOCKER_UPLOAD_UUID, id)
}

/// The `digest` parameters of a request (at least one is needed to finish).
fn digests(query: &Query) -> Result<Vec<Digest>, RegistryError> {
    query
        .all("digest")
        .map(|d| {
            parse_digest(d).map_err(|e| match e {
                BadReference::Algorithm(m) | BadReference::Invalid(m) => RegistryError::digest_invalid(m),
            })
        })
        .collect()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Refuses a declared length that cannot fit.
fn check_declared(headers: &HeaderMap, already: u64) -> Result<(), RegistryError> {
    match content_length(headers) {
        Some(n) if n.saturating_add(already) > MAX_BLOB_SIZE => Err(RegistryError::too_large(format!(
            "a blob may hold at most {MAX_BLOB_SIZE} bytes; this upload would hold {}",
            n.saturating_add(already)
        ))),
        _ => Ok(()),
    }
}

/// Whether a request has no body at all (so a finishing `PUT` adds no chunk).
fn no_body(headers: &HeaderMap, body: &Body) -> bool {
    content_length(headers) == Some(0) || axum::body::HttpBody::size_hint(body).exact() == Some(0)
}

/// `Content-Range: <first>-<last>` (also with a `bytes ` or `bytes=`
/// prefix and a `/total` suffix), inclusive.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, String> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| "Content-Range is not ASCII".to_owned())?.trim();
    let text = text.strip_prefix("bytes").map(|t| t.trim_start_matches([' ', '='])).unwrap_or(text);
    let range = text.split('/').next().unwrap_or_default();
    let parsed = range.split_once('-').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some((a, b)) if b >= a => Ok(Some((a, b))),
        _ => Err(format!("Content-Range {text:?} is not <first byte>-<last byte>")),
    }
}

/// `POST /v2/<name>/blobs/uploads/`.
pub(crate) async fn start(
    registry: &Arc<Registry>,
    name: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    if let Some(mount) = query.get("mount")
        && let Some(response) = mount_blob(registry, name, mount, query.get("from")).await?
    {
        return Ok(response);
    }
    let wanted = digests(query)?;
    let empty_blob = Digest::of(b"");
    let bodiless = no_body(headers, &body) && wanted.iter().any(|d| *d != empty_blob);
    if !wanted.is_empty() && !bodiless {
        // Monolithic: the body is the whole blob. (With no body at all, the
        // digest announces a blob to come: a session, as the spec allows.)
        check_declared(headers, 0)?;
        let part = blobs::ingest(registry.blobs.as_ref(), body, MAX_BLOB_SIZE).await?;
        return commit(registry, name, vec![part], &wanted).await;
    }
    let id = new_id()?;
    let t = now();
    let session = Session { repo: name.to_owned(), created: t, updated: t, parts: Vec::new() };
    if !records::swap_session(registry.meta.as_ref(), &id, None, Some(&session)).await? {
        return Err(RegistryError::internal(format!("upload id {id} is already taken")));
    }
    maybe_sweep(registry);
    Ok(progress(StatusCode::ACCEPTED, name, &id, 0))
}

/// A cross-repository mount: with `from`, the blob must be in that
/// repository; without, anywhere in this registry (writers may read every
/// repository anyway). `None` falls back to a new session, as the spec
/// asks of a mount that cannot be done.
async fn mount_blob(
    registry: &Registry,
    name: &str,
    mount: &str,
    from: Option<&str>,
) -> Result<Option<Response>, RegistryError> {
    let Ok(digest) = parse_digest(mount) else { return Ok(None) };
    let meta = registry.meta.as_ref();
    let available = match from {
        Some(from) => match routing::name(from) {
            Ok(from) => blobs::find(registry, &from, &digest).await?.is_some(),
            Err(_) => false,
        },
        None => records::blob(meta, &digest).await?.is_some() || registry.generated_blob(&digest).await?.is_some(),
    };
    if !available {
        return Ok(None);
    }
    records::add_repo(meta, name).await?;
    records::add_member(meta, REPO_BLOBS, name, &digest).await?;
    Ok(Some(created(name, &digest)))
}

/// Makes the blob made of `parts` visible in `name`, if its digest is each
/// of `wanted`.
async fn commit(
    registry: &Registry,
    name: &str,
    parts: Vec<Part>,
    wanted: &[Digest],
) -> Result<Response, RegistryError> {
    let actual = blobs::sha256_of(registry.blobs.as_ref(), &parts).await?;
    if let Some(w) = wanted.iter().find(|w| **w != actual) {
        return Err(RegistryError::digest_invalid(format!("the upload has digest {actual}, not {w}"))
            .with_detail(serde_json::json!({ "digest": w.to_string() })));
    }
    let meta = registry.meta.as_ref();
    if records::blob(meta, &actual).await?.is_none() {
        let size = parts.iter().map(|p| p.size).sum();
        // Empty parts carry nothing; per-part SHA-256s are for sessions only.
        let parts = parts.into_iter().filter(|p| p.size > 0).map(|p| Part { sha256: Bytes::new(), ..p }).collect();
        records::put_blob(meta, &actual, &BlobRecord { size, parts }).await?;
    }
    records::add_repo(meta, name).await?;
    records::add_member(meta, REPO_BLOBS, name, &actual).await?;
    Ok(created(name, &actual))
}

/// The session `id` of repository `name`, with the record's bytes (to swap
/// against). Unknown, foreign and expired sessions are all unknown.
async fn load(registry: &Registry, name: &str, id: &str) -> Result<(Bytes, Session), RegistryError> {
    let unknown = || RegistryError::blob_upload_unknown(format!("no upload {id} in repository {name}"));
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(unknown());
    }
    let meta = registry.meta.as_ref();
    let (raw, session) = records::session(meta, id).await?.ok_or_else(unknown)?;
    if session.repo != name {
        return Err(unknown());
    }
    if expired(&session, now()) {
        records::swap_session(meta, id, Some(raw), None).await?;
        return Err(unknown());
    }
    Ok((raw, session))
}

fn expired(session: &Session, now: u64) -> bool {
    now.saturating_sub(session.updated) > SESSION_TTL
}

/// Receives one chunk (the body) at the end of the session; the session
/// with the chunk appended, and the record it was loaded as (still stored).
async fn receive(
    registry: &Registry,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Session, Option<Part>), RegistryError> {
    let (raw, session) = load(registry, name, id).await?;
    let offset = session.size();
    let range = content_range(headers).map_err(|why| out_of_order(name, id, offset, why))?;
    if let Some((first, _)) = range
        && first != offset
    {
        return Err(out_of_order(
            name,
            id,
            offset,
            format!("the chunk starts at byte {first}, the upload holds {offset}"),
        ));
    }
    if session.parts.len() >= MAX_PARTS {
        return Err(RegistryError::blob_upload_invalid(format!(
            "an upload may have at most {MAX_PARTS} chunks; finish this one with PUT or start over with larger chunks"
        )));
    }
    check_declared(headers, offset)?;
    let part = blobs::ingest(registry.blobs.as_ref(), body, MAX_BLOB_SIZE - offset).await?;
    if let Some((first, last)) = range
        && part.size != last - first + 1
    {
        return Err(RegistryError::size_invalid(format!(
            "Content-Range {first}-{last} announces {} bytes, the body held {}",
            last - first + 1,
            part.size
        )));
    }
    Ok((raw, session, (part.size > 0).then_some(part)))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: one chunk.
pub(crate) async fn patch(
    registry: &Registry,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let (mut raw, mut session, part) = receive(registry, name, id, headers, body).await?;
    let Some(part) = part else {
        return Ok(progress(StatusCode::ACCEPTED, name, id, session.size()));
    };
    let offset = session.size();
    let meta = registry.meta.as_ref();
    loop {
        let mut next = session.clone();
        next.parts.push(part.clone());
        next.updated = now();
        if records::swap_session(meta, id, Some(raw), Some(&next)).await? {
            return Ok(progress(StatusCode::ACCEPTED, name, id, next.size()));
        }
        // Another request changed the session meanwhile: fine only if it
        // added nothing (then try again), else this chunk is out of order.
        let (again_raw, again) = load(registry, name, id).await?;
        if again.size() != offset {
            return Err(out_of_order(
                name,
                id,
                again.size(),
                format!("another chunk arrived first; the upload now holds {} bytes", again.size()),
            ));
        }
        (raw, session) = (again_raw, again);
    }
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=…`: the last chunk (if any)
/// and the end of the upload.
pub(crate) async fn finish(
    registry: &Registry,
    name: &str,
    id: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let wanted = digests(query)?;
    if wanted.is_empty() {
        return Err(RegistryError::digest_invalid("finishing an upload needs its digest: PUT …?digest=sha256:…"));
    }
    let (raw, mut session) = if no_body(headers, &body) {
        load(registry, name, id).await?
    } else {
        let (raw, mut session, part) = receive(registry, name, id, headers, body).await?;
        session.parts.extend(part);
        (raw, session)
    };
    let parts = std::mem::take(&mut session.parts);
    let response = commit(registry, name, parts, &wanted).await?;
    // The blob is in; the session ends (whoever changed it meanwhile).
    if !records::swap_session(registry.meta.as_ref(), id, Some(raw), None).await? {
        records::remove(registry.meta.as_ref(), records::UPLOADS, Bytes::copy_from_slice(id.as_bytes())).await?;
    }
    Ok(response)
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how far the upload got.
pub(crate) async fn status(registry: &Registry, name: &str, id: &str) -> Result<Response, RegistryError> {
    let (_, session) = load(registry, name, id).await?;
    Ok(progress(StatusCode::NO_CONTENT, name, id, session.size()))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: the upload is abandoned.
pub(crate) async fn cancel(registry: &Registry, name: &str, id: &str) -> Result<Response, RegistryError> {
    let (raw, _) = load(registry, name, id).await?;
    if !records::swap_session(registry.meta.as_ref(), id, Some(raw), None).await? {
        records::remove(registry.meta.as_ref(), records::UPLOADS, Bytes::copy_from_slice(id.as_bytes())).await?;
    }
    Ok(super::empty(StatusCode::NO_CONTENT))
}

/// Starts a sweep of expired sessions if none ran for [`SWEEP_INTERVAL`].
fn maybe_sweep(registry: &Arc<Registry>) {
    let t = now();
    let last = registry.uploads_swept.load(Ordering::Relaxed);
    if t.saturating_sub(last) < SWEEP_INTERVAL
        || registry.uploads_swept.compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    let registry = registry.clone();
    tokio::spawn(async move {
        match sweep(&registry, t).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "removed expired upload sessions"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired upload sessions failed"),
        }
    });
}

/// Removes the sessions expired at `now`; how many.
pub(crate) async fn sweep(registry: &Registry, now: u64) -> Result<usize, RegistryError> {
    let meta = registry.meta.as_ref();
    let records: Vec<(Bytes, Bytes)> = records::sessions(meta).try_collect().await?;
    let mut removed = 0;
    for (key, raw) in records {
        let Ok(session) = Session::decode(raw.clone()) else { continue };
        if expired(&session, now) && meta.compare_and_swap(records::UPLOADS, key, Some(raw), None).await?.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegistryConfig;

    fn registry() -> Arc<Registry> {
        let blobs = castore::blob_service_from_url("memory:").unwrap();
        let dirs = castore::directory_service_from_url("memory:").unwrap();
        let paths = store::url::path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
        Registry::new(RegistryConfig::default(), blobs, dirs, paths, Arc::new(castore::kv::MemoryStore::new()))
    }

    #[tokio::test]
    async fn sessions_expire() {
        let registry = registry();
        let meta = registry.meta.as_ref();
        let t = now();
        let old = Session { repo: "r".into(), created: 0, updated: t - SESSION_TTL - 1, parts: vec![] };
        let fresh = Session { repo: "r".into(), created: 0, updated: t - SESSION_TTL + 60, parts: vec![] };
        for (id, s) in [("0a", &old), ("0b", &old), ("0c", &fresh)] {
            assert!(records::swap_session(meta, id, None, Some(s)).await.unwrap());
        }
        // Touching an expired session refuses it and removes it.
        let e = status(&registry, "r", "0a").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::BlobUploadUnknown);
        assert!(records::session(meta, "0a").await.unwrap().is_none());
        assert_eq!(status(&registry, "r", "0c").await.unwrap().status(), StatusCode::NO_CONTENT);
        // The sweep removes the rest of the expired ones.
        assert_eq!(sweep(&registry, t).await.unwrap(), 1);
        assert!(records::session(meta, "0b").await.unwrap().is_none());
        assert!(records::session(meta, "0c").await.unwrap().is_some());
        // A new session starts a sweep at most once an interval.
        registry.uploads_swept.store(0, Ordering::Relaxed);
        start(&registry, "r", &Query::default(), &HeaderMap::new(), Body::empty()).await.unwrap();
        assert!(registry.uploads_swept.load(Ordering::Relaxed) >= t);
    }

    #[test]
    fn ids_and_ranges() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_id().unwrap());
        assert_eq!(range_value(0), "0-0");
        assert_eq!(range_value(1), "0-0");
        assert_eq!(range_value(10), "0-9");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, v.parse().unwrap());
            content_range(&h)
        };
        assert_eq!(with("0-9"), Ok(Some((0, 9))));
        assert_eq!(with("bytes 10-19/100"), Ok(Some((10, 19))));
        assert_eq!(with("bytes=5-5"), Ok(Some((5, 5))));
        assert!(with("9-0").is_err());
        assert!(with("x").is_err());
        assert_eq!(content_range(&HeaderMap::new()), Ok(None));
    }
}
