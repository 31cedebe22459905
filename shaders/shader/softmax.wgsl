// Shared by the kernels that read class probabilities (prepended after common.wgsl); reads the
// kernel's own `dims` and `scores` bindings. No probability is stored on the device: for logits,
// a kernel recomputes a pixel's softmax from the logits where it needs it.

// One step of a softmax normaliser over a pixel's logits in one pass: acc = (max so far,
// Σ exp(z − max) so far) taking in logit z, the sum rescaled when z raises the maximum. A pass
// starts at (z_0, 1), or at NORM_START, which the first step turns into (z_0, 1). One exp a
// step: exp(−|z − max|) is the new term or the rescaling factor.
const NORM_START: vec2<f32> = vec2<f32>(-F32_MAX, 0.0);

fn norm_step(acc: vec2<f32>, z: f32) -> vec2<f32> {
    let e = exp(-abs(z - acc.x));
    return vec2<f32>(max(acc.x, z), select(acc.y + e, acc.y * e + 1.0, z > acc.x));
}

// The softmax's normaliser of pixel s of sample b, (max_n z_n, Σ_n exp(z_n − max)); (0, 1) for
// probabilities, which are read as they are. Loops: N − 1 (logits).
fn softmax_norm(b: u32, s: u32) -> vec2<f32> {
    if (dims.flags & FLAG_LOGITS) == 0u {
        return vec2<f32>(0.0, 1.0);
    }
    let sp = dims.spatial;
    let base = b * dims.classes * sp + s;
    var acc = vec2<f32>(scores[base], 1.0);
    for (var n = 1u; n < dims.classes; n++) {
        acc = norm_step(acc, scores[base + n * sp]);
    }
    return acc;
}

// y of the class-map element i = (b·N + n)·S + s, given its pixel's normaliser.
fn prob(i: u32, norm: vec2<f32>) -> f32 {
    let v = scores[i];
    if (dims.flags & FLAG_LOGITS) != 0u {
        return exp(v - norm.x) / norm.y;
    }
    return v;
}
