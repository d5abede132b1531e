// im2col (unfold) and its adjoint col2im (fold) for channel-last images; layouts in
// src/conv.rs. An image is one row of H·W·C values, pixel (y, x) channel c at column
// (y·W + x)·C + c; a patch row b·Ho·Wo + oy·Wo + ox holds, at column (ky·k + kx)·C + c,
// pixel (oy·stride + ky − pad, ox·stride + kx − pad), channel c (0 in the padding).
// Parameters: a_rows = H, a_cols = W, b_rows = C, b_cols = k,
//             u0 = stride, u1 = pad, u2 = Ho, u3 = Wo; n, rows, cols: the output.
// Coordinates are taken in the padded image (yp = y + pad) so that all arithmetic is
// unsigned. Every size fits in u32 (checked on the host).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// out (B·Ho·Wo, k·k·C): one thread per patch entry, a copy or a zero.
@compute @workgroup_size(256)
fn unfold(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let r = i / p.cols;
    let col = i % p.cols;
    let positions = p.u2 * p.u3;
    let b = r / positions;
    let pos = r % positions;
    let oy = pos / p.u3;
    let ox = pos % p.u3;
    let c = col % p.b_rows;
    let kk = col / p.b_rows;
    let yp = oy * p.u0 + kk / p.b_cols;
    let xp = ox * p.u0 + kk % p.b_cols;
    var v = 0.0;
    if (yp >= p.u1 && yp - p.u1 < p.a_rows && xp >= p.u1 && xp - p.u1 < p.a_cols) {
        v = x[((b * p.a_rows + yp - p.u1) * p.a_cols + xp - p.u1) * p.b_rows + c];
    }
    out[i] = v;
}

// out (B, H·W·C): one thread per pixel value, gathering every patch entry copied from it —
// the windows (oy, ox) and offsets (ky, kx) with oy·stride + ky = yp, ox·stride + kx = xp.
// Deterministic, no atomics: ky runs over the residue of yp mod stride, up to min(k − 1, yp),
// and oy = (yp − ky)/stride must be a real window (< Ho); likewise x.
@compute @workgroup_size(256)
fn fold(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n) { return; }
    let c = i % p.b_rows;
    let pixel = i / p.b_rows;
    let xp = pixel % p.a_cols + p.u1;
    let t = pixel / p.a_cols;
    let yp = t % p.a_rows + p.u1;
    let b = t / p.a_rows;
    let k = p.b_cols;
    let s = p.u0;
    let patch_len = k * k * p.b_rows;
    let ky_end = min(k, yp + 1u);
    let kx_end = min(k, xp + 1u);
    var sum = 0.0;
    for (var ky = yp % s; ky < ky_end; ky += s) {
        let oy = (yp - ky) / s;
        if (oy >= p.u2) { continue; }
        for (var kx = xp % s; kx < kx_end; kx += s) {
            let ox = (xp - kx) / s;
            if (ox >= p.u3) { continue; }
            let row = (b * p.u2 + oy) * p.u3 + ox;
            sum += x[row * patch_len + (ky * k + kx) * p.b_rows + c];
        }
    }
    out[i] = sum;
}
