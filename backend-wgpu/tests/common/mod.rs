//! What the GPU tests share that is GPU-specific: the backend (the tests FAIL without an
//! adapter unless `MSLOSS_SKIP_GPU=1`) and the backend as a subject of the conformance suite
//! (msloss-conformance, which holds the cases, the tolerances and the comparisons).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::OnceLock;

use msloss_conformance::{Supports, Tested, Tolerance};
use msloss_wgpu::{ClassSumsPath, WgpuBackend, WgpuError};

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

/// `b` (a handle: the device is shared) as a subject of the suite, with its own workspace,
/// held to the bar of 1e-5 relative ([`Tolerance::F32`]), its input errors found in
/// [`WgpuError::Core`]. The kernels take an L1 difference's sign from their own `f32`
/// softmax, so where different logits give softmax outputs that are equal in exact arithmetic
/// the sign need not be the reference's ([`Supports::reference_l1_signs`]); its centroids are
/// `f32` numbers ([`Supports::centroids_beyond_f32`]).
pub(crate) fn tested(b: &WgpuBackend) -> Tested<f32, WgpuBackend> {
    Tested::new(b.clone())
        .named(format!("wgpu on {} ({:?} class sums)", b.adapter_info().name, b.class_sums()))
        .with_tolerance(Tolerance::F32)
        .with_supports(Supports { reference_l1_signs: false, centroids_beyond_f32: false, ..Supports::ALL })
        .with_core_error(|e| match e {
            WgpuError::Core(c) => Some(c.clone()),
            _ => None,
        })
}

/// The shared backend as two subjects, one for each way of taking the class sums (the device
/// type picks one by default; both run everywhere), if there is a backend.
pub(crate) fn subjects() -> Vec<Tested<f32, WgpuBackend>> {
    let paths = [ClassSumsPath::Workgroup, ClassSumsPath::Strided];
    backend().map(|b| paths.map(|p| tested(&b.clone().with_class_sums(p))).into()).unwrap_or_default()
}
