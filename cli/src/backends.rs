//! Backend selection: one enum over every backend the binary was built with, itself a `Backend`.

use msloss::cpu::{CpuBackend, CpuWorkspace};
use msloss::{Backend, Energy, Input, Outputs, Params, Real, Reference, ReferenceWorkspace};

/// The `--backend` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendChoice {
    /// The plain f64 reference (the oracle; slow).
    Reference,
    /// The fused multithreaded CPU backend.
    Cpu,
}

/// Any backend, chosen at run time.
#[derive(Debug)]
pub(crate) enum AnyBackend {
    /// See [`BackendChoice::Reference`].
    Reference(Reference),
    /// See [`BackendChoice::Cpu`].
    Cpu(CpuBackend),
}

/// The workspace of an [`AnyBackend`].
#[derive(Debug)]
pub(crate) enum AnyWorkspace {
    /// Reference scratch.
    Reference(ReferenceWorkspace),
    /// CPU scratch.
    Cpu(CpuWorkspace),
}

impl AnyBackend {
    /// Builds the chosen backend; `threads` applies to the CPU backend.
    pub(crate) fn new(choice: BackendChoice, threads: Option<usize>) -> anyhow::Result<Self> {
        Ok(match choice {
            BackendChoice::Reference => AnyBackend::Reference(Reference),
            BackendChoice::Cpu => AnyBackend::Cpu(match threads {
                Some(t) => {
                    anyhow::ensure!(t >= 1, "--threads must be >= 1, got {t}");
                    CpuBackend::with_threads(t)
                }
                None => CpuBackend::new(),
            }),
        })
    }
}

impl<T: Real> Backend<T> for AnyBackend {
    type Workspace = AnyWorkspace;
    type Error = anyhow::Error;

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Reference(b) => Backend::<T>::name(b),
            AnyBackend::Cpu(b) => Backend::<T>::name(b),
        }
    }

    fn workspace(&self) -> AnyWorkspace {
        match self {
            AnyBackend::Reference(b) => AnyWorkspace::Reference(b.workspace()),
            AnyBackend::Cpu(b) => AnyWorkspace::Cpu(Backend::<T>::workspace(b)),
        }
    }

    fn evaluate(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        out: Outputs<'_, T>,
        ws: &mut AnyWorkspace,
    ) -> anyhow::Result<Energy<T>> {
        match (self, ws) {
            (AnyBackend::Reference(b), AnyWorkspace::Reference(w)) => Ok(b.evaluate(input, params, out, w)?),
            (AnyBackend::Cpu(b), AnyWorkspace::Cpu(w)) => Ok(b.evaluate(input, params, out, w)?),
            _ => anyhow::bail!("internal: a workspace from another backend was passed"),
        }
    }
}
