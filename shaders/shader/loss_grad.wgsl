// loss_grad: one invocation per score element (b, n, s). Computes
//   the fidelity term   m·y·‖x_s − c_bn‖²
//   the length term     over the forward differences that start at s
//   ∂E/∂y_bns           w·m·(‖x − c‖² − corr·⟨c, x − c⟩) plus the length (sub)gradient, times
//                       the reduction's scale,
// writes the gradient (when FLAG_GRAD is set) and sums the two energy terms of the workgroup by
// a fixed-order tree into partials[g] (fidelity) and partials[loss_groups + g] (length).
// Loops: C, plus a constant number over the three axes.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> image: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> centroids: array<f32>;
@group(0) @binding(5) var<storage, read> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;

var<workgroup> shared_fid: array<f32, WG>;
var<workgroup> shared_len: array<f32, WG>;

fn mask_at(b: u32, s: u32) -> f32 {
    if (dims.flags & FLAG_MASK) != 0u {
        return mask[b * dims.spatial + s];
    }
    return 1.0;
}

// Extent, stride and coordinate of pixel s along axis a (0: D, 1: H, 2: W).
fn axis_extent(a: u32) -> u32 {
    switch a {
        case 0u: { return dims.depth; }
        case 1u: { return dims.height; }
        default: { return dims.width; }
    }
}

fn axis_stride(a: u32) -> u32 {
    switch a {
        case 0u: { return dims.height * dims.width; }
        case 1u: { return dims.width; }
        default: { return 1u; }
    }
}

fn axis_coord(s: u32, a: u32) -> u32 {
    switch a {
        case 0u: { return s / (dims.height * dims.width); }
        case 1u: { return (s / dims.width) % dims.height; }
        default: { return s % dims.width; }
    }
}

// The forward difference y(s + e_a) − y(s) of the class map starting at `base`, as (d, 1), or
// (0, 0) where the pair is missing (edge) or invalid (either pixel masked out).
fn forward_diff(b: u32, base: u32, s: u32, a: u32) -> vec2<f32> {
    if axis_coord(s, a) + 1u >= axis_extent(a) {
        return vec2<f32>(0.0, 0.0);
    }
    let t = s + axis_stride(a);
    if mask_at(b, s) != 1.0 || mask_at(b, t) != 1.0 {
        return vec2<f32>(0.0, 0.0);
    }
    return vec2<f32>(y[base + t] - y[base + s], 1.0);
}

// d(length of one difference)/dd for L1 (sign, 0 at 0) and L2 (2d).
fn pair_slope(d: f32) -> f32 {
    if dims.length_kind == LENGTH_L1 {
        return sign(d);
    }
    return 2.0 * d;
}

// Charbonnier's r(p) = sqrt(Σ_a d_a(p)² + δ²).
fn charbonnier_r(b: u32, base: u32, p: u32) -> f32 {
    var sq = 0.0;
    for (var a = 0u; a < 3u; a++) {
        let d = forward_diff(b, base, p, a).x;
        sq += d * d;
    }
    return sqrt(sq + dims.delta * dims.delta);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g_index = linear_group(wid, nwg);
    let i = g_index * WG + lid;
    let sp = dims.spatial;
    let live = g_index < dims.loss_groups && i < dims.batch * dims.classes * sp;
    var fid = 0.0;
    var len = 0.0;
    if live {
        let s = i % sp;
        let bn = i / sp;
        let b = bn / dims.classes;
        let base = bn * sp;
        let ms = mask_at(b, s);
        let ys = y[i];
        var dist2 = 0.0;
        var dot = 0.0;
        for (var k = 0u; k < dims.channels; k++) {
            let ck = centroids[bn * dims.channels + k];
            let d = image[(b * dims.channels + k) * sp + s] - ck;
            dist2 += d * d;
            dot += ck * d;
        }
        fid = ms * ys * dist2;
        var g = dims.weight * ms * (dist2 - stats[bn] * dot);
        var own = 0.0;
        var back = 0.0;
        if dims.length_kind == LENGTH_CHARBONNIER {
            var sq = 0.0;
            var dsum = 0.0;
            for (var a = 0u; a < 3u; a++) {
                let d = forward_diff(b, base, s, a).x;
                sq += d * d;
                dsum += d;
            }
            let r = sqrt(sq + dims.delta * dims.delta);
            // r − δ without cancellation.
            len = sq / (r + dims.delta);
            own = dsum / r;
            for (var a = 0u; a < 3u; a++) {
                if axis_coord(s, a) > 0u {
                    let p = s - axis_stride(a);
                    let dp = forward_diff(b, base, p, a);
                    if dp.y != 0.0 {
                        back += dp.x / charbonnier_r(b, base, p);
                    }
                }
            }
        } else {
            for (var a = 0u; a < 3u; a++) {
                let d = forward_diff(b, base, s, a);
                if d.y != 0.0 {
                    if dims.length_kind == LENGTH_L1 {
                        len += abs(d.x);
                    } else {
                        len += d.x * d.x;
                    }
                    own += pair_slope(d.x);
                }
                if axis_coord(s, a) > 0u {
                    let dp = forward_diff(b, base, s - axis_stride(a), a);
                    if dp.y != 0.0 {
                        back += pair_slope(dp.x);
                    }
                }
            }
        }
        g += dims.lambda * (back - own);
        if (dims.flags & FLAG_GRAD) != 0u {
            grad[i] = g * stats[dims.batch * dims.classes];
        }
    }
    shared_fid[lid] = fid;
    shared_len[lid] = len;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            shared_fid[lid] += shared_fid[lid + stride];
            shared_len[lid] += shared_len[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u && g_index < dims.loss_groups {
        partials[g_index] = shared_fid[0];
        partials[dims.loss_groups + g_index] = shared_len[0];
    }
}
