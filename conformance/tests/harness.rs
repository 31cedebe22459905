//! The suite catches what it should: subjects that are wrong in one way each fail the check
//! that looks for it, and a subject that supports less (logits only, no centroids, the total
//! alone, untyped errors) has the cases and comparisons it cannot do skipped, not failed.

use msloss_conformance::{Failure, Outcome, Subject, Supports, Tested, checks};
use msloss_core::{Energy, Input, Params, Reference, Scores};

/// The reference in `f64`, altered by `alter` after each evaluation.
struct Altered<F> {
    inner: Tested<f64, Reference>,
    alter: F,
    supports: Supports,
    calls: u64,
}

fn altered<F: FnMut(&mut Outcome<f64>, u64)>(alter: F) -> Altered<F> {
    Altered { inner: Tested::new(Reference), alter, supports: Supports::ALL, calls: 0 }
}

impl<F: FnMut(&mut Outcome<f64>, u64)> Subject<f64> for Altered<F> {
    fn name(&self) -> &str {
        "altered reference"
    }
    fn supports(&self) -> Supports {
        self.supports
    }
    fn evaluate(&mut self, input: &Input<'_, f64>, params: &Params) -> Result<Outcome<f64>, Failure> {
        let mut o = self.inner.evaluate(input, params)?;
        self.calls += 1;
        (self.alter)(&mut o, self.calls);
        Ok(o)
    }
    fn energy(&mut self, input: &Input<'_, f64>, params: &Params) -> Result<Energy<f64>, Failure> {
        self.inner.energy(input, params)
    }
}

#[test]
#[should_panic(expected = "gradient[")]
fn a_gradient_off_by_1e_9_fails() {
    checks::every_feature(&mut altered(|o, _| o.grad[0] += 1e-9 * (1.0 + o.grad[0].abs())));
}

#[test]
#[should_panic(expected = "length got")]
fn a_wrong_energy_part_fails() {
    checks::some_features(&mut altered(|o, _| o.energy.length *= 1.0 + 1e-8));
}

#[test]
#[should_panic(expected = "centroids[")]
fn a_wrong_centroid_fails() {
    checks::other_parameters(&mut altered(|o, _| o.centroids.as_mut().unwrap()[1] = f64::NAN));
}

#[test]
#[should_panic(expected = "energy alone against energy with the gradient")]
fn an_energy_alone_that_differs_fails() {
    // `energy` comes from the reference untouched, `evaluate` does not.
    checks::some_features(&mut altered(|o, _| o.energy.total = o.energy.total.next_up()));
}

#[test]
#[should_panic(expected = "the second run differs from the first")]
fn bits_that_change_from_run_to_run_fail() {
    checks::same_bits_run_to_run(&mut altered(|o, calls| {
        if calls % 2 == 0 {
            o.grad[3] = o.grad[3].next_up();
        }
    }));
}

#[test]
#[should_panic(expected = "differs from reference")]
fn subjects_whose_bits_differ_fail() {
    let mut plain = Tested::<f64, _>::new(Reference);
    checks::same_bits(&mut plain, &mut altered(|o, _| o.energy.total = o.energy.total.next_up()));
}

/// Accepts everything the reference refuses, with the energy of a valid input.
struct Lenient;

impl Subject<f64> for Lenient {
    fn name(&self) -> &str {
        "lenient"
    }
    fn evaluate(&mut self, input: &Input<'_, f64>, _: &Params) -> Result<Outcome<f64>, Failure> {
        Ok(Outcome { energy: Energy::new(1.0, 0.0), grad: vec![0.0; input.shape().scores_len()], centroids: None })
    }
}

#[test]
#[should_panic(expected = "accepted")]
fn accepting_bad_input_fails() {
    checks::bad_input(&mut Lenient);
}

/// Refuses everything with another error than the reference's.
struct Wrong;

impl Subject<f64> for Wrong {
    fn name(&self) -> &str {
        "wrong errors"
    }
    fn evaluate(&mut self, _: &Input<'_, f64>, _: &Params) -> Result<Outcome<f64>, Failure> {
        Err(msloss_core::Error::EmptyMask.into())
    }
}

#[test]
#[should_panic(expected = "the error differs from the reference's")]
fn another_error_fails() {
    checks::bad_input(&mut Wrong);
}

#[test]
#[should_panic(expected = "does not say")]
fn an_untyped_message_without_the_references_fails() {
    let mut wrong = Tested::<f64, _>::new(Reference)
        .with_supports(Supports { typed_errors: false, ..Supports::ALL })
        .with_core_error(|_| None);
    // The reference's own messages pass …
    assert!(checks::bad_input(&mut wrong) > 0);
    // … another's do not.
    checks::bad_input(&mut Altered {
        supports: Supports { typed_errors: false, ..Supports::ALL },
        ..altered(|_, _| ())
    });
    struct Untyped;
    impl Subject<f64> for Untyped {
        fn name(&self) -> &str {
            "untyped"
        }
        fn supports(&self) -> Supports {
            Supports { typed_errors: false, ..Supports::ALL }
        }
        fn evaluate(&mut self, _: &Input<'_, f64>, _: &Params) -> Result<Outcome<f64>, Failure> {
            Err(Failure::message("no"))
        }
    }
    checks::bad_input(&mut Untyped);
}

/// Logits only, no centroids, the total alone, untyped errors: the reference seen through a
/// narrow interface, as an adapter offers it.
struct Narrow(Tested<f32, Reference>);

impl Subject<f32> for Narrow {
    fn name(&self) -> &str {
        "narrow reference"
    }
    fn supports(&self) -> Supports {
        Supports { probabilities: false, centroids: false, energy_parts: false, typed_errors: false, ..Supports::ALL }
    }
    fn evaluate(&mut self, input: &Input<'_, f32>, params: &Params) -> Result<Outcome<f32>, Failure> {
        assert!(matches!(input.scores(), Scores::Logits(_)), "probabilities reached a subject that has none");
        let o = self.0.evaluate(input, params).map_err(|f| Failure::message(f.message))?;
        let total = o.energy.total;
        Ok(Outcome { energy: Energy { fidelity: f32::NAN, length: f32::NAN, total }, grad: o.grad, centroids: None })
    }
}

#[test]
fn a_narrow_subject_skips_what_it_cannot_do() {
    fn ran(what: &str, n: usize, all: usize) {
        assert!(n > 0 && n < all, "{what}: {n} of {all} cases ran");
    }
    let mut narrow = Narrow(Tested::new(Reference));
    let mut full = Tested::<f32, _>::new(Reference);
    ran("every feature", checks::every_feature(&mut narrow), checks::every_feature(&mut full));
    ran("bad input", checks::bad_input(&mut narrow), checks::bad_input(&mut full));
    assert_eq!(checks::one_hot_probabilities(&mut narrow), 0);
    assert!(checks::same_bits_run_to_run(&mut narrow) > 0);
    assert!(checks::workspace_reuse(&mut narrow) > 0);
    assert_eq!(checks::overflow_is_an_error(&mut narrow), 1);
    assert_eq!(checks::gradient_overflow_is_an_error(&mut narrow), 0);
    assert_eq!(checks::gradient_overflow_is_an_error(&mut full), 1);
    // Without the reference's L1 signs, the L1 cases of tied logits are left out.
    let mut own_signs =
        Tested::<f32, _>::new(Reference).with_supports(Supports { reference_l1_signs: false, ..Supports::ALL });
    assert_eq!((checks::tied_logits(&mut own_signs), checks::tied_logits(&mut full)), (4, 8));
}
