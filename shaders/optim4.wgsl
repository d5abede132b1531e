// optim.wgsl's update, four elements per invocation (tensors of a length that is a multiple
// of 4; same bindings and fields, p.n counts elements; per-step arguments from optim_args.wgsl). See
// elementwise4.wgsl for why.
@group(0) @binding(1) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> s1: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> s2: array<vec4<f32>>;
@compute @workgroup_size(256)
fn update4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p.n / 4u) { return; }
    let g = grad[i];
    let x = param[i];
    let m = s1[i];
    let f = vec4<f32>(rate(), p.f1, p.f2, p.f3);
    let keep = keeps_s2(p.code, f);
    var v = vec4<f32>(0.0);
    if (keep) { v = s2[i]; }
    let bc = corrections();
    let bc1 = bc.x;
    let bc2 = bc.y;
    let r0 = opt_step(p.code, g.x, x.x, m.x, v.x, f, bc1, bc2);
    let r1 = opt_step(p.code, g.y, x.y, m.y, v.y, f, bc1, bc2);
    let r2 = opt_step(p.code, g.z, x.z, m.z, v.z, f, bc1, bc2);
    let r3 = opt_step(p.code, g.w, x.w, m.w, v.w, f, bc1, bc2);
    param[i] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
    s1[i] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    if (keep) { s2[i] = vec4<f32>(r0.z, r1.z, r2.z, r3.z); }
}
