//! The registry's records in the `KvStore` engine, and the only code that
//! reads or writes them.
//!
//! | table | key | value | kind |
//! |---|---|---|---|
//! | `oci-blobs` | sha256 (32 bytes) | [`BlobRecord`]: size + castore parts | content-addressed, `put` |
//! | `oci-manifests` | sha256 | [`ManifestRecord`]: media type + exact bytes | content-addressed, `put` |
//! | `oci-repos` | name | empty | grows only, `put` |
//! | `oci-repo-blobs` | `name\0` sha256 | empty | membership, compare-and-swap |
//! | `oci-repo-manifests` | `name\0` sha256 | empty | membership, compare-and-swap |
//! | `oci-tags` | `name\0tag` | sha256 | mutable, compare-and-swap |
//! | `oci-referrers` | `name\0` subject sha256 manifest sha256 | descriptor JSON | compare-and-swap |
//! | `oci-uploads` | upload id | [`Session`] | mutable, compare-and-swap only |
//!
//! Content (blobs, manifests) is global and never removed here; what a
//! repository shows is its membership and tags, which deletes remove.
use bytes::{BufMut, Bytes, BytesMut};
use castore::{
    B3Digest,
    kv::{KvStore, Table},
};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use prost::Message;

use crate::{error::RegistryError, oci::Digest};

pub(crate) const BLOBS: Table = Table::named("oci-blobs");
pub(crate) const MANIFESTS: Table = Table::named("oci-manifests");
pub(crate) const REPOS: Table = Table::named("oci-repos");
pub(crate) const REPO_BLOBS: Table = Table::named("oci-repo-blobs");
pub(crate) const REPO_MANIFESTS: Table = Table::named("oci-repo-manifests");
pub(crate) const TAGS: Table = Table::named("oci-tags");
pub(crate) const REFERRERS: Table = Table::named("oci-referrers");
pub(crate) const UPLOADS: Table = Table::named("oci-uploads");

/// A piece of a blob as stored in castore: one uploaded chunk.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Part {
    /// The castore (BLAKE3) digest of the piece.
    #[prost(bytes = "bytes", tag = "1")]
    pub blake3: Bytes,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// SHA-256 of the piece alone (kept in sessions: a one-part upload
    /// needs no second read to find the blob's digest).
    #[prost(bytes = "bytes", tag = "3")]
    pub sha256: Bytes,
}

impl Part {
    pub(crate) fn digest(&self) -> Result<B3Digest, RegistryError> {
        B3Digest::try_from(&self.blake3[..]).map_err(|e| RegistryError::internal(format!("corrupt part record: {e}")))
    }
}

/// An OCI blob: its bytes are the concatenation of castore blobs (one for
/// anything uploaded in one request, one per chunk for a chunked upload).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BlobRecord {
    #[prost(uint64, tag = "1")]
    pub size: u64,
    #[prost(message, repeated, tag = "2")]
    pub parts: Vec<Part>,
}

impl BlobRecord {
    /// The blob as a layout of its castore parts, so any range of it is
    /// read with [`castore::render::LayoutReader`] (parts fetched ahead,
    /// chunk buffers passed on without a copy).
    pub(crate) fn layout(&self) -> Result<castore::render::Layout, RegistryError> {
        let mut layout = castore::render::LayoutBuilder::new();
        for part in &self.parts {
            layout.blob(part.digest()?, part.size).map_err(|_| corrupt("blob", "larger than 2^64 bytes"))?;
        }
        Ok(layout.finish())
    }
}

/// A manifest as pushed.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ManifestRecord {
    #[prost(string, tag = "1")]
    pub media_type: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub bytes: Bytes,
}

/// An upload in progress.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Session {
    #[prost(string, tag = "1")]
    pub repo: String,
    /// Unix seconds of the start and of the last chunk.
    #[prost(uint64, tag = "2")]
    pub created: u64,
    #[prost(uint64, tag = "3")]
    pub updated: u64,
    #[prost(message, repeated, tag = "4")]
    pub parts: Vec<Part>,
}

impl Session {
    /// Bytes received so far.
    pub(crate) fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::internal(format!("corrupt {what} record: {e}"))
}

/// `name\0suffix`: per-repository keys never collide across names (a name
/// holds no NUL) and a repository's keys share the prefix `name\0`.
pub(crate) fn repo_key(name: &str, suffix: &[u8]) -> Bytes {
    let mut key = BytesMut::with_capacity(name.len() + 1 + suffix.len());
    key.put_slice(name.as_bytes());
    key.put_u8(0);
    key.put_slice(suffix);
    key.freeze()
}

pub(crate) fn repo_prefix(name: &str) -> Bytes {
    repo_key(name, b"")
}

pub(crate) async fn blob(kv: &dyn KvStore, digest: &Digest) -> Result<Option<BlobRecord>, RegistryError> {
    match kv.get(BLOBS, digest.as_bytes()).await? {
        Some(bytes) => BlobRecord::decode(bytes).map(Some).map_err(|e| corrupt("blob", e)),
        None => Ok(None),
    }
}

pub(crate) async fn put_blob(kv: &dyn KvStore, digest: &Digest, record: &BlobRecord) -> Result<(), RegistryError> {
    kv.put(BLOBS, vec![(Bytes::copy_from_slice(digest.as_bytes()), record.encode_to_vec().into())]).await?;
    Ok(())
}

pub(crate) async fn manifest(kv: &dyn KvStore, digest: &Digest) -> Result<Option<ManifestRecord>, RegistryError> {
    match kv.get(MANIFESTS, digest.as_bytes()).await? {
        Some(bytes) => ManifestRecord::decode(bytes).map(Some).map_err(|e| corrupt("manifest", e)),
        None => Ok(None),
    }
}

pub(crate) async fn put_manifest(
    kv: &dyn KvStore,
    digest: &Digest,
    record: &ManifestRecord,
) -> Result<(), RegistryError> {
    kv.put(MANIFESTS, vec![(Bytes::copy_from_slice(digest.as_bytes()), record.encode_to_vec().into())]).await?;
    Ok(())
}

/// Records that repository `name` exists (for the catalog and tag lists).
pub(crate) async fn add_repo(kv: &dyn KvStore, name: &str) -> Result<(), RegistryError> {
    if !kv.contains(REPOS, name.as_bytes()).await? {
        kv.put(REPOS, vec![(Bytes::copy_from_slice(name.as_bytes()), Bytes::new())]).await?;
    }
    Ok(())
}

pub(crate) async fn repo_exists(kv: &dyn KvStore, name: &str) -> Result<bool, RegistryError> {
    Ok(kv.contains(REPOS, name.as_bytes()).await?)
}

/// Whether `digest` is a member of repository `name` in `table`.
pub(crate) async fn is_member(
    kv: &dyn KvStore,
    table: Table,
    name: &str,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    Ok(kv.contains(table, &repo_key(name, digest.as_bytes())).await?)
}

/// Makes `digest` a member of `name` (idempotent).
pub(crate) async fn add_member(
    kv: &dyn KvStore,
    table: Table,
    name: &str,
    digest: &Digest,
) -> Result<(), RegistryError> {
    insert(kv, table, repo_key(name, digest.as_bytes()), Bytes::new()).await
}

/// Removes `digest` from `name`; whether it was a member.
pub(crate) async fn remove_member(
    kv: &dyn KvStore,
    table: Table,
    name: &str,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    remove(kv, table, repo_key(name, digest.as_bytes())).await
}

/// Sets a mutable record to `value` unless one is there (concurrent
/// writers of the same key agree on the value: membership, referrers).
pub(crate) async fn insert(kv: &dyn KvStore, table: Table, key: Bytes, value: Bytes) -> Result<(), RegistryError> {
    loop {
        match kv.compare_and_swap(table, key.clone(), None, Some(value.clone())).await? {
            Ok(()) | Err(Some(_)) => return Ok(()),
            Err(None) => continue, // removed between the two looks: try again
        }
    }
}

/// Deletes a mutable record, whatever it holds; whether there was one.
pub(crate) async fn remove(kv: &dyn KvStore, table: Table, key: Bytes) -> Result<bool, RegistryError> {
    let mut current = kv.get(table, &key).await?;
    loop {
        let Some(value) = current else { return Ok(false) };
        match kv.compare_and_swap(table, key.clone(), Some(value), None).await? {
            Ok(()) => return Ok(true),
            Err(actual) => current = actual,
        }
    }
}

/// The tag `name:tag`.
pub(crate) async fn tag(kv: &dyn KvStore, name: &str, tag: &str) -> Result<Option<Digest>, RegistryError> {
    match kv.get(TAGS, &repo_key(name, tag.as_bytes())).await? {
        Some(bytes) => tag_value(&bytes).map(Some),
        None => Ok(None),
    }
}

fn tag_value(bytes: &[u8]) -> Result<Digest, RegistryError> {
    <[u8; 32]>::try_from(bytes).map(Digest).map_err(|_| corrupt("tag", "not 32 bytes"))
}

/// Points `name:tag` at `digest` (last writer wins).
pub(crate) async fn set_tag(kv: &dyn KvStore, name: &str, tag: &str, digest: &Digest) -> Result<(), RegistryError> {
    let key = repo_key(name, tag.as_bytes());
    castore::kv::set(kv, TAGS, key, Some(Bytes::copy_from_slice(digest.as_bytes()))).await?;
    Ok(())
}

/// Removes `name:tag` if it still points at `digest` (or whatever it points
/// at, with `None`); whether it was removed.
pub(crate) async fn remove_tag(
    kv: &dyn KvStore,
    name: &str,
    tag: &str,
    digest: Option<&Digest>,
) -> Result<bool, RegistryError> {
    let key = repo_key(name, tag.as_bytes());
    match digest {
        None => remove(kv, TAGS, key).await,
        Some(d) => {
            let expected = Bytes::copy_from_slice(d.as_bytes());
            Ok(kv.compare_and_swap(TAGS, key, Some(expected), None).await?.is_ok())
        }
    }
}

/// The tags of `name` with their targets, in ascending order.
pub(crate) fn tags(kv: &dyn KvStore, name: &str) -> BoxStream<'static, Result<(String, Digest), RegistryError>> {
    let prefix = repo_prefix(name);
    let skip = prefix.len();
    kv.scan_prefix(TAGS, prefix)
        .map_err(RegistryError::from)
        .and_then(move |(key, value)| async move {
            let tag = std::str::from_utf8(&key[skip..]).map_err(|e| corrupt("tag", e))?.to_owned();
            Ok((tag, tag_value(&value)?))
        })
        .boxed()
}

/// Every repository name, in ascending order.
pub(crate) fn repos(kv: &dyn KvStore) -> BoxStream<'static, Result<String, RegistryError>> {
    kv.scan_prefix(REPOS, Bytes::new())
        .map_err(RegistryError::from)
        .and_then(|(key, _)| async move { String::from_utf8(key.to_vec()).map_err(|e| corrupt("repository", e)) })
        .boxed()
}

/// The referrers record of `manifest` (whose subject is `subject`) in `name`.
pub(crate) fn referrer_key(name: &str, subject: &Digest, manifest: &Digest) -> Bytes {
    let mut suffix = [0u8; 64];
    suffix[..32].copy_from_slice(subject.as_bytes());
    suffix[32..].copy_from_slice(manifest.as_bytes());
    repo_key(name, &suffix)
}

/// The descriptors (JSON) of manifests in `name` whose subject is `subject`.
pub(crate) fn referrers(
    kv: &dyn KvStore,
    name: &str,
    subject: &Digest,
) -> BoxStream<'static, Result<Bytes, RegistryError>> {
    kv.scan_prefix(REFERRERS, repo_key(name, subject.as_bytes()))
        .map_ok(|(_, v)| v)
        .map_err(RegistryError::from)
        .boxed()
}

pub(crate) async fn session(kv: &dyn KvStore, id: &str) -> Result<Option<(Bytes, Session)>, RegistryError> {
    match kv.get(UPLOADS, id.as_bytes()).await? {
        Some(bytes) => {
            let session = Session::decode(bytes.clone()).map_err(|e| corrupt("upload", e))?;
            Ok(Some((bytes, session)))
        }
        None => Ok(None),
    }
}

/// Replaces the session record `id` if it still is `current`; `false` when
/// another request changed it first.
pub(crate) async fn swap_session(
    kv: &dyn KvStore,
    id: &str,
    current: Option<Bytes>,
    new: Option<&Session>,
) -> Result<bool, RegistryError> {
    let key = Bytes::copy_from_slice(id.as_bytes());
    let new = new.map(|s| Bytes::from(s.encode_to_vec()));
    Ok(kv.compare_and_swap(UPLOADS, key, current, new).await?.is_ok())
}

/// Every session record with its id.
pub(crate) fn sessions(kv: &dyn KvStore) -> BoxStream<'static, Result<(Bytes, Bytes), RegistryError>> {
    kv.scan_prefix(UPLOADS, Bytes::new()).map_err(RegistryError::from).boxed()
}

#[cfg(test)]
mod tests {
    use castore::kv::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn membership_tags_and_sessions() {
        let kv = MemoryStore::new();
        let d = Digest::of(b"x");
        let e = Digest::of(b"y");
        assert!(!is_member(&kv, REPO_BLOBS, "a", &d).await.unwrap());
        add_member(&kv, REPO_BLOBS, "a", &d).await.unwrap();
        add_member(&kv, REPO_BLOBS, "a", &d).await.unwrap();
        assert!(is_member(&kv, REPO_BLOBS, "a", &d).await.unwrap());
        assert!(!is_member(&kv, REPO_BLOBS, "a/b", &d).await.unwrap());
        assert!(remove_member(&kv, REPO_BLOBS, "a", &d).await.unwrap());
        assert!(!remove_member(&kv, REPO_BLOBS, "a", &d).await.unwrap());

        set_tag(&kv, "a", "v2", &d).await.unwrap();
        set_tag(&kv, "a", "v1", &d).await.unwrap();
        set_tag(&kv, "a/b", "v0", &e).await.unwrap();
        set_tag(&kv, "a", "v1", &e).await.unwrap();
        let listed: Vec<_> = tags(&kv, "a").try_collect().await.unwrap();
        assert_eq!(listed, vec![("v1".to_owned(), e), ("v2".to_owned(), d)]);
        assert!(!remove_tag(&kv, "a", "v1", Some(&d)).await.unwrap(), "v1 moved on to e");
        assert!(remove_tag(&kv, "a", "v1", Some(&e)).await.unwrap());
        assert_eq!(tag(&kv, "a", "v1").await.unwrap(), None);

        add_repo(&kv, "b").await.unwrap();
        add_repo(&kv, "a").await.unwrap();
        add_repo(&kv, "a").await.unwrap();
        assert_eq!(repos(&kv).try_collect::<Vec<_>>().await.unwrap(), ["a", "b"]);

        let s = Session { repo: "a".into(), created: 1, updated: 1, parts: vec![] };
        assert!(swap_session(&kv, "id", None, Some(&s)).await.unwrap());
        assert!(!swap_session(&kv, "id", None, Some(&s)).await.unwrap(), "a second start of one id fails");
        let (raw, got) = session(&kv, "id").await.unwrap().unwrap();
        assert_eq!(got, s);
        assert!(swap_session(&kv, "id", Some(raw), None).await.unwrap());
        assert!(session(&kv, "id").await.unwrap().is_none());
    }
}
