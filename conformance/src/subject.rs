//! What the suite tests: a [`Subject`], and [`Tested`], which makes any [`Backend`] one.

use std::any::Any;
use std::fmt;

use msloss_core::{Backend, Energy, Error, Input, Outputs, Params, Real};

use crate::{Case, Tolerance};

/// The results of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    /// The energy. A subject that reports the total alone (see [`Supports::energy_parts`])
    /// puts NaN in the parts.
    pub energy: Energy<T>,
    /// The gradient wrt the scores as given (logits or probabilities), `[B, N, D, H, W]`.
    pub grad: Vec<T>,
    /// The centroids `[B, N, C]`, where the subject reports them.
    pub centroids: Option<Vec<T>>,
}

impl<T: Real> Outcome<T> {
    /// Every number's bits, in `f64`: fidelity, length, total, the gradient, the centroids.
    pub fn bits(&self) -> Vec<u64> {
        let e = [self.energy.fidelity, self.energy.length, self.energy.total];
        let centroids = self.centroids.as_deref().unwrap_or(&[]);
        e.iter().chain(&self.grad).chain(centroids).map(|v| v.to_f64_lossless().to_bits()).collect()
    }

    /// Where the bits of `self` and `other` first differ, described (which number, both
    /// values, how many differ); `None` when they are identical.
    pub fn first_difference(&self, other: &Self) -> Option<String> {
        let (a, b) = (self.bits(), other.bits());
        if a.len() != b.len() {
            return Some(format!(
                "{} numbers against {} (gradient {} against {}, centroids {:?} against {:?})",
                a.len(),
                b.len(),
                self.grad.len(),
                other.grad.len(),
                self.centroids.as_ref().map(Vec::len),
                other.centroids.as_ref().map(Vec::len)
            ));
        }
        let at = a.iter().zip(&b).position(|(x, y)| x != y)?;
        let count = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        let what = match at {
            0 => "fidelity".to_string(),
            1 => "length".to_string(),
            2 => "total".to_string(),
            i if i - 3 < self.grad.len() => format!("gradient[{}]", i - 3),
            i => format!("centroids[{}]", i - 3 - self.grad.len()),
        };
        Some(format!(
            "{what}: {:e} against {:e} ({count} of {} numbers differ)",
            f64::from_bits(a[at]),
            f64::from_bits(b[at]),
            a.len()
        ))
    }
}

/// Why a subject refused a request: msloss's typed error where the subject reports one, and a
/// message in any case.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// msloss's error, where the subject reports it as such.
    pub error: Option<Error>,
    /// What the subject said.
    pub message: String,
}

impl Failure {
    /// A failure with a message and no typed error.
    pub fn message(message: impl fmt::Display) -> Self {
        Self { error: None, message: message.to_string() }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self { message: error.to_string(), error: Some(error) }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{e:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What a subject can do. A check skips the cases (or the comparisons) a subject does not
/// support rather than fail on them; everything else it must do as the reference does.
///
/// Whether a subject computes in `f64` is in its type: it implements [`Subject<f64>`] or not
/// (and a test runs the suite in the float types its subject has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supports {
    /// Probabilities as scores (else logits only).
    pub probabilities: bool,
    /// A mask.
    pub mask: bool,
    /// Volumes (`D > 1`).
    pub volumes: bool,
    /// Reporting the centroids.
    pub centroids: bool,
    /// Reporting fidelity and length apart (else the total alone).
    pub energy_parts: bool,
    /// Reporting failures as msloss's typed [`Error`] (else a message, which must then contain
    /// the reference's message).
    pub typed_errors: bool,
    /// The reference's L1 subgradient where a difference of softmax outputs is zero in exact
    /// arithmetic but need not be after rounding (different logits whose softmax outputs are
    /// equal): the sign taken as the reference takes it ([`msloss_core::Softmax`]), not
    /// from the subject's own rounding. Without it, [`checks::tied_logits`](crate::checks::tied_logits)
    /// leaves out its L1 cases (ties of equal logits, which any arithmetic keeps exact, are
    /// still checked).
    pub reference_l1_signs: bool,
    /// The local fidelity ([`msloss_core::Fidelity::Local`]).
    pub local_fidelity: bool,
    /// Centroids carried into the gradient with more precision than `f32` (the CPU backend
    /// computes them in `f64`). Without it, [`checks::near_coincident_centroids`](crate::checks::near_coincident_centroids)
    /// holds an `f32` subject to [`NEAR_COINCIDENT_F32`](crate::checks::NEAR_COINCIDENT_F32)
    /// rather than its own bar: one `f32` rounding of each centroid moves that case's gradient
    /// by about its bar.
    pub centroids_beyond_f32: bool,
}

impl Supports {
    /// Everything (every [`Backend`]).
    pub const ALL: Supports = Supports {
        probabilities: true,
        mask: true,
        volumes: true,
        centroids: true,
        energy_parts: true,
        typed_errors: true,
        reference_l1_signs: true,
        local_fidelity: true,
        centroids_beyond_f32: true,
    };

    /// Whether a subject with these capabilities can run `case`.
    pub fn admits(&self, case: &Case) -> bool {
        let local = matches!(case.params.fidelity, msloss_core::Fidelity::Local { .. });
        self.takes(case.logits, case.mask, case.shape.depth()) && (!local || self.local_fidelity)
    }

    /// Whether a subject with these capabilities can take `input`.
    pub fn admits_input<T: Real>(&self, input: &Input<'_, T>) -> bool {
        self.takes(input.scores().is_logits(), input.mask().is_some(), input.shape().depth())
    }

    fn takes(&self, logits: bool, mask: bool, depth: usize) -> bool {
        (logits || self.probabilities) && (!mask || self.mask) && (depth == 1 || self.volumes)
    }
}

/// What a backend or adapter offers to be tested: evaluations of the loss, and what it can do.
///
/// A subject may keep state between calls (a workspace, a model); [`Subject::reset`] drops it.
pub trait Subject<T: Real> {
    /// A name for messages (`"cpu avx2 2 threads"`).
    fn name(&self) -> &str;

    /// What it can do; by default everything.
    fn supports(&self) -> Supports {
        Supports::ALL
    }

    /// How close to the reference its results must be; by default [`Tolerance::of`] `T`.
    fn tolerance(&self) -> Tolerance {
        Tolerance::of::<T>()
    }

    /// The energy, the gradient wrt the scores as given and (where supported) the centroids.
    ///
    /// # Errors
    /// A [`Failure`] where the subject refuses the request.
    fn evaluate(&mut self, input: &Input<'_, T>, params: &Params) -> Result<Outcome<T>, Failure>;

    /// The energy alone (without a gradient, where the subject can); by default that of
    /// [`Subject::evaluate`].
    ///
    /// # Errors
    /// As [`Subject::evaluate`].
    fn energy(&mut self, input: &Input<'_, T>, params: &Params) -> Result<Energy<T>, Failure> {
        Ok(self.evaluate(input, params)?.energy)
    }

    /// Forgets whatever it keeps between calls (a fresh workspace); by default nothing.
    fn reset(&mut self) {}
}

/// Any [`Backend`] as a [`Subject`]: the backend with its workspace, kept across calls.
///
/// Its error becomes a [`Failure`] whose typed error is found by a function given with
/// [`Tested::with_core_error`]; by default the backend's error is taken when it is
/// [`msloss_core::Error`] itself.
pub struct Tested<T: Real, B: Backend<T>> {
    backend: B,
    workspace: B::Workspace,
    name: String,
    tolerance: Tolerance,
    supports: Supports,
    grad_offset: usize,
    core_error: fn(&B::Error) -> Option<Error>,
}

/// `e` itself when it is msloss's [`Error`].
fn downcast<E: 'static>(e: &E) -> Option<Error> {
    (e as &dyn Any).downcast_ref::<Error>().cloned()
}

impl<T: Real, B: Backend<T>> Tested<T, B>
where
    B::Error: 'static,
{
    /// The backend with a fresh workspace, named after it, held to [`Tolerance::of`] `T`,
    /// supporting everything.
    pub fn new(backend: B) -> Self {
        let workspace = backend.workspace();
        let name = backend.name().to_string();
        Self {
            backend,
            workspace,
            name,
            tolerance: Tolerance::of::<T>(),
            supports: Supports::ALL,
            grad_offset: 0,
            core_error: downcast::<B::Error>,
        }
    }
}

impl<T: Real, B: Backend<T>> Tested<T, B> {
    /// With another name for messages.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Held to another tolerance.
    pub fn with_tolerance(mut self, tolerance: Tolerance) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// With other capabilities.
    pub fn with_supports(mut self, supports: Supports) -> Self {
        self.supports = supports;
        self
    }

    /// Writing the gradient `offset` elements into a buffer of its own (its alignment must
    /// change no bit).
    pub fn with_grad_offset(mut self, offset: usize) -> Self {
        self.grad_offset = offset;
        self
    }

    /// Finding msloss's typed error in the backend's error with `core_error`.
    pub fn with_core_error(mut self, core_error: fn(&B::Error) -> Option<Error>) -> Self {
        self.core_error = core_error;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend's own evaluation into caller-owned `out`, with the kept workspace.
    ///
    /// # Errors
    /// The backend's error, as a [`Failure`].
    pub fn evaluate_into(
        &mut self,
        input: &Input<'_, T>,
        params: &Params,
        out: Outputs<'_, T>,
    ) -> Result<Energy<T>, Failure> {
        match self.backend.evaluate(input, params, out, &mut self.workspace) {
            Ok(e) => Ok(e),
            Err(e) => Err(self.failure(&e)),
        }
    }

    fn failure(&self, e: &B::Error) -> Failure {
        Failure { error: (self.core_error)(e), message: e.to_string() }
    }
}

impl<T: Real, B: Backend<T>> Subject<T> for Tested<T, B> {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports(&self) -> Supports {
        self.supports
    }

    fn tolerance(&self) -> Tolerance {
        self.tolerance
    }

    fn evaluate(&mut self, input: &Input<'_, T>, params: &Params) -> Result<Outcome<T>, Failure> {
        let shape = input.shape();
        // NaN, so that an element the backend leaves unwritten shows.
        let mut grad = vec![T::nan(); self.grad_offset + shape.scores_len()];
        let mut centroids = vec![T::nan(); shape.centroids_len()];
        let out = Outputs { grad: Some(&mut grad[self.grad_offset..]), centroids: Some(&mut centroids) };
        let energy = self.evaluate_into(input, params, out)?;
        grad.drain(..self.grad_offset);
        Ok(Outcome { energy, grad, centroids: Some(centroids) })
    }

    fn energy(&mut self, input: &Input<'_, T>, params: &Params) -> Result<Energy<T>, Failure> {
        match self.backend.energy(input, params, &mut self.workspace) {
            Ok(e) => Ok(e),
            Err(e) => Err(self.failure(&e)),
        }
    }

    fn reset(&mut self) {
        self.workspace = self.backend.workspace();
    }
}
