//! The GPU backend against the reference on seeded inputs: every feature of the definition,
//! sizes that need many workgroups per (b, n) and multi-level reductions (1024², 64³), the
//! gradient checker, determinism and workspace reuse.
//!
//! These tests FAIL when no adapter is found, unless `MSLOSS_SKIP_GPU=1` (CI installs Mesa's
//! lavapipe, a software Vulkan driver).

mod common;

use common::{Tolerance, assert_energy_close, assert_slice_close, backend, gpu, reference};
use msloss_core::gradcheck::{self, Options};
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Input, LengthKind, Params, Reduction, Scores, Shape};

fn params(length: LengthKind, reduction: Reduction) -> Params {
    // λ large enough that the length term matters next to the fidelity.
    Params::default().with_lambda(0.05).with_length(length).with_reduction(reduction)
}

/// Every combination of scores kind, mask, length kind and reduction on `shape`.
fn sweep(shape: Shape, seed: u64) {
    let Some(b) = backend() else { return };
    let data = RandomInputs::<f32>::new(shape, seed);
    let mut ws = Backend::<f32>::workspace(b);
    for logits in [true, false] {
        for masked in [false, true] {
            let scores = if logits { Scores::Logits(&data.logits) } else { Scores::Probs(&data.probs) };
            let mask = masked.then_some(&data.mask[..]);
            let input = Input::new(shape, scores, &data.image, mask).unwrap();
            for length in LengthKind::ALL {
                for reduction in [Reduction::Sum, Reduction::Mean] {
                    let p = params(length, reduction);
                    let what =
                        format!("{shape} {} mask={masked} {} {}", scores.name(), length.name(), reduction.name());
                    let (e_ref, g_ref, c_ref) = reference(&input, &p);
                    let (e, g, c) = gpu(b, &input, &p, &mut ws);
                    assert_energy_close(e, e_ref, Tolerance::GPU, &what);
                    assert_slice_close(&g, &g_ref, Tolerance::GPU, &format!("{what}: gradient"));
                    assert_slice_close(&c, &c_ref, Tolerance::GPU, &format!("{what}: centroids"));
                }
            }
        }
    }
}

#[test]
fn matches_reference_2d() {
    sweep(Shape::new_2d(2, 3, 2, 17, 23).unwrap(), 1);
}

#[test]
fn matches_reference_3d() {
    sweep(Shape::new(1, 2, 1, 5, 7, 9).unwrap(), 2);
}

#[test]
fn matches_reference_thin_and_odd() {
    // A single row (H = 1), a depth-only volume, one class, many channels.
    sweep(Shape::new(3, 4, 3, 1, 1, 31).unwrap(), 3);
    sweep(Shape::new(2, 2, 1, 6, 1, 1).unwrap(), 4);
    sweep(Shape::new_2d(1, 1, 5, 4, 4).unwrap(), 5);
}

#[test]
fn weights_and_small_eps() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(2, 3, 2, 9, 11).unwrap();
    let data = RandomInputs::<f32>::new(shape, 6);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, Some(&data.mask)).unwrap();
    let mut ws = Backend::<f32>::workspace(b);
    for p in [
        Params { fidelity_weight: 0.0, lambda: 1.0, ..Params::default() },
        Params { fidelity_weight: 2.5, lambda: 0.0, ..Params::default() },
        Params { centroid_eps: 0.5, delta: 0.3, length: LengthKind::Charbonnier, ..Params::default() },
    ] {
        let (e_ref, g_ref, c_ref) = reference(&input, &p);
        let (e, g, c) = gpu(b, &input, &p, &mut ws);
        let tol = Tolerance { absolute: 1e-12, ..Tolerance::GPU };
        assert_energy_close(e, e_ref, tol, &format!("{p:?}"));
        assert_slice_close(&g, &g_ref, Tolerance::GPU, &format!("{p:?}: gradient"));
        assert_slice_close(&c, &c_ref, Tolerance::GPU, &format!("{p:?}: centroids"));
    }
}

/// 1024² with five classes: 512 tiles per class row, 2560 loss workgroups (so the loss sums
/// take two reduce levels after the in-register and workgroup trees); a kernel that looped over
/// the pixels of a (b, n) in one invocation would run a million iterations and be cut off by
/// lavapipe at 65,535.
#[test]
fn large_2d_1024_squared() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 5, 1, 1024, 1024).unwrap();
    let data = RandomInputs::<f32>::new(shape, 7);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, Some(&data.mask)).unwrap();
    let p = params(LengthKind::L1, Reduction::Sum);
    let mut ws = Backend::<f32>::workspace(b);
    let (e_ref, g_ref, c_ref) = reference(&input, &p);
    let (e, g, c) = gpu(b, &input, &p, &mut ws);
    assert_energy_close(e, e_ref, Tolerance::GPU, "1024²");
    assert_slice_close(&g, &g_ref, Tolerance::GPU, "1024² gradient");
    assert_slice_close(&c, &c_ref, Tolerance::GPU, "1024² centroids");
}

/// Many small samples: the valid-pixel count (one value per sample) needs two reduce levels.
#[test]
fn many_samples_multi_level_count() {
    let Some(b) = backend() else { return };
    let shape = Shape::new(5000, 2, 1, 1, 1, 3).unwrap();
    let data = RandomInputs::<f32>::new(shape, 13);
    let input = Input::new(shape, Scores::Probs(&data.probs), &data.image, Some(&data.mask)).unwrap();
    let p = params(LengthKind::L2, Reduction::Mean);
    let mut ws = Backend::<f32>::workspace(b);
    let (e_ref, g_ref, c_ref) = reference(&input, &p);
    let (e, g, c) = gpu(b, &input, &p, &mut ws);
    assert_energy_close(e, e_ref, Tolerance::GPU, "B = 5000");
    assert_slice_close(&g, &g_ref, Tolerance::GPU, "B = 5000 gradient");
    assert_slice_close(&c, &c_ref, Tolerance::GPU, "B = 5000 centroids");
}

/// 64³ with a mask, Charbonnier and the mean reduction (the valid-pixel count is a sum too).
#[test]
fn large_3d_64_cubed() {
    let Some(b) = backend() else { return };
    let shape = Shape::new(1, 3, 2, 64, 64, 64).unwrap();
    let data = RandomInputs::<f32>::new(shape, 8);
    let input = Input::new(shape, Scores::Probs(&data.probs), &data.image, Some(&data.mask)).unwrap();
    let p = params(LengthKind::Charbonnier, Reduction::Mean);
    let mut ws = Backend::<f32>::workspace(b);
    let (e_ref, g_ref, c_ref) = reference(&input, &p);
    let (e, g, c) = gpu(b, &input, &p, &mut ws);
    assert_energy_close(e, e_ref, Tolerance::GPU, "64³");
    assert_slice_close(&g, &g_ref, Tolerance::GPU, "64³ gradient");
    assert_slice_close(&c, &c_ref, Tolerance::GPU, "64³ centroids");
}

/// The plan of a 1024² evaluation really has multi-level reductions and a folded grid where
/// needed.
#[test]
fn large_plans_are_multi_level() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 5, 1, 1024, 1024).unwrap();
    let dev = b.device();
    let buf = |elems: usize| {
        dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4 * elems as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let buffers = msloss_wgpu::DeviceBuffers {
        scores: buf(shape.scores_len()),
        kind: msloss_wgpu::ScoresKind::Logits,
        image: buf(shape.image_len()),
        mask: None,
        grad: Some(buf(shape.scores_len())),
        centroids: None,
        energy: buf(4),
    };
    let plan = b.plan(shape, &Params::default(), &buffers).unwrap();
    let d = plan.dispatches();
    let reduces = d.iter().filter(|(k, _, _)| *k == "reduce").count();
    // class sums: 512 → 1; count: 1 → 1; loss: 2560 → 2 → 1.
    assert_eq!(reduces, 4, "{d:?}");
    let class = d.iter().find(|(k, _, _)| *k == "class_sums").unwrap();
    // 5·(1+1) + 1 rows × 512 tiles.
    assert_eq!(u64::from(class.1) * u64::from(class.2), 11 * 512, "{d:?}");
    let loss = d.iter().find(|(k, _, _)| *k == "loss_grad").unwrap();
    assert_eq!(u64::from(loss.1) * u64::from(loss.2), 2560, "{d:?}");
}

#[test]
fn gradcheck_on_gpu() {
    let Some(b) = backend() else { return };
    for (shape, logits, length) in [
        (Shape::new_2d(1, 3, 2, 6, 5).unwrap(), true, LengthKind::Charbonnier),
        (Shape::new(1, 2, 1, 3, 4, 3).unwrap(), false, LengthKind::L2),
        (Shape::new_2d(2, 2, 1, 5, 5).unwrap(), true, LengthKind::L1),
    ] {
        let data = RandomInputs::<f32>::new(shape, 9);
        let scores = if logits { Scores::Logits(&data.logits) } else { Scores::Probs(&data.probs) };
        let input = Input::new(shape, scores, &data.image, Some(&data.mask)).unwrap();
        let p = params(length, Reduction::Mean);
        let report = gradcheck::check(b, &input, &p, &Options::default()).unwrap();
        assert!(report.passes(1e-4), "{shape} {}: {report:?}", length.name());
        assert!(report.checks > 0);
    }
}

#[test]
fn deterministic_bits() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(2, 3, 2, 100, 90).unwrap();
    let data = RandomInputs::<f32>::new(shape, 10);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, Some(&data.mask)).unwrap();
    let p = params(LengthKind::Charbonnier, Reduction::Mean);
    let (e1, g1, c1) = gpu(b, &input, &p, &mut Backend::<f32>::workspace(b));
    let mut ws = Backend::<f32>::workspace(b);
    let (e2, g2, c2) = gpu(b, &input, &p, &mut ws);
    let (e3, g3, c3) = gpu(b, &input, &p, &mut ws);
    for (e, g, c) in [(e2, g2, c2), (e3, g3, c3)] {
        assert_eq!(e1.total.to_bits(), e.total.to_bits());
        assert_eq!(e1.fidelity.to_bits(), e.fidelity.to_bits());
        assert!(g1.iter().zip(&g).all(|(a, b)| a.to_bits() == b.to_bits()), "gradient bits differ");
        assert!(c1.iter().zip(&c).all(|(a, b)| a.to_bits() == b.to_bits()), "centroid bits differ");
    }
}

/// One workspace across shapes, kinds and parameters gives what a fresh one gives.
#[test]
fn workspace_reuse() {
    let Some(b) = backend() else { return };
    let a = Shape::new_2d(1, 2, 1, 12, 13).unwrap();
    let c = Shape::new(2, 3, 2, 3, 4, 5).unwrap();
    let da = RandomInputs::<f32>::new(a, 11);
    let dc = RandomInputs::<f32>::new(c, 12);
    let ia = Input::new(a, Scores::Logits(&da.logits), &da.image, None).unwrap();
    let ic = Input::new(c, Scores::Probs(&dc.probs), &dc.image, Some(&dc.mask)).unwrap();
    let p1 = params(LengthKind::L1, Reduction::Sum);
    let p2 = params(LengthKind::L2, Reduction::Mean);
    let mut ws = Backend::<f32>::workspace(b);
    let runs = [(&ia, p1), (&ic, p2), (&ia, p2), (&ia, p1), (&ic, p1)];
    for (input, p) in runs {
        let reused = gpu(b, input, &p, &mut ws);
        let fresh = gpu(b, input, &p, &mut Backend::<f32>::workspace(b));
        assert_eq!(reused.0, fresh.0);
        assert_eq!(reused.1, fresh.1);
        assert_eq!(reused.2, fresh.2);
    }
    // Energy alone (no gradient buffer) agrees with energy-and-gradient.
    let e = b.energy(&ia, &p1, &mut ws).unwrap();
    assert_eq!(e, gpu(b, &ia, &p1, &mut ws).0);
}

/// The largest class and channel counts the kernels accept: the per-invocation loops over N and
/// C run to completion (lavapipe cuts a shader off after 65,535 loop iterations).
#[test]
fn extents_at_the_limits() {
    let Some(b) = backend() else { return };
    let mut ws = Backend::<f32>::workspace(b);
    for shape in [
        Shape::new_2d(1, msloss_wgpu::MAX_CLASSES, 1, 2, 2).unwrap(),
        Shape::new_2d(1, 2, msloss_wgpu::MAX_CHANNELS, 3, 3).unwrap(),
    ] {
        let data = RandomInputs::<f32>::new(shape, 14);
        let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
        let p = params(LengthKind::Charbonnier, Reduction::Sum);
        let (e_ref, g_ref, c_ref) = reference(&input, &p);
        let (e, g, c) = gpu(b, &input, &p, &mut ws);
        assert_energy_close(e, e_ref, Tolerance::GPU, &format!("{shape}"));
        assert_slice_close(&g, &g_ref, Tolerance::GPU, &format!("{shape} gradient"));
        assert_slice_close(&c, &c_ref, Tolerance::GPU, &format!("{shape} centroids"));
    }
}

/// Near-coincident centroids (weak random logits on a uniform image): the logit gradient is a
/// small difference of large per-class distances. Computing ‖x − c_n‖² − ‖x − c_b0‖² as
/// ⟨c_b0 − c_n, 2x − c_n − c_b0⟩ keeps it within the bar; the plain difference in f32 was 2e-5
/// of the largest gradient on this input.
#[test]
fn near_coincident_centroids_keep_the_logit_gradient_accurate() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(2, 4, 3, 96, 80).unwrap();
    let data = RandomInputs::<f32>::new(shape, 11);
    let weak: Vec<f32> = data.logits.iter().map(|z| z / 1.5).collect();
    let input = Input::new(shape, Scores::Logits(&weak), &data.image, None).unwrap();
    let mut ws = Backend::<f32>::workspace(b);
    for p in [Params::default(), Params::default().with_lambda(0.0)] {
        let (e_ref, g_ref, _) = reference(&input, &p);
        let (e, g, _) = gpu(b, &input, &p, &mut ws);
        assert_energy_close(e, e_ref, Tolerance::GPU, "near-coincident centroids");
        assert_slice_close(&g, &g_ref, Tolerance::GPU, "near-coincident centroids: gradient");
    }
}
