//! Ranges inside shared buffers, as a framework's allocator lays tensors out: every tensor of a
//! call at a non-zero offset of one buffer (inputs and outputs in one page, so an input's buffer
//! is also bound writable in the same dispatch), with junk between them. The results must be the
//! host path's bits (the same kernels on buffers of their own), and the junk must stay as it was.

mod common;

use common::backend;
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Input, LengthKind, Outputs, Params, Reduction, Scores, Shape};
use msloss_wgpu::{BufferRange, DeviceBuffers, ENERGY_BYTES, ScoresKind, WgpuBackend, decode_energy};
use wgpu::BufferUsages as U;

const JUNK: f32 = -7.25;

/// Lays `parts` (in bytes) out at offsets aligned to the device's storage offset alignment, the
/// first at one alignment unit from the start; returns the offsets and the total size.
fn layout(b: &WgpuBackend, parts: &[u64]) -> (Vec<u64>, u64) {
    let align = u64::from(b.device().limits().min_storage_buffer_offset_alignment).max(4);
    let mut at = align;
    let mut offsets = Vec::new();
    for p in parts {
        offsets.push(at);
        // At least one junk word after each part.
        at = (at + p + 4).next_multiple_of(align);
    }
    (offsets, at + align)
}

fn read(b: &WgpuBackend, buf: &wgpu::Buffer) -> Vec<f32> {
    let staging = b.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: buf.size(),
        usage: U::MAP_READ | U::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = b.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    b.queue().submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
    b.device().poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    let v = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("mapped"));
    staging.unmap();
    v
}

fn floats_at(page: &[f32], offset: u64, len: usize) -> &[f32] {
    let at = (offset / 4) as usize;
    &page[at..at + len]
}

#[test]
fn one_page_for_every_tensor() {
    let Some(b) = backend() else { return };
    let shape = Shape::new(2, 3, 2, 2, 9, 7).unwrap();
    let data = RandomInputs::<f32>::new(shape, 41);
    for (kind, masked, length, reduction) in [
        (ScoresKind::Logits, true, LengthKind::Charbonnier, Reduction::Mean),
        (ScoresKind::Probs, false, LengthKind::L2, Reduction::Sum),
        (ScoresKind::Logits, false, LengthKind::L1, Reduction::Sum),
    ] {
        let params = Params::default().with_lambda(0.07).with_length(length).with_reduction(reduction);
        let scores = if kind == ScoresKind::Logits { &data.logits } else { &data.probs };
        let f = 4u64;
        let sizes = [
            f * shape.scores_len() as u64,
            f * shape.image_len() as u64,
            f * shape.mask_len() as u64,
            f * shape.scores_len() as u64,
            f * shape.centroids_len() as u64,
            ENERGY_BYTES,
        ];
        let (off, total) = layout(b, &sizes);
        let mut host = vec![JUNK; (total / 4) as usize];
        for (i, src) in [&scores[..], &data.image, &data.mask].into_iter().enumerate() {
            let at = (off[i] / 4) as usize;
            host[at..at + src.len()].copy_from_slice(src);
        }
        let page = b.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("one page"),
            size: total,
            usage: U::STORAGE | U::COPY_DST | U::COPY_SRC,
            mapped_at_creation: false,
        });
        b.queue().write_buffer(&page, 0, bytemuck::cast_slice(&host));
        let at = |i: usize| BufferRange::new(page.clone(), off[i], sizes[i]);
        let buffers = DeviceBuffers {
            scores: at(0),
            image: at(1),
            mask: masked.then(|| at(2)),
            grad: Some(at(3)),
            centroids: Some(at(4)),
            energy: at(5),
        };
        let plan = b.plan(shape, &params, buffers.io(kind)).unwrap();
        let mut encoder = b.device().create_command_encoder(&Default::default());
        plan.encode(&mut encoder, &buffers).unwrap();
        b.queue().submit([encoder.finish()]);
        let after = read(b, &page);

        let sc = if kind == ScoresKind::Logits { Scores::Logits(&scores[..]) } else { Scores::Probs(&scores[..]) };
        let input = Input::new(shape, sc, &data.image, masked.then_some(&data.mask[..])).unwrap();
        let mut hg = vec![0.0f32; shape.scores_len()];
        let mut hc = vec![0.0f32; shape.centroids_len()];
        let mut ws = Backend::<f32>::workspace(b);
        let he =
            b.evaluate(&input, &params, Outputs { grad: Some(&mut hg), centroids: Some(&mut hc) }, &mut ws).unwrap();
        let what = format!("{kind:?} mask {masked} {} {}", length.name(), reduction.name());
        let e = decode_energy(bytemuck::cast_slice(floats_at(&after, off[5], 4))).unwrap();
        assert_eq!(e, he, "{what}: energy");
        assert_eq!(floats_at(&after, off[3], hg.len()), &hg[..], "{what}: gradient");
        assert_eq!(floats_at(&after, off[4], hc.len()), &hc[..], "{what}: centroids");
        // The inputs are unchanged, and so is every junk word between and around the ranges.
        let mut expect = host.clone();
        for (i, v) in [(3, &hg), (4, &hc)] {
            let a = (off[i] / 4) as usize;
            expect[a..a + v.len()].copy_from_slice(v);
        }
        let a = (off[5] / 4) as usize;
        expect[a..a + 4].copy_from_slice(floats_at(&after, off[5], 4));
        let changed: Vec<usize> = (0..expect.len()).filter(|&i| expect[i].to_bits() != after[i].to_bits()).collect();
        assert!(
            changed.is_empty(),
            "{what}: words written outside the output ranges: {:?}",
            &changed[..changed.len().min(10)]
        );
    }
}

/// The gradient written into the same buffer the logits are read from, directly after them
/// (the offset that a packing allocator gives the next tensor).
#[test]
fn gradient_beside_its_logits() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 4, 1, 16, 16).unwrap();
    let data = RandomInputs::<f32>::new(shape, 42);
    let bytes = 4 * shape.scores_len() as u64;
    let align = u64::from(b.device().limits().min_storage_buffer_offset_alignment).max(4);
    let grad_at = bytes.next_multiple_of(align);
    let page = b.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("logits and gradient"),
        size: grad_at + bytes,
        usage: U::STORAGE | U::COPY_DST | U::COPY_SRC,
        mapped_at_creation: false,
    });
    b.queue().write_buffer(&page, 0, bytemuck::cast_slice(&data.logits));
    let image = b.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * shape.image_len() as u64 + ENERGY_BYTES,
        usage: U::STORAGE | U::COPY_DST | U::COPY_SRC,
        mapped_at_creation: false,
    });
    b.queue().write_buffer(&image, 0, bytemuck::cast_slice(&data.image));
    let buffers = DeviceBuffers {
        scores: BufferRange::new(page.clone(), 0, bytes),
        image: BufferRange::new(image.clone(), 0, 4 * shape.image_len() as u64),
        mask: None,
        grad: Some(BufferRange::new(page.clone(), grad_at, bytes)),
        centroids: None,
        // The energy record in the image's buffer, after the image (1024 bytes: aligned).
        energy: BufferRange::new(image.clone(), 4 * shape.image_len() as u64, ENERGY_BYTES),
    };
    let params = Params::default();
    let plan = b.plan(shape, &params, buffers.io(ScoresKind::Logits)).unwrap();
    let mut encoder = b.device().create_command_encoder(&Default::default());
    plan.encode(&mut encoder, &buffers).unwrap();
    b.queue().submit([encoder.finish()]);
    let after = read(b, &page);
    let img = read(b, &image);
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    let mut hg = vec![0.0f32; shape.scores_len()];
    let mut ws = Backend::<f32>::workspace(b);
    let he = b.energy_and_grad(&input, &params, &mut hg, &mut ws).unwrap();
    assert_eq!(&after[..data.logits.len()], &data.logits[..], "the logits are unchanged");
    assert_eq!(floats_at(&after, grad_at, hg.len()), &hg[..]);
    let e = decode_energy(bytemuck::cast_slice(floats_at(&img, 4 * shape.image_len() as u64, 4))).unwrap();
    assert_eq!(e, he);
}
