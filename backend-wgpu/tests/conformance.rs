//! The GPU backend against the conformance suite (msloss-conformance: every check of the
//! shared cases in `f32`, held to 1e-5 relative), and what is GPU-specific: sizes that need
//! many workgroups per (b, n) and multi-level reductions (1024², 64³, 5000 samples), the plan
//! of such a size, and the class and channel counts at the kernels' limits (lavapipe stops a
//! shader loop after 65,535 iterations).
//!
//! These tests FAIL when no adapter is found, unless `MSLOSS_SKIP_GPU=1` (CI installs Mesa's
//! lavapipe, a software Vulkan driver).

mod common;

use common::{backend, subjects};
use msloss_conformance::case::shape;
use msloss_conformance::{Case, checks};
use msloss_core::{LengthKind, Params, Reduction};
use msloss_wgpu::{ClassSumsPath, Io};

msloss_conformance::tests!(f32, subjects());
msloss_conformance::backend_tests!(f32, subjects());

fn params(length: LengthKind, reduction: Reduction) -> Params {
    // λ large enough that the length term matters next to the fidelity.
    Params::default().with_lambda(0.05).with_length(length).with_reduction(reduction)
}

/// Each case against the reference on the GPU, if there is one.
fn on_gpu(cases: &[Case], what: &str) {
    for mut gpu in subjects() {
        assert_eq!(checks::compare_all(&mut gpu, cases, what), cases.len());
    }
}

/// 1024² with five classes: 512 tiles per class row, 4096 loss workgroups (so the loss sums
/// take two reduce levels after the workgroup trees); a kernel that looped over
/// the pixels of a (b, n) in one invocation would run a million iterations and be cut off by
/// lavapipe at 65,535.
#[test]
fn large_2d_1024_squared() {
    on_gpu(&[Case::new(shape(1, 5, 1, 1, 1024, 1024), true, true, params(LengthKind::L1, Reduction::Sum), 7)], "1024²");
}

/// Many small samples: the valid-pixel count (one value per sample) needs two reduce levels.
#[test]
fn many_samples_multi_level_count() {
    let case = Case::new(shape(5000, 2, 1, 1, 1, 3), false, true, params(LengthKind::L2, Reduction::Mean), 13);
    on_gpu(&[case], "B = 5000");
}

/// 64³ with a mask, Charbonnier and the mean reduction (the valid-pixel count is a sum too).
#[test]
fn large_3d_64_cubed() {
    let case = Case::new(shape(1, 3, 2, 64, 64, 64), false, true, params(LengthKind::Charbonnier, Reduction::Mean), 8);
    on_gpu(&[case], "64³");
}

/// The strided class sums at a size where each workgroup takes as many tiles as the plan's loop
/// budget allows: 21 classes and 3 channels count 1,146 iterations a tile, so 52 tiles a
/// workgroup (59,592 iterations) for the 416 tiles of 1024×832; a budget counted short would
/// cut the loops off and the sums would come out short. The count assumes that no loop is
/// unrolled; lavapipe unrolls the 8-pixel loops, so there the real count is lower.
#[test]
fn strided_class_sums_at_the_loop_budget() {
    let case = Case::new(shape(1, 21, 3, 1, 1024, 832), true, false, params(LengthKind::L1, Reduction::Mean), 5);
    on_gpu(&[case], "1024×832, 21 classes");
}

/// The plan of a 1024² evaluation really has multi-level reductions and a folded grid where
/// needed, on either way of taking the class sums.
#[test]
fn large_plans_are_multi_level() {
    let Some(b) = backend() else { return };
    let shape = shape(1, 5, 1, 1, 1024, 1024);
    let dispatches =
        |path| b.clone().with_class_sums(path).plan(shape, &Params::default(), Io::TRAIN).unwrap().dispatches();
    let d = dispatches(ClassSumsPath::Workgroup);
    let reduces = d.iter().filter(|(k, _, _)| *k == "reduce").count();
    // class sums: 512 → 1; count: 1 → 1; loss: 4096 → 2 → 1.
    assert_eq!(reduces, 4, "{d:?}");
    let class = d.iter().find(|(k, _, _)| *k == "class_sums").unwrap();
    // One workgroup per tile of a sample (each sums all 5·(1+1) + 1 rows): 512 tiles.
    assert_eq!(u64::from(class.1) * u64::from(class.2), 512, "{d:?}");
    let loss = d.iter().find(|(k, _, _)| *k == "loss_grad").unwrap();
    // One pixel per invocation: 1024² / 256.
    assert_eq!(u64::from(loss.1) * u64::from(loss.2), 4096, "{d:?}");
    let d = dispatches(ClassSumsPath::Strided);
    let class = d.iter().find(|(k, _, _)| *k == "class_sums_strided").unwrap();
    // 512 tiles of 2048 pixels, a tile 9 + 8 + 17·5 + 9·5·2 = 192 iterations: 312 tiles a
    // workgroup within 60,000, so the floor of 8 workgroups a sample, 64 tiles each.
    assert_eq!(u64::from(class.1) * u64::from(class.2), 8, "{d:?}");
    // class sums: 8·256 partials → 1; count; loss: 4096 → 2 → 1.
    assert_eq!(d.iter().filter(|(k, _, _)| *k == "reduce").count(), 4, "{d:?}");
}

/// The largest class and channel counts the kernels accept: the per-invocation loops over N and
/// C run to completion (lavapipe cuts a shader off after 65,535 loop iterations). The 3D cases
/// give loss_grad's centre pixel all 13 softmax normalisers (Charbonnier reads the diagonal
/// neighbours), and `N·(C+1)` at its limit with the most classes gives class_sums its most rows.
#[test]
fn extents_at_the_limits() {
    use msloss_wgpu::{MAX_CHANNELS, MAX_CLASS_ROWS, MAX_CLASSES};
    let p = params(LengthKind::Charbonnier, Reduction::Sum);
    let c_at_rows = MAX_CLASS_ROWS / MAX_CLASSES - 1;
    on_gpu(
        &[
            Case::new(shape(1, MAX_CLASSES, 1, 1, 2, 2), true, false, p, 14),
            Case::new(shape(1, 2, MAX_CHANNELS, 1, 3, 3), true, false, p, 14),
            Case::new(shape(1, MAX_CLASSES, 1, 3, 3, 3), true, false, p, 14),
            Case::new(shape(1, MAX_CLASSES, c_at_rows, 3, 3, 3), true, true, p, 14),
            Case::new(
                shape(1, MAX_CLASSES, c_at_rows, 3, 3, 3),
                false,
                true,
                params(LengthKind::L1, Reduction::Mean),
                14,
            ),
        ],
        "extents at the limits",
    );
}

/// Past the limits: a typed error, before anything is built.
#[test]
fn extents_past_the_limits() {
    use msloss_wgpu::{MAX_CHANNELS, MAX_CLASS_ROWS, MAX_CLASSES, WgpuError};
    let Some(b) = backend() else { return };
    let p = Params::default();
    for (s, dim) in [
        (shape(1, MAX_CLASSES + 1, 1, 1, 2, 2), "N (classes)"),
        (shape(1, 2, MAX_CHANNELS + 1, 1, 2, 2), "C (channels)"),
        (shape(1, MAX_CLASSES, MAX_CLASS_ROWS / MAX_CLASSES, 1, 2, 2), "N·(C+1) (a pixel's class rows)"),
    ] {
        let e = b.plan(s, &p, msloss_wgpu::Io::TRAIN).unwrap_err();
        assert!(matches!(e, WgpuError::ExtentTooLarge { dim: d, .. } if d == dim), "{s}: {e}");
    }
}
