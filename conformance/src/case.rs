//! The cases: shapes, options, seeds, and inputs built for a purpose (hard labels, ties).

use std::fmt;

use msloss_core::rng::RandomInputs;
use msloss_core::{Fidelity, Input, LengthKind, Params, Real, Reduction, Scores, Shape};

/// One request: shape, kind of scores, mask, parameters, and the seed of its random inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// The shape.
    pub shape: Shape,
    /// Logits (else probabilities).
    pub logits: bool,
    /// With the mask of the random inputs (else none).
    pub mask: bool,
    /// The parameters.
    pub params: Params,
    /// The seed of [`RandomInputs`].
    pub seed: u64,
}

impl Case {
    /// A case.
    pub const fn new(shape: Shape, logits: bool, mask: bool, params: Params, seed: u64) -> Self {
        Self { shape, logits, mask, params, seed }
    }

    /// Its random inputs in `T`.
    pub fn data<T: Real>(&self) -> RandomInputs<T> {
        RandomInputs::new(self.shape, self.seed)
    }

    /// Its input on `data` (of its shape): the logits or the probabilities, the image, the
    /// mask if it has one.
    ///
    /// # Panics
    /// When `data` does not fit the shape.
    pub fn input<'a, T: Real>(&self, data: &'a RandomInputs<T>) -> Input<'a, T> {
        let scores = if self.logits { Scores::Logits(&data.logits[..]) } else { Scores::Probs(&data.probs[..]) };
        let mask = self.mask.then_some(&data.mask[..]);
        Input::new(self.shape, scores, &data.image, mask).unwrap_or_else(|e| panic!("{self}: {e}"))
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        write!(
            f,
            "{} {} {} {} {} λ={} w={} δ={:e} ε_c={:e} seed {}",
            self.shape,
            if self.logits { "logits" } else { "probabilities" },
            if self.mask { "masked" } else { "unmasked" },
            p.length.name(),
            p.reduction.name(),
            p.lambda,
            p.fidelity_weight,
            p.delta,
            p.centroid_eps,
            self.seed
        )
    }
}

/// A shape `[B, N, C, D, H, W]`.
///
/// # Panics
/// On an invalid shape (a zero extent).
pub fn shape(b: usize, n: usize, c: usize, d: usize, h: usize, w: usize) -> Shape {
    Shape::new(b, n, c, d, h, w).unwrap_or_else(|e| panic!("test shape: {e}"))
}

/// The four pairings of kind of scores and mask: `(logits, mask)`.
pub const SCORES_AND_MASKS: [(bool, bool); 4] = [(true, false), (false, true), (true, true), (false, false)];

/// Shapes that exercise every path: 2D and 3D, odd sizes, a single row, a single column, a
/// depth-only volume, a thin volume, one class, more channels than 4, rows longer than 16 and
/// not a multiple of 16, batches of more than one sample.
pub fn feature_shapes() -> Vec<Shape> {
    vec![
        shape(2, 3, 2, 1, 13, 11), // odd sizes, two samples
        shape(1, 2, 1, 1, 1, 17),  // a single row, longer than 16
        shape(1, 4, 3, 1, 9, 1),   // a single column
        shape(2, 2, 3, 3, 5, 7),   // 3D
        shape(1, 5, 1, 4, 3, 2),   // 3D, thin
        shape(2, 3, 2, 5, 4, 37),  // 3D, rows longer than a register and not a multiple of 16
        shape(1, 2, 5, 1, 6, 5),   // more channels than the specialised kernels
        shape(2, 3, 2, 1, 17, 23), // 2D, odd, two samples
        shape(3, 4, 3, 1, 1, 31),  // single rows, three samples
        shape(2, 2, 1, 6, 1, 1),   // a depth-only volume
        shape(1, 1, 5, 1, 4, 4),   // one class
    ]
}

/// Every length kind × reduction × scores kind × mask on each of `shapes` (`every`), or a
/// rotation through them that takes two of the combinations per shape and every option
/// somewhere (`!every`); λ = 0.3, so that the length term matters.
pub fn feature_cases(shapes: &[Shape], every: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 10;
    for (i, &s) in shapes.iter().enumerate() {
        for length in LengthKind::ALL {
            for reduction in [Reduction::Sum, Reduction::Mean] {
                for (j, (logits, mask)) in SCORES_AND_MASKS.into_iter().enumerate() {
                    seed += 1;
                    // The combination's number, `0..24`; a rotation keeps two of them per shape.
                    let k = (length as usize * 2 + reduction as usize) * 4 + j;
                    if every || k == (5 * i) % 24 || k == (5 * i + 13) % 24 {
                        let params = Params::default().with_lambda(0.3).with_length(length).with_reduction(reduction);
                        cases.push(Case::new(s, logits, mask, params, seed));
                    }
                }
            }
        }
    }
    cases
}

/// Other parameters: fidelity weight, a large ε_c (the gradient correction matters), a tiny δ,
/// λ = 0, w = 0; each with logits and probabilities, masked, 3D with two samples.
pub fn parameter_cases() -> Vec<Case> {
    let s = shape(2, 3, 2, 2, 6, 9);
    let all = [
        Params { fidelity_weight: 0.25, centroid_eps: 0.5, ..Params::default() },
        Params { length: LengthKind::Charbonnier, delta: 1e-4, lambda: 2.0, ..Params::default() },
        Params { lambda: 0.0, ..Params::default() },
        Params { fidelity_weight: 0.0, lambda: 1.0, length: LengthKind::L2, ..Params::default() },
        Params { fidelity_weight: 0.0, lambda: 1.0, ..Params::default() },
        Params { fidelity_weight: 2.5, lambda: 0.0, ..Params::default() },
        Params { centroid_eps: 0.5, delta: 0.3, length: LengthKind::Charbonnier, ..Params::default() },
    ];
    let mut cases = Vec::new();
    for (i, params) in all.into_iter().enumerate() {
        for logits in [true, false] {
            cases.push(Case::new(s, logits, true, params, 100 + i as u64));
        }
    }
    cases
}

/// The local fidelity ([`Fidelity::Local`]): σ from under a pixel to past the image's height, 2D
/// and 3D, one and three channels, logits and probabilities, masked and not, every length kind,
/// the mean reduction, and a large ε_c (its correction of the gradient matters).
pub fn local_cases() -> Vec<Case> {
    let local = |sigma| Params::default().with_lambda(0.05).with_fidelity(Fidelity::Local { sigma });
    [
        (shape(1, 2, 1, 1, 7, 9), true, false, local(1.0)),
        (shape(2, 3, 3, 1, 6, 8), false, true, local(0.7)),
        (shape(1, 3, 2, 1, 9, 6), true, true, local(2.5).with_length(LengthKind::Charbonnier)),
        (shape(1, 2, 1, 1, 5, 11), true, false, local(8.0).with_length(LengthKind::L2)),
        (shape(1, 2, 2, 4, 5, 6), true, true, local(1.2)),
        (shape(2, 2, 1, 3, 4, 5), false, false, local(0.9).with_reduction(Reduction::Mean)),
        (shape(1, 3, 1, 6, 7, 5), true, true, Params { centroid_eps: 0.5, ..local(1.5) }),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (s, logits, mask, params))| Case::new(s, logits, mask, params, 200 + i as u64))
    .collect()
}

/// Larger images with many rows, classes up to 21, and a volume of many slices (40×30×16).
pub fn larger_cases() -> Vec<Case> {
    let params = Params::default().with_lambda(0.05);
    let mut cases: Vec<Case> = [shape(2, 21, 3, 1, 24, 37), shape(1, 2, 3, 1, 97, 64), shape(1, 3, 1, 5, 17, 19)]
        .into_iter()
        .enumerate()
        .map(|(i, s)| Case::new(s, true, i == 1, params, 7 + i as u64))
        .collect();
    let volume = shape(1, 2, 1, 40, 30, 16);
    cases.extend([(true, false), (false, true)].map(|(logits, mask)| Case::new(volume, logits, mask, params, 11)));
    cases
}

/// The cases whose bits must not change from run to run, thread count to thread count,
/// instruction set to instruction set: three samples of a volume; an image that splits into
/// a few blocks of rows; every length kind, scores kind and mask on a volume of rows longer
/// than 16; a larger image with a mask and the mean reduction.
pub fn determinism_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let s = shape(3, 4, 3, 2, 19, 23);
    for (length, logits) in [(LengthKind::L1, true), (LengthKind::Charbonnier, false)] {
        cases.push(Case::new(s, logits, true, Params::default().with_length(length), 5));
    }
    cases.push(Case::new(shape(1, 3, 2, 1, 64, 96), true, false, Params::default(), 6));
    let s = shape(2, 5, 3, 2, 9, 37);
    for length in LengthKind::ALL {
        for (logits, mask) in [(true, false), (false, true), (true, true)] {
            cases.push(Case::new(s, logits, mask, Params::default().with_lambda(0.2).with_length(length), 3));
        }
    }
    let params = Params::default().with_lambda(0.05).with_length(LengthKind::Charbonnier);
    cases.push(Case::new(shape(2, 3, 2, 1, 100, 90), true, true, params.with_reduction(Reduction::Mean), 10));
    // The local fidelity, on rows longer than any vector and with remainders (its convolutions and
    // sweeps are compiled per instruction set too).
    let local = |sigma| Params::default().with_lambda(0.05).with_fidelity(Fidelity::Local { sigma });
    cases.push(Case::new(shape(2, 3, 2, 2, 19, 37), true, true, local(2.5), 11));
    cases.push(Case::new(shape(1, 2, 3, 1, 40, 53), false, false, local(6.0).with_length(LengthKind::Charbonnier), 12));
    cases
}

/// Cases for where the gradient buffer starts: rows whose alignment differs from row to row,
/// rows wider than a kernel's window of lane sums, rows of one chunk; many classes.
pub fn alignment_cases() -> Vec<Case> {
    let shapes =
        [shape(2, 5, 3, 1, 16, 45), shape(1, 3, 2, 1, 8, 300), shape(1, 21, 1, 1, 4, 512), shape(1, 4, 3, 1, 16, 9)];
    let mut cases = Vec::new();
    for (i, &s) in shapes.iter().enumerate() {
        for (logits, mask, length) in [
            (true, false, LengthKind::L1),
            (true, true, LengthKind::L2),
            (false, true, LengthKind::L1),
            (false, false, LengthKind::L2),
        ] {
            let params = Params::default().with_lambda(0.05).with_length(length);
            cases.push(Case::new(s, logits, mask, params, 40 + i as u64));
        }
    }
    cases
}

/// A sequence for one workspace: larger, smaller, 3D, other `N` and `C`, other kinds of scores,
/// masks, length kinds and reductions, and back.
pub fn workspace_cases() -> Vec<Case> {
    let shapes =
        [shape(2, 5, 3, 1, 30, 31), shape(1, 2, 1, 1, 4, 5), shape(2, 3, 2, 4, 6, 7), shape(1, 7, 4, 1, 9, 40)];
    let mut cases: Vec<Case> = shapes
        .into_iter()
        .enumerate()
        .map(|(i, s)| Case::new(s, i % 2 == 0, i != 1, Params::default(), i as u64))
        .collect();
    let (a, c) = (shape(1, 2, 1, 1, 12, 13), shape(2, 3, 2, 3, 4, 5));
    let p1 = Params::default().with_lambda(0.05);
    let p2 = p1.with_length(LengthKind::L2).with_reduction(Reduction::Mean);
    for (s, logits, mask, p) in
        [(a, true, false, p1), (c, false, true, p2), (a, true, false, p2), (a, true, false, p1), (c, false, true, p1)]
    {
        cases.push(Case::new(s, logits, mask, p, 11));
    }
    cases
}

/// Hard labels: probabilities of exactly 0 and 1 in blocks, so that many neighbours are
/// exactly equal (an L1 difference of exactly zero). Shape `[2, 3, 2, 2, 9, 10]`.
pub fn one_hot<T: Real>() -> (Shape, RandomInputs<T>) {
    let s = shape(2, 3, 2, 2, 9, 10);
    let mut data = RandomInputs::<T>::new(s, 77);
    let sp = s.spatial();
    for b in 0..s.batch() {
        for px in 0..sp {
            // Blocky labels: the class of a pixel depends on its coarse position.
            let hot = (px / 7 + b) % s.classes();
            for n in 0..s.classes() {
                data.probs[(b * s.classes() + n) * sp + px] = if n == hot { T::one() } else { T::zero() };
            }
        }
    }
    (s, data)
}

/// Blocky logits: runs of pixels with exactly equal scores, so that neighbouring softmax
/// outputs are exactly equal (an L1 difference of zero, whose sign a fast path cannot take
/// from its own rounding and must recompute), including regions where every class ties.
/// Shape `[2, 4, 2, 2, 9, 37]`.
pub fn tied_logits<T: Real>() -> (Shape, RandomInputs<T>) {
    let s = shape(2, 4, 2, 2, 9, 37);
    let mut data = RandomInputs::<T>::new(s, 78);
    let sp = s.spatial();
    for b in 0..s.batch() {
        for px in 0..sp {
            let hot = (px / 5 + b) % (s.classes() + 1);
            for n in 0..s.classes() {
                // `hot == N`: every class ties.
                let z = if n == hot { 2.5 } else { -0.5 * (n % 2) as f64 };
                data.logits[(b * s.classes() + n) * sp + px] =
                    T::from_f64_lossy(if hot == s.classes() { 0.25 } else { z });
            }
        }
    }
    (s, data)
}

/// A confident network's logits ([`RandomInputs::confident`], gap 3, noise 1e-6):
/// softmax outputs within `f32`'s rounding of each other on most pairs, over several blocks of
/// rows. (At a gap of 12, `1 − y` keeps few of `f32`'s digits, and so does the gradient.)
/// Shape `[1, 3, 1, 1, 96, 80]`.
pub fn confident_logits<T: Real>() -> (Shape, RandomInputs<T>) {
    let s = shape(1, 3, 1, 1, 96, 80);
    (s, RandomInputs::<T>::new(s, 79).confident(s, 3.0, 1e-6))
}

/// Ties class 0 at exactly 1/2 between the two pixels of each pair (indices in sample 0 of the
/// shape `s`): the logits `(0, 0, −200, −200, …)` at the first and `(0, −200, 0, −200, …)` at
/// the second (`e^−200` is zero in `f32` and negligible next to 2 in `f64`). Only class 0 ties:
/// a tie of every class would cancel in the softmax's Jacobian.
pub fn tie_class_zero<T: Real>(data: &mut RandomInputs<T>, s: Shape, pairs: &[(usize, usize)]) {
    let sp = s.spatial();
    for &(a, b) in pairs {
        for n in 0..s.classes() {
            let (za, zb) = match n {
                0 => (0.0, 0.0),
                1 => (0.0, -200.0),
                2 => (-200.0, 0.0),
                _ => (-200.0, -200.0),
            };
            data.logits[n * sp + a] = T::from_f64_lossy(za);
            data.logits[n * sp + b] = T::from_f64_lossy(zb);
        }
    }
}

/// Ties (zero L1 differences) only at the ends of rows, which a flux loop handles apart from
/// the interior: the W pair of the first column, and the H pairs of the first and last
/// columns ([`tie_class_zero`]). Shape `[1, 3, 2, 1, 6, 20]`.
pub fn tied_row_ends<T: Real>() -> (Shape, RandomInputs<T>) {
    let s = shape(1, 3, 2, 1, 6, 20);
    let mut data = RandomInputs::<T>::new(s, 5);
    let w = 20;
    tie_class_zero(&mut data, s, &[(w, w + 1), (3 * w, 4 * w), (3 * w + w - 1, 4 * w + w - 1)]);
    (s, data)
}

/// Ties (zero L1 differences) only along D, between a pixel and the same pixel of the next
/// slice, amid random logits (no W or H pair ties with them): inside rows, where a chunked
/// kernel takes each flux's sign from the difference's sign bit and must find the tie by a test
/// of the pixel, and at rows' ends ([`tie_class_zero`]). Shape `[1, 4, 2, 3, 4, 64]`.
pub fn tied_slices<T: Real>() -> (Shape, RandomInputs<T>) {
    let s = shape(1, 4, 2, 3, 4, 64);
    let mut data = RandomInputs::<T>::new(s, 6);
    let (w, hw) = (64, 4 * 64);
    let pairs = [(w + 30, w + 30 + hw), (hw + 2 * w + 45, 2 * hw + 2 * w + 45), (0, hw), (hw + 63, 2 * hw + 63)];
    tie_class_zero(&mut data, s, &pairs);
    (s, data)
}

/// Near-coincident centroids: weak random logits (standard deviation 1) on a uniform image, so
/// that the logit gradient is a small difference of large per-class distances. Shape
/// `[2, 4, 3, 1, 96, 80]`.
pub fn near_coincident_centroids<T: Real>() -> (Shape, RandomInputs<T>) {
    let s = shape(2, 4, 3, 1, 96, 80);
    let mut data = RandomInputs::<T>::new(s, 11);
    let weak = T::from_f64_lossy(1.5);
    data.logits.iter_mut().for_each(|z| *z /= weak);
    (s, data)
}

/// The same values in `f64` (exact: every `T` widens exactly).
pub fn widen<T: Real>(data: &RandomInputs<T>) -> RandomInputs<f64> {
    let wide = |v: &[T]| v.iter().map(|x| x.to_f64_lossless()).collect::<Vec<f64>>();
    RandomInputs {
        logits: wide(&data.logits),
        probs: wide(&data.probs),
        image: wide(&data.image),
        mask: wide(&data.mask),
    }
}
