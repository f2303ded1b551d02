//! The binary cache router in-process, over memory services: uploads in the
//! order `nix copy --to` sends them, reads as substituters do, and every
//! refusal the protocol needs. (The same flows against the real Nix run in
//! the storefront binary's tests.)
use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use cache::{BinaryCache, CacheConfig, Compression};
use sha2::{Digest, Sha256};
use store::{NarInfo, NixHash, SigningKey, StorePath, nix32};
use tokio::io::AsyncReadExt;
use tower::ServiceExt;

const STORE: &str = "/nix/store";

struct Fixture {
    router: Router,
    key: Arc<SigningKey>,
}

fn fixture(compression: Compression) -> Fixture {
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = store::url::path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
    let key = Arc::new(SigningKey::generate("cache-test-1").unwrap());
    let config = CacheConfig { signing_key: Some(key.clone()), nar_compression: compression, ..CacheConfig::default() };
    let cache = BinaryCache::new(config, blobs, dirs, paths, Arc::new(castore::kv::MemoryStore::new())).unwrap();
    Fixture { router: cache::router(cache), key }
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

async fn get(router: &Router, uri: &str) -> (StatusCode, Bytes) {
    let resp = send(router, Method::GET, uri, &[], Body::empty()).await;
    (resp.status(), body(resp).await)
}

async fn put(router: &Router, uri: &str, data: impl Into<Body>) -> (StatusCode, String) {
    let resp = send(router, Method::PUT, uri, &[], data).await;
    let status = resp.status();
    (status, String::from_utf8_lossy(&body(resp).await).into_owned())
}

async fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    c.encoder(data).read_to_end(&mut out).await.unwrap();
    out
}

/// A NAR prepared the way Nix uploads it.
struct Upload {
    path: StorePath,
    nar: Vec<u8>,
    file: Vec<u8>,
    url: String,
    compression: Compression,
}

impl Upload {
    async fn new(seed: u8, nar: Vec<u8>, compression: Compression) -> Upload {
        let file = compress(compression, &nar).await;
        let file_hash = nix32::encode(&Sha256::digest(&file));
        Upload {
            path: StorePath::from_parts([seed; 20], &format!("path-{seed}")).unwrap(),
            url: format!("nar/{file_hash}.nar{}", compression.extension()),
            nar,
            file,
            compression,
        }
    }

    fn narinfo(&self, references: &[&StorePath]) -> NarInfo {
        NarInfo {
            store_path: self.path.clone(),
            url: self.url.clone(),
            compression: self.compression.name().into(),
            file_hash: Some(NixHash::sha256(Sha256::digest(&self.file).into())),
            file_size: Some(self.file.len() as u64),
            nar_hash: NixHash::sha256(Sha256::digest(&self.nar).into()),
            nar_size: self.nar.len() as u64,
            references: references.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    fn narinfo_uri(&self) -> String {
        format!("/{}.narinfo", self.path.hash_part())
    }

    /// Uploads NAR then narinfo, as `nix copy --to` does; the narinfo's status.
    async fn upload(&self, router: &Router, references: &[&StorePath]) -> (StatusCode, String) {
        assert_eq!(put(router, &format!("/{}", self.url), self.file.clone()).await.0, StatusCode::OK);
        put(router, &self.narinfo_uri(), self.narinfo(references).render(STORE)).await
    }
}

fn vector_nars() -> Vec<Vec<u8>> {
    testkit::vectors().iter().map(|v| std::fs::read(&v.nar).unwrap()).collect()
}

#[tokio::test]
async fn uploaded_paths_are_served_signed_and_byte_identical() {
    for compression in [Compression::Xz, Compression::Zstd, Compression::None, Compression::Bzip2, Compression::Brotli]
    {
        let fx = fixture(Compression::None);
        for (i, nar) in vector_nars().into_iter().enumerate() {
            let up = Upload::new(i as u8 + 1, nar, compression).await;
            let (status, text) = up.upload(&fx.router, &[]).await;
            assert_eq!(status, StatusCode::OK, "{compression}: {text}");

            let (status, text) = get(&fx.router, &up.narinfo_uri()).await;
            assert_eq!(status, StatusCode::OK);
            let served = NarInfo::parse(std::str::from_utf8(&text).unwrap(), STORE).unwrap();
            assert_eq!(served.nar_hash, up.narinfo(&[]).nar_hash);
            assert_eq!(served.compression, "none");
            assert_eq!(served.file_hash, Some(served.nar_hash));
            let sig = served.signatures.iter().find(|s| s.name == "cache-test-1").expect("the server's signature");
            assert!(fx.key.verifying_key().verify(&served.fingerprint(STORE).unwrap(), sig));

            let (status, nar) = get(&fx.router, &format!("/{}", served.url)).await;
            assert_eq!(status, StatusCode::OK);
            assert!(nar == up.nar, "{compression}: the served NAR differs from the uploaded one");

            // HEAD of the uploaded name tells Nix not to upload it again.
            let head = send(&fx.router, Method::HEAD, &format!("/{}", up.url), &[], Body::empty()).await;
            assert_eq!(head.status(), StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn ranges_compression_and_heads() {
    let fx = fixture(Compression::None);
    let nar = vector_nars().into_iter().max_by_key(Vec::len).unwrap();
    let up = Upload::new(7, nar.clone(), Compression::Xz).await;
    assert_eq!(up.upload(&fx.router, &[]).await.0, StatusCode::OK);
    let served =
        NarInfo::parse(std::str::from_utf8(&get(&fx.router, &up.narinfo_uri()).await.1).unwrap(), STORE).unwrap();
    let uri = format!("/{}", served.url);
    let len = nar.len();

    let head = send(&fx.router, Method::HEAD, &uri, &[], Body::empty()).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], len.to_string());
    assert_eq!(head.headers()[header::ACCEPT_RANGES], "bytes");
    assert!(body(head).await.is_empty());

    for (spec, start, end) in [
        (format!("bytes={}-", len / 2), len / 2, len),
        (format!("bytes=3-{}", len / 3), 3, len / 3 + 1),
        ("bytes=-17".to_owned(), len - 17, len),
    ] {
        let resp = send(&fx.router, Method::GET, &uri, &[("range", &spec)], Body::empty()).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(resp.headers()[header::CONTENT_RANGE], format!("bytes {start}-{}/{len}", end - 1));
        assert_eq!(body(resp).await, nar[start..end], "{spec}");
    }
    let resp = send(&fx.router, Method::GET, &uri, &[("range", &format!("bytes={len}-"))], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()[header::CONTENT_RANGE], format!("bytes */{len}"));

    // Content-Encoding only for a client that asks, and never with a Range.
    let resp = send(&fx.router, Method::GET, &uri, &[("accept-encoding", "gzip, zstd")], Body::empty()).await;
    assert_eq!(resp.headers()[header::CONTENT_ENCODING], "zstd");
    let packed = body(resp).await;
    let mut unpacked = Vec::new();
    Compression::Zstd.decoder(&packed[..]).read_to_end(&mut unpacked).await.unwrap();
    assert!(unpacked == nar);
    let resp =
        send(&fx.router, Method::GET, &uri, &[("accept-encoding", "zstd"), ("range", "bytes=1-")], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());

    // The same NAR under the compressed names.
    for c in [Compression::Zstd, Compression::Xz] {
        let (status, packed) = get(&fx.router, &format!("{}{}", uri, c.extension())).await;
        assert_eq!(status, StatusCode::OK);
        let mut unpacked = Vec::new();
        c.decoder(&packed[..]).read_to_end(&mut unpacked).await.unwrap();
        assert!(unpacked == nar, "{c}");
    }
    // A stale NarHash in the name is not this path's NAR.
    let nar_hash = nix32::encode(&served.nar_hash.as_sha256().unwrap());
    assert!(uri.contains(&nar_hash));
    let stale = uri.replace(&nar_hash[..8], "00000000");
    assert_eq!(get(&fx.router, &stale).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn narinfos_name_compressed_nars_when_configured() {
    let fx = fixture(Compression::Zstd);
    let nar = vector_nars().remove(0);
    let up = Upload::new(9, nar.clone(), Compression::None).await;
    assert_eq!(up.upload(&fx.router, &[]).await.0, StatusCode::OK);
    let served =
        NarInfo::parse(std::str::from_utf8(&get(&fx.router, &up.narinfo_uri()).await.1).unwrap(), STORE).unwrap();
    assert_eq!(served.compression, "zstd");
    assert!(served.url.ends_with(".nar.zst"), "{}", served.url);
    assert_eq!(served.file_hash, None);
    let (_, packed) = get(&fx.router, &format!("/{}", served.url)).await;
    let mut unpacked = Vec::new();
    Compression::Zstd.decoder(&packed[..]).read_to_end(&mut unpacked).await.unwrap();
    assert!(unpacked == nar);
}

#[tokio::test]
async fn references_must_be_stored_first() {
    let fx = fixture(Compression::None);
    let nars = vector_nars();
    let dep = Upload::new(1, nars[0].clone(), Compression::Xz).await;
    let top = Upload::new(2, nars[1].clone(), Compression::Xz).await;
    let (status, text) = top.upload(&fx.router, &[&dep.path, &top.path]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains(&dep.path.to_string()), "the refusal names the missing reference: {text}");
    assert_eq!(get(&fx.router, &top.narinfo_uri()).await.0, StatusCode::NOT_FOUND);

    assert_eq!(dep.upload(&fx.router, &[]).await.0, StatusCode::OK);
    let (status, text) = top.upload(&fx.router, &[&dep.path, &top.path]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let served =
        NarInfo::parse(std::str::from_utf8(&get(&fx.router, &top.narinfo_uri()).await.1).unwrap(), STORE).unwrap();
    assert_eq!(served.references, vec![dep.path.clone(), top.path.clone()]);
    // A second upload of the same narinfo is accepted and changes nothing.
    assert_eq!(top.upload(&fx.router, &[&dep.path, &top.path]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn mismatched_or_missing_nars_store_nothing() {
    let fx = fixture(Compression::None);
    let nars = vector_nars();
    let up = Upload::new(3, nars[2].clone(), Compression::Xz).await;
    assert_eq!(put(&fx.router, &format!("/{}", up.url), up.file.clone()).await.0, StatusCode::OK);

    // NarHash differs from the uploaded NAR's.
    let mut info = up.narinfo(&[]);
    info.nar_hash = NixHash::sha256([7; 32]);
    let (status, text) = put(&fx.router, &up.narinfo_uri(), info.render(STORE)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("NarHash"), "{text}");
    // NarSize, FileSize too.
    let mut info = up.narinfo(&[]);
    info.nar_size += 8;
    assert_eq!(put(&fx.router, &up.narinfo_uri(), info.render(STORE)).await.0, StatusCode::BAD_REQUEST);
    let mut info = up.narinfo(&[]);
    info.file_size = Some(1);
    assert_eq!(put(&fx.router, &up.narinfo_uri(), info.render(STORE)).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get(&fx.router, &up.narinfo_uri()).await.0, StatusCode::NOT_FOUND);

    // A narinfo naming a NAR never uploaded.
    let other = Upload::new(4, nars[3].clone(), Compression::Xz).await;
    let (status, text) = put(&fx.router, &other.narinfo_uri(), other.narinfo(&[]).render(STORE)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("was not uploaded"), "{text}");

    // A narinfo under another path's name.
    let (status, _) = put(&fx.router, &other.narinfo_uri(), up.narinfo(&[]).render(STORE)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A file whose bytes are not what its name says (corrupted, truncated).
    let mut truncated = other.file.clone();
    truncated.truncate(truncated.len() / 2);
    let (status, text) = put(&fx.router, &format!("/{}", other.url), truncated).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let mut flipped = other.file.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(put(&fx.router, &format!("/{}", other.url), flipped).await.0, StatusCode::BAD_REQUEST);
    let head = send(&fx.router, Method::HEAD, &format!("/{}", other.url), &[], Body::empty()).await;
    assert_eq!(head.status(), StatusCode::NOT_FOUND, "a refused upload leaves no record");
    assert_eq!(
        put(&fx.router, &other.narinfo_uri(), other.narinfo(&[]).render(STORE)).await.0,
        StatusCode::BAD_REQUEST
    );

    // Not a NAR at all, correctly named.
    let junk = compress(Compression::Xz, b"this is not a NAR").await;
    let name = format!("/nar/{}.nar.xz", nix32::encode(&Sha256::digest(&junk)));
    let (status, text) = put(&fx.router, &name, junk).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    // A body that breaks off mid-way.
    let stream = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(Bytes::from(other.file[..other.file.len() / 2].to_vec())),
        Err(std::io::Error::other("connection reset")),
    ]);
    let (status, _) = put(&fx.router, &format!("/{}", other.url), Body::from_stream(stream)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        put(&fx.router, &other.narinfo_uri(), other.narinfo(&[]).render(STORE)).await.0,
        StatusCode::BAD_REQUEST
    );

    // Unknown compressions and names.
    assert_eq!(put(&fx.router, "/nar/abc.nar.lz4", "x").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(put(&fx.router, "/nar/short.nar", "x").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(put(&fx.router, "/random-file", "x").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(put(&fx.router, "/notadir/x", "x").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn side_files_come_back_as_uploaded() {
    let fx = fixture(Compression::None);
    let listing = compress(Compression::Brotli, br#"{"version":1,"root":{"type":"regular"}}"#).await;
    let hash = nix32::encode(&[5; 20]);
    for (uri, data, headers) in [
        (
            format!("/{hash}.ls"),
            listing.clone(),
            vec![("content-type", "application/json"), ("content-encoding", "br")],
        ),
        ("/log/abcd-foo.drv".to_owned(), b"build log\n".to_vec(), vec![("content-type", "text/plain; charset=utf-8")]),
        ("/realisations/sha256:00!out.doi".to_owned(), b"{}".to_vec(), vec![]),
    ] {
        let resp = send(&fx.router, Method::PUT, &uri, &headers, data.clone()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        let resp = send(&fx.router, Method::GET, &uri, &[], Body::empty()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        for (k, v) in &headers {
            assert_eq!(resp.headers()[*k], *v, "{uri} {k}");
        }
        assert_eq!(body(resp).await, data, "{uri}");
    }
    assert_eq!(get(&fx.router, "/log/missing.drv").await.0, StatusCode::NOT_FOUND);
    assert_eq!(put(&fx.router, "/log/../x", "x").await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn cache_info() {
    let fx = fixture(Compression::None);
    let (status, text) = get(&fx.router, "/nix-cache-info").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(text.contains("StoreDir: /nix/store\n") && text.contains("WantMassQuery: 1\n"), "{text}");
    assert_eq!(put(&fx.router, "/nix-cache-info", "StoreDir: /nix/store\n").await.0, StatusCode::OK);
    assert_eq!(put(&fx.router, "/nix-cache-info", "StoreDir: /gnu/store\n").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get(&fx.router, "/00000000000000000000000000000000.narinfo").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&fx.router, "/not-a-hash.narinfo").await.0, StatusCode::NOT_FOUND);
}
