//! The bodies of msloss's fuzz targets. Each takes arbitrary bytes and must return normally: an
//! input it cannot use is a typed error, never a panic. What a body finds wrong (a panic below it,
//! two backends that disagree, a result out of range) it reports by panicking, which libFuzzer
//! records as a crash (`fuzz/targets`, nightly) and the corpus replay (`tests/corpus.rs`, stable)
//! as a failed test.

use std::io::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use msloss_conformance::Tolerance;
use msloss_conformance::checks::reference;
use msloss_core::{Backend, Fidelity, Input, LengthKind, Outputs, Params, Real, Reduction, Scores, Shape};
use msloss_cpu::CpuBackend;
use msloss_segment::output::load_labels;
use msloss_segment::{Volume, metrics};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: what `fuzz/targets` builds and `tests/corpus.rs` replays.
pub const TARGETS: [(&str, Target); 5] =
    [("npy", npy), ("evaluate", evaluate), ("image", image), ("labels", labels), ("args", args)];

/// `data` in a scratch file whose name ends in `ext` (the readers choose a format by extension).
fn scratch(data: &[u8], ext: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(ext).tempfile().expect("a scratch file");
    f.write_all(data).expect("the scratch file is written");
    f
}

/// A volume that loaded must be whole: its buffer matches its dimensions, its values are finite.
fn check_volume(v: &Volume, what: &str) {
    assert_eq!(v.data().len(), v.channels() * v.pixels(), "{what}: buffer and dimensions differ");
    assert!(v.pixels() > 0 && v.data().iter().all(|x| x.is_finite()), "{what}: an empty or non-finite volume");
}

/// The `.npy` readers: as an image or volume (`msloss segment`), and as a label map (`msloss eval`).
pub fn npy(data: &[u8]) {
    let f = scratch(data, ".npy");
    if let Ok(v) = Volume::load(f.path()) {
        check_volume(&v, "npy volume");
    }
    if let Ok(l) = load_labels(f.path()) {
        assert_eq!(l.labels.len(), l.dims.iter().product::<usize>(), "npy labels and dimensions differ");
    }
}

/// Image decoding for `msloss segment`: the same bytes as PNG, TIFF and JPEG.
pub fn image(data: &[u8]) {
    for ext in [".png", ".tif", ".jpg"] {
        if let Ok(v) = Volume::load(scratch(data, ext).path()) {
            check_volume(&v, ext);
        }
    }
}

/// `msloss eval`: two label maps (the first byte picks each one's format, the rest is split in
/// two), read and matched; a result must be a set of fractions.
pub fn labels(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (a, b) = rest.split_at(rest.len() / 2);
    let ext = |bit: u8| if pick & bit == 0 { ".npy" } else { ".png" };
    let (fa, fb) = (scratch(a, ext(1)), scratch(b, ext(2)));
    let (Ok(pred), Ok(truth)) = (load_labels(fa.path()), load_labels(fb.path())) else { return };
    if pred.dims != truth.dims {
        return;
    }
    if let Ok(q) = metrics::evaluate(&pred.labels, &truth.labels) {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        assert!(q.per_class_iou.iter().all(|&v| unit(v)), "an IoU outside [0, 1]: {q:?}");
        assert!(unit(q.mean_iou) && unit(q.accuracy) && unit(q.adapted_rand_error + 1e-12), "{q:?}");
    }
}

/// The command line: parsed and checked as `msloss` would before any work (arguments are the
/// bytes split at NUL).
pub fn args(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args = std::iter::once("msloss").chain(text.split('\0'));
    let _ = msloss_cli::check_args(args);
}

/// Bytes read from the front, zeros past the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    /// One of `table`.
    fn pick<T: Copy>(&mut self, table: &[T]) -> T {
        table[usize::from(self.byte()) % table.len()]
    }
    /// A value in `[lo, hi]`, or now and then one from `specials`.
    fn value(&mut self, lo: f64, hi: f64, specials: &[f64]) -> f64 {
        let (a, b) = (self.byte(), self.byte());
        if a == 0xff && !specials.is_empty() {
            return specials[usize::from(b) % specials.len()];
        }
        lo + (hi - lo) * f64::from(u16::from_le_bytes([a, b])) / 65535.0
    }
}

/// The CPU backend, one thread, built once (a pool per input would cost more than the input).
fn cpu() -> &'static CpuBackend {
    static CPU: OnceLock<CpuBackend> = OnceLock::new();
    CPU.get_or_init(|| CpuBackend::with_threads(1))
}

/// Shape and `Input` validation, then evaluation by the reference and the CPU backend: the same
/// inputs accepted or refused by both, with the same error, and where accepted, finite results
/// that agree (to 100 times the conformance suite's tolerance: fuzzed inputs sit at its edges).
pub fn evaluate(data: &[u8]) {
    let mut bytes = Bytes(data);
    if bytes.byte() & 1 == 0 { evaluate_in::<f32>(&mut bytes) } else { evaluate_in::<f64>(&mut bytes) }
}

fn evaluate_in<T: Real + msloss_cpu::CpuFloat>(bytes: &mut Bytes<'_>) {
    const SPECIALS: [f64; 6] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e30, -1e30, -0.0];
    let mut dim = |most: u8| usize::from(bytes.byte() % most);
    let (b, n, c, d, h, w) = (dim(3), dim(5), dim(4), 1 + dim(3), dim(7), dim(7));
    let Ok(shape) = Shape::new(b, n, c, d, h, w) else { return };
    let flags = bytes.byte();
    let logits = flags & 1 == 0;
    let params = Params {
        lambda: bytes.pick(&[0.0, 1e-3, 0.5, 1e30, 1e31, -1.0, f64::NAN]),
        fidelity_weight: bytes.pick(&[1.0, 0.0, 2.5, 1e30]),
        length: bytes.pick(&LengthKind::ALL),
        delta: bytes.pick(&[1e-2, 1e-15, 1.0, 1e15, 1e16, 0.0]),
        centroid_eps: bytes.pick(&[1e-8, 1e-30, 1.0, 1e15, 1e-31]),
        reduction: if flags & 2 == 0 { Reduction::Sum } else { Reduction::Mean },
        fidelity: if flags & 8 == 0 {
            Fidelity::Global
        } else {
            Fidelity::Local { sigma: bytes.pick(&[0.5, 1.5, 4.0, 0.0, 50.0, f64::NAN]) }
        },
    };
    let mut values = |len: usize, lo: f64, hi: f64| -> Vec<T> {
        (0..len).map(|_| T::from_f64_lossy(bytes.value(lo, hi, &SPECIALS))).collect()
    };
    let scores = if logits { values(shape.scores_len(), -20.0, 20.0) } else { values(shape.scores_len(), 0.0, 1.0) };
    let image = values(shape.image_len(), -2.0, 2.0);
    let mask: Option<Vec<T>> = (flags & 4 != 0)
        .then(|| (0..shape.mask_len()).map(|_| T::from_f64_lossy(f64::from(bytes.pick(&[1u8, 1, 1, 0])))).collect());
    let s = if logits { Scores::Logits(&scores) } else { Scores::Probs(&scores) };
    let Ok(input) = Input::new(shape, s, &image, mask.as_deref()) else { return };
    let label = format!("{shape} {} {} {params:?}", T::NAME, input.scores().name());

    let want = reference(&input, &params);
    let mut grad = vec![T::nan(); shape.scores_len()];
    let mut centroids = vec![T::nan(); shape.centroids_len()];
    let out = Outputs { grad: Some(&mut grad), centroids: Some(&mut centroids) };
    let got = cpu().evaluate(&input, &params, out, &mut Backend::<T>::workspace(cpu()));
    match (want, got) {
        (Err(a), Err(b)) => assert_eq!(comparable(&a), comparable(&b), "{label}: different errors"),
        (Ok(want), Ok(energy)) => {
            assert!(energy.total.is_finite() && grad.iter().all(|g| g.is_finite()), "{label}: non-finite results");
            let tol = Tolerance::of::<T>();
            let tol = tol.with_relative(100.0 * tol.relative);
            // The fidelity sums y·(x − c)²: where x − c is small next to x, each difference keeps
            // only an absolute accuracy of about δ = k·ε·max|x|, so the sum's error is up to
            // Σ y·(2·|x − c|·δ + δ²) ≤ 2·δ·√(Σy · Σ y·(x − c)²) + δ²·Σy (Cauchy–Schwarz), times w
            // and the reduction's factor. That is the energy's floor (k = 32, a margin).
            let xmax = image.iter().fold(0.0f64, |m, v| m.max(v.to_f64_lossless().abs()));
            let valid = mask.as_ref().map_or(shape.mask_len(), |m| m.iter().filter(|v| **v == T::one()).count());
            let scale = if params.reduction == Reduction::Mean { 1.0 / valid.max(1) as f64 } else { 1.0 };
            let ysum =
                if logits { shape.mask_len() as f64 } else { scores.iter().map(|v| v.to_f64_lossless()).sum::<f64>() };
            let fid = want.energy.fidelity.to_f64_lossless();
            let raw = if params.fidelity_weight > 0.0 { fid / (params.fidelity_weight * scale) } else { 0.0 };
            let eps = T::epsilon().to_f64_lossless();
            let d = 32.0 * eps * xmax;
            let floor = (2.0 * d * (ysum * raw).sqrt() + d * d * ysum) * params.fidelity_weight * scale;
            // The length sums functions of neighbours' differences y_a − y_b, each accurate to
            // about δ' = k·ε·max(1, y) (a saturated softmax rounds y to 1 in f32): at most
            // 4·δ'·max(1, y) + δ'² a pair, over the 3·B·S·N pairs, times λ.
            let ymax = if logits { 1.0 } else { scores.iter().fold(1.0f64, |m, v| m.max(v.to_f64_lossless())) };
            let dy = 32.0 * eps * ymax;
            let pairs = 3.0 * shape.scores_len() as f64;
            let floor = floor + (4.0 * dy * ymax + dy * dy) * pairs * params.lambda * scale;
            let energy_tol = Tolerance { absolute: tol.absolute.max(floor), ..tol };
            energy_tol.energy(&label, energy, want.energy);
            // The gradient is a difference of per-pixel terms, w·‖x − c_n‖² (at most 4·w·C·max x²)
            // and λ times the length's fluxes (at most 2·max(1, y) on each of 3 axes, both ways):
            // where it cancels (extreme images, saturated softmax) either side keeps only its
            // rounding relative to those terms, so they set the floor.
            let terms =
                4.0 * params.fidelity_weight * shape.channels() as f64 * xmax * xmax + 12.0 * params.lambda * ymax;
            // Charbonnier's flux d/√(d² + δ²) steps from −1 to 1 over |d| ≲ δ: with δ below the
            // type's resolution of y, the flux of a near-tie is a coin toss in either type (as
            // L1's sign, which the backends settle with the reference's softmax; they do not for
            // Charbonnier), so only the fidelity's part of the gradient is held to the bar.
            let coin = params.length == LengthKind::Charbonnier && params.delta < dy;
            let floor = tol.relative * terms + if coin { 12.0 * params.lambda * ymax } else { 0.0 };
            let grad_tol = Tolerance { absolute: tol.absolute.max(floor), ..tol };
            grad_tol.slices("gradient", &label, &grad, &want.grad);
            // A centroid is a weighted mean of x: its absolute accuracy is about ε·max|x| (its sum
            // cancels where x takes both signs), whatever its own size.
            let centroid_tol = Tolerance { absolute: tol.absolute.max(d), ..tol };
            centroid_tol.slices("centroids", &label, &centroids, want.centroids.as_deref().unwrap_or_default());
        }
        (want, got) => panic!("{label}: the reference gives {:?} but the CPU backend {:?}", want.err(), got.err()),
    }
}

/// An error as the backends must agree on it: a non-finite result's value (inf or NaN, which
/// depends on the order of the sums that overflowed) is left out.
fn comparable(e: &msloss_core::Error) -> String {
    match e {
        msloss_core::Error::NonFiniteResult { what, .. } => format!("NonFiniteResult {{ what: {what:?} }}"),
        other => format!("{other:?}"),
    }
}

/// Every file under `dir`, sorted (the corpus of one target, or its crashes).
///
/// # Panics
/// When `dir` exists but cannot be listed.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> = entries.map(|e| e.expect("a directory entry").path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}
