// Parameter gradient of one layer, as one product over the batch (the paper's loss as a sum
// of outer products, each of O(1) factors — see src/fused/mod.rs):
//   ∂W̃_l = [a₀; Q; R]ᵀ_{l−1} · [P; δz; Δδz]_l,   ∂b_l = Σ P_l,
// where the left block (3B × n_{l−1}) and right block (3B × n_l) are contiguous streams. Row
// n_{l−1} of the output is the bias: its left factor is 1 on the P rows and 0 elsewhere.
// K = 3B is split into chunks (KC rows, workgroup z): each writes its partial sums at
// PART + chunk·THETA_LEN in theta's layout (adding to them for a minibatch processed in
// several sub-batches); the update kernel adds the chunks up.
// M = n_{l−1} + 1, N = n_l.

override LEFT: u32 = 0u;
override RIGHT: u32 = 0u;
override W_OFF: u32 = 0u;
override BIAS_OFF: u32 = 0u;
override PART: u32 = 0u;
override THETA_LEN: u32 = 0u;

fn load_a(i: u32, k: u32) -> f32 {
    if (i == M - 1u) { return select(0.0, 1.0, k < B); }
    return ws[LEFT + k * (M - 1u) + i];
}
fn load_b(k: u32, j: u32) -> f32 { return ws[RIGHT + k * N + j]; }

fn setup() {}

fn store(i: u32, j: u32, v: f32) {
    let at = PART + chunk * THETA_LEN + select(W_OFF + i * N + j, BIAS_OFF + j, i == M - 1u);
    // Sub-batches after the first add to the partial sums (select, not a branch: lavapipe
    // recompiles shaders that branch on a uniform that changes).
    ws[at] = select(0.0, ws[at], st.acc == 1u) + v;
}
