// Layer kernels of the forward shape, out = IN·W̃_l (B × n_l), one per layer and sweep:
//   MODE 0, forward at x₀:       z = IN·W̃ + b;  hidden: Z ← z, A ← f(z);  output: PSI ← z
//   MODE 1, difference x₁ − x₀:  Δz = ΔIN·W̃;    hidden: ZD ← Δz, AD ← f(z+Δz) − f(z) (dact);
//                                                 output: DPSI ← Δψ
//   MODE 2, tangent along v:     ż = ȦIN·W̃ (hidden only): TZ ← ż, TA ← ȧ = f′(z)ż,
//                                 Q ← c₁Δa + ȧ, R ← c₁Δa   (left factors of the ∂W sum)
// K = n_{l−1}, N = n_l, M = B.

override BIAS_OFF: u32 = 0u;  // b_l in theta
override HIDDEN: bool = true; // layer l < L (else the output layer ψ)
override O_Z: u32 = 0u;
override O_A: u32 = 0u;
override O_ZD: u32 = 0u;
override O_AD: u32 = 0u;
override O_TZ: u32 = 0u;
override O_TA: u32 = 0u;
override O_Q: u32 = 0u;
override O_R: u32 = 0u;
override O_C1: u32 = 0u;      // per-sample c₁ (B)
override O_OUT: u32 = 0u;     // output layer: PSI (mode 0) or DPSI (mode 1), B × D

fn load_b(k: u32, j: u32) -> f32 { return theta[W_OFF + k * N + j]; }

fn store(i: u32, j: u32, v: f32) {
    let y = v * scale;
    let e = i * N + j;
    if (!HIDDEN) {
        ws[O_OUT + e] = select(y, y + theta[BIAS_OFF + j], MODE == 0u);
        return;
    }
    switch MODE {
        case 0u: {
            let z = y + theta[BIAS_OFF + j];
            ws[O_Z + e] = z;
            ws[O_A + e] = act(z);
        }
        case 1u: {
            ws[O_ZD + e] = y;
            ws[O_AD + e] = dact(ws[O_Z + e], y);
        }
        default: {
            let ta = act1(ws[O_Z + e]) * y;
            let c1da = ws[O_C1 + i] * ws[O_AD + e];
            ws[O_TZ + e] = y;
            ws[O_TA + e] = ta;
            ws[O_Q + e] = c1da + ta;
            ws[O_R + e] = c1da;
        }
    }
}
