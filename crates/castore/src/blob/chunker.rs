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
    /// chunk, when `data` holds at least `max` bytes, or when it is less
    /// than `data.len()` (see [`Chunker::cut_known`]).
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, n) =
            cut(data, self.min, self.avg, self.max, self.mask_s, self.mask_l, self.mask_s << 1, self.mask_l << 1);
        n
    }
}

impl Chunker {
    /// Length of the first chunk of `data` if more data after it cannot
    /// change it: `data` is the end of the blob (`last`), holds at least
    /// `max` bytes, or has a boundary before its end (the scan looks at the
    /// bytes in order and stops at the first boundary, so a boundary found in
    /// a prefix is the boundary of the whole).
    pub fn cut_known(&self, data: &[u8], last: bool) -> Option<usize> {
        let n = self.cut(data);
        (last || n < data.len() || data.len() >= self.max).then_some(n)
    }

    /// Ends of the successive chunks of `data` (offsets from its start) as
    /// far as they are known; see [`Chunker::cut_known`].
    pub fn boundaries(&self, data: &[u8], last: bool) -> Vec<usize> {
        let mut out = Vec::with_capacity(data.len() / self.avg + 1);
        let mut pos = 0;
        while pos < data.len() {
            let Some(n) = self.cut_known(&data[pos..], last) else { break };
            pos += n;
            out.push(pos);
        }
        out
    }
}

impl Default for Chunker {
    /// min 64 KiB / avg 256 KiB / max 1 MiB (min = avg/4, max = 4·avg),
    /// chosen by measurement (the chunk-size table of docs/benchmarks.md,
    /// `scripts/bench`). The data stored again after a small edit grows with
    /// the average (one to two chunks per edit), while every chunk costs the
    /// embedded store a file, a writeback and a task: smaller averages cost
    /// clearly more CPU per GiB and ingest more slowly; each step larger
    /// stores twice as much again per edit for some ingest speed (how much
    /// varies with the disk), which the embedded store does not need to meet
    /// its targets with this default.
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

    #[test]
    fn boundaries_of_a_prefix_are_boundaries_of_the_whole() {
        let c = Chunker::new(4 << 10, 16 << 10, 64 << 10);
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let all = c.boundaries(&data, true);
        assert_eq!(*all.last().unwrap(), data.len());
        for len in (1..400).map(|k| k * 5003) {
            let part = c.boundaries(&data[..len], false);
            assert_eq!(part[..], all[..part.len()], "prefix of {len} bytes");
            // Whatever is left unknown is less than one maximal chunk.
            assert!(len - part.last().copied().unwrap_or(0) < c.max);
        }
    }
}
