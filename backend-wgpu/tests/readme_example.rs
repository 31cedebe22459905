//! The README's device-resident example (the crate's doctest, which only compiles), run for real
//! on the test adapter.

mod common;

use msloss_core::{Params, Shape};
use msloss_wgpu::{BufferRange, DeviceBuffers, ENERGY_BYTES, Io, WgpuBackend, decode_energy};
use wgpu::BufferUsages as U;

#[test]
fn readme_device_resident_example() -> Result<(), Box<dyn std::error::Error>> {
    if common::backend().is_none() {
        return Ok(());
    }
    let backend = WgpuBackend::new()?; // or WgpuBackend::from_device(device, queue)
    let (device, queue) = (backend.device(), backend.queue());
    let shape = Shape::new_2d(2, 3, 1, 64, 64)?; // B, N, C, H, W
    let buffer = |elems: usize, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4 * elems as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    // A trainer's tensors, already on the device.
    let logits = buffer(shape.scores_len(), U::STORAGE | U::COPY_DST);
    let image = buffer(shape.image_len(), U::STORAGE | U::COPY_DST);
    let grad = buffer(shape.scores_len(), U::STORAGE);
    let energy = buffer(4, U::STORAGE | U::COPY_SRC);
    // Whole buffers here; `BufferRange::new(buffer, offset, size)` addresses a tensor inside a
    // larger buffer (an allocator's page).
    let buffers = DeviceBuffers {
        scores: logits.into(),
        image: image.into(),
        mask: None,
        grad: Some(grad.into()),
        centroids: None,
        energy: BufferRange::from(&energy),
    };
    let plan = backend.plan(shape, &Params::default(), Io::TRAIN)?; // once: the plan is yours

    // Every step: record into your own encoder, next to your other passes.
    let mut encoder = device.create_command_encoder(&Default::default());
    plan.encode(&mut encoder, &buffers)?; // binds this step's buffers
    // ... the backward pass reads `buffers.grad` here; read the energy back only if you log it:
    let staging = buffer(4, U::MAP_READ | U::COPY_DST);
    encoder.copy_buffer_to_buffer(&energy, 0, &staging, 0, ENERGY_BYTES);
    queue.submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |_| ()); // get_mapped_range errs if mapping failed
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let e = decode_energy(&staging.get_mapped_range(..)?)?;
    println!("energy {} (fidelity {}, length {})", e.total, e.fidelity, e.length);
    assert!(e.total.is_finite() && e.total >= 0.0);
    Ok(())
}
