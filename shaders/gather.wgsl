// Row gather (minibatches) and its adjoint. Index values were checked on the host.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// out[i, c] = x[idx[i], c]; out is (rows = len(idx), cols).
@compute @workgroup_size(256)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    out[i] = x[idx[r] * p.cols + c];
}

// out[j, c] = Σ_{i < u0, idx[i] = j} x[i, c]; out is (rows = n, cols). Deterministic: no atomics.
@compute @workgroup_size(256)
fn scatter_add_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let j = i / p.cols;
    let c = i % p.cols;
    var s = 0.0;
    for (var k = 0u; k < p.u0; k++) {
        if (idx[k] == j) { s += x[k * p.cols + c]; }
    }
    out[i] = s;
}
