// In-place parameter updates (one launch per parameter tensor); the rule is optim_lib.wgsl's.
// Bindings differ from the other kernels: 1 = gradient (read), 2 = parameter, 3 = first
// state, 4 = second state (read_write).
// f0 = learning rate, f1 = decay (ρ / α / β₁), f2 = ε, f3 = momentum (Adam: β₂);
// u0, u1 = Adam bias corrections 1/(1 − β₁ᵗ), 1/(1 − β₂ᵗ) as f32 bits. n = element count.
// In a replayed step (a_rows = 1, src/gpu/replay.rs) the step's t is a_cols + ctl[CTL_REPLAYED]
// from the counter at binding 5, the learning rate f0 + b_rows (f32 bits) per step since the
// recorded one, and Adam's bias corrections follow from t with u2, u3 = ln β₁, ln β₂.
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> s1: array<f32>;
@group(0) @binding(4) var<storage, read_write> s2: array<f32>;
@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let f = vec4<f32>(rate(), p.f1, p.f2, p.f3);
    let keep = keeps_s2(p.code, f);
    var m2 = 0.0;
    if (keep) { m2 = s2[i]; }
    let bc = corrections();
    let r = opt_step(p.code, grad[i], param[i], s1[i], m2, f, bc.x, bc.y);
    param[i] = r.x;
    s1[i] = r.y;
    if (keep) { s2[i] = r.z; }
}
