//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`, and the blob plumbing the
//! uploads share: streaming a request body into castore while hashing it,
//! and streaming a stored blob (any byte range) back out.
//!
//! A repository serves a stored blob only when the blob is a member of it
//! (pushed, mounted, or referenced by a manifest pushed there); blobs of
//! generated images are served by digest under any name.
use std::{io::SeekFrom, sync::Arc};

use axum::{
    body::Body,
    http::{HeaderMap, Method, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use castore::{BlobService, render::LayoutReader};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{
    DOCKER_CONTENT_DIGEST,
    records::{self, BlobRecord, Part, REPO_BLOBS},
    routing::{BadReference, parse_digest},
};
use crate::{
    Registry,
    error::{ErrorCode, RegistryError},
    oci::{Blob, Digest},
};

/// Read size when streaming a blob out or back in for hashing.
const READ_BUFFER: usize = 256 << 10;

/// A blob this repository can serve.
pub(crate) enum Source {
    Stored(BlobRecord),
    Generated(Blob),
}

impl Source {
    pub(crate) fn size(&self) -> u64 {
        match self {
            Source::Stored(r) => r.size,
            Source::Generated(b) => b.size,
        }
    }
}

/// The blob `digest` as repository `name` sees it.
pub(crate) async fn find(registry: &Registry, name: &str, digest: &Digest) -> Result<Option<Source>, RegistryError> {
    let meta = registry.meta.as_ref();
    if records::is_member(meta, REPO_BLOBS, name, digest).await?
        && let Some(record) = records::blob(meta, digest).await?
    {
        return Ok(Some(Source::Stored(record)));
    }
    Ok(registry.generated_blob(digest).await?.map(Source::Generated))
}

/// A digest from a blob URL: malformed is `DIGEST_INVALID`; another
/// algorithm cannot be stored here, so it is simply unknown.
pub(crate) fn url_digest(s: &str) -> Result<Digest, RegistryError> {
    parse_digest(s).map_err(|e| match e {
        BadReference::Algorithm(m) => RegistryError::blob_unknown(m),
        BadReference::Invalid(m) => RegistryError::digest_invalid(m),
    })
}

pub(crate) async fn get(
    registry: &Arc<Registry>,
    name: &str,
    digest: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, RegistryError> {
    let digest = url_digest(digest)?;
    let source = find(registry, name, &digest)
        .await?
        .ok_or_else(|| RegistryError::blob_unknown(format!("blob {digest} is not in repository {name}")))?;
    let size = source.size();
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(spec) => parse_range(spec, size)?,
        None => None,
    };
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    let (start, end) = range.unwrap_or((0, size));
    if range.is_some() {
        response = response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1));
    }
    response = response.header(header::CONTENT_LENGTH, end - start);
    let body = if *method == Method::HEAD { Body::empty() } else { body(registry, source, start, end).await? };
    Ok(response.body(body).expect("valid response"))
}

/// `DELETE`: the blob leaves this repository (its bytes stay: they are
/// content-addressed and may be shared).
pub(crate) async fn delete(registry: &Registry, name: &str, digest: &str) -> Result<Response, RegistryError> {
    let digest = url_digest(digest)?;
    if !records::remove_member(registry.meta.as_ref(), REPO_BLOBS, name, &digest).await? {
        return Err(RegistryError::blob_unknown(format!("blob {digest} is not in repository {name}")));
    }
    Ok(super::empty(StatusCode::ACCEPTED))
}

/// Bytes `[start, end)` of a blob, streamed.
pub(crate) async fn body(registry: &Registry, source: Source, start: u64, end: u64) -> Result<Body, RegistryError> {
    match source {
        Source::Generated(blob) => {
            let mut reader = blob.reader;
            if start > 0 {
                reader.seek(SeekFrom::Start(start)).await?;
            }
            Ok(Body::from_stream(ReaderStream::with_capacity(reader.take(end - start), READ_BUFFER)))
        }
        Source::Stored(record) => {
            let mut reader = LayoutReader::new(Arc::new(record.layout()?), registry.blobs.clone());
            reader.set_end(end);
            if start > 0 {
                reader.seek(SeekFrom::Start(start)).await?;
            }
            Ok(Body::from_stream(reader))
        }
    }
}

/// Streams a request body into castore as one blob, computing its SHA-256
/// and length on the way; refuses (413) a body longer than `limit`.
pub(crate) async fn ingest(blobs: &dyn BlobService, body: Body, limit: u64) -> Result<Part, RegistryError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut over = false;
    let mut broken: Option<String> = None;
    let pieces = body.into_data_stream().map(|piece| match piece {
        Ok(bytes) => {
            size += bytes.len() as u64;
            if size > limit {
                over = true;
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "body over the size limit"));
            }
            hasher.update(&bytes);
            Ok(bytes)
        }
        Err(e) => {
            broken = Some(e.to_string());
            Err(std::io::Error::other(e))
        }
    });
    let result = blobs.put_stream(pieces.boxed(), None).await;
    if over {
        return Err(RegistryError::too_large(format!("the upload exceeds the limit of {limit} bytes")));
    }
    if let Some(e) = broken {
        return Err(RegistryError::blob_upload_invalid(format!("reading the request body failed: {e}")));
    }
    let blake3 = result?;
    let sha256 = Bytes::copy_from_slice(&hasher.finalize());
    Ok(Part { blake3: blake3.to_bytes(), size, sha256 })
}

/// The SHA-256 of a blob made of `parts`: a single part knows its own;
/// several are read back from castore.
pub(crate) async fn sha256_of(blobs: &dyn BlobService, parts: &[Part]) -> Result<Digest, RegistryError> {
    match parts {
        [] => return Ok(Digest::of(b"")),
        [one] if one.sha256.len() == 32 => {
            return Ok(Digest(one.sha256[..].try_into().expect("32 bytes")));
        }
        _ => {}
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    for part in parts {
        let digest = part.digest()?;
        let mut reader = blobs
            .open_read(&digest)
            .await?
            .ok_or_else(|| RegistryError::internal(format!("uploaded chunk {digest} is missing from castore")))?;
        let mut read = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
        }
        if read != part.size {
            return Err(RegistryError::internal(format!(
                "uploaded chunk {digest} holds {read} bytes, its record says {}",
                part.size
            )));
        }
    }
    Ok(Digest(hasher.finalize().into()))
}

/// Parses a `Range` header against a blob of `len` bytes (see
/// [`castore::render::parse_range`]); an unsatisfiable range is 416.
pub(crate) fn parse_range(spec: &str, len: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    castore::render::parse_range(spec, len).map_err(|_| {
        RegistryError::new(ErrorCode::RangeInvalid, format!("range {spec:?} is outside the blob's {len} bytes"))
            .with_header(header::CONTENT_RANGE, format!("bytes */{len}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsatisfiable_ranges_are_416_with_content_range() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), Some((0, 100)));
        let e = parse_range("bytes=1000-", 1000).unwrap_err();
        assert_eq!(e.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    }
}
