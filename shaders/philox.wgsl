// Counter-based RNG: Philox4x32-10 (Salmon et al. 2011). Thread t makes block t of the draw,
// from counter (t, u0, u1, 0) and key (u2, u3): 4 uniforms, 4 normals by Box–Muller (code 1)
// or 4 row indices below p.rows (code 2).
// The CPU twin is rng::philox4x32 — the uniform stream matches bit for bit.
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    // 32×32 → 64-bit product from 16-bit halves (WGSL has no u64).
    let a_lo = a & 0xffffu; let a_hi = a >> 16u;
    let b_lo = b & 0xffffu; let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    let lo = (mid << 16u) | (ll & 0xffffu);
    return vec2<u32>(hi, lo);
}

fn philox(ctr_in: vec4<u32>, key_in: vec2<u32>) -> vec4<u32> {
    var c = ctr_in;
    var k = key_in;
    for (var r = 0u; r < 10u; r++) {
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// (0, 1), never 0 or 1: 24 random bits, centred in their bin (the top bin's centre
// 1 - 2^-25 would round to 1.0 in f32: clamped to 1 - 2^-24, as rng::to_unit).
fn to_unit(x: u32) -> f32 {
    return min(f32(x >> 8u) * 5.9604645e-8 + 2.9802322e-8, 0.99999994);
}

// ln(u) for u in (0, 1). GPU log is accurate only to an absolute ~1e-7 near 1 (WebGPU
// allows 2^-21), which would spoil the small Box–Muller radii sqrt(-2 ln u), u near 1.
// There use ln(1 - d) = -d (1 + d/2 + d^2/3 + ... + d^5/6), d = 1 - u exact; the omitted
// terms are < d^6/7 ≈ 1e-10 relative for d < 1/32.
fn log_unit(u: f32) -> f32 {
    let d = 1.0 - u;
    if (d < 0.03125) {
        return -d * (1.0 + d * (0.5 + d * (0.33333333 + d * (0.25 + d * (0.2 + d * 0.16666667)))));
    }
    return log(u);
}

@compute @workgroup_size(256)
fn random(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t * 4u >= p.n) { return; }
    let r = philox(vec4<u32>(t, p.u0, p.u1, 0u), vec2<u32>(p.u2, p.u3));
    if (p.code == 2u) {
        // Row indices in 0..p.rows: ⌊x · rows / 2³²⌋, stored as u32 bits.
        for (var l = 0u; l < 4u; l++) {
            if (t * 4u + l < p.n) { out[t * 4u + l] = bitcast<f32>(mulhilo(r[l], p.rows).x); }
        }
        return;
    }
    var v = vec4<f32>(to_unit(r.x), to_unit(r.y), to_unit(r.z), to_unit(r.w));
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
