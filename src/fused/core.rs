//! The matmul core of the layer kernels, written out for one block shape.
//!
//! Each invocation computes an RB × CB block of out[i, j] = Σ_k load_a(i, k)·load_b(k, j)
//! (i < M, j < N, k in its chunk of K) and hands each element to store(i, j, v); the layer
//! file (`shaders/fused/layer_*.wgsl`) defines those three functions and setup(), which the
//! core calls once before the first store (for values every store of the kernel shares). The block lives in
//! named scalar registers: CPU drivers such as lavapipe keep dynamically indexed arrays in
//! memory, which costs several times the arithmetic (measured: 1.5 vs 6 GFLOP/s). No
//! workgroup memory or barriers, so the same code runs on every adapter.
//!
//! Split K: workgroup z takes k in [z·KC, (z+1)·KC) and sets `chunk` = z, so that long sums
//! are added in blocks (store writes partial sums that a later kernel adds up).

use std::fmt::Write;

/// Narrow outputs (N ≤ 8): rows per invocation and invocations per workgroup. Measured on
/// lavapipe, 8 × 64 is as fast as (2, 16), (4, 16) or (1, 32), which spread the rows over more
/// workgroups: these kernels are bound by their loads, not by parallelism.
const NARROW_RB: usize = 8;
const NARROW_WY: usize = 64;

/// A core and its block shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Core {
    /// [`direct`]: rb × cb per invocation, workgroups of wx × wy invocations.
    Direct {
        rb: usize,
        cb: usize,
        wx: usize,
        wy: usize,
    },
    /// [`subgroup`]: (s·rb) × (s·cb) per subgroup.
    Subgroup { s: usize, rb: usize, cb: usize },
}

impl Core {
    /// The core for an m × n output and its workgroup grid (z = `chunks` of K). With a fixed
    /// subgroup size `subgroup`, wide outputs use [`subgroup`]; narrow outputs (the d-wide
    /// layers) get one column block of their full width and all 64 invocations on rows.
    pub fn choose(m: usize, n: usize, chunks: usize, subgroup: Option<usize>) -> (Core, [u32; 3]) {
        let z = chunks as u32;
        match subgroup {
            Some(s) if n > 8 => {
                let (rb, cb) = (2, 2);
                let tiles = n.div_ceil(s * cb);
                let per_wg = 64 / s;
                (
                    Core::Subgroup { s, rb, cb },
                    [tiles.div_ceil(per_wg) as u32, m.div_ceil(s * rb) as u32, z],
                )
            }
            _ if n <= 8 => (
                Core::Direct {
                    rb: NARROW_RB,
                    cb: n,
                    wx: 1,
                    wy: NARROW_WY,
                },
                [1, m.div_ceil(NARROW_RB).div_ceil(NARROW_WY) as u32, z],
            ),
            _ => (
                Core::Direct {
                    rb: 8,
                    cb: 8,
                    wx: 8,
                    wy: 8,
                },
                [
                    n.div_ceil(8).div_ceil(8) as u32,
                    m.div_ceil(8).div_ceil(8) as u32,
                    z,
                ],
            ),
        }
    }

    /// The WGSL of this core.
    pub fn source(self) -> String {
        match self {
            Core::Direct { rb, cb, wx, wy } => direct(rb, cb, wx, wy),
            Core::Subgroup { s, rb, cb } => subgroup(s, rb, cb),
        }
    }
}

/// WGSL of the core with an rb × cb block per invocation and wx × wy invocations per
/// workgroup (x over column blocks, y over row blocks).
pub fn direct(rb: usize, cb: usize, wx: usize, wy: usize) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "override M: u32 = 1u;\noverride N: u32 = 1u;\noverride K: u32 = 1u;\noverride KC: u32 = 0xffffffffu;\nvar<private> chunk: u32;\n"
    );
    let _ = writeln!(w, "@compute @workgroup_size({wx}, {wy})");
    let _ = writeln!(
        w,
        "fn main(@builtin(global_invocation_id) gid: vec3<u32>) {{"
    );
    let _ = writeln!(
        w,
        "    let r0 = gid.y * {rb}u;\n    let c0 = gid.x * {cb}u;"
    );
    let _ = writeln!(w, "    if (r0 >= M || c0 >= N) {{ return; }}");
    let _ = writeln!(
        w,
        "    chunk = gid.z;\n    let k0 = gid.z * min(KC, K);\n    let k1 = min(K, k0 + min(KC, K));"
    );
    // Rows and columns past the edge are clamped (computed twice, never stored): no
    // branches in the inner loop.
    for r in 0..rb {
        let _ = writeln!(w, "    let i{r} = min(r0 + {r}u, M - 1u);");
    }
    for c in 0..cb {
        let _ = writeln!(w, "    let j{c} = min(c0 + {c}u, N - 1u);");
    }
    for r in 0..rb {
        for c in 0..cb {
            let _ = writeln!(w, "    var acc{r}_{c} = 0.0;");
        }
    }
    let _ = writeln!(w, "    for (var k = k0; k < k1; k++) {{");
    for r in 0..rb {
        let _ = writeln!(w, "        let a{r} = load_a(i{r}, k);");
    }
    for c in 0..cb {
        let _ = writeln!(w, "        let b{c} = load_b(k, j{c});");
    }
    for r in 0..rb {
        for c in 0..cb {
            let _ = writeln!(w, "        acc{r}_{c} = fma(a{r}, b{c}, acc{r}_{c});");
        }
    }
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "    setup();");
    for r in 0..rb {
        for c in 0..cb {
            let _ = writeln!(
                w,
                "    if (r0 + {r}u < M && c0 + {c}u < N) {{ store(r0 + {r}u, c0 + {c}u, acc{r}_{c}); }}"
            );
        }
    }
    let _ = writeln!(w, "}}");
    s
}

/// WGSL of the core for adapters with a fixed subgroup size `s`: each subgroup computes an
/// (s·rb) × (s·cb) tile; lane l owns columns l, l + s, … of it. Per k every lane loads one
/// element of rb rows of A and of cb columns of B, and the rows are shared with
/// subgroupBroadcast: s times fewer loads than [`direct`], which is what lavapipe spends
/// its time on (each load is a scalar loop over the SIMD lanes there).
pub fn subgroup(s: usize, rb: usize, cb: usize) -> String {
    let per_wg = 64 / s;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "override M: u32 = 1u;\noverride N: u32 = 1u;\noverride K: u32 = 1u;\noverride KC: u32 = 0xffffffffu;\nvar<private> chunk: u32;\n"
    );
    let _ = writeln!(w, "@compute @workgroup_size(64)");
    let _ = writeln!(
        w,
        "fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {{"
    );
    let _ = writeln!(
        w,
        "    let r0 = wid.y * {}u;\n    let c0 = (wid.x * {per_wg}u + li / {s}u) * {}u;",
        s * rb,
        s * cb
    );
    let _ = writeln!(
        w,
        "    chunk = wid.z;\n    let k0 = wid.z * min(KC, K);\n    let k1 = min(K, k0 + min(KC, K));"
    );
    for r in 0..rb {
        let _ = writeln!(w, "    let i{r} = min(r0 + {}u + lane, M - 1u);", s * r);
    }
    for c in 0..cb {
        let _ = writeln!(w, "    let j{c} = min(c0 + {}u + lane, N - 1u);", s * c);
    }
    for q in 0..s * rb {
        for c in 0..cb {
            let _ = writeln!(w, "    var acc{q}_{c} = 0.0;");
        }
    }
    let _ = writeln!(w, "    for (var k = k0; k < k1; k++) {{");
    for r in 0..rb {
        let _ = writeln!(w, "        let a{r} = load_a(i{r}, k);");
    }
    for c in 0..cb {
        let _ = writeln!(w, "        let b{c} = load_b(k, j{c});");
    }
    for q in 0..s * rb {
        let _ = writeln!(
            w,
            "        let x{q} = subgroupBroadcast(a{}, {}u);",
            q / s,
            q % s
        );
        for c in 0..cb {
            let _ = writeln!(w, "        acc{q}_{c} = fma(x{q}, b{c}, acc{q}_{c});");
        }
    }
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "    setup();");
    for q in 0..s * rb {
        for c in 0..cb {
            let _ = writeln!(
                w,
                "    if (r0 + {q}u < M && c0 + {}u + lane < N) {{ store(r0 + {q}u, c0 + {}u + lane, acc{q}_{c}); }}",
                s * c,
                s * c
            );
        }
    }
    let _ = writeln!(w, "}}");
    out
}
