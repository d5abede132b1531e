// The per-sample parts of the fused step, one call per sample (a workspace row): the input
// rows and noise, the Langevin step, the energy difference and loss, the cotangent v of g, and
// the per-sample dots of the gradient through σ. Called by the layers shape's row kernels
// (one invocation per row) and by the tile kernel (its tile's rows). Data coordinates (y, g, ξ,
// Δy, v) are the energy's variable; the network sees ỹ = s·y (IO.scale), the streams x0, dx and
// v hold ỹ₀, Δỹ and ṽ = s·v.
//
// No function here branches on the uniform block `st`: lavapipe recompiles a shader for every
// new value of a uniform that a branch depends on, so live rows are masked with `select`.

fn flag(bit: u32) -> bool { return (st.flags & bit) != 0u; }

// The Philox words of this step's draw `which` (1: minibatch rows, 2: noise). Training
// derives the stream from the device counter: step t draws streams stream_base +
// draws·(t − t_base) + 1 and + 2 (one draw a step: the noise is + 1), the draws rng::Rng
// hands the tape path; evaluation takes the given words.
fn draw_words(which: u32) -> vec4<u32> {
    let k = st.draws * (ctl[CTL_T_IN] - st.t_base) + min(which, st.draws);
    let lo = st.stream_base.x + k;
    let hi = st.stream_base.y + select(0u, 1u, lo < k);
    let counted = vec4<u32>(lo, hi, st.seed.x, st.seed.y);
    return select(select(st.noise_words, st.idx_words, which == 1u), counted, flag(FLAG_TRAIN));
}

// Row `local` of this launch into workspace row i: a drawn minibatch row (element row0 +
// local of the draws) or data row row0 + local (given rows, with a noise draw of its own or
// the given noise). Charts keep the chart form (x, σ) in `ch` and hand the network y(x); the
// Poincaré ball's rows are ball points, one column narrower than the network's y.
fn row_input(i: u32, local: u32, live: bool) {
    let given_rows = flag(FLAG_GIVEN_ROWS);
    let given_noise = flag(FLAG_GIVEN_NOISE);
    let e = select(st.row0 + local, local, given_rows);
    let r = select(philox_index(e, draw_words(1u), st.data_rows), st.row0 + local, given_rows);
    let d = IO.d;
    let dw = IO.dw;
    let noise = draw_words(2u);
    // Rows past the live ones (and the ball's missing column) read a clamped element and
    // keep 0: `select`, not a branch on `live` (which comes from the uniform block).
    let rr = min(r, st.data_rows - 1u);
    for (var c = 0u; c < d; c++) {
        let cc = min(c, dw - 1u);
        let z = select(philox_normal(e * dw + cc, noise), given[rr * dw + cc], given_noise);
        let keep = live && c < dw;
        ws[IO.ch + i * d + c] = select(0.0, data[rr * dw + cc], keep);
        ws[IO.nz + i * d + c] = select(0.0, z, keep);
    }
    for (var c = 0u; c < IO.dc; c++) {
        ws[IO.x0 + i * IO.din + d + c] = select(0.0, cond[r * IO.dc + c], live);
    }
    if (M.sphere == 1u || M.ball == 1u) {
        // y = σ(2x/p, 2/p − 1) with p = 1 + κr: the stereographic point of S^n, the
        // hyperboloid point of H^n (σ = 1 in the ball, whose row has no σ column).
        let n = d - 1u;
        let k = kappa();
        if (M.ball == 1u) { ws[IO.ch + i * d + n] = 1.0; }
        let sg = select(1.0, ws[IO.ch + i * d + n], live);
        let p = 1.0 + k * chart_r(IO.ch + i * d);
        let inv = 1.0 / p;
        for (var c = 0u; c < d; c++) {
            var y = sg * (2.0 * inv - 1.0);
            if (c < n) { y = sg * 2.0 * inv * ws[IO.ch + i * d + c]; }
            set_input(i, c, select(0.0, y, live));
        }
        return;
    }
    for (var c = 0u; c < d; c++) { set_input(i, c, ws[IO.ch + i * d + c]); }
}

// The network's input column c < d of row i: ỹ₀ = s·y₀ (also the right factor x0l of W_L).
fn set_input(i: u32, c: u32, y: f32) {
    let v = IO.scale * y;
    ws[IO.x0 + i * IO.din + c] = v;
    ws[IO.x0l + i * IO.d + c] = v;
}

// Charts (SPEC §5), with κ = 1 on the sphere and κ = −1 in the Poincaré ball, p = 1 + κr,
// r = ‖x‖², n = d − 1 chart coordinates at ws[ox..] and the sign σ at ws[ox + n] (1 in the
// ball): the network sees y = σ(2x/p, 2/p − 1). With a = 2/p: (Jv)ᵢ = σ(a vᵢ − κa² xᵢ x·v),
// (Jv)_n = −σκa² x·v, (Jᵀw)ⱼ = σ(a wⱼ − κa² xⱼ (x·w_head + w_n)); the metric is g = (4/p²)I
// (ν = g⁻¹ = p²/4), ∂ν = κp·x and ∇(½Σ log g) = −2nκ·x/p.
fn chart_r(ox: u32) -> f32 {
    var r = 0.0;
    for (var c = 0u; c < IO.d - 1u; c++) { r += ws[ox + c] * ws[ox + c]; }
    return r;
}

fn kappa() -> f32 { return select(1.0, -1.0, M.ball == 1u); }

// After g: the per-sample step, the noise ξ and the move (SPEC §2 steps 2–4), and E(y₀) =
// ⟨ỹ₀, ψ(ỹ₀)⟩.
fn row_step(i: u32) {
    let d = IO.d;
    var g2 = 0.0;
    var e0 = 0.0;
    for (var c = 0u; c < d; c++) {
        let g = ws[IO.g + i * d + c];
        g2 += g * g;
        e0 += ws[IO.x0 + i * IO.din + c] * ws[IO.psi + i * d + c];
    }
    ws[IO.e0 + i] = e0;
    if (M.sphere == 1u || M.ball == 1u) {
        chart_step(i);
        return;
    }
    var eps = st.eps0;
    if (M.rescale == 1u) { eps = st.eps0 * (1.0 / max(1.0, g2)); }
    let root = sqrt(2.0 * eps);
    for (var c = 0u; c < d; c++) {
        let xi = ws[IO.nz + i * d + c] * root;
        let dy = xi - ws[IO.g + i * d + c] * (0.5 * eps);
        ws[IO.xi + i * d + c] = xi;
        set_move(i, c, dy);
    }
    ws[IO.eps + i] = eps;
}

// The network's move Δỹ = s·Δy in column c of row i (also the right factor dxl of W_L).
fn set_move(i: u32, c: u32, dy: f32) {
    let v = IO.scale * dy;
    ws[IO.dx + i * IO.d + c] = v;
    ws[IO.dxl + i * IO.d + c] = v;
}

// The Riemannian step (SPEC §5, s = ½) in the chart of y₀: with g = ∇_yE,
// h = ½Jᵀg + 2nκ·x/p, drift = −ν·h + κp·x, εᵢ from ‖drift‖², ξ = √(2εᵢν)z, Δx = εᵢ·drift + ξ.
// The network's input moves by Δy = y(x + Δx) − y(x), computed without cancellation from
// Δp = κ(2x·Δx + ‖Δx‖²); the control variate's ∇ₓ(E∘y)·ξ = g·Jξ, so the ξ stream holds Jξ.
fn chart_step(i: u32) {
    let d = IO.d;
    let n = d - 1u;
    let k = kappa();
    let ox = IO.ch + i * d;
    let og = IO.g + i * d;
    let sg = ws[ox + n];
    let r = chart_r(ox);
    let p = 1.0 + k * r;
    let a = 2.0 / p;
    let b = k * a * a;
    let nu = 0.25 * p * p;
    var xg = 0.0; // x·g_head + g_n
    for (var c = 0u; c < n; c++) { xg += ws[ox + c] * ws[og + c]; }
    xg += ws[og + n];
    var d2 = 0.0;
    for (var c = 0u; c < n; c++) {
        let x = ws[ox + c];
        let ge = sg * (a * ws[og + c] - b * x * xg);
        let drift = -nu * (0.5 * ge + 2.0 * f32(n) * k * x / p) + k * p * x;
        ws[IO.dch + i * d + c] = drift;
        d2 += drift * drift;
    }
    var eps = st.eps0;
    if (M.rescale == 1u) { eps = st.eps0 * (1.0 / max(1.0, d2)); }
    let root = sqrt(2.0 * eps * nu);
    var xdx = 0.0;
    var dx2 = 0.0;
    var xxi = 0.0;
    for (var c = 0u; c < n; c++) {
        let x = ws[ox + c];
        let xi = ws[IO.nz + i * d + c] * root;
        let dx = eps * ws[IO.dch + i * d + c] + xi;
        ws[IO.dch + i * d + c] = dx;
        ws[IO.xi + i * d + c] = xi; // chart ξ for now; Jξ below
        xdx += x * dx;
        dx2 += dx * dx;
        xxi += x * xi;
    }
    let dp = k * (2.0 * xdx + dx2);
    let q = 2.0 / (p * (p + dp));
    for (var c = 0u; c < n; c++) {
        let x = ws[ox + c];
        set_move(i, c, sg * (2.0 * ws[IO.dch + i * d + c] / (p + dp) - x * dp * q));
        ws[IO.xi + i * d + c] = sg * (a * ws[IO.xi + i * d + c] - b * x * xxi);
    }
    set_move(i, n, -sg * dp * q);
    ws[IO.xi + i * d + n] = -sg * b * xxi;
    ws[IO.dch + i * d + n] = 0.0;
    ws[IO.eps + i] = eps;
}

// After Δψ: E(y₁) − E(y₀) = Δỹ·ψ(ỹ₁) + ỹ₀·Δψ, the control variate, the per-sample loss
// −ediff/εᵢ (SPEC §2 steps 5–6), and the weights c₀, c₁ of ∂θE(y₀), ∂θE(y₁) in ∂θloss.
fn row_diff(i: u32, live: bool) {
    let d = IO.d;
    var de = 0.0;
    var cv = 0.0;
    for (var c = 0u; c < d; c++) {
        let e = i * d + c;
        let dpsi = ws[IO.dpsi + e];
        de += ws[IO.dx + e] * (ws[IO.psi + e] + dpsi) + ws[IO.x0 + i * IO.din + c] * dpsi;
        cv += ws[IO.g + e] * ws[IO.xi + e];
    }
    let eps = ws[IO.eps + i];
    let e0 = ws[IO.e0 + i];
    let e1 = e0 + de;
    let ediff = select(de, de - cv, M.cv == 1u);
    let w = select(0.0, 1.0, live);
    let inv_b = 1.0 / f32(st.total);
    ws[IO.e1 + i] = e1 * w;
    ws[IO.e0 + i] = e0 * w;
    ws[IO.loss + i] = -ediff / eps * w;
    ws[IO.c1 + i] = (-1.0 / eps + 2.0 * st.reg * e1) * inv_b * w;
    ws[IO.c0 + i] = (1.0 / eps + 2.0 * st.reg * e0) * inv_b * w;
}

// After Δg: v, the cotangent of g (through y₁ and the control variate), and the io factors
// of the gradient sums in network coordinates (ṽ = s·v): Q₀ = c₁Δỹ + ṽ, R₀ = c₁Δỹ,
// P_L = c₁Δỹ + (c₁ + c₀)ỹ₀ + ṽ.
fn row_adj(i: u32, live: bool) {
    let d = IO.d;
    let eps = ws[IO.eps + i];
    let c0 = ws[IO.c0 + i];
    let c1 = ws[IO.c1 + i];
    let cv_w = select(0.0, select(0.0, 1.0, live) / (f32(st.total) * eps), M.cv == 1u);
    if (M.sphere == 1u || M.ball == 1u) {
        // v = J(x₀)·[−½εᵢν·c₁·J(x₁)ᵀ∇_yE(y₁)] + cv·Jξ: x₁ moves with g through the chart.
        let n = d - 1u;
        let k = kappa();
        let ox = IO.ch + i * d;
        let sg = ws[ox + n];
        let p0 = 1.0 + k * chart_r(ox);
        var r1 = 0.0;
        var x1g = 0.0;
        for (var c = 0u; c < n; c++) {
            let x1 = ws[ox + c] + ws[IO.dch + i * d + c];
            r1 += x1 * x1;
            x1g += x1 * (ws[IO.g + i * d + c] + ws[IO.dg + i * d + c]);
        }
        x1g += ws[IO.g + i * d + n] + ws[IO.dg + i * d + n];
        let a1 = 2.0 / (1.0 + k * r1);
        let a0 = 2.0 / p0;
        let w_scale = -0.5 * eps * 0.25 * p0 * p0 * c1;
        // w = w_scale·J(x₁)ᵀg₁ (chart), then v = J(x₀)w; x₀·w first.
        var x0w = 0.0;
        for (var c = 0u; c < n; c++) {
            let x1 = ws[ox + c] + ws[IO.dch + i * d + c];
            let g1 = ws[IO.g + i * d + c] + ws[IO.dg + i * d + c];
            let w = w_scale * sg * (a1 * g1 - k * a1 * a1 * x1 * x1g);
            ws[IO.v + i * d + c] = w;
            x0w += ws[ox + c] * w;
        }
        for (var c = 0u; c < d; c++) {
            let e = i * d + c;
            var v = -sg * k * a0 * a0 * x0w;
            if (c < n) { v = sg * (a0 * ws[IO.v + e] - k * a0 * a0 * ws[ox + c] * x0w); }
            v += cv_w * ws[IO.xi + e];
            set_adjoint(i, c, v, c0, c1);
        }
        return;
    }
    for (var c = 0u; c < d; c++) {
        let e = i * d + c;
        let g1 = ws[IO.g + e] + ws[IO.dg + e];
        set_adjoint(i, c, -0.5 * eps * c1 * g1 + cv_w * ws[IO.xi + e], c0, c1);
    }
}

fn set_adjoint(i: u32, c: u32, v: f32, c0: f32, c1: f32) {
    let e = i * IO.d + c;
    let tv = IO.scale * v;
    let c1dx = c1 * ws[IO.dx + e];
    ws[IO.v + e] = tv;
    ws[IO.q0 + e] = c1dx + tv;
    ws[IO.r0 + e] = c1dx;
    ws[IO.pl + e] = c1dx + (c1 + c0) * ws[IO.x0 + i * IO.din + c] + tv;
}

// Per sample and spectrally normalised layer m: ⟨its ∂W̃_m terms, W_m⟩/σ_m =
// (z−b)·P + (c₁Δz + ż)·δz + c₁Δz·Δδz (each left factor times W is a known stream), so that
// the gradient through σ needs no pass over ∂W̃.
fn row_dots(i: u32) {
    let c1 = ws[IO.c1 + i];
    for (var m = 0u; m < M.nsn; m++) {
        let l = LAYERS[m];
        let n = l.fan_out;
        var s = 0.0;
        for (var j = 0u; j < n; j++) {
            let e = i * n + j;
            let c1zd = c1 * ws[l.zd + e];
            s += (ws[l.z + e] - theta[l.b_off + j]) * ws[l.p + e]
                + (c1zd + ws[l.tz + e]) * ws[l.dz + e]
                + c1zd * ws[l.ddz + e];
        }
        ws[IO.dots + m * IO.rows + i] = s;
    }
}
