// local_terms: the local fidelity's per-pixel terms of sample b = sample_params.index, one
// invocation per (n, s), after the convolutions left a = K*(m·y) in plane n·(C+1) of the
// sample's scratch and b'_k = K*(m·y·x'_k) in the C planes after it. With
// f' = (b' − x̄·ε_c)/(a + ε_c) (the local mean less x̄) and κ = 2·ε_c/(a + ε_c):
//   energy[i] = m·y·‖x'‖²·S(s) + ‖f'‖²·a − 2·⟨f', b'⟩   (i = n·S + s; summed per sample,
//                                                     then over samples: the raw fidelity F)
//   plane 0   ← W = ‖f'‖² + κ·⟨f' + x̄, f'⟩,   plane 1 + k ← U_k = 2·f'_k + κ·(f'_k + x̄_k)
// in place, for the second convolutions of the gradient. S(s) = Σ_t K(s, t) is the product of
// the coverage lines the host put at the start of `taps` (D, then H, then W values).
// Loops: N·C (the centre), 2·N (the softmax of logits) and C.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;
@group(0) @binding(5) var<storage, read_write> taps: array<f32>;
@group(0) @binding(6) var<storage, read_write> planes: array<f32>;
@group(0) @binding(7) var<storage, read_write> energy: array<f32>;
@group(0) @binding(8) var<uniform> sample_params: SampleParams;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // For logits y is recomputed from the pixel's logits (no probability buffer).
    let i = linear_group(wid, nwg) * WG + lid;
    if i >= dims.classes * dims.spatial {
        return;
    }
    let e = local_element(i);
    let eps = dims.eps;
    let a = planes[e.first];
    let den = a + eps;
    let kappa = 2.0 * eps / den;
    var xx = 0.0;
    var ff = 0.0;
    var fb = 0.0;
    var wv = 0.0;
    for (var k = 0u; k < dims.channels; k++) {
        let centre = local_centre(e.b, k);
        let x = centred(e, k);
        xx += x * x;
        let at = e.first + (1u + k) * dims.spatial;
        let bv = planes[at];
        let f = (bv - centre * eps) / den;
        ff += f * f;
        fb += f * bv;
        wv += (f + centre) * f;
        planes[at] = 2.0 * f + kappa * (f + centre);
    }
    planes[e.first] = ff + kappa * wv;
    energy[i] = e.m * prob(e.bi, softmax_norm(e.b, e.s)) * xx * coverage(e.s) + (ff * a - 2.0 * fb);
}
