// One optimiser step on one parameter value: returns (parameter, s1, s2).
// code 0: RMSProp, TensorFlow 1 semantics (ε inside the root)    s1 = mean square, s2 = momentum
// code 1: RMSProp, PyTorch semantics (ε outside the root)        s1 = square avg,  s2 = momentum
// code 2: Adam                                                   s1 = m,           s2 = v
// f = (learning rate, decay ρ / α / β₁, ε, momentum or Adam's β₂); bc1, bc2 = Adam's bias
// corrections 1/(1 − β₁ᵗ), 1/(1 − β₂ᵗ). The f64 twin is optim::Optimizer::reference_step.
// Where keeps_s2 is false the caller passes s2 = 0 and drops r.z.
// Whether the rule reads and writes s2. RMSProp without momentum does not: its buffer would
// be overwritten every step and never read (it stays at its initial 0), which saves two of
// the update's seven memory accesses per element.
// Adam's bias correction 1/(1 − βᵗ) at step t (1-based) from ln β, without the cancellation
// of 1 − exp(t ln β) for β near 1: on the device where t comes from a counter (fused steps,
// replayed steps); elsewhere the host computes it in f64.
fn bias_correction(t: u32, log_beta: f32) -> f32 {
    return -1.0 / expm1_acc(f32(t) * log_beta);
}

fn keeps_s2(code: u32, f: vec4<f32>) -> bool {
    return code == 2u || f.w != 0.0;
}

fn opt_step(code: u32, g: f32, param: f32, s1: f32, s2: f32, f: vec4<f32>, bc1: f32, bc2: f32) -> vec3<f32> {
    let lr = f.x;
    let rho = f.y;
    let eps = f.z;
    switch code {
        case 0u: {
            let ms = rho * s1 + (1.0 - rho) * g * g;
            let mom = f.w * s2 + lr * g / sqrt(ms + eps);
            return vec3<f32>(param - mom, ms, mom);
        }
        case 1u: {
            let v = rho * s1 + (1.0 - rho) * g * g;
            let buf = f.w * s2 + g / (sqrt(v) + eps);
            return vec3<f32>(param - lr * buf, v, buf);
        }
        default: {
            let m = rho * s1 + (1.0 - rho) * g;
            let v = f.w * s2 + (1.0 - f.w) * g * g;
            return vec3<f32>(param - lr * (m * bc1) / (sqrt(v * bc2) + eps), m, v);
        }
    }
}
