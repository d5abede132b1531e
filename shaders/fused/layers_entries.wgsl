// Entry points of the layers shape besides its layer sweeps (generated, src/fused/core.rs):
// one kernel per stage, one invocation per workspace row for the per-sample stages (see the
// kernel list in src/fused/mod.rs). A minibatch larger than the workspace runs in
// sub-batches of IO.rows rows (st.row0, st.acc); the rows past st.rows are padding.

// The first kernel of a training step hands the update t + 1 (see seam::ctl).
@compute @workgroup_size(ROWS_WG)
fn rows_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= IO.rows) { return; }
    if (i == 0u) { ctl[CTL_T_OUT] = select(ctl[CTL_T_OUT], ctl[CTL_T_IN] + 1u, flag(FLAG_TRAIN)); }
    row_input(i, i, i < st.rows);
}

@compute @workgroup_size(ROWS_WG)
fn rows_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < IO.rows) { row_step(gid.x); }
}
@compute @workgroup_size(ROWS_WG)
fn rows_diff(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < IO.rows) { row_diff(gid.x, gid.x < st.rows); }
}
@compute @workgroup_size(ROWS_WG)
fn rows_adj(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < IO.rows) { row_adj(gid.x, gid.x < st.rows); }
}
@compute @workgroup_size(ROWS_WG)
fn rows_dots(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < IO.rows) { row_dots(gid.x); }
}

// Workgroup q: scalar q summed over the rows (padding rows hold zeros) into scalar slot 0;
// sub-batches after the first add to it.
@compute @workgroup_size(WG_SIZE)
fn sums(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.x;
    var s = 0.0;
    for (var i = lid; i < IO.rows; i += WG_SIZE) { s += row_scalar(q, i); }
    let total = wg_sum(lid, s);
    if (lid == 0u) {
        ws[IO.scal + q] = select(ws[IO.scal + q], 0.0, st.acc == 0u) + total;
    }
}

// Workgroup m: the power iteration of normalised layer m (training) or σ from the stored u.
@compute @workgroup_size(WG_SIZE)
fn power_iteration(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    _ = power_iteration_layer(lid, wid.x);
}

fn power_iteration_layer(lid: u32, m: u32) -> vec3<f32> {
    return power_iterate(lid, LAYERS[m], flag(FLAG_TRAIN), true);
}
