//! How a call is cut into work: blocks of rows, and the per-thread scratch they need.

use msloss_core::Shape;

/// Lanes per chunk: the kernels work on 16 values at a time in every ISA (one AVX-512 register
/// of `f32`, two of AVX2, sixteen scalars), so sums land in the same lanes everywhere.
pub(crate) const L: usize = 16;
/// Pixels a block aims at: a block's rows of every class stay in a core's second-level cache.
const BLOCK_PIXELS: usize = 16_384;
/// Inputs smaller than this many blocks a sample get smaller blocks, so threads still share them.
const MIN_BLOCKS: usize = 4;
/// A volume's block starts by computing the length's fluxes of the slice before it, so by
/// default it spans several slices.
const BLOCK_SLICES: usize = 8;

/// The cut of one call: whole rows (`r = d·H + h`) of one sample per block, fixed by the shape
/// alone so that sums run in the same order for any thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) classes: usize,
    pub(crate) channels: usize,
    pub(crate) depth: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    /// Rows of a sample, `D·H`.
    pub(crate) rows: usize,
    pub(crate) rows_per_block: usize,
    pub(crate) blocks: usize,
    /// Length of a padded line: a chunk of zeros, the row rounded up to whole chunks, a chunk
    /// of zeros (a pixel's neighbours at `−1` and `W` read zeros).
    pub(crate) line: usize,
    /// Rows of probabilities a thread keeps: a row and its neighbours along H (2D) or D (3D).
    pub(crate) ring: usize,
    /// Whether pass 1 leaves the probabilities in the gradient buffer for pass 2 (logits with a
    /// gradient), rather than pass 2 computing the softmax again.
    pub(crate) cache: bool,
}

impl Plan {
    /// The plan for `shape`, with logits or probabilities, with a gradient or the energy alone.
    pub(crate) fn new(shape: Shape, logits: bool, grad: bool) -> Self {
        let [depth, height, width] = shape.spatial_dims();
        let rows = depth * height;
        let quarter = rows.div_ceil(MIN_BLOCKS);
        let mut rows_per_block = BLOCK_PIXELS.div_ceil(width).min(quarter);
        if depth > 1 {
            rows_per_block = rows_per_block.max((BLOCK_SLICES * height).min(quarter));
        }
        let rows_per_block = rows_per_block.max(1);
        Self {
            classes: shape.classes(),
            channels: shape.channels(),
            depth,
            height,
            width,
            rows,
            rows_per_block,
            blocks: rows.div_ceil(rows_per_block),
            line: L + width.div_ceil(L) * L + L,
            ring: if depth > 1 { height + 1 } else { 2 },
            cache: logits && grad,
        }
    }

    /// The rows of block `k`.
    pub(crate) fn block_rows(&self, k: usize) -> core::ops::Range<usize> {
        let start = k * self.rows_per_block;
        start..(start + self.rows_per_block).min(self.rows)
    }

    /// Where row `q` of plane `n` of sample `b` starts in a `[B, planes, D·H·W]` array (scores and
    /// gradient: `planes = N`; image: `C`; mask: `1`).
    pub(crate) fn row_start(&self, b: usize, planes: usize, n: usize, q: usize) -> usize {
        ((b * planes + n) * self.rows + q) * self.width
    }

    /// Chunks per line.
    pub(crate) fn chunks(&self) -> usize {
        self.width.div_ceil(L)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(b: usize, n: usize, c: usize, d: usize, h: usize, w: usize) -> Plan {
        Plan::new(Shape::new(b, n, c, d, h, w).expect("valid"), true, true)
    }

    #[test]
    fn only_a_softmax_with_a_gradient_is_cached() {
        let s = Shape::new(1, 3, 1, 1, 8, 8).expect("valid");
        let caches = |logits, grad| Plan::new(s, logits, grad).cache;
        assert_eq!(
            [caches(true, true), caches(true, false), caches(false, true), caches(false, false)],
            [true, false, false, false]
        );
    }

    #[test]
    fn large_images_take_blocks_of_about_16384_pixels() {
        let p = plan(2, 21, 3, 1, 512, 512);
        assert_eq!((p.rows_per_block, p.blocks, p.ring), (32, 16, 2));
        assert_eq!(p.line, 16 + 512 + 16);
        // A block of a narrow image takes whole rows, at least one.
        assert_eq!(plan(1, 2, 1, 1, 100_000, 3).rows_per_block, 5462);
        assert_eq!(plan(1, 2, 1, 1, 8, 100_000).rows_per_block, 1);
    }

    #[test]
    fn small_inputs_split_in_four() {
        let p = plan(8, 21, 3, 1, 128, 128);
        assert_eq!((p.rows_per_block, p.blocks), (32, 4));
        // Odd sizes leave a short last block.
        let p = plan(1, 3, 2, 1, 13, 11);
        assert_eq!((p.rows_per_block, p.blocks, p.block_rows(3)), (4, 4, 12..13));
        assert_eq!(plan(1, 2, 1, 1, 1, 17).blocks, 1);
    }

    #[test]
    fn volumes_take_several_slices_a_block() {
        let p = plan(1, 4, 3, 128, 128, 128);
        assert_eq!((p.rows_per_block, p.blocks, p.ring), (8 * 128, 16, 129));
        // Small volumes still split in four, mid-slice.
        let p = plan(1, 4, 2, 3, 4, 64);
        assert_eq!((p.rows_per_block, p.blocks), (3, 4));
    }

    #[test]
    fn blocks_cover_every_row_once() {
        for p in [plan(1, 2, 1, 1, 97, 64), plan(2, 3, 1, 5, 17, 19), plan(1, 2, 1, 40, 30, 16)] {
            let rows: Vec<usize> = (0..p.blocks).flat_map(|k| p.block_rows(k)).collect();
            assert_eq!(rows, (0..p.rows).collect::<Vec<_>>(), "{p:?}");
        }
    }
}
