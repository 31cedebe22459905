// class_sums: the class sums of class_pixels.wgsl, one tile per workgroup (g = b·tiles + t),
// summed over the workgroup (tree.wgsl, TREE_ROWS rows at a time) into partials[row·tiles + t].
// The default on GPUs.

// Sums the rows put since the last call (rows first .. first + count) over the workgroup and
// writes the tile's sums (invocation r writes row first + r). Every invocation calls it.
fn flush_rows(lid: u32, live: bool, b: u32, t: u32, first: u32, count: u32) {
    let total = workgroup_sums(lid);
    if live && lid < count {
        partials[partial_index(b, t, first + lid)] = total;
    }
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_group(wid, nwg);
    let b = g / dims.tiles;
    let t = g % dims.tiles;
    let live = b < dims.batch;
    load_pixels(b, t, lid, live);
    // Rows ρ = n·(C+1) + k in order, then the count; summed TREE_ROWS at a time.
    var slot = 0u;
    var first = 0u;
    for (var n = 0u; n < dims.classes; n++) {
        let my = class_weights(b, t, lid, n);
        for (var k = 0u; k <= dims.channels; k++) {
            put_row(lid, slot, row_value(b, t, lid, my, k));
            slot++;
            if slot == TREE_ROWS {
                flush_rows(lid, live, b, t, first, slot);
                first += slot;
                slot = 0u;
            }
        }
    }
    put_row(lid, slot, count_value());
    flush_rows(lid, live, b, t, first, slot + 1u);
}
