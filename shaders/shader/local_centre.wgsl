// Shared by the local fidelity's per-pixel kernels (prepended after common.wgsl); reads the
// kernel's own `dims` and `sums` bindings.

// x̄_bk: the class sums' weighted mean Σ_n Σ m·y·x_k / Σ_n Σ m·y (0 without mass). Any
// constant keeps the expansion exact; one near the image's values keeps the sums small.
fn local_centre(b: u32, k: u32) -> f32 {
    var mass = 0.0;
    var moment = 0.0;
    for (var n = 0u; n < dims.classes; n++) {
        let row = (b * dims.classes + n) * (dims.channels + 1u);
        mass += sums[row];
        moment += sums[row + 1u + k];
    }
    return select(0.0, moment / mass, mass > 0.0);
}
