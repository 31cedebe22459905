//! A small seeded generator for test inputs and random check directions.
//!
//! SplitMix64 (Steele, Lea & Flood 2014): its stream is fixed forever by this code, so a seed
//! printed in a failing test or a `gradcheck` run reproduces the same tensors on any platform
//! and any version of msloss, which no general-purpose RNG crate promises across releases.

use alloc::vec::Vec;

use crate::{Real, Shape};

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        use num_traits::Float;
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        Float::sqrt(-2.0 * Float::ln(u1)) * Float::cos(core::f64::consts::TAU * u2)
    }
    /// `len` values uniform in `[lo, hi)`, in `T`.
    pub fn vec<T: Real>(&mut self, len: usize, lo: f64, hi: f64) -> Vec<T> {
        (0..len).map(|_| T::from_f64_lossy(self.range(lo, hi))).collect()
    }
}

/// Seeded random inputs for a shape: logits `N(0, scale²)`, probabilities, an image in `[0, 1)`,
/// and a mask.
#[derive(Debug, Clone)]
pub struct RandomInputs<T> {
    /// Logits, normal with standard deviation 1.5.
    pub logits: Vec<T>,
    /// Probabilities: per pixel, uniform in `[0.05, 1)` and normalised over the classes.
    pub probs: Vec<T>,
    /// Image, uniform in `[0, 1)`.
    pub image: Vec<T>,
    /// Mask: about 80% ones, the rest zeros.
    pub mask: Vec<T>,
}

impl<T: Real> RandomInputs<T> {
    /// Draws every tensor for `shape` from `seed`.
    pub fn new(shape: Shape, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let logits = (0..shape.scores_len()).map(|_| T::from_f64_lossy(1.5 * rng.normal())).collect();
        let (n_cls, sp) = (shape.classes(), shape.spatial());
        let mut probs = rng.vec::<f64>(shape.scores_len(), 0.05, 1.0);
        for b in 0..shape.batch() {
            for s in 0..sp {
                let at = |n: usize| (b * n_cls + n) * sp + s;
                let sum: f64 = (0..n_cls).map(|n| probs[at(n)]).sum();
                for n in 0..n_cls {
                    probs[at(n)] /= sum;
                }
            }
        }
        let probs = probs.into_iter().map(T::from_f64_lossy).collect();
        let image = rng.vec(shape.image_len(), 0.0, 1.0);
        let mask = (0..shape.mask_len()).map(|_| if rng.uniform() < 0.8 { T::one() } else { T::zero() }).collect();
        Self { logits, probs, image, mask }
    }

    /// These inputs with logits like a confident network's in place of the seeded ones: each
    /// pixel's class from a map of squares 32 pixels wide (a slice's classes in turn), logit `gap`
    /// for it and 0 for the others, plus the seeded logit times `noise` (0: neighbours inside a
    /// square tie exactly). With a small `noise`, L1's signs are in doubt on most pairs, where a
    /// fast backend must recompute the reference's softmax.
    pub fn confident(mut self, shape: Shape, gap: f64, noise: f64) -> Self {
        let ([_, h, w], sp, n_cls) = (shape.spatial_dims(), shape.spatial(), shape.classes());
        let label = |s: usize| ((s / w % h / 32) * w.div_ceil(32) + s % w / 32 + s / (h * w)) % n_cls;
        for (i, z) in self.logits.iter_mut().enumerate() {
            let own = if i / sp % n_cls == label(i % sp) { gap } else { 0.0 };
            *z = T::from_f64_lossy(own + noise * z.to_f64_lossless());
        }
        self
    }
}
