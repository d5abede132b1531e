// Data movement: column concat, column windows (slice / pad), row gather and its adjoint.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// out = [a, b]; a is (rows, a_cols), b is (rows, b_cols).
@compute @workgroup_size(256)
fn concat_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    if (c < p.a_cols) { out[i] = a[r * p.a_cols + c]; } else { out[i] = b[r * p.b_cols + c - p.a_cols]; }
}

// out[r, c] = a[r, c + u0 - u1] where that column exists in a, else 0.
// Slice: u0 = start, u1 = 0. Pad: u0 = 0, u1 = start.
@compute @workgroup_size(256)
fn window_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let r = i / p.cols;
    let c = i % p.cols + p.u0;
    if (c >= p.u1 && c - p.u1 < p.a_cols) { out[i] = a[r * p.a_cols + c - p.u1]; } else { out[i] = 0.0; }
}
