// prepare: one invocation per pixel (b, s). Checks the inputs (finite scores and image,
// probabilities >= 0, image and probabilities within msloss-core's limits for f32, mask in {0, 1}) into the status word and, for logits, writes the softmax
// y = softmax_n(z) (maximum subtracted first). Loops: 3·N + C.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = linear_group(wid, nwg) * WG + lid;
    if p >= dims.batch * dims.spatial {
        return;
    }
    let sp = dims.spatial;
    let b = p / sp;
    let s = p % sp;
    let n_cls = dims.classes;
    var bad = 0u;
    if (dims.flags & FLAG_MASK) != 0u {
        let m = mask[p];
        if m != 0.0 && m != 1.0 {
            bad |= STATUS_BAD_MASK;
        }
    }
    // msloss_core::image_limit and probability_limit, for f32.
    let image_limit = sqrt(F32_MAX / (64.0 * f32(max(dims.channels, 1u))));
    let probability_limit = sqrt(F32_MAX / 192.0);
    for (var k = 0u; k < dims.channels; k++) {
        let x = image[(b * dims.channels + k) * sp + s];
        if !is_finite_f32(x) {
            bad |= STATUS_IMAGE_NONFINITE;
        } else if abs(x) > image_limit {
            bad |= STATUS_IMAGE_RANGE;
        }
    }
    let base = b * n_cls * sp + s;
    if (dims.flags & FLAG_LOGITS) != 0u {
        var mx = scores[base];
        for (var n = 0u; n < n_cls; n++) {
            let z = scores[base + n * sp];
            if !is_finite_f32(z) {
                bad |= STATUS_SCORES_NONFINITE;
            }
            mx = max(mx, z);
        }
        var sum = 0.0;
        for (var n = 0u; n < n_cls; n++) {
            sum += exp(scores[base + n * sp] - mx);
        }
        for (var n = 0u; n < n_cls; n++) {
            y[base + n * sp] = exp(scores[base + n * sp] - mx) / sum;
        }
    } else {
        for (var n = 0u; n < n_cls; n++) {
            let v = scores[base + n * sp];
            if !is_finite_f32(v) {
                bad |= STATUS_SCORES_NONFINITE;
            } else if v < 0.0 {
                bad |= STATUS_NEGATIVE_PROBABILITY;
            } else if v > probability_limit {
                bad |= STATUS_PROBABILITY_RANGE;
            }
        }
    }
    if bad != 0u {
        atomicOr(&status[0], bad);
    }
}
