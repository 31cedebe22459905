// Shared by the local fidelity's per-sample kernels (prepended after common.wgsl): they run
// once per sample over one sample's N·(C+1) planes of scratch, and this block, bound with a
// dynamic offset into an array of one block per sample, says which sample. Padded to 16 bytes.
// The kernels that include it bind `dims`, `image`, `mask` and `sample_params`.

struct SampleParams {
    // The sample b of this dispatch.
    index: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// Element i = n·S + s of this dispatch's sample b: bi = b·N·S + i in the batch's [B, N, S]
// tensors, the pixel's mask value m, and `first`, pixel s in class n's first scratch plane (the
// sample's scratch holds N·(C+1) planes).
struct LocalElement {
    s: u32,
    b: u32,
    bi: u32,
    m: f32,
    first: u32,
}

fn local_element(i: u32) -> LocalElement {
    let sp = dims.spatial;
    let s = i % sp;
    let b = sample_params.index;
    var m = 1.0;
    if (dims.flags & FLAG_MASK) != 0u {
        m = mask[b * sp + s];
    }
    return LocalElement(s, b, b * dims.classes * sp + i, m, (i / sp) * (dims.channels + 1u) * sp + s);
}

// Channel k of element e's pixel, centred on the sample's x̄_bk (local_centre).
fn centred(e: LocalElement, k: u32) -> f32 {
    return image[(e.b * dims.channels + k) * dims.spatial + e.s] - local_centre(e.b, k);
}
