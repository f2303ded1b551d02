//! NAR ingest and rendering: the reference vectors (tests/vectors), a tree
//! dumped by the real `nix-store --dump`, and malformed NARs, each refused
//! with its own problem and leaving no directory behind.
use std::{
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_trait::async_trait;
use castore::{B3Digest, BlobService, Directory, DirectoryService, Node};
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use store::nar::{self, IngestOptions, Ingested, NarError, NarReader, Problem};
use testkit::{Rng, Vector, hex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

// ---------------------------------------------------------------- helpers

/// The reference vectors, each with its NAR's bytes.
fn vectors() -> Vec<(Vector, Vec<u8>)> {
    testkit::vectors()
        .into_iter()
        .map(|v| {
            let bytes = std::fs::read(&v.nar).expect("vector NAR");
            (v, bytes)
        })
        .collect()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A blob and a directory service, in memory or in a redb file.
struct Stores {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    _tmp: Option<tempfile::TempDir>,
}

fn memory() -> Stores {
    Stores {
        blobs: castore::blob_service_from_url("memory:").unwrap(),
        dirs: castore::directory_service_from_url("memory:").unwrap(),
        _tmp: None,
    }
}

fn embedded() -> Stores {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("redb:{}", tmp.path().join("castore.redb").display());
    Stores {
        blobs: castore::blob_service_from_url(&addr).unwrap(),
        dirs: castore::directory_service_from_url(&addr).unwrap(),
        _tmp: Some(tmp),
    }
}

/// A reader handing out 1 to `max` bytes per read, so that every token
/// and every length field is split across reads somewhere.
struct Trickle<'a> {
    data: &'a [u8],
    rng: Rng,
    max: u64,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let max = self.max;
        let n = (1 + self.rng.below(max) as usize).min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

async fn ingest_bytes(nar: &[u8], stores: &Stores) -> Result<Ingested, NarError> {
    nar::ingest(&mut &nar[..], stores.blobs.as_ref(), stores.dirs.as_ref()).await
}

async fn render(node: &Node, stores: &Stores) -> Vec<u8> {
    let mut reader = NarReader::open(node, stores.blobs.clone(), stores.dirs.clone()).await.unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len() as u64, reader.len());
    out
}

/// Reads `len` bytes at `offset` through a seek; `limited` sets the end of
/// the range as the reader's end (reading to the end gives exactly it).
async fn range(reader: &mut NarReader, offset: u64, len: usize, limited: bool) -> Vec<u8> {
    reader.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
    if limited {
        reader.set_end(offset + len as u64);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        reader.set_end(u64::MAX);
        return out;
    }
    let mut out = vec![0; len];
    reader.read_exact(&mut out).await.unwrap();
    out
}

/// Random ranges, ranges around every 8-byte boundary of small NARs, and
/// the last bytes, each compared with the same slice of `nar`.
async fn check_ranges(node: &Node, stores: &Stores, nar: &[u8], iterations: usize, seed: u64) {
    let mut reader = NarReader::open(node, stores.blobs.clone(), stores.dirs.clone()).await.unwrap();
    assert_eq!(reader.len(), nar.len() as u64);
    let size = nar.len() as u64;
    let mut rng = Rng::new(seed);
    let check = async |reader: &mut NarReader, offset: u64, len: usize| {
        let got = range(reader, offset, len, offset % 2 == 1).await;
        assert!(got == nar[offset as usize..offset as usize + len], "range {offset}+{len} of {size}");
    };
    for _ in 0..iterations {
        let offset = rng.below(size);
        let room = size - offset;
        // Mostly short ranges, some long ones.
        let len = match rng.below(4) {
            0 => rng.below(room.min(16)) + 1,
            1 => rng.below(room.min(4096)) + 1,
            _ => rng.below(room) + 1,
        };
        check(&mut reader, offset, len as usize).await;
    }
    if size <= 4096 {
        for offset in 0..size {
            check(&mut reader, offset, (size - offset).min(9) as usize).await;
        }
    }
    check(&mut reader, size - 1, 1).await;
    check(&mut reader, size.saturating_sub(17), 17.min(size as usize)).await;
    // A full read from a seek point, and a read at the end gives nothing.
    let from = size / 3;
    reader.seek(std::io::SeekFrom::Start(from)).await.unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.unwrap();
    assert!(rest == nar[from as usize..]);
    assert_eq!(reader.read(&mut [0; 8]).await.unwrap(), 0);
}

// ---------------------------------------------------------------- vectors

async fn vectors_round_trip(make: fn() -> Stores) {
    let stores = make();
    for (v, bytes) in vectors() {
        let got = ingest_bytes(&bytes, &stores).await.unwrap();
        assert_eq!(got.node, testkit::castore_node!(&v.root), "vector {}: root entry", v.name);
        assert_eq!(got.nar_size, v.nar_size, "vector {}: NarSize", v.name);
        assert_eq!(hex(&got.nar_sha256), v.nar_sha256_hex, "vector {}: NarHash", v.name);

        // Token and length fields split across reads give the same result.
        let trickled = make();
        let mut reader = Trickle { data: &bytes, rng: Rng::new(7), max: 13 };
        let again = nar::ingest(&mut reader, trickled.blobs.as_ref(), trickled.dirs.as_ref()).await.unwrap();
        assert_eq!(again, got, "vector {}: read in small pieces", v.name);

        assert!(render(&got.node, &stores).await == bytes, "vector {}: rendered NAR differs", v.name);
        let (size, hash) = nar::calculate(&got.node, stores.blobs.clone(), stores.dirs.clone()).await.unwrap();
        assert_eq!((size, hex(&hash)), (v.nar_size, v.nar_sha256_hex.clone()), "vector {}: calculate", v.name);
        check_ranges(&got.node, &stores, &bytes, 300, v.nar_size).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_into_memory() {
    vectors_round_trip(memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_into_embedded_store() {
    vectors_round_trip(embedded).await;
}

// ---------------------------------------------------------------- a real dump

fn write(path: &Path, data: &[u8], executable: bool) {
    std::fs::write(path, data).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Many small files, nested directories, a multi-MiB file of several
/// chunks, files around the small-file limit, executables, symlinks, odd
/// names, an empty directory and two identical subtrees.
fn generate_tree(root: &Path) {
    let mut rng = Rng::new(0x5eed);
    std::fs::create_dir(root).unwrap();
    write(&root.join("big.bin"), &rng.bytes(6 << 20 | 12345), false);
    write(&root.join("big-exec"), &rng.bytes(2 << 20), true);
    for (i, size) in [0usize, 1, 7, 8, 9, 4095, 4096, 65_537, (256 << 10) - 1, 256 << 10, (256 << 10) + 1, 700_001]
        .into_iter()
        .enumerate()
    {
        write(&root.join(format!("size-{i:02}")), &rng.bytes(size), i % 3 == 0);
    }
    let many = root.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..600 {
        let size = rng.below(3000) as usize;
        write(&many.join(format!("f{i:04}")), &rng.bytes(size), i % 17 == 0);
    }
    let mut deep = root.join("deep");
    for level in 0..12 {
        std::fs::create_dir(&deep).unwrap();
        write(&deep.join(format!("at-{level}")), format!("level {level}\n").as_bytes(), false);
        deep = deep.join(format!("d{level}"));
    }
    std::fs::create_dir(root.join("empty")).unwrap();
    for twin in ["twin-a", "twin-b"] {
        let dir = root.join(twin);
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        write(&dir.join("inner/same"), b"identical subtrees\n", false);
        std::os::unix::fs::symlink("../same-target", dir.join("link")).unwrap();
    }
    let odd = root.join("names");
    std::fs::create_dir(&odd).unwrap();
    for name in
        [&b"a b"[..], b"-dash", b".hidden", b"Z", b"a", b"aa", b"a.b", "ünïcödé".as_bytes(), b"\xff\xfe", b"x=y"]
    {
        write(&odd.join(std::ffi::OsStr::from_bytes(name)), name, false);
    }
    write(&odd.join("n".repeat(255)), b"longest name", false);
    std::os::unix::fs::symlink("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-target", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("many/f0001", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("deep", root.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("t".repeat(4095), root.join("long-link")).unwrap();
}

fn nix_store_dump(path: &Path) -> Vec<u8> {
    let out = Command::new("nix-store").arg("--dump").arg(path).output().unwrap_or_else(|e| {
        panic!("nix-store must be installed for this test (CI installs Nix; it is never skipped): {e}")
    });
    assert!(out.status.success(), "nix-store --dump failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

async fn dump_round_trip(make: fn() -> Stores) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    generate_tree(&tree);
    let dumped = nix_store_dump(&tree);
    assert!(dumped.len() > 10 << 20);

    let stores = make();
    let got = ingest_bytes(&dumped, &stores).await.unwrap();
    assert_eq!(got.nar_size, dumped.len() as u64);
    assert_eq!(got.nar_sha256, sha256(&dumped));
    // The same tree ingested from the filesystem gives the same root.
    let from_fs = castore::fs::ingest(stores.blobs.as_ref(), stores.dirs.as_ref(), &tree).await.unwrap();
    assert_eq!(got.node, from_fs);

    assert!(render(&got.node, &stores).await == dumped, "rendered NAR differs from nix-store --dump");
    let (size, hash) = nar::calculate(&got.node, stores.blobs.clone(), stores.dirs.clone()).await.unwrap();
    assert_eq!((size, hash), (dumped.len() as u64, sha256(&dumped)));
    check_ranges(&got.node, &stores, &dumped, 400, 99).await;

    // Restored by the real nix-store from our rendering: the same tree.
    let restored = tmp.path().join("restored");
    let mut child = Command::new("nix-store")
        .arg("--restore")
        .arg(&restored)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nix-store");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&render(&got.node, &stores).await).unwrap();
    }
    assert!(child.wait().unwrap().success());
    assert!(nix_store_dump(&restored) == dumped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_store_dump_round_trips_through_memory() {
    dump_round_trip(memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_store_dump_round_trips_through_embedded_store() {
    dump_round_trip(embedded).await;
}

// ---------------------------------------------------------------- malformed NARs

/// A NAR tree for building test input, valid or not.
enum T<'a> {
    File(&'a [u8], bool),
    Link(&'a [u8]),
    Dir(Vec<(&'a [u8], T<'a>)>),
}

fn s(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn node(out: &mut Vec<u8>, t: &T) {
    s(out, b"(");
    s(out, b"type");
    match t {
        T::File(data, exec) => {
            s(out, b"regular");
            if *exec {
                s(out, b"executable");
                s(out, b"");
            }
            s(out, b"contents");
            s(out, data);
        }
        T::Link(target) => {
            s(out, b"symlink");
            s(out, b"target");
            s(out, target);
        }
        T::Dir(entries) => {
            s(out, b"directory");
            for (name, child) in entries {
                for t in [&b"entry"[..], b"(", b"name", name, b"node"] {
                    s(out, t);
                }
                node(out, child);
                s(out, b")");
            }
        }
    }
    s(out, b")");
}

fn build(t: &T) -> Vec<u8> {
    let mut out = Vec::new();
    s(&mut out, b"nix-archive-1");
    node(&mut out, t);
    out
}

/// Tokens written as given, after the magic (for NARs no tree describes).
fn raw(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    s(&mut out, b"nix-archive-1");
    for t in tokens {
        s(&mut out, t);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("needle present")
}

/// A token as bytes (to find its offset in a NAR).
fn tok(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    s(&mut out, bytes);
    out
}

/// Counts closures put, to show that a refused NAR stores no directory.
struct Recording {
    inner: Arc<dyn DirectoryService>,
    puts: AtomicUsize,
}

#[async_trait]
impl DirectoryService for Recording {
    async fn get(&self, digest: &B3Digest) -> castore::Result<Option<Directory>> {
        self.inner.get(digest).await
    }
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'static, castore::Result<Directory>> {
        self.inner.get_recursive(root)
    }
    async fn put_closure(&self, dirs: Vec<Directory>) -> castore::Result<B3Digest> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_closure(dirs).await
    }
}

async fn ingest_recorded(nar: &[u8], options: &IngestOptions) -> (Result<Ingested, NarError>, Recording) {
    let blobs = castore::blob_service_from_url("memory:").unwrap();
    let dirs = Recording { inner: castore::directory_service_from_url("memory:").unwrap(), puts: AtomicUsize::new(0) };
    let result = nar::ingest_with(&mut &nar[..], blobs.as_ref(), &dirs, options).await;
    (result, dirs)
}

/// Ingests `nar`, which must be refused as malformed, and returns where and
/// why; checks that no directory was put.
async fn refused_with(nar: &[u8], options: &IngestOptions) -> (u64, Problem) {
    let (result, dirs) = ingest_recorded(nar, options).await;
    assert_eq!(dirs.puts.load(Ordering::SeqCst), 0, "a refused NAR put directories");
    match result {
        Err(NarError::Malformed { offset, problem }) => {
            let e = NarError::Malformed { offset, problem: problem.clone() };
            let msg = e.to_string();
            assert!(msg.contains(&format!("byte {offset}")), "{msg}");
            assert!(matches!(castore::Error::from(e), castore::Error::InvalidRequest(_)));
            (offset, problem)
        }
        Err(e) => panic!("expected a malformed-NAR error, got {e}"),
        Ok(i) => panic!("accepted a bad NAR: {:?}", i.node),
    }
}

async fn refused(nar: &[u8]) -> (u64, Problem) {
    refused_with(nar, &IngestOptions::default()).await
}

async fn accepted(nar: &[u8]) -> Ingested {
    let (result, dirs) = ingest_recorded(nar, &IngestOptions::default()).await;
    let got = result.unwrap_or_else(|e| panic!("refused a valid NAR: {e}"));
    assert_eq!(dirs.puts.load(Ordering::SeqCst), matches!(got.node, Node::Directory { .. }) as usize);
    got
}

fn f(data: &[u8]) -> T<'_> {
    T::File(data, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_builder_writes_what_nix_writes() {
    for (v, bytes) in vectors() {
        if v.name == "file-hello" {
            assert!(build(&f(b"hello\n")) == bytes);
        }
    }
    accepted(&build(&T::Dir(vec![(b"a", f(b"x")), (b"b", T::Link(b"a")), (b"c", T::Dir(vec![]))]))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_nars_are_refused_at_every_cut() {
    for (v, bytes) in vectors() {
        let cuts: Vec<usize> = if bytes.len() <= 4096 {
            (0..bytes.len()).collect()
        } else {
            let n = bytes.len();
            vec![0, 1, 8, 23, 24, 100, 135, 136, 137, 4096, 1 << 20, n - 17, n - 16, n - 9, n - 8, n - 1]
        };
        for cut in cuts {
            let (offset, problem) = refused(&bytes[..cut]).await;
            assert!(matches!(problem, Problem::Truncated { .. }), "{} cut at {cut}: {problem}", v.name);
            assert_eq!(offset, cut as u64, "{} cut at {cut}", v.name);
        }
    }
    // A directory NAR cut short stores no root, in either backend.
    let (v, bytes) = vectors().into_iter().find(|(v, _)| v.name == "dir-nested").unwrap();
    for stores in [memory(), embedded()] {
        for cut in [bytes.len() / 2, bytes.len() - 8] {
            let e = ingest_bytes(&bytes[..cut], &stores).await.unwrap_err();
            assert!(matches!(e.problem(), Some(Problem::Truncated { .. })));
        }
        let Node::Directory { digest, .. } = testkit::castore_node!(&v.root) else { panic!() };
        assert!(stores.dirs.get(&digest).await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_magic_is_refused() {
    let mut other = Vec::new();
    s(&mut other, b"nix-archive-2");
    node(&mut other, &f(b"x"));
    assert_eq!(refused(&other).await, (0, Problem::BadMagic));
    let mut longer = Vec::new();
    s(&mut longer, b"nix-archive-1.0");
    assert_eq!(refused(&longer).await, (0, Problem::BadMagic));
    assert_eq!(refused(b"Hello, this is not a NAR at all.").await, (0, Problem::BadMagic));
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 64]);
    assert_eq!(refused(&huge).await, (0, Problem::BadMagic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_padding_is_refused() {
    let good = build(&T::Dir(vec![(b"name", f(b"hello"))]));
    accepted(&good).await;
    // In the magic, in a keyword, in a name, in contents.
    let name_at = find(&good, &tok(b"name")[..]) + 16 + 8; // "name" keyword, then the name's length field
    let contents_at = find(&good, b"hello");
    for at in [21, 24 + 9, name_at + 4, contents_at + 5, contents_at + 7] {
        let mut bad = good.clone();
        bad[at] = 1;
        assert_eq!(refused(&bad).await, (at as u64, Problem::NonZeroPadding), "padding byte {at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_must_be_sorted_and_unique() {
    let unsorted = build(&T::Dir(vec![(b"b", f(b"1")), (b"a", f(b"2"))]));
    let (offset, problem) = refused(&unsorted).await;
    assert_eq!(offset as usize, find(&unsorted, &tok(b"a")));
    assert!(matches!(problem, Problem::Unsorted { .. }), "{problem}");
    // Byte order, not locale order: "Z" (0x5a) sorts before "a".
    accepted(&build(&T::Dir(vec![(b"Z", f(b"1")), (b"a", f(b"2"))]))).await;
    let (_, problem) = refused(&build(&T::Dir(vec![(b"a", f(b"1")), (b"Z", f(b"2"))]))).await;
    assert!(matches!(problem, Problem::Unsorted { .. }));

    for dup in
        [T::Dir(vec![(b"a", f(b"1")), (b"a", f(b"2"))]), T::Dir(vec![(b"a", T::Dir(vec![])), (b"a", T::Link(b"x"))])]
    {
        let (_, problem) = refused(&build(&dup)).await;
        assert!(matches!(problem, Problem::Duplicate { .. }), "{problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused() {
    let long = vec![b'n'; 256];
    for name in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b", &long] {
        let nar = build(&T::Dir(vec![(name, f(b"x"))]));
        let (offset, problem) = refused(&nar).await;
        assert!(matches!(problem, Problem::InvalidName { .. }), "{name:?}: {problem}");
        assert_eq!(offset, 128, "{name:?}: the name's length field");
    }
    accepted(&build(&T::Dir(vec![(&long[..255], f(b"x"))]))).await;
    // In a nested directory too.
    let (_, problem) = refused(&build(&T::Dir(vec![(b"d", T::Dir(vec![(b"..", f(b""))]))]))).await;
    assert!(matches!(problem, Problem::InvalidName { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_symlink_targets_are_refused() {
    let long = vec![b't'; 4096];
    for (target, reason) in [(&b""[..], "empty"), (b"a\0b", "contains NUL"), (&long, "longer than 4095 bytes")] {
        for nar in [build(&T::Link(target)), build(&T::Dir(vec![(b"l", T::Link(target))]))] {
            let (_, problem) = refused(&nar).await;
            assert_eq!(problem, Problem::InvalidTarget { reason }, "{target:?}");
        }
    }
    let ok = accepted(&build(&T::Link(&long[..4095]))).await;
    assert_eq!(ok.node, Node::Symlink { target: long[..4095].to_vec().into() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_lengths_are_refused() {
    let contents_len_at = |nar: &[u8]| find(nar, &tok(b"contents")) + 16;
    let good = build(&f(b"some contents"));

    // Contents length u64::MAX, and one that would overflow with padding.
    for len in [u64::MAX, u64::MAX - 3, DEFAULT_MAX + 1] {
        let mut bad = good.clone();
        let at = contents_len_at(&bad);
        bad[at..at + 8].copy_from_slice(&len.to_le_bytes());
        let (offset, problem) = refused(&bad).await;
        assert_eq!(offset, at as u64);
        assert_eq!(problem, Problem::FileTooLarge { size: len, max: DEFAULT_MAX });
    }
    // Longer than what remains: truncated, or refused at once when the size is known.
    let mut bad = good.clone();
    let at = contents_len_at(&bad);
    bad[at..at + 8].copy_from_slice(&(1u64 << 30).to_le_bytes());
    let (offset, problem) = refused(&bad).await;
    assert_eq!(
        (offset, &problem),
        (bad.len() as u64, &Problem::Truncated { needed: (1 << 30) - (bad.len() - at - 8) as u64 })
    );
    let known = IngestOptions { expected_size: Some(bad.len() as u64), ..Default::default() };
    let (offset, problem) = refused_with(&bad, &known).await;
    assert_eq!(offset, at as u64);
    assert_eq!(problem, Problem::BeyondEnd { len: 1 << 30, remaining: (bad.len() - at - 8) as u64 });
    // A configured limit.
    let small = IngestOptions { max_file_size: 5, ..Default::default() };
    let (_, problem) = refused_with(&good, &small).await;
    assert_eq!(problem, Problem::FileTooLarge { size: 13, max: 5 });

    // Name, target and keyword lengths of u64::MAX.
    let named = build(&T::Dir(vec![(b"a", f(b"x"))]));
    let mut bad = named.clone();
    bad[128..136].copy_from_slice(&u64::MAX.to_le_bytes());
    let (offset, problem) = refused(&bad).await;
    assert_eq!(offset, 128);
    assert!(matches!(problem, Problem::InvalidName { reason: "longer than 255 bytes", .. }));
    let mut bad = build(&T::Link(b"target"));
    let at = find(&bad, &tok(b"target")) + 16;
    bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(refused(&bad).await, (at as u64, Problem::InvalidTarget { reason: "longer than 4095 bytes" }));
    let mut bad = named.clone();
    bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let (offset, problem) = refused(&bad).await;
    assert_eq!(offset, 24);
    assert!(matches!(problem, Problem::Unexpected { .. }), "{problem}");
}

const DEFAULT_MAX: u64 = store::nar::DEFAULT_MAX_FILE_SIZE;

fn nested(levels: usize) -> Vec<u8> {
    let mut t = f(b"bottom");
    for _ in 0..levels {
        t = T::Dir(vec![(b"d", t)]);
    }
    build(&t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_refused() {
    let (_, problem) = refused(&nested(1000)).await;
    assert_eq!(problem, Problem::TooDeep { max: nar::DEFAULT_MAX_DEPTH });
    let (_, problem) = refused(&nested(nar::DEFAULT_MAX_DEPTH + 1)).await;
    assert_eq!(problem, Problem::TooDeep { max: nar::DEFAULT_MAX_DEPTH });
    let ok = accepted(&nested(nar::DEFAULT_MAX_DEPTH)).await;
    assert!(matches!(ok.node, Node::Directory { .. }));
    let shallow = IngestOptions { max_depth: 3, ..Default::default() };
    assert_eq!(refused_with(&nested(4), &shallow).await.1, Problem::TooDeep { max: 3 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_data_is_refused() {
    let good = build(&T::Dir(vec![(b"a", f(b"x")), (b"b", T::Dir(vec![]))]));
    let stores = memory();
    let root = ingest_bytes(&good, &stores).await.unwrap().node;
    let Node::Directory { digest, .. } = root else { panic!() };
    let close = tok(b"(");
    for tail in [&b"x"[..], &[0; 8][..], close.as_slice(), good.as_slice()] {
        let mut bad = good.clone();
        bad.extend_from_slice(tail);
        assert_eq!(refused(&bad).await, (good.len() as u64, Problem::TrailingData));
        let fresh = embedded();
        assert!(ingest_bytes(&bad, &fresh).await.is_err());
        assert!(fresh.dirs.get(&digest).await.unwrap().is_none(), "root stored despite trailing data");
    }
    // A declared size that differs.
    let known = IngestOptions { expected_size: Some(good.len() as u64 + 8), ..Default::default() };
    let (_, problem) = refused_with(&good, &known).await;
    assert_eq!(problem, Problem::SizeMismatch { expected: good.len() as u64 + 8, actual: good.len() as u64 });
    let exact = IngestOptions { expected_size: Some(good.len() as u64), ..Default::default() };
    assert!(ingest_recorded(&good, &exact).await.0.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grammar_violations_are_refused() {
    let unexpected = |p: &Problem| matches!(p, Problem::Unexpected { .. });
    let unknown = |p: &Problem| matches!(p, Problem::UnknownType(_));
    let cases: Vec<(Vec<u8>, bool)> = vec![
        (raw(&[b"(", b"type", b"fifo", b")"]), true),
        (raw(&[b"(", b"type", b"", b")"]), true),
        (raw(&[b"(", b"kind", b"regular"]), false),
        (raw(&[b"[", b"type", b"regular"]), false),
        (raw(&[b"(", b"type", b"regular", b"executable", b"yes", b"contents", b"", b")"]), false),
        (raw(&[b"(", b"type", b"regular", b"data", b"", b")"]), false),
        (raw(&[b"(", b"type", b"regular", b"contents", b"x", b"contents", b"y", b")"]), false),
        (raw(&[b"(", b"type", b"symlink", b"contents", b"x", b")"]), false),
        (raw(&[b"(", b"type", b"directory", b"entry", b"(", b"node", b"x"]), false),
        (raw(&[b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"node", b")"]), false),
        (raw(&[b"(", b"type", b"directory", b"file", b")"]), false),
        (raw(&[b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"(", b"type"]), false),
    ];
    for (nar, is_type) in cases {
        let (_, problem) = refused(&nar).await;
        assert!(if is_type { unknown(&problem) } else { unexpected(&problem) }, "{problem}");
    }
    // A file node missing its closing token, followed by more input.
    let mut bad = build(&f(b"x"));
    let close = tok(b")");
    bad.truncate(bad.len() - close.len());
    bad.extend_from_slice(&tok(b"extra"));
    let (_, problem) = refused(&bad).await;
    assert!(unexpected(&problem), "{problem}");
}

// ---------------------------------------------------------------- errors of the stores

/// A blob service whose puts fail.
struct FailingBlobs;

#[async_trait]
impl BlobService for FailingBlobs {
    async fn stat(&self, _: &B3Digest) -> castore::Result<Option<Vec<castore::ChunkMeta>>> {
        Ok(None)
    }
    async fn open_read(&self, _: &B3Digest) -> castore::Result<Option<castore::BlobReader>> {
        Ok(None)
    }
    async fn put(&self, r: &mut (dyn AsyncRead + Send + Unpin), _: Option<&B3Digest>) -> castore::Result<B3Digest> {
        let _ = r.read(&mut [0; 1024]).await;
        Err(castore::Error::Storage("disk on fire".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_are_not_malformed_input() {
    let dirs = castore::directory_service_from_url("memory:").unwrap();
    let big = vec![7u8; 3 << 20];
    for nar in [build(&f(b"small")), build(&T::Dir(vec![(b"big", f(&big))]))] {
        let e = nar::ingest(&mut &nar[..], &FailingBlobs, dirs.as_ref()).await.unwrap_err();
        assert!(matches!(e, NarError::Storage(castore::Error::Storage(_))), "{e}");
        assert!(matches!(castore::Error::from(e), castore::Error::Storage(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_the_wrong_size_are_errors_not_corruption() {
    let stores = memory();
    let data = vec![42u8; 300_000];
    let digest = stores.blobs.put_bytes(data.clone().into(), None).await.unwrap();
    let exact = Node::File { digest, size: data.len() as u64, executable: false };
    let nar = render(&exact, &stores).await;
    assert!(nar == build(&f(&data)));

    for size in [data.len() as u64 + 1, data.len() as u64 - 1, 1 << 30] {
        let node = Node::File { digest, size, executable: false };
        let mut reader = NarReader::open(&node, stores.blobs.clone(), stores.dirs.clone()).await.unwrap();
        let mut out = Vec::new();
        let e = reader.read_to_end(&mut out).await.unwrap_err();
        assert!(e.to_string().contains(&digest.to_string()), "{e}");
        assert!(nar::calculate(&node, stores.blobs.clone(), stores.dirs.clone()).await.is_err());
    }
    // A missing blob, and a missing directory.
    let missing = Node::File { digest: B3Digest::of(b"not stored"), size: 10, executable: true };
    let e = nar::calculate(&missing, stores.blobs.clone(), stores.dirs.clone()).await.unwrap_err();
    assert!(matches!(e, castore::Error::NotFound(_)), "{e}");
    let no_dir = Node::Directory { digest: B3Digest::of(b"no such directory"), size: 0 };
    let e = NarReader::open(&no_dir, stores.blobs.clone(), stores.dirs.clone()).await.unwrap_err();
    assert!(matches!(e, castore::Error::NotFound(_)), "{e}");
}
