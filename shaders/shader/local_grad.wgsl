// local_grad: the local fidelity's gradient w·scale·∂F/∂y of sample b = sample_params.index,
// one invocation per (n, s), written into the gradient buffer before loss_grad, which adds the
// length's gradient and applies the softmax backward (for logits) in one pass:
//   ∂F/∂y = m·(S(s)·‖x'‖² − ⟨x', K*U⟩ + K*W)
// with K*W in plane n·(C+1) of the sample's scratch and K*U_k in the C planes after it (the
// second convolutions of local_terms' output). A zero weight writes 0 (the term is off, not
// 0·inf); a non-finite value sets its status bit.
// Loops: N·C (the centre) and C.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> image: array<f32>;
@group(0) @binding(2) var<storage, read_write> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;
@group(0) @binding(4) var<storage, read_write> taps: array<f32>;
@group(0) @binding(5) var<storage, read_write> planes: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad: array<f32>;
@group(0) @binding(8) var<storage, read_write> status: array<atomic<u32>>;
@group(0) @binding(9) var<uniform> sample_params: SampleParams;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // i = n·S + s within the sample; bi = b·N·S + i in the batch's [B, N, S] tensors.
    let i = linear_group(wid, nwg) * WG + lid;
    let sp = dims.spatial;
    let len = dims.classes * sp;
    if i >= len {
        return;
    }
    let s = i % sp;
    let b = sample_params.index;
    let bi = b * len + i;
    var m = 1.0;
    if (dims.flags & FLAG_MASK) != 0u {
        m = mask[b * sp + s];
    }
    let first = (i / sp) * (dims.channels + 1u) * sp + s;
    var xx = 0.0;
    var xu = 0.0;
    for (var k = 0u; k < dims.channels; k++) {
        let x = image[(b * dims.channels + k) * sp + s] - local_centre(b, k);
        xx += x * x;
        xu += x * planes[first + (1u + k) * sp];
    }
    let g = m * (coverage(s) * xx - xu + planes[first]);
    let v = select(dims.weight * stats[dims.batch * dims.classes] * g, 0.0, dims.weight == 0.0);
    grad[bi] = v;
    if !is_finite_f32(v) {
        atomicOr(&status[0], STATUS_GRADIENT_NONFINITE);
    }
}
