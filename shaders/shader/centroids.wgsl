// centroids: one invocation per (b, n, k). c_bnk = moment / (A_bn + ε_c) from the reduced
// class sums; the k = 0 invocation also stores the gradient's ε-correction
// 2·ε_c / (A_bn + ε_c) in stats[b·N + n], and invocation 0 stores the reduction's scale
// (1, or 1/V under the mean; 0 when V = 0, which finalize reports) in stats[B·N].

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> totals: array<f32>;
@group(0) @binding(3) var<storage, read_write> centroids: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_group(wid, nwg) * WG + lid;
    let n_bn = dims.batch * dims.classes;
    if i == 0u {
        var scale = 1.0;
        if (dims.flags & FLAG_MEAN) != 0u {
            let valid = totals[0];
            scale = select(0.0, 1.0 / valid, valid > 0.0);
        }
        stats[n_bn] = scale;
    }
    if i >= n_bn * dims.channels {
        return;
    }
    let bn = i / dims.channels;
    let k = i % dims.channels;
    let row = bn * (dims.channels + 1u);
    let area = sums[row];
    centroids[i] = sums[row + 1u + k] / (area + dims.eps);
    if k == 0u {
        stats[bn] = 2.0 * dims.eps / (area + dims.eps);
    }
}
