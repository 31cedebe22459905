// class_sums: the input checks and the first level of the centroid reduction, reading the
// scores themselves (for logits, each pixel's softmax is recomputed here: no probability buffer).
// Workgroup g = b·tiles + t owns the TILE pixels of tile t of sample b, PER_INVOCATION pixels
// per invocation (strided by WG). Each invocation checks its pixels (finite scores and image,
// probabilities >= 0, image and probabilities within msloss-core's limits for f32, mask in
// {0, 1}) into the status word and computes their softmax normalisers once; then, row by row,
//   row (b, n, k), k = 0:   A_bn = Σ_s m·y,   k >= 1: the moment Σ_s m·y·x_{k-1},
//   row B·N·(C+1) + b:      the valid-pixel count Σ_s m,
// the tile's sum (its pixels' values added pairwise, then tree.wgsl's workgroup sums, eight rows
// at a time) goes into partials[row·tiles + t]. Loops: PER_INVOCATION·(3·N + C) +
// N·(PER_INVOCATION + (C+1)·PER_INVOCATION), bounded by the plan's class-row limit; none depends
// on the image size.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: array<atomic<u32>>;

// Where the tile's sum of row ρ of sample b goes: ρ = n·(C+1) + k < N·(C+1) is class row
// (b, n, k), ρ = N·(C+1) the sample's valid-pixel count.
fn partial_index(b: u32, t: u32, rho: u32) -> u32 {
    let class_rows = dims.classes * (dims.channels + 1u);
    if rho < class_rows {
        return (b * class_rows + rho) * dims.tiles + t;
    }
    return (dims.batch * class_rows + b) * dims.tiles + t;
}

// Sums the rows put since the last call (rows first.. first + count) over the workgroup and
// writes the tile's sums (invocation r writes row first + r). Every invocation calls it.
fn flush_rows(lid: u32, live: bool, b: u32, t: u32, first: u32, count: u32) {
    let total = workgroup_sums(lid);
    if live && lid < count {
        partials[partial_index(b, t, first + lid)] = total;
    }
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_group(wid, nwg);
    let b = g / dims.tiles;
    let t = g % dims.tiles;
    let live = b < dims.batch;
    let sp = dims.spatial;
    let n_cls = dims.classes;
    let logits = (dims.flags & FLAG_LOGITS) != 0u;
    // msloss_core::image_limit and probability_limit, for f32.
    let image_limit = sqrt(F32_MAX / (64.0 * f32(max(dims.channels, 1u))));
    let probability_limit = sqrt(F32_MAX / 192.0);
    // Per pixel of the invocation: inside the sample, its mask value, its softmax normaliser.
    var inside: array<bool, PER_INVOCATION>;
    var m: array<f32, PER_INVOCATION>;
    var norm: array<vec2<f32>, PER_INVOCATION>;
    var bad = 0u;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let s = t * TILE + j * WG + lid;
        inside[j] = live && s < sp;
        m[j] = 0.0;
        norm[j] = vec2<f32>(0.0, 1.0);
        if inside[j] {
            m[j] = 1.0;
            if (dims.flags & FLAG_MASK) != 0u {
                m[j] = mask[b * sp + s];
                if m[j] != 0.0 && m[j] != 1.0 {
                    bad |= STATUS_BAD_MASK;
                }
            }
            for (var k = 0u; k < dims.channels; k++) {
                let x = image[(b * dims.channels + k) * sp + s];
                if !is_finite_f32(x) {
                    bad |= STATUS_IMAGE_NONFINITE;
                } else if abs(x) > image_limit {
                    bad |= STATUS_IMAGE_RANGE;
                }
            }
            let base = b * n_cls * sp + s;
            for (var n = 0u; n < n_cls; n++) {
                let v = scores[base + n * sp];
                if !is_finite_f32(v) {
                    bad |= STATUS_SCORES_NONFINITE;
                } else if !logits && v < 0.0 {
                    bad |= STATUS_NEGATIVE_PROBABILITY;
                } else if !logits && v > probability_limit {
                    bad |= STATUS_PROBABILITY_RANGE;
                }
            }
            norm[j] = softmax_norm(b, s);
        }
    }
    if bad != 0u {
        atomicOr(&status[0], bad);
    }
    // Rows ρ = n·(C+1) + k in order, then the count; summed TREE_ROWS at a time.
    var slot = 0u;
    var first = 0u;
    for (var n = 0u; n < n_cls; n++) {
        // m·y of class n at the invocation's pixels.
        var my: array<f32, PER_INVOCATION>;
        for (var j = 0u; j < PER_INVOCATION; j++) {
            my[j] = 0.0;
            if inside[j] {
                let s = t * TILE + j * WG + lid;
                my[j] = m[j] * prob((b * n_cls + n) * sp + s, norm[j]);
            }
        }
        for (var k = 0u; k <= dims.channels; k++) {
            var v: array<f32, PER_INVOCATION>;
            for (var j = 0u; j < PER_INVOCATION; j++) {
                v[j] = my[j];
                if k > 0u && inside[j] {
                    let s = t * TILE + j * WG + lid;
                    v[j] *= image[(b * dims.channels + k - 1u) * sp + s];
                }
            }
            put_row(lid, slot, pairwise8(v));
            slot++;
            if slot == TREE_ROWS {
                flush_rows(lid, live, b, t, first, slot);
                first += slot;
                slot = 0u;
            }
        }
    }
    put_row(lid, slot, pairwise8(m));
    flush_rows(lid, live, b, t, first, slot + 1u);
}
