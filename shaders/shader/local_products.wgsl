// local_products: the local fidelity's first maps, one invocation per (b, n, s). Plane
// bn·(C+1) of `planes` gets a = m·y, plane bn·(C+1) + 1 + k gets m·y·x'_k, with the image
// centred on x̄_bk (local_centre): the window sums of these stay small, so f32 does not
// cancel. The convolutions (local_conv) then turn them into a = K*(m·y) and b' = K*(m·y·x').
// Loops: N·C (the centre) and C.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;
@group(0) @binding(5) var<storage, read_write> planes: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_group(wid, nwg) * WG + lid;
    let sp = dims.spatial;
    if i >= dims.batch * dims.classes * sp {
        return;
    }
    let s = i % sp;
    let bn = i / sp;
    let b = bn / dims.classes;
    var m = 1.0;
    if (dims.flags & FLAG_MASK) != 0u {
        m = mask[b * sp + s];
    }
    let a = m * y[i];
    let first = bn * (dims.channels + 1u) * sp + s;
    planes[first] = a;
    for (var k = 0u; k < dims.channels; k++) {
        let x = image[(b * dims.channels + k) * sp + s] - local_centre(b, k);
        planes[first + (1u + k) * sp] = a * x;
    }
}
