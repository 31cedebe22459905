// loss_grad: one invocation per pixel (b, s), looping over its N classes; with the softmax's
// backward fused in, so that the gradient is written once. For logits the probabilities are
// recomputed from the logits (the pixel's and its neighbours' normalisers once each). Per class n:
//   the fidelity term   m·y·‖x_s − c_bn‖² (0 under FLAG_LOCAL: the local_* kernels add it)
//   the length term     over the forward differences that start at s
//   g_n = ∂E/∂y_bns     w·m·(‖x − c‖² − corr·⟨c, x − c⟩) plus the length (sub)gradient, times
//                       the reduction's scale, plus (under FLAG_LOCAL) the local fidelity's
//                       part, which local_grad left in the gradient buffer.
// When FLAG_GRAD is set it writes ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m) for logits, g_n for
// probabilities (a first pass over the classes writes g_n and sums Σ_m y_m·g_m, a second turns
// g_n into ∂E/∂z_n with the pixel's own y_n; a non-finite value sets its bit in the status word). The pixel's two energy terms
// are summed over the workgroup (tree.wgsl, in one call) into partials[g] (fidelity) and
// partials[loss_groups + g] (length).
// Loops: N − 1 for each of at most 13 normalisers, CACHED_CHANNELS, N·(C + SLOTS + 12) and N; the plan
// bounds N and N·(C+1) so that this stays within lavapipe's budget.

// Pipeline constants (msloss_shaders::LossGradSpec), so that each combination's pipeline holds
// only the code it runs: the length term's kind (LENGTH_L1, LENGTH_L2 or LENGTH_CHARBONNIER) and
// whether the depth axis has neighbours (D > 1).
override LENGTH_KIND: u32;
override VOLUME: bool;
// The first axis with neighbours: 0 (D) in a volume, else 1 (H).
override FIRST_AXIS: u32 = select(1u, 0u, VOLUME);

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> centroids: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read_write> status: array<atomic<u32>>;

// The pixels whose probabilities one pixel's terms read, by slot: 0 the pixel s, 1 + a its
// forward neighbour s + e_a along axis a (0: D, 1: H, 2: W), 4 + a its backward one s − e_a,
// 7 + 3·a + c (c ≠ a) the pixel s − e_a + e_c, which Charbonnier's r at s − e_a reads.
const SLOTS: u32 = 16u;

// The invocation's pixel: sample, flat index, and per slot its flat index, whether it exists,
// whether it is valid (exists, mask 1) and its softmax normaliser; the class's y per slot.
var<private> px_b: u32;
var<private> px_s: u32;
// The pixel's mask value, and its first CACHED_CHANNELS image values and class 0's centroid:
// read once for all N classes.
var<private> px_m: f32;
var<private> px_x: vec4<f32>;
var<private> px_c0: vec4<f32>;
var<private> at: array<u32, SLOTS>;
var<private> present: array<bool, SLOTS>;
var<private> valid: array<bool, SLOTS>;
var<private> norm: array<vec2<f32>, SLOTS>;
var<private> ys: array<f32, SLOTS>;

fn mask_at(b: u32, s: u32) -> f32 {
    if (dims.flags & FLAG_MASK) != 0u {
        return mask[b * dims.spatial + s];
    }
    return 1.0;
}

// Adds channel k's part to t = (‖x − c_n‖², ⟨c_b0 − c_n, 2x − c_n − c_b0⟩, ⟨c_n, x − c_n⟩), given
// the pixel's image value x_k, class n's centroid c_k and class 0's c0_k.
fn channel_terms(t: vec3<f32>, xk: f32, ck: f32, c0k: f32) -> vec3<f32> {
    let d = xk - ck;
    return t + vec3<f32>(d * d, (c0k - ck) * ((xk - ck) + (xk - c0k)), ck * d);
}

// Marks slot `slot` as pixel t (which exists) and computes its normaliser.
fn use_slot(slot: u32, t: u32) {
    at[slot] = t;
    present[slot] = true;
    valid[slot] = mask_at(px_b, t) == 1.0;
    norm[slot] = softmax_norm(px_b, t);
}

// The slots of pixel p = b·S + s. Loops: SLOTS, CACHED_CHANNELS, 3, 9, and N − 1 per normaliser.
fn set_pixel(p: u32) {
    let sp = dims.spatial;
    px_b = p / sp;
    px_s = p % sp;
    let ext = vec3<u32>(dims.depth, dims.height, dims.width);
    let st = vec3<u32>(dims.height * dims.width, dims.width, 1u);
    let q = vec3<u32>(px_s / (dims.height * dims.width), (px_s / dims.width) % dims.height, px_s % dims.width);
    for (var i = 0u; i < SLOTS; i++) {
        present[i] = false;
        valid[i] = false;
        at[i] = 0u;
        norm[i] = vec2<f32>(0.0, 1.0);
    }
    use_slot(0u, px_s);
    px_m = mask_at(px_b, px_s);
    for (var k = 0u; k < CACHED_CHANNELS; k++) {
        if k < dims.channels {
            px_x[k] = image[(px_b * dims.channels + k) * sp + px_s];
            px_c0[k] = centroids[px_b * dims.classes * dims.channels + k];
        }
    }
    for (var a = FIRST_AXIS; a < 3u; a++) {
        if q[a] + 1u < ext[a] {
            use_slot(1u + a, px_s + st[a]);
        }
        if q[a] > 0u {
            use_slot(4u + a, px_s - st[a]);
        }
    }
    if LENGTH_KIND == LENGTH_CHARBONNIER {
        for (var i = 0u; i < 9u; i++) {
            let a = i / 3u;
            let c = i % 3u;
            if c != a && a >= FIRST_AXIS && c >= FIRST_AXIS && q[a] > 0u && q[c] + 1u < ext[c] {
                use_slot(7u + i, px_s - st[a] + st[c]);
            }
        }
    }
}

// The difference y(slot t) − y(slot p) of the current class as (d, 1), or (0, 0) where the pair
// is missing (edge) or invalid (either pixel masked out).
fn diff(p: u32, t: u32) -> vec2<f32> {
    if !valid[p] || !valid[t] {
        return vec2<f32>(0.0, 0.0);
    }
    return vec2<f32>(ys[t] - ys[p], 1.0);
}

// d(length of one difference)/dd for L1 (sign, 0 at 0) and L2 (2d).
fn pair_slope(d: f32) -> f32 {
    if LENGTH_KIND == LENGTH_L1 {
        return sign(d);
    }
    return 2.0 * d;
}

// Class n of the current pixel: (g_n before the reduction's scale, fidelity term, length term, y_n).
fn class_terms(n: u32) -> vec4<f32> {
    let sp = dims.spatial;
    let b = px_b;
    let s = px_s;
    let bn = b * dims.classes + n;
    for (var i = 0u; i < SLOTS; i++) {
        ys[i] = 0.0;
        if present[i] {
            ys[i] = prob(bn * sp + at[i], norm[i]);
        }
    }
    let ms = px_m;
    let y = ys[0];
    // For logits, the softmax backward ignores a term common to every class of a pixel, so the
    // gradient uses ‖x − c_n‖² − ‖x − c_b0‖² = ⟨c_b0 − c_n, 2x − c_n − c_b0⟩, computed without
    // the cancellation that loses f32 digits when the centroids nearly coincide.
    var t = vec3<f32>(0.0);
    for (var k = 0u; k < CACHED_CHANNELS; k++) {
        if k < dims.channels {
            t = channel_terms(t, px_x[k], centroids[bn * dims.channels + k], px_c0[k]);
        }
    }
    let c0 = b * dims.classes * dims.channels;
    for (var k = CACHED_CHANNELS; k < dims.channels; k++) {
        let xk = image[(b * dims.channels + k) * sp + s];
        t = channel_terms(t, xk, centroids[bn * dims.channels + k], centroids[c0 + k]);
    }
    let dist2 = t.x;
    let rel2 = t.y;
    let dot = t.z;
    // The local fidelity is added by the local_* kernels: none of it here.
    let global = (dims.flags & FLAG_LOCAL) == 0u;
    let fid = select(0.0, ms * y * dist2, global);
    var len = 0.0;
    var gd = dist2;
    if (dims.flags & FLAG_LOGITS) != 0u {
        gd = rel2;
    }
    var g = select(0.0, dims.weight * ms * (gd - stats[bn] * dot), global);
    var own = 0.0;
    var back = 0.0;
    if LENGTH_KIND == LENGTH_CHARBONNIER {
        var sq = 0.0;
        var dsum = 0.0;
        for (var a = FIRST_AXIS; a < 3u; a++) {
            let d = diff(0u, 1u + a).x;
            sq += d * d;
            dsum += d;
        }
        let r = sqrt(sq + dims.delta * dims.delta);
        // r − δ without cancellation.
        len = sq / (r + dims.delta);
        own = dsum / r;
        for (var a = FIRST_AXIS; a < 3u; a++) {
            let dp = diff(4u + a, 0u);
            if dp.y != 0.0 {
                // Charbonnier's r at s − e_a: its forward differences along the three axes.
                var sqp = 0.0;
                for (var c = FIRST_AXIS; c < 3u; c++) {
                    var dc = dp.x;
                    if c != a {
                        dc = diff(4u + a, 7u + 3u * a + c).x;
                    }
                    sqp += dc * dc;
                }
                back += dp.x / sqrt(sqp + dims.delta * dims.delta);
            }
        }
    } else {
        for (var a = FIRST_AXIS; a < 3u; a++) {
            let d = diff(0u, 1u + a);
            if d.y != 0.0 {
                if LENGTH_KIND == LENGTH_L1 {
                    len += abs(d.x);
                } else {
                    len += d.x * d.x;
                }
                own += pair_slope(d.x);
            }
            let dp = diff(4u + a, 0u);
            if dp.y != 0.0 {
                back += pair_slope(dp.x);
            }
        }
    }
    g += dims.lambda * (back - own);
    return vec4<f32>(g, fid, len, y);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g_index = linear_group(wid, nwg);
    let p = g_index * WG + lid;
    var fid = 0.0;
    var len = 0.0;
    if g_index < dims.loss_groups && p < dims.batch * dims.spatial {
        set_pixel(p);
        let grad_on = (dims.flags & FLAG_GRAD) != 0u;
        let local = (dims.flags & FLAG_LOCAL) != 0u;
        let logits = (dims.flags & FLAG_LOGITS) != 0u;
        let scale = stats[dims.batch * dims.classes];
        let base = px_b * dims.classes * dims.spatial + px_s;
        // First pass: the energy terms and Σ_n y_n·g_n. Each g_n (scaled, with the local part) is
        // left in the gradient buffer: final for probabilities, read back by the second pass for
        // logits, which so recomputes only the pixel's own y_n, not its neighbours'.
        var yg = 0.0;
        var finite = true;
        for (var n = 0u; n < dims.classes; n++) {
            let t = class_terms(n);
            fid += t.y;
            len += t.z;
            if grad_on {
                let i = base + n * dims.spatial;
                var v = t.x * scale;
                if local {
                    v += grad[i];
                }
                yg += t.w * v;
                grad[i] = v;
                finite = finite && is_finite_f32(v);
            }
        }
        // Second pass (logits): ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m), written over g_n.
        if grad_on && logits {
            for (var n = 0u; n < dims.classes; n++) {
                let i = base + n * dims.spatial;
                let v = prob(i, norm[0]) * (grad[i] - yg);
                grad[i] = v;
                finite = finite && is_finite_f32(v);
            }
        }
        if !finite {
            atomicOr(&status[0], STATUS_GRADIENT_NONFINITE);
        }
    }
    // Row 0 the fidelity, row 1 the length: invocation 0 gets the first's sum, 1 the second's.
    put_row(lid, 0u, fid);
    put_row(lid, 1u, len);
    let total = workgroup_sums(lid);
    if lid < 2u && g_index < dims.loss_groups {
        partials[lid * dims.loss_groups + g_index] = total;
    }
}
