//! `GET|HEAD /nar/…`: NARs rendered from castore on every request.
//!
//! A plain `.nar` is served as is, with `Accept-Ranges: bytes`, so an
//! interrupted download resumes where it stopped (Nix resumes only without
//! a `Content-Encoding`); a `Range` seeks the renderer, which then reads no
//! blob outside the range. Compressed transfer comes two ways, neither of
//! which breaks that: `.nar.zst`/`.nar.xz`/… URLs (what a narinfo names
//! under `--nar-compression`), and `Content-Encoding: zstd` for a client
//! that asks for it with `Accept-Encoding` and no `Range`.
use std::{io::SeekFrom, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::Response,
};
use castore::Node;
use store::{nar::NarReader, nix32};
use tokio::io::{AsyncSeekExt, BufReader};
use tokio_util::io::ReaderStream;

use crate::{BinaryCache, CacheError, Compression, narinfo, upload};

pub(crate) const NAR_TYPE: &str = "application/x-nix-nar";
/// Buffer between the renderer and a compressor.
const ENCODE_BUFFER: usize = 256 << 10;

/// What a NAR name resolves to.
struct Nar {
    node: Node,
    size: u64,
    sha256: [u8; 32],
}

pub(crate) async fn get_nar(
    State(cache): State<Arc<BinaryCache>>,
    Path(file): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, CacheError> {
    let missing = || CacheError::NotFound(format!("no NAR nar/{file} in this cache"));
    let (stem, compression) = Compression::of_nar_file(&file).ok_or_else(missing)?;
    let nar = resolve(&cache, stem, &file).await?.ok_or_else(missing)?;

    let etag = HeaderValue::from_str(&format!("\"{}{}\"", nix32::encode(&nar.sha256), compression.extension()))
        .expect("nix32 is a valid header value");
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, NAR_TYPE)
        .header(header::ETAG, etag)
        // The name carries the NarHash: the bytes behind it never change.
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");

    if compression != Compression::None {
        response = response.header(header::ACCEPT_RANGES, "none");
        let body = if method == Method::HEAD { Body::empty() } else { encoded(&cache, &nar, compression).await? };
        return Ok(response.body(body).expect("valid response"));
    }

    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(spec) => parse_range(spec, nar.size)?,
        None => None,
    };
    response = response.header(header::ACCEPT_RANGES, "bytes").header(header::VARY, "Accept-Encoding");
    if range.is_none() && wants_zstd(&headers) {
        response = response.header(header::CONTENT_ENCODING, "zstd");
        let body =
            if method == Method::HEAD { Body::empty() } else { encoded(&cache, &nar, Compression::Zstd).await? };
        return Ok(response.body(body).expect("valid response"));
    }

    let (start, end) = range.unwrap_or((0, nar.size));
    if range.is_some() {
        response = response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{}", end - 1, nar.size));
    }
    response = response.header(header::CONTENT_LENGTH, end - start);
    if method == Method::HEAD {
        return Ok(response.body(Body::empty()).expect("valid response"));
    }
    let mut reader = NarReader::open(&nar.node, cache.blobs.clone(), cache.directories.clone()).await?;
    if reader.len() != nar.size {
        return Err(castore::Error::Storage(format!(
            "nar/{file} renders to {} bytes, but its PathInfo says {}",
            reader.len(),
            nar.size
        ))
        .into());
    }
    reader.set_end(end);
    if start > 0 {
        reader.seek(SeekFrom::Start(start)).await.map_err(castore::Error::Io)?;
    }
    Ok(response.body(Body::from_stream(reader)).expect("valid response"))
}

/// Finds the NAR behind a name: ours (`<store hash>-<NarHash>`), or one
/// uploaded under its file hash and recorded by [`upload`].
async fn resolve(cache: &Arc<BinaryCache>, stem: &str, file: &str) -> Result<Option<Nar>, CacheError> {
    if let Some((hash, nar_hash)) = stem.split_once('-') {
        let Some(info) = narinfo::lookup(cache, hash).await? else {
            return Ok(None);
        };
        if nix32::encode(&info.nar_sha256) != nar_hash {
            return Ok(None);
        }
        return Ok(Some(Nar { node: info.node, size: info.nar_size, sha256: info.nar_sha256 }));
    }
    Ok(upload::nar_record(cache, file).await?.map(|r| Nar { node: r.node, size: r.nar_size, sha256: r.nar_sha256 }))
}

/// The NAR compressed while it streams out.
async fn encoded(cache: &BinaryCache, nar: &Nar, compression: Compression) -> Result<Body, CacheError> {
    let reader = NarReader::open(&nar.node, cache.blobs.clone(), cache.directories.clone()).await?;
    let encoder = compression.encoder(BufReader::with_capacity(ENCODE_BUFFER, reader));
    Ok(Body::from_stream(ReaderStream::with_capacity(encoder, ENCODE_BUFFER)))
}

/// Whether the client lists zstd in `Accept-Encoding` (with a non-zero q).
fn wants_zstd(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |item| {
            let mut parts = item.split(';').map(str::trim);
            parts.next().is_some_and(|coding| coding.eq_ignore_ascii_case("zstd"))
                && parts.all(|p| !matches!(p.strip_prefix("q="), Some(q) if q.parse::<f32>().is_ok_and(|q| q == 0.0)))
        },
    )
}

/// Parses a `Range` header against a NAR of `len` bytes (see
/// [`castore::render::parse_range`]).
fn parse_range(spec: &str, len: u64) -> Result<Option<(u64, u64)>, CacheError> {
    castore::render::parse_range(spec, len).map_err(|e| CacheError::RangeNotSatisfiable(e.len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), Some((0, 100)));
        assert!(matches!(parse_range("bytes=1000-", 1000), Err(CacheError::RangeNotSatisfiable(1000))));
    }

    #[test]
    fn accept_encoding() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            wants_zstd(&h)
        };
        assert!(with("gzip, zstd"));
        assert!(with("ZSTD;q=0.5"));
        assert!(!with("zstd;q=0"));
        assert!(!with("gzip, br"));
        assert!(!wants_zstd(&HeaderMap::new()));
    }
}
