//! The one number bound used across msloss.

use core::fmt::{Debug, Display};
use num_traits::{Float, FromPrimitive, NumAssign, ToPrimitive};

/// The floating-point types msloss computes in (`f32` and `f64`).
///
/// A blanket impl covers every type with the listed bounds, so downstream code writes
/// `T: Real` instead of repeating them.
pub trait Real:
    Float + FromPrimitive + ToPrimitive + NumAssign + Debug + Display + Default + Send + Sync + 'static
{
    /// Short name of the type, as used on the command line and in reports (`"f32"`, `"f64"`).
    const NAME: &'static str;

    /// Converts from `f64`, rounding to nearest.
    fn from_f64_lossy(v: f64) -> Self;

    /// Widens to `f64` (exact for `f32` and `f64`).
    fn to_f64_lossless(self) -> f64;
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn from_f64_lossy(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64_lossless(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn from_f64_lossy(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64_lossless(self) -> f64 {
        self
    }
}
