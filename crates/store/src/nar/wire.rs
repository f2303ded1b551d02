//! The NAR token vocabulary and how a token is laid out.
pub(crate) const MAGIC: &[u8] = b"nix-archive-1";
pub(crate) const OPEN: &[u8] = b"(";
pub(crate) const CLOSE: &[u8] = b")";
pub(crate) const TYPE: &[u8] = b"type";
pub(crate) const REGULAR: &[u8] = b"regular";
pub(crate) const EXECUTABLE: &[u8] = b"executable";
pub(crate) const CONTENTS: &[u8] = b"contents";
pub(crate) const SYMLINK: &[u8] = b"symlink";
pub(crate) const TARGET: &[u8] = b"target";
pub(crate) const DIRECTORY: &[u8] = b"directory";
pub(crate) const ENTRY: &[u8] = b"entry";
pub(crate) const NAME: &[u8] = b"name";
pub(crate) const NODE: &[u8] = b"node";

/// Zero bytes after a string of `len` bytes, up to a multiple of 8.
pub(crate) const fn padding(len: u64) -> u64 {
    len.wrapping_neg() & 7
}

/// Bytes a string token of `len` bytes takes: length field, bytes, padding.
pub(crate) const fn token_len(len: u64) -> u64 {
    8 + len + padding(len)
}

/// Appends the token for `s`.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(&[0; 8][..padding(s.len() as u64) as usize]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_padded_to_eight() {
        assert_eq!([0, 1, 7, 8, 9, 16].map(padding), [0, 7, 1, 0, 7, 0]);
        assert_eq!(token_len(13), 24);
        let mut out = Vec::new();
        put_str(&mut out, MAGIC);
        assert_eq!(out.len(), 24);
        assert_eq!(&out[..8], &13u64.to_le_bytes());
        assert_eq!(&out[8..21], MAGIC);
        assert_eq!(&out[21..], &[0, 0, 0]);
    }
}
