// local_products: the local fidelity's first maps of sample b = sample_params.index, one
// invocation per (n, s). Plane n·(C+1) of `planes` (one sample's scratch) gets a = m·y, plane
// n·(C+1) + 1 + k gets m·y·x'_k, with the image centred on x̄_bk (local_centre): the window sums
// of these stay small, so f32 does not cancel. The convolutions (local_conv) then turn them into
// a = K*(m·y) and b' = K*(m·y·x').
// Loops: N·C (the centre), 2·N (the softmax of logits) and C.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;
@group(0) @binding(5) var<storage, read_write> planes: array<f32>;
@group(0) @binding(6) var<uniform> sample_params: SampleParams;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // For logits y is recomputed from the pixel's logits (no probability buffer).
    let i = linear_group(wid, nwg) * WG + lid;
    if i >= dims.classes * dims.spatial {
        return;
    }
    let e = local_element(i);
    let a = e.m * prob(e.bi, softmax_norm(e.b, e.s));
    planes[e.first] = a;
    for (var k = 0u; k < dims.channels; k++) {
        planes[e.first + (1u + k) * dims.spatial] = a * centred(e, k);
    }
}
