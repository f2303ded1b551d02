//! `/metrics` of the real server: Prometheus text that counts what was
//! asked, how it was answered, and the bytes that went each way.
mod common;

use std::collections::BTreeMap;

use castore::B3Digest;
use common::*;

/// One sample: metric name and labels.
type Key = (String, BTreeMap<String, String>);

/// Parses the Prometheus text format strictly enough to catch a malformed
/// line: `# HELP`/`# TYPE` comments and `name{k="v",…} value` samples.
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(comment.starts_with("HELP ") || comment.starts_with("TYPE "), "odd comment {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let labels = inner
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(samples.insert((name.to_owned(), labels), value).is_none(), "sample twice: {line:?}");
    }
    samples
}

/// `/metrics` parsed, after checking its content type.
fn scrape(server: &Server, headers: &[(&str, &str)]) -> BTreeMap<Key, f64> {
    let resp = request(server.addr, "GET", "/metrics", headers, b"");
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type:?}");
    parse(&resp.text())
}

fn sample(samples: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
}

/// How much a sample grew between two scrapes.
fn grew(before: &BTreeMap<Key, f64>, after: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(after, name, labels) - sample(before, name, labels)
}

const REQUESTS: &str = "storefront_requests_total";
const SENT: &str = "storefront_response_bytes_total";
const RECEIVED: &str = "storefront_request_body_bytes_total";
const CACHE_INFO: &[u8] = b"StoreDir: /nix/store\nWantMassQuery: 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_kinds_statuses_and_bytes() {
    let server = Server::start();
    let before = scrape(&server, &[]);

    let addr = server.addr;
    let (healthz, narinfo, upload) = tokio::task::spawn_blocking(move || {
        let healthz = request(addr, "GET", "/healthz", &[], b"");
        let narinfo = request(addr, "GET", "/0123456789abcdfghijklmnpqrsvwxyz.narinfo", &[], b"");
        let upload = request(addr, "PUT", "/nix-cache-info", &[], CACHE_INFO);
        (healthz, narinfo, upload)
    })
    .await
    .unwrap();
    assert_eq!(healthz.status, 200);
    assert_eq!(narinfo.status, 404, "{}", narinfo.text());
    assert!(upload.status < 300, "PUT /nix-cache-info: {} {}", upload.status, upload.text());
    let blobs = castore::blob_service_from_url(&server.url()).unwrap();
    assert_eq!(blobs.stat(&B3Digest::of(b"never stored")).await.unwrap(), None);
    let blob = Rng::new(7).bytes(100_000);
    let digest = blobs.put_bytes(blob.clone().into(), None).await.unwrap();
    assert!(read_all(&*blobs, &digest).await == blob);

    let after = scrape(&server, &[]);
    let req = |kind, method, status| [("kind", kind), ("method", method), ("status", status)];
    assert_eq!(grew(&before, &after, REQUESTS, &req("healthz", "GET", "200")), 1.0);
    assert_eq!(grew(&before, &after, REQUESTS, &req("narinfo", "GET", "404")), 1.0);
    let upload_status = upload.status.to_string();
    assert_eq!(grew(&before, &after, REQUESTS, &req("nix-cache-info", "PUT", &upload_status)), 1.0);
    assert_eq!(grew(&before, &after, REQUESTS, &req("grpc", "BlobService/Stat", "NotFound")), 1.0);
    assert!(sample(&after, REQUESTS, &req("metrics", "GET", "200")) >= 1.0, "the first scrape is counted");

    let kind = |k| [("kind", k)];
    assert!(grew(&before, &after, SENT, &kind("healthz")) >= healthz.body.len() as f64);
    assert!(!narinfo.body.is_empty(), "a 404 says why");
    assert!(grew(&before, &after, SENT, &kind("narinfo")) >= narinfo.body.len() as f64);
    assert!(grew(&before, &after, SENT, &kind("grpc")) >= blob.len() as f64, "the blob read over gRPC");
    assert!(grew(&before, &after, RECEIVED, &kind("grpc")) >= blob.len() as f64, "the blob put over gRPC");
    assert_eq!(grew(&before, &after, REQUESTS, &req("grpc", "BlobService/Put", "Ok")), 1.0);
    assert!(sample(&after, SENT, &kind("metrics")) > 1000.0, "the first scrape's text is counted");
    assert_eq!(grew(&before, &after, RECEIVED, &kind("nix-cache-info")), CACHE_INFO.len() as f64, "the upload");

    let duration = |kind, method| [("kind", kind), ("method", method)];
    let count = "storefront_request_duration_seconds_count";
    assert_eq!(grew(&before, &after, count, &duration("narinfo", "GET")), 1.0);
    // One Stat found nothing, the read's Stat found the blob.
    assert_eq!(grew(&before, &after, count, &duration("grpc", "BlobService/Stat")), 2.0);
    assert_eq!(grew(&before, &after, REQUESTS, &req("grpc", "BlobService/Stat", "Ok")), 1.0);
    let bucket = |le| [("kind", "narinfo"), ("method", "GET"), ("le", le)];
    let name = "storefront_request_duration_seconds_bucket";
    assert_eq!(sample(&after, name, &bucket("+Inf")), sample(&after, count, &duration("narinfo", "GET")));
    assert!(sample(&after, name, &bucket("0.0001")) <= sample(&after, name, &bucket("10")));
}

/// The metrics layer sits outside the auth layer: refusals are counted,
/// gRPC ones with their status; unknown gRPC methods do not get a label
/// of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_unknown_methods() {
    let server = Server::start_secure(&[]);
    let addr = server.addr;
    let refused =
        tokio::task::spawn_blocking(move || request(addr, "PUT", "/nix-cache-info", &[], b"x")).await.unwrap();
    assert_eq!(refused.status, 401);
    let blobs = castore::blob_service_from_url(&server.url()).unwrap();
    blobs.put_bytes(bytes::Bytes::from_static(b"refused"), None).await.expect_err("a Put without a token");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/snix.castore.v1.NoSuchService/Frobnicate");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let status = grpc.unary(tonic::Request::new(()), path, codec).await.expect_err("no such service");
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    let after = scrape(&server, &[]);
    let req = |kind, method, status| [("kind", kind), ("method", method), ("status", status)];
    assert_eq!(sample(&after, REQUESTS, &req("nix-cache-info", "PUT", "401")), 1.0);
    assert_eq!(sample(&after, REQUESTS, &req("grpc", "BlobService/Put", "Unauthenticated")), 1.0);
    assert_eq!(sample(&after, REQUESTS, &req("grpc", "other", "Unimplemented")), 1.0);
    assert!(
        !after.keys().any(|(_, labels)| labels.values().any(|v| v.contains("Frobnicate"))),
        "an unknown method became a label"
    );
}
