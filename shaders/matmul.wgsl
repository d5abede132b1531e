// C (rows × cols) = op(A) · op(B), op = transpose when flagged.
// a_cols, b_cols: storage widths of A and B; u0 = K (inner size); u1 = transpose A; u2 = transpose B.
// u3 = K chunk: workgroup z sums k in [z·u3, min(K, (z+1)·u3)) and writes its partial product
// at output rows z·rows.. (the caller adds the chunks).
// 64×64 output tile per workgroup of 16×16 threads, each thread a 4×4 block; K in steps of 16.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> As: array<vec4<f32>, 256>; // [BK][BM/4]: 4 consecutive rows of op(A)
var<workgroup> Bs: array<vec4<f32>, 256>; // [BK][BN/4]: 4 consecutive columns of op(B)

// op(A)[i, k], zero outside (k_end: the end of this workgroup's chunk of K).
fn load_a(i: u32, k: u32, k_end: u32) -> f32 {
    if (i >= p.rows || k >= k_end) { return 0.0; }
    if (p.u1 == 1u) { return a[k * p.a_cols + i]; }
    return a[i * p.a_cols + k];
}

// op(B)[k, j], zero outside.
fn load_b(k: u32, j: u32, k_end: u32) -> f32 {
    if (k >= k_end || j >= p.cols) { return 0.0; }
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

    let k_begin = wid.z * p.u3;
    let k_end = min(p.u0, k_begin + p.u3);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        // 256 threads stage 1024 elements of each operand; neighbouring threads read
        // neighbouring addresses of the untransposed storage (coalesced).
        for (var l = 0u; l < 4u; l++) {
            let e = tid + l * 256u;
            var ii: u32; var ka: u32;
            if (p.u1 == 1u) { ii = e % BM; ka = e / BM; } else { ka = e % BK; ii = e / BK; }
            As[ka * 16u + ii / 4u][ii % 4u] = load_a(row0 + ii, k0 + ka, k_end);
            var jj: u32; var kb: u32;
            if (p.u2 == 1u) { kb = e % BK; jj = e / BK; } else { jj = e % BN; kb = e / BN; }
            Bs[kb * 16u + jj / 4u][jj % 4u] = load_b(k0 + kb, col0 + jj, k_end);
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
    let base = wid.z * p.rows * p.cols;
    store_row(base, r, c, c0);
    store_row(base, r + 1u, c, c1);
    store_row(base, r + 2u, c, c2);
    store_row(base, r + 3u, c, c3);
}

fn store_row(base: u32, r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.rows) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (c + j < p.cols) { out[base + r * p.cols + c + j] = v[j]; }
    }
}

// The same product without workgroup memory or barriers: each invocation reads its 4 rows of
// op(A) and 8 columns of op(B) straight from memory (a 4×8 block: 12 loads per 32 FMAs).
// Used on CPU implementations of Vulkan, where a barrier costs tens of µs per workgroup and
// memory is the CPU's cache, unless they have fixed 8-lane subgroups (lavapipe): there the
// subgroup products of src/gpu/matmul_cpu.rs load 3–4× less and run 3–4× faster.
// The inner loop has no branches: transposition becomes strides, and rows/columns past the
// edge are clamped (computed twice, never stored).
@compute @workgroup_size(8, 8)
fn matmul_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k_begin = gid.z * p.u3;
    let k_end = min(p.u0, k_begin + p.u3);
    let base = gid.z * p.rows * p.cols;
    let r = gid.y * 4u;
    let c = gid.x * 8u;
    if (r >= p.rows || c >= p.cols) { return; }
    // op(A)[i, k] = a[i·ai + k·ak], op(B)[k, j] = b[k·bk + j·bj].
    let ai = select(p.a_cols, 1u, p.u1 == 1u);
    let ak = select(1u, p.a_cols, p.u1 == 1u);
    let bk = select(p.b_cols, 1u, p.u2 == 1u);
    let bj = select(1u, p.b_cols, p.u2 == 1u);
    let last_r = p.rows - 1u;
    let last_c = p.cols - 1u;
    let a0 = min(r, last_r) * ai;
    let a1 = min(r + 1u, last_r) * ai;
    let a2 = min(r + 2u, last_r) * ai;
    let a3 = min(r + 3u, last_r) * ai;
    let b0 = min(c, last_c) * bj;
    let b1 = min(c + 1u, last_c) * bj;
    let b2 = min(c + 2u, last_c) * bj;
    let b3 = min(c + 3u, last_c) * bj;
    let b4 = min(c + 4u, last_c) * bj;
    let b5 = min(c + 5u, last_c) * bj;
    let b6 = min(c + 6u, last_c) * bj;
    let b7 = min(c + 7u, last_c) * bj;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var d0 = vec4<f32>(0.0);
    var d1 = vec4<f32>(0.0);
    var d2 = vec4<f32>(0.0);
    var d3 = vec4<f32>(0.0);
    for (var k = k_begin; k < k_end; k++) {
        let ka = k * ak;
        let kb = k * bk;
        let av = vec4<f32>(a[a0 + ka], a[a1 + ka], a[a2 + ka], a[a3 + ka]);
        let bv = vec4<f32>(b[kb + b0], b[kb + b1], b[kb + b2], b[kb + b3]);
        let bw = vec4<f32>(b[kb + b4], b[kb + b5], b[kb + b6], b[kb + b7]);
        c0 += av.x * bv;
        c1 += av.y * bv;
        c2 += av.z * bv;
        c3 += av.w * bv;
        d0 += av.x * bw;
        d1 += av.y * bw;
        d2 += av.z * bw;
        d3 += av.w * bw;
    }
    store_row(base, r, c, c0);
    store_row(base, r + 1u, c, c1);
    store_row(base, r + 2u, c, c2);
    store_row(base, r + 3u, c, c3);
    store_row(base, r, c + 4u, d0);
    store_row(base, r + 1u, c + 4u, d1);
    store_row(base, r + 2u, c + 4u, d2);
    store_row(base, r + 3u, c + 4u, d3);
}
