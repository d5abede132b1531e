// The tile shape: one dispatch does everything per sample for a whole step (the kernel list
// is generated from the plan, src/fused/plan.rs). Workgroup w of TILE.groups takes tiles
// w, w + groups, … of TILE.rows rows of the launch; its rows live in workspace rows
// w·TILE.rows …, and it writes its tile's partial sums to slot w, adding up its tiles in
// order. Between stages a barrier: every stage reads what the previous one stored.

fn tile_sync() {
    storageBarrier();
    workgroupBarrier();
}

fn tile_input(lid: u32, slab0: u32, local0: u32) {
    for (var r = lid; r < TILE.rows; r += WG_SIZE) {
        let local = local0 + r;
        row_input(slab0 + r, local, local < st.rows);
    }
}

fn tile_step(lid: u32, slab0: u32) {
    for (var r = lid; r < TILE.rows; r += WG_SIZE) { row_step(slab0 + r); }
}

fn tile_diff(lid: u32, slab0: u32, local0: u32) {
    for (var r = lid; r < TILE.rows; r += WG_SIZE) { row_diff(slab0 + r, local0 + r < st.rows); }
}

fn tile_adj(lid: u32, slab0: u32, local0: u32) {
    for (var r = lid; r < TILE.rows; r += WG_SIZE) { row_adj(slab0 + r, local0 + r < st.rows); }
}

fn tile_dots(lid: u32, slab0: u32) {
    for (var r = lid; r < TILE.rows; r += WG_SIZE) { row_dots(slab0 + r); }
}

// This tile's scalar sums (padding rows hold zeros) into slot w: the first tile of the step
// writes, later ones add. Sums in blocks of 64 rows.
fn tile_scalars(lid: u32, w: u32, slab0: u32, first: bool) {
    for (var q = lid; q < IO.scal_len; q += WG_SIZE) {
        var total = 0.0;
        for (var b0 = 0u; b0 < TILE.rows; b0 += 64u) {
            var s = 0.0;
            for (var r = b0; r < min(TILE.rows, b0 + 64u); r++) { s += row_scalar(q, slab0 + r); }
            total += s;
        }
        let at = IO.scal + w * IO.scal_len + q;
        ws[at] = select(ws[at], 0.0, first) + total;
    }
}

// 1/σ of layer l in this workgroup's step (1 without spectral norm).
fn tile_scale(l: Layer) -> f32 {
    if (l.sn_index == NONE) { return 1.0; }
    return 1.0 / wsig[l.sn_index];
}

// The weights into workgroup memory (the shape's wgw copy of theta, where it fits).
fn tile_load_weights(lid: u32) {
    for (var e = lid; e < WGW_LEN; e += WG_SIZE) { wgw[e] = theta[e]; }
}
