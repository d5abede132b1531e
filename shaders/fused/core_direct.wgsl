// Matmul core without workgroup memory or barriers (any adapter; the fast one on CPU
// drivers such as lavapipe): each invocation computes an RB×CB block of
//     out[i, j] = Σ_k load_a(i, k)·load_b(k, j),   i < M, j < N, k in its chunk of K,
// and hands every element to store(i, j, v). The layer file defines load_a, load_b, store.
// Split K: workgroup z takes k in [z·KC, (z+1)·KC) and `chunk` = z, so that long sums are
// added in blocks (store writes partial sums that a later kernel adds up).

override M: u32 = 1u;
override N: u32 = 1u;
override K: u32 = 1u;
override KC: u32 = 0xffffffffu;
const RB: u32 = 4u;
const CB: u32 = 8u;

var<private> chunk: u32;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r0 = gid.y * RB;
    let c0 = gid.x * CB;
    if (r0 >= M || c0 >= N) { return; }
    chunk = gid.z;
    let k0 = gid.z * KC;
    let k1 = min(K, k0 + min(KC, K));
    // Rows and columns past the edge are clamped (computed twice, never stored): no branches
    // in the inner loop.
    var ri: array<u32, RB>;
    for (var r = 0u; r < RB; r++) { ri[r] = min(r0 + r, M - 1u); }
    var cj: array<u32, CB>;
    for (var c = 0u; c < CB; c++) { cj[c] = min(c0 + c, N - 1u); }
    var acc: array<f32, 32>; // RB·CB
    for (var k = k0; k < k1; k++) {
        var a: array<f32, RB>;
        for (var r = 0u; r < RB; r++) { a[r] = load_a(ri[r], k); }
        for (var c = 0u; c < CB; c++) {
            let b = load_b(k, cj[c]);
            for (var r = 0u; r < RB; r++) { acc[r * CB + c] = fma(a[r], b, acc[r * CB + c]); }
        }
    }
    for (var r = 0u; r < RB; r++) {
        for (var c = 0u; c < CB; c++) {
            if (r0 + r < M && c0 + c < N) { store(r0 + r, c0 + c, acc[r * CB + c]); }
        }
    }
}
