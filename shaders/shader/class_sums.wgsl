// class_sums: the first level of the centroid reduction. Row r of the output is one sum over
// the pixels of a sample:
//   r < B·N·(C+1):  (b, n, k) with k = 0 giving A_bn = Σ_s m·y and k >= 1 the moment
//                   Σ_s m·y·x_{k-1};
//   r >= B·N·(C+1): the valid-pixel count Σ_s m of sample r − B·N·(C+1).
// Workgroup (r, t) sums the TILE pixels of tile t into partials[r·tiles + t]: PER_INVOCATION
// loads per invocation (strided by WG) added pairwise, then a fixed-order tree. No loop depends
// on the image size.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

var<workgroup> shared_sum: array<f32, WG>;

fn mask_at(b: u32, s: u32) -> f32 {
    if (dims.flags & FLAG_MASK) != 0u {
        return mask[b * dims.spatial + s];
    }
    return 1.0;
}

fn row_value(r: u32, s: u32) -> f32 {
    let per_sample = dims.classes * (dims.channels + 1u);
    let class_rows = dims.batch * per_sample;
    if r >= class_rows {
        return mask_at(r - class_rows, s);
    }
    let b = r / per_sample;
    let rem = r % per_sample;
    let n = rem / (dims.channels + 1u);
    let k = rem % (dims.channels + 1u);
    var v = mask_at(b, s) * y[(b * dims.classes + n) * dims.spatial + s];
    if k > 0u {
        v *= image[(b * dims.channels + k - 1u) * dims.spatial + s];
    }
    return v;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_group(wid, nwg);
    let r = g / dims.tiles;
    let t = g % dims.tiles;
    let live = r < dims.rows;
    var v: array<f32, PER_INVOCATION>;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let s = t * TILE + j * WG + lid;
        v[j] = 0.0;
        if live && s < dims.spatial {
            v[j] = row_value(r, s);
        }
    }
    shared_sum[lid] = pairwise8(v);
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            shared_sum[lid] += shared_sum[lid + stride];
        }
        workgroupBarrier();
    }
    if live && lid == 0u {
        partials[r * dims.tiles + t] = shared_sum[0];
    }
}
