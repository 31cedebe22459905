//! Tensor shapes.

use core::fmt;

use crate::Error;

/// The shape of one evaluation: `B` samples, `N` classes, `C` image channels and a `D×H×W`
/// volume (a 2D image has `D = 1`).
///
/// Scores are `[B, N, D, H, W]`, the image `[B, C, D, H, W]`, the mask `[B, D, H, W]`, the
/// centroids `[B, N, C]`, all row-major and contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    batch: usize,
    classes: usize,
    channels: usize,
    depth: usize,
    height: usize,
    width: usize,
}

impl Shape {
    /// A validated shape.
    ///
    /// # Errors
    /// [`Error::EmptyDimension`] when an extent is zero, [`Error::TooLarge`] when an element
    /// count overflows `usize`.
    pub fn new(
        batch: usize,
        classes: usize,
        channels: usize,
        depth: usize,
        height: usize,
        width: usize,
    ) -> Result<Self, Error> {
        let s = Self { batch, classes, channels, depth, height, width };
        if [batch, classes, channels, depth, height, width].contains(&0) {
            return Err(Error::EmptyDimension { dims: [batch, classes, channels, depth, height, width] });
        }
        let too_large = |what| Error::TooLarge { shape: s, what, limit: usize::MAX as u64 };
        let spatial = depth.checked_mul(height).and_then(|v| v.checked_mul(width)).ok_or_else(|| too_large("D·H·W"))?;
        let per_sample = classes.max(channels).checked_mul(spatial).ok_or_else(|| too_large("one sample"))?;
        per_sample.checked_mul(batch).ok_or_else(|| too_large("the batch"))?;
        batch.checked_mul(classes).and_then(|v| v.checked_mul(channels)).ok_or_else(|| too_large("centroids"))?;
        Ok(s)
    }

    /// A 2D shape (`D = 1`).
    ///
    /// # Errors
    /// As [`Shape::new`].
    pub fn new_2d(batch: usize, classes: usize, channels: usize, height: usize, width: usize) -> Result<Self, Error> {
        Self::new(batch, classes, channels, 1, height, width)
    }

    /// The shape of a request given as array dimensions, the way a user hands tensors over:
    /// scores `[B,N,H,W]` or `[B,N,D,H,W]`, image `[B,C,H,W]` or `[B,C,D,H,W]`, and an optional
    /// mask `[B,H,W]` or `[B,D,H,W]` (a mask `[B,1,H,W]` / `[B,1,D,H,W]` is accepted too).
    ///
    /// # Errors
    /// [`Error::BadRank`], [`Error::DimMismatch`], [`Error::EmptyDimension`], [`Error::TooLarge`].
    pub fn from_dims(scores: &[usize], image: &[usize], mask: Option<&[usize]>) -> Result<Self, Error> {
        let spatial = |what: &'static str, l4: &'static str, l5: &'static str, d: &[usize]| match d.len() {
            4 => Ok((d[0], d[1], [1, d[2], d[3]])),
            5 => Ok((d[0], d[1], [d[2], d[3], d[4]])),
            rank => Err(Error::BadRank { what, layout4: l4, layout5: l5, rank }),
        };
        let (b, n, sp) = spatial("scores", "B,N,H,W", "B,N,D,H,W", scores)?;
        let (bi, c, spi) = spatial("image", "B,C,H,W", "B,C,D,H,W", image)?;
        let check = |what, dim, expected: usize, got: usize| {
            if expected == got { Ok(()) } else { Err(Error::DimMismatch { what, dim, expected, got }) }
        };
        check("image", "B", b, bi)?;
        for (i, dim) in ["D", "H", "W"].into_iter().enumerate() {
            check("image", dim, sp[i], spi[i])?;
        }
        if let Some(m) = mask {
            let (bm, spm) = match m.len() {
                3 => (m[0], [1, m[1], m[2]]),
                4 if scores.len() == 4 && m[1] == 1 => (m[0], [1, m[2], m[3]]),
                4 => (m[0], [m[1], m[2], m[3]]),
                5 if m[1] == 1 => (m[0], [m[2], m[3], m[4]]),
                rank => {
                    return Err(Error::BadRank { what: "mask", layout4: "B,D,H,W", layout5: "B,1,D,H,W", rank });
                }
            };
            check("mask", "B", b, bm)?;
            for (i, dim) in ["D", "H", "W"].into_iter().enumerate() {
                check("mask", dim, sp[i], spm[i])?;
            }
        }
        Self::new(b, n, c, sp[0], sp[1], sp[2])
    }

    /// `B`, the number of samples.
    pub const fn batch(&self) -> usize {
        self.batch
    }
    /// `N`, the number of classes.
    pub const fn classes(&self) -> usize {
        self.classes
    }
    /// `C`, the number of image channels.
    pub const fn channels(&self) -> usize {
        self.channels
    }
    /// `D`, the depth (1 for 2D images).
    pub const fn depth(&self) -> usize {
        self.depth
    }
    /// `H`, the height.
    pub const fn height(&self) -> usize {
        self.height
    }
    /// `W`, the width.
    pub const fn width(&self) -> usize {
        self.width
    }
    /// `D·H·W`, the pixels (voxels) of one sample.
    pub const fn spatial(&self) -> usize {
        self.depth * self.height * self.width
    }
    /// Elements of the scores (and of the gradient): `B·N·D·H·W`.
    pub const fn scores_len(&self) -> usize {
        self.batch * self.classes * self.spatial()
    }
    /// Elements of the image: `B·C·D·H·W`.
    pub const fn image_len(&self) -> usize {
        self.batch * self.channels * self.spatial()
    }
    /// Elements of the mask: `B·D·H·W`.
    pub const fn mask_len(&self) -> usize {
        self.batch * self.spatial()
    }
    /// Elements of the centroids: `B·N·C`.
    pub const fn centroids_len(&self) -> usize {
        self.batch * self.classes * self.channels
    }
    /// Whether the volume is 3D (`D > 1`).
    pub const fn is_3d(&self) -> bool {
        self.depth > 1
    }
    /// The same shape with another batch size (used to split work by sample).
    ///
    /// # Errors
    /// As [`Shape::new`].
    pub fn with_batch(&self, batch: usize) -> Result<Self, Error> {
        Self::new(batch, self.classes, self.channels, self.depth, self.height, self.width)
    }
    /// The spatial strides `[D-stride, H-stride, W-stride]` in elements within one plane.
    pub const fn spatial_strides(&self) -> [usize; 3] {
        [self.height * self.width, self.width, 1]
    }
    /// The spatial extents `[D, H, W]`.
    pub const fn spatial_dims(&self) -> [usize; 3] {
        [self.depth, self.height, self.width]
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[B={}, N={}, C={}, D={}, H={}, W={}]",
            self.batch, self.classes, self.channels, self.depth, self.height, self.width
        )
    }
}
