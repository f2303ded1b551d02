//! `GET /v2/<name>/referrers/<digest>[?artifactType=…]` (OCI 1.1): an image
//! index of the manifests in `<name>` whose `subject` is `<digest>`, built
//! from the descriptors recorded when they were pushed. Never 404: no
//! referrers (or no repository) is an empty index.
use axum::{body::Body, http::header, response::Response};
use futures::TryStreamExt;

use super::{
    OCI_FILTERS_APPLIED,
    manifests::OCI_INDEX,
    records,
    routing::{BadReference, Query, parse_digest},
};
use crate::{Registry, error::RegistryError};

pub(crate) async fn list(
    registry: &Registry,
    name: &str,
    digest: &str,
    query: &Query,
) -> Result<Response, RegistryError> {
    let subject = match parse_digest(digest) {
        Ok(d) => Some(d),
        // Nothing stored can refer to a digest of another algorithm.
        Err(BadReference::Algorithm(_)) => None,
        Err(BadReference::Invalid(m)) => return Err(RegistryError::digest_invalid(m)),
    };
    let filter = query.get("artifactType").filter(|t| !t.is_empty());
    let mut manifests = Vec::new();
    if let Some(subject) = subject {
        let recorded: Vec<_> = records::referrers(registry.meta.as_ref(), name, &subject).try_collect().await?;
        for bytes in recorded {
            let descriptor: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::internal(format!("corrupt referrers record: {e}")))?;
            if filter.is_none_or(|f| descriptor.get("artifactType").and_then(|t| t.as_str()) == Some(f)) {
                manifests.push(descriptor);
            }
        }
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut response = Response::builder().header(header::CONTENT_TYPE, OCI_INDEX);
    if filter.is_some() {
        response = response.header(OCI_FILTERS_APPLIED, "artifactType");
    }
    let bytes = serde_json::to_vec(&index).expect("JSON values serialise");
    Ok(response.body(Body::from(bytes)).expect("valid response"))
}
