// Shared by the local fidelity's per-sample kernels (prepended after common.wgsl): they run
// once per sample over one sample's N·(C+1) planes of scratch, and this block, bound with a
// dynamic offset into an array of one block per sample, says which sample. Padded to 16 bytes.

struct SampleParams {
    // The sample b of this dispatch.
    index: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}
