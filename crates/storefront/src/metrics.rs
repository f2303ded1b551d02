//! `/metrics` in the Prometheus text format: requests, latencies and bytes
//! of everything the listener serves, recorded by one tower layer around
//! the whole app (so refusals by the auth layer count too).
//!
//! Labels stay bounded whatever clients send: paths are folded into a few
//! kinds, unknown HTTP methods into `other`, and gRPC methods are named
//! only when the server implements them.
use std::{
    borrow::Cow,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use futures::{FutureExt, future::BoxFuture};
use http::{HeaderMap, Method, Request, Response, header};
use http_body::Frame;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, prometheus_text},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

/// Latency buckets, 0.1 ms (a cached narinfo) to 10 s (a large NAR's
/// first bytes from an upstream).
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What a request is for, from its path (or its content type, for gRPC).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Kind {
    NixCacheInfo,
    Narinfo,
    Nar,
    Ls,
    Log,
    Realisation,
    Registry,
    Grpc,
    Healthz,
    Metrics,
    Other,
}

impl Kind {
    fn of(path: &str) -> Kind {
        let file = path.strip_prefix('/').filter(|f| !f.contains('/'));
        match path {
            "/healthz" => Kind::Healthz,
            "/metrics" => Kind::Metrics,
            "/nix-cache-info" => Kind::NixCacheInfo,
            "/v2" => Kind::Registry,
            _ if path.starts_with("/v2/") => Kind::Registry,
            _ if path.starts_with("/nar/") => Kind::Nar,
            _ if path.starts_with("/log/") => Kind::Log,
            _ if path.starts_with("/realisations/") => Kind::Realisation,
            _ if file.is_some_and(|f| f.ends_with(".narinfo")) => Kind::Narinfo,
            _ if file.is_some_and(|f| f.ends_with(".ls")) => Kind::Ls,
            _ => Kind::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::NixCacheInfo => "nix-cache-info",
            Kind::Narinfo => "narinfo",
            Kind::Nar => "nar",
            Kind::Ls => "ls",
            Kind::Log => "log",
            Kind::Realisation => "realisation",
            Kind::Registry => "registry",
            Kind::Grpc => "grpc",
            Kind::Healthz => "healthz",
            Kind::Metrics => "metrics",
            Kind::Other => "other",
        }
    }
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: Kind,
    method: Cow<'static, str>,
    /// The HTTP status, or for gRPC the status code's name (`Ok`, `NotFound`).
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    kind: Kind,
    method: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

/// The server's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    response_bytes: Family<KindLabels, Counter>,
    request_bytes: Family<KindLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(BUCKETS));
        let response_bytes = Family::<KindLabels, Counter>::default();
        let request_bytes = Family::<KindLabels, Counter>::default();
        registry.register("storefront_requests", "Requests answered, by kind, method and status", requests.clone());
        registry.register_with_unit(
            "storefront_request_duration",
            "Time from a request's arrival to its response headers",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register_with_unit(
            "storefront_response",
            "Response body bytes sent",
            Unit::Bytes,
            response_bytes.clone(),
        );
        registry.register_with_unit(
            "storefront_request_body",
            "Request body bytes received (uploads)",
            Unit::Bytes,
            request_bytes.clone(),
        );
        Arc::new(Metrics { registry, requests, durations, response_bytes, request_bytes })
    }

    /// `GET /metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        let metrics = self.clone();
        Router::new().route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], metrics.render()) }),
        )
    }

    fn render(&self) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn layer(self: &Arc<Self>) -> MetricsLayer {
        MetricsLayer(self.clone())
    }
}

/// Records every request passing through it in [`Metrics`].
#[derive(Clone)]
pub struct MetricsLayer(Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Recorded<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<Request<B>> for Recorded<S>
where
    S: tower::Service<Request<Body>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
    R: http_body::Body<Data = Bytes> + Unpin,
{
    type Response = Response<Counted<R>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let grpc = crate::serve::is_grpc(&req);
        let (kind, method) = if grpc {
            (Kind::Grpc, grpc_method(req.uri().path()))
        } else {
            (Kind::of(req.uri().path()), Cow::Borrowed(http_method(req.method())))
        };
        let uploaded = self.metrics.request_bytes.get_or_create_owned(&KindLabels { kind });
        let req = req.map(|body| Body::new(Counted { inner: body, bytes: uploaded, pending: None }));
        let response = self.inner.call(req);
        let metrics = self.metrics.clone();
        async move {
            let resp = response.await?;
            let grpc_status = grpc.then(|| grpc_status(resp.headers())).flatten();
            // tonic answers UNIMPLEMENTED for any path it has no route for.
            let method = if grpc_status == Some(tonic::Code::Unimplemented) { Cow::Borrowed("other") } else { method };
            metrics
                .durations
                .get_or_create(&MethodLabels { kind, method: method.clone() })
                .observe(started.elapsed().as_secs_f64());
            let labels = RequestLabels { kind, method, status: String::new() };
            let pending = match (grpc, grpc_status) {
                (false, _) => {
                    metrics
                        .requests
                        .get_or_create(&RequestLabels { status: resp.status().as_str().to_owned(), ..labels })
                        .inc();
                    None
                }
                (true, Some(code)) => {
                    metrics.requests.get_or_create(&RequestLabels { status: format!("{code:?}"), ..labels }).inc();
                    None
                }
                // The status comes in the trailers, after the body.
                (true, None) => Some(Pending { requests: metrics.requests.clone(), labels }),
            };
            let sent = metrics.response_bytes.get_or_create_owned(&KindLabels { kind });
            Ok(resp.map(|body| Counted { inner: body, bytes: sent, pending }))
        }
        .boxed()
    }
}

fn http_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `/snix.castore.v1.BlobService/Read` → `BlobService/Read` (the package
/// is left out: tvix and snix calls are the same calls).
fn grpc_method(path: &str) -> Cow<'static, str> {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) => Cow::Owned(format!("{}/{method}", service.rsplit('.').next().unwrap_or(service))),
        None => Cow::Borrowed("other"),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers.get("grpc-status").map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// A gRPC call not counted yet: its status comes in the trailers.
struct Pending {
    requests: Family<RequestLabels, Counter>,
    labels: RequestLabels,
}

impl Pending {
    fn finish(self, code: tonic::Code) {
        self.requests.get_or_create(&RequestLabels { status: format!("{code:?}"), ..self.labels }).inc();
    }
}

/// A body that counts the data bytes polled through it (so, for a
/// response, the bytes handed to the connection) and counts a pending gRPC
/// call when its trailers pass.
pub struct Counted<B> {
    inner: B,
    bytes: Counter,
    pending: Option<Pending>,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes.inc_by(data.len() as u64);
                }
                if let Some(trailers) = f.trailers_ref()
                    && let Some(pending) = this.pending.take()
                {
                    pending.finish(grpc_status(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            Some(Err(_)) | None => {
                if let Some(pending) = this.pending.take() {
                    pending.finish(tonic::Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    /// A gRPC call whose response was dropped before its trailers: the
    /// client went away.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;

    #[test]
    fn kinds_and_methods() {
        let cases = [
            ("/healthz", "healthz"),
            ("/metrics", "metrics"),
            ("/nix-cache-info", "nix-cache-info"),
            ("/0123456789abcdfghijklmnpqrsvwxyz.narinfo", "narinfo"),
            ("/0123456789abcdfghijklmnpqrsvwxyz.ls", "ls"),
            ("/nar/1b9p07z77phvv2hf6gm9f28syrj5sncpmh09rg3l5bd7pn0bdvda.nar.zst", "nar"),
            ("/log/abc-hello.drv", "log"),
            ("/realisations/sha256:abc!out.doi", "realisation"),
            ("/v2/", "registry"),
            ("/v2", "registry"),
            ("/v2x", "other"),
            ("/sub/x.narinfo", "other"),
            ("/", "other"),
        ];
        for (path, kind) in cases {
            assert_eq!(Kind::of(path).as_str(), kind, "{path}");
        }
        assert_eq!(grpc_method("/snix.castore.v1.BlobService/Read"), "BlobService/Read");
        assert_eq!(grpc_method("/tvix.store.v1.PathInfoService/Put"), "PathInfoService/Put");
        assert_eq!(grpc_method("/nonsense"), "other");
        assert_eq!(http_method(&Method::from_bytes(b"BREW").unwrap()), "other");
    }

    /// A response body's bytes, its status and latency show in the text;
    /// a gRPC call is counted with the status of its trailers.
    #[tokio::test]
    async fn requests_are_rendered() {
        use http_body_util::BodyExt;
        let metrics = Metrics::new();
        let app = tower::service_fn(|req: Request<Body>| async move {
            let resp = if crate::serve::is_grpc(&req) {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "5".parse().unwrap());
                let body = http_body_util::StreamBody::new(futures::stream::iter([
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"12345"))),
                    Ok(Frame::trailers(trailers)),
                ]));
                Response::new(Body::new(body))
            } else {
                Response::builder().status(404).body(Body::from("not here\n")).unwrap()
            };
            Ok::<_, std::convert::Infallible>(resp)
        });
        let svc = metrics.layer().layer(app);
        let get = Request::get("/abc.narinfo").body(Body::empty()).unwrap();
        let body = svc.clone().oneshot(get).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 9);
        let call = Request::post("/snix.castore.v1.BlobService/Stat")
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(Body::from("xyz"))
            .unwrap();
        let resp = svc.oneshot(call).await.unwrap();
        assert!(!metrics.render().contains("BlobService/Stat\",status"), "counted before its trailers");
        resp.into_body().collect().await.unwrap();

        let text = metrics.render();
        for line in [
            "storefront_requests_total{kind=\"narinfo\",method=\"GET\",status=\"404\"} 1",
            "storefront_requests_total{kind=\"grpc\",method=\"BlobService/Stat\",status=\"NotFound\"} 1",
            "storefront_response_bytes_total{kind=\"narinfo\"} 9",
            "storefront_response_bytes_total{kind=\"grpc\"} 5",
            "storefront_request_duration_seconds_count{kind=\"narinfo\",method=\"GET\"} 1",
            "storefront_request_duration_seconds_bucket{kind=\"grpc\",method=\"BlobService/Stat\",le=\"10\"} 1",
            "# TYPE storefront_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }
}
