// Strided sums. Output o (of p.n) sums over j < u0 (the reduced length) the terms
// a[o*u1 + j*u2] (code 0) or a[..]*b[..] (code 1, row-wise dot), in chunks of u3 terms:
// output o' (of rows = n·chunks) is the partial sum of output o = o' % n over chunk
// q = o' / n, j in [q·u3, min(u0, (q+1)·u3)); a second pass adds the chunks.
//   sum over rows:  n = cols, u0 = rows, u1 = 1,    u2 = cols
//   sum over cols:  n = rows, u0 = cols, u1 = cols, u2 = 1
//   sum of all:     n = 1,    u0 = len,  u1 = 0,    u2 = 1
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn term(o: u32, j: u32) -> f32 {
    let k = o * p.u1 + j * p.u2;
    if (p.code == 1u) { return a[k] * b[k]; }
    return a[k];
}

// One thread per (output, chunk): for short reductions and for CPU drivers. (llvmpipe stops
// any loop after 65535 iterations, so chunks stay well below that.)
@compute @workgroup_size(256)
fn reduce_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= p.rows) { return; }
    let o = t % p.n;
    let q = t / p.n;
    let j_end = min(p.u0, (q + 1u) * p.u3);
    var s = 0.0;
    for (var j = q * p.u3; j < j_end; j++) { s += term(o, j); }
    out[t] = s;
}

var<workgroup> partial: array<f32, 256>;

// One workgroup per (output, chunk), o' = workgroup_id.y * num_workgroups.x + workgroup_id.x:
// for long reductions on GPUs; neighbouring threads read neighbouring terms, and a tree
// sum adds the 256 per-thread sums.
@compute @workgroup_size(256)
fn reduce_group(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = wid.y * nwg.x + wid.x;
    var s = 0.0;
    if (t < p.rows) {
        let o = t % p.n;
        let q = t / p.n;
        let j_end = min(p.u0, (q + 1u) * p.u3);
        for (var j = q * p.u3 + lid.x; j < j_end; j += 256u) { s += term(o, j); }
    }
    partial[lid.x] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid.x < w) { partial[lid.x] += partial[lid.x + w]; }
        workgroupBarrier();
    }
    if (lid.x == 0u && t < p.rows) { out[t] = partial[0]; }
}
