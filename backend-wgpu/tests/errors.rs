//! Bad inputs and bad buffers give typed errors, never panics.

mod common;

use common::backend;
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Error, Input, Outputs, Params, Scores, Shape};
use msloss_wgpu::{DeviceBuffers, ENERGY_BYTES, MAX_CLASSES, ScoresKind, WgpuBackend, WgpuError};
use wgpu::BufferUsages as U;

fn buf(b: &WgpuBackend, bytes: u64, usage: U) -> wgpu::Buffer {
    b.device().create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage, mapped_at_creation: false })
}

fn buffers_for(b: &WgpuBackend, shape: Shape) -> DeviceBuffers {
    let f = 4u64;
    DeviceBuffers {
        scores: buf(b, f * shape.scores_len() as u64, U::STORAGE),
        kind: ScoresKind::Logits,
        image: buf(b, f * shape.image_len() as u64, U::STORAGE),
        mask: Some(buf(b, f * shape.mask_len() as u64, U::STORAGE)),
        grad: Some(buf(b, f * shape.scores_len() as u64, U::STORAGE)),
        centroids: Some(buf(b, f * shape.centroids_len() as u64, U::STORAGE)),
        energy: buf(b, ENERGY_BYTES, U::STORAGE),
    }
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
    assert!(b.plan(shape, &p, &buffers_for(b, shape)).is_ok());
    // Too small.
    let mut bufs = buffers_for(b, shape);
    bufs.image = buf(b, 4 * shape.image_len() as u64 - 4, U::STORAGE);
    let e = b.plan(shape, &p, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::BufferSize { what: "image", .. }), "{e}");
    assert!(e.to_string().contains("needs at least 1024"), "{e}");
    let mut bufs = buffers_for(b, shape);
    bufs.energy = buf(b, 8, U::STORAGE);
    assert!(matches!(
        b.plan(shape, &p, &bufs),
        Err(WgpuError::BufferSize { what: "energy", expected: 16, got: 8, .. })
    ));
    // Missing STORAGE usage.
    let mut bufs = buffers_for(b, shape);
    bufs.grad = Some(buf(b, 4 * shape.scores_len() as u64, U::COPY_SRC | U::COPY_DST));
    let e = b.plan(shape, &p, &bufs).unwrap_err();
    assert!(matches!(e, WgpuError::BufferUsage { what: "gradient", .. }), "{e}");
    // Bad parameters.
    let e = b.plan(shape, &p.with_lambda(f64::NAN), &buffers_for(b, shape)).unwrap_err();
    assert!(matches!(e, WgpuError::Core(Error::BadParam { .. })), "{e}");
}

#[test]
fn shapes_beyond_the_kernels_or_the_device() {
    let Some(b) = backend() else { return };
    let p = Params::default();
    let tiny = buffers_for(b, Shape::new_2d(1, 1, 1, 1, 1).unwrap());
    // Too many classes for one invocation's loops.
    let shape = Shape::new_2d(1, MAX_CLASSES + 1, 1, 1, 1).unwrap();
    let e = b.plan(shape, &p, &tiny).unwrap_err();
    assert!(matches!(e, WgpuError::ExtentTooLarge { dim: "N (classes)", .. }), "{e}");
    // Indices beyond u32.
    let shape = Shape::new_2d(1, 2, 1, 1 << 16, 1 << 16).unwrap();
    let e = b.plan(shape, &p, &tiny).unwrap_err();
    assert!(matches!(e, WgpuError::IndexOverflow { .. }), "{e}");
    // Within u32 indices but beyond the device's binding size (8 GiB of scores).
    let limit = b.device().limits().max_storage_buffer_binding_size;
    let shape = Shape::new_2d(1, 2, 1, 1 << 15, 1 << 15).unwrap();
    if limit < 8 << 30 {
        let e = b.plan(shape, &p, &tiny).unwrap_err();
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
    bufs.image.destroy();
    let e = b.plan(shape, &Params::default(), &bufs).unwrap_err();
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
        matches!(e, WgpuError::MissingLimit { name: "max_storage_buffers_per_shader_stage", required: 7, got: 0 }),
        "{e}"
    );
    let l = wgpu::Limits { max_compute_workgroup_storage_size: 1024, ..wgpu::Limits::default() };
    let e = msloss_wgpu::check_limits(&l).unwrap_err();
    assert!(e.to_string().contains("max_compute_workgroup_storage_size is 1024"), "{e}");
    assert!(msloss_wgpu::check_limits(&wgpu::Limits::default()).is_ok());
}
