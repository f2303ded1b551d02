//! Invalid requests over gRPC, sent with the raw generated clients, so that
//! nothing on our side filters them before the server sees them.
mod common;

use bytes::Bytes;
use castore::{
    B3Digest,
    grpc::{EXPECTED_DIGEST_HEADER, PackageRewrite},
    proto::{
        self, blob_service_client::BlobServiceClient, directory_service_client::DirectoryServiceClient,
        get_directory_request::ByWhat,
    },
};
use common::*;
use tonic::Code;

/// What `castore::grpc::connect` returns.
type Transport = PackageRewrite<tonic::transport::Channel>;

fn transport(server: &Server, package: &str) -> Transport {
    let url = url::Url::parse(&server.url_for(package)).expect("url");
    castore::grpc::connect(&url).expect("connect")
}

fn dir_client(server: &Server, package: &str) -> DirectoryServiceClient<Transport> {
    DirectoryServiceClient::new(transport(server, package))
}

fn blob_client(server: &Server, package: &str) -> BlobServiceClient<Transport> {
    BlobServiceClient::new(transport(server, package)).max_decoding_message_size(64 << 20)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn file(name: &[u8], contents: &[u8]) -> proto::FileEntry {
    proto::FileEntry {
        name: Bytes::copy_from_slice(name),
        digest: B3Digest::of(contents).to_bytes(),
        size: contents.len() as u64,
        executable: false,
    }
}

fn dir_entry(name: &[u8], child: &proto::Directory, size: u64) -> proto::DirectoryEntry {
    proto::DirectoryEntry { name: Bytes::copy_from_slice(name), digest: proto_digest(child).to_bytes(), size }
}

/// A valid leaf directory unique to `tag`, with two files: its size is 4 by
/// the deployed formula (2 × entries) and 2 by the documented one.
fn leaf(tag: &str) -> proto::Directory {
    proto::Directory {
        files: vec![file(format!("one-{tag}").as_bytes(), b"1"), file(format!("two-{tag}").as_bytes(), b"2")],
        ..Default::default()
    }
}
const LEAF_SIZE: u64 = 4;
const LEAF_SIZE_DOCUMENTED: u64 = 2;

async fn get(
    client: &mut DirectoryServiceClient<Transport>,
    digest: Bytes,
    recursive: bool,
) -> Result<Vec<proto::Directory>, tonic::Status> {
    let req = proto::GetDirectoryRequest { by_what: Some(ByWhat::Digest(digest)), recursive };
    collect(client.get(req).await).await
}

/// Asserts that no directory of `stream` is stored, by Get and recursive Get.
async fn assert_none_stored(client: &mut DirectoryServiceClient<Transport>, stream: &[proto::Directory], what: &str) {
    for (i, msg) in stream.iter().enumerate() {
        let digest = proto_digest(msg);
        for recursive in [false, true] {
            expect_code(
                get(client, digest.to_bytes(), recursive).await,
                Code::NotFound,
                &format!("{what}: Get(recursive={recursive}) of message #{i} ({digest}) after a refused Put"),
            );
        }
    }
}

/// Each case: a stream that is valid except for one thing, and a word the
/// error message must contain to say what is wrong.
fn refused_streams(tag: &str) -> Vec<(&'static str, Vec<proto::Directory>, &'static str)> {
    let mut cases = Vec::new();
    let mut n = 0;
    // A fresh leaf per case, so that nothing a case sends was ever stored.
    let mut fresh = || {
        n += 1;
        leaf(&format!("{tag}-{n}"))
    };
    let mut named = |bad: &[u8]| {
        let l = fresh();
        let parent = proto::Directory { directories: vec![dir_entry(bad, &l, LEAF_SIZE)], ..Default::default() };
        vec![l, parent]
    };
    cases.push(("name `..`", named(b".."), "invalid entry name"));
    cases.push(("name `.`", named(b"."), "invalid entry name"));
    cases.push(("name with `/`", named(b"a/b"), "/"));
    cases.push(("name with NUL", named(b"a\0b"), "nul"));
    cases.push(("empty name", named(b""), "empty"));
    cases.push(("256-byte name", named(&[b'n'; 256]), "255"));

    let l = fresh();
    let parent = proto::Directory {
        directories: vec![dir_entry(b"b", &l, LEAF_SIZE), dir_entry(b"a", &l, LEAF_SIZE)],
        ..Default::default()
    };
    cases.push(("unsorted directory list", vec![l, parent], "ascending"));

    let l = fresh();
    let parent = proto::Directory {
        directories: vec![dir_entry(b"d", &l, LEAF_SIZE)],
        files: vec![file(b"z", b"z"), file(b"y", b"y")],
        ..Default::default()
    };
    cases.push(("unsorted file list", vec![l, parent], "ascending"));

    let l = fresh();
    let parent = proto::Directory {
        directories: vec![dir_entry(b"d", &l, LEAF_SIZE)],
        files: vec![file(b"a", b"1"), file(b"a", b"2")],
        ..Default::default()
    };
    cases.push(("duplicate name within a list", vec![l, parent], "more than once"));

    let l = fresh();
    let parent = proto::Directory {
        directories: vec![dir_entry(b"same", &l, LEAF_SIZE)],
        symlinks: vec![proto::SymlinkEntry { name: b("same"), target: b("x") }],
        ..Default::default()
    };
    cases.push(("duplicate name across lists", vec![l, parent], "more than once"));

    let l = fresh();
    let mut short = file(b"f", b"f");
    short.digest = short.digest.slice(..31);
    let parent = proto::Directory {
        directories: vec![dir_entry(b"d", &l, LEAF_SIZE)],
        files: vec![short],
        ..Default::default()
    };
    cases.push(("file digest of 31 bytes", vec![l, parent], "32 bytes"));

    let l = fresh();
    let mut long = dir_entry(b"d", &l, LEAF_SIZE);
    long.digest = [long.digest.as_ref(), &[0u8][..]].concat().into();
    let parent = proto::Directory { directories: vec![long], ..Default::default() };
    cases.push(("directory digest of 33 bytes", vec![l, parent], "32 bytes"));

    let l = fresh();
    let parent = proto::Directory {
        directories: vec![dir_entry(b"d", &l, LEAF_SIZE)],
        symlinks: vec![proto::SymlinkEntry { name: b("s"), target: Bytes::new() }],
        ..Default::default()
    };
    cases.push(("empty symlink target", vec![l, parent], "target"));

    let l = fresh();
    // 3 is neither 2 × 2 entries (deployed) nor 2 entries (documented).
    let parent = proto::Directory { directories: vec![dir_entry(b"d", &l, 3)], ..Default::default() };
    cases.push(("child size fitting neither formula", vec![l, parent], "size"));

    let l = fresh();
    let unknown =
        proto::DirectoryEntry { name: b("x"), digest: B3Digest::of(b"no such directory").to_bytes(), size: 0 };
    let parent = proto::Directory { directories: vec![dir_entry(b"d", &l, LEAF_SIZE), unknown], ..Default::default() };
    cases.push(("unknown child directory", vec![l, parent], "unknown"));

    // A child sent after its parent is unknown when the parent arrives.
    let l = fresh();
    let parent = proto::Directory { directories: vec![dir_entry(b"d", &l, LEAF_SIZE)], ..Default::default() };
    cases.push(("child sent after its parent", vec![parent, l], "unknown"));

    let stray = fresh();
    let l = fresh();
    let root = proto::Directory { directories: vec![dir_entry(b"d", &l, LEAF_SIZE)], ..Default::default() };
    cases.push(("directory not reachable from the root", vec![stray, l, root], "not below the root"));

    cases.push(("empty stream", vec![], "empty"));
    cases
}

async fn refused_directory_puts(package: &str) {
    let server = Server::start();
    let mut client = dir_client(&server, package);
    for (what, stream, needle) in refused_streams(package) {
        let status = expect_code(
            client.put(futures::stream::iter(stream.clone())).await,
            Code::InvalidArgument,
            &format!("{package}: Put with {what}"),
        );
        expect_message(&status, needle, &format!("{package}: Put with {what}"));
        assert_none_stored(&mut client, &stream, &format!("{package}: {what}")).await;
    }
    // The same kind of stream, made valid, goes through: the server was not
    // refusing everything.
    let l = leaf(&format!("{package}-valid"));
    let root = proto::Directory { directories: vec![dir_entry(b"d", &l, LEAF_SIZE)], ..Default::default() };
    let resp = client.put(futures::stream::iter(vec![l.clone(), root.clone()])).await.expect("valid put").into_inner();
    assert_eq!(resp.root_digest, proto_digest(&root).to_bytes());
    assert_eq!(get(&mut client, resp.root_digest, true).await.expect("get"), vec![root, l]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_directory_puts_snix() {
    refused_directory_puts("snix").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_directory_puts_tvix() {
    refused_directory_puts("tvix").await;
}

/// Sizes following the documented formula (entries + child sizes) are
/// accepted, and stored as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documented_size_formula_is_accepted() {
    let server = Server::start();
    let mut client = dir_client(&server, "snix");
    let l = leaf("documented");
    let parent = proto::Directory {
        directories: vec![dir_entry(b"l", &l, LEAF_SIZE_DOCUMENTED)],
        files: vec![file(b"f", b"f")],
        ..Default::default()
    };
    // Documented: 2 entries + 2 = 4; deployed would be 2 × 2 + 2 = 6.
    let grandparent = proto::Directory { directories: vec![dir_entry(b"p", &parent, 4)], ..Default::default() };
    let stream = vec![l.clone(), parent.clone(), grandparent.clone()];
    let resp = client.put(futures::stream::iter(stream)).await.expect("documented sizes accepted").into_inner();
    assert_eq!(resp.root_digest, proto_digest(&grandparent).to_bytes());
    assert_eq!(
        get(&mut client, proto_digest(&parent).to_bytes(), false).await.expect("get parent"),
        vec![parent.clone()]
    );
    let all = get(&mut client, resp.root_digest, true).await.expect("recursive get");
    assert_eq!(all, vec![grandparent, parent.clone(), l.clone()]);

    // Also through our client backend, which checks sizes as it walks.
    let dirs = castore::directory_service_from_url(&server.url()).unwrap();
    let got: Vec<castore::Directory> =
        futures::TryStreamExt::try_collect(dirs.get_recursive(&proto_digest(&parent))).await.expect("client walk");
    assert_eq!(got.len(), 2);

    // The deployed formula, naturally, too; and children stored by an earlier Put.
    let parent2 = proto::Directory { directories: vec![dir_entry(b"l", &l, LEAF_SIZE)], ..Default::default() };
    let resp = client.put(futures::stream::iter(vec![parent2.clone()])).await.expect("deployed size, stored child");
    assert_eq!(resp.into_inner().root_digest, proto_digest(&parent2).to_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_get_errors() {
    let server = Server::start();
    for package in ["snix", "tvix"] {
        let mut client = dir_client(&server, package);
        let no_digest = proto::GetDirectoryRequest { by_what: None, recursive: false };
        let status =
            expect_code(collect(client.get(no_digest).await).await, Code::InvalidArgument, "Get without by_what");
        expect_message(&status, "digest", "Get without by_what");
        for recursive in [false, true] {
            let missing = B3Digest::of(format!("missing {package}").as_bytes()).to_bytes();
            expect_code(
                get(&mut client, missing, recursive).await,
                Code::NotFound,
                &format!("Get missing, recursive={recursive}"),
            );
            let short = Bytes::from(vec![7u8; 31]);
            let status = expect_code(
                get(&mut client, short, recursive).await,
                Code::InvalidArgument,
                "Get with a 31-byte digest",
            );
            expect_message(&status, "32 bytes", "Get with a 31-byte digest");
        }
    }
}

fn put_request(
    data: &[u8],
    piece: usize,
    expected: Option<&str>,
) -> tonic::Request<futures::stream::Iter<std::vec::IntoIter<proto::BlobChunk>>> {
    let chunks: Vec<proto::BlobChunk> =
        data.chunks(piece).map(|c| proto::BlobChunk { data: Bytes::copy_from_slice(c) }).collect();
    let mut req = tonic::Request::new(futures::stream::iter(chunks));
    if let Some(e) = expected {
        req.metadata_mut().insert(EXPECTED_DIGEST_HEADER, e.parse().expect("ascii header"));
    }
    req
}

async fn stat(
    client: &mut BlobServiceClient<Transport>,
    digest: &B3Digest,
) -> Result<proto::StatBlobResponse, tonic::Status> {
    let req = proto::StatBlobRequest { digest: digest.to_bytes(), send_chunks: true, send_bao: false };
    client.stat(req).await.map(tonic::Response::into_inner)
}

async fn read(client: &mut BlobServiceClient<Transport>, digest: Bytes) -> Result<Vec<u8>, tonic::Status> {
    let msgs = collect(client.read(proto::ReadBlobRequest { digest }).await).await?;
    Ok(msgs.into_iter().flat_map(|m| m.data).collect())
}

/// A Put naming a different digest in the expected-digest header is refused
/// and leaves nothing behind under either digest.
async fn mismatched_put(client: &mut BlobServiceClient<Transport>, data: &[u8], what: &str) {
    let actual = B3Digest::of(data);
    let other = B3Digest::of(format!("not the data of {what}").as_bytes());
    let status = expect_code(
        client.put(put_request(data, 100_000, Some(&other.to_string()))).await,
        Code::InvalidArgument,
        &format!("{what}: Put with a wrong expected digest"),
    );
    expect_message(&status, "mismatch", what);
    for (name, d) in [("expected", other), ("actual", actual)] {
        expect_code(
            stat(client, &d).await,
            Code::NotFound,
            &format!("{what}: Stat of the {name} digest after a refused Put"),
        );
        expect_code(
            read(client, d.to_bytes()).await,
            Code::NotFound,
            &format!("{what}: Read of the {name} digest after a refused Put"),
        );
    }
    // The same data with the right header is accepted and readable.
    let resp =
        client.put(put_request(data, 100_000, Some(&actual.to_string()))).await.expect("put with the right digest");
    assert_eq!(resp.into_inner().digest, actual.to_bytes());
    stat(client, &actual).await.expect("stat after a good put");
    assert!(read(client, actual.to_bytes()).await.expect("read after a good put") == data, "{what}: read back differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_put_with_wrong_expected_digest() {
    let server = Server::start();
    for package in ["snix", "tvix"] {
        let mut client = blob_client(&server, package);
        let small = format!("a small blob for {package}").into_bytes();
        mismatched_put(&mut client, &small, &format!("{package} single-chunk blob")).await;

        let big = Rng::new(if package == "snix" { 11 } else { 12 }).bytes(3 << 20);
        mismatched_put(&mut client, &big, &format!("{package} multi-chunk blob")).await;
        let resp = stat(&mut client, &B3Digest::of(&big)).await.expect("stat");
        assert!(resp.chunks.len() > 1, "a 3 MiB blob should be several chunks, got {}", resp.chunks.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_errors() {
    let server = Server::start();
    for package in ["snix", "tvix"] {
        let mut client = blob_client(&server, package);
        let missing = B3Digest::of(format!("missing blob {package}").as_bytes());
        expect_code(stat(&mut client, &missing).await, Code::NotFound, "Stat of a missing blob");
        expect_code(read(&mut client, missing.to_bytes()).await, Code::NotFound, "Read of a missing blob");

        let short = proto::StatBlobRequest { digest: Bytes::from(vec![1u8; 31]), send_chunks: false, send_bao: false };
        let status = expect_code(client.stat(short).await, Code::InvalidArgument, "Stat with a 31-byte digest");
        expect_message(&status, "32 bytes", "Stat with a 31-byte digest");
        let status = expect_code(
            read(&mut client, Bytes::from(vec![1u8; 31])).await,
            Code::InvalidArgument,
            "Read with a 31-byte digest",
        );
        expect_message(&status, "32 bytes", "Read with a 31-byte digest");

        let data = format!("header that is not a digest, {package}").into_bytes();
        let data = data.as_slice();
        let status = expect_code(
            client.put(put_request(data, 8, Some("not-a-digest"))).await,
            Code::InvalidArgument,
            "Put with an unparsable expected digest",
        );
        expect_message(&status, EXPECTED_DIGEST_HEADER, "Put with an unparsable expected digest");
        expect_code(stat(&mut client, &B3Digest::of(data)).await, Code::NotFound, "blob of a refused Put");

        // How the client splits its stream has no meaning.
        let resp = client.put(put_request(data, 3, None)).await.expect("put in 3-byte pieces");
        assert_eq!(resp.into_inner().digest, B3Digest::of(data).to_bytes());
        assert_eq!(read(&mut client, B3Digest::of(data).to_bytes()).await.expect("read"), data);
    }
}
