// The per-step arguments of the built-in optimiser kernels (optim.wgsl, optim4.wgsl): from the
// parameter block, or in a replayed step (a_rows = 1, src/gpu/replay.rs) from the recording's
// counter at binding 5.
@group(0) @binding(5) var<storage, read> ctl: array<u32>;

// (bc1, bc2) of this step: the host's, or from the counter in a replayed step of Adam.
fn corrections() -> vec2<f32> {
    let t = p.a_cols + ctl[CTL_REPLAYED];
    let replayed = vec2<f32>(bias_correction(t, bitcast<f32>(p.u2)), bias_correction(t, bitcast<f32>(p.u3)));
    return select(vec2<f32>(bitcast<f32>(p.u0), bitcast<f32>(p.u1)), replayed, p.a_rows == 1u && p.code == 2u);
}

// The learning rate of this step: f0, or in a replayed step f0 plus b_rows (f32 bits) per
// step since the recorded one.
fn rate() -> f32 {
    let since = select(0u, ctl[CTL_REPLAYED], p.a_rows == 1u);
    return p.f0 + bitcast<f32>(p.b_rows) * f32(since);
}
