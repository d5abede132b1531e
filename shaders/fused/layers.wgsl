// The layer sweeps of the fused step: what the matmul cores (src/fused/core.rs) load and
// store for a `Sweep` (one product with W̃_l and its epilogue) or a `GradSweep` (one layer's
// gradient sums). Each is a function of its descriptor, which every kernel gets as a WGSL
// `const`, so the branches on it fold away when the driver compiles the kernel.
//
// Forward, out = in·W̃_l (rows × n_l), K = n_{l−1} (or d of the conditional energy's d + dc):
//   VALUE, at ỹ₀:          z = in·W̃ + b;  hidden: z, a ← f(z);  output: ψ ← z
//   DIFF, ỹ₁ − ỹ₀:         Δz = Δin·W̃;    hidden: zd ← Δz, ad ← f(z+Δz) − f(z) (dact);
//                                           output: Δψ
//   ADJOINT, tangent on ṽ: ż = ȧin·W̃ (hidden only): tz ← ż, ta ← ȧ = f′(z)ż,
//                           q ← c₁Δa + ȧ, r ← c₁Δa   (left factors of the ∂W sum)
// Backward, out = in·W̃_lᵀ (rows × n_{l−1}, the target layer l − 1, or the input), K = n_l:
//   VALUE (cotangent ỹ₀ on ψ):  δa = in·W̃ᵀ;  hidden: da ← δa, dz ← δz = δa·f′(z);
//                                             input: g ← s·(ψ + δa)  (data coordinates)
//   DIFF:                      Δδa = Δin·W̃ᵀ; hidden: ddz ← Δδz = Δδa·f′(z+Δz) + δa·(f′(z+Δz) − f′(z));
//                                             input: Δg ← s·(Δψ + Δδa)
//   ADJOINT of the v-path:     ρa = in·W̃ᵀ (hidden only): rho ← ρ = ρa·f′(z) + ż·δa·f″(z),
//                                             p ← c₁Δδz + (c₁+c₀)δz + ρ

var<workgroup> wgw: array<f32, WGW_LEN>;   // the tile shape's copy of the weights (or 1 word)

fn sweep_load_a(s: Sweep, i: u32, k: u32) -> f32 { return ws[s.input + i * s.in_stride + k]; }

fn fwd_load_b(s: Sweep, k: u32, j: u32) -> f32 {
    // W_l[k][j] (n = fan_out columns).
    if (s.wg_weights == 1u) { return wgw[s.wg_w_off + k * s.n + j]; }
    return theta[s.w_off + k * s.n + j];
}

fn bwd_load_b(s: Sweep, k: u32, j: u32) -> f32 {
    // W_l[j][k] (k < K = fan_out), or Wᵀ_l[k][j] from the transposed copy.
    if (s.wg_weights == 1u) { return wgw[s.wg_w_off + j * s.k + k]; }
    if (s.wt == 1u) { return ws[IO.wt + s.w_off + k * s.wt_stride + j]; }
    return theta[s.w_off + j * s.k + k];
}

fn fwd_store(s: Sweep, i: u32, j: u32, v: f32, scale: f32) {
    let y = v * scale;
    let e = i * s.n + j;
    if (s.hidden == 0u) {
        ws[s.out + e] = select(y, y + theta[s.b_off + j], s.mode == MODE_VALUE);
        return;
    }
    switch s.mode {
        case MODE_VALUE: {
            let z = y + theta[s.b_off + j];
            ws[s.z + e] = z;
            ws[s.a + e] = act(z);
        }
        case MODE_DIFF: {
            ws[s.zd + e] = y;
            ws[s.ad + e] = dact(ws[s.z + e], y);
        }
        default: {
            let ta = act1(ws[s.z + e]) * y;
            let c1da = ws[IO.c1 + i] * ws[s.ad + e];
            ws[s.tz + e] = y;
            ws[s.ta + e] = ta;
            ws[s.q + e] = c1da + ta;
            ws[s.r + e] = c1da;
        }
    }
}

fn bwd_store(s: Sweep, i: u32, j: u32, v: f32, scale: f32) {
    let y = v * scale;
    let e = i * s.n + j;
    if (s.hidden == 0u) {
        ws[s.out + e] = (ws[s.psi + e] + y) * IO.scale;
        return;
    }
    let z = ws[s.z + e];
    switch s.mode {
        case MODE_VALUE: {
            ws[s.da + e] = y;
            ws[s.dz + e] = y * act1(z);
        }
        case MODE_DIFF: {
            let h = ws[s.zd + e];
            ws[s.ddz + e] = y * act1(z + h) + ws[s.da + e] * dact1(z, h);
        }
        default: {
            let rho = y * act1(z) + ws[s.tz + e] * ws[s.da + e] * act2(z);
            let c0 = ws[IO.c0 + i];
            let c1 = ws[IO.c1 + i];
            ws[s.rho + e] = rho;
            ws[s.p + e] = c1 * ws[s.ddz + e] + (c1 + c0) * ws[s.dz + e] + rho;
        }
    }
}

// Parameter gradient of one layer, as one product over the rows (the paper's loss as a sum of
// outer products, each of O(1) factors — see src/fused/mod.rs):
//   ∂W̃_l = [a; q; r]ᵀ_{l−1} · [p; dz; ddz]_l,   ∂b_l = Σ p_l,
// block kb = 0, 1, 2 of both factors at stream row `row`. Row m − 1 of the output is the bias:
// its left factor is 1 on the p rows and 0 elsewhere; q and r of layer 1 are d wide (the
// condition columns have no move and no cotangent).
fn grad_load_a(s: GradSweep, i: u32, kb: u32, row: u32) -> f32 {
    // Branch-free in i (it differs between lanes): one load at a clamped column, then select.
    if (kb == 0u) {
        let x = ws[s.left + row * s.left_stride + min(i, s.m - 2u)];
        return select(x, 1.0, i == s.m - 1u);
    }
    let x = ws[select(s.left_r, s.left_q, kb == 1u) + row * s.qr_width + min(i, s.qr_width - 1u)];
    return select(0.0, x, i < s.qr_width);
}

fn grad_load_b(s: GradSweep, kb: u32, row: u32, j: u32) -> f32 {
    return ws[s.right + (kb * s.rows + row) * s.n + j];
}

// Where element (i, j) of the gradient lives in theta's layout.
fn grad_index(s: GradSweep, i: u32, j: u32) -> u32 {
    return select(s.w_off + i * s.n + j, s.b_off + j, i == s.m - 1u);
}

// Into partial-sum slot `slot`: the first contribution of a step writes, later ones add
// (`first` is a select, not a branch: it may come from the uniform block).
fn grad_store(s: GradSweep, i: u32, j: u32, v: f32, slot: u32, first: bool) {
    let at = IO.part + slot * IO.theta_len + grad_index(s, i, j);
    ws[at] = select(ws[at], 0.0, first) + v;
}
