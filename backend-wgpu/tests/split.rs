//! Batches larger than the device's `max_storage_buffer_binding_size` are split by sample on the
//! host path (same numbers as the reference) and refused, naming the limit, where they cannot be
//! (the device-resident path; one sample beyond the limit).

mod common;

use common::{backend, tested};
use msloss_conformance::{Case, checks};
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Input, LengthKind, Params, Reduction, Scores, Shape};
use msloss_wgpu::{Io, WgpuBackend, WgpuError};

const LIMIT: u64 = 256 << 10;

/// A backend on a device opened with a 256 KiB storage-binding limit.
fn small_device() -> WgpuBackend {
    pollster::block_on(async {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance.request_adapter(&wgpu::RequestAdapterOptions::default()).await.expect("adapter");
        let limits = wgpu::Limits { max_storage_buffer_binding_size: LIMIT, ..adapter.limits() };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() })
            .await
            .expect("device");
        assert_eq!(device.limits().max_storage_buffer_binding_size, LIMIT);
        WgpuBackend::from_device(device, queue).expect("backend")
    })
}

#[test]
fn host_path_splits_large_batches() {
    if backend().is_none() {
        return;
    }
    let b = small_device();
    // 128 KiB of logits per sample: two samples per dispatch sequence, chunks 2 + 2 + 1.
    let shape = Shape::new_2d(5, 2, 1, 128, 128).unwrap();
    let mut gpu = tested(&b).named("wgpu with a 256 KiB binding limit");
    for (logits, reduction) in [(true, Reduction::Mean), (false, Reduction::Sum)] {
        let p = Params::default().with_lambda(0.05).with_length(LengthKind::Charbonnier).with_reduction(reduction);
        let case = Case::new(shape, logits, true, p, 41);
        assert!(checks::agrees_with_reference(&mut gpu, &case, &case.data(), "split").is_some());
    }
}

/// The local fidelity's scratch is one sample's (two buffers of `N·(C+1)` planes, 256 KiB each
/// here), whatever `B`: it splits a batch as the global fidelity does (two samples per dispatch
/// sequence, where the scores reach the limit), and the device-resident path takes two samples
/// (a batch-wide scratch would be 512 KiB). A sample whose own scratch passes the limit is
/// refused by name.
#[test]
fn host_path_splits_local_fidelity_batches() {
    if backend().is_none() {
        return;
    }
    let b = small_device();
    let shape = Shape::new_2d(3, 2, 1, 128, 128).unwrap();
    let mut gpu = tested(&b).named("wgpu with a 256 KiB binding limit");
    for (logits, reduction) in [(true, Reduction::Mean), (false, Reduction::Sum)] {
        let p = Params::default()
            .with_lambda(0.05)
            .with_reduction(reduction)
            .with_fidelity(msloss_core::Fidelity::Local { sigma: 1.5 });
        let case = Case::new(shape, logits, true, p, 43);
        assert!(checks::agrees_with_reference(&mut gpu, &case, &case.data(), "split, local").is_some());
        let two = Case::new(Shape::new_2d(2, 2, 1, 128, 128).unwrap(), logits, true, p, 44);
        assert!(checks::agrees_with_reference(&mut gpu, &two, &two.data(), "two samples, local").is_some());
        b.plan(two.shape, &p, Io::TRAIN).unwrap();
        // Two channels: one sample's scratch is 384 KiB.
        let e = b.plan(Shape::new_2d(1, 2, 2, 128, 128).unwrap(), &p, Io::TRAIN).unwrap_err();
        assert!(matches!(e, WgpuError::BufferTooLarge { what: "the local fidelity's scratch", .. }), "{e}");
    }
}

#[test]
fn beyond_the_limit_is_refused_with_its_name() {
    if backend().is_none() {
        return;
    }
    let b = small_device();
    // One sample of 512² logits is 2 MiB: nothing to split.
    let shape = Shape::new_2d(1, 2, 1, 512, 512).unwrap();
    let data = RandomInputs::<f32>::new(shape, 42);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    let e = b.energy(&input, &Params::default(), &mut Backend::<f32>::workspace(&b)).unwrap_err();
    assert!(matches!(e, WgpuError::BufferTooLarge { limit_name: "max_storage_buffer_binding_size", .. }), "{e}");
    assert!(e.to_string().contains("262144"), "{e}");
    // The device-resident path does not split: the caller's tensors are one binding each.
    let shape = Shape::new_2d(5, 2, 1, 128, 128).unwrap();
    let e = b.plan(shape, &Params::default(), Io::TRAIN).unwrap_err();
    assert!(matches!(e, WgpuError::BufferTooLarge { what: "the scores", .. }), "{e}");
}
