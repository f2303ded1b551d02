//! wyrand: fast, deterministic pseudo-random bytes.

use std::io::Write;

/// wyrand: fast, deterministic pseudo-random numbers and bytes, the same
/// for a seed on every machine and run (so benchmark inputs are the same
/// from run to run), and incompressible enough that no chunk of a
/// generated blob repeats. Not for anything that needs real randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator; every seed, 0 included, gives its own sequence.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) ^ t) as u64
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf`, eight bytes per number (the last one cut short).
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut it = buf.chunks_exact_mut(8);
        for c in &mut it {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = it.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// `len` bytes, as [`Rng::fill`] makes them.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.fill(&mut out);
        out
    }

    /// Writes `size` bytes to `out`, each piece filled into `buf` (whose
    /// length sets the piece size, and with it the bytes: the same `size`
    /// and buffer length always give the same bytes).
    pub fn write(&mut self, out: &mut impl Write, size: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn sequence_is_fixed() {
        // The benchmarks' inputs depend on these exact numbers (wyrand).
        let mut rng = Rng::new(1);
        let first = [rng.next_u64(), rng.next_u64()];
        assert_eq!(first, [0xcdef_1695_e1f8_ed2c, 0x61d6_d24b_1c9a_ad40]);
        let mut bytes = [0u8; 13];
        Rng::new(1).fill(&mut bytes);
        assert_eq!(bytes[..8], first[0].to_le_bytes());
        assert_eq!(bytes[8..], first[1].to_le_bytes()[..5]);
        assert_eq!(Rng::new(1).bytes(13), bytes);
    }

    #[test]
    fn write_matches_fill() {
        let mut out = Vec::new();
        Rng::new(3).write(&mut out, 20, &mut [0; 8]).unwrap();
        let mut want = Vec::new();
        let mut rng = Rng::new(3);
        for n in [8, 8, 4] {
            want.extend_from_slice(&rng.bytes(n));
        }
        assert_eq!(out, want);
    }
}
