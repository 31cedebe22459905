//! What one evaluation reads.

use num_traits::Float;

use crate::{Error, Real, Shape};

/// The network's scores: logits (softmax is applied over the classes) or probabilities.
#[derive(Debug, Clone, Copy)]
pub enum Scores<'a, T> {
    /// Logits `z`, `[B, N, D, H, W]`; `y = softmax_n(z)`. Must be finite.
    Logits(&'a [T]),
    /// Probabilities `y`, `[B, N, D, H, W]`; finite and `>= 0` (they need not sum to one).
    Probs(&'a [T]),
}

impl<'a, T> Scores<'a, T> {
    /// The underlying slice.
    pub fn data(&self) -> &'a [T] {
        match *self {
            Scores::Logits(d) | Scores::Probs(d) => d,
        }
    }
    /// Whether these are logits.
    pub fn is_logits(&self) -> bool {
        matches!(self, Scores::Logits(_))
    }
    /// `"logits"` or `"probabilities"`.
    pub fn name(&self) -> &'static str {
        if self.is_logits() { "logits" } else { "probabilities" }
    }
}

/// One evaluation's inputs: shape, scores, image and optional mask, all borrowed.
///
/// [`Input::new`] checks buffer lengths (cheap); [`Input::validate_values`] checks every value
/// (one pass over the data). Backends call the latter, or fuse equivalent checks into their
/// first pass and return the same errors.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a, T> {
    shape: Shape,
    scores: Scores<'a, T>,
    image: &'a [T],
    mask: Option<&'a [T]>,
}

impl<'a, T: Real> Input<'a, T> {
    /// Bundles the inputs after checking each buffer's length against `shape`.
    ///
    /// # Errors
    /// [`Error::BufferLength`] naming the buffer whose length is wrong.
    pub fn new(shape: Shape, scores: Scores<'a, T>, image: &'a [T], mask: Option<&'a [T]>) -> Result<Self, Error> {
        check_len(scores.name(), shape, shape.scores_len(), scores.data().len())?;
        check_len("image", shape, shape.image_len(), image.len())?;
        if let Some(m) = mask {
            check_len("mask", shape, shape.mask_len(), m.len())?;
        }
        Ok(Self { shape, scores, image, mask })
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// The scores.
    pub fn scores(&self) -> Scores<'a, T> {
        self.scores
    }
    /// The image, `[B, C, D, H, W]`.
    pub fn image(&self) -> &'a [T] {
        self.image
    }
    /// The mask, `[B, D, H, W]`, if any.
    pub fn mask(&self) -> Option<&'a [T]> {
        self.mask
    }

    /// Checks every value: scores and image finite, probabilities `>= 0`, mask in `{0, 1}`.
    ///
    /// # Errors
    /// [`Error::NonFinite`], [`Error::NegativeProbability`] or [`Error::BadMask`] for the
    /// first offending element.
    pub fn validate_values(&self) -> Result<(), Error> {
        let scores = self.scores.data();
        if let Some(index) = scores.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: self.scores.name(), index, value: scores[index].to_f64_lossless() });
        }
        if !self.scores.is_logits()
            && let Some(index) = scores.iter().position(|v| *v < T::zero())
        {
            return Err(Error::NegativeProbability { index, value: scores[index].to_f64_lossless() });
        }
        if let Some(index) = self.image.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "image", index, value: self.image[index].to_f64_lossless() });
        }
        // The limits rounded to T, and compared in T, as the backends compare them.
        let limit = T::from_f64_lossy(image_limit::<T>(self.shape.channels()));
        if let Some(index) = self.image.iter().position(|v| v.abs() > limit) {
            let (value, limit) = (self.image[index].to_f64_lossless(), limit.to_f64_lossless());
            return Err(Error::OutOfRange { what: "image", index, value, limit });
        }
        if !self.scores.is_logits() {
            let limit = T::from_f64_lossy(probability_limit::<T>());
            if let Some(index) = scores.iter().position(|v| *v > limit) {
                let (value, limit) = (scores[index].to_f64_lossless(), limit.to_f64_lossless());
                return Err(Error::OutOfRange { what: "probs", index, value, limit });
            }
        }
        if let Some(m) = self.mask
            && let Some(index) = m.iter().position(|v| *v != T::zero() && *v != T::one())
        {
            return Err(Error::BadMask { index, value: m[index].to_f64_lossless() });
        }
        Ok(())
    }

    /// The number of valid pixels `Σ_b Σ_s m_s` (the mean reduction's divisor).
    pub fn valid_count(&self) -> usize {
        match self.mask {
            Some(m) => m.iter().filter(|v| **v == T::one()).count(),
            None => self.shape.mask_len(),
        }
    }
}

/// The largest image magnitude accepted in `T` with `channels` channels, `√(MAX/(64·C))`: every
/// squared distance `‖x − c‖²` (at most `4·C·x²`) stays below `MAX/16`, so no per-pixel term of the
/// fidelity or of its gradient overflows `T` before a weight scales it.
pub fn image_limit<T: Real>(channels: usize) -> f64 {
    Float::sqrt(T::max_value().to_f64_lossless() / (64.0 * channels.max(1) as f64))
}

/// The largest probability accepted in `T`, `√(MAX/192)`: a pixel's squared differences to its
/// three neighbours (at most `12·y²`, the L2 and Charbonnier lengths) stay below `MAX/16`.
pub fn probability_limit<T: Real>() -> f64 {
    Float::sqrt(T::max_value().to_f64_lossless() / 192.0)
}

/// Checks a buffer's length against what `shape` needs.
///
/// # Errors
/// [`Error::BufferLength`].
pub(crate) fn check_len(what: &'static str, shape: Shape, expected: usize, got: usize) -> Result<(), Error> {
    if expected == got { Ok(()) } else { Err(Error::BufferLength { what, shape, expected, got }) }
}
