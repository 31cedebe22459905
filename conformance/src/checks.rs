//! The checks. Each runs its cases on a subject, compares with [`Reference`] (or with another
//! subject, bit for bit) and panics with a message that names the subject, the float type, the
//! case, the element, and what came and was wanted. Each returns how many cases it compared;
//! cases a subject does not support ([`Supports`](crate::Supports)) are skipped.
//!
//! Most checks take any [`Subject`]; those that need the backend itself (the gradient checker,
//! caller-owned output buffers) take a [`Tested`] backend.

use msloss_core::gradcheck::{self, Options};
use msloss_core::rng::RandomInputs;
use msloss_core::{
    Backend, Energy, Error, Fidelity, Input, LengthKind, Outputs, Params, Real, Reduction, Reference, Scores, Shape,
};

use crate::case::{self, Case, shape};
use crate::{Failure, Outcome, Subject, Tested, Tolerance};

/// The reference's energy, gradient and centroids.
///
/// # Errors
/// The reference's error for an invalid request.
pub fn reference<T: Real>(input: &Input<'_, T>, params: &Params) -> Result<Outcome<T>, Error> {
    let shape = input.shape();
    let mut grad = vec![T::nan(); shape.scores_len()];
    let mut centroids = vec![T::nan(); shape.centroids_len()];
    let out = Outputs { grad: Some(&mut grad), centroids: Some(&mut centroids) };
    let energy = Reference.evaluate(input, params, out, &mut Reference.workspace())?;
    Ok(Outcome { energy, grad, centroids: Some(centroids) })
}

/// `"<subject> <float> <what>: <case>"`, the head of every message.
fn label<T: Real, S: Subject<T> + ?Sized>(subject: &S, what: &str, case: &Case) -> String {
    format!("{} {} {what}: {case}", subject.name(), T::NAME)
}

/// Asserts two energies are the same bits (the parts only where the subject reports them).
fn assert_same_energy<T: Real>(label: &str, what: &str, got: Energy<T>, want: Energy<T>, parts: bool) {
    let bits = |e: Energy<T>| {
        let all = [e.fidelity, e.length, e.total].map(|v| v.to_f64_lossless().to_bits());
        if parts { all.to_vec() } else { vec![all[2]] }
    };
    assert!(bits(got) == bits(want), "{label}: {what}: energy {got:?}, want {want:?}");
}

/// One case on `data` (inputs of the case's shape, perhaps built for a purpose): the subject's
/// energy, gradient and centroids against the reference within the subject's tolerance, and
/// its energy alone the same bits as the energy that came with the gradient. Returns the
/// subject's outcome, or `None` when the subject does not support the case.
///
/// # Panics
/// When the subject refuses the case or disagrees with the reference.
pub fn agrees_with_reference<T: Real, S: Subject<T> + ?Sized>(
    subject: &mut S,
    case: &Case,
    data: &RandomInputs<T>,
    what: &str,
) -> Option<Outcome<T>> {
    let tol = subject.tolerance();
    agrees_within(subject, case, data, what, tol)
}

/// [`agrees_with_reference`] held to `tol` instead of the subject's own tolerance.
fn agrees_within<T: Real, S: Subject<T> + ?Sized>(
    subject: &mut S,
    case: &Case,
    data: &RandomInputs<T>,
    what: &str,
    tol: Tolerance,
) -> Option<Outcome<T>> {
    let supports = subject.supports();
    if !supports.admits(case) {
        return None;
    }
    let label = label(subject, what, case);
    let input = case.input(data);
    let want = reference(&input, &case.params).unwrap_or_else(|e| panic!("{label}: the reference refuses: {e}"));
    let got = subject.evaluate(&input, &case.params).unwrap_or_else(|f| panic!("{label}: refused: {f}"));
    if supports.energy_parts {
        tol.energy(&label, got.energy, want.energy);
    } else {
        tol.total(&label, got.energy.total, want.energy);
    }
    tol.slices("gradient", &label, &got.grad, &want.grad);
    if supports.centroids {
        let c = got.centroids.as_deref().unwrap_or_else(|| panic!("{label}: no centroids"));
        tol.slices("centroids", &label, c, want.centroids.as_deref().unwrap_or_default());
    }
    let alone = subject.energy(&input, &case.params).unwrap_or_else(|f| panic!("{label}: energy alone refused: {f}"));
    assert_same_energy(
        &label,
        "energy alone against energy with the gradient",
        alone,
        got.energy,
        supports.energy_parts,
    );
    Some(got)
}

/// Each case on its own random inputs against the reference ([`agrees_with_reference`]).
pub fn compare_all<T: Real, S: Subject<T> + ?Sized>(subject: &mut S, cases: &[Case], what: &str) -> usize {
    cases.iter().filter_map(|case| agrees_with_reference(subject, case, &case.data(), what)).count()
}

/// Every length kind × reduction × scores kind × mask on every shape of
/// [`case::feature_shapes`].
pub fn every_feature<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    compare_all(subject, &case::feature_cases(&case::feature_shapes(), true), "every feature")
}

/// A representative subset of [`every_feature`]: every shape, and every option somewhere
/// (for subjects that are slow to evaluate).
pub fn some_features<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    compare_all(subject, &case::feature_cases(&case::feature_shapes(), false), "some features")
}

/// Other parameters ([`case::parameter_cases`]): fidelity weight, large ε_c, tiny δ, λ = 0,
/// w = 0.
pub fn other_parameters<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    compare_all(subject, &case::parameter_cases(), "other parameters")
}

/// The local fidelity ([`case::local_cases`]) against the reference.
pub fn local_fidelity<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    compare_all(subject, &case::local_cases(), "local fidelity")
}

/// Larger images ([`case::larger_cases`]): many rows, classes up to 21, a volume of many
/// slices.
pub fn larger_images<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    compare_all(subject, &case::larger_cases(), "larger images")
}

/// One-hot probabilities ([`case::one_hot`]) with every length kind, with and without the
/// mask.
pub fn one_hot_probabilities<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let (s, data) = case::one_hot::<T>();
    let mut n = 0;
    for length in LengthKind::ALL {
        for mask in [false, true] {
            let case = Case::new(s, false, mask, Params::default().with_length(length), 0);
            n += usize::from(agrees_with_reference(subject, &case, &data, "one-hot").is_some());
        }
    }
    n
}

/// The logits of `data` against the reference (λ = 0.3) for each of `lengths`, with and
/// without the mask.
fn ties<T: Real, S: Subject<T> + ?Sized>(
    subject: &mut S,
    s: Shape,
    data: &RandomInputs<T>,
    lengths: &[LengthKind],
    what: &str,
) -> usize {
    let mut n = 0;
    for &length in lengths {
        for mask in [false, true] {
            let params = Params::default().with_lambda(0.3).with_length(length);
            let case = Case::new(s, true, mask, params, 0);
            n += usize::from(agrees_with_reference(subject, &case, data, what).is_some());
        }
    }
    n
}

/// Tied logits ([`case::tied_logits`]) with every length kind, and a confident network's
/// ([`case::confident_logits`]) with L1, where the subject has
/// [`Supports::reference_l1_signs`](crate::Supports::reference_l1_signs) (some of these ties are
/// between different logits; else L2 and Charbonnier only).
pub fn tied_logits<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let (s, data) = case::tied_logits::<T>();
    if !subject.supports().reference_l1_signs {
        return ties(subject, s, &data, &[LengthKind::L2, LengthKind::Charbonnier], "tied logits");
    }
    let (sc, confident) = case::confident_logits::<T>();
    ties(subject, s, &data, &LengthKind::ALL, "tied logits")
        + ties(subject, sc, &confident, &[LengthKind::L1], "confident")
}

/// Ties at the ends of rows only ([`case::tied_row_ends`]), L1.
pub fn tied_row_ends<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let (s, data) = case::tied_row_ends::<T>();
    ties(subject, s, &data, &[LengthKind::L1], "tied row ends")
}

/// Ties along D only ([`case::tied_slices`]), L1.
pub fn tied_slices<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let (s, data) = case::tied_slices::<T>();
    ties(subject, s, &data, &[LengthKind::L1], "tied slices")
}

/// The relative bar of [`near_coincident_centroids`] for an `f32` subject whose centroids are
/// `f32` numbers between the sums and the gradient (not
/// [`Supports::centroids_beyond_f32`](crate::Supports)). There the gradient is a difference of
/// centroids about 1e-3 apart, so one `f32` rounding of a centroid (half an ulp, 3e-8 at 0.5)
/// moves it by about 1e-5 of its largest element: the wgpu backend's two ways of summing gave
/// 0.33–1.31e-5 over 16 seeds of this case, either way passing or failing 1e-5 by the luck of
/// the rounding. 3e-5 holds it to that floor with room, where 1e-5 held it to the luck.
pub const NEAR_COINCIDENT_F32: f64 = 3e-5;

/// Near-coincident centroids ([`case::near_coincident_centroids`]), with and without the
/// length term: the logit gradient stays within the bar although it is a small difference of
/// large distances (for an `f32` subject with `f32` centroids, within [`NEAR_COINCIDENT_F32`]).
pub fn near_coincident_centroids<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let (s, data) = case::near_coincident_centroids::<T>();
    let mut tol = subject.tolerance();
    if T::NAME == "f32" && !subject.supports().centroids_beyond_f32 {
        tol = tol.with_relative(tol.relative.max(NEAR_COINCIDENT_F32));
    }
    let mut n = 0;
    for params in [Params::default(), Params::default().with_lambda(0.0)] {
        let case = Case::new(s, true, false, params, 11);
        n += usize::from(agrees_within(subject, &case, &data, "near-coincident centroids", tol).is_some());
    }
    n
}

/// The subject's outcome on `case`, or a panic naming the case.
fn outcome<T: Real, S: Subject<T> + ?Sized>(
    subject: &mut S,
    case: &Case,
    data: &RandomInputs<T>,
    what: &str,
) -> Outcome<T> {
    let input = case.input(data);
    subject.evaluate(&input, &case.params).unwrap_or_else(|f| panic!("{}: refused: {f}", label(subject, what, case)))
}

/// The same bits run after run ([`case::determinism_cases`], each evaluated twice in a row).
pub fn same_bits_run_to_run<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let supports = subject.supports();
    let mut n = 0;
    for case in case::determinism_cases().iter().filter(|c| supports.admits(c)) {
        let data = case.data();
        let first = outcome(subject, case, &data, "run to run");
        let again = outcome(subject, case, &data, "run to run");
        if let Some(d) = again.first_difference(&first) {
            panic!("{}: the second run differs from the first: {d}", label(subject, "run to run", case));
        }
        n += 1;
    }
    n
}

/// Two subjects give the same bits on [`case::determinism_cases`] (thread counts, instruction
/// sets).
pub fn same_bits<T: Real, A: Subject<T> + ?Sized, B: Subject<T> + ?Sized>(a: &mut A, b: &mut B) -> usize {
    same_bits_on(a, b, &case::determinism_cases())
}

/// Two subjects give the same bits on `cases` (those both support).
pub fn same_bits_on<T: Real, A: Subject<T> + ?Sized, B: Subject<T> + ?Sized>(
    a: &mut A,
    b: &mut B,
    cases: &[Case],
) -> usize {
    let (sa, sb) = (a.supports(), b.supports());
    let mut n = 0;
    for case in cases.iter().filter(|c| sa.admits(c) && sb.admits(c)) {
        let data = case.data();
        let got = outcome(b, case, &data, "same bits");
        let want = outcome(a, case, &data, "same bits");
        if let Some(d) = got.first_difference(&want) {
            panic!("{} {}: {} differs from {}: {case}: {d}", b.name(), T::NAME, b.name(), a.name());
        }
        n += 1;
    }
    n
}

/// A workspace reused across shapes ([`case::workspace_cases`], twice over with other inputs)
/// gives the same bits as a fresh one: the whole sequence on the reused state first, then each
/// case again after [`Subject::reset`].
pub fn workspace_reuse<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let supports = subject.supports();
    let cases: Vec<Case> = (0..2u64)
        .flat_map(|round| case::workspace_cases().into_iter().map(move |c| Case { seed: c.seed + 100 * round, ..c }))
        .filter(|c| supports.admits(c))
        .collect();
    let reused: Vec<Outcome<T>> = cases.iter().map(|c| outcome(subject, c, &c.data(), "reused workspace")).collect();
    for (case, reused) in cases.iter().zip(&reused) {
        subject.reset();
        let fresh = outcome(subject, case, &case.data(), "fresh workspace");
        if let Some(d) = reused.first_difference(&fresh) {
            panic!("{}: a reused workspace differs from a fresh one: {d}", label(subject, "workspace", case));
        }
    }
    cases.len()
}

/// Refuses `input` as the reference does: the same typed error (compared through `Debug`: the
/// errors carry the offending value, and NaN != NaN), or for subjects without typed errors a
/// message that contains the reference's. Returns the reference's error, or `None` where the
/// subject does not support the input.
///
/// # Panics
/// When the reference accepts the input, or the subject accepts it or refuses it otherwise.
pub fn refuses_like_reference<T: Real, S: Subject<T> + ?Sized>(
    subject: &mut S,
    what: &str,
    input: &Input<'_, T>,
    params: &Params,
) -> Option<Error> {
    let supports = subject.supports();
    if !supports.admits_input(input) {
        return None;
    }
    let label =
        format!("{} {} {what}: {} {} {params:?}", subject.name(), T::NAME, input.shape(), input.scores().name());
    let want = match reference(input, params) {
        Ok(_) => panic!("{label}: the reference accepts it"),
        Err(e) => e,
    };
    let got: Failure = match subject.evaluate(input, params) {
        Ok(o) => panic!("{label}: accepted (energy {:?}), but the reference refuses: {want}", o.energy),
        Err(f) => f,
    };
    if supports.typed_errors {
        let e = got.error.unwrap_or_else(|| panic!("{label}: no typed error, only {:?}; want {want:?}", got.message));
        assert_eq!(format!("{e:?}"), format!("{want:?}"), "{label}: the error differs from the reference's");
    } else {
        assert!(
            got.message.contains(&want.to_string()),
            "{label}: {:?} does not say {:?}",
            got.message,
            want.to_string()
        );
    }
    Some(want)
}

/// Bad input gives the reference's errors, whatever part of the data holds the bad value:
/// non-finite scores (the first one reported), negative probabilities, a non-finite image, a
/// mask value other than 0 and 1, an empty mask under the mean reduction (and a bad value
/// before it), bad parameters; the sum over an empty mask is zero.
pub fn bad_input<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let s = shape(2, 3, 2, 1, 8, 9);
    let data = RandomInputs::<T>::new(s, 3);
    let params = Params::default();
    let mut n = 0;
    let (logits, image) = (Scores::Logits(&data.logits[..]), &data.image[..]);

    for (at, v) in [(5usize, T::nan()), (300, T::infinity()), (431, T::neg_infinity())] {
        let mut z = data.logits.clone();
        z[at] = v;
        z[at - 2] = T::nan(); // the first one is reported
        n += refuses(subject, "non-finite logits", s, Scores::Logits(&z), image, None, &params);
        n += refuses(subject, "non-finite probabilities", s, Scores::Probs(&z), image, None, &params);
    }
    let mut p = data.probs.clone();
    p[100] = T::from_f64_lossy(-0.5);
    p[200] = T::from_f64_lossy(-1.0);
    n += refuses(subject, "negative probabilities", s, Scores::Probs(&p), image, None, &params);
    let mut x = data.image.clone();
    x[77] = T::nan();
    n += refuses(subject, "non-finite image", s, logits, &x, None, &params);
    // Values whose squares overflow the type (see `msloss_core::image_limit`).
    let limit = msloss_core::image_limit::<T>(s.channels());
    let mut x = data.image.clone();
    x[60] = T::from_f64_lossy(-2.0 * limit);
    n += refuses(subject, "image beyond its limit", s, logits, &x, None, &params);
    let mut p = data.probs.clone();
    p[150] = T::from_f64_lossy(2.0 * msloss_core::probability_limit::<T>());
    n += refuses(subject, "probability beyond its limit", s, Scores::Probs(&p), image, None, &params);
    let mut m = data.mask.clone();
    m[90] = T::from_f64_lossy(0.5);
    n += refuses(subject, "mask of 0.5", s, logits, image, Some(&m), &params);
    m[90] = T::nan();
    n += refuses(subject, "mask of NaN", s, logits, image, Some(&m), &params);
    let zeros = vec![T::zero(); s.mask_len()];
    let mean = params.with_reduction(Reduction::Mean);
    let empty = Input::new(s, logits, image, Some(&zeros)).expect("lengths fit");
    if let Some(e) = refuses_like_reference(subject, "mean over an empty mask", &empty, &mean) {
        assert_eq!(e, Error::EmptyMask, "the reference's error for the mean over an empty mask");
        n += 1;
    }
    // A bad value comes before an empty mask.
    let mut z = data.logits.clone();
    z[7] = T::nan();
    n += refuses(subject, "NaN and an empty mask", s, Scores::Logits(&z), image, Some(&zeros), &mean);
    // Parameters.
    for (what, p) in [
        ("δ = 0", Params { delta: 0.0, ..params }),
        ("λ = NaN", Params { lambda: f64::NAN, ..params }),
        ("w < 0", Params { fidelity_weight: -1.0, ..params }),
        ("ε_c = 0", Params { centroid_eps: 0.0, ..params }),
        // Past the ranges that keep every parameter a normal f32 (see `Params::validate`).
        ("δ = 1e308", Params { delta: 1e308, length: LengthKind::Charbonnier, ..params }),
        ("δ = 1e-300", Params { delta: 1e-300, length: LengthKind::Charbonnier, ..params }),
        ("ε_c = 1e300", Params { centroid_eps: 1e300, ..params }),
        ("λ = 1e300", Params { lambda: 1e300, ..params }),
        // The local fidelity's σ: > 0, and at most the largest extent (9 here).
        ("σ = 0", params.with_fidelity(Fidelity::Local { sigma: 0.0 })),
        ("σ = NaN", params.with_fidelity(Fidelity::Local { sigma: f64::NAN })),
        ("σ = 9.5", params.with_fidelity(Fidelity::Local { sigma: 9.5 })),
    ] {
        n += refuses(subject, what, s, logits, image, None, &p);
    }
    // At the ends of those ranges every subject computes, as the reference does.
    for p in [
        Params { delta: 1e15, length: LengthKind::Charbonnier, ..params },
        Params { delta: 1e-15, length: LengthKind::Charbonnier, ..params },
        Params { centroid_eps: 1e15, ..params },
        Params { centroid_eps: 1e-30, ..params },
        Params { lambda: 1e30, fidelity_weight: 1e30, ..params },
    ] {
        let input = Input::new(s, logits, image, None).expect("lengths fit");
        let label = format!("{} {} at the end of a range: {p:?}", subject.name(), T::NAME);
        assert!(reference(&input, &p).is_ok(), "{label}: the reference refuses");
        let o = subject.evaluate(&input, &p).unwrap_or_else(|f| panic!("{label}: refused: {f}"));
        assert!(o.energy.total.is_finite() && o.grad.iter().all(|g| g.is_finite()), "{label}: {:?}", o.energy);
        n += 1;
    }
    // A zero weight switches its term off, even where the term's sum overflows the type: images
    // at half their limit (squared distances fit, their sum over the pixels may not).
    let half: Vec<T> = data
        .image
        .iter()
        .map(|v| T::from_f64_lossy(if v.to_f64_lossless() < 0.5 { -0.5 } else { 0.5 } * limit))
        .collect();
    for p in [Params { fidelity_weight: 0.0, ..params }, Params { fidelity_weight: 0.0, lambda: 0.0, ..params }] {
        let input = Input::new(s, logits, &half, None).expect("lengths fit");
        let label = format!("{} {} zero weight on an overflowing term: {p:?}", subject.name(), T::NAME);
        let want = reference(&input, &p).unwrap_or_else(|f| panic!("{label}: the reference refuses: {f}"));
        let o = subject.evaluate(&input, &p).unwrap_or_else(|f| panic!("{label}: refused: {f}"));
        assert!(o.grad.iter().all(|g| g.is_finite()), "{label}: a non-finite gradient");
        if subject.supports().energy_parts {
            assert_eq!(o.energy.fidelity, T::zero(), "{label}");
            Tolerance::of::<T>().energy(&label, o.energy, want.energy);
        } else {
            Tolerance::of::<T>().total(&label, o.energy.total, want.energy);
        }
        n += 1;
    }
    // The sum over an empty mask is fine: everything is zero.
    if subject.supports().mask {
        let label = format!("{} {} sum over an empty mask", subject.name(), T::NAME);
        let o = subject.evaluate(&empty, &params).unwrap_or_else(|f| panic!("{label}: refused: {f}"));
        assert!(o.energy.total == T::zero(), "{label}: energy {:?}", o.energy);
        if let Some(i) = o.grad.iter().position(|g| *g != T::zero()) {
            panic!("{label}: gradient[{i}] = {:?}, want 0", o.grad[i]);
        }
        n += 1;
    }
    n
}

/// [`refuses_like_reference`] on the input of these buffers; 1 where it ran, else 0.
fn refuses<T: Real, S: Subject<T> + ?Sized>(
    subject: &mut S,
    what: &str,
    s: Shape,
    scores: Scores<'_, T>,
    image: &[T],
    mask: Option<&[T]>,
    params: &Params,
) -> usize {
    let input = Input::new(s, scores, image, mask).expect("lengths fit");
    usize::from(refuses_like_reference(subject, what, &input, params).is_some())
}

/// Bad values in inputs large enough to split into many blocks and take every kernel (in the
/// last sample, which a backend may reach before the others' checks are in; in the image of
/// the second sample; in the mask) give the reference's errors, with both reductions.
pub fn bad_values_in_large_inputs<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let mut n = 0;
    for s in [shape(3, 5, 3, 1, 24, 80), shape(2, 3, 2, 1, 64, 33), shape(2, 2, 1, 4, 8, 16)] {
        let data = RandomInputs::<T>::new(s, 11);
        let sp = s.spatial();
        for reduction in [Reduction::Sum, Reduction::Mean] {
            let params = Params::default().with_reduction(reduction);
            let (logits, image) = (Scores::Logits(&data.logits[..]), &data.image[..]);
            let mut z = data.logits.clone();
            let at = z.len() - sp / 2;
            z[at] = T::nan();
            n += refuses(subject, "NaN logit in the last sample", s, Scores::Logits(&z), image, None, &params);
            n += refuses(subject, "NaN probability in the last sample", s, Scores::Probs(&z), image, None, &params);
            let mut x = data.image.clone();
            x[sp + 5] = T::infinity();
            n += refuses(subject, "infinite image", s, logits, &x, Some(&data.mask), &params);
            let mut m = data.mask.clone();
            m[sp - 1] = T::nan();
            n += refuses(subject, "NaN mask", s, logits, image, Some(&m), &params);
        }
    }
    n
}

/// Energies too large for `T` are refused ([`Error::NonFiniteResult`], as the reference
/// does) rather than returned as infinity: an image at 0.9 of its limit
/// ([`msloss_core::image_limit`]) with a fidelity weight of 1e30.
pub fn overflow_is_an_error<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    let s = shape(1, 2, 1, 1, 4, 4);
    let data = RandomInputs::<T>::new(s, 9);
    let largest = data.image.iter().fold(0.0f64, |m, v| m.max(v.to_f64_lossless().abs()));
    let factor = T::from_f64_lossy(0.9 * msloss_core::image_limit::<T>(1) / largest);
    let image: Vec<T> = data.image.iter().map(|v| *v * factor).collect();
    let input = Input::new(s, Scores::Logits(&data.logits), &image, None).expect("fits");
    let params = Params { fidelity_weight: 1e30, ..Params::default() };
    let label = format!("{} {} overflow", subject.name(), T::NAME);
    let want = reference(&input, &params).err();
    assert!(matches!(want, Some(Error::NonFiniteResult { .. })), "{label}: the reference gives {want:?}");
    let got = subject.evaluate(&input, &params);
    match got {
        Ok(o) => panic!("{label}: accepted, energy {:?}", o.energy),
        Err(f) if subject.supports().typed_errors => {
            assert!(matches!(f.error, Some(Error::NonFiniteResult { .. })), "{label}: {f}");
        }
        Err(_) => {}
    }
    1
}

/// A gradient too large for `T` under a finite energy is refused
/// ([`Error::NonFiniteResult`] naming the gradient, as the reference does), never returned
/// with infinities or NaNs in it: two pixels, the second at 0.9 of the image limit, each
/// wholly in its own class (probabilities), `ε_c` = 1e-30 so that each centroid is its pixel
/// and the energy stays small, and a fidelity weight of 1e30, so that the other class's
/// `w·(x − c)²` overflows. Without the gradient the same request succeeds. Subjects without
/// probabilities skip it.
pub fn gradient_overflow_is_an_error<T: Real, S: Subject<T> + ?Sized>(subject: &mut S) -> usize {
    if !subject.supports().probabilities {
        return 0;
    }
    let s = shape(1, 2, 1, 1, 1, 2);
    let image = [T::zero(), T::from_f64_lossy(0.9 * msloss_core::image_limit::<T>(1))];
    let probs = [T::one(), T::zero(), T::zero(), T::one()];
    let input = Input::new(s, Scores::Probs(&probs), &image, None).expect("fits");
    let params = Params { fidelity_weight: 1e30, centroid_eps: 1e-30, ..Params::default() };
    let label = format!("{} {} gradient overflow", subject.name(), T::NAME);
    let want = reference(&input, &params).err();
    assert!(
        matches!(want, Some(Error::NonFiniteResult { what: "gradient", .. })),
        "{label}: the reference gives {want:?}"
    );
    match subject.evaluate(&input, &params) {
        Ok(o) => panic!("{label}: accepted, gradient {:?}", o.grad),
        Err(f) if subject.supports().typed_errors => {
            assert!(matches!(f.error, Some(Error::NonFiniteResult { what: "gradient", .. })), "{label}: {f}");
        }
        Err(f) => assert!(f.to_string().contains("gradient came out non-finite"), "{label}: {f}"),
    }
    let energy = subject.energy(&input, &params);
    assert!(energy.as_ref().is_ok_and(|e| e.total.is_finite()), "{label}: the energy alone gives {energy:?}");
    1
}

/// The gradient checker's tolerance in `T`: `1e-6` in `f64`, `1e-4` in `f32`.
pub fn gradcheck_tolerance<T: Real>() -> f64 {
    if T::NAME == "f32" { 1e-4 } else { 1e-6 }
}

/// The analytic gradient against central differences of the `f64` reference energy
/// ([`msloss_core::gradcheck::check`]), every coordinate of small tensors and random
/// directions of a larger one, within [`gradcheck_tolerance`].
pub fn gradcheck<T: Real, B: Backend<T>>(subject: &mut Tested<T, B>) -> usize {
    let smooth = |length| Params { centroid_eps: 1e-2, ..Params::default().with_lambda(0.2).with_length(length) };
    let mean = |length| Params::default().with_lambda(0.05).with_length(length).with_reduction(Reduction::Mean);
    let cases = [
        Case::new(shape(1, 3, 2, 1, 5, 6), true, true, smooth(LengthKind::L2), 40),
        Case::new(shape(2, 2, 1, 2, 3, 4), false, true, smooth(LengthKind::Charbonnier), 41),
        Case::new(shape(1, 3, 2, 1, 6, 5), true, false, smooth(LengthKind::L1), 42),
        Case::new(shape(1, 3, 2, 1, 40, 30), true, true, smooth(LengthKind::Charbonnier), 43), // directional
        Case::new(shape(1, 3, 2, 1, 6, 5), true, true, mean(LengthKind::Charbonnier), 9),
        Case::new(shape(1, 2, 1, 3, 4, 3), false, true, mean(LengthKind::L2), 9),
        Case::new(shape(2, 2, 1, 1, 5, 5), true, true, mean(LengthKind::L1), 9),
    ]
    .into_iter()
    .chain(local_gradcheck_cases())
    .collect::<Vec<_>>();
    let tolerance = gradcheck_tolerance::<T>();
    let mut n = 0;
    for case in cases.iter().filter(|c| subject.supports().admits(c)) {
        let label = label(subject, "gradcheck", case);
        let data = case.data();
        let report = gradcheck::check(subject.backend(), &case.input(&data), &case.params, &Options::default())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(report.passes(tolerance) && report.checks > 0, "{label}: {report:?} (tolerance {tolerance:e})");
        n += 1;
    }
    n
}

/// The local fidelity's gradient cases, small (each finite difference evaluates the reference's
/// literal double sum): 2D logits, a masked volume of probabilities with a large ε_c, the mean
/// reduction over two masked samples.
fn local_gradcheck_cases() -> [Case; 3] {
    let local = |sigma| Params::default().with_lambda(0.2).with_fidelity(Fidelity::Local { sigma });
    [
        Case::new(shape(1, 2, 1, 1, 5, 6), true, false, local(1.0), 50),
        Case::new(
            shape(1, 2, 2, 3, 4, 4),
            false,
            true,
            Params { centroid_eps: 0.5, ..local(0.8) }.with_length(LengthKind::L2),
            51,
        ),
        Case::new(
            shape(2, 2, 1, 1, 4, 5),
            true,
            true,
            local(2.0).with_reduction(Reduction::Mean).with_length(LengthKind::Charbonnier),
            52,
        ),
    ]
}

/// Output buffers of the wrong length (gradient, centroids) give the reference's errors.
pub fn short_outputs<T: Real, B: Backend<T>>(subject: &mut Tested<T, B>) -> usize {
    let s = shape(2, 3, 2, 1, 8, 9);
    let data = RandomInputs::<T>::new(s, 3);
    let input = Input::new(s, Scores::Logits(&data.logits), &data.image, None).expect("fits");
    let params = Params::default();
    let mut n = 0;
    for (what, grad_len, centroids_len) in
        [("short gradient", 5, s.centroids_len()), ("long centroids", s.scores_len(), s.centroids_len() + 1)]
    {
        let label = format!("{} {} {what}", subject.name(), T::NAME);
        let (mut g, mut c) = (vec![T::zero(); grad_len], vec![T::zero(); centroids_len]);
        let want = Reference
            .evaluate(
                &input,
                &params,
                Outputs { grad: Some(&mut g), centroids: Some(&mut c) },
                &mut Reference.workspace(),
            )
            .expect_err("the reference must refuse");
        let got = subject
            .evaluate_into(&input, &params, Outputs { grad: Some(&mut g), centroids: Some(&mut c) })
            .err()
            .unwrap_or_else(|| panic!("{label}: accepted, but the reference refuses: {want}"));
        let e = got.error.unwrap_or_else(|| panic!("{label}: no typed error, only {:?}", got.message));
        assert_eq!(format!("{e:?}"), format!("{want:?}"), "{label}");
        n += 1;
    }
    n
}

/// Where the gradient buffer starts changes no bit: [`case::alignment_cases`] against the
/// reference, then the same cases with the gradient 1 to 15 elements into a buffer of its own,
/// bit for bit.
pub fn grad_offset_changes_no_bit<T: Real, B: Backend<T> + Clone>(subject: &mut Tested<T, B>) -> usize
where
    B::Error: 'static,
{
    let cases = case::alignment_cases();
    let mut n = compare_all(subject, &cases, "alignment");
    for offset in 1..16 {
        let mut shifted = Tested::new(subject.backend().clone())
            .named(format!("{} (gradient {offset} elements on)", subject.name()))
            .with_supports(subject.supports());
        n += same_bits_on(subject, &mut shifted, &cases);
    }
    n
}

/// The `f32` accuracy target on a large `shape`: energy within the subject's relative
/// tolerance of the `f64` reference on the same (`f32`) values, gradient within it of its
/// largest magnitude; L1 without and with the mask, Charbonnier with the mask. Prints the
/// errors.
pub fn f32_accuracy<S: Subject<f32> + ?Sized>(subject: &mut S, shape: Shape, seed: u64) -> usize {
    let data = RandomInputs::<f32>::new(shape, seed);
    let data64 = case::widen(&data);
    let tol = subject.tolerance().relative;
    let mut n = 0;
    for (length, mask) in [(LengthKind::L1, false), (LengthKind::L1, true), (LengthKind::Charbonnier, true)] {
        let case = Case::new(shape, true, mask, Params::default().with_length(length), seed);
        if !subject.supports().admits(&case) {
            continue;
        }
        let label = label(subject, "accuracy", &case);
        let got = outcome(subject, &case, &data, "accuracy");
        let want = reference(&case.input(&data64), &case.params).unwrap_or_else(|e| panic!("{label}: reference: {e}"));
        let e_rel = (f64::from(got.energy.total) - want.energy.total).abs() / want.energy.total.abs();
        let scale = want.grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let g_err = got.grad.iter().zip(&want.grad).fold(0.0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
        println!("{label}: energy rel error {e_rel:.2e}, gradient max error / max |grad| {:.2e}", g_err / scale);
        assert!(
            e_rel <= tol && g_err <= tol * scale,
            "{label}: energy {e_rel:e}, gradient {:e} > {tol:e}",
            g_err / scale
        );
        n += 1;
    }
    n
}
