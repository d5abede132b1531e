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

fn sigmoid(x: f32) -> f32 {
    // Both branches stay finite for any finite x.
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

// σ^(k) for k = 0..3.
fn sigmoid_d(x: f32, k: u32) -> f32 {
    let s = sigmoid(x);
    let s1 = s * (1.0 - s);
    switch k {
        case 0u: { return s; }
        case 1u: { return s1; }
        case 2u: { return s1 * (1.0 - 2.0 * s); }
        default: { return s1 * (1.0 - 6.0 * s + 6.0 * s * s); }
    }
}

// f^(k)(x). Codes match ops::Fun; formulas match Fun::eval (the f64 reference).
fn fun(code: u32, k: u32, x: f32) -> f32 {
    switch code {
        case 0u: { // swish
            let s = sigmoid(x);
            let s1 = s * (1.0 - s);
            switch k {
                case 0u: { return x * s; }
                case 1u: { return s + x * s1; }
                case 2u: { return 2.0 * s1 + x * s1 * (1.0 - 2.0 * s); }
                default: { return 3.0 * s1 * (1.0 - 2.0 * s) + x * s1 * (1.0 - 6.0 * s + 6.0 * s * s); }
            }
        }
        case 1u: { // tanh
            let t = tanh(x);
            switch k {
                case 0u: { return t; }
                case 1u: { return 1.0 - t * t; }
                case 2u: { return -2.0 * t * (1.0 - t * t); }
                default: { return -2.0 * (1.0 - t * t) * (1.0 - 3.0 * t * t); }
            }
        }
        case 2u: { return sigmoid_d(x, k); }
        case 3u: { // softplus, stable: max(x, 0) + log(1 + e^-|x|)
            if (k == 0u) { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }
            return sigmoid_d(x, k - 1u);
        }
        case 4u: { // elu
            if (x > 0.0) { return select(0.0, select(1.0, x, k == 0u), k <= 1u); }
            return select(exp(x), exp(x) - 1.0, k == 0u);
        }
        case 5u: { return exp(x); }
        case 6u: { // log
            switch k {
                case 0u: { return log(x); }
                case 1u: { return 1.0 / x; }
                case 2u: { return -1.0 / (x * x); }
                default: { return 2.0 / (x * x * x); }
            }
        }
        case 7u: { // square
            switch k {
                case 0u: { return x * x; }
                case 1u: { return 2.0 * x; }
                case 2u: { return 2.0; }
                default: { return 0.0; }
            }
        }
        case 8u: { // sqrt
            let r = sqrt(x);
            switch k {
                case 0u: { return r; }
                case 1u: { return 0.5 / r; }
                case 2u: { return -0.25 / (x * r); }
                default: { return 0.375 / (x * x * r); }
            }
        }
        default: { // reciprocal
            switch k {
                case 0u: { return 1.0 / x; }
                case 1u: { return -1.0 / (x * x); }
                case 2u: { return 2.0 / (x * x * x); }
                default: { return -6.0 / (x * x * x * x); }
            }
        }
    }
}

// code = function, u0 = derivative order.
@compute @workgroup_size(256)
fn map(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = fun(p.code, p.u0, a[i]);
}
