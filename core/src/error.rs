//! The one error type of msloss-core.

use crate::shape::Shape;

/// Everything that can be wrong with an evaluation request.
///
/// Every message says what was expected and what came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor has a zero-sized dimension.
    #[error("shape [B, N, C, D, H, W] = {dims:?} has a zero-sized dimension (every extent must be >= 1)")]
    EmptyDimension {
        /// The dimensions as given, `[B, N, C, D, H, W]`.
        dims: [usize; 6],
    },
    /// A tensor's rank is not 4 or 5.
    #[error("{what} must have rank 4 [{layout4}] or 5 [{layout5}], got rank {rank}")]
    BadRank {
        /// Which tensor.
        what: &'static str,
        /// The accepted rank-4 layout.
        layout4: &'static str,
        /// The accepted rank-5 layout.
        layout5: &'static str,
        /// The rank that came.
        rank: usize,
    },
    /// Two tensors disagree on a dimension.
    #[error("{what} has {dim} = {got} but the scores have {dim} = {expected}")]
    DimMismatch {
        /// Which tensor.
        what: &'static str,
        /// Which dimension (`"B"`, `"D"`, `"H"`, `"W"`).
        dim: &'static str,
        /// The extent taken from the scores.
        expected: usize,
        /// The extent that came.
        got: usize,
    },
    /// The total element count does not fit in `usize` (or the backend's index type).
    #[error("shape {shape} has more than {limit} elements in {what}")]
    TooLarge {
        /// The shape.
        shape: Shape,
        /// Which tensor overflowed.
        what: &'static str,
        /// The largest element count allowed.
        limit: u64,
    },
    /// A buffer's length does not match the shape.
    #[error("{what} buffer has {got} elements but shape {shape} needs {expected}")]
    BufferLength {
        /// Which buffer.
        what: &'static str,
        /// The shape the buffer should fit.
        shape: Shape,
        /// The element count the shape needs.
        expected: usize,
        /// The element count that came.
        got: usize,
    },
    /// A NaN or infinity in an input.
    #[error("{what} is not finite at flat index {index}: {value}")]
    NonFinite {
        /// Which tensor.
        what: &'static str,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The value that came.
        value: f64,
    },
    /// A negative probability.
    #[error("probabilities must be >= 0, but flat index {index} holds {value}")]
    NegativeProbability {
        /// Flat index of the first offending element.
        index: usize,
        /// The value that came.
        value: f64,
    },
    /// An input value too large for the float type: its squared distances (or squared
    /// differences) would overflow before any weight scales them.
    #[error(
        "{what} at flat index {index} holds {value}, beyond ±{limit:e}, the largest whose squares fit this float type (compute in f64, or rescale)"
    )]
    OutOfRange {
        /// Which tensor.
        what: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// The value that came.
        value: f64,
        /// The largest magnitude accepted.
        limit: f64,
    },
    /// A mask value other than 0 or 1.
    #[error("mask values must be 0 or 1, but flat index {index} holds {value}")]
    BadMask {
        /// Flat index of the first offending element.
        index: usize,
        /// The value that came.
        value: f64,
    },
    /// A parameter out of its range.
    #[error("parameter {name} must be {expected}, got {value}")]
    BadParam {
        /// The parameter's name.
        name: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// The value that came.
        value: f64,
    },
    /// The mean reduction over a mask with no valid pixel.
    #[error("the mask selects no pixel, so the mean reduction would divide by zero")]
    EmptyMask,
    /// A backend cannot run this request (for example an unsupported float type).
    #[error("backend {backend} does not support {what}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What it cannot do.
        what: &'static str,
    },
    /// The result came out non-finite although the inputs were valid (overflow in the maths).
    #[error("the {what} came out non-finite ({value}); inputs too large for this float type?")]
    NonFiniteResult {
        /// Which quantity.
        what: &'static str,
        /// The value.
        value: f64,
    },
}
