//! The OCI distribution API (spec 1.1): pull, push, tags, catalog,
//! referrers. `GET /v2/` answers the version check; every other path under
//! `/v2/` is read by [`routing`] and handed to the module of its endpoint.
//! Every answer carries `Docker-Distribution-API-Version: registry/2.0`;
//! every refusal is a [`RegistryError`] (spec JSON, spec status).
//!
//! - [`blobs`]: `GET|HEAD|DELETE …/blobs/<digest>` (ranges), and streaming
//!   bodies into and out of castore;
//! - [`uploads`]: sessions, chunks, monolithic uploads, mounts;
//! - [`manifests`]: validation and storage of pushed manifests, reads by
//!   tag or digest (generated images first), deletes;
//! - [`tags`]: tag lists and the catalog; [`referrers`]: the referrers API;
//! - [`records`]: every table and record.
use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};

use crate::{Registry, error::RegistryError};

pub(crate) mod blobs;
pub mod manifests;
pub(crate) mod records;
pub(crate) mod referrers;
pub(crate) mod routing;
pub mod tags;
pub mod uploads;

use routing::{Query, Route};

pub(crate) const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub(crate) const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub(crate) const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub(crate) const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// An empty answer with `status`.
pub(crate) fn empty(status: StatusCode) -> Response {
    Response::builder().status(status).header(header::CONTENT_LENGTH, 0).body(Body::empty()).expect("valid response")
}

fn versioned(mut response: Response) -> Response {
    response.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

/// `GET /v2/`: this is a registry (authentication, when reads need a
/// token, happens before: the binary's auth layer answers 401).
pub(crate) async fn base(method: Method) -> Response {
    versioned(match method {
        Method::GET | Method::HEAD => ([(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
        _ => not_allowed(&method, "GET, HEAD").into_response(),
    })
}

fn not_allowed(method: &Method, allow: &'static str) -> RegistryError {
    RegistryError::unsupported(format!("{method} is not allowed here (allowed: {allow})"))
        .with_header(header::ALLOW, allow)
}

/// Everything under `/v2/` but `/v2/` itself.
pub(crate) async fn dispatch(
    State(registry): State<Arc<Registry>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match handle(&registry, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    versioned(response)
}

async fn handle(
    registry: &Arc<Registry>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let raw = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let tail = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| RegistryError::name_invalid(format!("the path /v2/{raw} is not UTF-8")))?;
    let query = Query::parse(uri.query());
    let read = matches!(*method, Method::GET | Method::HEAD);
    match routing::parse(&tail)? {
        Route::Catalog if read => tags::catalog(registry, &query).await,
        Route::Catalog => Err(not_allowed(method, "GET, HEAD")),
        Route::Tags { name } if read => tags::list(registry, &name, &query).await,
        Route::Tags { .. } => Err(not_allowed(method, "GET, HEAD")),
        Route::Referrers { name, digest } if read => referrers::list(registry, &name, &digest, &query).await,
        Route::Referrers { .. } => Err(not_allowed(method, "GET, HEAD")),
        Route::Manifest { name, reference } => match *method {
            Method::GET | Method::HEAD => manifests::get(registry, &name, &reference, method).await,
            Method::PUT => manifests::put(registry, &name, &reference, headers, body).await,
            Method::DELETE => manifests::delete(registry, &name, &reference).await,
            _ => Err(not_allowed(method, "GET, HEAD, PUT, DELETE")),
        },
        Route::Blob { name, digest } => match *method {
            Method::GET | Method::HEAD => blobs::get(registry, &name, &digest, method, headers).await,
            Method::DELETE => blobs::delete(registry, &name, &digest).await,
            _ => Err(not_allowed(method, "GET, HEAD, DELETE")),
        },
        Route::Uploads { name } => match *method {
            Method::POST => uploads::start(registry, &name, &query, headers, body).await,
            _ => Err(not_allowed(method, "POST")),
        },
        Route::Upload { name, id } => match *method {
            Method::GET | Method::HEAD => uploads::status(registry, &name, &id).await,
            Method::PATCH => uploads::patch(registry, &name, &id, headers, body).await,
            Method::PUT => uploads::finish(registry, &name, &id, &query, headers, body).await,
            Method::DELETE => uploads::cancel(registry, &name, &id).await,
            _ => Err(not_allowed(method, "GET, HEAD, PATCH, PUT, DELETE")),
        },
    }
}
