//! Property tests over bounded random inputs (proptest): what must hold for every input.

use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Fidelity, Input, LengthKind, Outputs, Params, Reduction, Reference, Scores, Shape};
use proptest::prelude::*;

fn any_shape() -> impl Strategy<Value = Shape> {
    (1usize..3, 1usize..5, 1usize..4, 1usize..4, 1usize..7, 1usize..7)
        .prop_map(|(b, n, c, d, h, w)| Shape::new(b, n, c, d, h, w).unwrap())
}

fn any_params() -> impl Strategy<Value = Params> {
    (0.0f64..2.0, 0.0f64..2.0, 0usize..3, 1e-3f64..0.5, 1e-9f64..1.0, any::<bool>()).prop_map(
        |(lambda, w, kind, delta, eps, mean)| Params {
            lambda,
            fidelity_weight: w,
            length: LengthKind::ALL[kind],
            delta,
            centroid_eps: eps,
            reduction: if mean { Reduction::Mean } else { Reduction::Sum },
            fidelity: Fidelity::Global,
        },
    )
}

fn grad(input: &Input<'_, f64>, p: &Params) -> (msloss_core::Energy<f64>, Vec<f64>) {
    let mut g = vec![0.0; input.shape().scores_len()];
    let e = Reference.evaluate(input, p, Outputs { grad: Some(&mut g), centroids: None }, &mut Reference.workspace());
    (e.unwrap(), g)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every part is finite and non-negative; the gradient is finite; masked pixels get zero gradient.
    #[test]
    fn energy_parts_are_nonnegative_and_masked_pixels_have_zero_gradient(
        shape in any_shape(), p in any_params(), seed in any::<u64>(), logits in any::<bool>(),
    ) {
        let d = RandomInputs::<f64>::new(shape, seed);
        prop_assume!(p.reduction == Reduction::Sum || d.mask.contains(&1.0));
        let scores = if logits { Scores::Logits(&d.logits[..]) } else { Scores::Probs(&d.probs[..]) };
        let input = Input::new(shape, scores, &d.image, Some(&d.mask)).unwrap();
        let (e, g) = grad(&input, &p);
        prop_assert!(e.fidelity >= 0.0 && e.length >= 0.0 && e.total.is_finite());
        prop_assert!(g.iter().all(|v| v.is_finite()));
        let sp = shape.spatial();
        for (i, gi) in g.iter().enumerate() {
            let (b, s) = (i / (shape.classes() * sp), i % sp);
            if d.mask[b * sp + s] == 0.0 {
                prop_assert_eq!(*gi, 0.0);
            }
        }
    }

    /// Softmax is invariant to adding a constant to every logit of a pixel, so the logit
    /// gradient sums to zero over classes, and the energy does not move.
    #[test]
    fn logit_gradient_sums_to_zero_over_classes(shape in any_shape(), p in any_params(), seed in any::<u64>(), shift in -50.0f64..50.0) {
        let d = RandomInputs::<f64>::new(shape, seed);
        let input = Input::new(shape, Scores::Logits(&d.logits), &d.image, None).unwrap();
        let (e, g) = grad(&input, &p);
        let (n_cls, sp) = (shape.classes(), shape.spatial());
        let scale = g.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        for b in 0..shape.batch() {
            for s in 0..sp {
                let sum: f64 = (0..n_cls).map(|n| g[(b * n_cls + n) * sp + s]).sum();
                prop_assert!(sum.abs() <= 1e-12 * scale * n_cls as f64, "sum {sum} scale {scale}");
            }
        }
        let shifted: Vec<f64> = d.logits.iter().map(|z| z + shift).collect();
        let input2 = Input::new(shape, Scores::Logits(&shifted), &d.image, None).unwrap();
        let (e2, _) = grad(&input2, &p);
        prop_assert!((e.total - e2.total).abs() <= 1e-10 * e.total.abs().max(1e-12));
    }

    /// Scores at masked pixels do not influence the energy.
    #[test]
    fn masked_scores_do_not_matter(shape in any_shape(), p in any_params(), seed in any::<u64>()) {
        let d = RandomInputs::<f64>::new(shape, seed);
        prop_assume!(p.reduction == Reduction::Sum || d.mask.contains(&1.0));
        let sp = shape.spatial();
        let mut changed = d.logits.clone();
        for (i, z) in changed.iter_mut().enumerate() {
            let (b, s) = (i / (shape.classes() * sp), i % sp);
            if d.mask[b * sp + s] == 0.0 {
                *z = 7.0 * (i as f64).sin();
            }
        }
        let a = Input::new(shape, Scores::Logits(&d.logits), &d.image, Some(&d.mask)).unwrap();
        let b = Input::new(shape, Scores::Logits(&changed), &d.image, Some(&d.mask)).unwrap();
        let (ea, _) = grad(&a, &p);
        let (eb, _) = grad(&b, &p);
        prop_assert_eq!(ea, eb);
    }

    /// The reference in f32 rounds the f64 result: inputs are widened and every sum runs in f64.
    #[test]
    fn f32_reference_is_the_rounded_f64_reference(shape in any_shape(), p in any_params(), seed in any::<u64>()) {
        let d32 = RandomInputs::<f32>::new(shape, seed);
        let wide = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
        let (z64, x64) = (wide(&d32.logits), wide(&d32.image));
        let i32_ = Input::new(shape, Scores::Logits(&d32.logits), &d32.image, None).unwrap();
        let i64_ = Input::new(shape, Scores::Logits(&z64), &x64, None).unwrap();
        let e32 = Reference.energy(&i32_, &p, &mut Reference.workspace()).unwrap();
        let (e64, _) = grad(&i64_, &p);
        prop_assert_eq!(e32.total, e64.total as f32);
    }
}
