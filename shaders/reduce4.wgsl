// reduce.wgsl's one-thread-per-(output, chunk) sums with vec4 loads (fields as there).
//   reduce_rows4: sums over rows, four neighbouring columns per thread (cols % 4 == 0);
//                 each column is added in the same order as reduce_thread.
//   reduce_cols4: sums over columns (or all, u1 = 0) of whole vec4s (the length, the chunk
//                 and the output stride multiples of 4): four running sums, one per
//                 component, added at the end.
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;

fn term4(k: u32) -> vec4<f32> {
    if (p.code == 1u) { return a[k] * b[k]; }
    return a[k];
}

@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Thread t: outputs 4·(t % (n/4)) .. +3 of chunk t / (n/4); u2 = cols.
@compute @workgroup_size(256)
fn reduce_rows4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    let n4 = p.n / 4u;
    if (t >= p.rows / 4u) { return; }
    let o = t % n4;
    let q = t / n4;
    let j_end = min(p.u0, (q + 1u) * p.u3);
    let stride = p.u2 / 4u;
    var s = vec4<f32>(0.0);
    for (var j = q * p.u3; j < j_end; j++) { s += term4(o + j * stride); }
    let base = q * p.n + 4u * o;
    out[base] = s.x;
    out[base + 1u] = s.y;
    out[base + 2u] = s.z;
    out[base + 3u] = s.w;
}

// Thread t: output t % n of chunk t / n, u1 = output stride, u0 = length (in elements).
@compute @workgroup_size(256)
fn reduce_cols4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg);
    if (t >= p.rows) { return; }
    let o = t % p.n;
    let q = t / p.n;
    let j_end = min(p.u0, (q + 1u) * p.u3) / 4u;
    let row = o * p.u1 / 4u;
    var s = vec4<f32>(0.0);
    for (var j = q * p.u3 / 4u; j < j_end; j++) { s += term4(row + j); }
    out[t] = (s.x + s.y) + (s.z + s.w);
}
