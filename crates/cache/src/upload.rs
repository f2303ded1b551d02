//! Uploads from `nix copy --to http://…`, in the order Nix sends them.
//!
//! A NAR (`PUT /nar/<file hash>.nar[.xz|…]`) is decompressed and ingested
//! into castore while it streams in, its file hash checked against its name,
//! and recorded as an *upload record*: the root node with NarHash and
//! NarSize, keyed by its name. That record is invisible to readers of
//! narinfos. The narinfo (`PUT /<hash>.narinfo`) is what makes a path
//! visible: it is checked against the record (NarHash, NarSize, FileHash,
//! FileSize) and becomes a PathInfo, which the PathInfo service refuses
//! while a reference is missing. An upload that breaks off or fails a check
//! therefore leaves no record, and a record without a narinfo is only
//! unreferenced content.
use std::{io, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use castore::{Node, kv::Table};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use sha2::{Digest, Sha256};
use store::{NarInfo, NixHash, PathInfo, nar, nix32};
use tokio::io::{AsyncReadExt, BufReader};
use tokio_util::io::StreamReader;

use crate::{BinaryCache, CacheError, Compression, files, narinfo};

/// Upload records: `nar/<file>` → [`NarRecord`].
const NARS: Table = Table::named("cache-nars");
/// Largest narinfo accepted (one with tens of thousands of references).
const MAX_NARINFO: usize = 4 << 20;
/// Buffer between the request body and a decompressor.
const DECODE_BUFFER: usize = 256 << 10;

/// What an uploaded NAR file turned out to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NarRecord {
    pub node: Node,
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
    /// SHA-256 and length of the file as uploaded (compressed).
    pub file_sha256: [u8; 32],
    pub file_size: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NarRecordProto {
    #[prost(message, optional, tag = "1")]
    root: Option<castore::proto::Entry>,
    #[prost(bytes = "bytes", tag = "2")]
    nar_sha256: Bytes,
    #[prost(uint64, tag = "3")]
    nar_size: u64,
    #[prost(bytes = "bytes", tag = "4")]
    file_sha256: Bytes,
    #[prost(uint64, tag = "5")]
    file_size: u64,
}

impl NarRecord {
    fn encode(&self) -> Bytes {
        NarRecordProto {
            root: Some(self.node.to_entry(Bytes::from_static(b"nar"))),
            nar_sha256: Bytes::copy_from_slice(&self.nar_sha256),
            nar_size: self.nar_size,
            file_sha256: Bytes::copy_from_slice(&self.file_sha256),
            file_size: self.file_size,
        }
        .encode_to_vec()
        .into()
    }

    fn decode(bytes: &[u8]) -> Result<Self, CacheError> {
        let corrupt = |what: &dyn std::fmt::Display| castore::Error::Storage(format!("corrupt upload record: {what}"));
        let p = NarRecordProto::decode(bytes).map_err(|e| corrupt(&e))?;
        let (_, node) = Node::from_entry(p.root.ok_or_else(|| corrupt(&"no root"))?).map_err(|e| corrupt(&e))?;
        let digest = |b: &Bytes| <[u8; 32]>::try_from(&b[..]).map_err(|_| corrupt(&"digest length"));
        Ok(Self {
            node,
            nar_sha256: digest(&p.nar_sha256)?,
            nar_size: p.nar_size,
            file_sha256: digest(&p.file_sha256)?,
            file_size: p.file_size,
        })
    }
}

/// The upload record of `nar/<file>`, if that file was uploaded.
pub(crate) async fn nar_record(cache: &BinaryCache, file: &str) -> Result<Option<NarRecord>, CacheError> {
    match cache.meta.get(NARS, format!("nar/{file}").as_bytes()).await? {
        Some(bytes) => NarRecord::decode(&bytes).map(Some),
        None => Ok(None),
    }
}

fn ok() -> Response {
    StatusCode::OK.into_response()
}

/// `PUT /nix-cache-info`: Nix uploads one to a cache that has none. Ours
/// is generated, so the upload is only checked to describe this store.
pub(crate) async fn put_cache_info(State(cache): State<Arc<BinaryCache>>, body: Body) -> Result<Response, CacheError> {
    let text = read_small(body, &HeaderMap::new(), 64 << 10).await?;
    let text = String::from_utf8_lossy(&text);
    let store_dir = text.lines().find_map(|l| l.strip_prefix("StoreDir:")).map(str::trim);
    match store_dir {
        Some(dir) if dir != cache.config.store_dir => {
            Err(CacheError::BadRequest(format!("this cache serves the store {}, not {dir}", cache.config.store_dir)))
        }
        _ => Ok(ok()),
    }
}

/// `PUT /<file>`: a narinfo, or a `<hash>.ls` listing.
pub(crate) async fn put_file(
    State(cache): State<Arc<BinaryCache>>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    if let Some(hash) = file.strip_suffix(".narinfo") {
        return put_narinfo(&cache, hash, &headers, body).await;
    }
    match file.strip_suffix(".ls").and_then(narinfo::parse_hash) {
        Some(_) => files::store(&cache, &file, &headers, body).await,
        None => Err(CacheError::BadRequest(format!(
            "cannot store /{file}: this cache accepts <hash>.narinfo, <hash>.ls, nix-cache-info, nar/…, log/…, \
             realisations/… and build-trace-v2/…"
        ))),
    }
}

/// `PUT /{dir}/{*rest}`: logs, realisations and other side files.
pub(crate) async fn put_other(
    State(cache): State<Arc<BinaryCache>>,
    Path((dir, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    files::check_side_dir(&dir)?;
    files::store(&cache, &format!("{dir}/{rest}"), &headers, body).await
}

async fn put_narinfo(cache: &BinaryCache, hash: &str, headers: &HeaderMap, body: Body) -> Result<Response, CacheError> {
    let store_dir = &cache.config.store_dir;
    let digest = narinfo::parse_hash(hash)
        .ok_or_else(|| CacheError::BadRequest(format!("{hash:?} is not a store path hash (32 nix32 characters)")))?;
    let text = read_small(body, headers, MAX_NARINFO).await?;
    let text = std::str::from_utf8(&text).map_err(|_| CacheError::BadRequest("the narinfo is not UTF-8".into()))?;
    let info = NarInfo::parse(text, store_dir).map_err(|e| CacheError::BadRequest(format!("invalid narinfo: {e}")))?;
    if *info.store_path.digest() != digest {
        return Err(CacheError::BadRequest(format!(
            "the narinfo uploaded as {hash}.narinfo describes {}",
            info.store_path.to_absolute(store_dir)
        )));
    }
    let path = info.store_path.to_absolute(store_dir);
    let nar_sha256 = info
        .nar_hash
        .as_sha256()
        .ok_or_else(|| CacheError::BadRequest(format!("{path}: NarHash {} is not SHA-256", info.nar_hash)))?;
    if let Some(stored) = cache.paths.get(&digest).await? {
        return same_nar(&path, &stored, nar_sha256).map(|()| ok());
    }

    let file = info.url.strip_prefix("nar/").ok_or_else(|| {
        CacheError::BadRequest(format!("{path}: URL {} is not under nar/, where NARs are uploaded", info.url))
    })?;
    let record = nar_record(cache, file).await?.ok_or_else(|| {
        CacheError::BadRequest(format!(
            "{path}: its NAR {} was not uploaded (or its upload failed); upload it first",
            info.url
        ))
    })?;
    let mut mismatches = Vec::new();
    if record.nar_sha256 != nar_sha256 || record.nar_size != info.nar_size {
        mismatches.push(format!(
            "the NAR has NarHash {} and NarSize {}, the narinfo says {} and {}",
            NixHash::sha256(record.nar_sha256),
            record.nar_size,
            info.nar_hash,
            info.nar_size
        ));
    }
    if let Some(h) = &info.file_hash
        && h.as_sha256() != Some(record.file_sha256)
    {
        mismatches.push(format!("the file has FileHash {}, the narinfo says {h}", NixHash::sha256(record.file_sha256)));
    }
    if let Some(n) = info.file_size
        && n != record.file_size
    {
        mismatches.push(format!("the file has {} bytes, the narinfo says FileSize {n}", record.file_size));
    }
    if !mismatches.is_empty() {
        return Err(CacheError::BadRequest(format!("{path}: {}; nothing was stored", mismatches.join("; "))));
    }

    let stored = cache
        .paths
        .put(PathInfo {
            store_path: info.store_path,
            node: record.node,
            references: info.references,
            nar_size: record.nar_size,
            nar_sha256: record.nar_sha256,
            signatures: info.signatures,
            deriver: info.deriver,
            ca: info.ca,
        })
        .await
        .map_err(|e| match e {
            castore::Error::FailedPrecondition(m) => CacheError::Conflict(format!("{path}: {m}; nothing was stored")),
            e => e.into(),
        })?;
    same_nar(&path, &stored, nar_sha256)?;
    tracing::info!(path, nar_size = stored.nar_size, "stored uploaded path");
    Ok((StatusCode::OK, "").into_response())
}

/// A path is immutable: a second upload must describe the same NAR.
fn same_nar(path: &str, stored: &PathInfo, nar_sha256: [u8; 32]) -> Result<(), CacheError> {
    if stored.nar_sha256 == nar_sha256 {
        return Ok(());
    }
    Err(CacheError::Conflict(format!(
        "{path} is already stored with NarHash {}; the upload says {}",
        NixHash::sha256(stored.nar_sha256),
        NixHash::sha256(nar_sha256)
    )))
}

/// `PUT /nar/<file hash>.nar[.xz|.zst|.bz2|.br|.gz]`.
pub(crate) async fn put_nar(
    State(cache): State<Arc<BinaryCache>>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    let bad_name = || {
        CacheError::BadRequest(format!(
            "nar/{file} is not a NAR upload name: nar/<nix32 SHA-256 of the file>.nar[.xz|.zst|.bz2|.br|.gz]"
        ))
    };
    let (stem, compression) = Compression::of_nar_file(&file).ok_or_else(bad_name)?;
    let named_sha256: [u8; 32] = nix32::decode(stem).filter(|_| stem.len() == 52).ok_or_else(bad_name)?;
    if nar_record(&cache, &file).await?.is_some() {
        // Same name, same file hash: the same bytes are stored already.
        return Ok(ok());
    }
    let transport = content_encoding(&headers)?;

    let mut file_hash = Sha256::new();
    let mut file_size = 0u64;
    let counted = body.into_data_stream().map_err(io::Error::other).inspect_ok(|chunk| {
        file_hash.update(chunk);
        file_size += chunk.len() as u64;
    });
    let raw = StreamReader::new(counted);
    let decoded = transport.decoder(BufReader::with_capacity(DECODE_BUFFER, raw));
    let mut nar_reader = compression.decoder(BufReader::with_capacity(DECODE_BUFFER, decoded));
    let ingested = nar::ingest(&mut nar_reader, &*cache.blobs, &*cache.directories).await.map_err(|e| match e {
        nar::NarError::Storage(e) => CacheError::Store(e),
        e => CacheError::BadRequest(format!("nar/{file}: {e}; nothing was stored")),
    })?;
    drop(nar_reader);

    let file_sha256: [u8; 32] = file_hash.finalize().into();
    if file_sha256 != named_sha256 {
        return Err(CacheError::BadRequest(format!(
            "nar/{file}: the uploaded file ({file_size} bytes) has SHA-256 {}, not the one its name says: \
             corrupted or truncated; nothing was stored",
            nix32::encode(&file_sha256)
        )));
    }
    let record = NarRecord {
        node: ingested.node,
        nar_sha256: ingested.nar_sha256,
        nar_size: ingested.nar_size,
        file_sha256,
        file_size,
    };
    cache.meta.put(NARS, vec![(Bytes::from(format!("nar/{file}")), record.encode())]).await?;
    tracing::debug!(file, nar_size = record.nar_size, file_size, "stored uploaded NAR");
    Ok(ok())
}

/// The transfer encoding of an upload body.
fn content_encoding(headers: &HeaderMap) -> Result<Compression, CacheError> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(Compression::None),
        Some(v) => Compression::from_content_encoding(
            v.to_str().map_err(|_| CacheError::BadRequest("unreadable Content-Encoding".into()))?,
        ),
    }
}

/// A small body, decoded per its `Content-Encoding`, refused past `limit`
/// bytes (before or after decoding).
async fn read_small(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, CacheError> {
    let too_large = || CacheError::TooLarge(format!("the body is larger than {limit} bytes"));
    let mut raw = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CacheError::BadRequest(format!("reading the body: {e}")))?;
        if raw.len() + chunk.len() > limit {
            return Err(too_large());
        }
        raw.extend_from_slice(&chunk);
    }
    let encoding = content_encoding(headers)?;
    if encoding == Compression::None {
        return Ok(raw);
    }
    let mut out = Vec::new();
    encoding
        .decoder(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| CacheError::BadRequest(format!("decoding the {encoding} body: {e}")))?;
    if out.len() > limit {
        return Err(too_large());
    }
    Ok(out)
}
