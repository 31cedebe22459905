//! The local fidelity under a bias field (issue 27): a two-phase image whose levels (0.35, 0.65)
//! are multiplied by `1 + 0.6·g`, `g` a smooth field in [-1, 1], defeats one mean per phase but
//! not Gaussian-weighted local means started from the image less its local mean.

use msloss_core::Fidelity;
use msloss_core::rng::SplitMix64;
use msloss_cpu::CpuBackend;
use msloss_segment::{SegmentConfig, SegmentError, Volume, metrics, segment};

/// Disks on a background, biased and noisy (σ 0.05), and the truth.
fn biased(size: usize, alpha: f64) -> (Volume, Vec<u8>) {
    let mut rng = SplitMix64::new(3);
    let disks: Vec<[f64; 3]> = (0..8)
        .map(|_| {
            [rng.uniform() * size as f64, rng.uniform() * size as f64, (0.06 + 0.06 * rng.uniform()) * size as f64]
        })
        .collect();
    let mut truth = vec![0u8; size * size];
    let mut img = vec![0.0f32; size * size];
    for (i, (t, v)) in truth.iter_mut().zip(&mut img).enumerate() {
        let (y, x) = ((i / size) as f64, (i % size) as f64);
        *t = u8::from(disks.iter().any(|[cy, cx, r]| (y - cy).powi(2) + (x - cx).powi(2) <= r * r));
        let (u, w) = (x / size as f64, y / size as f64);
        let g = 1.2 * (u - 0.5) + 0.4 * (2.0 * std::f64::consts::PI * (0.8 * w + 0.1)).sin();
        let level = if *t == 1 { 0.65 } else { 0.35 };
        *v = (level * (1.0 + alpha * g.clamp(-1.0, 1.0)) + 0.05 * rng.normal()) as f32;
    }
    (Volume::new(1, 1, size, size, img).expect("valid"), truth)
}

#[test]
fn a_bias_field_defeats_the_global_fidelity_but_not_the_local_one() {
    let (vol, truth) = biased(96, 0.6);
    let cpu = CpuBackend::with_threads(2);
    let run = |fidelity| {
        let cfg = SegmentConfig { fidelity, ..SegmentConfig::default().with_phases(2) };
        let seg = segment(&cpu, &vol, &cfg, |_| {}).expect("runs");
        metrics::evaluate(&seg.labels, &truth).expect("same size").mean_iou
    };
    let (global, local) = (run(Fidelity::Global), run(Fidelity::Local { sigma: 6.0 }));
    assert!(global < 0.9, "the global fidelity should fail here: mean IoU {global}");
    assert!(local >= 0.95, "the local fidelity: mean IoU {local} (global {global})");
}

#[test]
fn a_sigma_beyond_the_image_is_refused() {
    let (vol, _) = biased(16, 0.0);
    for sigma in [0.0, f64::NAN, 17.0] {
        let cfg = SegmentConfig { fidelity: Fidelity::Local { sigma }, ..SegmentConfig::default() };
        let got = segment(&CpuBackend::with_threads(1), &vol, &cfg, |_| {});
        assert!(matches!(got, Err(SegmentError::BadSetting { name: "sigma", .. })), "σ {sigma}: {got:?}");
    }
}
