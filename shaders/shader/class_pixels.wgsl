// Shared by the two class-sum kernels (prepended after common.wgsl, softmax.wgsl and, for
// class_sums, tree.wgsl): the first level of the centroid reduction, reading the scores
// themselves (for logits, each pixel's softmax is recomputed: no probability buffer). An
// invocation takes the PER_INVOCATION pixels t·TILE + j·WG + lid (j < PER_INVOCATION) of tile t
// of sample b, checks them (finite scores and image, probabilities >= 0, image and
// probabilities within msloss-core's limits for f32, mask in {0, 1}) into the status word and
// computes their softmax normalisers in the same pass; then, row by row,
//   row ρ = n·(C+1) + k of sample b, k = 0:   A_bn = Σ_s m·y,   k >= 1: the moment Σ_s m·y·x_{k-1},
//   row ρ = N·(C+1):                          the valid-pixel count Σ_s m,
// its pixels' values added pairwise (row_value, count_value), which the kernel sums over tiles.
// Loops per tile: PER_INVOCATION·(N + C) + N·PER_INVOCATION·(C + 2), bounded by the plan's
// class-row limit; none depends on the image size.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: array<atomic<u32>>;

// The invocation's pixels (set by load_pixels): inside the sample, mask value, softmax
// normaliser, and the first CACHED_CHANNELS image values, which every class row reads.
var<private> inside: array<bool, PER_INVOCATION>;
var<private> m: array<f32, PER_INVOCATION>;
var<private> norm: array<vec2<f32>, PER_INVOCATION>;
var<private> xs: array<vec4<f32>, PER_INVOCATION>;

// The flat index within its sample of the invocation's pixel j in tile t.
fn pixel(t: u32, lid: u32, j: u32) -> u32 {
    return t * TILE + j * WG + lid;
}

// Checks and loads the invocation's pixels of tile t of sample b (none where !live).
fn load_pixels(b: u32, t: u32, lid: u32, live: bool) {
    let sp = dims.spatial;
    let logits = (dims.flags & FLAG_LOGITS) != 0u;
    // msloss_core::image_limit and probability_limit, for f32.
    let image_limit = sqrt(F32_MAX / (64.0 * f32(max(dims.channels, 1u))));
    let probability_limit = sqrt(F32_MAX / 192.0);
    var bad = 0u;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let s = pixel(t, lid, j);
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
                if k < CACHED_CHANNELS {
                    xs[j][k] = x;
                }
                if !is_finite_f32(x) {
                    bad |= STATUS_IMAGE_NONFINITE;
                } else if abs(x) > image_limit {
                    bad |= STATUS_IMAGE_RANGE;
                }
            }
            // The checks and, for logits, the normaliser in one pass over the scores.
            let base = b * dims.classes * sp + s;
            var acc = NORM_START;
            for (var n = 0u; n < dims.classes; n++) {
                let v = scores[base + n * sp];
                if !is_finite_f32(v) {
                    bad |= STATUS_SCORES_NONFINITE;
                } else if !logits && v < 0.0 {
                    bad |= STATUS_NEGATIVE_PROBABILITY;
                } else if !logits && v > probability_limit {
                    bad |= STATUS_PROBABILITY_RANGE;
                }
                acc = norm_step(acc, v);
            }
            if logits {
                norm[j] = acc;
            }
        }
    }
    if bad != 0u {
        atomicOr(&status[0], bad);
    }
}

// m·y of class n at the invocation's pixels.
fn class_weights(b: u32, t: u32, lid: u32, n: u32) -> array<f32, PER_INVOCATION> {
    var my: array<f32, PER_INVOCATION>;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        my[j] = 0.0;
        if inside[j] {
            my[j] = m[j] * prob((b * dims.classes + n) * dims.spatial + pixel(t, lid, j), norm[j]);
        }
    }
    return my;
}

// The invocation's share of row (n, k), given class n's weights my.
fn row_value(b: u32, t: u32, lid: u32, my: array<f32, PER_INVOCATION>, k: u32) -> f32 {
    var v: array<f32, PER_INVOCATION>;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        v[j] = my[j];
        if k > 0u && inside[j] {
            if k <= CACHED_CHANNELS {
                v[j] *= xs[j][k - 1u];
            } else {
                v[j] *= image[(b * dims.channels + k - 1u) * dims.spatial + pixel(t, lid, j)];
            }
        }
    }
    return pairwise8(v);
}

// The invocation's share of the valid-pixel count.
fn count_value() -> f32 {
    return pairwise8(m);
}

// Where partial t of row ρ of sample b goes (rows of dims.tiles partials): ρ < N·(C+1) is class
// row (b, n, k), ρ = N·(C+1) the sample's valid-pixel count.
fn partial_index(b: u32, t: u32, rho: u32) -> u32 {
    let class_rows = dims.classes * (dims.channels + 1u);
    if rho < class_rows {
        return (b * class_rows + rho) * dims.tiles + t;
    }
    return (dims.batch * class_rows + b) * dims.tiles + t;
}
