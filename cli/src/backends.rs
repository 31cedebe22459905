//! Backend selection: one enum over every backend the binary was built with, itself a `Backend`.

use msloss::cpu::{CpuBackend, CpuWorkspace, SoftmaxCache};
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
    /// CPU backend tuning: pixels per block of work (the help text states the defaults, from
    /// the backend's constants).
    #[arg(long, help = block_pixels_help())]
    pub(crate) block_pixels: Option<usize>,
    /// CPU backend tuning: columns per tile of the softmax pass (default: a tile of every
    /// class fits the first-level cache).
    #[arg(long)]
    pub(crate) tile_width: Option<usize>,
    /// CPU backend tuning: the gradient-buffer size above which a gradient written once is
    /// written with non-temporal stores (the help text states the default).
    #[arg(long, help = stream_bytes_help())]
    pub(crate) stream_bytes: Option<usize>,
    /// CPU backend tuning: with logits and a gradient, whether the gradient pass reads back the
    /// probabilities the softmax pass cached in the gradient buffer or computes them again.
    #[arg(long, value_enum)]
    pub(crate) softmax_cache: Option<SoftmaxCacheChoice>,
    /// CPU backend tuning: the largest size in bytes of one sample's probabilities that the
    /// softmax pass caches in a buffer of their own (the help text states the default).
    #[arg(long, help = sample_cache_bytes_help())]
    pub(crate) sample_cache_bytes: Option<usize>,
    /// CPU backend tuning: the size in bytes of one sample's logits, image and probabilities
    /// above which its probabilities take a buffer of their own (the help text states the
    /// default).
    #[arg(long, help = sample_cache_from_help())]
    pub(crate) sample_cache_from: Option<usize>,
}

/// The `--softmax-cache` choices (see `msloss::cpu::SoftmaxCache`; results are the same bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SoftmaxCacheChoice {
    /// Recompute for large f32 gradient buffers of 2D images where the chunked kernels run, else
    /// cache (the default).
    Auto,
    /// Always cache the probabilities.
    Always,
    /// Recompute wherever the chunked gradient kernel runs.
    Never,
}

impl From<SoftmaxCacheChoice> for SoftmaxCache {
    fn from(c: SoftmaxCacheChoice) -> Self {
        match c {
            SoftmaxCacheChoice::Auto => SoftmaxCache::Auto,
            SoftmaxCacheChoice::Always => SoftmaxCache::Always,
            SoftmaxCacheChoice::Never => SoftmaxCache::Never,
        }
    }
}

/// `--block-pixels`' help, with the CPU backend's defaults.
fn block_pixels_help() -> String {
    use msloss::cpu::{DEFAULT_BLOCK_PIXELS, DEFAULT_BLOCK_SLICES, SMALL_BLOCK_PIXELS, SMALL_INPUT_BLOCKS};
    format!(
        "CPU backend tuning: pixels per block of work (whole rows; default {DEFAULT_BLOCK_PIXELS}, down to \
         {SMALL_BLOCK_PIXELS} for inputs of fewer than {SMALL_INPUT_BLOCKS} such blocks, and for 3D volumes \
         at least {DEFAULT_BLOCK_SLICES} slices)"
    )
}

/// `--stream-bytes`' help, with the CPU backend's default.
fn stream_bytes_help() -> String {
    let bytes = msloss::cpu::DEFAULT_STREAM_BYTES;
    format!(
        "CPU backend tuning: gradient buffers larger than this many bytes that hold no cached probabilities \
         are written with non-temporal stores, and above it --softmax-cache auto recomputes 2D images in f32 (default \
         {bytes}, {} MiB)",
        bytes >> 20
    )
}

/// `--sample-cache-bytes`' help, with the CPU backend's default.
fn sample_cache_bytes_help() -> String {
    let bytes = msloss::cpu::DEFAULT_SAMPLE_CACHE_BYTES;
    format!(
        "CPU backend tuning: with logits and a gradient, the softmax pass caches a sample's probabilities in a \
         buffer of their own (one per thread, reused) rather than in the gradient buffer where they take at \
         most this many bytes; 0 never does (default {bytes}, {} MiB)",
        bytes >> 20
    )
}

/// `--sample-cache-from`'s help, with the CPU backend's default.
fn sample_cache_from_help() -> String {
    let bytes = msloss::cpu::DEFAULT_SAMPLE_CACHE_FROM_BYTES;
    format!(
        "CPU backend tuning: a sample's probabilities take a buffer of their own (see --sample-cache-bytes) only \
         where its logits, image and probabilities together take more than this many bytes; smaller samples \
         stay in a core's second-level cache either way; 0 lets every sample up to --sample-cache-bytes take \
         one (default {bytes}, {} MiB)",
        bytes >> 20
    )
}

impl BackendArgs {
    /// Builds the chosen backend.
    pub(crate) fn build(&self) -> anyhow::Result<AnyBackend> {
        let mut backend = AnyBackend::new(self.backend, self.threads)?;
        let AnyBackend::Cpu(cpu) = &mut backend else {
            let given = [
                ("--block-pixels", self.block_pixels),
                ("--tile-width", self.tile_width),
                ("--stream-bytes", self.stream_bytes),
                ("--softmax-cache", self.softmax_cache.map(|_| 0)),
                ("--sample-cache-bytes", self.sample_cache_bytes),
                ("--sample-cache-from", self.sample_cache_from),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, v)| v.is_some()) {
                anyhow::bail!(
                    "{flag} applies to the cpu backend only, got --backend {}",
                    format!("{:?}", self.backend).to_lowercase()
                );
            }
            return Ok(backend);
        };
        if let Some(px) = self.block_pixels {
            anyhow::ensure!(px >= 1, "--block-pixels must be >= 1, got {px}");
            *cpu = std::mem::take(cpu).with_block_pixels(px);
        }
        if let Some(cols) = self.tile_width {
            anyhow::ensure!(cols >= 1, "--tile-width must be >= 1, got {cols}");
            *cpu = std::mem::take(cpu).with_tile_width(cols);
        }
        if let Some(bytes) = self.stream_bytes {
            *cpu = std::mem::take(cpu).with_stream_bytes(bytes);
        }
        if let Some(cache) = self.softmax_cache {
            *cpu = std::mem::take(cpu).with_softmax_cache(cache.into());
        }
        if let Some(bytes) = self.sample_cache_bytes {
            *cpu = std::mem::take(cpu).with_sample_cache_bytes(bytes);
        }
        if let Some(bytes) = self.sample_cache_from {
            *cpu = std::mem::take(cpu).with_sample_cache_from(bytes);
        }
        Ok(backend)
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
pub(crate) enum AnyWorkspace {
    /// Reference scratch.
    Reference(ReferenceWorkspace),
    /// CPU scratch.
    Cpu(CpuWorkspace),
    /// GPU buffers.
    Wgpu(WgpuWorkspace),
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
            BackendChoice::Wgpu => AnyBackend::Wgpu(WgpuBackend::new()?),
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
            AnyBackend::Wgpu(b) => Backend::<f32>::name(b),
        }
    }

    fn workspace(&self) -> AnyWorkspace {
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
        ws: &mut AnyWorkspace,
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
