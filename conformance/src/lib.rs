//! # msloss-conformance
//!
//! The conformance suite of msloss, written once and run against every backend and adapter:
//! the cases ([`case`]), the tolerances ([`Tolerance`]) and the checks ([`checks`]), all
//! generic over what they test, a [`Subject`].
//!
//! A subject evaluates the loss and says what it supports ([`Supports`]: probabilities, masks,
//! volumes, centroids, the energy's parts, typed errors); a check skips what a subject does not
//! support rather than fail on it. Any [`Backend`](msloss_core::Backend) is a subject through
//! [`Tested`], which keeps its workspace across calls; an adapter (burn, candle) implements
//! [`Subject`] over its own op, forward and backward.
//!
//! Every check compares with [`Reference`](msloss_core::Reference), the oracle, or compares
//! two subjects bit for bit, and panics with a message that names the subject, the float type,
//! the case, the element, and what came and was wanted.
//!
//! ```
//! use msloss_conformance::{Tested, checks};
//! use msloss_core::Reference;
//!
//! let mut subject = Tested::<f64, _>::new(Reference);
//! assert!(checks::some_features(&mut subject) > 0);
//! ```
//!
//! A test crate runs the whole suite on its subjects with [`tests!`] (and the checks that
//! need the backend itself with [`backend_tests!`]).

pub mod case;
pub mod checks;
mod subject;
mod tolerance;

pub use case::Case;
pub use subject::{Failure, Outcome, Subject, Supports, Tested};
pub use tolerance::Tolerance;

/// One `#[test]` per check of [`checks`] that takes any [`Subject`], each run on every subject
/// that `$subjects` (an expression evaluated anew in each test, giving an iterable of subjects
/// of `Subject<$float>`) yields. Put it in a module of its own per float type:
///
/// ```
/// mod f64 {
///     use msloss_conformance::Tested;
///     use msloss_core::Reference;
///
///     msloss_conformance::tests!(f64, [Tested::<f64, _>::new(Reference)]);
///     msloss_conformance::backend_tests!(f64, [Tested::<f64, _>::new(Reference)]);
/// }
/// ```
#[macro_export]
macro_rules! tests {
    ($float:ty, $subjects:expr) => {
        $crate::tests!(@each $float, $subjects, every_feature, other_parameters, one_hot_probabilities,
            tied_logits, tied_row_ends, tied_slices, larger_images, near_coincident_centroids,
            same_bits_run_to_run, workspace_reuse, bad_input, bad_values_in_large_inputs, overflow_is_an_error,
            gradient_overflow_is_an_error, local_fidelity);
    };
    (@each $float:ty, $subjects:expr, $($check:ident),+) => {
        $(
            #[test]
            fn $check() {
                let mut ran = 0;
                for mut subject in $subjects {
                    ran += $crate::checks::$check::<$float, _>(&mut subject);
                }
                ::std::println!("{}: {ran} cases", ::std::stringify!($check));
            }
        )+
    };
}

/// One `#[test]` per check of [`checks`] that needs the backend itself (the gradient checker,
/// caller-owned output buffers), each run on every [`Tested`] backend that `$subjects` yields.
#[macro_export]
macro_rules! backend_tests {
    ($float:ty, $subjects:expr) => {
        $crate::tests!(@each $float, $subjects, gradcheck, short_outputs);
    };
}
