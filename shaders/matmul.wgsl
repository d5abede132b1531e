// C (rows × cols) = op(A) · op(B), op = transpose when flagged.
// a_cols, b_cols: storage widths of A and B; u0 = K (inner size); u1 = transpose A; u2 = transpose B.
// 64×64 output tile per workgroup of 16×16 threads, each thread a 4×4 block; K in steps of 16.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> As: array<vec4<f32>, 256>; // [BK][BM/4]: 4 consecutive rows of op(A)
var<workgroup> Bs: array<vec4<f32>, 256>; // [BK][BN/4]: 4 consecutive columns of op(B)

// op(A)[i, k], zero outside.
fn load_a(i: u32, k: u32) -> f32 {
    if (i >= p.rows || k >= p.u0) { return 0.0; }
    if (p.u1 == 1u) { return a[k * p.a_cols + i]; }
    return a[i * p.a_cols + k];
}

// op(B)[k, j], zero outside.
fn load_b(k: u32, j: u32) -> f32 {
    if (k >= p.u0 || j >= p.cols) { return 0.0; }
    if (p.u2 == 1u) { return b[j * p.b_cols + k]; }
    return b[k * p.b_cols + j];
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tid = lid.y * 16u + lid.x;
    // The 4×4 block of this thread in four vec4 registers (no dynamically indexed arrays,
    // which compilers tend to spill to memory).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.u0; k0 += BK) {
        // 256 threads stage 1024 elements of each operand; neighbouring threads read
        // neighbouring addresses of the untransposed storage (coalesced).
        for (var l = 0u; l < 4u; l++) {
            let e = tid + l * 256u;
            var ii: u32; var ka: u32;
            if (p.u1 == 1u) { ii = e % BM; ka = e / BM; } else { ka = e % BK; ii = e / BK; }
            As[ka * 16u + ii / 4u][ii % 4u] = load_a(row0 + ii, k0 + ka);
            var jj: u32; var kb: u32;
            if (p.u2 == 1u) { kb = e % BK; jj = e / BK; } else { jj = e % BN; kb = e / BN; }
            Bs[kb * 16u + jj / 4u][jj % 4u] = load_b(k0 + kb, col0 + jj);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let av = As[kk * 16u + lid.y];
            let bv = Bs[kk * 16u + lid.x];
            c0 += av.x * bv;
            c1 += av.y * bv;
            c2 += av.z * bv;
            c3 += av.w * bv;
        }
        workgroupBarrier();
    }

    let r = row0 + lid.y * 4u;
    let c = col0 + lid.x * 4u;
    store_row(r, c, c0);
    store_row(r + 1u, c, c1);
    store_row(r + 2u, c, c2);
    store_row(r + 3u, c, c3);
}

fn store_row(r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.rows) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (c + j < p.cols) { out[r * p.cols + c + j] = v[j]; }
    }
}

// The same product without workgroup memory or barriers, for CPU implementations of Vulkan
// (lavapipe), where barriers are expensive and "global" memory is the CPU's cache anyway.
// Invocation (x = column, y = group of 4 rows): neighbouring invocations take neighbouring
// columns, so the B loads vectorise across SIMD lanes and the A loads are broadcasts.
@compute @workgroup_size(64, 4)
fn matmul_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i0 = gid.y * 4u;
    if (j >= p.cols || i0 >= p.rows) { return; }
    var acc = vec4<f32>(0.0);
    let rows = min(4u, p.rows - i0);
    for (var k = 0u; k < p.u0; k++) {
        var bv: f32;
        if (p.u2 == 1u) { bv = b[j * p.b_cols + k]; } else { bv = b[k * p.b_cols + j]; }
        var av = vec4<f32>(0.0);
        for (var r = 0u; r < rows; r++) {
            let i = i0 + r;
            if (p.u1 == 1u) { av[r] = a[k * p.a_cols + i]; } else { av[r] = a[i * p.a_cols + k]; }
        }
        acc += av * bv;
    }
    for (var r = 0u; r < rows; r++) {
        out[(i0 + r) * p.cols + j] = acc[r];
    }
}
