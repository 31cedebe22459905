//! Shared helpers of the GPU tests: the backend (FAILS without an adapter unless
//! `MSLOSS_SKIP_GPU=1`), tolerances and comparisons against the reference.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::OnceLock;

use msloss_core::{Backend, Energy, Input, Outputs, Params, Reference};
use msloss_wgpu::WgpuBackend;

/// The shared backend of a test binary; `None` only when `MSLOSS_SKIP_GPU=1` and no adapter.
pub(crate) fn backend() -> Option<&'static WgpuBackend> {
    static BACKEND: OnceLock<Option<WgpuBackend>> = OnceLock::new();
    BACKEND
        .get_or_init(|| match WgpuBackend::new() {
            Ok(b) => {
                eprintln!("GPU tests on {:?} ({:?})", b.adapter_info().name, b.adapter_info().backend);
                Some(b)
            }
            Err(e) if std::env::var("MSLOSS_SKIP_GPU").as_deref() == Ok("1") => {
                eprintln!("MSLOSS_SKIP_GPU=1: skipping the GPU tests ({e})");
                None
            }
            Err(e) => panic!(
                "no usable GPU adapter: {e}\n(install Mesa's lavapipe: apt-get install mesa-vulkan-drivers \
                 libvulkan1, export XDG_RUNTIME_DIR=/tmp; or set MSLOSS_SKIP_GPU=1 to skip)"
            ),
        })
        .as_ref()
}

/// A relative tolerance with an absolute floor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tolerance {
    /// Relative to the reference value (energies) or the largest magnitude (gradients).
    pub(crate) relative: f64,
    /// The floor of the scale.
    pub(crate) absolute: f64,
}

impl Tolerance {
    /// The bar: 1e-5 relative.
    pub(crate) const GPU: Tolerance = Tolerance { relative: 1e-5, absolute: 1e-30 };
}

/// Asserts `got` is within `tol` of `want` for each energy part.
pub(crate) fn assert_energy_close(got: Energy<f32>, want: Energy<f32>, tol: Tolerance, what: &str) {
    for (name, g, w) in [
        ("fidelity", got.fidelity, want.fidelity),
        ("length", got.length, want.length),
        ("total", got.total, want.total),
    ] {
        let (g, w) = (f64::from(g), f64::from(w));
        let diff = (g - w).abs();
        let bound = tol.relative * w.abs().max(tol.absolute);
        assert!(diff <= bound, "{what}: energy {name}: got {g:e}, want {w:e}, diff {diff:e} > {bound:e}");
    }
}

/// Asserts `got` is within `tol.relative` of the largest magnitude of `want`.
pub(crate) fn assert_slice_close(got: &[f32], want: &[f32], tol: Tolerance, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(f64::from(*v).abs())).max(tol.absolute);
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (f64::from(*g) - f64::from(*w)).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol.relative * scale,
        "{what}: index {at}: got {}, want {}, diff {worst:e} > {:e} (scale {scale:e})",
        got[at],
        want[at],
        tol.relative * scale
    );
}

/// The reference's energy, gradient and centroids.
pub(crate) fn reference(input: &Input<'_, f32>, params: &Params) -> (Energy<f32>, Vec<f32>, Vec<f32>) {
    let shape = input.shape();
    let mut grad = vec![0.0f32; shape.scores_len()];
    let mut cent = vec![0.0f32; shape.centroids_len()];
    let mut ws = Reference.workspace();
    let e = Reference
        .evaluate(input, params, Outputs { grad: Some(&mut grad), centroids: Some(&mut cent) }, &mut ws)
        .expect("reference");
    (e, grad, cent)
}

/// The GPU's energy, gradient and centroids through the host path.
pub(crate) fn gpu(
    backend: &WgpuBackend,
    input: &Input<'_, f32>,
    params: &Params,
    ws: &mut msloss_wgpu::WgpuWorkspace,
) -> (Energy<f32>, Vec<f32>, Vec<f32>) {
    let shape = input.shape();
    let mut grad = vec![f32::NAN; shape.scores_len()];
    let mut cent = vec![f32::NAN; shape.centroids_len()];
    let e = backend
        .evaluate(input, params, Outputs { grad: Some(&mut grad), centroids: Some(&mut cent) }, ws)
        .unwrap_or_else(|e| panic!("gpu evaluate {}: {e}", shape));
    (e, grad, cent)
}
