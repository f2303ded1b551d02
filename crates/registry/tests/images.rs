//! Generated images in-process: compressed layers, and nix-snapshotter
//! images pushed by nix-snapshotter's own tooling (manifest, config and the
//! mount-point layer only), pullable in both flavours once their store paths
//! are in the store. (The same flows against real clients run in the
//! storefront binary's tests.)
use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode},
};
use bytes::Bytes;
use registry::{Registry, RegistryConfig};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use store::{PathInfo, StorePath};
use tower::ServiceExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status();
    (status, axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap())
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", data_encoding::HEXLOWER.encode(&Sha256::digest(data)))
}

async fn push_blob(router: &Router, repo: &str, data: &[u8]) -> String {
    let d = digest(data);
    let (status, body) = send(
        router,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        None,
        Bytes::copy_from_slice(data),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    d
}

/// A store path from the largest reference vector NAR, in the store.
async fn store_path(
    blobs: &Arc<dyn castore::BlobService>,
    dirs: &Arc<dyn castore::DirectoryService>,
    paths: &Arc<dyn store::PathInfoService>,
) -> StorePath {
    let vector = testkit::vectors().into_iter().max_by_key(|v| v.nar_size).unwrap();
    let mut nar = tokio::fs::File::open(&vector.nar).await.unwrap();
    let ingested = store::nar::ingest(&mut nar, &**blobs, &**dirs).await.unwrap();
    let path = StorePath::from_parts([7; 20], "pushed-app").unwrap();
    paths
        .put(PathInfo {
            store_path: path.clone(),
            node: ingested.node,
            references: vec![],
            nar_size: ingested.nar_size,
            nar_sha256: ingested.nar_sha256,
            signatures: vec![],
            deriver: None,
            ca: None,
        })
        .await
        .unwrap();
    path
}

#[tokio::test]
async fn a_pushed_nix_snapshotter_image_is_served_in_both_flavours() {
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = store::url::path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
    let meta = Arc::new(castore::kv::MemoryStore::new());
    let path = store_path(&blobs, &dirs, &paths).await;
    let router = registry::router(Registry::new(RegistryConfig::default(), blobs, dirs, paths, meta));
    let abs = path.to_absolute(store::DEFAULT_STORE_DIR);

    // What copyToRegistry pushes: a small gzip layer, a config, a manifest.
    let layer = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03stand-in for the mount-point layer".to_vec();
    let layer_digest = push_blob(&router, "demo/app", &layer).await;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Entrypoint": [format!("{abs}/bin/app")] },
        "rootfs": { "type": "layers", "diff_ids": [digest(b"uncompressed mount points")] },
        "history": [{ "created_by": "nix-snapshotter" }],
    }))
    .unwrap();
    let config_digest = push_blob(&router, "demo/app", &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len(),
            "annotations": {
                "containerd.io/snapshot/nix-layer": "true",
                "containerd.io/snapshot/nix-store-path.0": abs,
            },
        }],
    }))
    .unwrap();
    let (status, body) =
        send(&router, Method::PUT, "/v2/demo/app/manifests/v1", Some(OCI_MANIFEST), manifest.clone().into()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));

    // As pushed, under nix-snapshotter/, with its blobs.
    let (status, got) =
        send(&router, Method::GET, "/v2/nix-snapshotter/demo/app/manifests/v1", None, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, manifest);
    for d in [&layer_digest, &config_digest] {
        let (status, _) =
            send(&router, Method::GET, &format!("/v2/nix-snapshotter/demo/app/blobs/{d}"), None, Bytes::new()).await;
        assert_eq!(status, StatusCode::OK, "{d} under nix-snapshotter/");
    }

    // Ordinary: the pushed layer, then the store path in a rendered layer.
    let (status, got) = send(&router, Method::GET, "/v2/demo/app/manifests/v1", None, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&got));
    let ordinary: Value = serde_json::from_slice(&got).unwrap();
    let layers = ordinary["layers"].as_array().unwrap();
    assert!(layers.len() >= 2, "{ordinary}");
    assert_eq!(layers[0]["digest"], layer_digest.as_str());
    assert!(layers[0].get("annotations").is_none(), "the ordinary flavour carries no nix annotations");
    let (status, config) = send(
        &router,
        Method::GET,
        &format!("/v2/demo/app/blobs/{}", ordinary["config"]["digest"].as_str().unwrap()),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), layers.len());
    assert_eq!(config["config"]["Entrypoint"][0], format!("{abs}/bin/app"));
    assert!(config.get("history").is_none());
    for l in &layers[1..] {
        let d = l["digest"].as_str().unwrap();
        let (status, tar) = send(&router, Method::GET, &format!("/v2/demo/app/blobs/{d}"), None, Bytes::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(digest(&tar), d, "the rendered layer matches its digest");
        assert_eq!(l["size"].as_u64().unwrap(), tar.len() as u64);
        let name = format!("nix/store/{path}");
        assert!(tar.windows(name.len()).any(|w| w == name.as_bytes()), "the layer holds {name}");
    }
    // Built once: the same bytes again.
    let (_, again) = send(&router, Method::GET, "/v2/demo/app/manifests/v1", None, Bytes::new()).await;
    assert_eq!(again, got);
}

#[tokio::test]
async fn compressed_layers_are_made_once_and_decompress_to_their_diff_ids() {
    use tokio::io::AsyncReadExt;
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let paths = store::url::path_info_service_from_url("memory:", blobs.clone(), dirs.clone()).unwrap();
    let meta = Arc::new(castore::kv::MemoryStore::new());
    let path = store_path(&blobs, &dirs, &paths).await;
    let reg = Registry::new(RegistryConfig::default(), blobs, dirs, paths, meta);
    let router = registry::router(reg.clone());
    for (compression, media_type) in [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ] {
        let spec = registry::images::ImageSpec {
            paths: vec![path.to_absolute(store::DEFAULT_STORE_DIR)],
            layer_compression: Some(compression.into()),
            arch: "amd64".into(),
            ..Default::default()
        };
        let [first, _] = reg.add_image("packed", compression, spec.clone()).await.unwrap();
        let [again, _] = reg.add_image("packed-again", compression, spec).await.unwrap();
        assert_eq!(first.digest, again.digest, "{compression}: made once, the same digests");

        let manifest: Value = serde_json::from_slice(&first.bytes).unwrap();
        let config_uri = format!("/v2/packed/blobs/{}", manifest["config"]["digest"].as_str().unwrap());
        let (_, config) = send(&router, Method::GET, &config_uri, None, Bytes::new()).await;
        let config: Value = serde_json::from_slice(&config).unwrap();
        let store_layer = &manifest["layers"][0];
        assert_eq!(store_layer["mediaType"], media_type);
        let d = store_layer["digest"].as_str().unwrap();
        let (status, packed) = send(&router, Method::GET, &format!("/v2/packed/blobs/{d}"), None, Bytes::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(digest(&packed), d);
        let mut tar = Vec::new();
        match compression {
            "gzip" => async_compression::tokio::bufread::GzipDecoder::new(&packed[..]).read_to_end(&mut tar).await,
            _ => async_compression::tokio::bufread::ZstdDecoder::new(&packed[..]).read_to_end(&mut tar).await,
        }
        .unwrap();
        assert!(tar.len() > packed.len(), "{compression} compressed the layer");
        assert_eq!(digest(&tar), config["rootfs"]["diff_ids"][0], "{compression}: decompresses to its diff id");
    }
    // Defined images are in the catalog, under both flavours' names.
    let (_, catalog) = send(&router, Method::GET, "/v2/_catalog", None, Bytes::new()).await;
    let catalog: Value = serde_json::from_slice(&catalog).unwrap();
    for repo in ["packed", "nix-snapshotter/packed", "packed-again"] {
        assert!(catalog["repositories"].as_array().unwrap().iter().any(|r| r == repo), "{repo} in {catalog}");
    }
    let bad = registry::images::ImageSpec {
        paths: vec![path.to_absolute(store::DEFAULT_STORE_DIR)],
        layer_compression: Some("lz4".into()),
        arch: "amd64".into(),
        ..Default::default()
    };
    assert!(reg.add_image("packed", "bad", bad).await.unwrap_err().to_string().contains("lz4"));
}
