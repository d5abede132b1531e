// Layer kernels of the backward shape, out = IN·W̃_lᵀ (B × n_{l−1}), one per layer and sweep,
// from the output layer down. The target layer m = l − 1 is hidden (HIDDEN) or the input:
//   MODE 0, ∇ₓE at x₀ (cotangent x₀ on ψ):  δa = IN·W̃ᵀ;  hidden: DA ← δa, DZ ← δz = δa·f′(z);
//                                            input: G ← g = ψ + δa₀
//   MODE 1, its difference at x₁:           Δδa = ΔIN·W̃ᵀ; hidden: DDZ ← Δδz =
//                                            Δδa·f′(z+Δz) + δa·(f′(z+Δz) − f′(z));
//                                            input: DG ← Δg = Δψ + Δδa₀
//   MODE 2, adjoint of the v-path:          ρa = IN·W̃ᵀ (hidden only): RHO ← ρ =
//                                            ρa·f′(z) + ż·δa·f″(z), P ← c₁Δδz + (c₁+c₀)δz + ρ
// K = n_l, N = n_{l−1}, M = B.

override HIDDEN: bool = true; // target layer m = l − 1 ≥ 1 (else the input, width D)
override O_Z: u32 = 0u;
override O_DA: u32 = 0u;
override O_DZ: u32 = 0u;
override O_ZD: u32 = 0u;
override O_DDZ: u32 = 0u;
override O_TZ: u32 = 0u;
override O_RHO: u32 = 0u;
override O_P: u32 = 0u;
override O_C0: u32 = 0u;
override O_C1: u32 = 0u;
override O_PSI: u32 = 0u;     // input target: ψ (mode 0) or Δψ (mode 1)
override O_OUT: u32 = 0u;     // input target: G (mode 0) or DG (mode 1)

fn load_b(k: u32, j: u32) -> f32 { return theta[W_OFF + j * K + k]; }

fn store(i: u32, j: u32, v: f32) {
    let y = v * scale;
    let e = i * N + j;
    if (!HIDDEN) {
        ws[O_OUT + e] = ws[O_PSI + e] + y;
        return;
    }
    let z = ws[O_Z + e];
    switch MODE {
        case 0u: {
            ws[O_DA + e] = y;
            ws[O_DZ + e] = y * act1(z);
        }
        case 1u: {
            let h = ws[O_ZD + e];
            ws[O_DDZ + e] = y * act1(z + h) + ws[O_DA + e] * dact1(z, h);
        }
        default: {
            let rho = y * act1(z) + ws[O_TZ + e] * ws[O_DA + e] * act2(z);
            let c0 = ws[O_C0 + i];
            let c1 = ws[O_C1 + i];
            ws[O_RHO + e] = rho;
            ws[O_P + e] = c1 * ws[O_DDZ + e] + (c1 + c0) * ws[O_DZ + e] + rho;
        }
    }
}
