//! Layer tars rendered from castore, checked with GNU tar (listing and
//! extraction), by reading the headers back, against `nix-store --restore`
//! of the reference vectors, for ranges and for determinism.
use std::{
    collections::BTreeMap,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use bytes::Bytes;
use castore::{
    B3Digest, BlobService, Directory, DirectoryService, Name, Node,
    render::{Layout, LayoutReader, Segment},
};
use registry::layer::tar::{self, TarEntry};
use sha2::{Digest as _, Sha256};
use store::StorePath;
use testkit::Rng;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

// ---------------------------------------------------------------- helpers

struct Stores {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
}

fn memory() -> Stores {
    Stores {
        blobs: castore::blob_service_from_url("memory:").unwrap(),
        dirs: castore::directory_service_from_url("memory:").unwrap(),
    }
}

/// A tree to store.
enum T {
    File(Vec<u8>, bool),
    Link(Vec<u8>),
    Dir(Vec<(Vec<u8>, T)>),
}

fn file(data: &[u8]) -> T {
    T::File(data.to_vec(), false)
}

fn exe(data: &[u8]) -> T {
    T::File(data.to_vec(), true)
}

fn link(target: impl AsRef<[u8]>) -> T {
    T::Link(target.as_ref().to_vec())
}

fn dir(entries: Vec<(&[u8], T)>) -> T {
    T::Dir(entries.into_iter().map(|(n, t)| (n.to_vec(), t)).collect())
}

/// Stores `t`: its blobs, and its directories (children first) into `out`.
async fn put(t: &T, blobs: &dyn BlobService, out: &mut Vec<Directory>) -> Node {
    match t {
        T::File(data, executable) => {
            let digest = blobs.put_bytes(Bytes::copy_from_slice(data), None).await.unwrap();
            Node::File { digest, size: data.len() as u64, executable: *executable }
        }
        T::Link(target) => Node::Symlink { target: Bytes::copy_from_slice(target) },
        T::Dir(entries) => {
            let mut d = Directory::default();
            for (name, child) in entries {
                let node = Box::pin(put(child, blobs, out)).await;
                d.add(Name::new(Bytes::copy_from_slice(name)).unwrap(), node).unwrap();
            }
            let node = Node::Directory { digest: d.digest(), size: d.size() };
            out.push(d);
            node
        }
    }
}

async fn store_tree(t: &T, stores: &Stores) -> Node {
    let mut dirs = Vec::new();
    let node = put(t, stores.blobs.as_ref(), &mut dirs).await;
    if !dirs.is_empty() {
        stores.dirs.put_closure(dirs).await.unwrap();
    }
    node
}

fn store_path(n: u8, name: &str) -> StorePath {
    StorePath::from_parts([n; 20], name).unwrap()
}

async fn render(layout: Layout, stores: &Stores) -> Vec<u8> {
    let mut reader = LayoutReader::new(Arc::new(layout), stores.blobs.clone());
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len() as u64, reader.len());
    out
}

async fn layer(paths: &[(StorePath, Node)], stores: &Stores) -> Layout {
    let entries = tar::store_path_entries(paths, "/nix/store", stores.dirs.as_ref()).await.unwrap();
    tar::tar_layout(entries).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes everything under `root` writable again (directories come out
/// read-only), so that the temporary directory can be removed.
fn writable(root: &Path) {
    for entry in walk(root) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        if meta.is_dir() {
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// Every path under `root` (not `root` itself), parents first.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// What is on disk at each path under `root`: kind, mode bits and contents
/// or target.
#[derive(Debug, PartialEq, Eq)]
enum Disk {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(Vec<u8>),
}

fn read_disk(root: &Path) -> BTreeMap<Vec<u8>, Disk> {
    walk(root)
        .into_iter()
        .map(|p| {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                Disk::Link(std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
            } else if meta.is_dir() {
                Disk::Dir(mode)
            } else {
                Disk::File(mode, std::fs::read(&p).unwrap())
            };
            (p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec(), what)
        })
        .collect()
}

/// What extracting `t` at `at` must give (modes as the tar sets them).
fn expect(t: &T, at: Vec<u8>, out: &mut BTreeMap<Vec<u8>, Disk>) {
    match t {
        T::File(data, x) => {
            out.insert(at, Disk::File(if *x { 0o555 } else { 0o444 }, data.clone()));
        }
        T::Link(target) => {
            out.insert(at, Disk::Link(target.clone()));
        }
        T::Dir(entries) => {
            for (name, child) in entries {
                let mut p = at.clone();
                p.push(b'/');
                p.extend_from_slice(name);
                expect(child, p, out);
            }
            out.insert(at, Disk::Dir(0o555));
        }
    }
}

/// A ustar header read back.
#[derive(Debug)]
struct Header {
    /// prefix/name, or the pax path.
    name: Vec<u8>,
    link: Vec<u8>,
    typeflag: u8,
    mode: u32,
    size: u64,
    /// Whether a pax header came first, with its records.
    pax: Option<String>,
    /// Whether ustar's prefix field was used.
    split: bool,
}

fn cstr(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|&c| c == 0).unwrap_or(field.len())]
}

fn parse_octal(field: &[u8]) -> u64 {
    u64::from_str_radix(std::str::from_utf8(cstr(field)).unwrap().trim(), 8).unwrap()
}

/// Reads every header of `tar`, checking what each must hold: checksum,
/// magic, mtime 1, uid/gid 0, empty uname/gname, and the two zero blocks at
/// the end.
fn headers(tar: &[u8]) -> Vec<Header> {
    assert_eq!(tar.len() % 512, 0);
    assert!(tar[tar.len() - 1024..].iter().all(|&c| c == 0), "two zero blocks end the archive");
    let mut out = Vec::new();
    let mut pos = 0;
    let mut pax: Option<Vec<u8>> = None;
    while pos < tar.len() - 1024 {
        let h = &tar[pos..pos + 512];
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&c| c as u64).sum();
        assert_eq!(parse_octal(&h[148..156]), sum, "checksum at {pos}");
        assert_eq!(&h[148 + 6..156], b"\0 ");
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(&h[136..148], b"00000000001\0", "mtime 1");
        assert_eq!(&h[108..124], b"0000000\x000000000\0", "uid, gid 0");
        assert!(h[265..329].iter().all(|&c| c == 0), "uname, gname empty");
        let size = if h[124] == 0x80 {
            u64::from_be_bytes(h[128..136].try_into().unwrap())
        } else {
            parse_octal(&h[124..136])
        };
        let typeflag = h[156];
        let data_len = if typeflag == b'x' || typeflag == b'0' { size } else { 0 };
        let data = &tar[pos + 512..pos + 512 + data_len as usize];
        let next = pos + 512 + data_len.div_ceil(512) as usize * 512;
        assert!(tar[pos + 512 + data_len as usize..next].iter().all(|&c| c == 0), "zero padding");
        if typeflag == b'x' {
            assert!(pax.is_none());
            pax = Some(data.to_vec());
            pos = next;
            continue;
        }
        let prefix = cstr(&h[345..500]);
        let mut name = if prefix.is_empty() { Vec::new() } else { [prefix, b"/"].concat() };
        name.extend_from_slice(cstr(&h[..100]));
        let mut link = cstr(&h[157..257]).to_vec();
        let pax_text = pax.take().map(|records| {
            let mut rest = &records[..];
            while !rest.is_empty() {
                let sp = rest.iter().position(|&c| c == b' ').unwrap();
                let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
                let record = &rest[sp + 1..len - 1];
                assert_eq!(rest[len - 1], b'\n');
                let eq = record.iter().position(|&c| c == b'=').unwrap();
                match &record[..eq] {
                    b"path" => name = record[eq + 1..].to_vec(),
                    b"linkpath" => link = record[eq + 1..].to_vec(),
                    b"hdrcharset" => assert_eq!(&record[eq + 1..], b"BINARY"),
                    k => panic!("unexpected pax record {}", String::from_utf8_lossy(k)),
                }
                rest = &rest[len..];
            }
            String::from_utf8_lossy(&records).into_owned()
        });
        out.push(Header {
            name,
            link,
            typeflag,
            mode: parse_octal(&h[100..108]) as u32,
            size,
            pax: pax_text,
            split: !prefix.is_empty(),
        });
        pos = next;
    }
    assert!(pax.is_none(), "a pax header without its entry");
    out
}

// ---------------------------------------------------------------- the tree

/// A store path's tree with what tars find hard: empty and executable
/// files, a file of several blocks and one of several chunks, long symlink
/// targets, paths beyond 100 and 255 bytes (split into prefix and name, and
/// not), long names, deep directories, a name that is not UTF-8.
fn hard_tree(rng: &mut Rng) -> T {
    let mut bytes = |n: usize| {
        let mut v = vec![0u8; n];
        rng.fill(&mut v);
        v
    };
    let big = bytes(3 << 20);
    let mid = bytes(20_000);
    let block = bytes(512);
    let long_target = format!("../{}", "t".repeat(297));
    let c60 = "c".repeat(60);
    // Deep: 30 levels of 9-byte names, a path of about 370 bytes.
    let mut deep = dir(vec![(b"bottom", file(b"at the bottom\n"))]);
    for i in (0..30).rev() {
        deep = T::Dir(vec![(format!("level-{i:03}").into_bytes(), deep)]);
    }
    dir(vec![
        (b"bin", dir(vec![(b"hello", exe(b"#!/bin/sh\necho hello\n")), (b"sh", link("../lib/sh"))])),
        (b"empty", file(b"")),
        (b"empty-exec", exe(b"")),
        (b"empty-dir", dir(vec![])),
        (b"big", file(&big)),
        (b"mid.bin", exe(&mid)),
        (b"block", file(&block)),
        (b"link-100", link("l".repeat(100))),
        (b"link-101", link("l".repeat(101))),
        (b"link-long", link(&long_target)),
        (b"link-abs", link("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-other/bin/x")),
        ("n".repeat(200).as_bytes(), file(b"a 200-byte name\n")),
        ("d".repeat(255).as_bytes(), dir(vec![(b"f", file(b"in a 255-byte directory\n"))])),
        (
            c60.as_bytes(),
            dir(vec![(
                c60.as_bytes(),
                dir(vec![(b"split-me", file(b"fits ustar split at a slash\n")), (b"x", link(&long_target))]),
            )]),
        ),
        (b"deep", deep),
        (b"caf\xe9", file(b"latin-1 name\n")),
        ("\u{e9}t\u{e9}".as_bytes(), file(b"utf-8 name\n")),
        (["\u{fc}".repeat(60).as_bytes(), b"-\xff"].concat().as_slice(), link(b"\xfe-target")),
    ])
}

/// The store paths of the tests' layer: a tree, a file and a symlink.
async fn hard_layer(stores: &Stores) -> (Vec<(StorePath, Node)>, BTreeMap<Vec<u8>, Disk>) {
    let mut rng = Rng::new(7);
    let tree = hard_tree(&mut rng);
    let one = exe(b"#!/bin/sh\necho a file as a store path\n");
    let sym = link("/nix/store/0000000000000000000000000000000a-tree/bin/hello");
    let paths = [(1u8, "tree", &tree), (2, "single-file", &one), (3, "a-symlink", &sym)];
    let mut out = Vec::new();
    let mut want = BTreeMap::new();
    want.insert(b"nix".to_vec(), Disk::Dir(0o755));
    want.insert(b"nix/store".to_vec(), Disk::Dir(0o755));
    for (n, name, t) in paths {
        let path = store_path(n, name);
        out.push((path.clone(), store_tree(t, stores).await));
        expect(t, format!("nix/store/{path}").into_bytes(), &mut want);
    }
    (out, want)
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnu_tar_extracts_the_tree_exactly() {
    let stores = memory();
    let (paths, want) = hard_layer(&stores).await;
    let tar_bytes = render(layer(&paths, &stores).await, &stores).await;

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("layer.tar");
    std::fs::write(&file, &tar_bytes).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run(Command::new("tar").arg("-xf").arg(&file).arg("-C").arg(&out).arg("--same-permissions"));
    let got = read_disk(&out);
    writable(&out);
    for (path, what) in &want {
        assert_eq!(got.get(path), Some(what), "{}", String::from_utf8_lossy(path));
    }
    assert_eq!(
        got.len(),
        want.len(),
        "extra paths: {:?}",
        got.keys().filter(|k| !want.contains_key(*k)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnu_tar_lists_modes_owners_and_times() {
    let stores = memory();
    let (paths, want) = hard_layer(&stores).await;
    let tar_bytes = render(layer(&paths, &stores).await, &stores).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("layer.tar");
    std::fs::write(&file, &tar_bytes).unwrap();
    let listing = run(Command::new("tar")
        .args(["--list", "--verbose", "--full-time", "--numeric-owner", "--quoting-style=literal", "-f"])
        .arg(&file)
        .env("TZ", "UTC")
        .env("LC_ALL", "C"));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), want.len(), "{listing}");
    let mut seen = 0;
    for line in lines {
        // "drwxr-xr-x 0/0 0 1970-01-01 00:00:01 nix/", "… name -> target"
        let mut f = line.split_whitespace();
        let (perms, owner) = (f.next().unwrap(), f.next().unwrap());
        let (date, time) = (f.nth(1).unwrap(), f.next().unwrap());
        assert_eq!(owner, "0/0", "{line}");
        assert_eq!((date, time), ("1970-01-01", "00:00:01"), "{line}");
        let name = line.split_once(" 00:00:01 ").unwrap().1;
        let name = name.split_once(" -> ").map_or(name, |(n, _)| n);
        let Some(what) = want.get(name.trim_end_matches('/').as_bytes()) else {
            // A name that is not UTF-8 comes out mangled here.
            assert!(name.contains('\u{fffd}'), "{line}");
            continue;
        };
        seen += 1;
        let expected = match what {
            Disk::Dir(0o755) => "drwxr-xr-x",
            Disk::Dir(_) => "dr-xr-xr-x",
            Disk::File(0o555, _) => "-r-xr-xr-x",
            Disk::File(_, _) => "-r--r--r--",
            Disk::Link(_) => "lrwxrwxrwx",
        };
        assert_eq!(perms, expected, "{line}");
    }
    assert_eq!(seen + 2, want.len(), "two names are not UTF-8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_ustar_with_pax_only_where_needed() {
    let stores = memory();
    let (paths, want) = hard_layer(&stores).await;
    let layout = layer(&paths, &stores).await;
    let tar_bytes = render(layout, &stores).await;
    let hs = headers(&tar_bytes);
    assert_eq!(hs.len(), want.len());
    let mut splits = 0;
    let mut paxes = 0;
    for h in &hs {
        let is_dir = h.typeflag == b'5';
        let path = if is_dir { h.name.strip_suffix(b"/").expect("directories end in /") } else { &h.name[..] };
        let what = want.get(path).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&h.name)));
        match what {
            Disk::Dir(mode) => assert_eq!((h.typeflag, h.mode, h.size), (b'5', *mode, 0)),
            Disk::File(mode, data) => assert_eq!((h.typeflag, h.mode, h.size), (b'0', *mode, data.len() as u64)),
            Disk::Link(target) => assert_eq!((h.typeflag, h.mode, h.size, &h.link), (b'2', 0o777, 0, target)),
        }
        let needs_pax = h.link.len() > 100 || (h.name.len() > 100 && !h.split);
        assert_eq!(h.pax.is_some(), needs_pax, "{}: {:?}", String::from_utf8_lossy(&h.name), h.pax);
        if let Some(records) = &h.pax {
            paxes += 1;
            let binary = std::str::from_utf8(&h.name).is_err() || std::str::from_utf8(&h.link).is_err();
            assert_eq!(records.contains("hdrcharset=BINARY"), binary, "{records}");
        }
        if h.split {
            splits += 1;
            assert!(h.name.len() > 100 && h.name.len() <= 256);
        }
    }
    assert!(splits >= 3 && paxes >= 5, "{splits} split names, {paxes} pax headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_entries_same_bytes() {
    let stores = memory();
    let (paths, _) = hard_layer(&stores).await;
    let a = render(layer(&paths, &stores).await, &stores).await;
    // Again, with the paths and the entries in another order.
    let mut reversed = paths.clone();
    reversed.reverse();
    let mut entries = tar::store_path_entries(&reversed, "/nix/store", stores.dirs.as_ref()).await.unwrap();
    entries.reverse();
    let b = render(tar::tar_layout(entries).unwrap(), &stores).await;
    assert!(a == b);
    // In another store with the same contents.
    let other = memory();
    let (paths2, _) = hard_layer(&other).await;
    assert_eq!(paths2, paths);
    let c = render(layer(&paths2, &other).await, &other).await;
    assert!(a == c);
    let (sha, len) =
        tar::digest(LayoutReader::new(Arc::new(layer(&paths, &stores).await), stores.blobs.clone())).await.unwrap();
    assert_eq!(len, a.len() as u64);
    assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&a)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_equal_slices_of_the_whole() {
    let stores = memory();
    let (paths, _) = hard_layer(&stores).await;
    let layout = Arc::new(layer(&paths, &stores).await);
    let whole = render(
        tar::tar_layout(tar::store_path_entries(&paths, "/nix/store", stores.dirs.as_ref()).await.unwrap()).unwrap(),
        &stores,
    )
    .await;
    let size = whole.len() as u64;
    let mut reader = LayoutReader::new(layout.clone(), stores.blobs.clone());
    let mut rng = Rng::new(11);
    // Random ranges, and ranges around every segment boundary.
    let mut ranges: Vec<(u64, u64)> = (0..300)
        .map(|_| {
            let start = rng.below(size);
            let len = match rng.below(3) {
                0 => rng.below(16) + 1,
                1 => rng.below(4096) + 1,
                _ => rng.below(1 << 20) + 1,
            };
            (start, len.min(size - start))
        })
        .collect();
    for (start, _) in layout.segments() {
        for s in [start.saturating_sub(1), start] {
            ranges.push((s, 3.min(size - s)));
        }
    }
    for (i, (start, len)) in ranges.into_iter().enumerate() {
        reader.seek(std::io::SeekFrom::Start(start)).await.unwrap();
        let mut got = Vec::new();
        if i % 2 == 0 {
            reader.set_end(start + len);
            reader.read_to_end(&mut got).await.unwrap();
            reader.set_end(size);
        } else {
            got.resize(len as usize, 0);
            reader.read_exact(&mut got).await.unwrap();
        }
        assert!(got == whole[start as usize..(start + len) as usize], "{start}+{len}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_8_gib_and_more_have_base_256_sizes() {
    // Not rendered: the literal bytes are written where they belong in a
    // sparse file, the contents left as holes, for GNU tar to list.
    let digest = B3Digest::of(b"not stored");
    let sizes = [(8u64 << 30) - 1, 8 << 30, (9 << 30) + 5];
    let entries =
        sizes.iter().enumerate().map(|(i, &size)| TarEntry::file(format!("f{i}"), digest, size, false)).collect();
    let layout = tar::tar_layout(entries).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.tar");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(layout.len()).unwrap();
    for (start, seg) in layout.segments() {
        if let Segment::Bytes(b) = seg {
            std::os::unix::fs::FileExt::write_all_at(&f, &b, start).unwrap();
        }
    }
    drop(f);
    let listing = run(Command::new("tar").args(["-tvf"]).arg(&path).env("TZ", "UTC"));
    let got: Vec<u64> = listing.lines().map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap()).collect();
    assert_eq!(got, sizes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_entries_get_their_parents_and_modes() {
    let stores = memory();
    let entries = vec![
        TarEntry::symlink("bin/hello", "/nix/store/x-hello/bin/hello"),
        TarEntry::dir("tmp").with_mode(0o1777),
        TarEntry::symlink("usr/bin/env", "/nix/store/x-coreutils/bin/env"),
        TarEntry::dir("etc/"),
        TarEntry::file("etc/empty", B3Digest::of(b""), 0, false),
    ];
    let tar_bytes = render(tar::tar_layout(entries).unwrap(), &stores).await;
    let names: Vec<(String, u8, u32)> =
        headers(&tar_bytes).into_iter().map(|h| (String::from_utf8(h.name).unwrap(), h.typeflag, h.mode)).collect();
    let want = [
        ("bin/", b'5', 0o555),
        ("bin/hello", b'2', 0o777),
        ("etc/", b'5', 0o555),
        ("etc/empty", b'0', 0o444),
        ("tmp/", b'5', 0o1777),
        ("usr/", b'5', 0o555),
        ("usr/bin/", b'5', 0o555),
        ("usr/bin/env", b'2', 0o777),
    ];
    assert_eq!(names, want.map(|(n, t, m)| (n.to_owned(), t, m)));

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("farm.tar");
    std::fs::write(&file, &tar_bytes).unwrap();
    run(Command::new("tar").arg("-xf").arg(&file).arg("-C").arg(tmp.path()));
    let meta = std::fs::symlink_metadata(tmp.path().join("tmp")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o1777);
    writable(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_directories_and_blobs_are_errors() {
    let stores = memory();
    let missing = Node::Directory { digest: B3Digest::of(b"no such directory"), size: 1 };
    let e = tar::store_path_entries(&[(store_path(1, "gone"), missing)], "/nix/store", stores.dirs.as_ref())
        .await
        .unwrap_err();
    assert!(matches!(e, castore::Error::NotFound(_)), "{e}");
    let e = tar::store_path_entries(&[], "nix/store", stores.dirs.as_ref()).await.unwrap_err();
    assert!(matches!(e, castore::Error::InvalidRequest(_)), "{e}");

    let node = Node::File { digest: B3Digest::of(b"not stored"), size: 10, executable: false };
    let layout = layer(&[(store_path(2, "blob-gone"), node)], &stores).await;
    let e = tar::digest(LayoutReader::new(Arc::new(layout), stores.blobs.clone())).await.unwrap_err();
    assert!(matches!(e, castore::Error::NotFound(_)), "{e}");
}

/// Each reference vector's NAR, ingested and rendered as a layer, extracts
/// to what `nix-store --restore` makes of the NAR (contents, symlinks,
/// executable bits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_extract_like_nix_store_restore() {
    let stores = memory();
    for (i, v) in testkit::vectors().into_iter().enumerate() {
        let nar = std::fs::read(&v.nar).unwrap();
        let got = store::nar::ingest(&mut &nar[..], stores.blobs.as_ref(), stores.dirs.as_ref()).await.unwrap();
        let path = store_path(i as u8 + 1, &v.name);
        let tar_bytes = render(layer(&[(path.clone(), got.node)], &stores).await, &stores).await;

        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("layer.tar");
        std::fs::write(&file, &tar_bytes).unwrap();
        let (from_tar, from_nix) = (tmp.path().join("tar"), tmp.path().join("nix"));
        std::fs::create_dir(&from_tar).unwrap();
        run(Command::new("tar").arg("-xf").arg(&file).arg("-C").arg(&from_tar));
        std::fs::create_dir_all(from_nix.join("nix/store")).unwrap();
        let restored = from_nix.join("nix/store").join(path.to_string());
        let status = Command::new("nix-store")
            .arg("--restore")
            .arg(&restored)
            .stdin(std::fs::File::open(&v.nar).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "nix-store --restore {}", v.name);
        run(Command::new("diff").args(["-r", "--no-dereference"]).arg(&from_tar).arg(&from_nix));
        // diff compares contents and links; the executable bits too.
        let exec_bits = |root: &Path| -> BTreeMap<Vec<u8>, bool> {
            read_disk(root)
                .into_iter()
                .filter_map(|(p, d)| match d {
                    Disk::File(mode, _) => Some((p, mode & 0o100 != 0)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(exec_bits(&from_tar), exec_bits(&from_nix), "{}", v.name);
        assert_eq!(read_disk(&from_tar).len(), read_disk(&from_nix).len(), "{}", v.name);
        writable(tmp.path());
    }
}
