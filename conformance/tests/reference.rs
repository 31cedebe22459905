//! The suite against the reference itself, in `f32` and `f64`: every check runs (the reference
//! agrees with itself, is deterministic, refuses bad input with its own errors), so the suite's
//! cases and comparisons are known to hold before any other backend meets them; and the
//! gradient checker confirms the reference's analytic gradient.

use msloss_conformance::Tested;
use msloss_core::Reference;

/// The reference, as a subject in `T`.
fn reference<T: msloss_core::Real>() -> [Tested<T, Reference>; 1] {
    [Tested::new(Reference)]
}

mod f32 {
    msloss_conformance::tests!(f32, super::reference::<f32>());
    msloss_conformance::backend_tests!(f32, super::reference::<f32>());
}

mod f64 {
    msloss_conformance::tests!(f64, super::reference::<f64>());
    msloss_conformance::backend_tests!(f64, super::reference::<f64>());
}

/// Two subjects compared bit for bit: the reference against itself with the gradient written
/// at other offsets.
#[test]
fn grad_offset_changes_no_bit() {
    assert!(msloss_conformance::checks::grad_offset_changes_no_bit(&mut Tested::<f64, _>::new(Reference)) > 0);
}
