//! Side files Nix uploads beside store paths: `<hash>.ls` listings, build
//! logs (`log/<drv>`), realisations (`realisations/…`,
//! `build-trace-v2/…`) and debug-info indexes (`debuginfo/…`).
//!
//! Their bytes go into castore as one blob each; a record names the blob
//! and the `Content-Type`/`Content-Encoding` they came with, which are
//! served back unchanged (Nix compresses listings and logs on request and
//! says so only in the header). Records are written after the blob, so a
//! broken-off upload leaves nothing visible. A name is written once: the
//! first complete upload wins, as for every other record of the store.
use std::{io, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use castore::{B3Digest, kv::Table};
use futures::TryStreamExt;
use prost::Message;
use tokio_util::io::ReaderStream;

use crate::{BinaryCache, CacheError};

/// Side-file records: name → [`FileRecord`].
const FILES: Table = Table::named("cache-files");
/// Directories that hold side files.
const SIDE_DIRS: [&str; 4] = ["log", "realisations", "build-trace-v2", "debuginfo"];
/// Longest side-file name accepted.
const MAX_NAME: usize = 1024;
/// Largest side file accepted (build logs can be large; listings of huge
/// paths too).
const MAX_SIDE_FILE: u64 = 1 << 30;

#[derive(Clone, PartialEq, prost::Message)]
struct FileRecord {
    #[prost(bytes = "bytes", tag = "1")]
    blob: Bytes,
    #[prost(uint64, tag = "2")]
    size: u64,
    #[prost(string, tag = "3")]
    content_type: String,
    #[prost(string, tag = "4")]
    content_encoding: String,
}

pub(crate) fn check_side_dir(dir: &str) -> Result<(), CacheError> {
    if SIDE_DIRS.contains(&dir) {
        return Ok(());
    }
    Err(CacheError::NotFound(format!("this cache has no {dir}/ (it keeps {})", SIDE_DIRS.join("/, "))))
}

/// `GET|HEAD /{dir}/{*rest}`.
pub(crate) async fn get_other(
    State(cache): State<Arc<BinaryCache>>,
    Path((dir, rest)): Path<(String, String)>,
) -> Result<Response, CacheError> {
    check_side_dir(&dir)?;
    serve(&cache, &format!("{dir}/{rest}")).await
}

/// Serves the side file `name` as it was uploaded.
pub(crate) async fn serve(cache: &BinaryCache, name: &str) -> Result<Response, CacheError> {
    let missing = || CacheError::NotFound(format!("no /{name} in this cache"));
    let record = cache.meta.get(FILES, name.as_bytes()).await?.ok_or_else(missing)?;
    let record = FileRecord::decode(&record[..])
        .map_err(|e| castore::Error::Storage(format!("corrupt side-file record {name}: {e}")))?;
    let digest = B3Digest::try_from(&record.blob)
        .map_err(|e| castore::Error::Storage(format!("corrupt side-file record {name}: {e}")))?;
    let reader = cache
        .blobs
        .open_read(&digest)
        .await?
        .ok_or_else(|| castore::Error::Storage(format!("side file {name}: blob {digest} is missing")))?;
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, header_value(&record.content_type, "application/octet-stream"))
        .header(header::CONTENT_LENGTH, record.size);
    if !record.content_encoding.is_empty() {
        response = response.header(header::CONTENT_ENCODING, header_value(&record.content_encoding, "identity"));
    }
    Ok(response.body(Body::from_stream(ReaderStream::new(reader))).expect("valid response"))
}

fn header_value(s: &str, fallback: &'static str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(fallback))
}

/// Stores an uploaded side file under `name`, streaming it into castore.
pub(crate) async fn store(
    cache: &BinaryCache,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    if name.len() > MAX_NAME || name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(CacheError::BadRequest(format!("{name:?} is not a valid file name")));
    }
    if cache.meta.contains(FILES, name.as_bytes()).await? {
        return Ok(axum::http::StatusCode::OK.into_response());
    }
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut size = 0u64;
    let pieces = body.into_data_stream().map_err(io::Error::other).and_then(|chunk| {
        size += chunk.len() as u64;
        std::future::ready(if size > MAX_SIDE_FILE {
            Err(io::Error::other(format!("larger than {MAX_SIDE_FILE} bytes")))
        } else {
            Ok(chunk)
        })
    });
    let blob = cache.blobs.put_stream(Box::pin(pieces), None).await.map_err(|e| match e {
        castore::Error::Io(e) if e.to_string().starts_with("larger than") => {
            CacheError::TooLarge(format!("/{name}: {e}"))
        }
        castore::Error::Io(e) => CacheError::BadRequest(format!("/{name}: the upload broke off: {e}")),
        e => e.into(),
    })?;
    let record = FileRecord {
        blob: blob.to_bytes(),
        size,
        content_type: text(header::CONTENT_TYPE),
        content_encoding: text(header::CONTENT_ENCODING),
    };
    cache.meta.put(FILES, vec![(Bytes::from(name.to_owned()), record.encode_to_vec().into())]).await?;
    tracing::debug!(name, size, "stored side file");
    Ok(axum::http::StatusCode::OK.into_response())
}
