// Elementwise kernels: fill, broadcasting binary ops, smooth functions f^(k), affine.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// code: 0 add, 1 sub, 2 mul, 3 div, 4 copy a (broadcast / expand). Matches ops::BinOp.
// Integer division is slow on CPU implementations (no SIMD divide), so the row and column
// are only computed for an operand that is actually broadcast.
fn a_or_b(i: u32) -> f32 {
    return b[operand_index(i, p.b_rows, p.b_cols)];
}

fn operand_index(i: u32, nr: u32, nc: u32) -> u32 {
    if (nr == p.rows && nc == p.cols) { return i; }
    if (nr == 1u && nc == 1u) { return 0u; }
    if (nr == 1u) { return i % p.cols; }
    return i / p.cols;
}

fn apply(x: f32, y: f32) -> f32 {
    switch p.code {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        default: { return x / y; }
    }
}

// Operands of the output's shape (the common case): no index arithmetic at all.
@compute @workgroup_size(256)
fn binary_same(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = apply(a[i], b[i]);
}

// a of the output's shape, b one row (1, cols): a bias.
@compute @workgroup_size(256)
fn binary_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = apply(a[i], b[i % p.cols]);
}

// a of the output's shape, b one column (rows, 1): a per-sample factor.
@compute @workgroup_size(256)
fn binary_col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = apply(a[i], b[i / p.cols]);
}

// a of the output's shape, b a scalar (1, 1).
@compute @workgroup_size(256)
fn binary_scalar(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = apply(a[i], b[0]);
}

// Any other broadcast, either side (and code 4: expand a).
@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let x = a[operand_index(i, p.a_rows, p.a_cols)];
    if (p.code == 4u) { out[i] = x; return; }
    out[i] = apply(x, a_or_b(i));
}

// f0 · a + f1 ; with code 1 the input is ignored (fill with f1).
@compute @workgroup_size(256)
fn affine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    if (p.code == 1u) { out[i] = p.f1; return; }
    out[i] = p.f0 * a[i] + p.f1;
}

// code = function, u0 = derivative order.
@compute @workgroup_size(256)
fn map(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = fun(p.code, p.u0, a[i]);
}
