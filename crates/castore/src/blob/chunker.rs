//! Content-defined chunking (FastCDC 2020).
use fastcdc::v2020::{Normalization, cut, select_masks};

/// Chunk size parameters. Boundaries depend only on content, so identical
/// regions of different blobs become identical chunks (stored once).
#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// Panics unless `min <= avg <= max` within FastCDC's bounds.
    pub fn new(min: usize, avg: usize, max: usize) -> Self {
        assert!(min <= avg && avg <= max, "chunk sizes must be ordered");
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        Self { min, avg, max, mask_s, mask_l }
    }

    /// Length of the first chunk of `data`. Only meaningful for a final
    /// chunk or when `data` holds at least `max` bytes.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, n) = cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n
    }
}

impl Default for Chunker {
    /// 64 KiB / 256 KiB / 1 MiB: see docs/benchmarks.md for the measurement.
    fn default() -> Self {
        Self::new(64 << 10, 256 << 10, 1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_follow_content() {
        let c = Chunker::default();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let first = c.cut(&data);
        assert!(first >= c.min && first <= c.max);
        // A prefix inserted before the data shifts boundaries by its length only.
        let mut shifted = vec![7u8; 100];
        shifted.extend_from_slice(&data[first..]);
        let a = c.cut(&data[first..]);
        let b = c.cut(&shifted[100..]);
        assert_eq!(a, b);
    }
}
