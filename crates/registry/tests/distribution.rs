//! The OCI distribution API in-process, over memory services (and once over
//! the embedded redb engine): every endpoint, the flows clients use, and
//! every refusal with the spec's code and status. The same against real
//! clients (skopeo) runs in the storefront binary's tests.
use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use castore::{BlobService, kv::KvStore};
use registry::{Registry, RegistryConfig};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A registry over one set of services; `reopen` builds another registry
/// over the same ones (a restart, or another replica).
struct Fixture {
    router: Router,
    blobs: Arc<dyn BlobService>,
    meta: Arc<dyn KvStore>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn memory() -> Fixture {
        let blobs = castore::blob_service_from_url("memory:").unwrap();
        let meta: Arc<dyn KvStore> = Arc::new(castore::kv::MemoryStore::new());
        Fixture { router: router(blobs.clone(), meta.clone()), blobs, meta, _dir: None }
    }

    fn redb() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("castore.redb");
        let blobs = castore::blob_service_from_url(&format!("redb:{}", path.display())).unwrap();
        let meta: Arc<dyn KvStore> = Arc::new(castore::kv::EmbeddedStore::open(&path).unwrap());
        Fixture { router: router(blobs.clone(), meta.clone()), blobs, meta, _dir: Some(dir) }
    }

    fn reopen(&self) -> Router {
        router(self.blobs.clone(), self.meta.clone())
    }
}

fn router(blobs: Arc<dyn BlobService>, meta: Arc<dyn KvStore>) -> Router {
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = store::url::path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
    registry::router(Registry::new(RegistryConfig::default(), blobs, dirs, paths, meta))
}

async fn send(router: &Router, method: Method, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    router.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap()
}

async fn body(resp: Response) -> Bytes {
    axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()
}

fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} header: {resp:?}"))
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", testkit::hex(&Sha256::digest(data)))
}

/// Asserts an error answer: its status, JSON content type and spec code.
#[track_caller]
fn check_error(status: StatusCode, text: &[u8], headers: &http::HeaderMap, want: StatusCode, code: &str) {
    let text = String::from_utf8_lossy(text);
    assert_eq!(status, want, "expected {want} {code}, got {status}: {text}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert_eq!(v["errors"][0]["code"], code, "{text}");
    assert!(v["errors"][0]["message"].is_string(), "{text}");
}

async fn expect_error(resp: Response, want: StatusCode, code: &str) -> Value {
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = body(resp).await;
    check_error(status, &text, &headers, want, code);
    serde_json::from_slice(&text).unwrap()
}

/// Monolithic push (`POST ?digest=` with the body); the digest.
async fn push_blob(router: &Router, name: &str, data: &[u8]) -> String {
    let d = digest(data);
    let resp = send(router, Method::POST, &format!("/v2/{name}/blobs/uploads/?digest={d}"), &[], data.to_vec()).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", body(resp).await);
    d
}

async fn put_manifest(router: &Router, name: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Response {
    let uri = format!("/v2/{name}/manifests/{reference}");
    send(router, Method::PUT, &uri, &[("content-type", media_type)], bytes.to_vec()).await
}

async fn get(router: &Router, uri: &str) -> Response {
    send(router, Method::GET, uri, &[], Body::empty()).await
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    testkit::Rng::new(seed).bytes(len)
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

/// An image pushed to `name`: config and two layers; the manifest bytes.
async fn push_image(router: &Router, name: &str, seed: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed})).unwrap();
    let layers = vec![random(seed, 5000), random(seed + 1, 70_000)];
    push_blob(router, name, &config).await;
    for l in &layers {
        push_blob(router, name, l).await;
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut blobs = vec![config];
    blobs.extend(layers);
    (manifest, blobs)
}

#[tokio::test]
async fn base_endpoint() {
    let fx = Fixture::memory();
    let resp = get(&fx.router, "/v2/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0");
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert_eq!(body(resp).await, "{}");
    for uri in ["/v2/", "/v2"] {
        let resp = send(&fx.router, Method::HEAD, uri, &[], Body::empty()).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = send(&fx.router, Method::POST, "/v2/", &[], Body::empty()).await;
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
}

#[tokio::test]
async fn monolithic_uploads_and_blob_reads() {
    let fx = Fixture::memory();
    let data = random(1, 300_000);
    let d = digest(&data);

    // POST with the digest and the body: done in one request.
    let resp = send(&fx.router, Method::POST, &format!("/v2/a/b/blobs/uploads/?digest={d}"), &[], data.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/a/b/blobs/{d}"));
    assert_eq!(header(&resp, "docker-content-digest"), d);
    assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0");

    // POST, then PUT with the whole body.
    let other = random(2, 1000);
    let od = digest(&other);
    let resp = send(&fx.router, Method::POST, "/v2/a/b/blobs/uploads/", &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").to_owned();
    assert!(location.starts_with("/v2/a/b/blobs/uploads/"), "{location}");
    assert_eq!(header(&resp, "range"), "0-0");
    assert_eq!(location.rsplit('/').next().unwrap(), header(&resp, "docker-upload-uuid"));
    let resp = send(&fx.router, Method::PUT, &format!("{location}?digest={od}"), &[], other.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/a/b/blobs/{od}"));
    assert_eq!(body(get(&fx.router, &format!("/v2/a/b/blobs/{od}")).await).await, other);

    // POST with a digest but no body at all starts a session.
    let resp = send(&fx.router, Method::POST, &format!("/v2/a/b/blobs/uploads/?digest={od}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").to_owned();
    let resp = send(&fx.router, Method::PUT, &format!("{location}?digest={od}"), &[], other.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // GET: the exact bytes and headers.
    let resp = get(&fx.router, &format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), data.len().to_string());
    assert_eq!(header(&resp, "content-type"), "application/octet-stream");
    assert_eq!(header(&resp, "docker-content-digest"), d);
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    assert_eq!(body(resp).await, data);

    // HEAD: the same headers, no body.
    let resp = send(&fx.router, Method::HEAD, &format!("/v2/a/b/blobs/{d}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), data.len().to_string());
    assert_eq!(header(&resp, "docker-content-digest"), d);
    assert!(body(resp).await.is_empty());

    // Ranges.
    let uri = format!("/v2/a/b/blobs/{d}");
    let resp = send(&fx.router, Method::GET, &uri, &[("range", "bytes=1000-1999")], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, "content-range"), format!("bytes 1000-1999/{}", data.len()));
    assert_eq!(header(&resp, "content-length"), "1000");
    assert_eq!(body(resp).await, data[1000..2000]);
    let resp = send(&fx.router, Method::GET, &uri, &[("range", "bytes=-10")], Body::empty()).await;
    assert_eq!(body(resp).await, data[data.len() - 10..]);
    let resp = send(&fx.router, Method::GET, &uri, &[("range", "bytes=299990-")], Body::empty()).await;
    assert_eq!(body(resp).await, data[299_990..]);
    let resp = send(&fx.router, Method::GET, &uri, &[("range", "bytes=300000-")], Body::empty()).await;
    assert_eq!(header(&resp, "content-range"), "bytes */300000");
    expect_error(resp, StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID").await;

    // The blob is in a/b only; bad and foreign digests.
    expect_error(get(&fx.router, &format!("/v2/a/blobs/{d}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let missing = digest(b"missing");
    expect_error(get(&fx.router, &format!("/v2/a/b/blobs/{missing}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        .await;
    let resp = send(&fx.router, Method::HEAD, &format!("/v2/a/b/blobs/{missing}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    expect_error(get(&fx.router, "/v2/a/b/blobs/sha256:nothex").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    expect_error(get(&fx.router, &format!("/v2/a/b/blobs/{sha512}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        .await;

    // The empty blob.
    let e = push_blob(&fx.router, "a/b", b"").await;
    let resp = get(&fx.router, &format!("/v2/a/b/blobs/{e}")).await;
    assert_eq!(header(&resp, "content-length"), "0");
    assert!(body(resp).await.is_empty());
}

#[tokio::test]
async fn chunked_upload_with_status_and_out_of_order_chunks() {
    let fx = Fixture::memory();
    // Larger than castore's chunks, so parts are multi-chunk blobs too.
    let data = random(3, 3_000_000);
    let d = digest(&data);
    let resp =
        send(&fx.router, Method::POST, "/v2/chunky/blobs/uploads/", &[("content-length", "0")], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").to_owned();

    let patch = |range: Option<String>, chunk: Vec<u8>| {
        let router = fx.router.clone();
        let location = location.clone();
        async move {
            let mut headers = vec![("content-type", "application/octet-stream".to_owned())];
            if let Some(r) = range {
                headers.push(("content-range", r));
            }
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(&router, Method::PATCH, &location, &headers, chunk).await
        }
    };

    // Out of order before anything arrived.
    let resp = patch(Some("1000-1999".into()), data[1000..2000].to_vec()).await;
    assert_eq!(header(&resp, "range"), "0-0");
    assert_eq!(header(&resp, "location"), location);
    expect_error(resp, StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID").await;

    let resp = patch(Some("0-999999".into()), data[..1_000_000].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-999999");
    assert_eq!(header(&resp, "location"), location);

    // Status.
    let resp = get(&fx.router, &location).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range"), "0-999999");
    assert_eq!(header(&resp, "location"), location);

    // Skipping ahead, and going back, are both refused with the real state.
    let resp = patch(Some("2000000-2999999".into()), data[2_000_000..].to_vec()).await;
    assert_eq!(header(&resp, "range"), "0-999999");
    expect_error(resp, StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID").await;
    let resp = patch(Some("0-999".into()), data[..1000].to_vec()).await;
    expect_error(resp, StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID").await;
    let resp = patch(Some("garbage".into()), data[..1000].to_vec()).await;
    expect_error(resp, StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID").await;
    // A Content-Range that does not match the body adds nothing.
    let resp = patch(Some("1000000-1000009".into()), data[1_000_000..1_000_005].to_vec()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;

    // A streamed chunk (no Content-Range) appends.
    let resp = patch(None, data[1_000_000..2_000_000].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-1999999");

    // The final chunk with the PUT.
    let resp = send(
        &fx.router,
        Method::PUT,
        &format!("{location}?digest={d}"),
        &[("content-range", "2000000-2999999")],
        data[2_000_000..].to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", body(resp).await);
    assert_eq!(header(&resp, "docker-content-digest"), d);

    let resp = get(&fx.router, &format!("/v2/chunky/blobs/{d}")).await;
    assert_eq!(header(&resp, "content-length"), "3000000");
    assert!(body(resp).await == data, "the chunked blob reads back differently");
    // A range across the chunk boundaries.
    let uri = format!("/v2/chunky/blobs/{d}");
    let resp = send(&fx.router, Method::GET, &uri, &[("range", "bytes=999990-2000009")], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(body(resp).await == data[999_990..2_000_010]);

    // The session is over.
    expect_error(get(&fx.router, &location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = patch(None, b"more".to_vec()).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

/// A session lives in the metadata engine: another registry over the same
/// services (a restart, another replica) carries it on.
async fn resumed_session(fx: Fixture) {
    let data = random(4, 200_000);
    let d = digest(&data);
    let resp = send(&fx.router, Method::POST, "/v2/r/blobs/uploads/", &[], Body::empty()).await;
    let location = header(&resp, "location").to_owned();
    let resp =
        send(&fx.router, Method::PATCH, &location, &[("content-range", "0-99999")], data[..100_000].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let other = fx.reopen();
    let resp = get(&other, &location).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range"), "0-99999");
    // The session belongs to its repository.
    let foreign = location.replace("/v2/r/", "/v2/s/");
    expect_error(get(&other, &foreign).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp =
        send(&other, Method::PATCH, &location, &[("content-range", "100000-199999")], data[100_000..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(&fx.router, Method::PUT, &format!("{location}?digest={d}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(body(get(&other, &format!("/v2/r/blobs/{d}")).await).await == data);
}

#[tokio::test]
async fn resumed_session_memory() {
    resumed_session(Fixture::memory()).await;
}

#[tokio::test]
async fn resumed_session_redb() {
    resumed_session(Fixture::redb()).await;
}

/// Two chunks for the same place in one session: one goes in, the other is
/// refused with the session's real state (the session record is only ever
/// changed by compare-and-swap).
#[tokio::test]
async fn racing_chunks() {
    let fx = Fixture::memory();
    for round in 0..5 {
        let resp = send(&fx.router, Method::POST, "/v2/race/blobs/uploads/", &[], Body::empty()).await;
        let location = header(&resp, "location").to_owned();
        let a = random(100 + round, 400_000);
        let b = random(200 + round, 300_000);
        let (ra, rb) = tokio::join!(
            send(&fx.router, Method::PATCH, &location, &[("content-range", "0-399999")], a.clone()),
            send(&fx.router, Method::PATCH, &location, &[("content-range", "0-299999")], b.clone()),
        );
        let (won, lost, data) = match (ra.status(), rb.status()) {
            (StatusCode::ACCEPTED, StatusCode::RANGE_NOT_SATISFIABLE) => (ra, rb, a),
            (StatusCode::RANGE_NOT_SATISFIABLE, StatusCode::ACCEPTED) => (rb, ra, b),
            other => panic!("expected one chunk in and one refused, got {other:?}"),
        };
        let range = format!("0-{}", data.len() - 1);
        assert_eq!(header(&won, "range"), range);
        assert_eq!(header(&lost, "range"), range);
        let resp =
            send(&fx.router, Method::PUT, &format!("{location}?digest={}", digest(&data)), &[], Body::empty()).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(body(get(&fx.router, &format!("/v2/race/blobs/{}", digest(&data))).await).await == data);
    }
}

#[tokio::test]
async fn cancelled_uploads_and_missing_digests() {
    let fx = Fixture::memory();
    let resp = send(&fx.router, Method::POST, "/v2/c/blobs/uploads/", &[], Body::empty()).await;
    let location = header(&resp, "location").to_owned();
    send(&fx.router, Method::PATCH, &location, &[], b"abc".to_vec()).await;
    // Finishing needs a digest.
    let resp = send(&fx.router, Method::PUT, &location, &[], Body::empty()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let resp = send(&fx.router, Method::DELETE, &location, &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_error(get(&fx.router, &location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = send(&fx.router, Method::DELETE, &location, &[], Body::empty()).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = get(&fx.router, "/v2/c/blobs/uploads/not-an-id!").await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let fx = Fixture::memory();
    let data = random(5, 50_000);
    let right = digest(&data);
    let wrong = digest(b"something else");

    let resp = send(&fx.router, Method::POST, &format!("/v2/m/blobs/uploads/?digest={wrong}"), &[], data.clone()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    let resp = send(&fx.router, Method::POST, "/v2/m/blobs/uploads/", &[], Body::empty()).await;
    let location = header(&resp, "location").to_owned();
    send(&fx.router, Method::PATCH, &location, &[], data[..20_000].to_vec()).await;
    send(&fx.router, Method::PATCH, &location, &[], data[20_000..].to_vec()).await;
    let resp = send(&fx.router, Method::PUT, &format!("{location}?digest={wrong}"), &[], Body::empty()).await;
    let v = expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(v["errors"][0]["detail"]["digest"], wrong);
    let resp = send(&fx.router, Method::PUT, "/v2/m/blobs/uploads/x?digest=sha256:123", &[], Body::empty()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    for d in [&right, &wrong] {
        expect_error(get(&fx.router, &format!("/v2/m/blobs/{d}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    }
    let catalog: Value = serde_json::from_slice(&body(get(&fx.router, "/v2/_catalog").await).await).unwrap();
    assert_eq!(catalog["repositories"], json!([]), "a failed upload creates no repository");

    // The session is still there: finishing with the right digest works.
    let resp = send(&fx.router, Method::PUT, &format!("{location}?digest={right}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(body(get(&fx.router, &format!("/v2/m/blobs/{right}")).await).await == data);
}

#[tokio::test]
async fn cross_repository_mounts() {
    let fx = Fixture::memory();
    let data = random(6, 10_000);
    let d = push_blob(&fx.router, "src", &data).await;

    let resp =
        send(&fx.router, Method::POST, &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/dst/blobs/{d}"));
    assert_eq!(header(&resp, "docker-content-digest"), d);
    assert!(body(get(&fx.router, &format!("/v2/dst/blobs/{d}")).await).await == data);

    // From a repository without it, or of an unknown blob: a new session.
    for query in
        [format!("mount={d}&from=elsewhere"), format!("mount={}&from=src", digest(b"nope")), "mount=bad".into()]
    {
        let resp =
            send(&fx.router, Method::POST, &format!("/v2/dst2/blobs/uploads/?{query}"), &[], Body::empty()).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{query}");
        assert!(header(&resp, "location").starts_with("/v2/dst2/blobs/uploads/"));
    }
    expect_error(get(&fx.router, &format!("/v2/dst2/blobs/{d}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    // Without `from`: any blob this registry holds.
    let resp = send(&fx.router, Method::POST, &format!("/v2/dst3/blobs/uploads/?mount={d}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn manifests_push_pull_and_heads() {
    let fx = Fixture::memory();
    let (manifest, blobs) = push_image(&fx.router, "img/app", 10).await;
    let md = digest(&manifest);

    let resp = put_manifest(&fx.router, "img/app", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", body(resp).await);
    assert_eq!(header(&resp, "location"), format!("/v2/img/app/manifests/{md}"));
    assert_eq!(header(&resp, "docker-content-digest"), md);
    assert!(resp.headers().get("oci-subject").is_none());

    for reference in ["v1", md.as_str()] {
        let resp = get(&fx.router, &format!("/v2/img/app/manifests/{reference}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&resp, "docker-content-digest"), md);
        assert_eq!(header(&resp, "content-length"), manifest.len().to_string());
        assert_eq!(body(resp).await, manifest);
        // An Accept that excludes it still gets it.
        let resp = send(
            &fx.router,
            Method::HEAD,
            &format!("/v2/img/app/manifests/{reference}"),
            &[("accept", DOCKER_MANIFEST)],
            Body::empty(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&resp, "content-length"), manifest.len().to_string());
        assert_eq!(header(&resp, "docker-content-digest"), md);
        assert!(body(resp).await.is_empty());
    }
    // By digest, and a second tag for the same bytes.
    assert_eq!(put_manifest(&fx.router, "img/app", &md, OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);
    assert_eq!(
        put_manifest(&fx.router, "img/app", "latest", OCI_MANIFEST, &manifest).await.status(),
        StatusCode::CREATED
    );

    // Unknown tags, digests and repositories.
    let resp = get(&fx.router, "/v2/img/app/manifests/nope").await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let resp = get(&fx.router, &format!("/v2/img/app/manifests/{}", digest(b"x"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    expect_error(get(&fx.router, "/v2/img/other/manifests/v1").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    // The manifest is not in another repository, even with its blobs mounted there.
    for b in &blobs {
        let uri = format!("/v2/img/copy/blobs/uploads/?mount={}&from=img/app", digest(b));
        assert_eq!(send(&fx.router, Method::POST, &uri, &[], Body::empty()).await.status(), StatusCode::CREATED);
    }
    let resp = get(&fx.router, &format!("/v2/img/copy/manifests/{md}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(put_manifest(&fx.router, "img/copy", "v1", OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);

    // A manifest pushed as a Content-Type-less upload is typed by its field.
    let resp = send(&fx.router, Method::PUT, "/v2/img/app/manifests/untyped", &[], manifest.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = get(&fx.router, "/v2/img/app/manifests/untyped").await;
    assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
}

#[tokio::test]
async fn docker_schema2_indexes_and_foreign_layers() {
    let fx = Fixture::memory();
    let config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let layer = random(20, 3000);
    push_blob(&fx.router, "d", &config).await;
    push_blob(&fx.router, "d", &layer).await;
    let foreign = json!({
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": digest(b"not here"), "size": 8, "urls": ["https://example.invalid/layer"]
    });
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [foreign, descriptor(DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    let resp = put_manifest(&fx.router, "d", "arm", DOCKER_MANIFEST, &docker).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", body(resp).await);
    let resp = get(&fx.router, "/v2/d/manifests/arm").await;
    assert_eq!(header(&resp, "content-type"), DOCKER_MANIFEST);

    let (oci, _) = push_image(&fx.router, "d", 21).await;
    assert_eq!(put_manifest(&fx.router, "d", &digest(&oci), OCI_MANIFEST, &oci).await.status(), StatusCode::CREATED);

    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest(&docker), "size": docker.len(),
                       "platform": {"architecture": "arm64", "os": "linux"}}],
    }))
    .unwrap();
    let resp = put_manifest(&fx.router, "d", "multi", DOCKER_LIST, &list).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", body(resp).await);
    let resp = get(&fx.router, "/v2/d/manifests/multi").await;
    assert_eq!(header(&resp, "content-type"), DOCKER_LIST);
    assert_eq!(body(resp).await, list);

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &oci), descriptor(DOCKER_MANIFEST, &docker)],
    }))
    .unwrap();
    assert_eq!(put_manifest(&fx.router, "d", "index", OCI_INDEX, &index).await.status(), StatusCode::CREATED);

    // An index naming a manifest this repository lacks.
    let absent = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &oci), descriptor(OCI_MANIFEST, b"{}")],
    }))
    .unwrap();
    let resp = put_manifest(&fx.router, "d", "broken", OCI_INDEX, &absent).await;
    let v = expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(v["errors"][0]["detail"]["digest"], digest(b"{}"));
    expect_error(get(&fx.router, "/v2/d/manifests/broken").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // Wrong child size.
    let mut wrong = descriptor(OCI_MANIFEST, &oci);
    wrong["size"] = json!(oci.len() + 1);
    let bad = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [wrong]})).unwrap();
    expect_error(
        put_manifest(&fx.router, "d", "bad", OCI_INDEX, &bad).await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    )
    .await;
}

#[tokio::test]
async fn invalid_manifests_store_nothing() {
    let fx = Fixture::memory();
    let (manifest, blobs) = push_image(&fx.router, "v", 30).await;
    let good: Value = serde_json::from_slice(&manifest).unwrap();
    let tags = || async {
        let v: Value = serde_json::from_slice(&body(get(&fx.router, "/v2/v/tags/list").await).await).unwrap();
        v["tags"].clone()
    };

    // Each refused push, under a fresh tag: code, then nothing stored.
    let mut missing_layer = good.clone();
    missing_layer["layers"][1] = descriptor(OCI_LAYER, b"never pushed");
    let mut missing_config = good.clone();
    missing_config["config"] = descriptor(OCI_CONFIG, b"{\"never\":1}");
    let mut wrong_size = good.clone();
    wrong_size["layers"][0]["size"] = json!(blobs[1].len() - 1);
    let mut bad_digest = good.clone();
    bad_digest["layers"][0]["digest"] = json!("sha256:zz");
    let mut no_config = good.clone();
    no_config.as_object_mut().unwrap().remove("config");
    let mut schema1 = good.clone();
    schema1["schemaVersion"] = json!(1);
    let mut index_type = good.clone();
    index_type["mediaType"] = json!(OCI_INDEX);
    let mut bad_size_type = good.clone();
    bad_size_type["layers"][0]["size"] = json!("ten");
    let cases: Vec<(&str, Vec<u8>, &str, StatusCode, &str)> = vec![
        (
            "missing-layer",
            serde_json::to_vec(&missing_layer).unwrap(),
            OCI_MANIFEST,
            StatusCode::NOT_FOUND,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "missing-config",
            serde_json::to_vec(&missing_config).unwrap(),
            OCI_MANIFEST,
            StatusCode::NOT_FOUND,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "wrong-size",
            serde_json::to_vec(&wrong_size).unwrap(),
            OCI_MANIFEST,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "bad-digest",
            serde_json::to_vec(&bad_digest).unwrap(),
            OCI_MANIFEST,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "no-config",
            serde_json::to_vec(&no_config).unwrap(),
            OCI_MANIFEST,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        ("schema1", serde_json::to_vec(&schema1).unwrap(), OCI_MANIFEST, StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        (
            "type-mismatch",
            serde_json::to_vec(&index_type).unwrap(),
            OCI_MANIFEST,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "size-type",
            serde_json::to_vec(&bad_size_type).unwrap(),
            OCI_MANIFEST,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "malformed",
            b"{\"schemaVersion\": 2, \"config\": ".to_vec(),
            OCI_MANIFEST,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        ("not-json", b"hello".to_vec(), OCI_MANIFEST, StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        (
            "unknown-type",
            manifest.clone(),
            "application/vnd.example.thing+json",
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "schema1-type",
            manifest.clone(),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
    ];
    for (tag, bytes, media_type, status, code) in cases {
        let resp = put_manifest(&fx.router, "v", tag, media_type, &bytes).await;
        let v = expect_error(resp, status, code).await;
        if code == "MANIFEST_BLOB_UNKNOWN" {
            assert!(v["errors"][0]["detail"]["digest"].as_str().unwrap().starts_with("sha256:"), "{tag}: {v}");
        }
        expect_error(
            get(&fx.router, &format!("/v2/v/manifests/{tag}")).await,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        )
        .await;
        let by_digest = get(&fx.router, &format!("/v2/v/manifests/{}", digest(&bytes))).await;
        assert_eq!(by_digest.status(), StatusCode::NOT_FOUND, "{tag}");
    }
    assert_eq!(tags().await, json!([]));

    // By digest: the digest must be the body's.
    let resp = put_manifest(&fx.router, "v", &digest(b"other"), OCI_MANIFEST, &manifest).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let resp = put_manifest(&fx.router, "v", &format!("sha512:{}", "ab".repeat(64)), OCI_MANIFEST, &manifest).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    expect_error(
        get(&fx.router, &format!("/v2/v/manifests/{}", digest(&manifest))).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // An invalid tag.
    let resp = put_manifest(&fx.router, "v", ".hidden", OCI_MANIFEST, &manifest).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // Too large.
    let mut huge = good.clone();
    huge["annotations"] = json!({ "pad": "x".repeat(5 << 20) });
    let resp = put_manifest(&fx.router, "v", "huge", OCI_MANIFEST, &serde_json::to_vec(&huge).unwrap()).await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    assert_eq!(tags().await, json!([]));

    // And the good one still goes in.
    assert_eq!(put_manifest(&fx.router, "v", "ok", OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);
    assert_eq!(tags().await, json!(["ok"]));
}

#[tokio::test]
async fn deletes() {
    let fx = Fixture::memory();
    let (manifest, blobs) = push_image(&fx.router, "del", 40).await;
    let md = digest(&manifest);
    for tag in ["a", "b"] {
        assert_eq!(put_manifest(&fx.router, "del", tag, OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);
    }
    let (other, _) = push_image(&fx.router, "del", 41).await;
    assert_eq!(put_manifest(&fx.router, "del", "c", OCI_MANIFEST, &other).await.status(), StatusCode::CREATED);

    // By tag: only the tag goes.
    let resp = send(&fx.router, Method::DELETE, "/v2/del/manifests/a", &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    expect_error(get(&fx.router, "/v2/del/manifests/a").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(get(&fx.router, "/v2/del/manifests/b").await.status(), StatusCode::OK);
    let resp = send(&fx.router, Method::DELETE, "/v2/del/manifests/a", &[], Body::empty()).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // By digest: the manifest and every tag on it.
    let resp = send(&fx.router, Method::DELETE, &format!("/v2/del/manifests/{md}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    expect_error(get(&fx.router, &format!("/v2/del/manifests/{md}")).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        .await;
    expect_error(get(&fx.router, "/v2/del/manifests/b").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(get(&fx.router, "/v2/del/manifests/c").await.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&body(get(&fx.router, "/v2/del/tags/list").await).await).unwrap();
    assert_eq!(v["tags"], json!(["c"]));
    let resp = send(&fx.router, Method::DELETE, &format!("/v2/del/manifests/{md}"), &[], Body::empty()).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // Blobs leave the repository.
    let bd = digest(&blobs[1]);
    let resp = send(&fx.router, Method::DELETE, &format!("/v2/del/blobs/{bd}"), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    expect_error(get(&fx.router, &format!("/v2/del/blobs/{bd}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let resp = send(&fx.router, Method::DELETE, &format!("/v2/del/blobs/{bd}"), &[], Body::empty()).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    // … so the manifest that needs it cannot be pushed again until it is back.
    let resp = put_manifest(&fx.router, "del", "again", OCI_MANIFEST, &manifest).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_BLOB_UNKNOWN").await;
    push_blob(&fx.router, "del", &blobs[1]).await;
    assert_eq!(put_manifest(&fx.router, "del", "again", OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);
}

async fn list_json(router: &Router, uri: &str) -> (Value, Option<String>) {
    let resp = get(router, uri).await;
    assert_eq!(resp.status(), StatusCode::OK, "{uri}");
    assert_eq!(header(&resp, "content-type"), "application/json");
    let link = resp.headers().get("link").map(|v| v.to_str().unwrap().to_owned());
    (serde_json::from_slice(&body(resp).await).unwrap(), link)
}

/// The URL of a `Link: <url>; rel="next"` header.
fn next(link: &str) -> String {
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    link.split('>').next().unwrap().trim_start_matches('<').to_owned()
}

async fn tags_and_catalog_pagination(fx: Fixture) {
    let (manifest, _) = push_image(&fx.router, "t/repo", 50).await;
    let tags = ["v2", "latest", "v1.0", "A", "v1", "_x", "v10"];
    for tag in tags {
        assert_eq!(
            put_manifest(&fx.router, "t/repo", tag, OCI_MANIFEST, &manifest).await.status(),
            StatusCode::CREATED
        );
    }
    let mut sorted = tags.to_vec();
    sorted.sort();

    let (all, link) = list_json(&fx.router, "/v2/t/repo/tags/list").await;
    assert_eq!(all, json!({ "name": "t/repo", "tags": sorted }));
    assert!(link.is_none());

    // Pages of 3, following Link.
    let mut uri = "/v2/t/repo/tags/list?n=3".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (page, link) = list_json(&fx.router, &uri).await;
        let got: Vec<String> = serde_json::from_value(page["tags"].clone()).unwrap();
        assert!(got.len() <= 3);
        seen.extend(got);
        pages += 1;
        match link {
            Some(l) => uri = next(&l),
            None => break,
        }
    }
    assert_eq!(seen, sorted);
    assert_eq!(pages, 3);
    let (page, _) = list_json(&fx.router, "/v2/t/repo/tags/list?n=2&last=v1").await;
    assert_eq!(page["tags"], json!(["v1.0", "v10"]));
    let (page, _) = list_json(&fx.router, "/v2/t/repo/tags/list?last=v10").await;
    assert_eq!(page["tags"], json!(["v2"]));
    let (page, link) = list_json(&fx.router, "/v2/t/repo/tags/list?n=0").await;
    assert_eq!(page["tags"], json!([]));
    assert!(link.is_none());
    let resp = get(&fx.router, "/v2/t/repo/tags/list?n=-1").await;
    expect_error(resp, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    expect_error(get(&fx.router, "/v2/t/none/tags/list").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    // A repository with blobs but no tags lists none.
    push_blob(&fx.router, "t/blobs-only", b"x").await;
    let (page, _) = list_json(&fx.router, "/v2/t/blobs-only/tags/list").await;
    assert_eq!(page["tags"], json!([]));

    // The catalog.
    push_blob(&fx.router, "a", b"x").await;
    push_blob(&fx.router, "z/y", b"x").await;
    let (cat, link) = list_json(&fx.router, "/v2/_catalog").await;
    assert_eq!(cat["repositories"], json!(["a", "t/blobs-only", "t/repo", "z/y"]));
    assert!(link.is_none());
    let (cat, link) = list_json(&fx.router, "/v2/_catalog?n=2").await;
    assert_eq!(cat["repositories"], json!(["a", "t/blobs-only"]));
    let (cat, link) = list_json(&fx.router, &next(&link.unwrap())).await;
    assert_eq!(cat["repositories"], json!(["t/repo", "z/y"]));
    assert!(link.is_none());
}

#[tokio::test]
async fn tags_and_catalog_pagination_memory() {
    tags_and_catalog_pagination(Fixture::memory()).await;
}

#[tokio::test]
async fn tags_and_catalog_pagination_redb() {
    tags_and_catalog_pagination(Fixture::redb()).await;
}

#[tokio::test]
async fn referrers() {
    let fx = Fixture::memory();
    let (manifest, _) = push_image(&fx.router, "ref", 60).await;
    let subject = digest(&manifest);
    assert_eq!(put_manifest(&fx.router, "ref", "v1", OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);

    let empty = b"{}".to_vec();
    push_blob(&fx.router, "ref", &empty).await;
    let sig_config = br#"{"sig":true}"#.to_vec();
    push_blob(&fx.router, "ref", &sig_config).await;
    let subject_descriptor = descriptor(OCI_MANIFEST, &manifest);
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sbom",
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
        "layers": [descriptor("application/vnd.oci.empty.v1+json", &empty)],
        "subject": subject_descriptor,
        "annotations": {"org.example.kind": "sbom"},
    }))
    .unwrap();
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.example.sig", &sig_config),
        "layers": [],
        "subject": subject_descriptor,
    }))
    .unwrap();
    for m in [&sbom, &sig] {
        let resp = put_manifest(&fx.router, "ref", &digest(m), OCI_MANIFEST, m).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", body(resp).await);
        assert_eq!(header(&resp, "oci-subject"), subject);
    }

    let resp = get(&fx.router, &format!("/v2/ref/referrers/{subject}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), OCI_INDEX);
    assert!(resp.headers().get("oci-filters-applied").is_none());
    let index: Value = serde_json::from_slice(&body(resp).await).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let mut listed = index["manifests"].as_array().unwrap().clone();
    listed.sort_by_key(|d| d["artifactType"].as_str().unwrap().to_owned());
    assert_eq!(
        listed,
        vec![
            json!({"mediaType": OCI_MANIFEST, "digest": digest(&sbom), "size": sbom.len(),
                   "artifactType": "application/vnd.example.sbom",
                   "annotations": {"org.example.kind": "sbom"}}),
            json!({"mediaType": OCI_MANIFEST, "digest": digest(&sig), "size": sig.len(),
                   "artifactType": "application/vnd.example.sig"}),
        ]
    );

    let resp = get(&fx.router, &format!("/v2/ref/referrers/{subject}?artifactType=application/vnd.example.sbom")).await;
    assert_eq!(header(&resp, "oci-filters-applied"), "artifactType");
    let index: Value = serde_json::from_slice(&body(resp).await).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], digest(&sbom));

    // Other repositories and subjects have none; a bad digest is 400.
    for uri in [format!("/v2/other/referrers/{subject}"), format!("/v2/ref/referrers/{}", digest(b"x"))] {
        let resp = get(&fx.router, &uri).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let index: Value = serde_json::from_slice(&body(resp).await).unwrap();
        assert_eq!(index["manifests"], json!([]));
    }
    expect_error(get(&fx.router, "/v2/ref/referrers/sha256:zz").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    // A subject need not exist; a deleted referrer is no longer listed.
    let dangling = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.example.sig", &sig_config), "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest(b"absent"), "size": 6},
    }))
    .unwrap();
    let resp = put_manifest(&fx.router, "ref", "dangling", OCI_MANIFEST, &dangling).await;
    assert_eq!(header(&resp, "oci-subject"), digest(b"absent"));
    let resp =
        send(&fx.router, Method::DELETE, &format!("/v2/ref/manifests/{}", digest(&sig)), &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let index: Value =
        serde_json::from_slice(&body(get(&fx.router, &format!("/v2/ref/referrers/{subject}")).await).await).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], digest(&sbom));
}

#[tokio::test]
async fn names_methods_and_endpoints() {
    let fx = Fixture::memory();
    for uri in ["/v2/UPPER/tags/list", "/v2/a//b/tags/list", "/v2/-a/manifests/v1", "/v2/a_-b/blobs/uploads/"] {
        let resp = send(&fx.router, Method::GET, uri, &[], Body::empty()).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    }
    let resp = send(&fx.router, Method::POST, "/v2/Bad/blobs/uploads/", &[], Body::empty()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    for (method, uri) in [
        (Method::POST, "/v2/a/manifests/v1"),
        (Method::PUT, "/v2/a/tags/list"),
        (Method::PATCH, "/v2/a/blobs/uploads/"),
        (Method::POST, "/v2/_catalog"),
        (Method::PUT, &format!("/v2/a/blobs/{}", digest(b""))),
    ] {
        let resp = send(&fx.router, method.clone(), uri, &[], Body::empty()).await;
        assert!(resp.headers().get("allow").is_some(), "{method} {uri}");
        expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    }
    let resp = get(&fx.router, "/v2/a/unknown/x").await;
    assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0");
    expect_error(resp, StatusCode::NOT_FOUND, "UNSUPPORTED").await;
    // Percent-encoded paths are decoded.
    let d = push_blob(&fx.router, "enc", b"hello").await;
    let resp = get(&fx.router, &format!("/v2/enc/blobs/{}", d.replace(':', "%3A"))).await;
    assert_eq!(body(resp).await, "hello");
}
