//! Backends chosen by URL, in the spellings tvix/snix users know.
use std::{path::PathBuf, sync::Arc};

use crate::{
    BlobService, DirectoryService, Error, Result,
    blob::ChunkedBlobService,
    dirsvc::KvDirectoryService,
    grpc::{self, GrpcBlobService, GrpcDirectoryService},
    kv::{EmbeddedStore, KvStore, MemoryStore},
};

/// The URL forms, for error messages.
const FORMS: &str = "memory:, redb:/path/castore.redb, grpc+http://host:port, grpc+https://host:port, \
                     grpc+unix:/path.sock (append ?package=tvix for tvix servers)";

fn parse(addr: &str) -> Result<url::Url> {
    url::Url::parse(addr).map_err(|e| Error::InvalidRequest(format!("invalid service address {addr:?}: {e}; use {FORMS}")))
}

/// A local engine for `memory:`, `redb+memory:` or `redb:PATH`.
fn kv(url: &url::Url) -> Result<Option<Arc<dyn KvStore>>> {
    Ok(match url.scheme() {
        "memory" | "redb+memory" => Some(Arc::new(MemoryStore::new())),
        "redb" => {
            let path = PathBuf::from(url.path());
            if url.path().is_empty() {
                return Err(Error::InvalidRequest(format!("{url}: redb needs a file path")));
            }
            Some(Arc::new(EmbeddedStore::open(&path)?))
        }
        _ => None,
    })
}

/// Opens a [`BlobService`] from an address such as `redb:/var/lib/storefront/castore.redb`.
pub fn blob_service_from_url(addr: &str) -> Result<Arc<dyn BlobService>> {
    let url = parse(addr)?;
    if let Some(kv) = kv(&url)? {
        return Ok(Arc::new(ChunkedBlobService::new(kv)));
    }
    if url.scheme().starts_with("grpc+") {
        return Ok(Arc::new(GrpcBlobService::new(grpc::connect(&url)?)));
    }
    Err(Error::InvalidRequest(format!("unknown blob service address {addr:?}; use {FORMS}")))
}

/// Opens a [`DirectoryService`] from an address such as `grpc+unix:/run/storefront.sock`.
pub fn directory_service_from_url(addr: &str) -> Result<Arc<dyn DirectoryService>> {
    let url = parse(addr)?;
    if let Some(kv) = kv(&url)? {
        return Ok(Arc::new(KvDirectoryService::new(kv)));
    }
    if url.scheme().starts_with("grpc+") {
        return Ok(Arc::new(GrpcDirectoryService::new(grpc::connect(&url)?)));
    }
    Err(Error::InvalidRequest(format!("unknown directory service address {addr:?}; use {FORMS}")))
}
