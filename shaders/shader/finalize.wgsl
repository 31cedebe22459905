// finalize: one invocation. Applies the weights and the reduction to the reduced totals
// (totals = [V, F, Len]) and writes the energy record [fidelity, length, total, status] as
// four 32-bit words (three f32 bit patterns and the status bits). When the inputs failed a check,
// the mean has no valid pixel or the gradient came out non-finite, the three values are NaN: a caller that reads the energy without
// decoding the status word (a framework's loss tensor) sees no plausible number.

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> totals: array<f32>;
@group(0) @binding(2) var<storage, read_write> status: array<u32>;
@group(0) @binding(3) var<storage, read_write> energy: array<u32>;

@compute @workgroup_size(1)
fn main() {
    var st = status[0];
    var scale = 1.0;
    if (dims.flags & FLAG_MEAN) != 0u {
        let valid = totals[0];
        if valid > 0.0 {
            scale = 1.0 / valid;
        } else {
            st |= STATUS_EMPTY_MASK;
            scale = 0.0;
        }
    }
    // A zero weight switches its term off (msloss_core::Params::weigh): 0, not 0·inf.
    let fidelity = select(dims.weight * totals[1] * scale, 0.0, dims.weight == 0.0);
    let length = select(dims.lambda * totals[2] * scale, 0.0, dims.lambda == 0.0);
    let total = fidelity + length;
    if !is_finite_f32(total) {
        st |= STATUS_RESULT_NONFINITE;
    }
    let bad_input = STATUS_SCORES_NONFINITE | STATUS_NEGATIVE_PROBABILITY | STATUS_IMAGE_NONFINITE | STATUS_BAD_MASK
        | STATUS_EMPTY_MASK | STATUS_IMAGE_RANGE | STATUS_PROBABILITY_RANGE | STATUS_GRADIENT_NONFINITE;
    var words = vec3<u32>(bitcast<u32>(fidelity), bitcast<u32>(length), bitcast<u32>(total));
    if (st & bad_input) != 0u {
        // A quiet NaN.
        words = vec3<u32>(0x7fc00000u);
    }
    energy[0] = words.x;
    energy[1] = words.y;
    energy[2] = words.z;
    energy[3] = st;
}
