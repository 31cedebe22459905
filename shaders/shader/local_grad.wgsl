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
    let i = linear_group(wid, nwg) * WG + lid;
    if i >= dims.classes * dims.spatial {
        return;
    }
    let e = local_element(i);
    var xx = 0.0;
    var xu = 0.0;
    for (var k = 0u; k < dims.channels; k++) {
        let x = centred(e, k);
        xx += x * x;
        xu += x * planes[e.first + (1u + k) * dims.spatial];
    }
    let g = e.m * (coverage(e.s) * xx - xu + planes[e.first]);
    let v = select(dims.weight * stats[dims.batch * dims.classes] * g, 0.0, dims.weight == 0.0);
    grad[e.bi] = v;
    if !is_finite_f32(v) {
        atomicOr(&status[0], STATUS_GRADIENT_NONFINITE);
    }
}
