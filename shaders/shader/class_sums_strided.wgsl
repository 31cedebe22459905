// class_sums_strided: the class sums of class_pixels.wgsl with no barrier. Workgroup w of
// sample b (g = b·G + w, G = dims.tiles / WG workgroups a sample, at most the sample's tiles)
// takes tiles w, w + G, w + 2·G, … in order, and invocation lid adds its share of each into a
// partial of its own, partials[row·dims.tiles + w·WG + lid], which the reduce levels then sum.
// For devices that emulate a GPU on CPU cores (Mesa's lavapipe), where a barrier inside a loop
// costs more than the G·WG partials a row. The plan bounds the tiles a workgroup takes so that
// its loops stay within lavapipe's budget.

// Adds v to partial i, or starts it with v at the workgroup's first tile.
fn add_partial(i: u32, v: f32, first_tile: bool) {
    var total = v;
    if !first_tile {
        total = partials[i] + v;
    }
    partials[i] = total;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_group(wid, nwg);
    let groups = dims.tiles / WG;
    let b = g / groups;
    let w = g % groups;
    if b >= dims.batch {
        return;
    }
    let tiles = (dims.spatial + TILE - 1u) / TILE;
    let own = w * WG + lid;
    for (var t = w; t < tiles; t += groups) {
        load_pixels(b, t, lid, true);
        var rho = 0u;
        for (var n = 0u; n < dims.classes; n++) {
            let my = class_weights(b, t, lid, n);
            for (var k = 0u; k <= dims.channels; k++) {
                add_partial(partial_index(b, own, rho), row_value(b, t, lid, my, k), t == w);
                rho++;
            }
        }
        add_partial(partial_index(b, own, rho), count_value(), t == w);
    }
}
