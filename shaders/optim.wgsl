// In-place parameter updates (one launch per parameter tensor). Bindings differ from the other
// kernels: 1 = gradient (read), 2 = parameter, 3 = first state, 4 = second state (read_write).
// code 0: RMSProp, TensorFlow 1 semantics (ε inside the root)    s1 = mean square, s2 = momentum
// code 1: RMSProp, PyTorch semantics (ε outside the root)        s1 = square avg,  s2 = momentum
// code 2: Adam                                                   s1 = m,           s2 = v
// f0 = learning rate, f1 = decay (ρ / α / β₁), f2 = ε, f3 = momentum (Adam: β₂);
// u0, u1 = Adam bias corrections 1/(1 − β₁ᵗ), 1/(1 − β₂ᵗ) as f32 bits. n = element count.
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> s1: array<f32>;
@group(0) @binding(4) var<storage, read_write> s2: array<f32>;

@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let g = grad[i];
    let lr = p.f0;
    let rho = p.f1;
    let eps = p.f2;
    switch p.code {
        case 0u: {
            let ms = rho * s1[i] + (1.0 - rho) * g * g;
            s1[i] = ms;
            let mom = p.f3 * s2[i] + lr * g / sqrt(ms + eps);
            s2[i] = mom;
            param[i] = param[i] - mom;
        }
        case 1u: {
            let v = rho * s1[i] + (1.0 - rho) * g * g;
            s1[i] = v;
            let buf = p.f3 * s2[i] + g / (sqrt(v) + eps);
            s2[i] = buf;
            param[i] = param[i] - lr * buf;
        }
        default: {
            let m = rho * s1[i] + (1.0 - rho) * g;
            let v = p.f3 * s2[i] + (1.0 - p.f3) * g * g;
            s1[i] = m;
            s2[i] = v;
            let mhat = m * bitcast<f32>(p.u0);
            let vhat = v * bitcast<f32>(p.u1);
            param[i] = param[i] - lr * mhat / (sqrt(vhat) + eps);
        }
    }
}
