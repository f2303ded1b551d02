//! The store.v1 PathInfoService over gRPC, under both package names: round
//! trips, the put preconditions, every validation rule of the protocol, and
//! the wire encoding byte for byte against the field numbers of the spec.
mod common;

use std::sync::Arc;

use bytes::Bytes;
use castore::{BlobService, DirectoryService, Node, grpc::PackageRewrite};
use common::*;
use futures::TryStreamExt;
use prost::Message;
use store::{
    StorePath,
    pathinfo::{GrpcPathInfoService, PathInfo, PathInfoService},
    proto::{self, path_info_service_client::PathInfoServiceClient},
    signing::Signature,
};
use tonic::Code;

type Transport = PackageRewrite<tonic::transport::Channel>;

fn transport(server: &Server, package: &str) -> Transport {
    castore::grpc::connect(&url::Url::parse(&server.url_for(package)).unwrap()).unwrap()
}

fn raw_client(server: &Server, package: &str) -> PathInfoServiceClient<Transport> {
    PathInfoServiceClient::new(transport(server, package))
}

struct Clients {
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    paths: GrpcPathInfoService,
}

fn clients(server: &Server, package: &str) -> Clients {
    let url = server.url_for(package);
    Clients {
        blobs: castore::blob_service_from_url(&url).unwrap(),
        directories: castore::directory_service_from_url(&url).unwrap(),
        paths: GrpcPathInfoService::new(transport(server, package)),
    }
}

fn store_path(seed: u8, name: &str) -> StorePath {
    StorePath::from_parts([seed; 20], name).unwrap()
}

/// A PathInfo whose contents need nothing stored (a symlink).
fn symlink_info(path: StorePath, references: Vec<StorePath>) -> PathInfo {
    PathInfo {
        store_path: path,
        node: Node::Symlink { target: Bytes::from_static(b"/nix/store/somewhere-else") },
        references,
        nar_size: 168,
        nar_sha256: [7; 32],
        signatures: vec![Signature { name: "cache.example.org-1".into(), bytes: [9; 64] }],
        deriver: Some(store_path(3, "thing.drv")),
        ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_list_under_both_packages() {
    let server = Server::start();
    for package in ["snix", "tvix"] {
        let c = clients(&server, package);
        let seed = if package == "snix" { 10 } else { 20 };
        let dep = symlink_info(store_path(seed, "dep"), vec![]);
        let me = store_path(seed + 1, "app-1.0");
        // References itself and the dependency.
        let app = symlink_info(me.clone(), vec![dep.store_path.clone(), me.clone()]);
        assert_eq!(c.paths.put(dep.clone()).await.unwrap(), dep, "{package}");
        assert_eq!(c.paths.put(app.clone()).await.unwrap(), app, "{package}");
        assert_eq!(c.paths.get(me.digest()).await.unwrap(), Some(app.clone()), "{package}");
        assert_eq!(c.paths.get(&[99; 20]).await.unwrap(), None, "{package}");

        // Paths are immutable: a second put returns the first record.
        let mut other = app.clone();
        other.signatures.clear();
        assert_eq!(c.paths.put(other).await.unwrap(), app, "{package}");
    }
    // Both packages see one store.
    let listed: Vec<PathInfo> = clients(&server, "tvix").paths.list().try_collect().await.unwrap();
    let mut names: Vec<String> = listed.iter().map(|i| i.store_path.to_string()).collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("-app-1.0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_needs_contents_and_references() {
    let server = Server::start();
    let c = clients(&server, "snix");

    let contents = Bytes::from_static(b"#!/bin/sh\necho hi\n");
    let digest = castore::B3Digest::of(&contents);
    let mut info = symlink_info(store_path(1, "script"), vec![]);
    info.node = Node::File { digest, size: contents.len() as u64, executable: true };
    let status = expect_code(
        c.paths.put(info.clone()).await.map_err(tonic::Status::from),
        Code::FailedPrecondition,
        "put before blob",
    );
    expect_message(&status, "not in the castore", "missing contents");
    c.blobs.put_bytes(contents, Some(&digest)).await.unwrap();
    c.paths.put(info.clone()).await.unwrap();

    let dir = dir(vec![("a", file_node(b"a"))]);
    let mut tree = symlink_info(store_path(2, "tree"), vec![]);
    tree.node = dir_node(&dir);
    expect_code(
        c.paths.put(tree.clone()).await.map_err(tonic::Status::from),
        Code::FailedPrecondition,
        "put before directory",
    );
    c.blobs.put_bytes(Bytes::from_static(b"a"), None).await.unwrap();
    c.directories.put(dir).await.unwrap();
    c.paths.put(tree).await.unwrap();

    let missing = store_path(4, "missing-dep");
    let app = symlink_info(store_path(5, "app"), vec![info.store_path.clone(), missing.clone()]);
    let status = expect_code(
        c.paths.put(app).await.map_err(tonic::Status::from),
        Code::FailedPrecondition,
        "put before references",
    );
    expect_message(&status, &missing.to_string(), "names the missing reference");
    assert!(c.paths.get(&[5; 20]).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_request_errors() {
    let server = Server::start();
    for package in ["snix", "tvix"] {
        let mut raw = raw_client(&server, package);
        expect_code(raw.get(proto::GetPathInfoRequest { by_what: None }).await, Code::Unimplemented, "no by_what");
        let by = |b: &[u8]| proto::GetPathInfoRequest {
            by_what: Some(proto::get_path_info_request::ByWhat::ByOutputHash(Bytes::copy_from_slice(b))),
        };
        expect_code(raw.get(by(&[1; 19])).await, Code::InvalidArgument, "19-byte digest");
        expect_code(raw.get(by(&[1; 32])).await, Code::InvalidArgument, "32-byte digest");
        expect_code(raw.get(by(&[1; 20])).await, Code::NotFound, "absent path");
    }
}

/// Every rule of the protocol's Put validation, each broken once, under both
/// packages; nothing is stored afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_path_infos_are_refused() {
    let server = Server::start();
    let dep = symlink_info(store_path(30, "dep"), vec![]);
    clients(&server, "snix").paths.put(dep.clone()).await.unwrap();
    let valid = symlink_info(store_path(31, "app"), vec![dep.store_path.clone()]).to_proto();

    type Breaker = Box<dyn Fn(&mut proto::PathInfo)>;
    fn narinfo(p: &mut proto::PathInfo) -> &mut proto::NarInfo {
        p.narinfo.as_mut().unwrap()
    }
    let cases: Vec<(&str, &str, Breaker)> = vec![
        ("no entry", "no entry", Box::new(|p| p.entry = None)),
        ("no narinfo", "no narinfo", Box::new(|p| p.narinfo = None)),
        (
            "entry name not a store path",
            "root entry name",
            Box::new(|p| {
                if let Some(castore::proto::entry::Entry::Symlink(s)) = p.entry.as_mut().and_then(|e| e.entry.as_mut())
                {
                    s.name = Bytes::from_static(b"not-a-store-path");
                }
            }),
        ),
        (
            "symlink target with NUL",
            "invalid root entry",
            Box::new(|p| {
                if let Some(castore::proto::entry::Entry::Symlink(s)) = p.entry.as_mut().and_then(|e| e.entry.as_mut())
                {
                    s.target = Bytes::from_static(b"a\0b");
                }
            }),
        ),
        ("reference of 19 bytes", "expected 20", Box::new(|p| p.references[0] = Bytes::from_static(&[30; 19]))),
        (
            "reference name and digest disagree",
            "does not match",
            Box::new(move |p| p.references[0] = Bytes::from_static(&[77; 20])),
        ),
        (
            "reference name not a basename",
            "reference name 0",
            Box::new(move |p| narinfo(p).reference_names[0] = "dep".into()),
        ),
        (
            "more names than references",
            "reference names",
            Box::new(move |p| narinfo(p).reference_names.push("x".into())),
        ),
        (
            "nar_sha256 of 31 bytes",
            "nar_sha256",
            Box::new(move |p| narinfo(p).nar_sha256 = Bytes::from_static(&[1; 31])),
        ),
        ("nar_size zero", "nar_size", Box::new(move |p| narinfo(p).nar_size = 0)),
        (
            "signature of 63 bytes",
            "expected 64",
            Box::new(move |p| narinfo(p).signatures[0].data = Bytes::from_static(&[1; 63])),
        ),
        ("signature without key name", "empty key name", Box::new(move |p| narinfo(p).signatures[0].name.clear())),
        (
            "deriver digest of 21 bytes",
            "deriver",
            Box::new(move |p| narinfo(p).deriver.as_mut().unwrap().digest = Bytes::from_static(&[1; 21])),
        ),
        (
            "deriver name invalid",
            "deriver",
            Box::new(move |p| narinfo(p).deriver.as_mut().unwrap().name = "a b".into()),
        ),
        (
            "CA digest too short for sha256",
            "content address",
            Box::new(move |p| {
                narinfo(p).ca = Some(proto::nar_info::Ca {
                    r#type: proto::nar_info::ca::Hash::NarSha256 as i32,
                    digest: Bytes::from_static(&[1; 20]),
                })
            }),
        ),
        (
            "CA of an unknown hash type",
            "content address",
            Box::new(move |p| {
                narinfo(p).ca = Some(proto::nar_info::Ca { r#type: 42, digest: Bytes::from_static(&[1; 32]) })
            }),
        ),
    ];
    for package in ["snix", "tvix"] {
        let mut raw = raw_client(&server, package);
        for (what, needle, breaker) in &cases {
            let mut msg = valid.clone();
            breaker(&mut msg);
            let status = expect_code(raw.put(msg).await, Code::InvalidArgument, &format!("{package}: {what}"));
            expect_message(&status, needle, what);
        }
        // The untouched message is accepted.
        raw.put(valid.clone()).await.unwrap_or_else(|s| panic!("{package}: valid PathInfo refused: {s:?}"));
    }
    let listed: Vec<PathInfo> = clients(&server, "snix").paths.list().try_collect().await.unwrap();
    assert_eq!(listed.len(), 2, "only the dependency and the valid put are stored");
}

/// CalculateNAR over gRPC equals the reference vectors, under both packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calculate_nar_matches_vectors() {
    let server = Server::start();
    for package in ["snix", "tvix"] {
        let c = clients(&server, package);
        for v in vectors() {
            let mut nar = std::fs::File::open(&v.nar).map(tokio::fs::File::from_std).unwrap();
            let ingested = store::nar::ingest(&mut nar, &*c.blobs, &*c.directories).await.unwrap();
            let (size, sha) = c.paths.calculate_nar(&ingested.node).await.unwrap();
            assert_eq!((size, hex(&sha)), (v.nar_size, v.nar_sha256_hex.clone()), "{package}: {}", v.name);
        }
    }
}

/// The bytes we put on the wire, built by hand from the field numbers in
/// the spec (castore.md), so a renumbered or retyped field cannot pass.
#[test]
fn wire_encoding_follows_the_spec() {
    fn key(field: u32, wire: u8) -> Vec<u8> {
        varint(((field as u64) << 3) | wire as u64)
    }
    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = vec![];
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes_field(field: u32, data: &[u8]) -> Vec<u8> {
        [key(field, 2), varint(data.len() as u64), data.to_vec()].concat()
    }

    let me = store_path(1, "app");
    let dep = store_path(2, "dep");
    let info = PathInfo {
        store_path: me.clone(),
        node: Node::Symlink { target: Bytes::from_static(b"t") },
        references: vec![dep.clone()],
        nar_size: 300,
        nar_sha256: [5; 32],
        signatures: vec![Signature { name: "k".into(), bytes: [6; 64] }],
        deriver: Some(store_path(3, "app.drv")),
        ca: Some(store::ca::ContentAddress::Text { sha256: [8; 32] }),
    };

    // castore Entry: symlink = 3 { name = 1, target = 2 }.
    let symlink = [bytes_field(1, me.to_string().as_bytes()), bytes_field(2, b"t")].concat();
    let entry = bytes_field(3, &symlink);
    let signature = [bytes_field(1, b"k"), bytes_field(2, &[6; 64])].concat();
    let deriver = [bytes_field(1, b"app"), bytes_field(2, &[3; 20])].concat();
    // CA { type = 1 (TEXT_SHA256 = 4), digest = 2 }.
    let ca = [key(1, 0), varint(4), bytes_field(2, &[8; 32])].concat();
    let narinfo = [
        key(1, 0),
        varint(300),
        bytes_field(2, &[5; 32]),
        bytes_field(3, &signature),
        bytes_field(4, dep.to_string().as_bytes()),
        bytes_field(5, &deriver),
        bytes_field(6, &ca),
    ]
    .concat();
    let expected = [bytes_field(1, &entry), bytes_field(2, &[2; 20]), bytes_field(3, &narinfo)].concat();

    let encoded = info.to_proto().encode_to_vec();
    assert_eq!(encoded, expected);
    assert_eq!(PathInfo::from_proto(proto::PathInfo::decode(&expected[..]).unwrap()).unwrap(), info);
}
