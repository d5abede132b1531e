// Prepended to every kernel. One parameter block for all kernels: each kernel documents
// which fields it reads. Bindings: 0 = params, 1.. = inputs (read-only), last = output.
struct Params {
    n: u32,       // number of output elements
    rows: u32,    // output rows
    cols: u32,    // output cols
    code: u32,    // op selector
    a_rows: u32,
    a_cols: u32,
    b_rows: u32,
    b_cols: u32,
    u0: u32,
    u1: u32,
    u2: u32,
    u3: u32,
    f0: f32,
    f1: f32,
    f2: f32,
    f3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;

// Linear index of this invocation for 1-D kernels launched on a 2-D grid (x ≤ 65535 groups).
fn linear_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * WG + gid.x;
}

// Words of a recording's step counter (src/gpu/replay.rs, `ctl`), read by the kernels of a
// replayed step: the training step (u64, for the draws) and the steps replayed since the
// recording was made (for the optimiser's t).
const CTL_STEP_LO: u32 = 0u;
const CTL_STEP_HI: u32 = 1u;
const CTL_REPLAYED: u32 = 2u;
