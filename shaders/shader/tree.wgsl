// Workgroup sums of up to TREE_ROWS rows at once (prepended after common.wgsl to the kernels
// that sum over a workgroup). Each invocation puts its value of row r < TREE_ROWS with put_row,
// then every invocation calls workgroup_sums, and invocation r gets row r's sum. Each row is
// added in the order of the classic shared-memory binary tree (strides WG/2, WG/4, …, 1), so the
// bits are that tree's, but in three stages for all the rows together, each spread over the
// invocations: three barriers for eight rows instead of log2(WG) + 2 for each.

const_assert WG == 256u;
const TREE_ROWS: u32 = 8u;

var<workgroup> tree_values: array<f32, 2048>;
var<workgroup> tree_columns: array<f32, 256>;
var<workgroup> tree_quarters: array<f32, 32>;

// v_0 + … + v_7 as the binary tree adds them: strides 4, 2, 1.
fn fold8(v: array<f32, 8>) -> f32 {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

// Invocation lid's value of row r (< TREE_ROWS) for the next workgroup_sums.
fn put_row(lid: u32, r: u32, v: f32) {
    tree_values[r * WG + lid] = v;
}

// The sums of the rows put since the last call: row lid's sum in invocation lid < TREE_ROWS
// (rows nothing was put in hold stale values). Every invocation must call it (it holds
// barriers). When it returns, rows may be put again: tree_values is last read before the second
// barrier, tree_columns before the third, and tree_quarters is rewritten only after the next
// call's second. The folds are written out, not looped: no iteration counts against lavapipe's
// budget.
fn workgroup_sums(lid: u32) -> f32 {
    workgroupBarrier();
    // Invocation lid = 32·r + q: row r's columns q + 32·i (strides 128, 64, 32).
    let f = (lid / 32u) * WG + lid % 32u;
    tree_columns[lid] = fold8(array<f32, 8>(
        tree_values[f],
        tree_values[f + 32u],
        tree_values[f + 64u],
        tree_values[f + 96u],
        tree_values[f + 128u],
        tree_values[f + 160u],
        tree_values[f + 192u],
        tree_values[f + 224u],
    ));
    workgroupBarrier();
    // Invocation lid = 4·r + q < 32: row r's columns q + 4·i (strides 16, 8, 4).
    if lid < 32u {
        let h = (lid / 4u) * 32u + lid % 4u;
        tree_quarters[lid] = fold8(array<f32, 8>(
            tree_columns[h],
            tree_columns[h + 4u],
            tree_columns[h + 8u],
            tree_columns[h + 12u],
            tree_columns[h + 16u],
            tree_columns[h + 20u],
            tree_columns[h + 24u],
            tree_columns[h + 28u],
        ));
    }
    workgroupBarrier();
    // Invocation r < TREE_ROWS: strides 2, 1.
    var total = 0.0;
    if lid < TREE_ROWS {
        let q = lid * 4u;
        total = (tree_quarters[q] + tree_quarters[q + 2u]) + (tree_quarters[q + 1u] + tree_quarters[q + 3u]);
    }
    return total;
}
