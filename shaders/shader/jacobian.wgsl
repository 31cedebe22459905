// jacobian: the softmax backward, one invocation per pixel (b, s), in place on the gradient:
// ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m), with g = ∂E/∂y as loss_grad wrote it; a value that comes
// out non-finite sets its bit in the status word. Loops: 2·N.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> status: array<atomic<u32>>;

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
    let base = (p / sp) * dims.classes * sp + p % sp;
    var mean = 0.0;
    for (var n = 0u; n < dims.classes; n++) {
        mean += y[base + n * sp] * grad[base + n * sp];
    }
    var finite = true;
    for (var n = 0u; n < dims.classes; n++) {
        let at = base + n * sp;
        let v = y[at] * (grad[at] - mean);
        grad[at] = v;
        finite = finite && is_finite_f32(v);
    }
    if !finite {
        atomicOr(&status[0], STATUS_GRADIENT_NONFINITE);
    }
}
