// Shared by the kernels that read class probabilities (prepended after common.wgsl); reads the
// kernel's own `dims` and `scores` bindings. No probability is stored on the device: for logits,
// a kernel recomputes a pixel's softmax from the logits where it needs it.

// The softmax's normaliser of pixel s of sample b, (max_n z_n, Σ_n exp(z_n − max)), the maximum
// subtracted first; (0, 1) for probabilities, which are read as they are. Loops: 2·N (logits).
fn softmax_norm(b: u32, s: u32) -> vec2<f32> {
    if (dims.flags & FLAG_LOGITS) == 0u {
        return vec2<f32>(0.0, 1.0);
    }
    let sp = dims.spatial;
    let base = b * dims.classes * sp + s;
    var mx = scores[base];
    for (var n = 0u; n < dims.classes; n++) {
        mx = max(mx, scores[base + n * sp]);
    }
    var sum = 0.0;
    for (var n = 0u; n < dims.classes; n++) {
        sum += exp(scores[base + n * sp] - mx);
    }
    return vec2<f32>(mx, sum);
}

// y of the class-map element i = (b·N + n)·S + s, given its pixel's normaliser.
fn prob(i: u32, norm: vec2<f32>) -> f32 {
    let v = scores[i];
    if (dims.flags & FLAG_LOGITS) != 0u {
        return exp(v - norm.x) / norm.y;
    }
    return v;
}
