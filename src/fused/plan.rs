//! The plan of a fused MVL step: the shapes, where every stream lives in the workspace, and
//! the descriptors the kernels get (`seam`) — the layers, the sweeps and gradient sums, the
//! stages of a step in order. Pure bookkeeping — no GPU calls — so that the layout can be
//! tested and read in one place; `module.rs` writes the WGSL and the kernel list from it.

use super::core::{Core, Family};
use super::seam::{self, mode, GradSweep, Io, Layer, Sweep, NONE};
use crate::error::{Error, Result};
use crate::ops::Fun;

/// Rows per workgroup of the layers shape's per-sample kernels.
pub(super) const ROWS_WG: usize = 64;

/// How a step is laid out on the adapter (see [`super::shape`] for the choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Two dispatches per step: one for everything per sample (a workgroup per tile of
    /// rows: the sweeps of every layer, the step, the differences, the adjoints and its
    /// tile's gradient sums), one for the parameters (sums of the tiles' partials, chain rule
    /// through σ, optimiser). GPUs (small tiles, many workgroups) and CPU drivers (a few
    /// long workgroups).
    Tile(TileShape),
    /// One kernel per stage, each shaped like a matrix product over the whole batch: wide
    /// layers and large batches, where a tile's sweeps stop paying.
    Layers(LayersShape),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileShape {
    /// Sized for a CPU driver (a few long workgroups) rather than a GPU.
    pub cpu: bool,
    /// Rows per tile.
    pub rows: usize,
    /// Workgroups at most (the step uses min(groups, tiles)).
    pub groups: usize,
    /// Invocations per workgroup (a power of two).
    pub size: usize,
    /// Block of the direct core for wide outputs (rows, columns per invocation).
    pub block: (usize, usize),
    /// Keep a copy of the weights in workgroup memory (where they fit).
    pub workgroup_weights: bool,
    /// Where they do not: the backward sweeps read a transposed copy Wᵀ, made by a first
    /// dispatch of the step, so that neighbouring invocations read neighbouring words.
    pub transposed_weights: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayersShape {
    /// Invocations per workgroup of the reductions (power iteration, sums).
    pub size: usize,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Tile(t) => write!(
                f,
                "{} ({} dispatches a step: up to {} workgroups of {} invocations, tiles of {} rows{})",
                self.name(),
                if t.transposed_weights && !t.workgroup_weights { 3 } else { 2 },
                t.groups,
                t.size,
                t.rows,
                if t.workgroup_weights {
                    ", weights in workgroup memory"
                } else if t.transposed_weights {
                    ", a transposed copy of the weights for the backward sweeps"
                } else {
                    ""
                }
            ),
            Shape::Layers(_) => write!(f, "layers (one kernel per stage, matrix-product shaped)"),
        }
    }
}

impl Shape {
    pub fn name(&self) -> &'static str {
        match self {
            Shape::Tile(t) if t.cpu => "tile-cpu",
            Shape::Tile(_) => "tile-gpu",
            Shape::Layers(_) => "layers",
        }
    }
}

/// When a kernel runs in a step whose minibatch is processed in several sub-batches (layers
/// shape): once before them (the spectral norm), once per sub-batch, or once after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Head,
    Body,
    Tail,
}

/// One kernel launch of a step: an entry point of the step's module and its grid.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub label: String,
    pub entry: String,
    pub phase: Phase,
    pub groups: [u32; 3],
}

/// Streams of one hidden layer (each rows × n), in workspace elements.
#[derive(Clone, Debug)]
pub struct Hidden {
    pub n: usize,
    pub z: usize,
    pub a: usize,
    pub q: usize,
    pub r: usize,
    pub ad: usize,
    pub zd: usize,
    pub tz: usize,
    pub ta: usize,
    pub da: usize,
    /// [p; dz; ddz] contiguous: the right factor of the layer's gradient sums.
    pub p: usize,
    pub dz: usize,
    pub ddz: usize,
    pub rho: usize,
}

/// Spectral-norm slots of one normalised layer, in `sn` elements.
#[derive(Clone, Debug)]
pub struct SnSlots {
    pub u: usize,
    pub u_new: usize,
    pub v: usize,
    pub sigma: usize,
}

/// The network a plan is for.
#[derive(Clone, Debug, PartialEq)]
pub struct Net {
    /// Width of the energy's variable and of ψ.
    pub d: usize,
    /// Condition columns of a conditional energy ⟨ỹ, ψ([ỹ, c])⟩ (0: none).
    pub dc: usize,
    pub hidden: Vec<usize>,
    pub act: Fun,
    pub spectral_norm: bool,
    /// The network's input is s·y (s = 1: y itself).
    pub scale: f32,
}

/// What a step does: train on drawn minibatches (power iteration, optimiser), or evaluate
/// given rows with drawn or given noise (stored spectral-norm vectors, gradient only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    /// Train on the given rows (in order) with drawn noise: the auto-encoders' energies.
    TrainGiven,
    Eval,
    EvalGivenNoise,
}

impl Mode {
    /// The `StepParams::flags` of this mode.
    pub fn flags(self) -> u32 {
        use seam::flags::*;
        match self {
            Mode::Train => TRAIN,
            Mode::TrainGiven => TRAIN | GIVEN_ROWS,
            Mode::Eval => GIVEN_ROWS,
            Mode::EvalGivenNoise => GIVEN_ROWS | GIVEN_NOISE,
        }
    }
}

/// Settings the kernels are specialised for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Specialise {
    pub eps: f32,
    pub rescale: bool,
    pub control_variate: bool,
    pub energy_reg: f32,
    /// Optimiser rule code (shaders/optim_lib.wgsl).
    pub opt_code: u32,
    /// The adapter's subgroup size where it is fixed and the subgroup core is used.
    pub subgroup: Option<usize>,
    /// Data on the sphere S^(d−1) in chart form: the Riemannian step of SPEC §5.
    pub sphere: bool,
    /// Data in the Poincaré ball of R^(d−1) (H^(d−1)); the network sees the hyperboloid point.
    pub ball: bool,
}

struct Alloc(usize);

impl Alloc {
    fn take(&mut self, n: usize) -> usize {
        let at = self.0;
        self.0 += n;
        at
    }
    fn take_aligned(&mut self, n: usize, align: usize) -> usize {
        self.0 = self.0.next_multiple_of(align);
        self.take(n)
    }
}

/// The core family of a sweep.
pub(super) fn sweep_family(s: &Sweep) -> Family {
    if s.forward == 1 {
        Family::Forward
    } else {
        Family::Backward
    }
}

/// One stage of a step, in order (see the table in `fused/mod.rs`).
#[derive(Clone, Debug)]
pub(super) enum Stage {
    Sigma,
    Input,
    Sweep(String, Sweep, Core),
    Step,
    Diff,
    Adj,
    Dots,
    Sums,
    Grad(usize, GradSweep, Core),
    Update,
}

/// Everything about one model shape, batch and layout.
#[derive(Clone, Debug)]
pub struct Plan {
    pub shape: Shape,
    /// Rows of one launch at most: the minibatch (tile shape: any size, in tiles), the
    /// sub-batch (layers shape), or the evaluation chunk.
    pub b: usize,
    /// Workspace rows (rows in flight): the tile shape's groups × tile rows, else b.
    pub ws_rows: usize,
    pub net: Net,
    /// n₀ = d + dc, n₁ … n_{L−1} hidden, n_L = d.
    pub widths: Vec<usize>,
    /// theta offsets of W_l and b_l, l = 1..L (index l − 1), and theta's length.
    pub w_off: Vec<usize>,
    pub b_off: Vec<usize>,
    pub theta_len: usize,
    pub hidden: Vec<Hidden>,
    pub io: Io,
    /// Layers shape: rows of each split chunk of the gradient sums, and the chunks.
    pub chunk_rows: usize,
    pub chunks: usize,
    /// Tile shape: tiles of a full launch and the workgroups that take them.
    pub tiles: usize,
    pub groups: usize,
    pub ws_len: usize,
    pub sn_slots: Vec<SnSlots>,
    pub sn_len: usize,
}

impl Plan {
    /// Lay out `net` for launches of at most `b` rows in `shape`; data in the Poincaré ball
    /// (`ball`) are one column narrower than the network's variable. `theta` gives (offsets,
    /// total) of W₁, b₁, W₂, b₂, … as packed on the device, and `align` the binding alignment
    /// in elements (outputs read as tensors start aligned).
    pub fn new(
        net: &Net,
        b: usize,
        shape: Shape,
        ball: bool,
        theta: (&[usize], usize),
        align: usize,
    ) -> Result<Plan> {
        let d = net.d;
        if b == 0 || d == 0 || net.hidden.is_empty() || net.hidden.contains(&0) {
            return Err(Error::Invalid(format!(
                "fused MVL needs a batch, data columns and at least one hidden layer (batch {b}, width {d}, hidden {:?})",
                net.hidden
            )));
        }
        if !(net.scale.is_finite() && net.scale > 0.0) {
            return Err(Error::Invalid(format!(
                "the network's input scale must be positive, got {}",
                net.scale
            )));
        }
        let din = d + net.dc;
        let mut widths = vec![din];
        widths.extend_from_slice(&net.hidden);
        widths.push(d);
        let layers = widths.len() - 1;
        if theta.0.len() != 2 * layers {
            return Err(Error::Shape(format!(
                "{} packed parameter tensors for {layers} layers",
                theta.0.len()
            )));
        }
        let w_off: Vec<usize> = (0..layers).map(|l| theta.0[2 * l]).collect();
        let b_off: Vec<usize> = (0..layers).map(|l| theta.0[2 * l + 1]).collect();
        let (tiles, groups, rows) = match shape {
            Shape::Tile(t) => {
                if t.rows == 0 || t.groups == 0 || !t.size.is_power_of_two() {
                    return Err(Error::Invalid(format!(
                        "tile shape needs rows, workgroups and a power-of-two workgroup size: {t:?}"
                    )));
                }
                let tiles = b.div_ceil(t.rows);
                let groups = t.groups.min(tiles);
                // llvmpipe ends any shader loop after 65 535 iterations, silently.
                if tiles.div_ceil(groups) > 65_535 {
                    return Err(Error::Invalid(format!(
                        "a launch of {b} rows is {} tiles of {} rows per workgroup, more than a shader loop may run; use a smaller batch or --shape layers",
                        tiles.div_ceil(groups),
                        t.rows
                    )));
                }
                (tiles, groups, groups * t.rows)
            }
            Shape::Layers(_) => (1, 1, b),
        };
        let nsn = if net.spectral_norm {
            net.hidden.len()
        } else {
            0
        };

        let mut ws = Alloc(0);
        let bd = rows * d;
        let pl = ws.take(3 * bd);
        let mut io = Io {
            rows: rows as u32,
            d: d as u32,
            din: din as u32,
            dw: if ball { d - 1 } else { d } as u32,
            dc: net.dc as u32,
            scale: net.scale,
            x0: ws.take(rows * din) as u32,
            q0: ws.take(bd) as u32,
            r0: ws.take(bd) as u32,
            pl: pl as u32,
            x0l: (pl + bd) as u32,
            dxl: (pl + 2 * bd) as u32,
            nz: ws.take(bd) as u32,
            g: ws.take(bd) as u32,
            psi: ws.take(bd) as u32,
            dpsi: ws.take(bd) as u32,
            dg: ws.take(bd) as u32,
            xi: ws.take(bd) as u32,
            dx: ws.take(bd) as u32,
            v: ws.take(bd) as u32,
            ch: ws.take(bd) as u32,
            dch: ws.take(bd) as u32,
            eps: ws.take(rows) as u32,
            e0: ws.take(rows) as u32,
            e1: ws.take(rows) as u32,
            c0: ws.take(rows) as u32,
            c1: ws.take(rows) as u32,
            dots: ws.take(rows * nsn) as u32,
            ..Io::default()
        };
        // The tile shape's raw products of one sweep (before its epilogue).
        let widest = widths.iter().copied().max().unwrap_or(1);
        io.raw = match shape {
            Shape::Tile(_) => ws.take(rows * widest),
            Shape::Layers(_) => ws.take(1),
        } as u32;
        io.raw_stride = widest as u32;
        io.wt = match shape {
            Shape::Tile(t) if t.transposed_weights => ws.take(theta.1),
            _ => ws.take(1),
        } as u32;
        io.loss = ws.take_aligned(rows, align) as u32;
        io.out = ws.take_aligned(4, align) as u32;
        let hidden: Vec<Hidden> = net
            .hidden
            .iter()
            .map(|&n| {
                let bn = rows * n;
                let p = ws.take(3 * bn);
                Hidden {
                    n,
                    z: ws.take(bn),
                    a: ws.take(bn),
                    q: ws.take(bn),
                    r: ws.take(bn),
                    ad: ws.take(bn),
                    zd: ws.take(bn),
                    tz: ws.take(bn),
                    ta: ws.take(bn),
                    da: ws.take(bn),
                    p,
                    dz: p + bn,
                    ddz: p + 2 * bn,
                    rho: ws.take(bn),
                }
            })
            .collect();
        // Layers shape: the gradient sums over the rows in chunks of at least 64 rows, at
        // most 32 chunks; tile shape: one slot per workgroup.
        // (At most 2^14 rows a chunk, three blocks of them in one loop nest: llvmpipe ends
        // an invocation's loops after 65 535 iterations in all.)
        let chunk_rows = rows.div_ceil(32).clamp(64, 1 << 14).min(rows);
        let chunks = rows.div_ceil(chunk_rows);
        let (parts, scal_slots) = match shape {
            Shape::Tile(_) => (groups, groups),
            Shape::Layers(_) => (chunks, 1),
        };
        let scal_len = seam::SCAL_FIXED as usize + nsn;
        io.part = ws.take(parts * theta.1) as u32;
        io.parts = parts as u32;
        io.scal = ws.take(scal_slots * scal_len) as u32;
        io.scal_slots = scal_slots as u32;
        io.scal_len = scal_len as u32;
        io.grad = ws.take_aligned(theta.1, align) as u32;
        io.theta_len = theta.1 as u32;
        let ws_len = ws.0;

        let mut sn = Alloc(0);
        let sn_slots = (0..nsn)
            .map(|m| {
                let (fan_in, n) = (widths[m], widths[m + 1]);
                SnSlots {
                    u: sn.take_aligned(n, align),
                    u_new: sn.take(n),
                    v: sn.take(fan_in),
                    sigma: sn.take(1),
                }
            })
            .collect();
        Ok(Plan {
            shape,
            b,
            ws_rows: rows,
            net: net.clone(),
            widths,
            w_off,
            b_off,
            theta_len: theta.1,
            hidden,
            io,
            chunk_rows,
            chunks,
            tiles,
            groups,
            ws_len,
            sn_slots,
            sn_len: sn.0.max(1),
        })
    }

    /// Number of layers L (hidden layers + the output layer).
    pub fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// The layer table the kernels get (`LAYERS`).
    pub fn layer_table(&self) -> Vec<Layer> {
        (1..=self.layers())
            .map(|l| {
                let mut t = Layer {
                    fan_in: self.widths[l - 1] as u32,
                    fan_out: self.widths[l] as u32,
                    w_off: self.w_off[l - 1] as u32,
                    b_off: self.b_off[l - 1] as u32,
                    sigma: NONE,
                    u: NONE,
                    u_new: NONE,
                    v: NONE,
                    sn_index: NONE,
                    z: NONE,
                    a: NONE,
                    q: NONE,
                    r: NONE,
                    ad: NONE,
                    zd: NONE,
                    tz: NONE,
                    ta: NONE,
                    da: NONE,
                    p: NONE,
                    dz: NONE,
                    ddz: NONE,
                    rho: NONE,
                };
                if let Some(s) = self.sn_slots.get(l - 1) {
                    t.sigma = s.sigma as u32;
                    t.u = s.u as u32;
                    t.u_new = s.u_new as u32;
                    t.v = s.v as u32;
                    t.sn_index = (l - 1) as u32;
                }
                if let Some(h) = self.hidden.get(l - 1) {
                    let o = |x: usize| x as u32;
                    (t.z, t.a, t.q, t.r, t.ad, t.zd) =
                        (o(h.z), o(h.a), o(h.q), o(h.r), o(h.ad), o(h.zd));
                    (t.tz, t.ta, t.da, t.p, t.dz, t.ddz, t.rho) = (
                        o(h.tz),
                        o(h.ta),
                        o(h.da),
                        o(h.p),
                        o(h.dz),
                        o(h.ddz),
                        o(h.rho),
                    );
                }
                t
            })
            .collect()
    }

    /// Block shape of the direct core for wide outputs.
    fn wide_block(&self) -> (usize, usize) {
        match self.shape {
            Shape::Tile(t) => t.block,
            Shape::Layers(_) => (8, 8),
        }
    }

    pub(super) fn core(&self, s: &Specialise, n: usize) -> Core {
        Core::choose(n, s.subgroup, self.wide_block())
    }

    /// The forward sweep of layer l in `m` (see shaders/fused/layers.wgsl).
    fn forward(&self, l: usize, m: u32) -> Sweep {
        let io = &self.io;
        let last = l == self.layers();
        let (input, stride) = match (l, m) {
            (1, mode::VALUE) => (io.x0, io.din),
            (1, mode::DIFF) => (io.dx, io.d),
            (1, _) => (io.v, io.d),
            (_, _) => {
                let h = &self.hidden[l - 2];
                let at = match m {
                    mode::VALUE => h.a,
                    mode::DIFF => h.ad,
                    _ => h.ta,
                };
                (at as u32, h.n as u32)
            }
        };
        // Layer 1 of a conditional energy: the move and v have no condition columns.
        let k = if l == 1 && m != mode::VALUE {
            self.net.d
        } else {
            self.widths[l - 1]
        };
        let mut s = Sweep {
            forward: 1,
            mode: m,
            layer: l as u32,
            n: self.widths[l] as u32,
            k: k as u32,
            input,
            in_stride: stride,
            hidden: (!last) as u32,
            out: if m == mode::VALUE { io.psi } else { io.dpsi },
            w_off: self.w_off[l - 1] as u32,
            b_off: self.b_off[l - 1] as u32,
            ..self.sweep_defaults(l)
        };
        if let Some(h) = self.hidden.get(l - 1).filter(|_| !last) {
            self.set_streams(&mut s, h);
        }
        s
    }

    /// The backward sweep of layer l (into layer l − 1, or the input) in `m`.
    fn backward(&self, l: usize, m: u32) -> Sweep {
        let io = &self.io;
        let last = l == self.layers();
        let (input, stride) = match (last, m) {
            (true, mode::VALUE) => (io.x0, io.din),
            (true, mode::DIFF) => (io.dx, io.d),
            (true, _) => (io.v, io.d),
            (false, _) => {
                let h = &self.hidden[l - 1];
                let at = match m {
                    mode::VALUE => h.dz,
                    mode::DIFF => h.ddz,
                    _ => h.rho,
                };
                (at as u32, h.n as u32)
            }
        };
        let n = if l == 1 {
            self.net.d
        } else {
            self.widths[l - 1]
        };
        let transposed =
            matches!(self.shape, Shape::Tile(t) if t.transposed_weights && !t.workgroup_weights);
        let mut s = Sweep {
            forward: 0,
            wt: transposed as u32,
            wt_stride: self.widths[l - 1] as u32,
            mode: m,
            layer: l as u32,
            n: n as u32,
            k: self.widths[l] as u32,
            input,
            in_stride: stride,
            hidden: (l >= 2) as u32,
            out: if m == mode::VALUE { io.g } else { io.dg },
            psi: if m == mode::VALUE { io.psi } else { io.dpsi },
            w_off: self.w_off[l - 1] as u32,
            b_off: NONE,
            ..self.sweep_defaults(l)
        };
        if l >= 2 {
            self.set_streams(&mut s, &self.hidden[l - 2]);
        }
        s
    }

    fn sweep_defaults(&self, l: usize) -> Sweep {
        let wg = matches!(self.shape, Shape::Tile(t) if t.workgroup_weights);
        Sweep {
            wg_weights: wg as u32,
            wg_w_off: self.w_off[l - 1] as u32,
            psi: NONE,
            out: NONE,
            z: NONE,
            a: NONE,
            ad: NONE,
            zd: NONE,
            tz: NONE,
            ta: NONE,
            q: NONE,
            r: NONE,
            da: NONE,
            dz: NONE,
            ddz: NONE,
            rho: NONE,
            p: NONE,
            ..Sweep::default()
        }
    }

    fn set_streams(&self, s: &mut Sweep, h: &Hidden) {
        let o = |x: usize| x as u32;
        (s.z, s.a, s.ad, s.zd, s.tz, s.ta) = (o(h.z), o(h.a), o(h.ad), o(h.zd), o(h.tz), o(h.ta));
        (s.q, s.r, s.da, s.dz, s.ddz, s.rho, s.p) =
            (o(h.q), o(h.r), o(h.da), o(h.dz), o(h.ddz), o(h.rho), o(h.p));
    }

    /// The gradient sums of layer l.
    fn grad(&self, l: usize) -> GradSweep {
        let (fi, fo) = (self.widths[l - 1], self.widths[l]);
        let io = &self.io;
        let (left, left_q, left_r, stride, qr) = if l == 1 {
            (io.x0, io.q0, io.r0, io.din, io.d)
        } else {
            let h = &self.hidden[l - 2];
            (h.a as u32, h.q as u32, h.r as u32, h.n as u32, h.n as u32)
        };
        let right = match self.hidden.get(l - 1) {
            Some(h) => h.p as u32,
            None => io.pl,
        };
        GradSweep {
            layer: l as u32,
            m: (fi + 1) as u32,
            n: fo as u32,
            left,
            left_q,
            left_r,
            left_stride: stride,
            qr_width: qr,
            right,
            w_off: self.w_off[l - 1] as u32,
            b_off: self.b_off[l - 1] as u32,
            rows: io.rows,
        }
    }

    /// An upper bound on the loop iterations one invocation of the tile kernel runs (every
    /// loop's together): llvmpipe (Mesa 22) counts them in one counter per invocation and
    /// silently leaves every loop once it reaches 65 535 — a tile kernel past that computes
    /// garbage there (measured: two loops of 40 000 run 40 000 and 25 534 times).
    pub fn tile_loop_iterations(&self, s: &Specialise) -> usize {
        let Shape::Tile(t) = self.shape else {
            return 0;
        };
        let per = |n: usize| n.div_ceil(t.size);
        let (d, rows) = (self.net.d, t.rows);
        let row_loops = per(rows) * (6 * d + self.net.dc + 2);
        let mut tile = 0;
        for st in self.stages(s) {
            tile += match st {
                Stage::Sigma => 0,
                Stage::Input | Stage::Step | Stage::Diff | Stage::Adj => row_loops,
                Stage::Dots => per(rows) * self.hidden.iter().map(|h| h.n + 1).sum::<usize>(),
                Stage::Sums => per(self.io.scal_len as usize) * (rows + rows.div_ceil(64) + 1),
                Stage::Sweep(_, sw, core) => {
                    let (br, bc) = core.block();
                    let blocks = rows.div_ceil(br) * (sw.n as usize).div_ceil(bc);
                    let per_blocks = blocks.div_ceil(t.size / core.lanes());
                    per_blocks * (sw.k as usize + 1) + per(rows * sw.n as usize) + 2
                }
                Stage::Grad(_, g, core) => {
                    let (br, bc) = core.block();
                    let blocks = (g.m as usize).div_ceil(br) * (g.n as usize).div_ceil(bc);
                    blocks.div_ceil(t.size / core.lanes()) * (3 * rows + 4)
                }
                Stage::Update => 1,
            };
        }
        let tiles_each = self.tiles.div_ceil(self.groups);
        let log = t.size.trailing_zeros() as usize + 1;
        let sigma: usize = self
            .sn_slots
            .iter()
            .enumerate()
            .map(|(m, _)| {
                let (fi, fo) = (self.widths[m], self.widths[m + 1]);
                per(fi) * (fo + 3) + per(fo) * (fi + 4) + 3 * log + 2
            })
            .sum();
        sigma + tiles_each * (tile + 1)
    }

    /// The stages of a step, in order.
    pub(super) fn stages(&self, s: &Specialise) -> Vec<Stage> {
        let layers = self.layers();
        let names = ["value", "diff", "adjoint"];
        let fwd = |l: usize, m: u32| {
            let sw = self.forward(l, m);
            let core = self.core(s, sw.n as usize);
            Stage::Sweep(format!("forward_{l}_{}", names[m as usize]), sw, core)
        };
        let bwd = |l: usize, m: u32| {
            let sw = self.backward(l, m);
            let core = self.core(s, sw.n as usize);
            Stage::Sweep(format!("backward_{l}_{}", names[m as usize]), sw, core)
        };
        let mut k = Vec::new();
        if !self.sn_slots.is_empty() {
            k.push(Stage::Sigma);
        }
        k.push(Stage::Input);
        k.extend((1..=layers).map(|l| fwd(l, mode::VALUE)));
        k.extend((1..=layers).rev().map(|l| bwd(l, mode::VALUE)));
        k.push(Stage::Step);
        k.extend((1..=layers).map(|l| fwd(l, mode::DIFF)));
        k.push(Stage::Diff);
        k.extend((1..=layers).rev().map(|l| bwd(l, mode::DIFF)));
        k.push(Stage::Adj);
        k.extend((1..layers).map(|l| fwd(l, mode::ADJOINT)));
        k.extend((2..=layers).rev().map(|l| bwd(l, mode::ADJOINT)));
        if !self.sn_slots.is_empty() {
            k.push(Stage::Dots);
        }
        k.push(Stage::Sums);
        for l in 1..=layers {
            let g = self.grad(l);
            let core = self.core(s, g.n as usize);
            k.push(Stage::Grad(l, g, core));
        }
        k.push(Stage::Update);
        k
    }
}
