// C (rows × cols) = op(A) · op(B), op = transpose when flagged.
// a_cols, b_cols: storage widths of A and B; u0 = K (inner size); u1 = transpose A; u2 = transpose B.
// 64×64 output tile per workgroup of 16×16 threads, each thread a 4×4 block; K in steps of 16.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> As: array<f32, 1024>; // [BK][BM]
var<workgroup> Bs: array<f32, 1024>; // [BK][BN]

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
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < p.u0; k0 += BK) {
        // 256 threads stage 1024 elements of each operand; neighbouring threads read
        // neighbouring addresses of the untransposed storage (coalesced).
        for (var l = 0u; l < 4u; l++) {
            let e = tid + l * 256u;
            var ii: u32; var ka: u32;
            if (p.u1 == 1u) { ii = e % BM; ka = e / BM; } else { ka = e % BK; ii = e / BK; }
            As[ka * BM + ii] = load_a(row0 + ii, k0 + ka);
            var jj: u32; var kb: u32;
            if (p.u2 == 1u) { kb = e % BK; jj = e / BK; } else { jj = e % BN; kb = e / BN; }
            Bs[kb * BN + jj] = load_b(k0 + kb, col0 + jj);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = As[kk * BM + lid.y * 4u + i];
                bv[i] = Bs[kk * BN + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (r < p.rows && c < p.cols) {
                out[r * p.cols + c] = acc[i * 4u + j];
            }
        }
    }
}
