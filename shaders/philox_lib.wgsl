// Philox4x32-10 (Salmon et al. 2011) and the transforms to uniform and normal numbers,
// shared by the random-fill kernel (philox.wgsl) and the fused MVL kernels.
// The CPU twin is rng::philox4x32 — the uniform stream matches bit for bit.

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

// Element e of a standard-normal draw with counter/key words w, as `random` (code 1) makes
// it: block e/4 gives two Box–Muller pairs.
fn philox_normal(e: u32, w: vec4<u32>) -> f32 {
    let r = philox(vec4<u32>(e / 4u, w.x, w.y, 0u), vec2<u32>(w.z, w.w));
    let tau = 6.2831853;
    let l = e % 4u;
    let a = select(r.x, r.z, l >= 2u);
    let b = select(r.y, r.w, l >= 2u);
    let radius = sqrt(-2.0 * log_unit(to_unit(a)));
    let angle = tau * to_unit(b);
    return select(radius * cos(angle), radius * sin(angle), l % 2u == 1u);
}

// Element e of a row-index draw below `bound`, as `random` (code 2) makes it.
fn philox_index(e: u32, w: vec4<u32>, bound: u32) -> u32 {
    let r = philox(vec4<u32>(e / 4u, w.x, w.y, 0u), vec2<u32>(w.z, w.w));
    return mulhilo(r[e % 4u], bound).x;
}
