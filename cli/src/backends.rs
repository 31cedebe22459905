//! Backend selection: one enum over every backend the binary was built with, itself a `Backend`.

use msloss::cpu::{CpuBackend, CpuFloat, CpuWorkspace};
use msloss::wgpu::{WgpuBackend, WgpuWorkspace};
use msloss::{Backend, Energy, Input, Outputs, Params, Real, Reference, ReferenceWorkspace, Scores};

/// The `--backend` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendChoice {
    /// The plain f64 reference (the oracle; slow).
    Reference,
    /// The fused multithreaded CPU backend.
    Cpu,
    /// The GPU backend (wgpu: Vulkan, Metal, DX12; f32 only).
    Wgpu,
}

/// `--backend` and `--threads`, shared by every subcommand that evaluates the loss.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BackendArgs {
    /// Which backend computes (wgpu: f32 only).
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub(crate) backend: BackendChoice,
    /// Threads of the CPU backend (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

impl BackendArgs {
    /// Checks the settings without building anything.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if let (BackendChoice::Cpu, Some(t)) = (self.backend, self.threads) {
            let max = msloss::cpu::MAX_THREADS;
            anyhow::ensure!((1..=max).contains(&t), "--threads must be between 1 and {max}, got {t}");
        }
        Ok(())
    }

    /// Builds the chosen backend.
    pub(crate) fn build(&self) -> anyhow::Result<AnyBackend> {
        AnyBackend::new(self.backend, self.threads)
    }
}

/// Any backend, chosen at run time.
#[derive(Debug)]
pub(crate) enum AnyBackend {
    /// See [`BackendChoice::Reference`].
    Reference(Reference),
    /// See [`BackendChoice::Cpu`].
    Cpu(CpuBackend),
    /// See [`BackendChoice::Wgpu`].
    Wgpu(WgpuBackend),
}

/// The workspace of an [`AnyBackend`].
#[derive(Debug)]
pub(crate) enum AnyWorkspace<T> {
    /// Reference scratch.
    Reference(ReferenceWorkspace),
    /// CPU scratch.
    Cpu(CpuWorkspace<T>),
    /// GPU buffers.
    Wgpu(WgpuWorkspace),
}

impl AnyBackend {
    /// Builds the chosen backend; `threads` applies to the CPU backend.
    pub(crate) fn new(choice: BackendChoice, threads: Option<usize>) -> anyhow::Result<Self> {
        Ok(match choice {
            BackendChoice::Reference => AnyBackend::Reference(Reference),
            BackendChoice::Cpu => {
                BackendArgs { backend: choice, threads }.check()?;
                AnyBackend::Cpu(threads.map_or_else(CpuBackend::new, CpuBackend::with_threads))
            }
            BackendChoice::Wgpu => AnyBackend::Wgpu(WgpuBackend::new()?),
        })
    }
}

impl<T: CpuFloat> Backend<T> for AnyBackend {
    type Workspace = AnyWorkspace<T>;
    type Error = anyhow::Error;

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Reference(b) => Backend::<T>::name(b),
            AnyBackend::Cpu(b) => Backend::<T>::name(b),
            AnyBackend::Wgpu(b) => Backend::<f32>::name(b),
        }
    }

    fn workspace(&self) -> AnyWorkspace<T> {
        match self {
            AnyBackend::Reference(b) => AnyWorkspace::Reference(b.workspace()),
            AnyBackend::Cpu(b) => AnyWorkspace::Cpu(Backend::<T>::workspace(b)),
            AnyBackend::Wgpu(b) => AnyWorkspace::Wgpu(Backend::<f32>::workspace(b)),
        }
    }

    fn evaluate(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        out: Outputs<'_, T>,
        ws: &mut AnyWorkspace<T>,
    ) -> anyhow::Result<Energy<T>> {
        match (self, ws) {
            (AnyBackend::Reference(b), AnyWorkspace::Reference(w)) => Ok(b.evaluate(input, params, out, w)?),
            (AnyBackend::Cpu(b), AnyWorkspace::Cpu(w)) => Ok(b.evaluate(input, params, out, w)?),
            (AnyBackend::Wgpu(b), AnyWorkspace::Wgpu(w)) => wgpu_evaluate(b, input, params, out, w),
            _ => anyhow::bail!("internal: a workspace from another backend was passed"),
        }
    }
}

/// The GPU backend computes in `f32` only: `f32` requests pass through (the copies below are
/// exact for `f32`), anything else is refused with a hint.
fn wgpu_evaluate<T: Real>(
    b: &WgpuBackend,
    input: &Input<'_, T>,
    params: &Params,
    out: Outputs<'_, T>,
    ws: &mut WgpuWorkspace,
) -> anyhow::Result<Energy<T>> {
    anyhow::ensure!(
        T::NAME == "f32",
        "the wgpu backend computes in f32, but the data is {}; use float32 arrays (or --dtype f32)",
        T::NAME
    );
    let to32 = |v: &[T]| -> Vec<f32> { v.iter().map(|x| x.to_f64_lossless() as f32).collect() };
    let scores = to32(input.scores().data());
    let image = to32(input.image());
    let mask = input.mask().map(to32);
    let s = if input.scores().is_logits() { Scores::Logits(&scores[..]) } else { Scores::Probs(&scores[..]) };
    let input32 = Input::new(input.shape(), s, &image, mask.as_deref())?;
    let mut grad = out.grad.as_ref().map(|g| vec![0.0f32; g.len()]);
    let mut cent = out.centroids.as_ref().map(|c| vec![0.0f32; c.len()]);
    let e = b.evaluate(&input32, params, Outputs { grad: grad.as_deref_mut(), centroids: cent.as_deref_mut() }, ws)?;
    let back = |dst: Option<&mut [T]>, src: Option<Vec<f32>>| {
        if let (Some(d), Some(s)) = (dst, src) {
            d.iter_mut().zip(s).for_each(|(d, s)| *d = T::from_f64_lossy(f64::from(s)));
        }
    };
    back(out.grad, grad);
    back(out.centroids, cent);
    let t = |v: f32| T::from_f64_lossy(f64::from(v));
    Ok(Energy { fidelity: t(e.fidelity), length: t(e.length), total: t(e.total) })
}
