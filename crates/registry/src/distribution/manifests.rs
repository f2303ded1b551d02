//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`.
//!
//! A pushed manifest is validated (a known media type, consistent with its
//! `mediaType` field; the structure of that type; every referenced blob in
//! the repository, every child manifest of an index in it; the digest of a
//! by-digest push) and then stored as the exact bytes received, in this
//! order: the bytes (`oci-manifests`), its blobs' membership, the
//! repository, its own membership, its referrers record, the tag. A reader
//! never finds a tag or membership whose manifest or blobs are not there.
use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::Body,
    http::{HeaderMap, Method, StatusCode, header},
    response::Response,
};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use super::{
    DOCKER_CONTENT_DIGEST, OCI_SUBJECT, blobs,
    records::{self, ManifestRecord, REPO_BLOBS, REPO_MANIFESTS},
    routing::{BadReference, Reference},
};
use crate::{
    Registry,
    error::RegistryError,
    oci::{Digest, Manifest},
};

/// Largest manifest accepted (the spec asks registries to take at least 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The media types a manifest may be pushed as.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// How many references are checked at once.
const CHECK_CONCURRENCY: usize = 16;

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// A content descriptor, as much of it as the registry checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

/// An image manifest or index (OCI or Docker schema 2).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

fn invalid(message: impl Into<String>) -> RegistryError {
    RegistryError::manifest_invalid(message)
}

/// What a reference in a URL of a read or delete means here.
fn read_reference(reference: &str) -> Result<Reference, RegistryError> {
    Reference::parse(reference).map_err(|e| match e {
        BadReference::Algorithm(m) | BadReference::Invalid(m) => RegistryError::manifest_unknown(m),
    })
}

/// The stored manifest `reference` names in `name`, if any.
async fn lookup(registry: &Registry, name: &str, reference: &Reference) -> Result<Option<Manifest>, RegistryError> {
    let meta = registry.meta.as_ref();
    let digest = match reference {
        Reference::Tag(tag) => match records::tag(meta, name, tag).await? {
            Some(d) => d,
            None => return Ok(None),
        },
        Reference::Digest(d) => {
            if !records::is_member(meta, REPO_MANIFESTS, name, d).await? {
                return Ok(None);
            }
            *d
        }
    };
    Ok(records::manifest(meta, &digest).await?.map(|r| Manifest { media_type: r.media_type, bytes: r.bytes, digest }))
}

/// `GET|HEAD`: generated images first (they shadow stored ones), then the
/// stored manifest, as the exact bytes pushed. The stored media type is
/// served whatever the client's `Accept` says, as registries commonly do.
pub(crate) async fn get(
    registry: &Arc<Registry>,
    name: &str,
    reference: &str,
    method: &Method,
) -> Result<Response, RegistryError> {
    let manifest = match registry.generated_manifest(name, reference).await? {
        Some(m) => m,
        None => {
            let parsed = read_reference(reference)?;
            match lookup(registry, name, &parsed).await? {
                Some(m) => m,
                None if !records::repo_exists(registry.meta.as_ref(), name).await?
                    && registry.generated_tags(name).await?.is_none() =>
                {
                    return Err(RegistryError::name_unknown(format!("no repository {name}")));
                }
                None => return Err(RegistryError::manifest_unknown(format!("no manifest {name}:{reference}"))),
            }
        }
    };
    let response = Response::builder()
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(DOCKER_CONTENT_DIGEST, manifest.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", manifest.digest))
        .header(header::CONTENT_LENGTH, manifest.bytes.len());
    let body = if *method == Method::HEAD { Body::empty() } else { Body::from(manifest.bytes) };
    Ok(response.body(body).expect("valid response"))
}

/// Reads a manifest body, refusing (413) one over the limit.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::too_large(format!("a manifest may hold at most {MAX_MANIFEST_SIZE} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MANIFEST_SIZE as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(MAX_MANIFEST_SIZE as u64) as usize);
    while let Some(piece) = stream.next().await {
        let piece =
            piece.map_err(|e| RegistryError::manifest_invalid(format!("reading the request body failed: {e}")))?;
        if buf.len() + piece.len() > MAX_MANIFEST_SIZE {
            return Err(too_large());
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf.freeze())
}

/// The media type a manifest is stored (and served) as: its `Content-Type`,
/// which must agree with its `mediaType` field; without a usable
/// `Content-Type`, the field, or else what the structure shows.
fn media_type(headers: &HeaderMap, doc: &Document) -> Result<String, RegistryError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "application/json" && v != "application/octet-stream");
    let accepted = || MANIFEST_TYPES.join(", ");
    let chosen = match (&declared, &doc.media_type) {
        (Some(ct), Some(field)) if ct != field => {
            return Err(invalid(format!("Content-Type {ct} differs from the manifest's mediaType {field}")));
        }
        (Some(ct), _) => ct.clone(),
        (None, Some(field)) => field.clone(),
        (None, None) if doc.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    if !MANIFEST_TYPES.contains(&chosen.as_str()) {
        return Err(invalid(format!("unsupported manifest media type {chosen}; this registry accepts {}", accepted()))
            .with_detail(serde_json::json!({ "mediaType": chosen })));
    }
    Ok(chosen)
}

/// The structure `media_type` demands.
fn check_structure(media_type: &str, doc: &Document) -> Result<(), RegistryError> {
    if doc.schema_version != Some(2) {
        return Err(invalid(format!("schemaVersion must be 2, not {:?}", doc.schema_version)));
    }
    if is_index(media_type) {
        if doc.manifests.is_none() {
            return Err(invalid(format!("a {media_type} needs a manifests list")));
        }
        if doc.config.is_some() || doc.layers.is_some() {
            return Err(invalid(format!("a {media_type} has no config or layers")));
        }
    } else {
        if doc.config.is_none() {
            return Err(invalid(format!("a {media_type} needs a config descriptor")));
        }
        if doc.layers.is_none() {
            return Err(invalid(format!("a {media_type} needs a layers list")));
        }
        if doc.manifests.is_some() {
            return Err(invalid(format!("a {media_type} has no manifests list (is it an index?)")));
        }
    }
    let all = doc.config.iter().chain(doc.layers.iter().flatten()).chain(doc.manifests.iter().flatten());
    for d in all.chain(doc.subject.iter()) {
        if d.media_type.is_empty() {
            return Err(invalid(format!("descriptor {} has no mediaType", d.digest)));
        }
        if d.size < 0 {
            return Err(invalid(format!("descriptor {} has a negative size", d.digest)));
        }
    }
    Ok(())
}

/// A descriptor's digest; one this registry cannot hold is missing.
fn descriptor_digest(d: &Descriptor) -> Result<Option<Digest>, RegistryError> {
    match crate::distribution::routing::parse_digest(&d.digest) {
        Ok(digest) => Ok(Some(digest)),
        Err(BadReference::Algorithm(_)) => Ok(None),
        Err(BadReference::Invalid(m)) => Err(invalid(format!("descriptor digest {:?}: {m}", d.digest))),
    }
}

/// What a referenced blob turned out to be.
enum BlobCheck {
    /// In the repository already.
    Member,
    /// Not yet: a generated image's blob, which the push makes a member.
    Generated,
}

/// Checks that every blob (config, layers other than foreign ones with
/// `urls`) is in the repository with the size named; the blobs to add.
async fn check_blobs(registry: &Registry, name: &str, doc: &Document) -> Result<Vec<Digest>, RegistryError> {
    let layers = doc.layers.iter().flatten().filter(|l| l.urls.as_ref().is_none_or(|u| u.is_empty()));
    let wanted: Vec<&Descriptor> = doc.config.iter().chain(layers).collect();
    let checks = wanted.into_iter().map(|d| async move {
        let unknown = || {
            RegistryError::manifest_blob_unknown(format!("blob {} is not in repository {name}", d.digest))
                .with_detail(serde_json::json!({ "digest": d.digest }))
        };
        let digest = descriptor_digest(d)?.ok_or_else(unknown)?;
        let member = records::is_member(registry.meta.as_ref(), REPO_BLOBS, name, &digest).await?;
        let source = blobs::find(registry, name, &digest).await?.ok_or_else(unknown)?;
        if source.size() != d.size as u64 {
            return Err(invalid(format!(
                "descriptor {} says {} bytes, the blob has {}",
                d.digest,
                d.size,
                source.size()
            )));
        }
        Ok((digest, if member { BlobCheck::Member } else { BlobCheck::Generated }))
    });
    let checks: Vec<(Digest, BlobCheck)> =
        futures::stream::iter(checks.collect::<Vec<_>>()).buffered(CHECK_CONCURRENCY).try_collect().await?;
    Ok(checks.into_iter().filter(|(_, c)| matches!(c, BlobCheck::Generated)).map(|(d, _)| d).collect())
}

/// Checks that every manifest an index lists is in the repository.
async fn check_children(registry: &Registry, name: &str, doc: &Document) -> Result<(), RegistryError> {
    let children = doc.manifests.iter().flatten();
    let checks = children.map(|d| async move {
        let unknown = || {
            RegistryError::manifest_unknown(format!("manifest {} is not in repository {name}", d.digest))
                .with_detail(serde_json::json!({ "digest": d.digest }))
        };
        let digest = descriptor_digest(d)?.ok_or_else(unknown)?;
        let size = match lookup(registry, name, &Reference::Digest(digest)).await? {
            Some(m) => m.bytes.len(),
            None => match registry.generated_manifest(name, &digest.to_string()).await? {
                Some(m) => m.bytes.len(),
                None => return Err(unknown()),
            },
        };
        if size as i64 != d.size {
            return Err(invalid(format!("descriptor {} says {} bytes, the manifest has {size}", d.digest, d.size)));
        }
        Ok(())
    });
    futures::stream::iter(checks.collect::<Vec<_>>()).buffered(CHECK_CONCURRENCY).try_collect::<Vec<()>>().await?;
    Ok(())
}

/// The descriptor listed by the referrers API for a manifest.
fn referrer_descriptor(media_type: &str, digest: &Digest, size: usize, doc: &Document) -> serde_json::Value {
    let artifact_type = doc
        .artifact_type
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| doc.config.as_ref().map(|c| c.media_type.clone()).filter(|_| !is_index(media_type)));
    let mut d = serde_json::json!({ "mediaType": media_type, "digest": digest.to_string(), "size": size });
    if let Some(t) = artifact_type {
        d["artifactType"] = t.into();
    }
    if let Some(a) = doc.annotations.as_ref().filter(|a| !a.is_empty()) {
        d["annotations"] = serde_json::to_value(a).expect("strings serialise");
    }
    d
}

/// `PUT`: validates and stores a manifest, then tags it.
pub(crate) async fn put(
    registry: &Arc<Registry>,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let reference = Reference::parse(reference).map_err(|e| match e {
        BadReference::Algorithm(m) => RegistryError::digest_invalid(m),
        BadReference::Invalid(m) => invalid(format!("invalid reference: {m}")),
    })?;
    let bytes = read_body(headers, body).await?;
    let digest = Digest::of(&bytes);
    if let Reference::Digest(d) = &reference
        && *d != digest
    {
        return Err(RegistryError::digest_invalid(format!("the manifest has digest {digest}, not {d}"))
            .with_detail(serde_json::json!({ "digest": d.to_string() })));
    }
    let doc: Document = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the manifest is not valid JSON of its type: {e}")))?;
    let media_type = media_type(headers, &doc)?;
    check_structure(&media_type, &doc)?;
    let subject = match &doc.subject {
        Some(s) => {
            Some(descriptor_digest(s)?.ok_or_else(|| invalid(format!("subject digest {}: use sha256", s.digest)))?)
        }
        None => None,
    };
    let new_members = if is_index(&media_type) { Vec::new() } else { check_blobs(registry, name, &doc).await? };
    if is_index(&media_type) {
        check_children(registry, name, &doc).await?;
    }

    let meta = registry.meta.as_ref();
    let size = bytes.len();
    records::put_manifest(meta, &digest, &ManifestRecord { media_type: media_type.clone(), bytes }).await?;
    for d in &new_members {
        records::add_member(meta, REPO_BLOBS, name, d).await?;
    }
    records::add_repo(meta, name).await?;
    records::add_member(meta, REPO_MANIFESTS, name, &digest).await?;
    if let Some(subject) = &subject {
        let descriptor = referrer_descriptor(&media_type, &digest, size, &doc);
        let value = Bytes::from(serde_json::to_vec(&descriptor).expect("JSON values serialise"));
        records::insert(meta, records::REFERRERS, records::referrer_key(name, subject, &digest), value).await?;
    }
    if let Reference::Tag(tag) = &reference {
        records::set_tag(meta, name, tag, &digest).await?;
    }

    let mut response = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::CONTENT_LENGTH, 0);
    if let Some(subject) = subject {
        response = response.header(OCI_SUBJECT, subject.to_string());
    }
    Ok(response.body(Body::empty()).expect("valid response"))
}

/// `DELETE`: by tag, the tag goes; by digest, the manifest leaves the
/// repository with every tag pointing at it and its referrers record.
pub(crate) async fn delete(registry: &Registry, name: &str, reference: &str) -> Result<Response, RegistryError> {
    let meta = registry.meta.as_ref();
    match read_reference(reference)? {
        Reference::Tag(tag) => {
            if !records::remove_tag(meta, name, &tag, None).await? {
                return Err(RegistryError::manifest_unknown(format!("no tag {name}:{tag}")));
            }
        }
        Reference::Digest(digest) => {
            if !records::is_member(meta, REPO_MANIFESTS, name, &digest).await? {
                return Err(RegistryError::manifest_unknown(format!("no manifest {digest} in repository {name}")));
            }
            let tags: Vec<(String, Digest)> = records::tags(meta, name).try_collect().await?;
            for (tag, _) in tags.iter().filter(|(_, d)| *d == digest) {
                records::remove_tag(meta, name, tag, Some(&digest)).await?;
            }
            if let Some(record) = records::manifest(meta, &digest).await?
                && let Ok(doc) = serde_json::from_slice::<Document>(&record.bytes)
                && let Some(subject) = doc.subject.as_ref().and_then(|s| descriptor_digest(s).ok().flatten())
            {
                records::remove(meta, records::REFERRERS, records::referrer_key(name, &subject, &digest)).await?;
            }
            records::remove_member(meta, REPO_MANIFESTS, name, &digest).await?;
        }
    }
    Ok(super::empty(StatusCode::ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: serde_json::Value) -> Document {
        serde_json::from_value(json).unwrap()
    }

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        h
    }

    #[test]
    fn media_types() {
        let image = doc(serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST}));
        assert_eq!(media_type(&headers(Some(OCI_MANIFEST)), &image).unwrap(), OCI_MANIFEST);
        assert_eq!(
            media_type(&headers(Some(&format!("{OCI_MANIFEST}; charset=utf-8"))), &image).unwrap(),
            OCI_MANIFEST
        );
        assert_eq!(media_type(&headers(None), &image).unwrap(), OCI_MANIFEST);
        assert!(media_type(&headers(Some(OCI_INDEX)), &image).is_err(), "inconsistent with the field");
        let bare = doc(serde_json::json!({"schemaVersion": 2, "manifests": []}));
        assert_eq!(media_type(&headers(None), &bare).unwrap(), OCI_INDEX);
        assert_eq!(media_type(&headers(Some("application/json")), &bare).unwrap(), OCI_INDEX);
        assert!(
            media_type(&headers(Some("application/vnd.docker.distribution.manifest.v1+prettyjws")), &bare).is_err()
        );
        assert_eq!(media_type(&headers(Some(DOCKER_MANIFEST_LIST)), &bare).unwrap(), DOCKER_MANIFEST_LIST);
    }

    #[test]
    fn structures() {
        let cfg = serde_json::json!({"mediaType": "x", "digest": "sha256:00", "size": 1});
        assert!(
            check_structure(OCI_MANIFEST, &doc(serde_json::json!({"schemaVersion": 2, "config": cfg, "layers": []})))
                .is_ok()
        );
        assert!(
            check_structure(OCI_MANIFEST, &doc(serde_json::json!({"schemaVersion": 1, "config": cfg, "layers": []})))
                .is_err()
        );
        assert!(check_structure(OCI_MANIFEST, &doc(serde_json::json!({"schemaVersion": 2, "layers": []}))).is_err());
        assert!(
            check_structure(OCI_INDEX, &doc(serde_json::json!({"schemaVersion": 2, "config": cfg, "layers": []})))
                .is_err()
        );
        assert!(check_structure(OCI_INDEX, &doc(serde_json::json!({"schemaVersion": 2, "manifests": [cfg]}))).is_ok());
        let neg = serde_json::json!({"mediaType": "x", "digest": "sha256:00", "size": -1});
        assert!(check_structure(OCI_INDEX, &doc(serde_json::json!({"schemaVersion": 2, "manifests": [neg]}))).is_err());
    }

    #[test]
    fn referrer_descriptors() {
        let d = Digest::of(b"m");
        let with_type = doc(serde_json::json!({
            "schemaVersion": 2, "artifactType": "application/x.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:00", "size": 2},
            "annotations": {"a": "b"}
        }));
        let v = referrer_descriptor(OCI_MANIFEST, &d, 10, &with_type);
        assert_eq!(v["artifactType"], "application/x.sbom");
        assert_eq!(v["annotations"]["a"], "b");
        assert_eq!(v["size"], 10);
        let config_type = doc(serde_json::json!({
            "schemaVersion": 2, "config": {"mediaType": "application/x.sig", "digest": "sha256:00", "size": 2}
        }));
        assert_eq!(referrer_descriptor(OCI_MANIFEST, &d, 10, &config_type)["artifactType"], "application/x.sig");
        let index = doc(serde_json::json!({"schemaVersion": 2, "manifests": []}));
        assert!(referrer_descriptor(OCI_INDEX, &d, 10, &index).get("artifactType").is_none());
        assert!(referrer_descriptor(OCI_INDEX, &d, 10, &index).get("annotations").is_none());
    }
}
