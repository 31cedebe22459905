// reduce: one level of a multi-level row sum. Row r of `src` (len_in elements from
// src_offset + r·len_in) is summed by tiles of TILE elements into row r of `dst`
// (len_out = ceil(len_in / TILE) elements from dst_offset + r·len_out). Levels repeat until
// len_out = 1; the order of every addition is fixed, so results are the same bits run to run.

struct ReduceParams {
    rows: u32,
    len_in: u32,
    len_out: u32,
    src_offset: u32,
    dst_offset: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: ReduceParams;
@group(0) @binding(1) var<storage, read_write> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_group(wid, nwg);
    let r = g / params.len_out;
    let t = g % params.len_out;
    let live = r < params.rows;
    let row = params.src_offset + r * params.len_in;
    var v: array<f32, PER_INVOCATION>;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let i = t * TILE + j * WG + lid;
        v[j] = 0.0;
        if live && i < params.len_in {
            v[j] = src[row + i];
        }
    }
    put_row(lid, 0u, pairwise8(v));
    let total = workgroup_sums(lid);
    if live && lid == 0u {
        dst[params.dst_offset + r * params.len_out + t] = total;
    }
}
