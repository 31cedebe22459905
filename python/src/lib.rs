//! # msloss-python
//!
//! The `msloss._msloss` extension module: msloss for NumPy (and, through the pure-Python
//! `msloss.torch` beside it, PyTorch). Built by maturin as one abi3 wheel for CPython >= 3.9.
//!
//! - `energy`: the loss, its centroids and its gradient of NumPy arrays, as `msloss energy`;
//! - `gradcheck`: the gradient checker on seeded inputs, as `msloss gradcheck`;
//! - `segment`: unsupervised multiphase segmentation, as `msloss segment`.
//!
//! Float arrays of the compute type that are C-contiguous are read in place; others are copied
//! once (the result's `copies` names them). The GIL is released while Rust computes. Every
//! [`msloss::Error`] becomes a `ValueError` with its message, a wrong dtype or type a
//! `TypeError`; a panic (a bug) is caught and raised as `RuntimeError`, never unwinding into
//! Python.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use msloss::cpu::{CpuBackend, CpuFloat, CpuWorkspace, MAX_THREADS};
use msloss::gradcheck::{self as checker, Mode, Options};
use msloss::rng::RandomInputs;
use msloss::{
    Backend, Energy, Fidelity, Input, LengthKind, Outputs, Params, Reduction, Reference, ReferenceWorkspace, Scores,
    Shape,
};
use msloss_segment::{SegmentConfig, SegmentError, Volume};
use numpy::{
    Element, PyArray3, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A core error as the Python exception its kind calls for: every variant is a bad value,
/// shape or parameter (dtypes are checked here, before the core sees the data).
fn core_err(e: msloss::Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn segment_err(e: SegmentError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Runs `f`, turning a panic (always a bug: user input gives typed errors) into `RuntimeError`.
fn no_panic<R>(f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(PyRuntimeError::new_err(format!("msloss internal error (a bug, please report it): {msg}")))
    })
}

/// A count given from Python (an `int`): `>= min`, else a `ValueError` naming it.
fn count(name: &str, value: i64, min: usize) -> PyResult<usize> {
    match usize::try_from(value) {
        Ok(v) if v >= min => Ok(v),
        _ => Err(PyValueError::new_err(format!("{name} must be an integer >= {min}, got {value}"))),
    }
}

/// `length="..."` as a [`LengthKind`].
fn length_kind(length: &str) -> PyResult<LengthKind> {
    match length {
        "l1" => Ok(LengthKind::L1),
        "l2" => Ok(LengthKind::L2),
        "charbonnier" => Ok(LengthKind::Charbonnier),
        other => Err(PyValueError::new_err(format!("length must be \"l1\", \"l2\" or \"charbonnier\", got {other:?}"))),
    }
}

/// `fidelity="..."` and `sigma` as a [`Fidelity`] (σ's range is checked with the parameters).
fn fidelity_kind(fidelity: &str, sigma: Option<f64>) -> PyResult<Fidelity> {
    match (fidelity, sigma) {
        ("global", None) => Ok(Fidelity::Global),
        ("local", Some(sigma)) => Ok(Fidelity::Local { sigma }),
        ("local", None) => Err(PyValueError::new_err("fidelity=\"local\" needs sigma (the Gaussian's σ in pixels)")),
        ("global", Some(s)) => {
            Err(PyValueError::new_err(format!("sigma is for fidelity=\"local\" only, got sigma={s}")))
        }
        (other, _) => Err(PyValueError::new_err(format!("fidelity must be \"global\" or \"local\", got {other:?}"))),
    }
}

/// The loss parameters from the keywords, validated.
#[expect(clippy::too_many_arguments, reason = "the loss keywords, one argument each")]
fn params(
    lam: f64,
    length: &str,
    delta: f64,
    centroid_eps: f64,
    fidelity_weight: f64,
    reduction: &str,
    fidelity: &str,
    sigma: Option<f64>,
) -> PyResult<Params> {
    let length = length_kind(length)?;
    let reduction = match reduction {
        "sum" => Reduction::Sum,
        "mean" => Reduction::Mean,
        other => return Err(PyValueError::new_err(format!("reduction must be \"sum\" or \"mean\", got {other:?}"))),
    };
    let fidelity = fidelity_kind(fidelity, sigma)?;
    let p = Params { lambda: lam, fidelity_weight, length, delta, centroid_eps, reduction, fidelity };
    p.validate().map_err(core_err)?;
    Ok(p)
}

/// The most CPU backends (thread pools) [`cpu_backend`] keeps.
const POOLS: usize = 4;

/// The CPU backends made so far, by thread count (`None`: rayon's global pool), so that a
/// thread pool is started once, not at every call. At most [`POOLS`] are kept: a caller trying
/// many thread counts does not accumulate pools (one still in use by a call lives on until it
/// returns).
fn cpu_backend(threads: Option<i64>) -> PyResult<CpuBackend> {
    let threads = threads
        .map(|t| match usize::try_from(t) {
            Ok(u) if (1..=MAX_THREADS).contains(&u) => Ok(u),
            _ => Err(PyValueError::new_err(format!("threads must be between 1 and {MAX_THREADS}, got {t}"))),
        })
        .transpose()?;
    static CACHE: OnceLock<Mutex<HashMap<Option<usize>, CpuBackend>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= POOLS && !cache.contains_key(&threads) {
        cache.clear();
    }
    Ok(cache.entry(threads).or_insert_with(|| threads.map_or_else(CpuBackend::new, CpuBackend::with_threads)).clone())
}

/// The backends this module offers.
enum Chosen {
    /// The fused CPU backend.
    Cpu(CpuBackend),
    /// The `f64` reference (the oracle; slow).
    Reference,
}

fn choose(backend: &str, threads: Option<i64>) -> PyResult<Chosen> {
    match backend {
        "cpu" => Ok(Chosen::Cpu(cpu_backend(threads)?)),
        "reference" => Ok(Chosen::Reference),
        other => Err(PyValueError::new_err(format!(
            "backend must be \"cpu\" or \"reference\" (the Python package has no GPU backend), got {other:?}"
        ))),
    }
}

/// The float types the bindings compute in, each with a reusable CPU workspace per calling
/// thread (workspaces grow to the largest shape seen and then allocate nothing).
trait Float: CpuFloat + Element {
    fn with_workspace<R>(f: impl FnOnce(&mut CpuWorkspace<Self>) -> R) -> R;
}

thread_local! {
    static WS32: RefCell<CpuWorkspace<f32>> = RefCell::new(CpuWorkspace::default());
    static WS64: RefCell<CpuWorkspace<f64>> = RefCell::new(CpuWorkspace::default());
}

impl Float for f32 {
    fn with_workspace<R>(f: impl FnOnce(&mut CpuWorkspace<f32>) -> R) -> R {
        WS32.with(|w| f(&mut w.borrow_mut()))
    }
}

impl Float for f64 {
    fn with_workspace<R>(f: impl FnOnce(&mut CpuWorkspace<f64>) -> R) -> R {
        WS64.with(|w| f(&mut w.borrow_mut()))
    }
}

/// Evaluates with the chosen backend (no GIL is held here).
fn evaluate<T: Float>(chosen: &Chosen, input: &Input<'_, T>, p: &Params, out: Outputs<'_, T>) -> PyResult<Energy<T>> {
    match chosen {
        Chosen::Cpu(b) => T::with_workspace(|ws| b.evaluate(input, p, out, ws)),
        Chosen::Reference => {
            let mut ws = ReferenceWorkspace::default();
            Backend::<T>::evaluate(&Reference, input, p, out, &mut ws)
        }
    }
    .map_err(core_err)
}

/// `a` as a numpy array, or a `TypeError` naming what came.
fn ndarray<'a, 'py>(a: &'a Bound<'py, PyAny>, what: &str) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    a.cast::<PyUntypedArray>().map_err(|_| {
        let got = a.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string());
        PyTypeError::new_err(format!("{what} must be a numpy.ndarray, got {got}"))
    })
}

/// The dtype of `a` as numpy spells it (`float32`, `int64`, …).
fn dtype_name(a: &Bound<'_, PyUntypedArray>) -> String {
    a.dtype().str().map_or_else(|_| "?".to_owned(), |s| s.to_string())
}

/// `a` as a C-contiguous array of `T`: itself when it already is one (no copy), else a copy
/// made by `numpy.ascontiguousarray` (then `what` is added to `copies`).
fn contiguous<'py, T: Float>(
    a: &Bound<'py, PyUntypedArray>,
    what: &'static str,
    copies: &mut Vec<&'static str>,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let py = a.py();
    let direct = match a.cast::<PyArrayDyn<T>>() {
        Ok(t) if t.is_c_contiguous() => Some(t.clone()),
        _ => None,
    };
    let arr = match direct {
        Some(t) => t,
        None => {
            copies.push(what);
            let np = py.import("numpy")?;
            np.call_method1("ascontiguousarray", (a, T::get_dtype(py)))?.cast_into::<PyArrayDyn<T>>()?
        }
    };
    arr.try_readonly().map_err(|e| PyValueError::new_err(format!("{what} cannot be read: {e}")))
}

/// A float input (`image`, scores): float32 or float64, else a `TypeError`.
fn check_float(a: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<()> {
    let dt = a.dtype();
    if dt.kind() == b'f' && matches!(dt.itemsize(), 4 | 8) {
        Ok(())
    } else {
        Err(PyTypeError::new_err(format!("{what} must have dtype float32 or float64, got {}", dtype_name(a))))
    }
}

/// A mask: bool, integer or float (its values are checked to be 0 or 1 by the core).
fn check_mask(a: &Bound<'_, PyUntypedArray>) -> PyResult<()> {
    if matches!(a.dtype().kind(), b'b' | b'i' | b'u' | b'f') {
        Ok(())
    } else {
        Err(PyTypeError::new_err(format!(
            "mask must have dtype bool, an integer type, float32 or float64, got {}",
            dtype_name(a)
        )))
    }
}

/// The slice of a readonly array that [`contiguous`] made C-contiguous.
fn slice<'a, T: Float>(a: &'a PyReadonlyArrayDyn<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|e| PyRuntimeError::new_err(format!("internal: {what} is not contiguous: {e}")))
}

/// The result of [`energy`]: the energy's parts, the centroids and the gradient.
#[pyclass(frozen, module = "msloss", name = "Energy")]
struct PyEnergy {
    /// `w·F` (after the reduction).
    #[pyo3(get)]
    fidelity: f64,
    /// `λ·Len` (after the reduction).
    #[pyo3(get)]
    length: f64,
    /// `fidelity + length`.
    #[pyo3(get)]
    total: f64,
    /// The centroids `c`, `(B, N, C)`, in the scores' dtype.
    #[pyo3(get)]
    centroids: Py<PyAny>,
    /// `∂E/∂scores` in the scores' dtype and shape, or `None` when not asked for.
    #[pyo3(get)]
    grad: Option<Py<PyAny>>,
    /// The inputs that had to be copied (not C-contiguous, or another dtype than the scores').
    #[pyo3(get)]
    copies: Vec<&'static str>,
    /// Wall-clock seconds of the backend's evaluation alone (without the conversions and checks
    /// around it): the call's overhead is the rest.
    #[pyo3(get)]
    seconds: f64,
    /// The scores' dtype, `"float32"` or `"float64"`.
    #[pyo3(get)]
    dtype: &'static str,
}

#[pymethods]
impl PyEnergy {
    fn __repr__(&self) -> String {
        format!(
            "Energy(total={:e}, fidelity={:e}, length={:e}, dtype={}, grad={})",
            self.total,
            self.fidelity,
            self.length,
            self.dtype,
            if self.grad.is_some() { "yes" } else { "None" }
        )
    }
}

/// The keywords of [`energy`] other than the arrays.
struct Request {
    params: Params,
    chosen: Chosen,
    want_grad: bool,
}

/// `energy` for scores of dtype `T`.
fn energy_typed<'py, T: Float>(
    scores: &Bound<'py, PyUntypedArray>,
    logits: bool,
    image: &Bound<'py, PyUntypedArray>,
    mask: Option<&Bound<'py, PyUntypedArray>>,
    req: Request,
) -> PyResult<PyEnergy> {
    let py = scores.py();
    let mut copies = Vec::new();
    let what = if logits { "logits" } else { "probs" };
    // Shapes first: nothing is copied for a request that cannot run.
    let shape = Shape::from_dims(scores.shape(), image.shape(), mask.map(|m| m.shape())).map_err(core_err)?;
    let s = contiguous::<T>(scores, what, &mut copies)?;
    let x = contiguous::<T>(image, "image", &mut copies)?;
    let m = mask.map(|m| contiguous::<T>(m, "mask", &mut copies)).transpose()?;

    let centroids = PyArray3::<T>::zeros(py, [shape.batch(), shape.classes(), shape.channels()], false);
    // SAFETY: the array is not read before the backend has written every element (a successful
    // `evaluate` writes the whole gradient); on an error it is dropped unread. Skipping the
    // zero fill saves a pass over the gradient's memory.
    let grad = req.want_grad.then(|| unsafe { PyArrayDyn::<T>::new(py, scores.shape(), false) });
    let mut c_rw = centroids.try_readwrite().map_err(|e| PyRuntimeError::new_err(format!("internal: {e}")))?;
    let mut g_rw = grad
        .as_ref()
        .map(|g| g.try_readwrite())
        .transpose()
        .map_err(|e| PyRuntimeError::new_err(format!("internal: {e}")))?;
    let c_out = c_rw.as_slice_mut().map_err(|e| PyRuntimeError::new_err(format!("internal: {e}")))?;
    let g_out = g_rw
        .as_mut()
        .map(|g| g.as_slice_mut())
        .transpose()
        .map_err(|e| PyRuntimeError::new_err(format!("internal: {e}")))?;
    let (s, x, m) = (slice(&s, what)?, slice(&x, "image")?, m.as_ref().map(|m| slice(m, "mask")).transpose()?);

    let (e, seconds) = py.detach(|| {
        no_panic(|| {
            let sc = if logits { Scores::Logits(s) } else { Scores::Probs(s) };
            let input = Input::new(shape, sc, x, m).map_err(core_err)?;
            let t0 = Instant::now();
            let out = Outputs { grad: g_out, centroids: Some(c_out) };
            let e = evaluate(&req.chosen, &input, &req.params, out)?;
            // The backend refuses a non-finite gradient (`Error::NonFiniteResult`).
            Ok((e, t0.elapsed().as_secs_f64()))
        })
    })?;
    drop((c_rw, g_rw));
    Ok(PyEnergy {
        fidelity: e.fidelity.to_f64_lossless(),
        length: e.length.to_f64_lossless(),
        total: e.total.to_f64_lossless(),
        centroids: centroids.into_any().unbind(),
        grad: grad.map(|g| g.into_any().unbind()),
        copies,
        seconds,
        dtype: if T::NAME == "f32" { "float32" } else { "float64" },
    })
}

/// The multiphase Mumford–Shah energy of NumPy arrays, its centroids and its gradient.
///
/// Give exactly one of `logits` (softmax over the class axis is applied) or `probs`
/// (probabilities, finite, >= 0 and at most about 1.3e18 in float32, 9.7e152 in float64):
///
/// - `logits` / `probs`: `(B, N, H, W)` or `(B, N, D, H, W)`, float32 or float64: the scores'
///   dtype is the dtype the energy is computed in;
/// - `image`: `(B, C, H, W)` or `(B, C, D, H, W)`, float32 or float64;
/// - `mask`: `(B, H, W)` or `(B, D, H, W)` (also `(B, 1, ...)`) of 0/1 values, bool, integer or
///   float; `None` means every pixel is valid.
///
/// Arrays that are C-contiguous and of the scores' dtype are read in place, without a copy.
/// Any other array (a transposed or sliced view, an image or mask of another dtype) is copied
/// once with `numpy.ascontiguousarray`; the result's `copies` names the inputs that were. The
/// GIL is released while the energy is computed; do not write to the arrays from another
/// thread meanwhile.
///
/// The keywords are those of `msloss energy`: `lam` (λ, the length weight, >= 0), `length`
/// (`"l1"`, `"l2"` or `"charbonnier"`), `delta` (Charbonnier's δ, > 0), `centroid_eps` (ε_c,
/// > 0), `fidelity_weight` (w, >= 0), `reduction` (`"sum"` or `"mean"` over valid pixels),
/// `fidelity` (`"global"`: one soft mean per class, as published; `"local"`: Gaussian-weighted
/// local means, for uneven illumination, with `sigma` the Gaussian's σ in pixels, > 0 and at
/// most the largest spatial extent), `backend` (`"cpu"`, or `"reference"`: the literal f64
/// definition, slow), `threads` (the CPU backend's threads, 1 to `MAX_THREADS`; `None`: all
/// cores; results are the same bits), and `grad` (whether to compute the gradient).
///
/// Returns an `Energy` with `fidelity` (w·F), `length` (λ·Len), `total`, `centroids`
/// `(B, N, C)` and `grad` (∂E/∂scores in the scores' shape and dtype, or `None`).
///
/// Raises `TypeError` for an argument that is not a numpy array or has a dtype not listed
/// above, `ValueError` for bad shapes, values (NaN, infinity, negative probabilities, a mask
/// value other than 0 and 1) or parameters, and for a result that comes out non-finite.
#[pyfunction]
#[pyo3(signature = (
    image, *, logits=None, probs=None, mask=None, lam=1e-3, length="l1", delta=1e-2,
    centroid_eps=1e-8, fidelity_weight=1.0, reduction="sum", fidelity="global", sigma=None, backend="cpu",
    threads=None, grad=true
))]
#[expect(clippy::too_many_arguments, reason = "the keywords of `msloss energy`, one argument each")]
fn energy(
    image: &Bound<'_, PyAny>,
    logits: Option<&Bound<'_, PyAny>>,
    probs: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
    lam: f64,
    length: &str,
    delta: f64,
    centroid_eps: f64,
    fidelity_weight: f64,
    reduction: &str,
    fidelity: &str,
    sigma: Option<f64>,
    backend: &str,
    threads: Option<i64>,
    grad: bool,
) -> PyResult<PyEnergy> {
    let (scores, is_logits) = match (logits, probs) {
        (Some(l), None) => (ndarray(l, "logits")?, true),
        (None, Some(p)) => (ndarray(p, "probs")?, false),
        (Some(_), Some(_)) => return Err(PyValueError::new_err("give exactly one of logits and probs, not both")),
        (None, None) => return Err(PyValueError::new_err("give exactly one of logits and probs (neither came)")),
    };
    let image = ndarray(image, "image")?;
    let mask = mask.map(|m| ndarray(m, "mask")).transpose()?;
    check_float(scores, if is_logits { "logits" } else { "probs" })?;
    check_float(image, "image")?;
    if let Some(m) = mask {
        check_mask(m)?;
    }
    let req = Request {
        params: params(lam, length, delta, centroid_eps, fidelity_weight, reduction, fidelity, sigma)?,
        chosen: choose(backend, threads)?,
        want_grad: grad,
    };
    if scores.dtype().itemsize() == 4 {
        energy_typed::<f32>(scores, is_logits, image, mask, req)
    } else {
        energy_typed::<f64>(scores, is_logits, image, mask, req)
    }
}

/// Checks a backend's analytic gradient against central differences of the f64 reference
/// energy on seeded inputs, as `msloss gradcheck` does.
///
/// `shape` is `(B, N, C, H, W)` or `(B, N, C, H, W, D)` (the CLI's order). `dtype` (`"float32"`
/// or `"float64"`) is the type the backend computes in, `input` (`"logits"` or `"probs"`) the
/// scores differentiated, `mask` adds a random mask (about 80% valid pixels), `seed` fixes the
/// inputs and directions, `tol` is the relative tolerance (default 1e-6 for float64, 1e-4 for
/// float32), tensors up to `full_limit` elements get every coordinate checked and larger ones
/// random directions. The loss keywords are those of `energy`.
///
/// Returns a dict with the CLI's keys: `pass`, `max_rel_error`, `max_abs_error`,
/// `energy_rel_error`, `checks`, `skipped_kinks`, `mode`, … Raises `ValueError` (or
/// `TypeError` for `dtype`) for bad arguments.
#[pyfunction]
#[pyo3(signature = (
    shape, *, backend="cpu", threads=None, dtype="float64", input="logits", mask=false, seed=1,
    tol=None, full_limit=2048, lam=1e-3, length="l1", delta=1e-2, centroid_eps=1e-8,
    fidelity_weight=1.0, reduction="sum", fidelity="global", sigma=None
))]
#[expect(clippy::too_many_arguments, reason = "the options of `msloss gradcheck`, one argument each")]
fn gradcheck<'py>(
    py: Python<'py>,
    shape: Vec<usize>,
    backend: &str,
    threads: Option<i64>,
    dtype: &str,
    input: &str,
    mask: bool,
    seed: u64,
    tol: Option<f64>,
    full_limit: i64,
    lam: f64,
    length: &str,
    delta: f64,
    centroid_eps: f64,
    fidelity_weight: f64,
    reduction: &str,
    fidelity: &str,
    sigma: Option<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let shape = match shape[..] {
        [b, n, c, h, w] => Shape::new(b, n, c, 1, h, w),
        [b, n, c, h, w, d] => Shape::new(b, n, c, d, h, w),
        _ => {
            return Err(PyValueError::new_err(format!(
                "shape must be (B, N, C, H, W) or (B, N, C, H, W, D), got {} sizes",
                shape.len()
            )));
        }
    }
    .map_err(core_err)?;
    let logits = match input {
        "logits" => true,
        "probs" => false,
        other => return Err(PyValueError::new_err(format!("input must be \"logits\" or \"probs\", got {other:?}"))),
    };
    let p = params(lam, length, delta, centroid_eps, fidelity_weight, reduction, fidelity, sigma)?;
    let chosen = choose(backend, threads)?;
    let options = Options { full_limit: count("full_limit", full_limit, 0)?, seed, ..Options::default() };
    let job = Check { shape, logits, mask, params: p, options, chosen };
    let (report, tol, name) = match dtype {
        "float32" | "f32" => {
            let r = py.detach(|| no_panic(|| job.run::<f32>()))?;
            (r, tol.unwrap_or(1e-4), "float32")
        }
        "float64" | "f64" => {
            let r = py.detach(|| no_panic(|| job.run::<f64>()))?;
            (r, tol.unwrap_or(1e-6), "float64")
        }
        other => {
            return Err(PyTypeError::new_err(format!("dtype must be \"float32\" or \"float64\", got {other:?}")));
        }
    };
    let d = PyDict::new(py);
    d.set_item("backend", backend)?;
    d.set_item("shape", shape.to_string())?;
    d.set_item("dtype", name)?;
    d.set_item("input", input)?;
    d.set_item("length", p.length.name())?;
    d.set_item("reduction", p.reduction.name())?;
    d.set_item("fidelity", p.fidelity.name())?;
    d.set_item("mask", mask)?;
    d.set_item(
        "mode",
        match report.mode {
            Mode::Full => "full",
            Mode::Directional => "directional",
        },
    )?;
    d.set_item("checks", report.checks)?;
    d.set_item("skipped_kinks", report.skipped_kinks)?;
    d.set_item("max_abs_error", report.max_abs_error)?;
    d.set_item("max_rel_error", report.max_rel_error)?;
    d.set_item("grad_scale", report.grad_scale)?;
    d.set_item("energy_rel_error", report.energy_rel_error)?;
    d.set_item("tolerance", tol)?;
    d.set_item("pass", report.passes(tol))?;
    Ok(d)
}

/// One gradient check, as `msloss gradcheck` runs it.
struct Check {
    shape: Shape,
    logits: bool,
    mask: bool,
    params: Params,
    options: Options,
    chosen: Chosen,
}

impl Check {
    fn run<T: Float>(&self) -> PyResult<checker::Report> {
        let data = RandomInputs::<T>::new(self.shape, self.options.seed);
        let scores = if self.logits { Scores::Logits(&data.logits[..]) } else { Scores::Probs(&data.probs[..]) };
        let input =
            Input::new(self.shape, scores, &data.image, self.mask.then_some(&data.mask[..])).map_err(core_err)?;
        match &self.chosen {
            Chosen::Cpu(b) => checker::check(b, &input, &self.params, &self.options),
            Chosen::Reference => checker::check(&Reference, &input, &self.params, &self.options),
        }
        .map_err(core_err)
    }
}

/// The image of [`segment`] as a [`Volume`]: `(H, W)`, `(C, H, W)` or `(C, D, H, W)`; uint8
/// divided by 255, uint16 by 65535, other integers, bools and floats taken as they are (as
/// `msloss segment` reads `.npy` files). Any memory layout; always copied (to `f32`).
fn volume(image: &Bound<'_, PyAny>) -> PyResult<Volume> {
    let a = ndarray(image, "image")?;
    let (c, d, h, w) = match a.shape()[..] {
        [h, w] => (1, 1, h, w),
        [c, h, w] => (c, 1, h, w),
        [c, d, h, w] => (c, d, h, w),
        _ => {
            return Err(PyValueError::new_err(format!(
                "image has shape {:?}; expected (H, W), (C, H, W) or (C, D, H, W)",
                a.shape()
            )));
        }
    };
    macro_rules! read {
        ($($t:ty => $scale:expr),*) => {
            $(if let Ok(t) = a.cast::<PyArrayDyn<$t>>() {
                let ro = t.try_readonly().map_err(|e| PyValueError::new_err(format!("image cannot be read: {e}")))?;
                let data: Vec<f32> = ro.as_array().iter().map(|&v| (v as f64 * $scale) as f32).collect();
                return Volume::new(c, d, h, w, data).map_err(segment_err);
            })*
        };
    }
    read!(f32 => 1.0, f64 => 1.0, u8 => 1.0 / 255.0, u16 => 1.0 / 65535.0, i8 => 1.0, i16 => 1.0, i32 => 1.0,
          i64 => 1.0, u32 => 1.0, u64 => 1.0);
    if let Ok(t) = a.cast::<PyArrayDyn<bool>>() {
        let ro = t.try_readonly().map_err(|e| PyValueError::new_err(format!("image cannot be read: {e}")))?;
        let data: Vec<f32> = ro.as_array().iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
        return Volume::new(c, d, h, w, data).map_err(segment_err);
    }
    Err(PyTypeError::new_err(format!(
        "image must have a float, integer or bool dtype (native byte order), got {}",
        dtype_name(a)
    )))
}

/// Unsupervised multiphase segmentation of an image or volume into `phases` phases, as
/// `msloss segment` does: the energy minimised over per-pixel logits (Adam, exact gradients),
/// from a multi-level Otsu start (grey) or a seeded k-means++ one (colour), with rescue tries
/// for lost phases.
///
/// `image` is `(H, W)`, `(C, H, W)` or `(C, D, H, W)`: uint8 is divided by 255, uint16 by
/// 65535, other integer, bool and float dtypes are taken as they are (and copied to float32).
/// Keywords: `lam` (the length weight in units of the image's within-phase variance, raised where
/// phases are close: see `msloss segment --help`), `length`
/// (`"l1"`, `"l2"`, `"charbonnier"`), `iters` (the most steps), `tol` (relative energy change
/// to stop at), `lr` (Adam's step in logit units), `fidelity` (`"global"`, or `"local"` with
/// `sigma` in pixels, for uneven illumination), `backend`, `threads`, `seed`.
///
/// Returns the labels as uint8, `(H, W)` for an image and `(D, H, W)` for a volume; label k is
/// the k-th darkest phase. With `info=True`, `(labels, summary)`: the summary dict holds what
/// `msloss segment --json` and `--plot` report (`iterations`, `converged`, `energy`, `history`,
/// `centroids`, `pixels_per_phase`, `lambda_effective`, `contrast_to_noise`, `start`,
/// `rescues`, …). Raises `ValueError` for bad shapes, values or settings, `TypeError`
/// for an unsupported dtype.
#[pyfunction]
#[pyo3(signature = (
    image, phases, *, lam=2.0, length="charbonnier", iters=300, tol=1e-4, lr=0.5, fidelity="global",
    sigma=None, backend="cpu", threads=None, seed=0, info=false
))]
#[expect(clippy::too_many_arguments, reason = "the options of `msloss segment`, one argument each")]
fn segment<'py>(
    py: Python<'py>,
    image: &Bound<'py, PyAny>,
    phases: i64,
    lam: f64,
    length: &str,
    iters: i64,
    tol: f64,
    lr: f64,
    fidelity: &str,
    sigma: Option<f64>,
    backend: &str,
    threads: Option<i64>,
    seed: u64,
    info: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let vol = volume(image)?;
    let fidelity = fidelity_kind(fidelity, sigma)?;
    let cfg = SegmentConfig {
        phases: count("phases", phases, 2)?,
        lambda: lam,
        length: length_kind(length)?,
        max_iters: count("iters", iters, 1)?,
        tol,
        learning_rate: lr,
        seed,
        fidelity,
        ..SegmentConfig::default()
    };
    let chosen = choose(backend, threads)?;
    let seg = py.detach(|| {
        no_panic(|| {
            match &chosen {
                Chosen::Cpu(b) => msloss_segment::segment(b, &vol, &cfg, |_| ()),
                Chosen::Reference => msloss_segment::segment(&Reference, &vol, &cfg, |_| ()),
            }
            .map_err(segment_err)
        })
    })?;
    let [d, h, w] = seg.dims;
    let dims: Vec<usize> = if d > 1 { vec![d, h, w] } else { vec![h, w] };
    let labels = numpy::PyArray1::from_slice(py, &seg.labels).reshape(dims)?.into_any();
    if !info {
        return Ok(labels);
    }
    // What `msloss segment --json` and `--plot` report.
    let summary = PyDict::new(py);
    let energy = PyDict::new(py);
    energy.set_item("total", seg.energy.total)?;
    energy.set_item("fidelity", seg.energy.fidelity)?;
    energy.set_item("length", seg.energy.length)?;
    let channels = vol.channels();
    let centroids: Vec<Vec<f64>> = seg.centroids.chunks(channels).map(<[f64]>::to_vec).collect();
    summary.set_item("phases", seg.phases)?;
    summary.set_item("iterations", seg.iterations)?;
    summary.set_item("converged", seg.converged)?;
    summary.set_item("energy", energy)?;
    summary.set_item("history", seg.history)?;
    summary.set_item("centroids", centroids)?;
    summary.set_item("pixels_per_phase", seg.pixels_per_phase)?;
    summary.set_item("lambda_effective", seg.lambda)?;
    summary.set_item("within_variance", seg.within_variance)?;
    summary.set_item("contrast_to_noise", seg.contrast_to_noise)?;
    summary.set_item("seconds", seg.init_seconds + seg.optimise_seconds)?;
    summary.set_item("start", seg.start)?;
    let rescues: Vec<(&str, f64, f64, bool)> =
        seg.rescues.iter().map(|r| (r.kind.name(), r.energy_before, r.energy_after, r.kept)).collect();
    summary.set_item("rescues", rescues)?;
    Ok((labels, summary).into_pyobject(py)?.into_any())
}

/// The extension module `msloss._msloss`.
#[pymodule]
fn _msloss(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(energy, m)?)?;
    m.add_function(wrap_pyfunction!(gradcheck, m)?)?;
    m.add_function(wrap_pyfunction!(segment, m)?)?;
    m.add_class::<PyEnergy>()?;
    m.add("MAX_THREADS", MAX_THREADS)?;
    Ok(())
}
