//! The device-resident path used the way a trainer uses it: create buffers on the device,
//! upload once, build a plan, record into its own encoder next to its own work, submit, read
//! back. It must give the host path's numbers (the same kernels) and the reference's.

mod common;

use common::backend;
use msloss_conformance::Tolerance;
use msloss_conformance::checks::reference;
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Input, LengthKind, Outputs, Params, Reduction, Scores, Shape};
use msloss_wgpu::{BufferRange, DeviceBuffers, ENERGY_BYTES, Io, ScoresKind, WgpuBackend, decode_energy};
use wgpu::BufferUsages as U;

fn upload(b: &WgpuBackend, data: &[f32], usage: U) -> wgpu::Buffer {
    let buf = b.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test input"),
        size: 4 * data.len() as u64,
        usage: usage | U::COPY_DST,
        mapped_at_creation: false,
    });
    b.queue().write_buffer(&buf, 0, bytemuck::cast_slice(data));
    buf
}

fn empty(b: &WgpuBackend, bytes: u64, usage: U) -> wgpu::Buffer {
    b.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test output"),
        size: bytes,
        usage,
        mapped_at_creation: false,
    })
}

/// Copies `src` to a mappable buffer after `encoder`'s work, submits, waits, and reads it.
fn read_back(b: &WgpuBackend, mut encoder: wgpu::CommandEncoder, srcs: &[&wgpu::Buffer]) -> Vec<Vec<u8>> {
    let stagings: Vec<wgpu::Buffer> = srcs.iter().map(|s| empty(b, s.size(), U::MAP_READ | U::COPY_DST)).collect();
    for (s, st) in srcs.iter().zip(&stagings) {
        encoder.copy_buffer_to_buffer(s, 0, st, 0, s.size());
    }
    b.queue().submit([encoder.finish()]);
    for st in &stagings {
        st.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
    }
    b.device().poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    stagings
        .iter()
        .map(|st| {
            let v = st.get_mapped_range(..).expect("mapped").to_vec();
            st.unmap();
            v
        })
        .collect()
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

#[test]
fn trainer_loop_matches_host_path_and_reference() {
    let Some(b) = backend() else { return };
    let shape = Shape::new(2, 3, 2, 4, 20, 18).unwrap();
    let data = RandomInputs::<f32>::new(shape, 21);
    for (kind, masked, length, reduction) in [
        (ScoresKind::Logits, true, LengthKind::Charbonnier, Reduction::Mean),
        (ScoresKind::Probs, false, LengthKind::L1, Reduction::Sum),
        (ScoresKind::Logits, false, LengthKind::L2, Reduction::Sum),
    ] {
        let params = Params::default().with_lambda(0.05).with_length(length).with_reduction(reduction);
        let scores = if kind == ScoresKind::Logits { &data.logits } else { &data.probs };
        let grad = empty(b, 4 * shape.scores_len() as u64, U::STORAGE | U::COPY_SRC | U::COPY_DST);
        let cent = empty(b, 4 * shape.centroids_len() as u64, U::STORAGE | U::COPY_SRC);
        let energy = empty(b, ENERGY_BYTES, U::STORAGE | U::COPY_SRC);
        let buffers = DeviceBuffers {
            scores: upload(b, scores, U::STORAGE).into(),
            image: upload(b, &data.image, U::STORAGE).into(),
            mask: masked.then(|| upload(b, &data.mask, U::STORAGE).into()),
            grad: Some(BufferRange::from(&grad)),
            centroids: Some(BufferRange::from(&cent)),
            energy: BufferRange::from(&energy),
        };
        let plan = b.plan(shape, &params, buffers.io(kind)).unwrap();
        // Two steps of a "training loop": the trainer's own pass before, the loss, read back.
        let mut results = Vec::new();
        for _ in 0..2 {
            let mut encoder = b.device().create_command_encoder(&Default::default());
            encoder.clear_buffer(&grad, 0, None); // stands in for the trainer's own work
            plan.encode(&mut encoder, &buffers).unwrap();
            results.push(read_back(b, encoder, &[&energy, &grad, &cent]));
        }
        assert_eq!(results[0], results[1], "two steps give the same bits");
        let e = decode_energy(&results[0][0]).unwrap();
        let g = floats(&results[0][1]);
        let c = floats(&results[0][2]);

        let sc = if kind == ScoresKind::Logits { Scores::Logits(scores) } else { Scores::Probs(scores) };
        let input = Input::new(shape, sc, &data.image, masked.then_some(&data.mask[..])).unwrap();
        // The host path: the same kernels, the same bits.
        let mut hg = vec![0.0f32; shape.scores_len()];
        let mut hc = vec![0.0f32; shape.centroids_len()];
        let mut ws = Backend::<f32>::workspace(b);
        let he =
            b.evaluate(&input, &params, Outputs { grad: Some(&mut hg), centroids: Some(&mut hc) }, &mut ws).unwrap();
        assert_eq!(e, he);
        assert_eq!(g, hg);
        assert_eq!(c, hc);
        // And the reference.
        let want = reference(&input, &params).unwrap();
        let what = format!("device path {} {}", length.name(), reduction.name());
        Tolerance::F32.energy(&what, e, want.energy);
        Tolerance::F32.slices("gradient", &what, &g, &want.grad);
        Tolerance::F32.slices("centroids", &what, &c, want.centroids.as_deref().unwrap());
    }
}

/// A plan is the caller's value: its parameters change with `set_params`, and one plan runs on
/// different buffers of its shape.
#[test]
fn plan_follows_parameters_and_buffers() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 2, 1, 30, 40).unwrap();
    let data = RandomInputs::<f32>::new(shape, 22);
    let energy = empty(b, ENERGY_BYTES, U::STORAGE | U::COPY_SRC);
    let buffers = DeviceBuffers {
        scores: upload(b, &data.logits, U::STORAGE).into(),
        image: upload(b, &data.image, U::STORAGE).into(),
        mask: None,
        grad: None,
        centroids: None,
        energy: BufferRange::from(&energy),
    };
    let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).unwrap();
    let io = Io { kind: ScoresKind::Logits, mask: false, grad: false };
    let mut plan = b.plan(shape, &Params::default(), io).unwrap();
    for p in [Params::default(), Params::default().with_lambda(0.3), Params::default()] {
        plan.set_params(&p).unwrap();
        let mut encoder = b.device().create_command_encoder(&Default::default());
        plan.encode(&mut encoder, &buffers).unwrap();
        let e = decode_energy(&read_back(b, encoder, &[&energy])[0]).unwrap();
        Tolerance::F32.energy(&format!("plan λ = {}", p.lambda), e, reference(&input, &p).unwrap().energy);
    }
    // Other buffers, same plan: the image scaled by 2 gives another energy.
    let image2: Vec<f32> = data.image.iter().map(|v| 2.0 * v).collect();
    let moved = DeviceBuffers { image: upload(b, &image2, U::STORAGE).into(), ..buffers.clone() };
    let mut encoder = b.device().create_command_encoder(&Default::default());
    plan.encode(&mut encoder, &moved).unwrap();
    let e = decode_energy(&read_back(b, encoder, &[&energy])[0]).unwrap();
    let input2 = Input::new(shape, Scores::Logits(&data.logits), &image2, None).unwrap();
    Tolerance::F32.energy("plan on moved buffers", e, reference(&input2, &Params::default()).unwrap().energy);
}

/// Inputs checked on the device come back as errors from `decode_energy`.
#[test]
fn device_side_input_errors() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(1, 2, 1, 8, 8).unwrap();
    let data = RandomInputs::<f32>::new(shape, 23);
    let run = |scores: &[f32], kind, image: &[f32], mask: Option<&[f32]>, params: Params| {
        let energy = empty(b, ENERGY_BYTES, U::STORAGE | U::COPY_SRC);
        let buffers = DeviceBuffers {
            scores: upload(b, scores, U::STORAGE).into(),
            image: upload(b, image, U::STORAGE).into(),
            mask: mask.map(|m| upload(b, m, U::STORAGE).into()),
            grad: Some(empty(b, 4 * shape.scores_len() as u64, U::STORAGE).into()),
            centroids: None,
            energy: BufferRange::from(&energy),
        };
        let plan = b.plan(shape, &params, buffers.io(kind)).unwrap();
        let mut encoder = b.device().create_command_encoder(&Default::default());
        plan.encode(&mut encoder, &buffers).unwrap();
        decode_energy(&read_back(b, encoder, &[&energy])[0])
    };
    let p = Params::default();
    let mut bad = data.logits.clone();
    bad[17] = f32::NAN;
    let e = run(&bad, ScoresKind::Logits, &data.image, None, p).unwrap_err();
    assert!(e.to_string().contains("scores contain NaN"), "{e}");
    let mut bad = data.probs.clone();
    bad[3] = -0.5;
    let e = run(&bad, ScoresKind::Probs, &data.image, None, p).unwrap_err();
    assert!(e.to_string().contains("negative"), "{e}");
    let mut bad = data.image.clone();
    bad[0] = f32::INFINITY;
    let e = run(&data.probs, ScoresKind::Probs, &bad, None, p).unwrap_err();
    assert!(e.to_string().contains("image contains NaN"), "{e}");
    let mut bad = data.mask.clone();
    bad[5] = 0.5;
    let e = run(&data.probs, ScoresKind::Probs, &data.image, Some(&bad), p).unwrap_err();
    assert!(e.to_string().contains("mask value"), "{e}");
    let zeros = vec![0.0f32; shape.mask_len()];
    let e =
        run(&data.probs, ScoresKind::Probs, &data.image, Some(&zeros), p.with_reduction(Reduction::Mean)).unwrap_err();
    assert!(matches!(e, msloss_wgpu::WgpuError::Core(msloss_core::Error::EmptyMask)), "{e}");
    // The sum over an empty mask is a valid zero.
    let e = run(&data.probs, ScoresKind::Probs, &data.image, Some(&zeros), p).unwrap();
    assert_eq!(e.total, 0.0);
    // A record of the wrong length.
    assert!(matches!(decode_energy(&[0u8; 12]), Err(msloss_wgpu::WgpuError::EnergyRecord { expected: 16, got: 12 })));
}
