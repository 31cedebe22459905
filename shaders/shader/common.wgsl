// Shared by every msloss kernel (prepended to each entry file): constants, the evaluation's
// uniform block and small helpers. The Rust side mirrors every constant and struct here in
// msloss-shaders/src/lib.rs; the crate's tests parse this file with naga and compare.
//
// Layout conventions (row-major, contiguous, f32):
//   scores, grad     [B, N, S]      (no probability buffer: see softmax.wgsl)      image  [B, C, S]      mask  [B, S]      S = D·H·W
//   centroids        [B, N, C]
// Every kernel runs with a folded 2D dispatch grid: the linear workgroup index is
// wid.y · nwg.x + wid.x, and work past the end is masked off (never an early return before a
// barrier). Each invocation's loops are bounded by N, N·(C+1), log2(WG) or, in local_conv,
// the Gaussian's window (at most MAX_WINDOW taps): no loop grows with the image size, and the
// backend's limits on N and N·(C+1) keep the rest in budget (Mesa's lavapipe silently stops a
// shader after 65,535 loop iterations).
// Every storage binding is read_write, inputs included: the caller may keep several tensors in
// one buffer (a framework's allocator packs them in pages), and wgpu accepts a buffer bound
// read_write several times in one dispatch but not bound read-only and read_write.

const WG: u32 = 256u;
// Elements one invocation sums before the workgroup tree (a fixed pairwise tree in registers),
// and elements one workgroup reduces.
const PER_INVOCATION: u32 = 8u;
const TILE: u32 = 2048u;
// Image channels a kernel keeps per pixel in registers when it reads them once per class.
const CACHED_CHANNELS: u32 = 4u;

const FLAG_LOGITS: u32 = 1u;
const FLAG_MASK: u32 = 2u;
const FLAG_GRAD: u32 = 4u;
const FLAG_MEAN: u32 = 8u;
// The local fidelity: loss_grad leaves the fidelity out, the local_* kernels add it.
const FLAG_LOCAL: u32 = 16u;

const LENGTH_L1: u32 = 0u;
const LENGTH_L2: u32 = 1u;
const LENGTH_CHARBONNIER: u32 = 2u;

const STATUS_SCORES_NONFINITE: u32 = 1u;
const STATUS_NEGATIVE_PROBABILITY: u32 = 2u;
const STATUS_IMAGE_NONFINITE: u32 = 4u;
const STATUS_BAD_MASK: u32 = 8u;
const STATUS_EMPTY_MASK: u32 = 16u;
const STATUS_RESULT_NONFINITE: u32 = 32u;
const STATUS_IMAGE_RANGE: u32 = 64u;
const STATUS_PROBABILITY_RANGE: u32 = 128u;
const STATUS_GRADIENT_NONFINITE: u32 = 256u;
// The largest finite f32.
const F32_MAX: f32 = 3.40282347e38;

struct Dims {
    batch: u32,
    classes: u32,
    channels: u32,
    depth: u32,
    height: u32,
    width: u32,
    // D·H·W
    spatial: u32,
    // Workgroups per row in class_sums: ceil(S / TILE).
    tiles: u32,
    // Rows of class_sums: B·N·(C+1) class rows, then B mask-count rows.
    rows: u32,
    flags: u32,
    // Workgroups of loss_grad: ceil(B·S / WG), one pixel per invocation.
    loss_groups: u32,
    lambda: f32,
    weight: f32,
    delta: f32,
    eps: f32,
}

fn linear_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// The pairwise sum ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)): a fixed order.
fn pairwise8(v: array<f32, 8>) -> f32 {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Finite test on the bits: immune to fast-math assumptions about NaN.
fn is_finite_f32(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}
