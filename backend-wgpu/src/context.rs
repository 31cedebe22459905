//! The backend object: device, queue, cached pipelines, health of the device.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use msloss_shaders::{Binding, Kernel, WORKGROUP_SIZE, WORKGROUP_STORAGE};

use crate::WgpuError;

/// The largest `N` (classes) the kernels accept: one invocation of `loss_grad` owns a pixel and
/// recomputes the softmax of up to 13 pixels (itself and the neighbours its length term reads,
/// `N − 1` iterations each), then loops twice over the classes (fewer than `90·N + 2·N·C`
/// iterations in all), below lavapipe's 65,535-iteration budget.
pub const MAX_CLASSES: usize = 512;
/// The largest `C` (image channels) the kernels accept (with [`MAX_CLASS_ROWS`], which bounds it
/// with `N`): `class_sums` loops over the channels of each of its 8 pixels per invocation.
pub const MAX_CHANNELS: usize = 1023;
/// The largest `N·(C+1)` the kernels accept: one invocation of `class_sums` sums every class
/// row `(n, k)` of its pixels (about `9·N·(C+1) + 17·N` iterations).
pub const MAX_CLASS_ROWS: usize = 2048;

/// How the first level of the class sums is taken ([`WgpuBackend::with_class_sums`]). Both give
/// the same sums to `f32` rounding, each in a fixed order (the same bits run to run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassSumsPath {
    /// One tile of pixels per workgroup, summed over the workgroup with workgroup memory and
    /// barriers (`class_sums`): few partials a row. The default on GPUs.
    Workgroup,
    /// No barrier (`class_sums_strided`): a few workgroups a sample take every `G`-th tile, and
    /// each invocation adds its pixels into partials of its own, `G·256` a row, which the
    /// reduction levels sum. The default on devices that emulate a GPU on CPU cores (Mesa's
    /// lavapipe, SwiftShader, WARP: `wgpu::DeviceType::Cpu`), where a barrier inside a loop
    /// costs more than the partials.
    Strided,
}

impl ClassSumsPath {
    /// The default for a device of this type.
    pub fn for_device(device_type: wgpu::DeviceType) -> Self {
        if device_type == wgpu::DeviceType::Cpu { Self::Strided } else { Self::Workgroup }
    }

    /// The kernel that takes this path.
    pub fn kernel(self) -> Kernel {
        match self {
            Self::Workgroup => Kernel::ClassSums,
            Self::Strided => Kernel::ClassSumsStrided,
        }
    }
}

/// One cached compute pipeline with its bind group layout.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipeline: wgpu::ComputePipeline,
}

/// What the device reported outside any error scope (only for devices this crate opened).
#[derive(Debug, Default)]
struct Health {
    lost: Option<(String, String)>,
    uncaptured: Option<String>,
}

/// The multiphase Mumford–Shah loss on a GPU through wgpu (Vulkan, Metal, DX12, WebGPU).
///
/// Build it with [`WgpuBackend::new`] (opens its own device) or
/// [`WgpuBackend::from_device`] (shares the caller's). It computes in `f32`:
/// - on host slices through [`msloss_core::Backend<f32>`] (upload, dispatch, read back);
///   `Backend<f64>` returns [`msloss_core::Error::Unsupported`] rather than silently rounding
///   an `f64` request to `f32`;
/// - on the caller's device buffers: [`WgpuBackend::plan`] builds a [`crate::Plan`] (a value the
///   caller owns), and [`crate::Plan::encode`] records every pass into the caller's
///   `CommandEncoder` with no host round trip.
///
/// Pipelines and their layouts are created once, in the constructor, one per
/// [`Kernel`]. The backend is cheap to clone (the state is shared).
#[derive(Clone)]
pub struct WgpuBackend {
    pub(crate) inner: Arc<Inner>,
    pub(crate) class_sums: ClassSumsPath,
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) info: wgpu::AdapterInfo,
    /// Every pipeline made so far, by kernel: those of [`Kernel::ALL`] when the backend is
    /// built, each other specialisation on first use.
    pipelines: Mutex<HashMap<Kernel, Pipeline>>,
    /// Bound where a kernel's read-only input is absent (no mask).
    pub(crate) dummy_read: wgpu::Buffer,
    /// Bound where a kernel's read-write output is absent (no gradient, no softmax scratch).
    pub(crate) dummy_write: wgpu::Buffer,
    health: Arc<Mutex<Health>>,
}

impl fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .field("class_sums", &self.class_sums)
            .finish_non_exhaustive()
    }
}

/// The limits the kernels need, as `(name, required, got)`.
fn limit_needs(l: &wgpu::Limits) -> [(&'static str, u64, u64); 7] {
    let max_storage = Kernel::ALL.iter().map(|k| k.storage_buffers()).max().unwrap_or(0);
    let max_bindings = Kernel::ALL.iter().map(|k| k.bindings().len()).max().unwrap_or(0);
    let max_dynamic = Kernel::ALL
        .iter()
        .map(|k| k.bindings().iter().filter(|b| **b == Binding::UniformDynamic).count())
        .max()
        .unwrap_or(0);
    [
        ("max_storage_buffers_per_shader_stage", max_storage.into(), l.max_storage_buffers_per_shader_stage.into()),
        ("max_bindings_per_bind_group", max_bindings as u64, l.max_bindings_per_bind_group.into()),
        (
            "max_compute_invocations_per_workgroup",
            WORKGROUP_SIZE.into(),
            l.max_compute_invocations_per_workgroup.into(),
        ),
        ("max_compute_workgroup_size_x", WORKGROUP_SIZE.into(), l.max_compute_workgroup_size_x.into()),
        ("max_compute_workgroup_storage_size", WORKGROUP_STORAGE.into(), l.max_compute_workgroup_storage_size.into()),
        ("max_uniform_buffer_binding_size", 64, l.max_uniform_buffer_binding_size),
        // The local fidelity's per-sample block (WebGPU's default is 8).
        (
            "max_dynamic_uniform_buffers_per_pipeline_layout",
            max_dynamic as u64,
            l.max_dynamic_uniform_buffers_per_pipeline_layout.into(),
        ),
    ]
}

/// Checks a device's (or adapter's) limits against what the kernels need.
///
/// # Errors
/// [`WgpuError::MissingLimit`] for the first limit that falls short.
pub fn check_limits(limits: &wgpu::Limits) -> Result<(), WgpuError> {
    for (name, required, got) in limit_needs(limits) {
        if got < required {
            return Err(WgpuError::MissingLimit { name, required, got });
        }
    }
    Ok(())
}

/// Runs `f` inside validation, out-of-memory and internal error scopes and turns what they
/// caught into a [`WgpuError`].
pub(crate) fn scoped<R>(device: &wgpu::Device, context: &'static str, f: impl FnOnce() -> R) -> Result<R, WgpuError> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let r = f();
    // Popped in reverse order of pushing.
    let e_internal = pollster::block_on(internal.pop());
    let e_validation = pollster::block_on(validation.pop());
    let e_oom = pollster::block_on(oom.pop());
    match e_validation.or(e_oom).or(e_internal) {
        Some(e) => Err(WgpuError::from_scope(context, e)),
        None => Ok(r),
    }
}

impl WgpuBackend {
    /// Opens the default adapter (high performance preferred; `WGPU_BACKEND`,
    /// `WGPU_POWER_PREF` and `WGPU_ADAPTER_NAME` are honoured) and a device with the adapter's
    /// full limits, and builds the pipelines of [`Kernel::ALL`] (other specialisations of
    /// `loss_grad` are built on first use).
    ///
    /// # Errors
    /// [`WgpuError::NoAdapter`], [`WgpuError::MissingLimit`], [`WgpuError::RequestDevice`], or a
    /// scope error while building the pipelines.
    pub fn new() -> Result<Self, WgpuError> {
        pollster::block_on(Self::new_async())
    }

    /// [`WgpuBackend::new`] without blocking.
    ///
    /// # Errors
    /// As [`WgpuBackend::new`].
    pub async fn new_async() -> Result<Self, WgpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        };
        let adapter = match wgpu::util::initialize_adapter_from_env(&instance, None).await {
            Ok(a) => a,
            Err(_) => instance.request_adapter(&options).await.map_err(|e| WgpuError::NoAdapter(e.to_string()))?,
        };
        let limits = adapter.limits();
        check_limits(&limits)?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("msloss"),
                required_limits: limits,
                ..Default::default()
            })
            .await
            .map_err(|e| WgpuError::RequestDevice(e.to_string()))?;
        let health = Arc::new(Mutex::new(Health::default()));
        let h = Arc::clone(&health);
        device.set_device_lost_callback(move |reason, message| {
            h.lock().unwrap_or_else(PoisonError::into_inner).lost = Some((format!("{reason:?}"), message));
        });
        let h = Arc::clone(&health);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut health = h.lock().unwrap_or_else(PoisonError::into_inner);
            health.uncaptured.get_or_insert_with(|| e.to_string());
        }));
        Self::build(device, queue, adapter.get_info(), health)
    }

    /// Shares the caller's device and queue (a trainer's), after checking its limits.
    ///
    /// The caller keeps its own device-lost and uncaptured-error handlers: this crate installs
    /// none on a device it did not open, and catches its own errors with error scopes.
    ///
    /// # Errors
    /// [`WgpuError::MissingLimit`], or a scope error while building the pipelines.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self, WgpuError> {
        check_limits(&device.limits())?;
        let info = device.adapter_info();
        Self::build(device, queue, info, Arc::new(Mutex::new(Health::default())))
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        health: Arc<Mutex<Health>>,
    ) -> Result<Self, WgpuError> {
        let limits = device.limits();
        let (pipelines, dummy_read, dummy_write) = scoped(&device, "building the pipelines", || {
            let pipelines: HashMap<Kernel, Pipeline> =
                Kernel::ALL.iter().map(|k| (*k, create_pipeline(&device, *k))).collect();
            let dummy = |label| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 4,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            };
            (pipelines, dummy("msloss dummy (read)"), dummy("msloss dummy (write)"))
        })?;
        let class_sums = ClassSumsPath::for_device(info.device_type);
        let pipelines = Mutex::new(pipelines);
        let inner = Inner { device, queue, limits, info, pipelines, dummy_read, dummy_write, health };
        Ok(Self { inner: Arc::new(inner), class_sums })
    }

    /// The backend (sharing this one's device and pipelines) with the class sums taken by `path`
    /// in the plans it makes from now on; the default is [`ClassSumsPath::for_device`].
    #[must_use]
    pub fn with_class_sums(mut self, path: ClassSumsPath) -> Self {
        self.class_sums = path;
        self
    }

    /// How this backend's plans take the class sums.
    pub fn class_sums(&self) -> ClassSumsPath {
        self.class_sums
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    /// The adapter's description (name, driver, backend).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// Fails if the device was lost or reported an error outside the backend's scopes.
    ///
    /// # Errors
    /// [`WgpuError::DeviceLost`] or [`WgpuError::Validation`].
    pub fn check_health(&self) -> Result<(), WgpuError> {
        let mut h = self.inner.health.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((reason, message)) = &h.lost {
            return Err(WgpuError::DeviceLost { reason: reason.clone(), message: message.clone() });
        }
        if let Some(message) = h.uncaptured.take() {
            return Err(WgpuError::Validation { context: "running earlier work on the device", message });
        }
        Ok(())
    }

    /// The pipeline of `kernel`, made on first use.
    ///
    /// # Errors
    /// A scope error while making it.
    pub(crate) fn pipeline(&self, kernel: Kernel) -> Result<Pipeline, WgpuError> {
        let mut pipelines = self.inner.pipelines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = pipelines.get(&kernel) {
            return Ok(p.clone());
        }
        let device = &self.inner.device;
        let p = scoped(device, "building a pipeline", || create_pipeline(device, kernel))?;
        pipelines.insert(kernel, p.clone());
        Ok(p)
    }
}

fn create_pipeline(device: &wgpu::Device, kernel: Kernel) -> Pipeline {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings()
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match b {
                    Binding::Uniform | Binding::UniformDynamic => wgpu::BufferBindingType::Uniform,
                    Binding::StorageRead => wgpu::BufferBindingType::Storage { read_only: true },
                    Binding::StorageReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: *b == Binding::UniformDynamic,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(kernel.name()), entries: &entries });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(kernel.name()),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(kernel.name()),
        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(kernel.source())),
    });
    let constants = match kernel {
        Kernel::LossGrad(spec) => spec.constants().to_vec(),
        _ => Vec::new(),
    };
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.name()),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry_point()),
        compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
        cache: None,
    });
    Pipeline { layout, pipeline }
}
