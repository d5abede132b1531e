//! The matmul cores of the fused layer sweeps, written out for one block shape.
//!
//! A core computes an output block of out[i, j] = Σ_k A[i, k]·B[k, j] for one sweep
//! descriptor (`Sweep` or `GradSweep`, see `shaders/fused/layers.wgsl`, which defines what A
//! and B are and where each output goes) and hands each element to the family's store. The
//! block lives in named scalar registers: CPU drivers such as lavapipe keep dynamically
//! indexed arrays in memory, which costs several times the arithmetic (measured: 1.5 vs 6
//! GFLOP/s). The cores use no workgroup memory and no barriers, so the same code runs in the
//! layers shape (one block per invocation of a kernel) and inside the tile kernel (its
//! invocations loop over the blocks of their tile).
//!
//! Two cores: [`Core::Direct`] (rb × cb per invocation) and, where the subgroup size is fixed
//! at 8 (lavapipe), [`Core::Subgroup`]: each subgroup computes an (s·rb) × (s·cb) block, every
//! lane loads one element of rb rows and cb columns per k and shares the rows with
//! `subgroupBroadcast` — s times fewer loads, which is what lavapipe spends its time on (each
//! load is a scalar loop over the SIMD lanes there).

use std::fmt::Write;

/// Which descriptor a core multiplies for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// A layer sweep (`Sweep`): rows of the workspace × the sweep's n columns, k over s.k;
    /// forward (out = in·W̃) or backward (out = in·W̃ᵀ).
    Forward,
    Backward,
    /// A layer's gradient sums (`GradSweep`): (fan_in + 1) × fan_out, k over three blocks of
    /// workspace rows.
    Grad,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Forward => "fwd",
            Family::Backward => "bwd",
            Family::Grad => "grad",
        }
    }
}

/// A core and its block shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Core {
    /// rb × cb per invocation.
    Direct { rb: usize, cb: usize },
    /// (s·rb) × (s·cb) per subgroup of s lanes.
    Subgroup { s: usize, rb: usize, cb: usize },
}

/// Narrow outputs (n ≤ 8): rows per invocation. Measured on lavapipe, 8 rows per invocation
/// is as fast as 2 or 4 spread over more workgroups: these sweeps are bound by their loads.
pub const NARROW_RB: usize = 8;

impl Core {
    /// The core for an output n columns wide: with a fixed subgroup size, wide outputs use
    /// the subgroup core; narrow ones (the d-wide layers) one block of their full width.
    pub fn choose(n: usize, subgroup: Option<usize>, wide: (usize, usize)) -> Core {
        match subgroup {
            Some(s) if n > 8 => Core::Subgroup { s, rb: 2, cb: 2 },
            _ if n <= 8 => Core::Direct {
                rb: NARROW_RB,
                cb: n,
            },
            _ => Core::Direct {
                rb: wide.0,
                cb: wide.1,
            },
        }
    }

    /// Output rows and columns of one block (one invocation, or one subgroup).
    pub fn block(self) -> (usize, usize) {
        match self {
            Core::Direct { rb, cb } => (rb, cb),
            Core::Subgroup { s, rb, cb } => (s * rb, s * cb),
        }
    }

    /// Invocations that compute one block.
    pub fn lanes(self) -> usize {
        match self {
            Core::Direct { .. } => 1,
            Core::Subgroup { s, .. } => s,
        }
    }

    /// The block function's name for `family`.
    pub fn fn_name(self, family: Family) -> String {
        match self {
            Core::Direct { rb, cb } => format!("{}_d{rb}x{cb}", family.name()),
            Core::Subgroup { s, rb, cb } => format!("{}_sg{s}_{rb}x{cb}", family.name()),
        }
    }

    /// WGSL of the block function for `family`:
    /// sweep: `fn NAME(s: Sweep, r0: u32, c0: u32, rmax: u32, lane: u32, scale: f32)` — rows
    ///   r0.. below rmax, columns c0.. below s.n, k over 0..s.k;
    /// grad: `fn NAME(s: GradSweep, r0: u32, c0: u32, lo: u32, hi: u32, lane: u32, slot: u32,
    ///   first: bool)` — output rows r0.. below s.m, columns below s.n, k over the three
    ///   blocks of workspace rows lo..hi.
    pub fn source(self, family: Family, raw: bool) -> String {
        let mut s = String::new();
        let w = &mut s;
        let raw = raw && family != Family::Grad;
        let f = family.name();
        let name = if raw {
            format!("{}_raw", self.fn_name(family))
        } else {
            self.fn_name(family)
        };
        let (lanes, rb, cb) = match self {
            Core::Direct { rb, cb } => (1, rb, cb),
            Core::Subgroup { s, rb, cb } => (s, rb, cb),
        };
        let sg = lanes > 1;
        let (desc, rmax, extra) = match family {
            Family::Forward | Family::Backward => {
                ("Sweep", "rmax", "rmax: u32, lane: u32, scale: f32")
            }
            Family::Grad => (
                "GradSweep",
                "s.m",
                "lo: u32, hi: u32, lane: u32, slot: u32, first: bool",
            ),
        };
        let _ = writeln!(w, "fn {name}(s: {desc}, r0: u32, c0: u32, {extra}) {{");
        // Rows and columns past the edge are clamped (computed twice, never stored): no
        // branches in the inner loop.
        let lane = if sg { " + lane" } else { "" };
        for r in 0..rb {
            let _ = writeln!(
                w,
                "    let i{r} = min(r0 + {}u{lane}, {rmax} - 1u);",
                lanes * r
            );
        }
        for c in 0..cb {
            let _ = writeln!(
                w,
                "    let j{c} = min(c0 + {}u{lane}, s.n - 1u);",
                lanes * c
            );
        }
        let rows_acc = if sg { lanes * rb } else { rb };
        for q in 0..rows_acc {
            for c in 0..cb {
                let _ = writeln!(w, "    var acc{q}_{c} = 0.0;");
            }
        }
        // The k loop: over s.k for a sweep; for the gradient, over the rows lo..hi of each of
        // its three blocks, the block a literal so that the loads' choice of stream folds.
        let blocks: Vec<Option<usize>> = match family {
            Family::Grad => (0..3).map(Some).collect(),
            _ => vec![None],
        };
        for kb in blocks {
            let (open, la, lb) = match kb {
                None => (
                    "    for (var k = 0u; k < s.k; k++) {".to_string(),
                    "sweep_load_a(s, i{r}, k)".to_string(),
                    format!("{f}_load_b(s, k, j{{c}})"),
                ),
                Some(kb) => (
                    "    for (var row = lo; row < hi; row++) {".to_string(),
                    format!("grad_load_a(s, i{{r}}, {kb}u, row)"),
                    format!("grad_load_b(s, {kb}u, row, j{{c}})"),
                ),
            };
            let la = |r: usize| la.replace("{r}", &r.to_string());
            let lb = |c: usize| lb.replace("{c}", &c.to_string());
            let _ = writeln!(w, "{open}");
            for r in 0..rb {
                let _ = writeln!(w, "        let a{r} = {};", la(r));
            }
            for c in 0..cb {
                let _ = writeln!(w, "        let b{c} = {};", lb(c));
            }
            for q in 0..rows_acc {
                let x = if sg {
                    let _ = writeln!(
                        w,
                        "        let x{q} = subgroupBroadcast(a{}, {}u);",
                        q / lanes,
                        q % lanes
                    );
                    format!("x{q}")
                } else {
                    format!("a{q}")
                };
                for c in 0..cb {
                    let _ = writeln!(w, "        acc{q}_{c} = fma({x}, b{c}, acc{q}_{c});");
                }
            }
            let _ = writeln!(w, "    }}");
        }
        // The stores, written out. In the tile shape a sweep's block stores the raw product
        // (`raw`), and the tile applies the epilogue in one loop afterwards: each epilogue
        // store inlines its activations and their differences, and a kernel that runs every
        // sweep would otherwise be too long for the driver's compiler (lavapipe: minutes).
        for q in 0..rows_acc {
            for c in 0..cb {
                let col = if sg {
                    format!("c0 + {}u + lane", lanes * c)
                } else {
                    format!("c0 + {c}u")
                };
                let row = format!("r0 + {q}u");
                let store = match (family, raw) {
                    (Family::Grad, _) => {
                        format!("grad_store(s, {row}, {col}, acc{q}_{c}, slot, first)")
                    }
                    (_, true) => {
                        format!("ws[IO.raw + ({row}) * IO.raw_stride + {col}] = acc{q}_{c}")
                    }
                    (_, false) => format!("{f}_store(s, {row}, {col}, acc{q}_{c}, scale)"),
                };
                let _ = writeln!(w, "    if ({row} < {rmax} && {col} < s.n) {{ {store}; }}");
            }
        }
        let _ = writeln!(w, "}}");
        s
    }

    /// WGSL of the tile kernel's loop over the blocks of one sweep (or gradient) of its tile:
    /// `fn tile_NAME(s, lid, lane, slab0, …)`; invocations (subgroups) take blocks lid,
    /// lid + WG_SIZE, … (subgroup-uniform for the subgroup core).
    pub fn tile_source(self, family: Family) -> String {
        let name = self.fn_name(family);
        let (rows, cols) = self.block();
        let lanes = self.lanes();
        let (first_blk, step) = if lanes > 1 {
            (format!("lid / {lanes}u"), format!("WG_SIZE / {lanes}u"))
        } else {
            ("lid".to_string(), "WG_SIZE".to_string())
        };
        let f = family.name();
        match family {
            Family::Forward | Family::Backward => format!(
                "fn tile_{name}(s: Sweep, lid: u32, lane: u32, slab0: u32, scale: f32) {{
    let nrb = (TILE.rows + {rows}u - 1u) / {rows}u;
    let ncb = (s.n + {cols}u - 1u) / {cols}u;
    for (var blk = {first_blk}; blk < nrb * ncb; blk += {step}) {{
        {name}_raw(s, slab0 + (blk / ncb) * {rows}u, (blk % ncb) * {cols}u, slab0 + TILE.rows, lane, scale);
    }}
    tile_sync();
    for (var e = lid; e < TILE.rows * s.n; e += WG_SIZE) {{
        let i = slab0 + e / s.n;
        let j = e % s.n;
        {f}_store(s, i, j, ws[IO.raw + i * IO.raw_stride + j], scale);
    }}
}}
"
            ),
            Family::Grad => format!(
                "fn tile_{name}(s: GradSweep, lid: u32, lane: u32, slab0: u32, slot: u32, first: bool) {{
    let nrb = (s.m + {rows}u - 1u) / {rows}u;
    let ncb = (s.n + {cols}u - 1u) / {cols}u;
    for (var blk = {first_blk}; blk < nrb * ncb; blk += {step}) {{
        {name}(s, (blk / ncb) * {rows}u, (blk % ncb) * {cols}u, slab0, slab0 + TILE.rows, lane, slot, first);
    }}
}}
"
            ),
        }
    }
}
