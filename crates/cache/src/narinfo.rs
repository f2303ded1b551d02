//! `/nix-cache-info` and `/<hash>.narinfo`: rendered from PathInfo and
//! signed on every request, so a new signing key or a new compression
//! setting applies to everything at once and nothing is stored twice.
use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
};
use store::{NixHash, PathInfo, nix32, store_path::DIGEST_LEN};

use crate::{BinaryCache, CacheError, Compression, files, upstream};

pub(crate) const NARINFO_TYPE: &str = "text/x-nix-narinfo";
const CACHE_INFO_TYPE: &str = "text/x-nix-cache-info";

pub(crate) async fn cache_info(State(cache): State<Arc<BinaryCache>>) -> Response {
    let body = format!("StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n", cache.config.store_dir, cache.config.priority);
    ([(header::CONTENT_TYPE, CACHE_INFO_TYPE)], body).into_response()
}

/// `GET|HEAD /<file>`: a narinfo, or a side file uploaded beside paths
/// (`<hash>.ls`).
pub(crate) async fn get_file(
    State(cache): State<Arc<BinaryCache>>,
    Path(file): Path<String>,
) -> Result<Response, CacheError> {
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return files::serve(&cache, &file).await;
    };
    let info = lookup(&cache, hash).await?.ok_or_else(|| not_stored(hash))?;
    let body = render(&cache, &info);
    Ok(([(header::CONTENT_TYPE, NARINFO_TYPE)], body).into_response())
}

pub(crate) fn not_stored(hash: &str) -> CacheError {
    CacheError::NotFound(format!("no store path with hash {hash} in this cache"))
}

/// The digest a narinfo or NAR name starts with; `None` if it is not 32
/// nix32 characters.
pub(crate) fn parse_hash(hash: &str) -> Option<[u8; DIGEST_LEN]> {
    if hash.len() != store::store_path::ENCODED_DIGEST_LEN {
        return None;
    }
    nix32::decode(hash)
}

/// The stored PathInfo for a store path hash, pulled from the upstream
/// caches on a miss when there are any.
pub(crate) async fn lookup(cache: &Arc<BinaryCache>, hash: &str) -> Result<Option<PathInfo>, CacheError> {
    let Some(digest) = parse_hash(hash) else {
        return Ok(None);
    };
    if let Some(info) = cache.paths.get(&digest).await? {
        return Ok(Some(info));
    }
    upstream::fetch(cache.clone(), digest).await
}

/// Where this server serves a path's NAR: named by the store path (to find
/// the PathInfo) and the NarHash (so the name changes with the content,
/// and a client's cached URL can never mean other bytes).
pub(crate) fn nar_url(info: &PathInfo, compression: Compression) -> String {
    format!("nar/{}-{}.nar{}", info.store_path.hash_part(), nix32::encode(&info.nar_sha256), compression.extension())
}

/// The narinfo of `info`: its own signatures plus one by the server's key.
pub(crate) fn render(cache: &BinaryCache, info: &PathInfo) -> String {
    let compression = cache.config.nar_compression;
    let mut narinfo = info.to_narinfo(nar_url(info, compression), compression.name());
    if compression == Compression::None {
        // The file is the NAR itself: its hash and size are known without
        // rendering it, and tools that check FileHash get one.
        narinfo.file_hash = Some(NixHash::sha256(info.nar_sha256));
        narinfo.file_size = Some(info.nar_size);
    }
    if let Some(key) = &cache.config.signing_key
        && !narinfo.signatures.iter().any(|s| s.name == key.name())
    {
        narinfo.signatures.push(key.sign(&info.fingerprint(&cache.config.store_dir)));
    }
    narinfo.render(&cache.config.store_dir)
}
