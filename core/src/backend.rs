//! The `Backend` trait: what every implementation of the loss provides.

use crate::input::check_len;
use crate::{Error, Input, Params, Real, Scores, Shape};

/// The energy of one evaluation, after reduction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Energy<T> {
    /// `w·F` (divided by the valid-pixel count under the mean reduction).
    pub fidelity: T,
    /// `λ·Len` (divided likewise).
    pub length: T,
    /// `fidelity + length`.
    pub total: T,
}

impl<T: Real> Energy<T> {
    /// Builds the report from its two parts.
    pub fn new(fidelity: T, length: T) -> Self {
        Self { fidelity, length, total: fidelity + length }
    }
}

/// Caller-owned output buffers; each is optional.
///
/// `grad` receives `∂E/∂scores` with the scores' shape `[B, N, D, H, W]` (wrt logits when the
/// scores are logits, wrt probabilities otherwise); `centroids` receives `c`, `[B, N, C]`.
#[derive(Debug, Default)]
pub struct Outputs<'a, T> {
    /// The gradient, `B·N·D·H·W` elements.
    pub grad: Option<&'a mut [T]>,
    /// The centroids, `B·N·C` elements.
    pub centroids: Option<&'a mut [T]>,
}

impl<'a, T> Outputs<'a, T> {
    /// No outputs beyond the energy.
    pub fn none() -> Self {
        Self { grad: None, centroids: None }
    }
    /// Checks both buffers' lengths against `shape`.
    ///
    /// # Errors
    /// [`Error::BufferLength`].
    pub fn check(&self, shape: Shape) -> Result<(), Error> {
        if let Some(g) = &self.grad {
            check_len("gradient", shape, shape.scores_len(), g.len())?;
        }
        if let Some(c) = &self.centroids {
            check_len("centroids", shape, shape.centroids_len(), c.len())?;
        }
        Ok(())
    }
}

/// An implementation of the multiphase Mumford–Shah loss.
///
/// # Design
/// - One required entry point, [`Backend::evaluate`], computes the energy and, on request, the
///   gradient and the centroids into caller-owned buffers. The defaulted methods are
///   conveniences over it; a backend overrides none of them unless it has a faster path.
/// - What differs between backends is associated: the reusable scratch ([`Backend::Workspace`],
///   created once with [`Backend::workspace`] and passed to every call, so a training loop
///   allocates nothing after its first call with a given shape) and the error type (a GPU backend
///   has more ways to fail than a CPU one; every backend's error converts from [`Error`]).
/// - Parameters are `f64`; inputs and outputs are in the backend's float type `T`.
/// - The gradient is with respect to the scores as given: logits or probabilities
///   ([`Scores`]).
/// - On `Err`, the contents of the output buffers are unspecified; nothing is returned as a
///   success after a partial write.
pub trait Backend<T: Real> {
    /// Reusable scratch memory (grows to the largest shape seen).
    type Workspace;
    /// The backend's error; input errors arrive as [`Error`].
    type Error: From<Error> + core::fmt::Debug + core::fmt::Display;

    /// A short name (`"reference"`, `"cpu"`, `"wgpu"`).
    fn name(&self) -> &'static str;

    /// A fresh, empty workspace.
    fn workspace(&self) -> Self::Workspace;

    /// Computes the energy, and the gradient and centroids where `out` asks for them.
    ///
    /// # Errors
    /// Any [`Error`] of [`Params::validate`], [`Input::validate_values`] and
    /// [`Outputs::check`]; [`Error::EmptyMask`] for the mean reduction over an all-zero mask;
    /// [`Error::NonFiniteResult`] when the energy, or any element of a requested gradient, comes
    /// out non-finite (valid inputs can still overflow `T` with extreme weights), so a success
    /// never hands back a NaN or an infinity; backend-specific failures.
    fn evaluate(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        out: Outputs<'_, T>,
        ws: &mut Self::Workspace,
    ) -> Result<Energy<T>, Self::Error>;

    /// The energy alone.
    ///
    /// # Errors
    /// As [`Backend::evaluate`].
    fn energy(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        ws: &mut Self::Workspace,
    ) -> Result<Energy<T>, Self::Error> {
        self.evaluate(input, params, Outputs::none(), ws)
    }

    /// The energy and its gradient wrt the scores as given.
    ///
    /// # Errors
    /// As [`Backend::evaluate`].
    fn energy_and_grad(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        grad: &mut [T],
        ws: &mut Self::Workspace,
    ) -> Result<Energy<T>, Self::Error> {
        self.evaluate(input, params, Outputs { grad: Some(grad), centroids: None }, ws)
    }

    /// The energy and `∂E/∂y` for probabilities `y`.
    ///
    /// # Errors
    /// As [`Backend::evaluate`], and [`Error::BufferLength`] for buffers that do not fit `shape`.
    #[expect(clippy::too_many_arguments, reason = "mirrors the tensors a caller holds")]
    fn energy_grad_probs(
        &self,
        shape: Shape,
        probs: &[T],
        image: &[T],
        mask: Option<&[T]>,
        params: &Params,
        grad: &mut [T],
        ws: &mut Self::Workspace,
    ) -> Result<Energy<T>, Self::Error> {
        let input = Input::new(shape, Scores::Probs(probs), image, mask)?;
        self.energy_and_grad(&input, params, grad, ws)
    }

    /// The energy and `∂E/∂z` for logits `z`.
    ///
    /// # Errors
    /// As [`Backend::energy_grad_probs`].
    #[expect(clippy::too_many_arguments, reason = "mirrors the tensors a caller holds")]
    fn energy_grad_logits(
        &self,
        shape: Shape,
        logits: &[T],
        image: &[T],
        mask: Option<&[T]>,
        params: &Params,
        grad: &mut [T],
        ws: &mut Self::Workspace,
    ) -> Result<Energy<T>, Self::Error> {
        let input = Input::new(shape, Scores::Logits(logits), image, mask)?;
        self.energy_and_grad(&input, params, grad, ws)
    }
}

/// The checks every backend makes before computing: parameters, output lengths, input values,
/// and a non-empty mask under the mean reduction. Returns the valid-pixel count `V`.
///
/// Backends that fuse value checks into their own passes call [`Params::validate`] and
/// [`Outputs::check`] directly instead.
///
/// # Errors
/// As [`Backend::evaluate`].
pub fn check_request<T: Real>(input: &Input<'_, T>, params: &Params, out: &Outputs<'_, T>) -> Result<usize, Error> {
    params.validate_for(input.shape())?;
    out.check(input.shape())?;
    input.validate_values()?;
    let valid = input.valid_count();
    if valid == 0 && params.reduction == crate::Reduction::Mean {
        return Err(Error::EmptyMask);
    }
    Ok(valid)
}
