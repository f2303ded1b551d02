//! Nix's base-32 encoding ("nix32"), used for store path hashes and
//! `sha256:` hashes.
//!
//! It differs from RFC 4648 base32 in its alphabet (no `e o u t`) and in its
//! bit order: the string starts with the most significant bits of the
//! little-endian number the bytes form, so the last byte comes first.

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the nix32 spelling of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Encodes `bytes` as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = if i + 1 < bytes.len() { bytes[i + 1].checked_shl(8 - j as u32).unwrap_or(0) } else { 0 };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a nix32 string into exactly `N` bytes.
///
/// Fails on a wrong length, a character outside the alphabet, or set bits
/// beyond `N` bytes (so every byte string has exactly one spelling).
pub fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != encoded_len(N) {
        return None;
    }
    let mut out = [0u8; N];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u16;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let shifted = digit << j;
        out[i] |= shifted as u8;
        let carry = (shifted >> 8) as u8;
        if i + 1 < N {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// Whether `c` is in the nix32 alphabet.
pub fn is_nix32_char(c: u8) -> bool {
    ALPHABET.contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // sha256 of the empty string, as `nix-hash --type sha256 --to-base32` prints it.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let s = encode(&bytes);
        assert_eq!(s, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode::<32>(&s).unwrap().as_slice(), bytes.as_slice());
        assert_eq!(encode(&[0u8; 20]), "00000000000000000000000000000000");
        assert_eq!(encode(&[0xff]), "7z");
    }

    #[test]
    fn round_trips_and_rejects() {
        for n in 0..=40u8 {
            let bytes: Vec<u8> = (0..20u8).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let arr: [u8; 20] = bytes.clone().try_into().unwrap();
            assert_eq!(decode::<20>(&encode(&arr)), Some(arr));
        }
        assert_eq!(decode::<20>("0000000000000000000000000000000e"), None, "e is not nix32");
        assert_eq!(decode::<20>("000"), None, "wrong length");
        // 52 chars carry 260 bits; the top 4 must be zero for 32 bytes.
        assert_eq!(decode::<32>("z000000000000000000000000000000000000000000000000000"), None);
        assert_eq!(decode::<1>("8z"), None);
    }
}
