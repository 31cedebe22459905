//! # msloss-cpu
//!
//! The CPU backend of msloss. INTERIM: this first version delegates to the reference
//! implementation so the workspace builds; the fused multithreaded kernels replace it.

use msloss_core::{Backend, Energy, Error, Input, Outputs, Params, Real, Reference, ReferenceWorkspace};

/// The CPU backend.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {
    threads: Option<usize>,
}

impl CpuBackend {
    /// A backend using rayon's global pool (all cores).
    pub fn new() -> Self {
        Self { threads: None }
    }
    /// A backend using its own pool of `threads` threads.
    pub fn with_threads(threads: usize) -> Self {
        Self { threads: Some(threads) }
    }
    /// The thread count requested, if any.
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }
}

/// Reusable scratch of [`CpuBackend`].
#[derive(Debug, Default)]
pub struct CpuWorkspace {
    inner: ReferenceWorkspace,
}

impl<T: Real> Backend<T> for CpuBackend {
    type Workspace = CpuWorkspace;
    type Error = Error;
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn workspace(&self) -> CpuWorkspace {
        CpuWorkspace::default()
    }
    fn evaluate(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        out: Outputs<'_, T>,
        ws: &mut CpuWorkspace,
    ) -> Result<Energy<T>, Error> {
        Reference.evaluate(input, params, out, &mut ws.inner)
    }
}
