//! `storefront fetch` from a server that lies. The double in this file is
//! a gRPC server in the test process that passes a real `storefront serve`
//! (holding a closure built with the real Nix) through, and injects one
//! fault: flipped bytes in a blob or a chunk, a reordered chunk list, a
//! directory swapped for another, entries named `..` or `a/b`, trees whose
//! symlinks point out of the target, a NarHash or a signature that does not
//! hold, a PathInfo under another name. The real server's checks never see
//! the bad data: the double serves it itself (directories as raw protobuf
//! messages), so what is tested is the fetcher's side. Every fault must
//! fail the fetch with an error that names the path and the problem, and
//! leave nothing in the target but whole, correct store paths.
mod common;

use std::{collections::HashMap, path::Path, pin::Pin, process::Output, sync::Arc};

use castore::{
    B3Digest, BlobReader, BlobService, ChunkMeta, Directory, DirectoryService, Node,
    grpc::{GrpcBlobService, GrpcDirectoryService},
    proto,
};
use common::{
    Server,
    fetch::{assert_like_store_path, assert_nothing_half_written, entries, failed, fetch, import, ok, path_named},
    nix::{Fixture, fixture},
};
use futures::{Stream, TryStreamExt};
use store::{PathInfo, PathInfoService, SigningKey, StorePath, pathinfo::GrpcPathInfoService};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

/// What the double gets wrong.
#[derive(Default)]
struct Faults {
    /// Blobs or chunks whose first byte is flipped when read.
    flip: Vec<B3Digest>,
    /// A blob (or chunk) whose read never answers.
    stall: Option<B3Digest>,
    /// A blob whose chunk list comes with its first two chunks swapped.
    reorder_chunks: Option<B3Digest>,
    /// Asked for the closure of `.0`, the double sends that of `.1`.
    swap_root: Option<(B3Digest, B3Digest)>,
    /// In the closure of `.0`, the directory `.1` is sent as the directory `.2`.
    swap_child: Option<(B3Digest, B3Digest, B3Digest)>,
    /// Closures served as these raw messages (root first).
    raw_dirs: HashMap<B3Digest, Vec<proto::Directory>>,
    /// PathInfos the real server does not have.
    extra_paths: HashMap<[u8; 20], PathInfo>,
    /// Every PathInfo is signed with this key (before any other change).
    sign_with: Option<Arc<SigningKey>>,
    /// The NarHash of this path is changed (after signing).
    flip_nar_hash: Option<[u8; 20]>,
    /// This path's PathInfo comes under another name (same digest).
    rename: Option<([u8; 20], String)>,
}

struct BadBlobs {
    real: Arc<dyn BlobService>,
    faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl BlobService for BadBlobs {
    async fn stat(&self, digest: &B3Digest) -> castore::Result<Option<Vec<ChunkMeta>>> {
        let mut chunks = self.real.stat(digest).await?;
        if self.faults.reorder_chunks == Some(*digest)
            && let Some(c) = chunks.as_mut()
        {
            c.swap(0, 1);
        }
        Ok(chunks)
    }

    async fn open_read(&self, digest: &B3Digest) -> castore::Result<Option<BlobReader>> {
        if self.faults.stall == Some(*digest) {
            std::future::pending::<()>().await;
        }
        // A whole blob is served as its chunks are (reordered, flipped), so
        // a client reading it in one call gets the same lies.
        if let Some(chunks) = self.stat(digest).await?
            && (chunks.iter().any(|c| self.faults.flip.contains(&c.digest))
                || self.faults.reorder_chunks == Some(*digest))
        {
            let mut data = Vec::new();
            for c in chunks {
                let mut chunk = Vec::new();
                self.real.open_read(&c.digest).await?.expect("chunk stored").read_to_end(&mut chunk).await?;
                if self.faults.flip.contains(&c.digest) {
                    chunk[0] ^= 1;
                }
                data.extend(chunk);
            }
            return Ok(Some(Box::new(std::io::Cursor::new(data))));
        }
        let Some(mut reader) = self.real.open_read(digest).await? else { return Ok(None) };
        if !self.faults.flip.contains(digest) {
            return Ok(Some(reader));
        }
        let mut data = Vec::new();
        reader.read_to_end(&mut data).await?;
        data[0] ^= 1;
        Ok(Some(Box::new(std::io::Cursor::new(data))))
    }

    async fn put(
        &self,
        reader: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
        expected: Option<&B3Digest>,
    ) -> castore::Result<B3Digest> {
        self.real.put(reader, expected).await
    }
}

/// The directory service at the protobuf level, so it can send what a
/// `Directory` could never hold.
struct BadDirs {
    real: Arc<dyn DirectoryService>,
    faults: Arc<Faults>,
}

type DirStream = Pin<Box<dyn Stream<Item = Result<proto::Directory, Status>> + Send>>;

#[tonic::async_trait]
impl proto::directory_service_server::DirectoryService for BadDirs {
    type GetStream = DirStream;

    async fn get(&self, req: Request<proto::GetDirectoryRequest>) -> Result<Response<DirStream>, Status> {
        let req = req.into_inner();
        let Some(proto::get_directory_request::ByWhat::Digest(raw)) = req.by_what else {
            return Err(Status::invalid_argument("no digest"));
        };
        let digest = B3Digest::try_from(&raw[..]).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut msgs = self.closure(digest).await?;
        if !req.recursive {
            msgs.truncate(1);
        }
        Ok(Response::new(Box::pin(futures::stream::iter(msgs.into_iter().map(Ok)))))
    }

    async fn put(
        &self,
        _: Request<tonic::Streaming<proto::Directory>>,
    ) -> Result<Response<proto::PutDirectoryResponse>, Status> {
        Err(Status::unimplemented("a read-only double"))
    }
}

/// The batch call, as storefront serves it (each directory once), with the
/// same faults.
#[tonic::async_trait]
impl proto::batch::directory_batch_service_server::DirectoryBatchService for BadDirs {
    type GetStream = DirStream;

    async fn get(&self, req: Request<proto::batch::GetDirectoriesRequest>) -> Result<Response<DirStream>, Status> {
        let mut sent = std::collections::HashSet::new();
        let mut out = Vec::new();
        for raw in req.into_inner().root_digests {
            let root = B3Digest::try_from(&raw[..]).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if sent.contains(&root) {
                continue;
            }
            for msg in self.closure(root).await? {
                // Raw faults may not even decode: those go out as they are.
                if let Ok(d) = Directory::try_from(msg.clone())
                    && !sent.insert(d.digest())
                {
                    continue;
                }
                out.push(msg);
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(out.into_iter().map(Ok)))))
    }
}

impl BadDirs {
    /// The closure of `digest` as the double sends it, root first.
    async fn closure(&self, digest: B3Digest) -> Result<Vec<proto::Directory>, Status> {
        Ok(match self.faults.raw_dirs.get(&digest) {
            Some(raw) => raw.clone(),
            None => {
                let asked = match self.faults.swap_root {
                    Some((of, with)) if of == digest => with,
                    _ => digest,
                };
                let dirs: Vec<Directory> = self.real.get_recursive(&asked).try_collect().await?;
                let mut msgs = Vec::new();
                for d in dirs {
                    match self.faults.swap_child {
                        Some((root, child, with)) if root == digest && d.digest() == child => {
                            let other = self.real.get(&with).await?.expect("the swapped-in directory exists");
                            msgs.push(other.to_proto());
                        }
                        _ => msgs.push(d.to_proto()),
                    }
                }
                msgs
            }
        })
    }
}

struct BadPaths {
    real: Arc<dyn PathInfoService>,
    faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl PathInfoService for BadPaths {
    async fn get(&self, digest: &[u8; 20]) -> castore::Result<Option<PathInfo>> {
        let info = match self.faults.extra_paths.get(digest) {
            Some(info) => Some(info.clone()),
            None => self.real.get(digest).await?,
        };
        let Some(mut info) = info else { return Ok(None) };
        if let Some(key) = &self.faults.sign_with {
            info.signatures.push(key.sign(&info.fingerprint("/nix/store")));
        }
        if self.faults.flip_nar_hash == Some(*digest) {
            info.nar_sha256[0] ^= 1;
        }
        if let Some((renamed, name)) = &self.faults.rename
            && renamed == digest
        {
            info.store_path = StorePath::from_parts(*digest, name).unwrap();
        }
        Ok(Some(info))
    }

    async fn put(&self, info: PathInfo) -> castore::Result<PathInfo> {
        self.real.put(info).await
    }

    fn list(&self) -> futures::stream::BoxStream<'static, castore::Result<PathInfo>> {
        self.real.list()
    }
}

/// The real server's three services, as a client sees them.
struct Real {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    paths: Arc<dyn PathInfoService>,
}

fn real(server: &Server) -> Real {
    let transport = castore::grpc::connect(&url::Url::parse(&server.url()).unwrap()).unwrap();
    Real {
        blobs: Arc::new(GrpcBlobService::new(transport.clone())),
        dirs: Arc::new(GrpcDirectoryService::new(transport.clone())),
        paths: Arc::new(GrpcPathInfoService::new(transport)),
    }
}

/// A double of `server` with `faults`, serving until dropped.
struct Double {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn double(server: &Server, faults: Faults) -> Double {
    let r = real(server);
    let faults = Arc::new(faults);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpc+http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let blobs: Arc<dyn BlobService> = Arc::new(BadBlobs { real: r.blobs.clone(), faults: faults.clone() });
    let paths: Arc<dyn PathInfoService> = Arc::new(BadPaths { real: r.paths, faults: faults.clone() });
    let bad_dirs = Arc::new(BadDirs { real: r.dirs.clone(), faults });
    // Files, directory closures and PathInfo closures come through the
    // batch calls, as from storefront itself.
    let router = tonic::transport::Server::builder()
        .add_service(castore::grpc::blob_service_server(blobs.clone()))
        .add_service(castore::grpc::blob_batch_server(blobs.clone()))
        .add_service(proto::directory_service_server::DirectoryServiceServer::from_arc(bad_dirs.clone()))
        .add_service(proto::batch::directory_batch_service_server::DirectoryBatchServiceServer::from_arc(bad_dirs))
        .add_service(store::pathinfo::path_info_batch_server(paths.clone()))
        .add_service(store::pathinfo::path_info_service_server(paths, blobs, r.dirs));
    tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move {
            let _ = stopped.await;
        },
    ));
    Double { url, _stop: stop }
}

/// `storefront fetch --store DOUBLE --store-dir DIR ARGS…`, run off the
/// async workers (the double serves on them).
async fn fetch_from(double: &Double, dir: &Path, args: &[&str]) -> Output {
    let mut all: Vec<String> =
        vec!["--store".into(), double.url.clone(), "--store-dir".into(), dir.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || fetch(&all.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

/// The shared fixture in a fresh server.
fn served() -> (&'static Fixture, Server) {
    let fx = fixture();
    let server = Server::start();
    import(&server, std::slice::from_ref(&fx.top));
    (fx, server)
}

fn store_path(abs: &str) -> StorePath {
    StorePath::from_absolute(abs, "/nix/store").unwrap()
}

/// The PathInfo of a fixture path, from the real server.
async fn info_of(real: &Real, abs: &str) -> PathInfo {
    real.paths.get(store_path(abs).digest()).await.unwrap().expect("imported")
}

/// The node at `rel` below a directory root, from the real server.
async fn node_at(real: &Real, root: &Node, rel: &str) -> Node {
    let Node::Directory { digest, .. } = root else { panic!("not a directory: {root:?}") };
    let all: HashMap<B3Digest, Directory> =
        real.dirs.get_recursive(digest).map_ok(|d| (d.digest(), d)).try_collect().await.unwrap();
    let mut node = root.clone();
    for part in rel.split('/') {
        let Node::Directory { digest, .. } = node else { panic!("{rel}: {part} is below a non-directory") };
        node = all[&digest]
            .get(&castore::Name::new(part.to_owned()).unwrap())
            .unwrap_or_else(|| panic!("no {rel}"))
            .clone();
    }
    node
}

fn file_digest(node: &Node) -> (B3Digest, u64) {
    match node {
        Node::File { digest, size, .. } => (*digest, *size),
        other => panic!("not a file: {other:?}"),
    }
}

fn dir_digest(node: &Node) -> B3Digest {
    match node {
        Node::Directory { digest, .. } => *digest,
        other => panic!("not a directory: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_faithful_double_with_signatures() {
    let (fx, server) = served();
    let key = Arc::new(SigningKey::generate("double-1").unwrap());
    let trusted = key.verifying_key().to_string();
    let tmp = tempfile::tempdir().unwrap();

    // Signed by the key we trust: everything arrives, as Nix has it.
    let signing = double(&server, Faults { sign_with: Some(key.clone()), ..Faults::default() }).await;
    let dir = tmp.path().join("signed");
    ok(fetch_from(&signing, &dir, &["--trusted-public-key", &trusted, &fx.top]).await);
    for p in &fx.paths {
        assert_like_store_path(&dir.join(Path::new(p).file_name().unwrap()), p);
    }
    // Another key: refused before anything is written.
    let other = SigningKey::generate("other-1").unwrap().verifying_key().to_string();
    let dir = tmp.path().join("other-key");
    failed(
        fetch_from(&signing, &dir, &["--trusted-public-key", &other, &fx.top]).await,
        &["no valid signature", "other-1", "double-1"],
    );
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));

    // Signed, then the NarHash changed: the signature no longer holds.
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let altered = Faults { sign_with: Some(key), flip_nar_hash: Some(*store_path(data).digest()), ..Faults::default() };
    let altered = double(&server, altered).await;
    let dir = tmp.path().join("altered");
    failed(
        fetch_from(&altered, &dir, &["--trusted-public-key", &trusted, &fx.top]).await,
        &[data, "no valid signature"],
    );
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_are_caught() {
    let (fx, server) = served();
    let r = real(&server);
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let root = info_of(&r, data).await.node;
    let (readme, _) = file_digest(&node_at(&r, &root, "share/doc/README").await);
    let (big, big_size) = file_digest(&node_at(&r, &root, "share/big.txt").await);
    let chunks = r.blobs.stat(&big).await.unwrap().expect("big.txt stored");
    assert!(chunks.len() >= 2, "big.txt ({big_size} bytes) should be chunked: {chunks:?}");
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        // A small file comes in a batch, a large one in one Read: each is
        // hashed whole and refused before its path is placed.
        ("flipped-blob", Faults { flip: vec![readme], ..Faults::default() }, "README"),
        ("flipped-chunk", Faults { flip: vec![chunks[0].digest], ..Faults::default() }, "big.txt"),
        ("reordered-chunks", Faults { reorder_chunks: Some(big), ..Faults::default() }, "big.txt"),
    ];
    for (name, faults, needle) in cases {
        let d = double(&server, faults).await;
        let dir = tmp.path().join(name);
        failed(fetch_from(&d, &dir, &[&fx.top]).await, &[data, needle, "read as"]);
        assert_nothing_half_written(&dir, &["-sf-fixture-data"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_directories_are_caught() {
    let (fx, server) = served();
    let r = real(&server);
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let app = path_named(&fx.paths, "-sf-fixture-app");
    let data_root = info_of(&r, data).await.node;
    let app_root = info_of(&r, app).await.node;
    let share = dir_digest(&node_at(&r, &data_root, "share").await);
    let app_lib = dir_digest(&node_at(&r, &app_root, "lib").await);
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "swapped-root",
            Faults { swap_root: Some((dir_digest(&data_root), dir_digest(&app_root))), ..Faults::default() },
            "as root",
        ),
        (
            "swapped-child",
            Faults { swap_child: Some((dir_digest(&data_root), share, app_lib)), ..Faults::default() },
            "no earlier directory refers to",
        ),
    ];
    for (name, faults, needle) in cases {
        let d = double(&server, faults).await;
        let dir = tmp.path().join(name);
        failed(fetch_from(&d, &dir, &[&fx.top]).await, &[data, needle]);
        assert_nothing_half_written(&dir, &["-sf-fixture-data"]);
    }
}

/// A PathInfo of our own making, for a directory root.
fn crafted_info(seed: u8, name: &str, root: &proto::Directory, references: &[&PathInfo]) -> PathInfo {
    let dir = Directory::try_from(root.clone());
    let (digest, size) = match dir {
        Ok(d) => (d.digest(), d.size()),
        // Not a valid directory: its digest as sent, a plausible size.
        Err(_) => (B3Digest::of(&prost::Message::encode_to_vec(root)), 2),
    };
    PathInfo {
        store_path: StorePath::from_parts([seed; 20], name).unwrap(),
        node: Node::Directory { digest, size },
        references: references.iter().map(|r| r.store_path.clone()).collect(),
        nar_size: 4096,
        nar_sha256: [0; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn escaping_names_are_refused() {
    let (fx, server) = served();
    let r = real(&server);
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let root = info_of(&r, data).await.node;
    let (readme, size) = file_digest(&node_at(&r, &root, "share/doc/README").await);
    let file = |name: &str| proto::FileEntry {
        name: name.to_owned().into(),
        digest: readme.to_bytes(),
        size,
        executable: false,
    };
    let cases: [(&str, proto::Directory, &str); 3] = [
        ("dotdot", proto::Directory { files: vec![file("..")], ..Default::default() }, "`.` and `..` are not names"),
        ("slash", proto::Directory { files: vec![file("a/b")], ..Default::default() }, "contains `/`"),
        (
            "symlink-dotdot",
            proto::Directory {
                symlinks: vec![proto::SymlinkEntry { name: "..".into(), target: "/tmp".into() }],
                ..Default::default()
            },
            "`.` and `..` are not names",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, raw, needle)) in cases.into_iter().enumerate() {
        let info = crafted_info(0xe0 + i as u8, &format!("sf-evil-{name}"), &raw, &[]);
        let Node::Directory { digest, .. } = info.node else { unreachable!() };
        let faults = Faults {
            raw_dirs: HashMap::from([(digest, vec![raw])]),
            extra_paths: HashMap::from([(*info.store_path.digest(), info.clone())]),
            ..Faults::default()
        };
        let d = double(&server, faults).await;
        let scratch = tmp.path().join(name);
        let dir = scratch.join("store");
        let path = info.store_path.to_absolute("/nix/store");
        failed(fetch_from(&d, &dir, &[&path]).await, &[&path, "invalid entry name", needle]);
        assert!(entries(&dir).is_empty(), "{name}: {:?}", entries(&dir));
        assert_eq!(entries(&scratch), vec!["store"], "{name}: written next to the target");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_never_lead_out_of_the_target() {
    let (fx, server) = served();
    let r = real(&server);
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let root = info_of(&r, data).await.node;
    let (readme, size) = file_digest(&node_at(&r, &root, "share/doc/README").await);
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();

    // A valid tree whose symlinks point out of the store, one of them where
    // a later entry goes: the links are written as they are, nothing else
    // goes anywhere but inside the tree.
    let mut sub = Directory::default();
    sub.add(castore::Name::new("file").unwrap(), Node::File { digest: readme, size, executable: false }).unwrap();
    let mut top = Directory::default();
    let outside_str = outside.display().to_string();
    top.add(castore::Name::new("escape").unwrap(), Node::Symlink { target: outside_str.clone().into() }).unwrap();
    top.add(castore::Name::new("up").unwrap(), Node::Symlink { target: "../../outside".into() }).unwrap();
    top.add(castore::Name::new("zsub").unwrap(), Node::Directory { digest: sub.digest(), size: sub.size() }).unwrap();
    // Its NAR hash, from the same tree made by hand.
    let by_hand = tmp.path().join("by-hand");
    std::fs::create_dir_all(by_hand.join("zsub")).unwrap();
    std::fs::copy(Path::new(data).join("share/doc/README"), by_hand.join("zsub/file")).unwrap();
    std::os::unix::fs::symlink(&outside, by_hand.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../outside", by_hand.join("up")).unwrap();
    let (nar_size, nar_sha256) = fetch::nar_hash_of_tree(&by_hand).await.unwrap();
    let info = PathInfo { nar_size, nar_sha256, ..crafted_info(0xd0, "sf-links", &top.to_proto(), &[]) };
    let faults = Faults {
        raw_dirs: HashMap::from([(top.digest(), vec![top.to_proto(), sub.to_proto()])]),
        extra_paths: HashMap::from([(*info.store_path.digest(), info.clone())]),
        ..Faults::default()
    };
    let d = double(&server, faults).await;
    let dir = tmp.path().join("store");
    ok(fetch_from(&d, &dir, &[&info.store_path.to_absolute("/nix/store")]).await);
    let placed = dir.join(info.store_path.to_string());
    assert_eq!(std::fs::read_link(placed.join("escape")).unwrap(), outside);
    assert_eq!(std::fs::read_link(placed.join("up")).unwrap(), Path::new("../../outside"));
    assert_eq!(std::fs::read(placed.join("zsub/file")).unwrap(), b"hello\n");
    assert!(entries(&outside).is_empty(), "written outside: {:?}", entries(&outside));

    // A present path whose tree on disk is not its listing: its `lib` is a
    // symlink out of the store, where a secret lies whose digest the store
    // (knowing it) names as a file of `lib` and of a new path. The copy
    // from disk must not follow the symlink; the store does not have the
    // blob, so the fetch fails rather than copy the secret.
    let secret = b"the contents of a file the store should never see\n";
    std::fs::write(outside.join("secret"), secret).unwrap();
    let secret_file = Node::File { digest: B3Digest::of(secret), size: secret.len() as u64, executable: false };
    let mut lib = Directory::default();
    lib.add(castore::Name::new("secret").unwrap(), secret_file.clone()).unwrap();
    let mut old_root = Directory::default();
    old_root
        .add(castore::Name::new("lib").unwrap(), Node::Directory { digest: lib.digest(), size: lib.size() })
        .unwrap();
    let old = crafted_info(0xd1, "sf-present", &old_root.to_proto(), &[]);
    let mut new_root = Directory::default();
    new_root.add(castore::Name::new("copy").unwrap(), secret_file).unwrap();
    let new = crafted_info(0xd2, "sf-new", &new_root.to_proto(), &[&old]);
    let present = dir.join(old.store_path.to_string());
    std::fs::create_dir(&present).unwrap();
    std::os::unix::fs::symlink(&outside, present.join("lib")).unwrap();
    let faults = Faults {
        raw_dirs: HashMap::from([
            (old_root.digest(), vec![old_root.to_proto(), lib.to_proto()]),
            (new_root.digest(), vec![new_root.to_proto()]),
        ]),
        extra_paths: HashMap::from([(*old.store_path.digest(), old.clone()), (*new.store_path.digest(), new.clone())]),
        ..Faults::default()
    };
    let d = double(&server, faults).await;
    let new_path = new.store_path.to_absolute("/nix/store");
    failed(fetch_from(&d, &dir, &[&new_path]).await, &[&new_path, "not found"]);
    let mut want = vec![info.store_path.to_string(), old.store_path.to_string()];
    want.sort();
    assert_eq!(entries(&dir), want, "the new path must not exist, nor any temporary tree");
}

#[tokio::test(flavor = "multi_thread")]
async fn lying_path_infos_are_caught() {
    let (fx, server) = served();
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let digest = *store_path(data).digest();
    let tmp = tempfile::tempdir().unwrap();

    // A NarHash that is not the tree's: found on disk, before the rename
    // (checked with --check-nar-hash; always with trusted keys, where the
    // signature covers it, and into the host Nix store, which records it).
    let d = double(&server, Faults { flip_nar_hash: Some(digest), ..Faults::default() }).await;
    let dir = tmp.path().join("nar-hash");
    failed(
        fetch_from(&d, &dir, &["--check-nar-hash", &fx.top]).await,
        &[data, "the fetched tree's NAR is", "other contents"],
    );
    assert_nothing_half_written(&dir, &["-sf-fixture-data"]);

    // The PathInfo for data's digest, under another name: refused before
    // anything is written.
    let d = double(&server, Faults { rename: Some((digest, "sf-fixture-evil".into())), ..Faults::default() }).await;
    let dir = tmp.path().join("renamed");
    failed(fetch_from(&d, &dir, &[&fx.top]).await, &[data, "inconsistent", "sf-fixture-evil"]);
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_fetch_leaves_nothing() {
    let (fx, server) = served();
    let r = real(&server);
    let data = path_named(&fx.paths, "-sf-fixture-data");
    let root = info_of(&r, data).await.node;
    let (big, _) = file_digest(&node_at(&r, &root, "share/big.txt").await);
    let d = double(&server, Faults { stall: Some(big), ..Faults::default() }).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let child = common::storefront()
        .args(["fetch", "--store", &d.url, "--store-dir", dir.to_str().unwrap(), "-j", "1", data])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the data path's tree is being written (and waits for big.txt).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(dir.exists() && entries(&dir).iter().any(|e| e.starts_with('.'))) {
        assert!(std::time::Instant::now() < deadline, "no temporary tree appeared in {}", dir.display());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    failed(out, &["interrupted by SIGINT"]);
    assert!(entries(&dir).is_empty(), "left behind: {:?}", entries(&dir));
}
