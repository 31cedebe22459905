//! The synthetic quality suite: mean IoU >= 0.95 on 2 to 4 phases with noise 0.1, in 2D (grey and
//! colour) and 3D, and the segmenter's guarantees (determinism, label order, bad settings).

use msloss_cpu::CpuBackend;
use msloss_segment::synth::{SynthSpec, generate};
use msloss_segment::{SegmentConfig, SegmentError, Volume, metrics, segment};

fn run(spec: &SynthSpec) -> (f64, f64, usize) {
    let img = generate(spec).expect("valid spec");
    let cfg = SegmentConfig::default().with_phases(spec.phases);
    let seg = segment(&CpuBackend::with_threads(2), &img.volume, &cfg, |_| {}).expect("segmentation runs");
    let q = metrics::evaluate(&seg.labels, &img.truth).expect("same size");
    // Labels are ordered by brightness like the truth's phases, so no renaming should be needed.
    let same = seg.labels.iter().zip(&img.truth).filter(|(a, b)| a == b).count();
    assert!(
        same as f64 >= 0.95 * img.truth.len() as f64,
        "{spec:?}: only {same} of {} labels equal the truth without matching (mean IoU {})",
        img.truth.len(),
        q.mean_iou
    );
    (q.mean_iou, q.adapted_rand_error, seg.iterations)
}

#[test]
fn two_to_four_phases_grey_and_colour_2d() {
    for colour in [false, true] {
        for phases in 2..=4 {
            for seed in [11, 12] {
                let spec = SynthSpec { phases, colour, dims: [1, 64, 64], noise: 0.1, ramp: 0.05, seed };
                let (miou, are, iters) = run(&spec);
                assert!(miou >= 0.95, "{spec:?}: mean IoU {miou} < 0.95 (adapted Rand error {are}, {iters} steps)");
                assert!(are <= 0.06, "{spec:?}: adapted Rand error {are} (mean IoU {miou})");
            }
        }
    }
}

#[test]
fn five_colour_phases_and_strong_noise() {
    let spec = SynthSpec { phases: 5, colour: true, dims: [1, 64, 64], noise: 0.1, ramp: 0.05, seed: 3 };
    let (miou, ..) = run(&spec);
    assert!(miou >= 0.95, "5 colour phases: mean IoU {miou}");
    let spec = SynthSpec { phases: 2, colour: false, dims: [1, 64, 64], noise: 0.2, ramp: 0.05, seed: 4 };
    let (miou, ..) = run(&spec);
    assert!(miou >= 0.95, "2 grey phases, noise 0.2: mean IoU {miou}");
    // Grey levels 0.23 apart under noise 0.2: needs the denoised k-means initialisation.
    let spec = SynthSpec { phases: 4, colour: false, dims: [1, 64, 64], noise: 0.2, ramp: 0.05, seed: 4 };
    let img = generate(&spec).expect("valid spec");
    let seg = segment(&CpuBackend::new(), &img.volume, &SegmentConfig::default().with_phases(4), |_| {}).expect("ok");
    let miou = metrics::evaluate(&seg.labels, &img.truth).expect("same size").mean_iou;
    assert!(miou >= 0.9, "4 grey phases, noise 0.2: mean IoU {miou}");
}

#[test]
fn box_smoothing_averages_three_pixels_per_axis() {
    let mut data = vec![0.0f32; 5 * 5 * 5];
    data[62] = 27.0; // the centre (2, 2, 2)
    let vol = Volume::new(1, 5, 5, 5, data).expect("valid");
    let s = msloss_segment::kmeans::box_smooth(&vol);
    let at = |z: usize, y: usize, x: usize| s.data()[(z * 5 + y) * 5 + x];
    for (z, y, x) in [(1, 1, 1), (2, 2, 2), (3, 2, 1), (1, 3, 3)] {
        assert!((at(z, y, x) - 1.0).abs() < 1e-6, "({z},{y},{x}) = {}", at(z, y, x));
    }
    assert_eq!(at(0, 2, 2), 0.0);
    assert!((s.data().iter().sum::<f32>() - 27.0).abs() < 1e-4, "interior mass is kept");
    let flat = Volume::new(2, 1, 3, 4, vec![0.25; 24]).expect("valid");
    assert_eq!(msloss_segment::kmeans::box_smooth(&flat), flat);
    // Clamped edges along a row: the edge pixel counts twice.
    let third = 1.0f32 / 3.0;
    let pair = msloss_segment::kmeans::box_smooth(&Volume::new(1, 1, 1, 2, vec![1.0, 2.0]).expect("valid"));
    assert_eq!(pair.data(), &[(1.0 + 1.0 + 2.0) * third, (1.0 + 2.0 + 2.0) * third]);
    let row = msloss_segment::kmeans::box_smooth(&Volume::new(1, 1, 1, 4, vec![1.0, 2.0, 4.0, 8.0]).expect("valid"));
    let want = [(1.0 + 1.0 + 2.0) * third, (1.0 + 2.0 + 4.0) * third, (2.0 + 4.0 + 8.0) * third, 20.0 * third];
    assert_eq!(row.data(), &want);
}

#[test]
fn three_phase_volume_24_cubed() {
    let spec = SynthSpec { phases: 3, colour: false, dims: [24, 24, 24], noise: 0.1, ramp: 0.05, seed: 5 };
    let (miou, are, iters) = run(&spec);
    assert!(miou >= 0.95, "3D: mean IoU {miou} (adapted Rand error {are}, {iters} steps)");
}

#[test]
fn deterministic_and_converged() {
    let spec = SynthSpec { phases: 3, colour: true, dims: [1, 40, 48], noise: 0.1, ramp: 0.05, seed: 9 };
    let img = generate(&spec).expect("valid spec");
    let cfg = SegmentConfig::default().with_phases(3);
    let a = segment(&CpuBackend::with_threads(1), &img.volume, &cfg, |_| {}).expect("runs");
    let mut steps = Vec::new();
    let b = segment(&CpuBackend::with_threads(2), &img.volume, &cfg, |p| steps.push(p.iteration)).expect("runs");
    assert_eq!(a.labels, b.labels, "the same image must give the same labels");
    assert_eq!(a.history, b.history, "the CPU backend is bitwise independent of the thread count");
    assert!(a.converged, "stopped on the step limit after {} steps", a.iterations);
    assert_eq!(steps, (1..=b.iterations).collect::<Vec<_>>());
    assert_eq!(a.history.len(), a.iterations);
    // The energy must go down overall, and its parts must add up.
    let (first, last) = (a.history[0], a.history[a.history.len() - 1]);
    assert!(last < first, "energy went from {first} to {last}");
    assert!((a.energy.total - a.energy.fidelity - a.energy.length).abs() <= 1e-12 * a.energy.total.abs().max(1.0));
    // Centroids are in brightness order.
    let means: Vec<f64> = a.centroids.chunks(3).map(|c| c.iter().sum::<f64>() / 3.0).collect();
    assert!(means.windows(2).all(|w| w[0] <= w[1]), "centroid brightness {means:?} not ascending");
    assert_eq!(a.pixels_per_phase.iter().sum::<usize>(), 40 * 48);
}

#[test]
fn fewer_distinct_values_than_phases_is_a_typed_error() {
    // A constant image cannot have two phases, nor a two-valued one three: no silent empty phase.
    let vol = Volume::new(1, 1, 8, 8, vec![0.5; 64]).expect("valid");
    let err = segment(&CpuBackend::new(), &vol, &SegmentConfig::default().with_phases(2), |_| {}).unwrap_err();
    assert!(matches!(err, SegmentError::TooFewValues { phases: 2 }), "{err}");
    let two: Vec<f32> = (0..64).map(|i| if i < 20 { 0.0 } else { 1.0 }).collect();
    let vol = Volume::new(1, 1, 8, 8, two).expect("valid");
    let err = segment(&CpuBackend::new(), &vol, &SegmentConfig::default().with_phases(3), |_| {}).unwrap_err();
    assert!(matches!(err, SegmentError::TooFewValues { phases: 3 }), "{err}");
    assert!(err.to_string().contains("fewer than 3 distinct"), "{err}");
    // Two values, two phases: exact.
    let seg = segment(&CpuBackend::new(), &vol, &SegmentConfig::default().with_phases(2), |_| {}).expect("runs");
    assert_eq!(seg.pixels_per_phase, vec![20, 44]);
}

#[test]
fn bad_settings_are_typed_errors() {
    let vol = Volume::new(1, 1, 2, 2, vec![0.0, 0.2, 0.8, 1.0]).expect("valid");
    let b = CpuBackend::new();
    for phases in [0, 1, 5, 300] {
        let err = segment(&b, &vol, &SegmentConfig::default().with_phases(phases), |_| {}).unwrap_err();
        assert!(matches!(err, SegmentError::BadPhases { phases: p, pixels: 4 } if p == phases), "{err}");
    }
    let cfg = SegmentConfig { lambda: f64::NAN, ..SegmentConfig::default() };
    assert!(matches!(segment(&b, &vol, &cfg, |_| {}), Err(SegmentError::BadSetting { name: "lambda", .. })));
    let cfg = SegmentConfig { max_iters: 0, ..SegmentConfig::default() };
    assert!(matches!(segment(&b, &vol, &cfg, |_| {}), Err(SegmentError::BadSetting { name: "iters", .. })));
    assert!(matches!(Volume::new(1, 1, 0, 4, vec![]), Err(SegmentError::BadImage(_))));
    assert!(matches!(Volume::new(1, 1, 2, 2, vec![0.0; 3]), Err(SegmentError::BadImage(_))));
    assert!(matches!(Volume::new(1, 1, 1, 2, vec![0.0, f32::NAN]), Err(SegmentError::BadImage(_))));
    let err = generate(&SynthSpec { phases: 6, ..SynthSpec::default() }).unwrap_err();
    assert!(matches!(err, SegmentError::BadSetting { .. }), "{err}");
}
