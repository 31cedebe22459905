//! The `Backend` implementation on host slices: upload, dispatch, read back.

use std::sync::mpsc;

use msloss_core::{Backend, Energy, Error, Input, Outputs, Params, Scores, Shape, check_request};

use crate::buffers::{BufferRange, DeviceBuffers, ENERGY_BYTES, Io, ScoresKind};
use crate::context::scoped;
use crate::plan::{Plan, decode_energy};
use crate::{WgpuBackend, WgpuError};

/// Reusable device memory of the host path: the upload buffers, the read-back buffer and the
/// plan of the last shape seen (rebuilt when the shape, the kind of scores, the presence of a
/// mask or of a gradient changes).
#[derive(Debug, Default)]
pub struct WgpuWorkspace {
    host: Option<Box<HostPlan>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostKey {
    shape: Shape,
    kind: ScoresKind,
    mask: bool,
    grad: bool,
}

#[derive(Debug)]
struct HostPlan {
    key: HostKey,
    plan: Plan,
    buffers: DeviceBuffers,
    readback: wgpu::Buffer,
}

impl HostPlan {
    fn new(backend: &WgpuBackend, key: HostKey, params: &Params) -> Result<Self, WgpuError> {
        let device = backend.device();
        let shape = key.shape;
        let f = 4u64;
        let scores_bytes = shape.scores_len() as u64 * f;
        let (buffers, readback) = scoped(device, "allocating upload buffers", || {
            let buf = |label: &str, bytes: u64, usage: wgpu::BufferUsages| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes.max(4),
                    usage,
                    mapped_at_creation: false,
                })
            };
            let input = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
            let output = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
            let range = |label: &str, bytes: u64, usage| BufferRange::whole(buf(label, bytes, usage));
            let buffers = DeviceBuffers {
                scores: range("msloss scores", scores_bytes, input),
                image: range("msloss image", shape.image_len() as u64 * f, input),
                mask: key.mask.then(|| range("msloss mask", shape.mask_len() as u64 * f, input)),
                grad: key.grad.then(|| range("msloss grad", scores_bytes, output)),
                centroids: Some(range("msloss centroids", shape.centroids_len() as u64 * f, output)),
                energy: range("msloss energy", ENERGY_BYTES, output),
            };
            let rb_bytes = ENERGY_BYTES + shape.centroids_len() as u64 * f + if key.grad { scores_bytes } else { 0 };
            let readback =
                buf("msloss readback", rb_bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            (buffers, readback)
        })?;
        let plan = backend.plan(shape, params, Io { kind: key.kind, mask: key.mask, grad: key.grad })?;
        Ok(Self { key, plan, buffers, readback })
    }
}

impl Backend<f32> for WgpuBackend {
    type Workspace = WgpuWorkspace;
    type Error = WgpuError;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn workspace(&self) -> WgpuWorkspace {
        WgpuWorkspace::default()
    }

    fn evaluate(
        &self,
        input: &Input<'_, f32>,
        params: &Params,
        out: Outputs<'_, f32>,
        ws: &mut WgpuWorkspace,
    ) -> Result<Energy<f32>, WgpuError> {
        // The host path checks values on the host, where it can name the offending index.
        let valid = check_request(input, params, &out)?;
        self.check_health()?;
        let shape = input.shape();
        let per_call = self.max_batch(shape, params)?;
        if per_call < shape.batch() {
            return self.evaluate_split(input, params, out, ws, per_call, valid);
        }
        self.evaluate_whole(input, params, out, ws)
    }
}

impl WgpuBackend {
    /// A batch too large for one dispatch sequence, `per_call` samples at a time: each chunk
    /// with the sum reduction, the totals added in `f64`, then the mean's `1/V` applied on the
    /// host (to the gradient too).
    fn evaluate_split(
        &self,
        input: &Input<'_, f32>,
        params: &Params,
        mut out: Outputs<'_, f32>,
        ws: &mut WgpuWorkspace,
        per_call: usize,
        valid: usize,
    ) -> Result<Energy<f32>, WgpuError> {
        let shape = input.shape();
        let (n, c, sp) = (shape.classes(), shape.channels(), shape.spatial());
        let sum_params = Params { reduction: msloss_core::Reduction::Sum, ..*params };
        let (mut fidelity, mut length) = (0.0f64, 0.0f64);
        let mut b0 = 0;
        while b0 < shape.batch() {
            let nb = per_call.min(shape.batch() - b0);
            let sub = shape.with_batch(nb)?;
            let cut = |per: usize| b0 * per..(b0 + nb) * per;
            let scores = input.scores().data();
            let sc = &scores[cut(n * sp)];
            let sc = if input.scores().is_logits() { Scores::Logits(sc) } else { Scores::Probs(sc) };
            let image = &input.image()[cut(c * sp)];
            let mask = input.mask().map(|m| &m[cut(sp)]);
            let sub_input = Input::new(sub, sc, image, mask)?;
            let grad = out.grad.as_deref_mut().map(|g| &mut g[cut(n * sp)]);
            let centroids = out.centroids.as_deref_mut().map(|g| &mut g[cut(n * c)]);
            let e = self.evaluate_whole(&sub_input, &sum_params, Outputs { grad, centroids }, ws)?;
            fidelity += f64::from(e.fidelity);
            length += f64::from(e.length);
            b0 += nb;
        }
        let scale = match params.reduction {
            msloss_core::Reduction::Sum => 1.0,
            msloss_core::Reduction::Mean => 1.0 / valid as f64,
        };
        if let Some(g) = out.grad.as_deref_mut() {
            let s = scale as f32;
            g.iter_mut().for_each(|v| *v *= s);
        }
        let (fidelity, length) = (fidelity * scale, length * scale);
        let e = Energy { fidelity: fidelity as f32, length: length as f32, total: (fidelity + length) as f32 };
        if !e.total.is_finite() {
            return Err(Error::NonFiniteResult { what: "energy", value: fidelity + length }.into());
        }
        Ok(e)
    }

    /// One dispatch sequence over the whole input (already checked).
    fn evaluate_whole(
        &self,
        input: &Input<'_, f32>,
        params: &Params,
        mut out: Outputs<'_, f32>,
        ws: &mut WgpuWorkspace,
    ) -> Result<Energy<f32>, WgpuError> {
        let shape = input.shape();
        let kind = if input.scores().is_logits() { ScoresKind::Logits } else { ScoresKind::Probs };
        let key = HostKey { shape, kind, mask: input.mask().is_some(), grad: out.grad.is_some() };
        let host = match &mut ws.host {
            Some(h) if h.key == key => {
                h.plan.set_params(params)?;
                h
            }
            slot => slot.insert(Box::new(HostPlan::new(self, key, params)?)),
        };
        let bufs = &host.buffers;
        let device = self.device();
        let queue = self.queue();
        let grad_bytes = if key.grad { shape.scores_len() as u64 * 4 } else { 0 };
        let cent_bytes = shape.centroids_len() as u64 * 4;
        let rb_len = ENERGY_BYTES + cent_bytes + grad_bytes;
        let (tx, rx) = mpsc::channel();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("msloss") });
        host.plan.encode(&mut encoder, bufs)?;
        scoped(device, "running an evaluation", || {
            queue.write_buffer(&bufs.scores.buffer, 0, bytemuck::cast_slice(input.scores().data()));
            queue.write_buffer(&bufs.image.buffer, 0, bytemuck::cast_slice(input.image()));
            if let (Some(m), Some(data)) = (&bufs.mask, input.mask()) {
                queue.write_buffer(&m.buffer, 0, bytemuck::cast_slice(data));
            }
            encoder.copy_buffer_to_buffer(&bufs.energy.buffer, 0, &host.readback, 0, ENERGY_BYTES);
            if let Some(c) = &bufs.centroids {
                encoder.copy_buffer_to_buffer(&c.buffer, 0, &host.readback, ENERGY_BYTES, cent_bytes);
            }
            if let Some(g) = &bufs.grad {
                encoder.copy_buffer_to_buffer(&g.buffer, 0, &host.readback, ENERGY_BYTES + cent_bytes, grad_bytes);
            }
            queue.submit([encoder.finish()]);
            host.readback.map_async(wgpu::MapMode::Read, 0..rb_len, move |r| {
                // The receiver outlives the poll below; a send error only means it gave up.
                let _ = tx.send(r);
            });
        })?;
        let polled = self.device().poll(wgpu::PollType::wait_indefinitely());
        self.check_health()?;
        polled.map_err(|e| WgpuError::Poll(e.to_string()))?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(WgpuError::ReadBack(e.to_string())),
            Err(_) => return Err(WgpuError::ReadBack("the map callback never ran".into())),
        }
        let result = {
            let view = host.readback.get_mapped_range(0..rb_len).map_err(|e| WgpuError::ReadBack(e.to_string()))?;
            let bytes: &[u8] = &view;
            let energy = decode_energy(&bytes[..ENERGY_BYTES as usize]);
            let cent_end = (ENERGY_BYTES + cent_bytes) as usize;
            if let Some(c) = out.centroids.as_deref_mut() {
                c.copy_from_slice(bytemuck::cast_slice(&bytes[ENERGY_BYTES as usize..cent_end]));
            }
            if let Some(g) = out.grad.as_deref_mut() {
                g.copy_from_slice(bytemuck::cast_slice(&bytes[cent_end..]));
            }
            energy
        };
        host.readback.unmap();
        result
    }
}

/// `f64` is not computed on the GPU: the kernels are `f32` (WGSL's `f64` is not portable), and
/// rounding an `f64` request silently would break the promise that a backend computes in the
/// type it is asked for. Every call returns [`Error::Unsupported`]; convert to `f32` yourself
/// (or use the CPU backend) for `f64` data.
impl Backend<f64> for WgpuBackend {
    type Workspace = WgpuWorkspace;
    type Error = WgpuError;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn workspace(&self) -> WgpuWorkspace {
        WgpuWorkspace::default()
    }

    fn evaluate(
        &self,
        _input: &Input<'_, f64>,
        _params: &Params,
        _out: Outputs<'_, f64>,
        _ws: &mut WgpuWorkspace,
    ) -> Result<Energy<f64>, WgpuError> {
        Err(Error::Unsupported { backend: "wgpu", what: "f64 (the GPU kernels compute in f32)" }.into())
    }
}
