// local_conv: one axis of the local fidelity's separable Gaussian, out of place, one invocation
// per element of `len` elements (planes of S pixels each). Along the axis of `extent` pixels
// `stride` apart, dst(c) = Σ_j k(|c − j|)·src(j) over j in [c − radius, c + radius] ∩ [0, extent),
// j ascending; pixels outside the image are absent. The host computes the taps k(0..=radius)
// from msloss_core::Gaussian (from taps_offset on) and refuses windows longer than MAX_WINDOW, so the loop stays far
// below lavapipe's 65,535 iterations.

struct ConvParams {
    len: u32,
    spatial: u32,
    extent: u32,
    stride: u32,
    radius: u32,
    // First tap in `taps` (the coverage lines come before it).
    taps_offset: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: ConvParams;
@group(0) @binding(1) var<storage, read_write> taps: array<f32>;
@group(0) @binding(2) var<storage, read_write> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_group(wid, nwg) * WG + lid;
    if i >= params.len {
        return;
    }
    let s = i % params.spatial;
    let c = (s / params.stride) % params.extent;
    let line = i - c * params.stride;
    let lo = select(0u, c - params.radius, c > params.radius);
    let hi = min(c + params.radius, params.extent - 1u);
    var acc = 0.0;
    for (var j = lo; j <= hi; j++) {
        let d = select(j - c, c - j, c > j);
        acc += taps[params.taps_offset + d] * src[line + j * params.stride];
    }
    dst[i] = acc;
}
