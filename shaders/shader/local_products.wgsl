// local_products: the local fidelity's first maps of sample b = sample_params.index, one
// invocation per (n, s). Plane n·(C+1) of `planes` (one sample's scratch) gets a = m·y, plane
// n·(C+1) + 1 + k gets m·y·x'_k, with the image
// centred on x̄_bk (local_centre): the window sums of these stay small, so f32 does not
// cancel. The convolutions (local_conv) then turn them into a = K*(m·y) and b' = K*(m·y·x').
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
    // i = n·S + s within the sample; bi = b·N·S + i in the batch's [B, N, S] tensors. For logits
    // y is recomputed from the pixel's logits (no probability buffer).
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
    let a = m * prob(bi, softmax_norm(b, s));
    let first = (i / sp) * (dims.channels + 1u) * sp + s;
    planes[first] = a;
    for (var k = 0u; k < dims.channels; k++) {
        let x = image[(b * dims.channels + k) * sp + s] - local_centre(b, k);
        planes[first + (1u + k) * sp] = a * x;
    }
}
