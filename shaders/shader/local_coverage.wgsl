// Shared by local_terms and local_grad (prepended after local_centre.wgsl); reads the kernel's
// own `dims` and `taps` bindings.

// S(s) = Σ_t K(s, t): the product of the three axes' coverage values.
fn coverage(s: u32) -> f32 {
    let hw = dims.height * dims.width;
    let d = s / hw;
    let h = (s / dims.width) % dims.height;
    let w = s % dims.width;
    return taps[d] * taps[dims.depth + h] * taps[dims.depth + dims.height + w];
}
