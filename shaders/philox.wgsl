// Random fills (functions in philox_lib.wgsl). Thread t makes block t of the draw, from
// counter (t, u0, u1, 0) and key (u2, u3): 4 uniforms, 4 normals by Box–Muller (code 1) or
// 4 row indices below p.rows (code 2), or 4 Bernoulli draws 1{u < a[i]} with probabilities
// from input a (code 3: binarising images afresh on the device).
// In a replayed step (a_rows = 1, src/gpu/replay.rs) the counter is (t, a_cols, step) with
// a_cols the draw's place in the step and the step from the recording's counter `ctl`, its
// top bit set: no replayed block equals an ordinary one (whose last word is 0).
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> ctl: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn random(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t * 4u >= p.n) { return; }
    let replayed = vec4<u32>(t, p.a_cols, ctl[CTL_STEP_LO], ctl[CTL_STEP_HI] | 0x80000000u);
    let ctr = select(vec4<u32>(t, p.u0, p.u1, 0u), replayed, p.a_rows == 1u);
    let r = philox(ctr, vec2<u32>(p.u2, p.u3));
    if (p.code == 2u) {
        // Row indices in 0..p.rows: ⌊x · rows / 2³²⌋, stored as u32 bits.
        for (var l = 0u; l < 4u; l++) {
            if (t * 4u + l < p.n) { out[t * 4u + l] = bitcast<f32>(mulhilo(r[l], p.rows).x); }
        }
        return;
    }
    var v = vec4<f32>(to_unit(r.x), to_unit(r.y), to_unit(r.z), to_unit(r.w));
    if (p.code == 3u) {
        for (var l = 0u; l < 4u; l++) {
            let i = t * 4u + l;
            if (i < p.n) { out[i] = select(0.0, 1.0, v[l] < a[i]); }
        }
        return;
    }
    if (p.code == 1u) {
        let tau = 6.2831853;
        let r0 = sqrt(-2.0 * log_unit(v.x));
        let r1 = sqrt(-2.0 * log_unit(v.z));
        v = vec4<f32>(r0 * cos(tau * v.y), r0 * sin(tau * v.y), r1 * cos(tau * v.w), r1 * sin(tau * v.w));
    }
    // scale f0, shift f1 (uniform on [f1, f1+f0) or N(f1, f0²)).
    v = v * p.f0 + vec4<f32>(p.f1);
    for (var l = 0u; l < 4u; l++) {
        if (t * 4u + l < p.n) { out[t * 4u + l] = v[l]; }
    }
}
