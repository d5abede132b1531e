// The last dispatch of a replayed step (src/gpu/replay.rs): the recording's counter moves to
// the next step. One invocation; the counter words are common.wgsl's CTL_*.
@group(0) @binding(3) var<storage, read_write> ctl: array<u32>;

@compute @workgroup_size(1)
fn advance() {
    let lo = ctl[CTL_STEP_LO] + 1u;
    ctl[CTL_STEP_HI] += select(0u, 1u, lo == 0u);
    ctl[CTL_STEP_LO] = lo;
    ctl[CTL_REPLAYED] += 1u;
}
