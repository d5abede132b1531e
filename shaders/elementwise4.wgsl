// The elementwise kernels of elementwise.wgsl, four elements per invocation, for tensors whose
// length (and, where a row is broadcast, width) is a multiple of 4. Same codes and fields;
// p.n counts elements, not vec4s. Why: on CPU drivers every storage access is a loop over the
// SIMD lanes, and a vec4 access moves four elements per lane in one trip (measured on
// lavapipe: a 65 536-element product 250 → 157 µs); GPUs issue them as 128-bit loads.
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

fn apply4(x: vec4<f32>, y: vec4<f32>) -> vec4<f32> {
    switch p.code {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        default: { return x / y; }
    }
}

// Element 4i.. of b broadcast as a column (rows, 1): the four lie in one row (cols % 4 == 0;
// rows % 4 == 0 too, so that b's binding is whole vec4s).
fn col_value(i: u32) -> f32 {
    let r = (4u * i) / p.cols;
    return b[r / 4u][r % 4u];
}

@compute @workgroup_size(256)
fn binary_same4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    out[i] = apply4(a[i], b[i]);
}

// b one row (1, cols), cols % 4 == 0.
@compute @workgroup_size(256)
fn binary_row4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    out[i] = apply4(a[i], b[i % (p.cols / 4u)]);
}

// b one column (rows, 1), rows and cols % 4 == 0.
@compute @workgroup_size(256)
fn binary_col4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    out[i] = apply4(a[i], vec4<f32>(col_value(i)));
}

// f0 · a + f1 ; with code 1 the input is ignored (fill with f1).
@compute @workgroup_size(256)
fn affine4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    if (p.code == 1u) { out[i] = vec4<f32>(p.f1); return; }
    out[i] = p.f0 * a[i] + p.f1;
}

// code = function, u0 = derivative order.
@compute @workgroup_size(256)
fn map4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    let x = a[i];
    out[i] = vec4<f32>(fun(p.code, p.u0, x.x), fun(p.code, p.u0, x.y), fun(p.code, p.u0, x.z),
                       fun(p.code, p.u0, x.w));
}

// expand: b one row (1, cols), copied down the rows (cols % 4 == 0).
@compute @workgroup_size(256)
fn expand_row4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    out[i] = b[i % (p.cols / 4u)];
}

// expand: b one column (rows, 1), copied along the columns (rows, cols % 4 == 0).
@compute @workgroup_size(256)
fn expand_col4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    out[i] = vec4<f32>(col_value(i));
}
