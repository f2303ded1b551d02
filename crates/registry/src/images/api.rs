//! storefront's own HTTP API for images, under `/storefront/v1/`: what
//! `storefront image add` and `storefront packages import` talk to.
//!
//! - `PUT /storefront/v1/images/NAME[:TAG]` with a JSON [`ImageSpec`]:
//!   records the spec (once its closure is present) and answers with the
//!   references and digests of both flavours.
//! - `GET /storefront/v1/images`: every spec.
//! - `POST /storefront/v1/packages` with a package index (see
//!   [`super::packages::parse_index`]).
use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde_json::json;

use super::{NIX_SNAPSHOTTER_PREFIX, packages, spec};
use crate::{Registry, error::RegistryError};

/// Largest spec or package index accepted.
const MAX_BODY: usize = 64 << 20;

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/storefront/v1/images", get(list))
        .route("/storefront/v1/images/{*name}", put(add))
        .route("/storefront/v1/packages", post(import_packages))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(registry)
}

/// An API error: `{"error": "…"}` with the error's status.
struct ApiError(RegistryError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError(e)
    }
}

/// `NAME[:TAG]`, the tag defaulting to `latest`.
pub fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    }
}

async fn add(
    State(reg): State<Arc<Registry>>,
    Path(reference): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (name, tag) = split_reference(&reference);
    crate::distribution::routing::name(name)?;
    if !crate::distribution::routing::is_tag(tag) {
        return Err(super::invalid_spec(format!("{tag:?} is not a valid tag")).into());
    }
    if name.starts_with(NIX_SNAPSHOTTER_PREFIX) || name.starts_with(packages::PREFIX) {
        return Err(super::invalid_spec(format!(
            "{name}: names under {NIX_SNAPSHOTTER_PREFIX} and {} are generated, not defined",
            packages::PREFIX
        ))
        .into());
    }
    let spec: spec::ImageSpec = serde_json::from_slice(&body)
        .map_err(|e| super::invalid_spec(format!("the image spec is not valid JSON: {e}")))?;
    let [ordinary, nix] = reg.add_image(name, tag, spec).await?;
    let body = json!({
        "name": name,
        "tag": tag,
        "images": [
            { "flavour": "ordinary", "reference": format!("{name}:{tag}"), "digest": ordinary.digest.to_string() },
            { "flavour": "nix-snapshotter", "reference": format!("{NIX_SNAPSHOTTER_PREFIX}{name}:{tag}"), "digest": nix.digest.to_string() },
        ],
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list(State(reg): State<Arc<Registry>>) -> Result<Response, ApiError> {
    let specs = spec::list(&*reg.meta).await?;
    let body: Vec<_> =
        specs.into_iter().map(|(name, tag, spec)| json!({ "name": name, "tag": tag, "spec": spec })).collect();
    Ok(Json(body).into_response())
}

async fn import_packages(State(reg): State<Arc<Registry>>, body: Bytes) -> Result<Response, ApiError> {
    let entries = packages::parse_index(&body)?;
    let n = packages::import(&*reg.meta, entries).await?;
    Ok(Json(json!({ "imported": n })).into_response())
}
