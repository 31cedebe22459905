//! Bad inputs and bad buffers give typed errors, never panics.

mod common;

use common::backend;
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Error, Input, Outputs, Params, Scores, Shape};
use msloss_wgpu::{BufferRange, DeviceBuffers, ENERGY_BYTES, Io, MAX_CLASSES, Plan, WgpuBackend, WgpuError};
use wgpu::BufferUsages as U;

fn buf(b: &WgpuBackend, bytes: u64, usage: U) -> wgpu::Buffer {
    b.device().create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage, mapped_at_creation: false })
}

fn buffers_for(b: &WgpuBackend, shape: Shape) -> DeviceBuffers {
    let f = 4u64;
    DeviceBuffers {
        scores: buf(b, f * shape.scores_len() as u64, U::STORAGE).into(),
        image: buf(b, f * shape.image_len() as u64, U::STORAGE).into(),
        mask: Some(buf(b, f * shape.mask_len() as u64, U::STORAGE).into()),
        grad: Some(buf(b, f * shape.scores_len() as u64, U::STORAGE).into()),
        centroids: Some(buf(b, f * shape.centroids_len() as u64, U::STORAGE).into()),
        energy: buf(b, ENERGY_BYTES, U::STORAGE).into(),
    }
}

/// Logits, a mask and a gradient.
const IO: Io = Io { mask: true, ..Io::TRAIN };

/// Records `plan` on `bufs` into a throwaway encoder.
fn encode(b: &WgpuBackend, plan: &Plan, bufs: &DeviceBuffers) -> Result<(), WgpuError> {
    let mut encoder = b.device().create_command_encoder(&Default::default());
    plan.encode(&mut encoder, bufs)
}

#[test]
fn host_path_input_errors() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 2, 1, 4, 4).unwrap();
    let data = RandomInputs::<f32>::new(shape, 31);
    let mut ws = Backend::<f32>::workspace(b);
    let p = Params::default();
    // Wrong gradient length.
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    let mut short = vec![0.0f32; 3];
    let e = b.energy_and_grad(&input, &p, &mut short, &mut ws).unwrap_err();
    assert!(matches!(e, WgpuError::Core(Error::BufferLength { what: "gradient", expected: 32, got: 3, .. })), "{e}");
    // NaN logits, named with their index.
    let mut bad = data.logits.clone();
    bad[9] = f32::NAN;
    let input = Input::new(shape, Scores::Logits(&bad), &data.image, None).unwrap();
    let e = b.energy(&input, &p, &mut ws).unwrap_err();
    assert!(matches!(e, WgpuError::Core(Error::NonFinite { index: 9, .. })), "{e}");
    // Bad parameters.
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    let e = b.energy(&input, &p.with_lambda(-1.0), &mut ws).unwrap_err();
    assert!(matches!(e, WgpuError::Core(Error::BadParam { name: "lambda", .. })), "{e}");
    // Mean over an empty mask.
    let zeros = vec![0.0f32; shape.mask_len()];
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, Some(&zeros)).unwrap();
    let e = b.energy(&input, &p.with_reduction(msloss_core::Reduction::Mean), &mut ws).unwrap_err();
    assert!(matches!(e, WgpuError::Core(Error::EmptyMask)), "{e}");
    // The workspace still works after errors.
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    assert!(b.energy(&input, &p, &mut ws).unwrap().total > 0.0);
}

#[test]
fn f64_is_unsupported() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 2, 1, 2, 2).unwrap();
    let data = RandomInputs::<f64>::new(shape, 32);
    let input = Input::new(shape, Scores::Probs(&data.probs), &data.image, None).unwrap();
    let mut ws = Backend::<f64>::workspace(b);
    let e = b.evaluate(&input, &Params::default(), Outputs::none(), &mut ws).unwrap_err();
    assert!(matches!(e, WgpuError::Core(Error::Unsupported { backend: "wgpu", .. })), "{e}");
}

#[test]
fn caller_buffer_errors() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(2, 3, 2, 8, 8).unwrap();
    let p = Params::default();
    let plan = b.plan(shape, &p, IO).unwrap();
    assert!(encode(b, &plan, &buffers_for(b, shape)).is_ok());
    // Too small.
    let mut bufs = buffers_for(b, shape);
    bufs.image = buf(b, 4 * shape.image_len() as u64 - 4, U::STORAGE).into();
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::BufferSize { what: "image", .. }), "{e}");
    assert!(e.to_string().contains("needs at least 1024"), "{e}");
    let mut bufs = buffers_for(b, shape);
    bufs.energy = buf(b, 8, U::STORAGE).into();
    assert!(matches!(encode(b, &plan, &bufs), Err(WgpuError::BufferSize { what: "energy", expected: 16, got: 8, .. })));
    // Missing STORAGE usage.
    let mut bufs = buffers_for(b, shape);
    bufs.grad = Some(buf(b, 4 * shape.scores_len() as u64, U::COPY_SRC | U::COPY_DST).into());
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::BufferUsage { what: "gradient", .. }), "{e}");
    // Bad parameters.
    let e = b.plan(shape, &p.with_lambda(f64::NAN), IO).unwrap_err();
    assert!(matches!(e, WgpuError::Core(Error::BadParam { .. })), "{e}");
}

/// Sub-ranges: an offset the device cannot bind, a range past the buffer's end, a written range
/// overlapping another, and buffers that do not match the plan's `Io` are typed errors, found
/// before wgpu sees the buffers.
#[test]
fn range_errors() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 2, 1, 8, 8).unwrap();
    let p = Params::default();
    let plan = b.plan(shape, &p, IO).unwrap();
    let align = u64::from(b.device().limits().min_storage_buffer_offset_alignment);
    let bytes = 4 * shape.scores_len() as u64;
    let page = buf(b, 4 * align + 4 * bytes, U::STORAGE);
    let good = buffers_for(b, shape);
    // An offset off the alignment.
    if align > 4 {
        let bufs = DeviceBuffers { scores: BufferRange::new(page.clone(), 4, bytes), ..good.clone() };
        let e = encode(b, &plan, &bufs).unwrap_err();
        assert!(matches!(e, WgpuError::Misaligned { what: "logits", offset: 4, .. }), "{e}");
    }
    // Past the end of the buffer.
    let bufs = DeviceBuffers { scores: BufferRange::new(page.clone(), 4 * align, page.size()), ..good.clone() };
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::RangeOutOfBounds { what: "logits", .. }), "{e}");
    // The gradient over the logits (in place), and over the image.
    let logits = BufferRange::new(page.clone(), 0, bytes);
    let bufs = DeviceBuffers { scores: logits.clone(), grad: Some(logits.clone()), ..good.clone() };
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::Overlap { written: "gradient", other: "logits" }), "{e}");
    let bufs = DeviceBuffers {
        image: BufferRange::new(page.clone(), 0, bytes),
        grad: Some(BufferRange::new(page.clone(), 0, bytes)),
        ..good.clone()
    };
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::Overlap { written: "gradient", other: "image" }), "{e}");
    // Only the bound prefix counts: a larger range that starts after the logits' prefix ends is fine.
    let gap = bytes.next_multiple_of(align.max(4));
    let bufs = DeviceBuffers {
        scores: BufferRange::new(page.clone(), 0, page.size()),
        grad: Some(BufferRange::new(page.clone(), gap, bytes)),
        ..good.clone()
    };
    assert!(encode(b, &plan, &bufs).is_ok());
    // Two inputs may share bytes (they are only read).
    let bufs = DeviceBuffers { mask: Some(BufferRange::new(good.image.buffer.clone(), 0, 256)), ..good.clone() };
    assert!(encode(b, &plan, &bufs).is_ok());
    // Buffers that do not match the plan.
    let bufs = DeviceBuffers { mask: None, ..good.clone() };
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::PlanMismatch { what: "mask", planned: true, given: false }), "{e}");
    assert!(e.to_string().contains("built with a mask"), "{e}");
    let bufs = DeviceBuffers { grad: None, ..good };
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::PlanMismatch { what: "gradient", .. }), "{e}");
}

#[test]
fn shapes_beyond_the_kernels_or_the_device() {
    let Some(b) = backend() else { return };
    let p = Params::default();
    // Too many classes for one invocation's loops.
    let shape = Shape::new_2d(1, MAX_CLASSES + 1, 1, 1, 1).unwrap();
    let e = b.plan(shape, &p, IO).unwrap_err();
    assert!(matches!(e, WgpuError::ExtentTooLarge { dim: "N (classes)", .. }), "{e}");
    // Indices beyond u32.
    let shape = Shape::new_2d(1, 2, 1, 1 << 16, 1 << 16).unwrap();
    let e = b.plan(shape, &p, IO).unwrap_err();
    assert!(matches!(e, WgpuError::IndexOverflow { .. }), "{e}");
    // Within u32 indices but beyond the device's binding size (8 GiB of scores).
    let limit = b.device().limits().max_storage_buffer_binding_size;
    let shape = Shape::new_2d(1, 2, 1, 1 << 15, 1 << 15).unwrap();
    if limit < 8 << 30 {
        let e = b.plan(shape, &p, IO).unwrap_err();
        assert!(matches!(e, WgpuError::BufferTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("max_storage_buffer_binding_size") || e.to_string().contains("max_buffer_size"));
    }
}

/// A destroyed buffer is a wgpu validation error, caught by the backend's error scope.
/// (Buffers of another wgpu instance cannot be tested: wgpu-core's own debug assertions fire
/// before validation does; do not mix instances.)
#[test]
fn destroyed_buffer_is_a_validation_error() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 2, 1, 4, 4).unwrap();
    let bufs = buffers_for(b, shape);
    let plan = b.plan(shape, &Params::default(), IO).unwrap();
    bufs.image.buffer.destroy();
    let e = encode(b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::Validation { .. }), "{e}");
    eprintln!("destroyed buffer: {e}");
}

/// A destroyed device reports an error, not a panic.
#[test]
fn lost_device_is_an_error() {
    if backend().is_none() {
        return;
    }
    let b = WgpuBackend::new().unwrap();
    let shape = Shape::new_2d(1, 2, 1, 4, 4).unwrap();
    let data = RandomInputs::<f32>::new(shape, 33);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    let mut ws = Backend::<f32>::workspace(&b);
    assert!(b.energy(&input, &Params::default(), &mut ws).is_ok());
    b.device().destroy();
    let e = b.energy(&input, &Params::default(), &mut ws).unwrap_err();
    eprintln!("after destroy: {e}");
    assert!(matches!(e, WgpuError::DeviceLost { .. } | WgpuError::Validation { .. } | WgpuError::Poll(_)), "{e}");
}

#[test]
fn errors_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync + 'static>() {}
    is_send_sync::<WgpuError>();
    is_send_sync::<WgpuBackend>();
}

/// A device whose limits fall short is refused with the limit's name (no GPU needed).
#[test]
fn missing_limits_are_named() {
    let e = msloss_wgpu::check_limits(&wgpu::Limits::downlevel_webgl2_defaults()).unwrap_err();
    assert!(
        matches!(e, WgpuError::MissingLimit { name: "max_storage_buffers_per_shader_stage", required: 8, got: 0 }),
        "{e}"
    );
    let l = wgpu::Limits { max_compute_workgroup_storage_size: 1024, ..wgpu::Limits::default() };
    let e = msloss_wgpu::check_limits(&l).unwrap_err();
    assert!(e.to_string().contains("max_compute_workgroup_storage_size is 1024"), "{e}");
    assert!(msloss_wgpu::check_limits(&wgpu::Limits::default()).is_ok());
}

/// A buffer of another device (of the same wgpu instance) is a typed error from `encode`, caught
/// by the error scope, not a panic.
#[test]
fn buffer_of_another_device_is_an_error() {
    if backend().is_none() {
        return;
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    let open = || {
        let desc = wgpu::DeviceDescriptor { required_limits: adapter.limits(), ..Default::default() };
        pollster::block_on(adapter.request_device(&desc)).unwrap()
    };
    let (d1, q1) = open();
    let (d2, _q2) = open();
    let b = WgpuBackend::from_device(d1, q1).unwrap();
    let shape = Shape::new_2d(1, 2, 1, 4, 4).unwrap();
    let plan = b.plan(shape, &Params::default(), IO).unwrap();
    let mut bufs = buffers_for(&b, shape);
    bufs.image = d2
        .create_buffer(&wgpu::BufferDescriptor {
            label: Some("other device"),
            size: 4 * shape.image_len() as u64,
            usage: U::STORAGE,
            mapped_at_creation: false,
        })
        .into();
    let e = encode(&b, &plan, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::WrongDevice { .. }), "{e}");
    assert!(e.to_string().contains("other device"), "{e}");
}
