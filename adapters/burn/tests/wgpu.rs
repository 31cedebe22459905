//! The loss on burn's wgpu backend (feature `wgpu`): msloss-wgpu's kernels on burn's own device
//! and buffers, compared with the host path on burn's flex CPU backend (msloss's CPU backend),
//! within 1e-5 (energy relative; gradient relative to its largest magnitude). On a machine
//! without a GPU this runs on Mesa's lavapipe (`XDG_RUNTIME_DIR=/tmp`).
#![cfg(all(feature = "wgpu", feature = "flex"))]

use std::sync::OnceLock;

use burn::tensor::{DType, Device, Tensor, TensorData};
use msloss_burn::{Error, MsLoss, Path};
use msloss_core::rng::RandomInputs;
use msloss_core::{LengthKind, Params, Reduction, Shape};

/// burn's default wgpu device, opened through msloss (once per test binary).
fn gpu() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| msloss_burn::gpu::default_device().expect("a wgpu adapter (lavapipe: XDG_RUNTIME_DIR=/tmp)"))
        .clone()
}

/// The tensors of one case on `device`: logits `[B, N, (D,) H, W]`, image, mask `[B, 1, ...]`.
struct Case {
    shape: Shape,
    data: RandomInputs<f32>,
}

impl Case {
    fn new(shape: Shape, seed: u64) -> Self {
        Self { shape, data: RandomInputs::new(shape, seed) }
    }

    fn dims(&self, lead: usize) -> Vec<usize> {
        let s = self.shape;
        let mut d = vec![s.batch(), lead];
        if s.depth() > 1 {
            d.push(s.depth());
        }
        d.extend([s.height(), s.width()]);
        d
    }

    fn tensor<const D: usize>(&self, v: &[f32], lead: usize, device: &Device) -> Tensor<D> {
        Tensor::<D>::from_data(TensorData::new(v.to_vec(), self.dims(lead)), (device, DType::F32))
    }

    /// `(E, ∂E/∂z)` through the op on `device` (autodiff), with or without the mask.
    fn run<const D: usize>(&self, loss: &MsLoss, device: &Device, masked: bool) -> (f64, Vec<f32>) {
        let s = self.shape;
        let device = device.clone().autodiff();
        let z = self.tensor::<D>(&self.data.logits, s.classes(), &device).require_grad();
        let x = self.tensor::<D>(&self.data.image, s.channels(), &device);
        let m = masked.then(|| self.tensor::<D>(&self.data.mask, 1, &device));
        let e = loss.forward(z.clone(), x, m).expect("forward");
        let grads = e.backward();
        let g = z.grad(&grads).expect("gradient").into_data().try_to_vec::<f32>().expect("f32");
        let value = e.into_data().try_to_vec::<f32>().expect("f32")[0];
        (f64::from(value), g)
    }
}

fn compare(what: &str, (e_gpu, g_gpu): (f64, Vec<f32>), (e_cpu, g_cpu): (f64, Vec<f32>)) {
    let rel = (e_gpu - e_cpu).abs() / e_cpu.abs().max(f64::MIN_POSITIVE);
    assert!(rel <= 1e-5, "{what}: energy {e_gpu} on wgpu, {e_cpu} on the CPU (relative {rel:.2e})");
    assert_eq!(g_gpu.len(), g_cpu.len(), "{what}");
    let scale = g_cpu.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(f32::MIN_POSITIVE);
    let (i, worst) = g_gpu
        .iter()
        .zip(&g_cpu)
        .map(|(a, b)| (a - b).abs() / scale)
        .enumerate()
        .fold((0, 0.0f32), |acc, (i, d)| if d > acc.1 { (i, d) } else { acc });
    assert!(
        worst <= 1e-5,
        "{what}: gradient[{i}] = {} on wgpu, {} on the CPU ({worst:.2e} of the largest, {scale})",
        g_gpu[i],
        g_cpu[i]
    );
}

#[test]
fn agrees_with_the_cpu_path_2d_and_3d() {
    let gpu = gpu();
    let cpu = Device::flex();
    let cases = [(Shape::new_2d(2, 3, 2, 9, 11).unwrap(), 51), (Shape::new(1, 3, 2, 3, 7, 6).unwrap(), 52)];
    for (shape, seed) in cases {
        let case = Case::new(shape, seed);
        for length in [LengthKind::L1, LengthKind::L2, LengthKind::Charbonnier] {
            for (masked, reduction) in [(false, Reduction::Sum), (true, Reduction::Mean), (true, Reduction::Sum)] {
                let mut params = Params::default().with_lambda(0.05).with_length(length).with_reduction(reduction);
                if masked && reduction == Reduction::Sum {
                    // The other parameters away from their defaults.
                    params = Params { fidelity_weight: 0.7, delta: 0.3, centroid_eps: 1e-3, ..params };
                }
                let loss_gpu = MsLoss::new(params);
                let loss_cpu = MsLoss::new(params);
                let what = format!("{shape} {} {} mask {masked}", length.name(), reduction.name());
                let (g, c) = if shape.depth() > 1 {
                    (case.run::<5>(&loss_gpu, &gpu, masked), case.run::<5>(&loss_cpu, &cpu, masked))
                } else {
                    (case.run::<4>(&loss_gpu, &gpu, masked), case.run::<4>(&loss_cpu, &cpu, masked))
                };
                assert_eq!(loss_gpu.last().1.path, Path::Device, "{what}");
                assert_eq!(loss_cpu.last().1.path, Path::Host, "{what}");
                compare(&what, g, c);
                // The device's record, read on request, holds the same energy.
                let e = loss_gpu.check().expect("check");
                let rel = (e.total - loss_cpu.last().0.total).abs() / loss_cpu.last().0.total;
                assert!(rel <= 1e-5, "{what}: check() {} vs {}", e.total, loss_cpu.last().0.total);
            }
        }
    }
}

/// The local fidelity on the device (msloss-wgpu's convolution kernels) against burn's CPU path.
#[test]
fn local_fidelity_agrees_with_the_cpu_path() {
    let gpu = gpu();
    let cpu = Device::flex();
    let cases = [(Shape::new_2d(2, 3, 2, 9, 11).unwrap(), 53), (Shape::new(1, 3, 2, 3, 7, 6).unwrap(), 54)];
    for (shape, seed) in cases {
        let case = Case::new(shape, seed);
        for (masked, reduction, sigma) in [(false, Reduction::Sum, 1.5), (true, Reduction::Mean, 4.0)] {
            let params = Params::default()
                .with_lambda(0.05)
                .with_reduction(reduction)
                .with_fidelity(msloss_core::Fidelity::Local { sigma });
            let loss_gpu = MsLoss::new(params);
            let loss_cpu = MsLoss::new(params);
            let what = format!("{shape} local σ {sigma} {} mask {masked}", reduction.name());
            let (g, c) = if shape.depth() > 1 {
                (case.run::<5>(&loss_gpu, &gpu, masked), case.run::<5>(&loss_cpu, &cpu, masked))
            } else {
                (case.run::<4>(&loss_gpu, &gpu, masked), case.run::<4>(&loss_cpu, &cpu, masked))
            };
            assert_eq!(loss_gpu.last().1.path, Path::Device, "{what}");
            compare(&what, g, c);
        }
    }
}

/// Without autodiff the op returns the value alone, on the device.
#[test]
fn value_without_autodiff() {
    let gpu = gpu();
    let case = Case::new(Shape::new_2d(1, 4, 3, 12, 10).unwrap(), 53);
    let s = case.shape;
    let loss = MsLoss::new(Params::default());
    let z = case.tensor::<4>(&case.data.logits, s.classes(), &gpu);
    let x = case.tensor::<4>(&case.data.image, s.channels(), &gpu);
    let e = loss.forward(z, x, None).unwrap();
    assert_eq!(loss.last().1.path, Path::Device);
    let value = f64::from(e.into_data().try_to_vec::<f32>().unwrap()[0]);
    let (cpu, _) = case.run::<4>(&MsLoss::new(Params::default()), &Device::flex(), false);
    assert!((value - cpu).abs() <= 1e-5 * cpu, "{value} vs {cpu}");
}

/// The device path moves no tensor between host and device per step (forward and backward);
/// the host path moves five per step (logits, image, mask down; value, gradient up), so the
/// count is what distinguishes them. Reading the record with `check` is one transfer.
#[test]
fn device_path_moves_nothing_to_the_host() {
    let gpu = gpu().autodiff();
    let case = Case::new(Shape::new_2d(2, 3, 1, 16, 16).unwrap(), 54);
    let s = case.shape;
    let x = case.tensor::<4>(&case.data.image, s.channels(), &gpu);
    let m = case.tensor::<4>(&case.data.mask, 1, &gpu);
    let loss = MsLoss::new(Params::default());
    let z0 = case.tensor::<4>(&case.data.logits, s.classes(), &gpu);
    for step in 0..3 {
        // Each step's logits are new device tensors (a device op on the last ones).
        let z = z0.clone().add_scalar(0.01 * f64::from(step)).detach().require_grad();
        let e = loss.forward(z.clone(), x.clone(), Some(m.clone())).unwrap();
        let g = z.grad(&e.backward()).unwrap();
        assert_eq!(g.dims(), z.dims());
        assert_eq!(loss.last().1.path, Path::Device);
    }
    assert_eq!(loss.host_transfers(), 0, "the device path moved tensors to or from the host");
    loss.check().unwrap();
    assert_eq!(loss.host_transfers(), 1);

    let cpu = Device::flex().autodiff();
    let host = MsLoss::new(Params::default());
    let _ = case.run::<4>(&host, &cpu, true);
    assert_eq!(host.host_transfers(), 5, "the host path's count");
}

/// Non-finite inputs and bad masks are found on the device and reported by `check`; shapes and
/// devices are refused before anything runs.
#[test]
fn bad_input_is_a_typed_error() {
    let gpu = gpu();
    let case = Case::new(Shape::new_2d(1, 2, 1, 8, 8).unwrap(), 55);
    let s = case.shape;
    let loss = MsLoss::new(Params::default());
    let x = case.tensor::<4>(&case.data.image, s.channels(), &gpu);
    let mut bad = case.data.logits.clone();
    bad[5] = f32::NAN;
    let z = case.tensor::<4>(&bad, s.classes(), &gpu);
    loss.forward(z, x.clone(), None).unwrap();
    let e = loss.check().unwrap_err();
    assert!(matches!(e, Error::Wgpu(msloss_wgpu::WgpuError::InvalidDeviceInput(_))), "{e}");
    assert!(e.to_string().contains("NaN"), "{e}");
    let mut mask = case.data.mask.clone();
    mask[3] = 0.5;
    let z = case.tensor::<4>(&case.data.logits, s.classes(), &gpu);
    let m = case.tensor::<4>(&mask, 1, &gpu);
    let value = loss.forward(z.clone(), x.clone(), Some(m)).unwrap();
    // The loss tensor itself holds no plausible number: NaN, until check() says why.
    assert!(value.into_data().try_to_vec::<f32>().unwrap()[0].is_nan());
    let e = loss.check().unwrap_err();
    assert!(e.to_string().contains("mask value"), "{e}");
    // The mean over an empty mask: msloss's EmptyMask, and a NaN value.
    let empty = case.tensor::<4>(&vec![0.0; s.mask_len()], 1, &gpu);
    let mean = MsLoss::new(Params::default().with_reduction(Reduction::Mean));
    let value = mean.forward(z.clone(), x.clone(), Some(empty)).unwrap();
    assert!(value.into_data().try_to_vec::<f32>().unwrap()[0].is_nan());
    let e = mean.check().unwrap_err();
    assert!(matches!(e, Error::Wgpu(msloss_wgpu::WgpuError::Core(msloss_core::Error::EmptyMask))), "{e}");
    // A good call after the bad ones checks clean.
    loss.forward(z.clone(), x.clone(), None).unwrap();
    assert!(loss.check().unwrap().total > 0.0);
    // Shapes that do not fit: msloss's error, before any dispatch.
    let x3 = Tensor::<4>::zeros([1, 1, 8, 7], &gpu);
    let e = loss.forward(z.clone(), x3, None).unwrap_err();
    assert!(matches!(e, Error::Loss(_)), "{e}");
    // An image on another device.
    let xc = Tensor::<4>::zeros([1, 1, 8, 8], &Device::flex());
    let e = loss.forward(z, xc, None).unwrap_err();
    assert!(matches!(e, Error::Device { what: "image", .. }), "{e}");
}

/// A non-contiguous input (a transposed view) is made contiguous on the device first.
#[test]
fn non_contiguous_logits() {
    let gpu = gpu();
    let case = Case::new(Shape::new_2d(1, 3, 1, 6, 5).unwrap(), 56);
    let s = case.shape;
    // Logits stored as [B, N, W, H], swapped to [B, N, H, W]: a strided view.
    let mut t = vec![0.0f32; case.data.logits.len()];
    let (h, w) = (s.height(), s.width());
    for n in 0..s.classes() {
        for y in 0..h {
            for x in 0..w {
                t[n * h * w + x * h + y] = case.data.logits[n * h * w + y * w + x];
            }
        }
    }
    let zt = Tensor::<4>::from_data(TensorData::new(t, [1, s.classes(), w, h]), (&gpu, DType::F32)).swap_dims(2, 3);
    let x = case.tensor::<4>(&case.data.image, s.channels(), &gpu);
    let loss = MsLoss::new(Params::default());
    let e = f64::from(loss.forward(zt, x, None).unwrap().into_data().try_to_vec::<f32>().unwrap()[0]);
    assert_eq!(loss.last().1.path, Path::Device);
    let (cpu, _) = case.run::<4>(&MsLoss::new(Params::default()), &Device::flex(), false);
    assert!((e - cpu).abs() <= 1e-5 * cpu, "{e} vs {cpu}");
}

/// A model's parameter gradient after one step agrees between wgpu and the CPU: a 1×1
/// convolution (a matrix over the channels) producing the logits.
#[test]
fn parameter_gradient_of_a_model() {
    let case = Case::new(Shape::new_2d(2, 3, 4, 10, 9).unwrap(), 57);
    let s = case.shape;
    let weights: Vec<f32> = (0..s.classes() * s.channels()).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let run = |device: &Device| {
        let device = device.clone().autodiff();
        let w = Tensor::<2>::from_data(
            TensorData::new(weights.clone(), [s.classes(), s.channels()]),
            (&device, DType::F32),
        )
        .require_grad();
        let x = case.tensor::<4>(&case.data.image, s.channels(), &device);
        let (b, c, h, wd) = (s.batch(), s.channels(), s.height(), s.width());
        let flat = x.clone().reshape([b, c, h * wd]);
        let logits = w.clone().unsqueeze::<3>().matmul(flat).reshape([b, s.classes(), h, wd]);
        let loss = MsLoss::new(Params::default().with_lambda(0.1));
        let e = loss.forward(logits, x, None).unwrap();
        let g = w.grad(&e.backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        (f64::from(e.into_data().try_to_vec::<f32>().unwrap()[0]), g)
    };
    compare("1×1 convolution's weight gradient", run(&gpu()), run(&Device::flex()));
}

/// A wgpu setup of the caller's: registered through msloss it takes the device path; registered
/// with burn alone (msloss cannot reach its queue) it takes the host round trip, with the same
/// result.
#[test]
fn caller_setups_and_unregistered_devices() {
    use burn::backend::wgpu::{RuntimeOptions, WgpuSetup, wgpu};
    let _ = gpu();
    let setup = || {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
        // burn's kernels need the adapter's features (64-bit integers among them).
        let desc = wgpu::DeviceDescriptor {
            required_limits: adapter.limits(),
            required_features: adapter.features(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).unwrap();
        let backend = adapter.get_info().backend;
        WgpuSetup { instance, adapter, device, queue, backend }
    };
    let mine = msloss_burn::gpu::init_device(setup()).unwrap();
    let burn_only = Device::new(burn::backend::wgpu::init_device(setup(), RuntimeOptions::default()));
    let case = Case::new(Shape::new_2d(1, 3, 2, 7, 9).unwrap(), 58);
    let params = Params::default().with_length(LengthKind::L2);
    let (l1, l2) = (MsLoss::new(params), MsLoss::new(params));
    let a = case.run::<4>(&l1, &mine, true);
    let b = case.run::<4>(&l2, &burn_only, true);
    assert_eq!(l1.last().1.path, Path::Device);
    assert_eq!(l2.last().1.path, Path::Host);
    assert_eq!(l1.host_transfers(), 0);
    assert_eq!(l2.host_transfers(), 5);
    compare("caller's setup vs burn-only wgpu device", a, b);
}

/// Half-precision logits are computed in `f32` on the device and the gradient returned in the
/// logits' dtype; the host path does the same, so the two agree to the dtype's rounding. Each
/// dtype runs where both devices support it (lavapipe: f16 yes, bf16 no); the test prints which.
#[test]
fn half_precision_logits() {
    let gpu = gpu();
    let mut ran = 0;
    for dtype in [DType::F16, DType::BF16] {
        if !gpu.supports_dtype(dtype) || !Device::flex().supports_dtype(dtype) {
            eprintln!("{dtype:?}: not supported here, skipped");
            continue;
        }
        ran += 1;
        let case = Case::new(Shape::new_2d(1, 3, 1, 8, 8).unwrap(), 59);
        let s = case.shape;
        let run = |device: &Device| {
            let device = device.clone().autodiff();
            let t = |v: &[f32], k: usize| case.tensor::<4>(v, k, &device).cast(dtype);
            let z = t(&case.data.logits, s.classes()).require_grad();
            let loss = MsLoss::new(Params::default());
            let e = loss.forward(z.clone(), t(&case.data.image, s.channels()), None).unwrap();
            let g = z.grad(&e.backward()).unwrap();
            assert_eq!((e.dtype(), g.dtype()), (dtype, dtype));
            let f = |t: Tensor<4>| t.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap();
            (f64::from(e.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap()[0]), f(g), loss.last().1.path)
        };
        let (eg, gg, pg) = run(&gpu);
        let (ec, gc, pc) = run(&Device::flex());
        assert_eq!((pg, pc), (Path::Device, Path::Host));
        assert!((eg - ec).abs() <= 1e-2 * ec.abs(), "{dtype:?}: {eg} vs {ec}");
        let scale = gc.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        for (a, b) in gg.iter().zip(&gc) {
            assert!((a - b).abs() <= 1e-2 * scale, "{dtype:?}: gradient {a} vs {b}");
        }
    }
    eprintln!("half precision: {ran} dtype(s) run");
}
