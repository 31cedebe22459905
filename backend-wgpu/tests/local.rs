//! The local fidelity's GPU-specific sizes (the conformance suite's `local_fidelity` and
//! gradcheck cases cover the maths): a convolution window at [`MAX_WINDOW`] taps, the most one
//! invocation sums, against the reference; a line longer than lavapipe's 65,535 loop
//! iterations, correct with a small σ and refused with a typed error (not silently cut short)
//! with a σ whose window would pass the bound; a plan switched between the fidelities; an
//! image far from zero; and a batch whose samples share one sample's scratch in turn.

mod common;

use common::{backend, subjects};
use msloss_conformance::case::shape;
use msloss_conformance::{Case, checks};
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Fidelity, Input, LengthKind, Params, Reduction, Scores};
use msloss_wgpu::{Io, MAX_WINDOW, WgpuError};

fn local(sigma: f64) -> Params {
    Params::default().with_lambda(0.05).with_fidelity(Fidelity::Local { sigma })
}

/// Each case against the reference on the GPU, if there is one.
fn on_gpu(cases: &[Case], what: &str) {
    for mut gpu in subjects() {
        assert_eq!(checks::compare_all(&mut gpu, cases, what), cases.len());
    }
}

/// A line of `MAX_WINDOW` pixels and the largest σ it allows (r = 3σ, far past the line): every
/// output of the convolution sums the whole line, `MAX_WINDOW` iterations in one invocation.
#[test]
fn window_at_the_bound() {
    let w = MAX_WINDOW as usize;
    on_gpu(&[Case::new(shape(1, 2, 1, 1, 1, w), true, true, local(w as f64), 3)], "window at the bound");
}

/// 70,000 pixels along one axis, more than lavapipe's 65,535 loop iterations: with a small σ
/// each invocation loops over 2⌈3σ⌉ + 1 taps and the result is the reference's; with σ = the
/// extent the window would need 70,000 iterations in one invocation, and the plan refuses it.
#[test]
fn lines_longer_than_lavapipes_loop_budget() {
    let Some(b) = backend() else { return };
    let w = 70_000;
    let p = local(2.0).with_length(LengthKind::Charbonnier).with_reduction(Reduction::Mean);
    on_gpu(&[Case::new(shape(1, 2, 1, 1, 1, w), false, true, p, 5)], "long line, small σ");
    let s = shape(1, 2, 1, 1, 1, w);
    for sigma in [w as f64, f64::from(MAX_WINDOW) / 6.0 + 1.0] {
        let e = b.plan(s, &local(sigma), Io::TRAIN).unwrap_err();
        assert!(matches!(e, WgpuError::ExtentTooLarge { max, .. } if max == MAX_WINDOW as usize), "{e}");
        assert!(e.to_string().contains("window"), "{e}");
        // The host path says the same.
        let data = RandomInputs::<f32>::new(s, 6);
        let input = Input::new(s, Scores::Logits(&data.logits), &data.image, None).unwrap();
        let e = b.energy(&input, &local(sigma), &mut Backend::<f32>::workspace(b)).unwrap_err();
        assert!(matches!(e, WgpuError::ExtentTooLarge { .. }), "{e}");
    }
}

/// One workspace (one plan) through global → local → another σ → global gives the bits of a
/// fresh workspace each time: `set_params` rebuilds the plan when the fidelity changes.
#[test]
fn a_plan_switches_fidelity() {
    let Some(b) = backend() else { return };
    let s = shape(2, 3, 2, 1, 9, 7);
    let data = RandomInputs::<f32>::new(s, 9);
    let input = Input::new(s, Scores::Logits(&data.logits), &data.image, Some(&data.mask)).unwrap();
    let mut ws = Backend::<f32>::workspace(b);
    for p in [Params::default(), local(1.5), local(0.6), Params::default(), local(1.5)] {
        let mut g1 = vec![0.0f32; s.scores_len()];
        let mut g2 = vec![0.0f32; s.scores_len()];
        let e1 = b.energy_and_grad(&input, &p, &mut g1, &mut ws).unwrap();
        let e2 = b.energy_and_grad(&input, &p, &mut g2, &mut Backend::<f32>::workspace(b)).unwrap();
        assert_eq!(e1.total.to_bits(), e2.total.to_bits(), "{p:?}");
        assert_eq!(e1.fidelity.to_bits(), e2.fidelity.to_bits(), "{p:?}");
        assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()), "{p:?}");
    }
}

/// An image far from zero (values in `[1000, 1001)`, a bias field's offset): the kernels
/// centre it on a weighted mean before the `f32` window sums, so `‖x − f‖²` does not cancel.
#[test]
fn an_offset_image_does_not_cancel() {
    for mut gpu in subjects() {
        for (logits, mask, sigma) in [(true, true, 1.5), (false, false, 4.0)] {
            let case = Case::new(shape(1, 3, 2, 1, 12, 10), logits, mask, local(sigma), 21);
            let mut data = case.data::<f32>();
            for (i, x) in data.image.iter_mut().enumerate() {
                *x += 1000.0 + (i % 10) as f32;
            }
            assert!(checks::agrees_with_reference(&mut gpu, &case, &data, "offset image").is_some());
        }
    }
}

/// Three samples run one after another over one sample's scratch (issue 27): against the
/// reference, and each sample's gradient is bit for bit that of the sample evaluated alone (the
/// sum reduction: nothing else couples the samples), its energy the samples' sum to f32's
/// rounding. One, two and three convolved axes (each ends the products in another buffer).
#[test]
fn samples_reuse_one_samples_scratch() {
    let Some(b) = backend() else { return };
    let p = local(1.2).with_length(LengthKind::Charbonnier);
    for sh in [shape(3, 3, 2, 1, 1, 40), shape(3, 3, 2, 1, 9, 7), shape(3, 2, 1, 4, 5, 6)] {
        let case = Case::new(sh, true, true, p, 27);
        on_gpu(&[case], "B = 3, local");
        let data = case.data::<f32>();
        let input = Input::new(sh, Scores::Logits(&data.logits), &data.image, Some(&data.mask)).unwrap();
        let mut grad = vec![0.0f32; sh.scores_len()];
        let batch = b.energy_and_grad(&input, &p, &mut grad, &mut Backend::<f32>::workspace(b)).unwrap();
        let one = sh.with_batch(1).unwrap();
        let (ns, cs, s) = (one.scores_len(), one.image_len(), one.spatial());
        let mut sum = 0.0f64;
        for i in 0..sh.batch() {
            let input = Input::new(
                one,
                Scores::Logits(&data.logits[i * ns..(i + 1) * ns]),
                &data.image[i * cs..(i + 1) * cs],
                Some(&data.mask[i * s..(i + 1) * s]),
            )
            .unwrap();
            let mut g = vec![0.0f32; ns];
            let e = b.energy_and_grad(&input, &p, &mut g, &mut Backend::<f32>::workspace(b)).unwrap();
            sum += f64::from(e.fidelity);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&grad[i * ns..(i + 1) * ns]), bits(&g), "{sh}: sample {i}'s gradient");
        }
        let rel = (f64::from(batch.fidelity) - sum).abs() / sum.abs().max(f64::MIN_POSITIVE);
        assert!(rel < 1e-6, "{sh}: fidelity {} against the samples' {sum}", batch.fidelity);
    }
}
