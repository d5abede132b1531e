// The per-sample kernels of the fused step (one invocation per sample, a loop over the D
// columns), the cross-sample sums, the parameter update and the power iteration. Entry
// points in the order a step runs them; src/fused/mod.rs has the whole list.

override ROWS_WG: u32 = 64u;
// io streams (B × D) and per-sample scalars (B)
override O_X0: u32 = 0u;   // x₀ (left factor of W₁'s gradient: [x₀; Q₀; R₀])
override O_X0L: u32 = 0u;  // x₀ again (right factor of W_L's gradient: [P_L; x₀; Δx])
override O_NZ: u32 = 0u;   // standard-normal draw z
override O_G: u32 = 0u;    // g = ∇ₓE(x₀)
override O_PSI: u32 = 0u;  // ψ(x₀)
override O_DPSI: u32 = 0u; // ψ(x₁) − ψ(x₀)
override O_DG: u32 = 0u;   // ∇ₓE(x₁) − g
override O_XI: u32 = 0u;   // ξ = √(2εᵢ)·z
override O_DX: u32 = 0u;   // Δx = x₁ − x₀
override O_DXL: u32 = 0u;  // Δx again (in [P_L; x₀; Δx])
override O_V: u32 = 0u;    // v, the cotangent of g
override O_CH: u32 = 0u;   // sphere: the chart form (x, σ) of x₀ (the stream x₀ holds y(x))
override O_DCH: u32 = 0u;  // sphere: the chart move Δx (the stream Δx holds Δy)
override O_Q0: u32 = 0u;
override O_R0: u32 = 0u;
override O_PL: u32 = 0u;
override O_EPS: u32 = 0u;  // εᵢ
override O_E0: u32 = 0u;
override O_E1: u32 = 0u;
override O_LOSS: u32 = 0u; // per-sample −ediff/εᵢ
override O_C0: u32 = 0u;   // weight of ∂θE(x₀) in the loss gradient
override O_C1: u32 = 0u;   // weight of ∂θE(x₁)
override O_DOTS: u32 = 0u; // per SN layer and sample: ⟨∂W̃ contribution, W⟩/σ
override O_OUT: u32 = 0u;  // [loss, mean E₀, mean E₁, mean acceptance]
// the layer table in sn, META_STRIDE words per layer (see src/fused/plan.rs)
override META: u32 = 0u;
override NL: u32 = 1u;     // layers
override NSN: u32 = 0u;    // spectrally normalised layers (the hidden layers 1..NSN)
override PART: u32 = 0u;
override CHUNKS: u32 = 1u;
override THETA_LEN: u32 = 0u;
override O_GRAD: u32 = 0u;
override OPT: u32 = 0u;    // optimiser rule code (optim_lib.wgsl)
const META_STRIDE: u32 = 16u;

fn layer_info(l: u32, field: u32) -> u32 { return bitcast<u32>(sn[META + (l - 1u) * META_STRIDE + field]); }

// Minibatch rows (a Philox draw, or rows row0.. of the data) and the noise draw. Three entry
// points with the choices as literals: lavapipe recompiles a shader whenever a uniform it
// branches on changes, so modes are pipelines, not flags.
fn input(i: u32, given_rows: bool, given_noise: bool) {
    if (i >= B) { return; }
    let live = i < st.rows;
    var r = 0u;
    // Row i of this launch is row row0 + i of a drawn minibatch (its index and its noise are
    // those elements of the draws), or row row0 + i of the data (with a per-launch noise draw).
    var e = st.row0 + i;
    if (given_rows) { r = st.row0 + i; e = i; } else { r = philox_index(e, st.idx_words, st.data_rows); }
    // Data rows are D wide, D − 1 in the Poincaré ball (the network adds the hyperboloid's
    // last coordinate).
    let dw = select(D, D - 1u, BALL);
    for (var c = 0u; c < D; c++) {
        var x = 0.0;
        var z = 0.0;
        if (live && c < dw) {
            x = data[r * dw + c];
            if (given_noise) { z = given[r * dw + c]; } else { z = philox_normal(e * dw + c, st.noise_words); }
        }
        ws[O_X0 + i * D + c] = x;
        ws[O_X0L + i * D + c] = x;
        ws[O_NZ + i * D + c] = z;
    }
    if (BALL) {
        // The row is the ball point x: keep it (σ = 1 in the last slot), give the network
        // y = (2x/(1−r), (1+r)/(1−r)).
        let n = D - 1u;
        var r2 = 0.0;
        for (var c = 0u; c < n; c++) {
            let x = ws[O_X0 + i * D + c];
            ws[O_CH + i * D + c] = x;
            r2 += x * x;
        }
        ws[O_CH + i * D + n] = 1.0;
        let inv = 1.0 / (1.0 - r2);
        for (var c = 0u; c < D; c++) {
            var y = 2.0 * inv - 1.0;
            if (c < n) { y = 2.0 * inv * ws[O_CH + i * D + c]; }
            y = select(0.0, y, live);
            ws[O_X0 + i * D + c] = y;
            ws[O_X0L + i * D + c] = y;
        }
    }
    if (SPHERE) {
        // The row is the chart form (x, σ): keep it, and give the network y(x).
        let n = D - 1u;
        var r2 = 0.0;
        for (var c = 0u; c < D; c++) { ws[O_CH + i * D + c] = ws[O_X0 + i * D + c]; }
        for (var c = 0u; c < n; c++) { let x = ws[O_CH + i * D + c]; r2 += x * x; }
        let sg = select(1.0, ws[O_CH + i * D + n], live);
        let inv = 1.0 / (1.0 + r2);
        for (var c = 0u; c < D; c++) {
            var y = sg * (2.0 * inv - 1.0);
            if (c < n) { y = sg * 2.0 * inv * ws[O_CH + i * D + c]; }
            y = select(0.0, y, live);
            ws[O_X0 + i * D + c] = y;
            ws[O_X0L + i * D + c] = y;
        }
    }
}

// Charts (SPEC §5), with κ = 1 on the sphere and κ = −1 in the Poincaré ball, p = 1 + κr,
// r = ‖x‖², n = D − 1 chart coordinates at ws[ox..] and the sign σ at ws[ox + n] (1 in the
// ball): the network sees y = σ(2x/p, 2/p − 1) — the stereographic point on S^n, the
// hyperboloid point of H^n. With a = 2/p: (Jv)ᵢ = σ(a vᵢ − κa² xᵢ x·v), (Jv)_n = −σκa² x·v,
// (Jᵀw)ⱼ = σ(a wⱼ − κa² xⱼ (x·w_head + w_n)); the metric is g = (4/p²)I (ν = g⁻¹ = p²/4),
// ∂ν = κp·x and ∇(½Σ log g) = −2nκ·x/p.
fn chart_r(ox: u32) -> f32 {
    var r = 0.0;
    for (var c = 0u; c < D - 1u; c++) { r += ws[ox + c] * ws[ox + c]; }
    return r;
}

fn kappa() -> f32 { return select(1.0, -1.0, BALL); }

@compute @workgroup_size(ROWS_WG)
fn rows_input_drawn(@builtin(global_invocation_id) gid: vec3<u32>) { input(gid.x, false, false); }
@compute @workgroup_size(ROWS_WG)
fn rows_input_given(@builtin(global_invocation_id) gid: vec3<u32>) { input(gid.x, true, false); }
@compute @workgroup_size(ROWS_WG)
fn rows_input_given_noise(@builtin(global_invocation_id) gid: vec3<u32>) { input(gid.x, true, true); }

// After g: the per-sample step, the noise ξ and the move Δx (SPEC §2 steps 2–4), and E(x₀).
@compute @workgroup_size(ROWS_WG)
fn rows_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= B) { return; }
    var g2 = 0.0;
    var e0 = 0.0;
    for (var c = 0u; c < D; c++) {
        let g = ws[O_G + i * D + c];
        g2 += g * g;
        e0 += ws[O_X0 + i * D + c] * ws[O_PSI + i * D + c];
    }
    if (SPHERE || BALL) {
        chart_step(i, e0);
        return;
    }
    var eps = EPS0;
    if (RESCALE) { eps = EPS0 * (1.0 / max(1.0, g2)); }
    let root = sqrt(2.0 * eps);
    for (var c = 0u; c < D; c++) {
        let xi = ws[O_NZ + i * D + c] * root;
        let dx = xi - ws[O_G + i * D + c] * (0.5 * eps);
        ws[O_XI + i * D + c] = xi;
        ws[O_DX + i * D + c] = dx;
        ws[O_DXL + i * D + c] = dx;
    }
    ws[O_EPS + i] = eps;
    ws[O_E0 + i] = e0;
}

// The Riemannian step (SPEC §5, s = ½) in the chart of x₀: with g = ∇_yE,
// h = ½Jᵀg + 2nκ·x/p, drift = −ν·h + κp·x, εᵢ from ‖drift‖², ξ = √(2εᵢν)z, Δx = εᵢ·drift + ξ.
// The network's input moves by Δy = y(x + Δx) − y(x), computed without cancellation from
// Δp = κ(2x·Δx + ‖Δx‖²); the control variate's ∇ₓ(E∘y)·ξ = g·Jξ, so the ξ stream holds Jξ.
fn chart_step(i: u32, e0: f32) {
    let n = D - 1u;
    let k = kappa();
    let ox = O_CH + i * D;
    let sg = ws[ox + n];
    let r = chart_r(ox);
    let p = 1.0 + k * r;
    let a = 2.0 / p;
    let b = k * a * a;
    let nu = 0.25 * p * p;
    var xg = 0.0; // x·g_head + g_n
    for (var c = 0u; c < n; c++) { xg += ws[ox + c] * ws[O_G + i * D + c]; }
    xg += ws[O_G + i * D + n];
    var d2 = 0.0;
    for (var c = 0u; c < n; c++) {
        let x = ws[ox + c];
        let ge = sg * (a * ws[O_G + i * D + c] - b * x * xg);
        let drift = -nu * (0.5 * ge + 2.0 * f32(n) * k * x / p) + k * p * x;
        ws[O_DCH + i * D + c] = drift;
        d2 += drift * drift;
    }
    var eps = EPS0;
    if (RESCALE) { eps = EPS0 * (1.0 / max(1.0, d2)); }
    let root = sqrt(2.0 * eps * nu);
    var xdx = 0.0;
    var dx2 = 0.0;
    var xxi = 0.0;
    for (var c = 0u; c < n; c++) {
        let x = ws[ox + c];
        let xi = ws[O_NZ + i * D + c] * root;
        let dx = eps * ws[O_DCH + i * D + c] + xi;
        ws[O_DCH + i * D + c] = dx;
        ws[O_XI + i * D + c] = xi; // chart ξ for now; Jξ below
        xdx += x * dx;
        dx2 += dx * dx;
        xxi += x * xi;
    }
    let dp = k * (2.0 * xdx + dx2);
    let q = 2.0 / (p * (p + dp));
    for (var c = 0u; c < n; c++) {
        let x = ws[ox + c];
        let dy = sg * (2.0 * ws[O_DCH + i * D + c] / (p + dp) - x * dp * q);
        ws[O_DX + i * D + c] = dy;
        ws[O_DXL + i * D + c] = dy;
        ws[O_XI + i * D + c] = sg * (a * ws[O_XI + i * D + c] - b * x * xxi);
    }
    let dyn_ = -sg * dp * q;
    ws[O_DX + i * D + n] = dyn_;
    ws[O_DXL + i * D + n] = dyn_;
    ws[O_XI + i * D + n] = -sg * b * xxi;
    ws[O_DCH + i * D + n] = 0.0;
    ws[O_EPS + i] = eps;
    ws[O_E0 + i] = e0;
}

// After Δψ: E(x₁) − E(x₀) = Δx·ψ(x₁) + x₀·Δψ, the control variate, the per-sample loss
// −ediff/εᵢ (SPEC §2 steps 5–6), and the weights c₀, c₁ of ∂θE(x₀), ∂θE(x₁) in ∂θloss.
@compute @workgroup_size(ROWS_WG)
fn rows_diff(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= B) { return; }
    var de = 0.0;
    var cv = 0.0;
    for (var c = 0u; c < D; c++) {
        let e = i * D + c;
        let dpsi = ws[O_DPSI + e];
        de += ws[O_DX + e] * (ws[O_PSI + e] + dpsi) + ws[O_X0 + e] * dpsi;
        cv += ws[O_G + e] * ws[O_XI + e];
    }
    let eps = ws[O_EPS + i];
    let e0 = ws[O_E0 + i];
    let e1 = e0 + de;
    let ediff = select(de, de - cv, CV);
    let live = select(0.0, 1.0, i < st.rows);
    let inv_b = 1.0 / f32(st.total);
    ws[O_E1 + i] = e1;
    ws[O_LOSS + i] = -ediff / eps * live;
    ws[O_C1 + i] = (-1.0 / eps + 2.0 * REG * e1) * inv_b * live;
    ws[O_C0 + i] = (1.0 / eps + 2.0 * REG * e0) * inv_b * live;
}

// After Δg: v, the cotangent of g (through x₁ and the control variate), and the io factors
// of the gradient sums: Q₀ = c₁Δx + v, R₀ = c₁Δx, P_L = c₁Δx + (c₁ + c₀)x₀ + v.
@compute @workgroup_size(ROWS_WG)
fn rows_adj(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= B) { return; }
    let eps = ws[O_EPS + i];
    let c0 = ws[O_C0 + i];
    let c1 = ws[O_C1 + i];
    let live = select(0.0, 1.0, i < st.rows);
    let cv_w = select(0.0, live / (f32(st.total) * eps), CV);
    if (SPHERE || BALL) {
        // v = J(x₀)·[−½εᵢν·c₁·J(x₁)ᵀ∇_yE(y₁)] + cv·Jξ: x₁ moves with g through the chart.
        let n = D - 1u;
        let k = kappa();
        let ox = O_CH + i * D;
        let sg = ws[ox + n];
        let p0 = 1.0 + k * chart_r(ox);
        var r1 = 0.0;
        var x1g = 0.0;
        for (var c = 0u; c < n; c++) {
            let x1 = ws[ox + c] + ws[O_DCH + i * D + c];
            r1 += x1 * x1;
            x1g += x1 * (ws[O_G + i * D + c] + ws[O_DG + i * D + c]);
        }
        x1g += ws[O_G + i * D + n] + ws[O_DG + i * D + n];
        let a1 = 2.0 / (1.0 + k * r1);
        let a0 = 2.0 / p0;
        let w_scale = -0.5 * eps * 0.25 * p0 * p0 * c1;
        // w = w_scale·J(x₁)ᵀg₁ (chart), then v = J(x₀)w; x₀·w first.
        var x0w = 0.0;
        for (var c = 0u; c < n; c++) {
            let x1 = ws[ox + c] + ws[O_DCH + i * D + c];
            let g1 = ws[O_G + i * D + c] + ws[O_DG + i * D + c];
            let w = w_scale * sg * (a1 * g1 - k * a1 * a1 * x1 * x1g);
            ws[O_V + i * D + c] = w;
            x0w += ws[ox + c] * w;
        }
        for (var c = 0u; c < D; c++) {
            let e = i * D + c;
            var v = -sg * k * a0 * a0 * x0w;
            if (c < n) { v = sg * (a0 * ws[O_V + e] - k * a0 * a0 * ws[ox + c] * x0w); }
            v += cv_w * ws[O_XI + e];
            let c1dx = c1 * ws[O_DX + e];
            ws[O_V + e] = v;
            ws[O_Q0 + e] = c1dx + v;
            ws[O_R0 + e] = c1dx;
            ws[O_PL + e] = c1dx + (c1 + c0) * ws[O_X0 + e] + v;
        }
        return;
    }
    for (var c = 0u; c < D; c++) {
        let e = i * D + c;
        let g1 = ws[O_G + e] + ws[O_DG + e];
        let v = -0.5 * eps * c1 * g1 + cv_w * ws[O_XI + e];
        let c1dx = c1 * ws[O_DX + e];
        ws[O_V + e] = v;
        ws[O_Q0 + e] = c1dx + v;
        ws[O_R0 + e] = c1dx;
        ws[O_PL + e] = c1dx + (c1 + c0) * ws[O_X0 + e] + v;
    }
}

// Per sample and spectrally normalised layer m: ⟨its ∂W̃_m terms, W_m⟩/σ_m =
// (z−b)·P + (c₁Δz + ż)·δz + c₁Δz·Δδz (each left factor times W is a known stream), so that
// the gradient through σ needs no pass over ∂W̃.
@compute @workgroup_size(ROWS_WG)
fn rows_dots(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= B) { return; }
    let c1 = ws[O_C1 + i];
    for (var m = 1u; m <= NSN; m++) {
        let n = layer_info(m, 1u);
        let bias = layer_info(m, 3u);
        let oz = layer_info(m, 8u);
        let op = layer_info(m, 9u);
        let odz = layer_info(m, 10u);
        let ozd = layer_info(m, 11u);
        let otz = layer_info(m, 12u);
        let oddz = layer_info(m, 13u);
        var s = 0.0;
        for (var j = 0u; j < n; j++) {
            let e = i * n + j;
            let c1zd = c1 * ws[ozd + e];
            s += (ws[oz + e] - theta[bias + j]) * ws[op + e]
                + (c1zd + ws[otz + e]) * ws[odz + e]
                + c1zd * ws[oddz + e];
        }
        ws[O_DOTS + (m - 1u) * B + i] = s;
    }
}

// Σ over samples in blocks of 64 (error O(64 + B/64) ulp instead of O(B)).
fn blocked_sum(base: u32, n: u32, square: bool) -> f32 {
    var total = 0.0;
    for (var b0 = 0u; b0 < n; b0 += 64u) {
        var s = 0.0;
        for (var i = b0; i < min(n, b0 + 64u); i++) {
            let x = ws[base + i];
            s += select(x, x * x, square);
        }
        total += s;
    }
    return total;
}

// Thread 0: the loss (mean + regulariser) and the mean energies; thread m: ⟨∂W̃_m, W_m⟩.
// Over the whole minibatch: a sub-batch after the first (st.acc = 1) adds its part.
@compute @workgroup_size(64)
fn sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.x;
    let n = st.rows;
    let t = f32(st.total);
    let keep = st.acc == 1u;
    if (q == 0u) {
        let mean = blocked_sum(O_LOSS, n, false) / t;
        var reg = 0.0;
        if (REG > 0.0) { reg = REG * (blocked_sum(O_E1, n, true) + blocked_sum(O_E0, n, true)) / t; }
        ws[O_OUT] = select(0.0, ws[O_OUT], keep) + mean + reg;
        ws[O_OUT + 1u] = select(0.0, ws[O_OUT + 1u], keep) + blocked_sum(O_E0, n, false) / t;
        ws[O_OUT + 2u] = select(0.0, ws[O_OUT + 2u], keep) + blocked_sum(O_E1, n, false) / t;
    } else if (q <= NSN) {
        let sigma = sn[layer_info(q, 4u)];
        let slot = layer_info(q, 7u);
        sn[slot] = select(0.0, sn[slot], keep) + sigma * blocked_sum(O_DOTS + (q - 1u) * B, B, false);
    }
}

// One invocation per entry of theta: add up the chunks of the gradient, apply the chain rule
// through σ (∂W = ∂W̃/σ − ⟨∂W̃, W⟩/σ²·vᵀu, SPEC §7), keep the gradient, and with `train`
// step the optimiser.
fn update_at(e: u32, train: bool) {
    if (e >= THETA_LEN) { return; }
    var layer = 0u;
    var weight = false;
    for (var l = 1u; l <= NL; l++) {
        let size = layer_info(l, 0u) * layer_info(l, 1u);
        if (e >= layer_info(l, 2u) && e < layer_info(l, 2u) + size) { layer = l; weight = true; }
        if (e >= layer_info(l, 3u) && e < layer_info(l, 3u) + layer_info(l, 1u)) { layer = l; }
    }
    if (layer == 0u) { return; } // alignment padding
    var g = 0.0;
    for (var c = 0u; c < CHUNKS; c++) { g += ws[PART + c * THETA_LEN + e]; }
    let slot = layer_info(layer, 4u);
    if (weight && slot != NONE) {
        let fo = layer_info(layer, 1u);
        let k = e - layer_info(layer, 2u);
        let s = 1.0 / sn[slot];
        let vu = sn[layer_info(layer, 6u) + k / fo] * sn[layer_info(layer, 5u) + k % fo];
        g = g * s - sn[layer_info(layer, 7u)] * s * s * vu;
    }
    ws[O_GRAD + e] = g;
    if (train) {
        let r = opt_step(OPT, g, theta[e], s1[e], s2[e], vec4<f32>(st.lr, st.rho, st.opt_eps, st.f3), st.bc1, st.bc2);
        theta[e] = r.x;
        s1[e] = r.y;
        s2[e] = r.z;
    }
}

@compute @workgroup_size(256)
fn update_train(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    update_at(gid.y * nwg.x * 256u + gid.x, true);
}
@compute @workgroup_size(256)
fn update_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    update_at(gid.y * nwg.x * 256u + gid.x, false);
}

// Spectral norm (SPEC §7), one workgroup per normalised layer: v = normalize(u·Wᵀ); with
// `iterate` (training) u ← normalize(v·W); σ = (v·W)·u. Layer table fields: 0 fan_in,
// 1 fan_out, 2 W offset, 4 σ slot, 5 u, 6 v, 14 scratch (fan_in + fan_out words).
fn spectral_norm(t: u32, l: u32, iterate: bool) {
    let fi = layer_info(l, 0u);
    let fo = layer_info(l, 1u);
    let w = layer_info(l, 2u);
    let ou = layer_info(l, 5u);
    let ov = layer_info(l, 6u);
    let tv = layer_info(l, 14u);
    let tu = tv + fi;
    for (var a = t; a < fi; a += 64u) {
        var s = 0.0;
        for (var b = 0u; b < fo; b++) { s += theta[w + a * fo + b] * sn[ou + b]; }
        sn[tv + a] = s;
    }
    storageBarrier();
    var nv = 0.0;
    for (var a = 0u; a < fi; a++) { nv += sn[tv + a] * sn[tv + a]; }
    nv = sqrt(nv + 1e-24);
    for (var b = t; b < fo; b += 64u) {
        var s = 0.0;
        for (var a = 0u; a < fi; a++) { s += (sn[tv + a] / nv) * theta[w + a * fo + b]; }
        sn[tu + b] = s;
    }
    storageBarrier();
    var nu = 1.0;
    if (iterate) {
        nu = 0.0;
        for (var b = 0u; b < fo; b++) { nu += sn[tu + b] * sn[tu + b]; }
        nu = sqrt(nu + 1e-24);
    }
    var sigma = 0.0;
    for (var b = 0u; b < fo; b++) {
        let u = select(sn[ou + b], sn[tu + b] / nu, iterate);
        sigma += sn[tu + b] * u;
    }
    storageBarrier();
    for (var a = t; a < fi; a += 64u) { sn[ov + a] = sn[tv + a] / nv; }
    if (iterate) {
        for (var b = t; b < fo; b += 64u) { sn[ou + b] = sn[tu + b] / nu; }
    }
    if (t == 0u) { sn[layer_info(l, 4u)] = sigma; }
}

@compute @workgroup_size(64)
fn power_iteration(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    spectral_norm(t, wid.x + 1u, true);
}
@compute @workgroup_size(64)
fn sigma_stored(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    spectral_norm(t, wid.x + 1u, false);
}
