//! The matrix product for CPU drivers with 8-lane subgroups (lavapipe), written out in WGSL.
//!
//! On lavapipe one invocation is one lane of an 8-wide SIMD register, and every storage load
//! is a scalar loop over the lanes (a gather, tens of cycles) while an FMA is one
//! instruction: the product is bound by its loads, not by its arithmetic. So each subgroup
//! computes a [`ROWS`] × 32 block of C, lane j holding its columns for all the block's rows
//! (`ROWS` accumulators; the compiler keeps the ones that do not fit in registers on the
//! stack, which is far cheaper than a gather). Per k, the lanes load the block's A elements
//! between them — each lane a few rows — and hand them to each other with
//! `subgroupBroadcast` (a register shuffle).
//!
//! Two families:
//! - [`Layout::Vec4`]: operands read as `vec4<f32>`, four elements per lane and load, along
//!   whichever direction is contiguous in storage (k for A, columns for B, or the other way
//!   round when transposed): 2 gathers per k for a 32 × 32 block. Needs K, the output's
//!   columns and (when A is transposed) its rows to be multiples of 4, so that every
//!   vec4 lies inside one row of storage. Measured (2026-12-03, 2 cores, llvmpipe 15): the
//!   VAE's products at 24–34 GFLOP/s, against 7 for [`super::ops`]' 4 × 8 direct kernel.
//! - [`Layout::Scalar`]: any shape; one f32 per lane and load, 8 gathers per k for the
//!   32 × 32 block (measured 17–24 GFLOP/s); blocks of 8 rows or 8 columns where the output
//!   has at most 8 (a 2-D energy's first and last layers).
//!
//! Rows and columns past the edge are clamped (computed on duplicated data, never stored), so
//! the inner loop has no branches. The kernels read the common `Params` block as the other
//! products do: u0 = K, u1/u2 = transpose A/B (the scalar family; the vec4 one is written for
//! one pair), u3 = K chunk (workgroup z sums its chunk into its own slab of the output).

use std::fmt::Write;

/// Rows of C per subgroup (the block is `ROWS` × 32). 32 measured best against 16 and 64
/// on the VAE's shapes (64: same speed, half the subgroups). Products with at most 8 rows
/// take blocks of 8 ([`Layout::Scalar`]'s `rows`).
pub(crate) const ROWS: usize = 32;
/// Columns of C per subgroup: 8 lanes × 4 (8 lanes × 1 for outputs at most 8 wide).
pub(crate) const COLS: usize = 32;
/// Invocations per workgroup (8 subgroups of 8).
pub(crate) const WORKGROUP: usize = 64;

/// How the operands are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `vec4<f32>` loads, written for one transpose pair (ta, tb).
    Vec4 { ta: bool, tb: bool },
    /// `f32` loads, transposes as strides at run time; blocks of `rows` (8 or 32) × 32
    /// columns, or × 8 (one column per lane) where not `wide`: the small sides of the
    /// products of a 2-D energy (d = 2, one energy per row) would leave most of a 32 × 32
    /// block idle.
    Scalar { rows: usize, wide: bool },
}

impl Layout {
    /// The vec4 family where the shape allows it (see the module docs), else the scalar one.
    pub(crate) fn choose(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Layout {
        let (rows, wide) = (if m <= 8 { 8 } else { ROWS }, n > 8);
        if rows == ROWS
            && wide
            && k.is_multiple_of(4)
            && n.is_multiple_of(4)
            && (!ta || m.is_multiple_of(4))
        {
            Layout::Vec4 { ta, tb }
        } else {
            Layout::Scalar { rows, wide }
        }
    }

    /// Rows and columns of C per subgroup.
    pub(crate) fn block(self) -> (usize, usize) {
        match self {
            Layout::Vec4 { .. } => (ROWS, COLS),
            Layout::Scalar { rows, wide } => (rows, if wide { COLS } else { 8 }),
        }
    }

    pub(crate) fn entry(self) -> &'static str {
        match self {
            Layout::Vec4 {
                ta: false,
                tb: false,
            } => "matmul_v4_nn",
            Layout::Vec4 {
                ta: false,
                tb: true,
            } => "matmul_v4_nt",
            Layout::Vec4 {
                ta: true,
                tb: false,
            } => "matmul_v4_tn",
            Layout::Vec4 { ta: true, tb: true } => "matmul_v4_tt",
            Layout::Scalar {
                rows: 8,
                wide: false,
            } => "matmul_sub_8x8",
            Layout::Scalar {
                rows: 8,
                wide: true,
            } => "matmul_sub_8x32",
            Layout::Scalar { wide: false, .. } => "matmul_sub_32x8",
            Layout::Scalar { .. } => "matmul_sub",
        }
    }
}

/// Workgroups for an m × n output (one subgroup per block), per K chunk.
pub(crate) fn groups(layout: Layout, m: usize, n: usize) -> usize {
    let (br, bc) = layout.block();
    let blocks = m.div_ceil(br) * n.div_ceil(bc);
    blocks.div_ceil(WORKGROUP / 8)
}

/// The WGSL of one kernel (without the common prelude).
pub(crate) fn source(layout: Layout) -> String {
    let mut s = String::new();
    let elem = match layout {
        Layout::Vec4 { .. } => "vec4<f32>",
        Layout::Scalar { .. } => "f32",
    };
    let (rows, cols) = layout.block();
    let acc = if cols == COLS { "vec4<f32>" } else { "f32" };
    let _ = writeln!(
        s,
        "@group(0) @binding(1) var<storage, read> a: array<{elem}>;
@group(0) @binding(2) var<storage, read> b: array<{elem}>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Row r, columns c.. c+3 of this chunk's slab (the columns inside the output).
fn store4(base: u32, r: u32, c: u32, v: vec4<f32>) {{
    if (r >= p.rows) {{ return; }}
    for (var j = 0u; j < 4u; j++) {{
        if (c + j < p.cols) {{ out[base + r * p.cols + c + j] = v[j]; }}
    }}
}}

fn store1(base: u32, r: u32, c: u32, v: f32) {{
    if (r < p.rows && c < p.cols) {{ out[base + r * p.cols + c] = v; }}
}}

@compute @workgroup_size({WORKGROUP})
fn {entry}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_subgroups) groups: u32,
        @builtin(subgroup_id) sg_in: u32, @builtin(subgroup_invocation_id) lane: u32) {{
    let k_begin = wid.z * p.u3;
    let k_end = min(p.u0, k_begin + p.u3);
    let base = wid.z * p.rows * p.cols;
    let sg = wid.x * groups + sg_in;
    let blocks_c = (p.cols + {cols}u - 1u) / {cols}u;
    let row0 = (sg / blocks_c) * {rows}u;
    let col0 = (sg % blocks_c) * {cols}u;
    if (row0 >= p.rows) {{ return; }}",
        entry = layout.entry()
    );
    for r in 0..rows {
        let _ = writeln!(s, "    var c{r} = {acc}(0.0);");
    }
    match layout {
        Layout::Vec4 { ta, tb } => vec4_body(&mut s, ta, tb),
        Layout::Scalar { rows, wide } => scalar_body(&mut s, rows, wide),
    }
    s.push_str("}\n");
    s
}

/// Lane j owns columns col0 + 4j .. +3. Per block of 4 k: A untransposed, each lane loads 4
/// consecutive k of ROWS/8 rows (row 8s + l of the block is lane l's s-th load); transposed,
/// per k each lane loads 4 consecutive rows (row 32t + 4l + c is component c of lane l's
/// t-th load). B untransposed: per k one vec4 of the lane's 4 columns; transposed: per block
/// of 4 k, 4 consecutive k of each of its 4 columns.
fn vec4_body(s: &mut String, ta: bool, tb: bool) {
    s.push_str(
        "    let a4 = p.a_cols / 4u;
    let b4 = p.b_cols / 4u;
    let mycol = min(col0 + 4u * lane, p.cols - 4u);
",
    );
    if ta {
        for t in 0..ROWS / 32 {
            let _ = writeln!(
                s,
                "    let ao{t} = min(row0 + {}u + 4u * lane, p.rows - 4u) / 4u;",
                32 * t
            );
        }
    } else {
        for l in 0..ROWS / 8 {
            let _ = writeln!(
                s,
                "    let ao{l} = min(row0 + {}u + lane, p.rows - 1u) * a4;",
                8 * l
            );
        }
    }
    if tb {
        for c in 0..4 {
            let _ = writeln!(s, "    let bo{c} = min(mycol + {c}u, p.cols - 1u) * b4;");
        }
    }
    s.push_str("    for (var k = k_begin; k < k_end; k += 4u) {\n        let k4 = k / 4u;\n");
    if !ta {
        for l in 0..ROWS / 8 {
            let _ = writeln!(s, "        let va{l} = a[ao{l} + k4];");
        }
    }
    if tb {
        for c in 0..4 {
            let _ = writeln!(s, "        let vb{c} = b[bo{c} + k4];");
        }
    }
    for kk in 0..4 {
        s.push_str("        {\n");
        if ta {
            for t in 0..ROWS / 32 {
                let _ = writeln!(s, "        let va{t} = a[(k + {kk}u) * a4 + ao{t}];");
            }
        }
        if tb {
            let _ = writeln!(
                s,
                "        let bv = vec4<f32>(vb0[{kk}], vb1[{kk}], vb2[{kk}], vb3[{kk}]);"
            );
        } else {
            let _ = writeln!(s, "        let bv = b[(k + {kk}u) * b4 + mycol / 4u];");
        }
        for r in 0..ROWS {
            let x = if ta {
                format!(
                    "subgroupBroadcast(va{}, {}u)[{}]",
                    r / 32,
                    (r % 32) / 4,
                    r % 4
                )
            } else {
                format!("subgroupBroadcast(va{}, {}u)[{kk}]", r / 8, r % 8)
            };
            let _ = writeln!(s, "        c{r} = fma(vec4<f32>({x}), bv, c{r});");
        }
        s.push_str("        }\n");
    }
    s.push_str("    }\n");
    for r in 0..ROWS {
        let _ = writeln!(s, "    store4(base, row0 + {r}u, col0 + 4u * lane, c{r});");
    }
}

/// Lane j owns columns col0 + 4j .. +3 (`wide`) or column col0 + j (clamped loads); per k
/// each lane loads one element of rows/8 rows of A (row 8s + l of the block is lane l's s-th)
/// and its elements of B.
fn scalar_body(s: &mut String, rows: usize, wide: bool) {
    s.push_str(
        "    // op(A)[i, k] = a[i·ai + k·ak], op(B)[k, j] = b[k·bk + j·bj].
    let ai = select(p.a_cols, 1u, p.u1 == 1u);
    let ak = select(1u, p.a_cols, p.u1 == 1u);
    let bk = select(p.b_cols, 1u, p.u2 == 1u);
    let bj = select(1u, p.b_cols, p.u2 == 1u);
",
    );
    for l in 0..rows / 8 {
        let _ = writeln!(
            s,
            "    let ao{l} = min(row0 + {}u + lane, p.rows - 1u) * ai;",
            8 * l
        );
    }
    let (lane_cols, mycol) = if wide {
        (4, "col0 + 4u * lane")
    } else {
        (1, "col0 + lane")
    };
    for c in 0..lane_cols {
        let _ = writeln!(s, "    let bo{c} = min({mycol} + {c}u, p.cols - 1u) * bj;");
    }
    s.push_str("    for (var k = k_begin; k < k_end; k++) {\n");
    s.push_str("        let ka = k * ak;\n        let kb = k * bk;\n");
    for l in 0..rows / 8 {
        let _ = writeln!(s, "        let va{l} = a[ao{l} + ka];");
    }
    if wide {
        s.push_str(
            "        let bv = vec4<f32>(b[kb + bo0], b[kb + bo1], b[kb + bo2], b[kb + bo3]);\n",
        );
    } else {
        s.push_str("        let bv = b[kb + bo0];\n");
    }
    let splat = if wide { "vec4<f32>" } else { "" };
    for r in 0..rows {
        let _ = writeln!(
            s,
            "        c{r} = fma({splat}(subgroupBroadcast(va{}, {}u)), bv, c{r});",
            r / 8,
            r % 8
        );
    }
    s.push_str("    }\n");
    let store = if wide { "store4" } else { "store1" };
    for r in 0..rows {
        let _ = writeln!(s, "    {store}(base, row0 + {r}u, {mycol}, c{r});");
    }
}
