//! How records map to objects: their names, and the envelope around the
//! values of tables that can change.
use bytes::Bytes;
use data_encoding::HEXLOWER;
use object_store::{PutPayload, path::Path};

use crate::{Error, Result, kv::Table};

/// Whether a table's values are stored as they are. The castore's own
/// tables are content-addressed and never change, so their objects hold
/// just the value (a chunk object is the chunk); every other table may hold
/// mutable records, which need the envelope.
pub(super) fn is_raw(table: Table) -> bool {
    matches!(table, Table::CHUNKS | Table::BLOBS | Table::DIRECTORIES)
}

/// The name of the object holding `key`: `k` and the key in lower-case hex.
/// Hex keeps byte order (so a prefix scan is a listing from an offset), and
/// the `k` gives the empty key a name.
pub(super) fn object_name(key: &[u8]) -> String {
    format!("k{}", HEXLOWER.encode(key))
}

/// The key an object name holds, or `None` for objects that are not records.
pub(super) fn key_of(path: &Path) -> Option<Bytes> {
    let hex = path.filename()?.strip_prefix('k')?;
    HEXLOWER.decode(hex.as_bytes()).ok().map(Bytes::from)
}

/// `prefix/…/table/name`.
pub(super) fn path(prefix: &[String], table: Table, name: Option<&str>) -> Path {
    Path::from_iter(prefix.iter().map(String::as_str).chain([table.name()]).chain(name))
}

/// For a prefix scan from `prefix` (keys in hex): the object name to list
/// after (exclusive), so the first name listed is the first that can start
/// with `"k" + hex(prefix)`. Each name is `k` and an even number of hex
/// digits, so the name that sorts just before every name starting with
/// `k…d` is `k…` followed by the digit before `d` and a letter after `f`
/// (or just `k…` when `d` is `0`: names with an odd count of digits do not
/// exist).
pub(super) fn list_after(prefix: &[u8]) -> String {
    let mut hex = object_name(prefix);
    match hex.pop() {
        None | Some('k') => "j".to_owned(),
        Some('0') => hex,
        Some(last) => {
            hex.push(if last == 'a' { '9' } else { (last as u8 - 1) as char });
            hex.push('g');
            hex
        }
    }
}

/// Length of the envelope's header: a tag byte and the writer's nonce.
pub(super) const NONCE: usize = 16;
const HEADER: usize = 1 + NONCE;
const PRESENT: u8 = 1;
const DELETED: u8 = 0;

/// An enveloped object: the value (`None` for a tombstone) and the nonce
/// of the write that stored it. The nonce makes every write distinct, so a
/// writer that lost its answer can tell whether the object is its own.
pub(super) struct Envelope {
    pub value: Option<Bytes>,
    pub nonce: [u8; NONCE],
}

pub(super) fn encode(value: Option<&Bytes>, nonce: &[u8; NONCE]) -> PutPayload {
    let mut header = Vec::with_capacity(HEADER);
    header.push(if value.is_some() { PRESENT } else { DELETED });
    header.extend_from_slice(nonce);
    // The value goes as its own part: not copied.
    PutPayload::from_iter([Bytes::from(header)].into_iter().chain(value.cloned()))
}

pub(super) fn decode(path: &Path, bytes: Bytes) -> Result<Envelope> {
    let corrupt = || Error::Storage(format!("object {path} is not a storefront record"));
    if bytes.len() < HEADER {
        return Err(corrupt());
    }
    let nonce = bytes[1..HEADER].try_into().expect("sized");
    let value = match bytes[0] {
        PRESENT => Some(bytes.slice(HEADER..)),
        DELETED if bytes.len() == HEADER => None,
        _ => return Err(corrupt()),
    };
    Ok(Envelope { value, nonce })
}

/// A fresh random nonce.
pub(super) fn nonce() -> [u8; NONCE] {
    let mut n = [0; NONCE];
    getrandom::fill(&mut n).expect("the OS random source");
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_key_order_and_list_from_the_prefix() {
        let keys: [&[u8]; 9] = [b"", b"\x00", b"\x00\x00", b"\x01", b"a", b"a\x00", b"ab", b"\x9f\xff", b"\xff"];
        let names: Vec<String> = keys.iter().map(|k| object_name(k)).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        for k in keys {
            assert_eq!(key_of(&Path::from(format!("p/t/{}", object_name(k)))).as_deref(), Some(k));
        }
        assert_eq!(key_of(&Path::from("p/t/other")), None);
        assert_eq!(key_of(&Path::from("p/t/kx1")), None);

        // Every name at or after the prefix's own name sorts after the
        // offset, and every name before it sorts at or before it.
        let all: Vec<Vec<u8>> = (0..=255u8).flat_map(|a| [vec![a], vec![a, 0], vec![a, 0xff]]).collect();
        for prefix in [&b""[..], b"\x00", b"\x0a", b"\xa0", b"\xaa", b"\x9f", b"ab", b"\xff", b"\x10\x00"] {
            let after = list_after(prefix);
            let first = object_name(prefix);
            assert!(after < first, "{prefix:x?}: {after} < {first}");
            for key in &all {
                let name = object_name(key);
                if name >= first {
                    assert!(name > after, "{prefix:x?}: {name} not listed");
                } else {
                    assert!(name <= after, "{prefix:x?}: {name} listed before {first}");
                }
            }
        }
    }

    #[test]
    fn envelope_round_trip() {
        let path = Path::from("t/k00");
        let n = nonce();
        assert_ne!(n, nonce(), "nonces differ");
        let bytes = |p: PutPayload| Bytes::from(p.into_iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>());
        let e = decode(&path, bytes(encode(Some(&Bytes::from_static(b"v")), &n))).unwrap();
        assert_eq!((e.value.as_deref(), e.nonce), (Some(&b"v"[..]), n));
        let e = decode(&path, bytes(encode(Some(&Bytes::new()), &n))).unwrap();
        assert_eq!(e.value.as_deref(), Some(&b""[..]), "empty is a value");
        let e = decode(&path, bytes(encode(None, &n))).unwrap();
        assert_eq!(e.value, None);
        assert!(decode(&path, Bytes::from_static(b"short")).is_err());
        assert!(decode(&path, Bytes::from(vec![7; HEADER])).is_err());
    }
}
