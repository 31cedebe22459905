// finalize: one invocation. Applies the weights and the reduction to the reduced totals
// (totals = [V, F, Len]) and writes the energy record [fidelity, length, total, status] as
// four 32-bit words (three f32 bit patterns and the status bits).

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
    let fidelity = dims.weight * totals[1] * scale;
    let length = dims.lambda * totals[2] * scale;
    let total = fidelity + length;
    if !is_finite_f32(total) {
        st |= STATUS_RESULT_NONFINITE;
    }
    energy[0] = bitcast<u32>(fidelity);
    energy[1] = bitcast<u32>(length);
    energy[2] = bitcast<u32>(total);
    energy[3] = st;
}
