// The parameter side of the fused step: the spectral-norm power iteration (SPEC §7), the
// cross-row scalar sums, and the update — partial sums added up in slot order, the chain
// rule through σ, the optimiser, the loss ring and the step counter. Reductions are trees
// in a fixed order and there are no float atomics: a run is bit-reproducible.

var<workgroup> red: array<f32, WG_SIZE>;   // reduction scratch
var<workgroup> pv: array<f32, PV_LEN>;     // one layer's W·u (fan_in), then vᵀ·W (fan_out)
var<workgroup> wsig: array<f32, NSN_MAX>;  // σ of each normalised layer, this step

// Σ of every invocation's x over the workgroup (a fixed binary tree; WG_SIZE a power of
// two); every invocation gets the total. Call from workgroup-uniform control flow.
fn wg_sum(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var h = WG_SIZE / 2u; h > 0u; h >>= 1u) {
        if (lid < h) { red[lid] += red[lid + h]; }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
}

// One power iteration of layer l by the whole workgroup (SPEC §7): v = normalize(W·u); with
// `iterate` (training) u′ = normalize(vᵀ·W), else u′ = the stored u; σ = (vᵀ·W)·u′. Leaves
// W·u in pv[0..fan_in] and vᵀ·W in pv[fan_in..], their norms in the returned (σ, ‖W·u‖, ‖vᵀW‖)
// (‖vᵀW‖ = 1 without `iterate`); with `store` also writes v, u′ and σ to sn.
fn power_iterate(lid: u32, l: Layer, iterate: bool, store: bool) -> vec3<f32> {
    let fi = l.fan_in;
    let fo = l.fan_out;
    for (var a = lid; a < fi; a += WG_SIZE) {
        var s = 0.0;
        for (var b = 0u; b < fo; b++) { s += theta[l.w_off + a * fo + b] * sn[l.u + b]; }
        pv[a] = s;
    }
    workgroupBarrier();
    var q = 0.0;
    for (var a = lid; a < fi; a += WG_SIZE) { q += pv[a] * pv[a]; }
    let nv = sqrt(wg_sum(lid, q) + 1e-24);
    for (var b = lid; b < fo; b += WG_SIZE) {
        var s = 0.0;
        for (var a = 0u; a < fi; a++) { s += (pv[a] / nv) * theta[l.w_off + a * fo + b]; }
        pv[fi + b] = s;
    }
    workgroupBarrier();
    q = 0.0;
    for (var b = lid; b < fo; b += WG_SIZE) { q += pv[fi + b] * pv[fi + b]; }
    let nu = select(1.0, sqrt(wg_sum(lid, q) + 1e-24), iterate);
    q = 0.0;
    for (var b = lid; b < fo; b += WG_SIZE) {
        q += pv[fi + b] * select(sn[l.u + b], pv[fi + b] / nu, iterate);
    }
    let sigma = wg_sum(lid, q);
    if (store) {
        for (var a = lid; a < fi; a += WG_SIZE) { sn[l.v + a] = pv[a] / nv; }
        for (var b = lid; b < fo; b += WG_SIZE) {
            sn[l.u_new + b] = select(sn[l.u + b], pv[fi + b] / nu, iterate);
        }
        if (lid == 0u) { sn[l.sigma] = sigma; }
    }
    workgroupBarrier();
    return vec3<f32>(sigma, nv, nu);
}

// σ of every normalised layer into wsig (this workgroup's copy); with `store` into sn too.
fn all_sigmas(lid: u32, iterate: bool, store: bool) {
    for (var m = 0u; m < M.nsn; m++) {
        let r = power_iterate(lid, LAYERS[m], iterate, store);
        if (lid == 0u) { wsig[m] = r.x; }
    }
    workgroupBarrier();
}

// Scalar q of workspace row i: loss, E₀, E₁, E₀², E₁², then the dots of the normalised layers.
fn row_scalar(q: u32, i: u32) -> f32 {
    switch q {
        case 0u: { return ws[IO.loss + i]; }
        case 1u: { return ws[IO.e0 + i]; }
        case 2u: { return ws[IO.e1 + i]; }
        case 3u: { let e = ws[IO.e0 + i]; return e * e; }
        case 4u: { let e = ws[IO.e1 + i]; return e * e; }
        default: { return ws[IO.dots + (q - SCAL_FIXED) * IO.rows + i]; }
    }
}

// The update of theta element e: the gradient's partial sums added up in slot order, the
// chain rule through σ (∂W = ∂W̃/σ − ⟨∂W̃, W⟩/σ²·vu′ᵀ, SPEC §7), the gradient kept, and in a
// training step the optimiser step at the device counter's t (its learning rate and Adam's
// bias corrections computed here), the spectral-norm vectors moved on (u ← u′, the same u
// when evaluating), and — element 0 — the loss into the ring and the counter advanced.
// `parts`/`scal_slots`: live slots. Training or not is a `select`, never a branch.
fn update_at(e: u32, parts: u32, scal_slots: u32) {
    let train = flag(FLAG_TRAIN);
    if (e == 0u) { finish_scalars(train, scal_slots); }
    for (var m = 0u; m < M.nsn; m++) {
        let l = LAYERS[m];
        if (e < l.fan_out) { sn[l.u + e] = sn[l.u_new + e]; }
    }
    if (e >= IO.theta_len) { return; }
    var li = NONE;
    var weight = false;
    for (var k = 0u; k < M.nl; k++) {
        let l = LAYERS[k];
        if (e >= l.w_off && e < l.w_off + l.fan_in * l.fan_out) { li = k; weight = true; }
        if (e >= l.b_off && e < l.b_off + l.fan_out) { li = k; }
    }
    if (li == NONE) { return; } // alignment padding
    var g = 0.0;
    for (var c = 0u; c < parts; c++) { g += ws[IO.part + c * IO.theta_len + e]; }
    let l = LAYERS[li];
    if (weight && l.sigma != NONE) {
        let fo = l.fan_out;
        let k = e - l.w_off;
        let s = 1.0 / sn[l.sigma];
        var dot = 0.0;
        for (var c = 0u; c < scal_slots; c++) {
            dot += ws[IO.scal + c * IO.scal_len + SCAL_FIXED + l.sn_index];
        }
        dot *= sn[l.sigma];
        g = g * s - dot * s * s * sn[l.v + k / fo] * sn[l.u_new + k % fo];
    }
    ws[IO.grad + e] = g;
    let t1 = ctl[CTL_T_OUT]; // this step's number, 1-based
    let lr = st.lr0 + st.lr_slope * f32(t1 - 1u - st.lr_t0);
    var bc1 = 1.0;
    var bc2 = 1.0;
    if (M.opt == 2u) {
        bc1 = bias_correction(t1, st.log_beta1);
        bc2 = bias_correction(t1, st.log_beta2);
    }
    let f = vec4<f32>(lr, st.rho, st.opt_eps, st.f3);
    let keep = keeps_s2(M.opt, f);
    let r = opt_step(M.opt, g, theta[e], s1[e], select(0.0, s2[e], keep), f, bc1, bc2);
    theta[e] = select(theta[e], r.x, train);
    s1[e] = select(s1[e], r.y, train);
    if (keep && train) { s2[e] = r.z; }
}

// Element 0 of the update: the loss (mean + regulariser) and mean energies from the scalar
// slots; training writes the loss to the ring and advances the counter (t ← t + 1).
fn finish_scalars(train: bool, scal_slots: u32) {
    var s = array<f32, 5>(0.0, 0.0, 0.0, 0.0, 0.0);
    for (var c = 0u; c < scal_slots; c++) {
        for (var q = 0u; q < SCAL_FIXED; q++) { s[q] += ws[IO.scal + c * IO.scal_len + q]; }
    }
    let t = f32(st.total);
    let loss = s[0] / t + st.reg * (s[3] + s[4]) / t;
    ws[IO.out] = loss;
    ws[IO.out + 1u] = s[1] / t;
    ws[IO.out + 2u] = s[2] / t;
    let step = ctl[CTL_T_OUT];
    let slot = CTL_RING + (step - 1u) % st.ring_len;
    ctl[slot] = select(ctl[slot], bitcast<u32>(loss), train);
    ctl[CTL_T_IN] = select(ctl[CTL_T_IN], step, train);
}

// The tile shape's first dispatch where the weights are not in workgroup memory: Wᵀ of
// every layer into IO.wt (each W_l, fan_in × fan_out, as fan_out × fan_in at its offset).
@compute @workgroup_size(256)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.y * nwg.x * 256u + gid.x;
    for (var k = 0u; k < M.nl; k++) {
        let l = LAYERS[k];
        if (e >= l.w_off && e < l.w_off + l.fan_in * l.fan_out) {
            let at = e - l.w_off;
            ws[IO.wt + l.w_off + (at % l.fan_out) * l.fan_in + at / l.fan_out] = theta[e];
        }
    }
}

// The update kernel (both shapes): one invocation per theta element.
@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    update_at(gid.y * nwg.x * 256u + gid.x, LIVE_PARTS, LIVE_SCAL);
}
