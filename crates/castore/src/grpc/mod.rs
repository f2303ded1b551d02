//! The castore gRPC protocol: server, client backends, and the two package
//! names (`snix.*` and `tvix.*`) it is spoken under.
//!
//! Rust code exists once (snix); tvix method paths differ only in the
//! package prefix, so [`PackageRewrite`] maps one onto the other: a server
//! wraps its routes to answer both, a client wraps its channel to speak tvix.
//! The same wrapper carries a client's token (`authorization: Bearer …`),
//! which servers that check writes (storefront) ask for.
use std::task::{Context, Poll};

mod client;
mod closures;
mod server;

pub use client::{GrpcBlobService, GrpcDirectoryService, TOKEN_ENV, Transport, connect, redacted};
pub use closures::{DirectoryBatchServer, directory_batch_server};
pub use server::{
    BlobBatchServer, BlobServer, DirectoryServer, EXPECTED_DIGEST_HEADER, MAX_BATCH_DIGESTS, blob_batch_server,
    blob_service_server, directory_service_server,
};

/// Which generation of the protocol's package names to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Package {
    /// `snix.castore.v1`, `snix.store.v1` (the maintained fork).
    #[default]
    Snix,
    /// `tvix.castore.v1`, `tvix.store.v1`.
    Tvix,
}

/// gRPC service names registered for health checks, under both packages.
pub const SERVICE_NAMES: [&str; 4] = [
    "snix.castore.v1.BlobService",
    "snix.castore.v1.DirectoryService",
    "tvix.castore.v1.BlobService",
    "tvix.castore.v1.DirectoryService",
];

/// storefront's batch read (not part of either package; see
/// [`crate::proto::batch`]).
pub const BATCH_SERVICE_NAME: &str = "storefront.castore.v1.BlobBatchService";
/// storefront's batch call for directory closures (not part of either
/// package; see [`crate::proto::batch`]).
pub const DIRECTORY_BATCH_SERVICE_NAME: &str = "storefront.castore.v1.DirectoryBatchService";

/// Rewrites the package prefix of request paths (`/tvix.` ⇄ `/snix.`),
/// and on a client adds its `authorization` header to every call.
#[derive(Clone, Debug)]
pub struct PackageRewrite<S> {
    inner: S,
    from: &'static str,
    to: &'static str,
    /// Marked sensitive, so `Debug` does not show it.
    authorization: Option<http::HeaderValue>,
}

impl<S> PackageRewrite<S> {
    /// For a server whose routes speak snix: answers tvix paths too.
    pub fn accept_tvix(inner: S) -> Self {
        Self { inner, from: "/tvix.", to: "/snix.", authorization: None }
    }

    /// For a client: sends snix-generated calls under `package`.
    pub fn speak(inner: S, package: Package) -> Self {
        let (from, to) = match package {
            Package::Snix => ("/snix.", "/snix."),
            Package::Tvix => ("/snix.", "/tvix."),
        };
        Self { inner, from, to, authorization: None }
    }

    /// For a client: sends `authorization: Bearer <token>` with every call.
    pub fn with_token(mut self, token: &str) -> crate::Result<Self> {
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| crate::Error::InvalidRequest("the token has characters that a header cannot carry".into()))?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }
}

impl<S, B> tower::Service<http::Request<B>> for PackageRewrite<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(value) = &self.authorization {
            req.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        if self.from != self.to
            && let Some(rest) = req.uri().path().strip_prefix(self.from)
        {
            let path = format!("{}{rest}", self.to);
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = path.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        self.inner.call(req)
    }
}
