//! Central-difference checks of the reference gradient: every length kind, 2D and 3D, masks,
//! both reductions, both dtypes, logits and probabilities.

use msloss_core::gradcheck::{self, Mode, Options};
use msloss_core::rng::RandomInputs;
use msloss_core::{Input, LengthKind, Params, Real, Reduction, Reference, Scores, Shape};

fn run<T: Real>(shape: Shape, params: Params, logits: bool, masked: bool, seed: u64, tol: f64) {
    let data = RandomInputs::<T>::new(shape, seed);
    let scores = if logits { Scores::Logits(&data.logits[..]) } else { Scores::Probs(&data.probs[..]) };
    let mask = masked.then_some(&data.mask[..]);
    let input = Input::new(shape, scores, &data.image, mask).unwrap();
    let report = gradcheck::check(&Reference, &input, &params, &Options::default()).unwrap();
    assert!(report.passes(tol), "{shape} {params:?} logits={logits} masked={masked} {}: {report:?}", T::NAME);
}

fn shapes() -> Vec<Shape> {
    vec![
        Shape::new_2d(2, 3, 2, 5, 4).unwrap(),
        Shape::new(1, 2, 1, 3, 4, 5).unwrap(),
        Shape::new_2d(1, 1, 3, 4, 4).unwrap(),
        Shape::new_2d(1, 3, 1, 1, 7).unwrap(),
        Shape::new_2d(1, 3, 1, 7, 1).unwrap(),
    ]
}

#[test]
fn reference_gradient_matches_central_differences_f64() {
    for (i, shape) in shapes().into_iter().enumerate() {
        for kind in LengthKind::ALL {
            for reduction in [Reduction::Sum, Reduction::Mean] {
                // A visible length term: λ comparable to the fidelity's per-pixel scale.
                let params = Params { lambda: 0.3, length: kind, reduction, ..Params::default() };
                for logits in [true, false] {
                    for masked in [false, true] {
                        run::<f64>(shape, params, logits, masked, 17 + i as u64, 1e-6);
                    }
                }
            }
        }
    }
}

#[test]
fn centroid_eps_correction_term_is_exact() {
    // With a large ε_c the term −2ε_c/(A+ε_c)·⟨c, x−c⟩ is far from negligible: the envelope
    // argument alone would fail this check.
    for shape in shapes() {
        for logits in [true, false] {
            let params = Params { centroid_eps: 0.7, ..Params::default() };
            run::<f64>(shape, params, logits, true, 5, 1e-6);
        }
    }
}

#[test]
fn reference_gradient_f32_inputs() {
    for shape in shapes() {
        for kind in LengthKind::ALL {
            let params = Params { lambda: 0.3, length: kind, ..Params::default() };
            // The analytic gradient is rounded to f32; finite differences run in f64 on the same inputs.
            run::<f32>(shape, params, true, true, 3, 1e-5);
        }
    }
}

#[test]
fn directional_check_on_a_larger_tensor() {
    let shape = Shape::new(2, 3, 2, 4, 20, 30).unwrap();
    let data = RandomInputs::<f64>::new(shape, 9);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, Some(&data.mask)).unwrap();
    for kind in LengthKind::ALL {
        let params = Params { lambda: 0.2, length: kind, ..Params::default() };
        let r = gradcheck::check(&Reference, &input, &params, &Options::default()).unwrap();
        assert_eq!(r.mode, Mode::Directional);
        assert!(r.passes(1e-6), "{kind:?}: {r:?}");
    }
}

/// A one-pixel image: every centroid equals the pixel, so the gradient is rounding noise far
/// below the size of its terms; it is measured against the type's resolution of those terms
/// (`gradcheck::resolution`), and passes.
#[test]
fn gradients_below_the_resolution_are_compared_in_absolute_terms() {
    let shape = Shape::new_2d(1, 2, 1, 1, 1).unwrap();
    run::<f64>(shape, Params::default(), true, false, 1, 1e-6);
    run::<f32>(shape, Params::default(), true, false, 1, 1e-4);
    let data = RandomInputs::<f64>::new(shape, 1);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    let (grad_floor, energy_floor) = gradcheck::resolution(&input, &Params::default(), &data.image);
    assert!(grad_floor > 0.0 && grad_floor < 1e-11 && energy_floor < 1e-11, "{grad_floor:e} {energy_floor:e}");
}
