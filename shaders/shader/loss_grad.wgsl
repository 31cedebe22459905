// loss_grad: PER_INVOCATION score elements (b, n, s) per invocation, strided by WG within a
// workgroup's TILE. Computes for each
//   the fidelity term   m·y·‖x_s − c_bn‖² (0 under FLAG_LOCAL: the local_* kernels add it)
//   the length term     over the forward differences that start at s
//   ∂E/∂y_bns           w·m·(‖x − c‖² − corr·⟨c, x − c⟩) plus the length (sub)gradient, times
//                       the reduction's scale,
// writes the gradient (when FLAG_GRAD is set; a non-finite value sets its bit in the status word) and sums the two energy terms of the workgroup by
// a fixed-order tree into partials[g] (fidelity) and partials[loss_groups + g] (length).
// Loops: PER_INVOCATION × (C plus a constant number over the three axes).

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> centroids: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read_write> status: array<atomic<u32>>;

var<workgroup> shared_fid: array<f32, WG>;
var<workgroup> shared_len: array<f32, WG>;

fn mask_at(b: u32, s: u32) -> f32 {
    if (dims.flags & FLAG_MASK) != 0u {
        return mask[b * dims.spatial + s];
    }
    return 1.0;
}

// Extents, strides and coordinates along the axes (0: D, 1: H, 2: W); coordinates are
// computed once per invocation and stepped, not re-derived by division per neighbour.
fn extents() -> vec3<u32> {
    return vec3<u32>(dims.depth, dims.height, dims.width);
}

fn strides() -> vec3<u32> {
    return vec3<u32>(dims.height * dims.width, dims.width, 1u);
}

fn coords_of(s: u32) -> vec3<u32> {
    return vec3<u32>(s / (dims.height * dims.width), (s / dims.width) % dims.height, s % dims.width);
}

// The forward difference y(s + e_a) − y(s) of the class map starting at `base` (pixel s at
// coordinates q), as (d, 1), or (0, 0) where the pair is missing (edge) or invalid (either
// pixel masked out).
fn forward_diff(b: u32, base: u32, s: u32, q: vec3<u32>, a: u32) -> vec2<f32> {
    if q[a] + 1u >= extents()[a] {
        return vec2<f32>(0.0, 0.0);
    }
    let t = s + strides()[a];
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
fn charbonnier_r(b: u32, base: u32, p: u32, q: vec3<u32>) -> f32 {
    var sq = 0.0;
    for (var a = 0u; a < 3u; a++) {
        let d = forward_diff(b, base, p, q, a).x;
        sq += d * d;
    }
    return sqrt(sq + dims.delta * dims.delta);
}

// One score element i = (b·N + n)·S + s: writes its gradient (when FLAG_GRAD is set) and
// returns its (fidelity, length) energy terms.
fn element(i: u32) -> vec2<f32> {
    let sp = dims.spatial;
    let s = i % sp;
    let bn = i / sp;
    let b = bn / dims.classes;
    let base = bn * sp;
    let ms = mask_at(b, s);
    let q = coords_of(s);
    let ys = y[i];
    // For logits, the softmax backward ignores a term common to every class of a pixel, so the
    // gradient uses ‖x − c_n‖² − ‖x − c_b0‖² = ⟨c_b0 − c_n, 2x − c_n − c_b0⟩, computed without
    // the cancellation that loses f32 digits when the centroids nearly coincide.
    let c0 = b * dims.classes * dims.channels;
    var dist2 = 0.0;
    var rel2 = 0.0;
    var dot = 0.0;
    for (var k = 0u; k < dims.channels; k++) {
        let ck = centroids[bn * dims.channels + k];
        let c0k = centroids[c0 + k];
        let xk = image[(b * dims.channels + k) * sp + s];
        let d = xk - ck;
        dist2 += d * d;
        rel2 += (c0k - ck) * ((xk - ck) + (xk - c0k));
        dot += ck * d;
    }
    // The local fidelity is added by the local_* kernels: none of it here.
    let global = (dims.flags & FLAG_LOCAL) == 0u;
    let fid = select(0.0, ms * ys * dist2, global);
    var len = 0.0;
    var gd = dist2;
    if (dims.flags & FLAG_LOGITS) != 0u {
        gd = rel2;
    }
    var g = select(0.0, dims.weight * ms * (gd - stats[bn] * dot), global);
    var own = 0.0;
    var back = 0.0;
    if dims.length_kind == LENGTH_CHARBONNIER {
        var sq = 0.0;
        var dsum = 0.0;
        for (var a = 0u; a < 3u; a++) {
            let d = forward_diff(b, base, s, q, a).x;
            sq += d * d;
            dsum += d;
        }
        let r = sqrt(sq + dims.delta * dims.delta);
        // r − δ without cancellation.
        len = sq / (r + dims.delta);
        own = dsum / r;
        for (var a = 0u; a < 3u; a++) {
            if q[a] > 0u {
                let p = s - strides()[a];
                var qp = q;
                qp[a] -= 1u;
                let dp = forward_diff(b, base, p, qp, a);
                if dp.y != 0.0 {
                    back += dp.x / charbonnier_r(b, base, p, qp);
                }
            }
        }
    } else {
        for (var a = 0u; a < 3u; a++) {
            let d = forward_diff(b, base, s, q, a);
            if d.y != 0.0 {
                if dims.length_kind == LENGTH_L1 {
                    len += abs(d.x);
                } else {
                    len += d.x * d.x;
                }
                own += pair_slope(d.x);
            }
            if q[a] > 0u {
                var qp = q;
                qp[a] -= 1u;
                let dp = forward_diff(b, base, s - strides()[a], qp, a);
                if dp.y != 0.0 {
                    back += pair_slope(dp.x);
                }
            }
        }
    }
    g += dims.lambda * (back - own);
    if (dims.flags & FLAG_GRAD) != 0u {
        let v = g * stats[dims.batch * dims.classes];
        grad[i] = v;
        if !is_finite_f32(v) {
            atomicOr(&status[0], STATUS_GRADIENT_NONFINITE);
        }
    }
    return vec2<f32>(fid, len);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g_index = linear_group(wid, nwg);
    let n_elems = dims.batch * dims.classes * dims.spatial;
    var fid: array<f32, PER_INVOCATION>;
    var len: array<f32, PER_INVOCATION>;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let i = g_index * TILE + j * WG + lid;
        fid[j] = 0.0;
        len[j] = 0.0;
        if g_index < dims.loss_groups && i < n_elems {
            let e = element(i);
            fid[j] = e.x;
            len[j] = e.y;
        }
    }
    shared_fid[lid] = pairwise8(fid);
    shared_len[lid] = pairwise8(len);
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
