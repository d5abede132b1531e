//! The plan of a fused MVL step: where every stream lives in the workspace, the layer table,
//! and the list of kernels with their override constants and grids. Pure bookkeeping — no
//! GPU calls — so that the layout can be unit-tested and read in one place.

use super::core::Core;
use crate::error::{Error, Result};
use crate::ops::Fun;

/// Words per layer in the layer table (shaders/fused/rows.wgsl, `META_STRIDE`).
pub const META_STRIDE: usize = 16;
/// Rows per workgroup of the per-sample kernels.
const ROWS_WG: usize = 64;

/// Which WGSL file a kernel is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// `layer_forward.wgsl` + the matmul core.
    Forward,
    /// `layer_backward.wgsl` + the matmul core.
    Backward,
    /// `layer_grad.wgsl` + the matmul core.
    Grad,
    /// `rows.wgsl` (per-sample kernels, sums, update, power iteration).
    Rows,
}

/// When a kernel runs in a step whose minibatch is processed in several sub-batches: once
/// before them (the spectral norm), once per sub-batch, or once after them (the update).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Head,
    Body,
    Tail,
}

/// One kernel launch of a step.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub label: String,
    pub phase: Phase,
    pub source: Source,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, f64)>,
    pub groups: [u32; 3],
    /// Layer kernels: the matmul core (None for the per-sample kernels).
    pub core: Option<Core>,
}

/// Streams of one hidden layer (each B × n), in workspace elements. [a, q, r] and
/// [p, dz, ddz] are contiguous: the left and right factors of the layer's gradient sums.
#[derive(Clone, Debug)]
pub struct Hidden {
    pub n: usize,
    pub a: usize,
    pub q: usize,
    pub r: usize,
    pub p: usize,
    pub dz: usize,
    pub ddz: usize,
    pub z: usize,
    pub da: usize,
    pub zd: usize,
    pub ad: usize,
    pub tz: usize,
    pub ta: usize,
    pub rho: usize,
}

/// Per-sample streams of width D and scalars, in workspace elements.
#[derive(Clone, Debug)]
pub struct Io {
    pub x0: usize,
    pub q0: usize,
    pub r0: usize,
    pub pl: usize,
    pub x0l: usize,
    pub dxl: usize,
    pub nz: usize,
    pub g: usize,
    pub psi: usize,
    pub dpsi: usize,
    pub dg: usize,
    pub xi: usize,
    pub dx: usize,
    pub v: usize,
    /// Sphere: the chart form (x, σ) of x₀ and the chart move Δx (the network sees y(x)).
    pub ch: usize,
    pub dch: usize,
    pub eps: usize,
    pub e0: usize,
    pub e1: usize,
    pub loss: usize,
    pub c0: usize,
    pub c1: usize,
    pub dots: usize,
    /// [loss, mean E₀, mean E₁, (unused)]
    pub out: usize,
}

/// Spectral-norm slots of one normalised layer, in `sn` elements.
#[derive(Clone, Debug)]
pub struct SnSlots {
    pub u: usize,
    pub v: usize,
    pub tmp: usize,
    pub sigma: usize,
    pub dot: usize,
}

/// Everything about one model shape and batch size.
#[derive(Clone, Debug)]
pub struct Plan {
    pub b: usize,
    pub d: usize,
    /// n₀ = d, n₁ … n_{L−1} hidden, n_L = d.
    pub widths: Vec<usize>,
    pub act: Fun,
    /// theta offsets of W_l and b_l, l = 1..L (index l − 1), and theta's length.
    pub w_off: Vec<usize>,
    pub b_off: Vec<usize>,
    pub theta_len: usize,
    pub hidden: Vec<Hidden>,
    pub io: Io,
    /// Rows of each split-K chunk of the gradient sums, and the number of chunks.
    pub kc: usize,
    pub chunks: usize,
    pub part: usize,
    pub grad: usize,
    pub ws_len: usize,
    /// The layer table at sn[0..], then per normalised layer its slots.
    pub sn_slots: Vec<SnSlots>,
    pub sn_len: usize,
}

/// What a step does: train on drawn minibatches (power iteration, optimiser), or evaluate
/// given rows with drawn or given noise (stored spectral-norm vectors, gradient only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
    EvalGivenNoise,
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
    /// Data on the sphere S^(D−1) in chart form: the Riemannian step of SPEC §5.
    pub sphere: bool,
    /// Data in the Poincaré ball of R^(D−1) (H^(D−1)); the network sees the hyperboloid point.
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

impl Plan {
    /// Lay out a model with hidden widths `hidden` on data of width `d`, batch `b`.
    /// `theta` gives (offsets, total) of W₁, b₁, W₂, b₂, … as packed on the device, and
    /// `align` the binding alignment in elements (outputs read as tensors start aligned).
    pub fn new(
        b: usize,
        d: usize,
        hidden: &[usize],
        act: Fun,
        spectral_norm: bool,
        theta: (&[usize], usize),
        align: usize,
    ) -> Result<Plan> {
        if b == 0 || d == 0 || hidden.is_empty() || hidden.contains(&0) {
            return Err(Error::Invalid(format!(
                "fused MVL needs a batch, data columns and at least one hidden layer (batch {b}, width {d}, hidden {hidden:?})"
            )));
        }
        let mut widths = vec![d];
        widths.extend_from_slice(hidden);
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

        let mut ws = Alloc(0);
        let bd = b * d;
        let x0 = ws.take(3 * bd);
        let pl = ws.take(3 * bd);
        let mut io = Io {
            x0,
            q0: x0 + bd,
            r0: x0 + 2 * bd,
            pl,
            x0l: pl + bd,
            dxl: pl + 2 * bd,
            nz: ws.take(bd),
            g: ws.take(bd),
            psi: ws.take(bd),
            dpsi: ws.take(bd),
            dg: ws.take(bd),
            xi: ws.take(bd),
            dx: ws.take(bd),
            v: ws.take(bd),
            ch: ws.take(bd),
            dch: ws.take(bd),
            eps: ws.take(b),
            e0: ws.take(b),
            e1: ws.take(b),
            loss: 0,
            c0: ws.take(b),
            c1: ws.take(b),
            dots: ws.take(b * hidden.len()),
            out: 0,
        };
        io.loss = ws.take_aligned(b, align);
        io.out = ws.take_aligned(4, align);
        let hidden_layout: Vec<Hidden> = hidden
            .iter()
            .map(|&n| {
                let bn = b * n;
                let a = ws.take(3 * bn);
                let p = ws.take(3 * bn);
                Hidden {
                    n,
                    a,
                    q: a + bn,
                    r: a + 2 * bn,
                    p,
                    dz: p + bn,
                    ddz: p + 2 * bn,
                    z: ws.take(bn),
                    da: ws.take(bn),
                    zd: ws.take(bn),
                    ad: ws.take(bn),
                    tz: ws.take(bn),
                    ta: ws.take(bn),
                    rho: ws.take(bn),
                }
            })
            .collect();
        // Gradient sums over K = 3B rows in chunks of at least 256 rows, at most 32 chunks.
        let k = 3 * b;
        let kc = k.div_ceil(32).max(256).min(k);
        let chunks = k.div_ceil(kc);
        let part = ws.take(chunks * theta.1);
        let grad = ws.take_aligned(theta.1, align);
        let ws_len = ws.0;

        let mut sn = Alloc(0);
        sn.take(META_STRIDE * layers);
        let sn_slots = if spectral_norm {
            hidden
                .iter()
                .enumerate()
                .map(|(m, &n)| {
                    let fan_in = widths[m];
                    SnSlots {
                        u: sn.take_aligned(n, align),
                        v: sn.take(fan_in),
                        tmp: sn.take(fan_in + n),
                        sigma: sn.take(1),
                        dot: sn.take(1),
                    }
                })
                .collect()
        } else {
            vec![]
        };
        Ok(Plan {
            b,
            d,
            widths,
            act,
            w_off,
            b_off,
            theta_len: theta.1,
            hidden: hidden_layout,
            io,
            kc,
            chunks,
            part,
            grad,
            ws_len,
            sn_slots,
            sn_len: sn.0.max(1),
        })
    }

    /// Number of layers L (hidden layers + the output layer).
    pub fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// The layer table written at the start of `sn` (u32 words), see `rows.wgsl`.
    pub fn meta(&self) -> Vec<u32> {
        let mut m = vec![0u32; META_STRIDE * self.layers()];
        for l in 1..=self.layers() {
            let row = &mut m[(l - 1) * META_STRIDE..l * META_STRIDE];
            row[0] = self.widths[l - 1] as u32;
            row[1] = self.widths[l] as u32;
            row[2] = self.w_off[l - 1] as u32;
            row[3] = self.b_off[l - 1] as u32;
            row[4] = u32::MAX;
            if let Some(s) = self.sn_slots.get(l - 1) {
                row[4] = s.sigma as u32;
                row[5] = s.u as u32;
                row[6] = s.v as u32;
                row[7] = s.dot as u32;
                row[14] = s.tmp as u32;
            }
            if let Some(h) = self.hidden.get(l - 1) {
                row[8] = h.z as u32;
                row[9] = h.p as u32;
                row[10] = h.dz as u32;
                row[11] = h.zd as u32;
                row[12] = h.tz as u32;
                row[13] = h.ddz as u32;
            }
        }
        m
    }

    fn sigma_slot(&self, l: usize) -> f64 {
        self.sn_slots
            .get(l - 1)
            .map_or(u32::MAX as f64, |s| s.sigma as f64)
    }

    /// Constants every kernel gets.
    fn common(&self, s: &Specialise) -> Vec<(&'static str, f64)> {
        vec![
            ("B", self.b as f64),
            ("D", self.d as f64),
            ("ACT", self.act.code() as f64),
            ("EPS0", s.eps as f64),
            ("RESCALE", s.rescale as u8 as f64),
            ("CV", s.control_variate as u8 as f64),
            ("REG", s.energy_reg as f64),
            ("SPHERE", s.sphere as u8 as f64),
            ("BALL", s.ball as u8 as f64),
        ]
    }

    fn rows_constants(&self, s: &Specialise) -> Vec<(&'static str, f64)> {
        let io = &self.io;
        let mut c = self.common(s);
        c.extend([
            ("ROWS_WG", ROWS_WG as f64),
            ("O_X0", io.x0 as f64),
            ("O_X0L", io.x0l as f64),
            ("O_NZ", io.nz as f64),
            ("O_G", io.g as f64),
            ("O_PSI", io.psi as f64),
            ("O_DPSI", io.dpsi as f64),
            ("O_DG", io.dg as f64),
            ("O_XI", io.xi as f64),
            ("O_DX", io.dx as f64),
            ("O_DXL", io.dxl as f64),
            ("O_V", io.v as f64),
            ("O_CH", io.ch as f64),
            ("O_DCH", io.dch as f64),
            ("O_Q0", io.q0 as f64),
            ("O_R0", io.r0 as f64),
            ("O_PL", io.pl as f64),
            ("O_EPS", io.eps as f64),
            ("O_E0", io.e0 as f64),
            ("O_E1", io.e1 as f64),
            ("O_LOSS", io.loss as f64),
            ("O_C0", io.c0 as f64),
            ("O_C1", io.c1 as f64),
            ("O_DOTS", io.dots as f64),
            ("O_OUT", io.out as f64),
            ("META", 0.0),
            ("NL", self.layers() as f64),
            ("NSN", self.sn_slots.len() as f64),
            ("PART", self.part as f64),
            ("CHUNKS", self.chunks as f64),
            ("THETA_LEN", self.theta_len as f64),
            ("O_GRAD", self.grad as f64),
            ("OPT", s.opt_code as f64),
        ]);
        c
    }

    fn rows_kernel(&self, s: &Specialise, entry: &'static str, groups: [u32; 3]) -> KernelSpec {
        let phase = match entry {
            "power_iteration" | "sigma_stored" => Phase::Head,
            "update_train" | "update_grad" => Phase::Tail,
            _ => Phase::Body,
        };
        KernelSpec {
            label: entry.to_string(),
            phase,
            source: Source::Rows,
            entry,
            constants: self.rows_constants(s),
            groups,
            core: None,
        }
    }

    /// Core and grid of a layer kernel with an (m × n) output.
    fn matmul(s: &Specialise, m: usize, n: usize, chunks: usize) -> (Option<Core>, [u32; 3]) {
        let (core, groups) = Core::choose(m, n, chunks, s.subgroup);
        (Some(core), groups)
    }

    /// A forward-shaped layer kernel (`layer_forward.wgsl`) for layer l in `mode`.
    fn forward(&self, s: &Specialise, l: usize, mode: u32) -> KernelSpec {
        let (k, n) = (self.widths[l - 1], self.widths[l]);
        let io = &self.io;
        let input = match (l, mode) {
            (1, 0) => io.x0,
            (1, 1) => io.dx,
            (1, _) => io.v,
            (_, 0) => self.hidden[l - 2].a,
            (_, 1) => self.hidden[l - 2].ad,
            _ => self.hidden[l - 2].ta,
        };
        let mut c = self.common(s);
        c.extend([
            ("M", self.b as f64),
            ("N", n as f64),
            ("K", k as f64),
            ("MODE", mode as f64),
            ("IN", input as f64),
            ("W_OFF", self.w_off[l - 1] as f64),
            ("BIAS_OFF", self.b_off[l - 1] as f64),
            ("SN_SLOT", self.sigma_slot(l)),
            ("O_C1", io.c1 as f64),
        ]);
        match self.hidden.get(l - 1) {
            Some(h) => c.extend([
                ("HIDDEN", 1.0),
                ("O_Z", h.z as f64),
                ("O_A", h.a as f64),
                ("O_ZD", h.zd as f64),
                ("O_AD", h.ad as f64),
                ("O_TZ", h.tz as f64),
                ("O_TA", h.ta as f64),
                ("O_Q", h.q as f64),
                ("O_R", h.r as f64),
            ]),
            None => c.extend([
                ("HIDDEN", 0.0),
                ("O_OUT", if mode == 0 { io.psi } else { io.dpsi } as f64),
            ]),
        }
        let name = ["forward", "diff_forward", "tangent"][mode as usize];
        let (core, groups) = Self::matmul(s, self.b, n, 1);
        KernelSpec {
            label: format!("{name} {l}"),
            phase: Phase::Body,
            source: Source::Forward,
            entry: "main",
            constants: c,
            groups,
            core,
        }
    }

    /// A backward-shaped layer kernel (`layer_backward.wgsl`) for layer l (target l − 1).
    fn backward(&self, s: &Specialise, l: usize, mode: u32) -> KernelSpec {
        let (k, n) = (self.widths[l], self.widths[l - 1]);
        let io = &self.io;
        let last = l == self.layers();
        let input = match (last, mode) {
            (true, 0) => io.x0,
            (true, 1) => io.dx,
            (true, _) => io.v,
            (false, 0) => self.hidden[l - 1].dz,
            (false, 1) => self.hidden[l - 1].ddz,
            (false, _) => self.hidden[l - 1].rho,
        };
        let mut c = self.common(s);
        c.extend([
            ("M", self.b as f64),
            ("N", n as f64),
            ("K", k as f64),
            ("MODE", mode as f64),
            ("IN", input as f64),
            ("W_OFF", self.w_off[l - 1] as f64),
            ("SN_SLOT", self.sigma_slot(l)),
            ("O_C0", io.c0 as f64),
            ("O_C1", io.c1 as f64),
        ]);
        if l >= 2 {
            let h = &self.hidden[l - 2];
            c.extend([
                ("HIDDEN", 1.0),
                ("O_Z", h.z as f64),
                ("O_DA", h.da as f64),
                ("O_DZ", h.dz as f64),
                ("O_ZD", h.zd as f64),
                ("O_DDZ", h.ddz as f64),
                ("O_TZ", h.tz as f64),
                ("O_RHO", h.rho as f64),
                ("O_P", h.p as f64),
            ]);
        } else {
            let (psi, out) = if mode == 0 {
                (io.psi, io.g)
            } else {
                (io.dpsi, io.dg)
            };
            c.extend([
                ("HIDDEN", 0.0),
                ("O_PSI", psi as f64),
                ("O_OUT", out as f64),
            ]);
        }
        let name = ["backward", "diff_backward", "adjoint"][mode as usize];
        let (core, groups) = Self::matmul(s, self.b, n, 1);
        KernelSpec {
            label: format!("{name} {l}"),
            phase: Phase::Body,
            source: Source::Backward,
            entry: "main",
            constants: c,
            groups,
            core,
        }
    }

    /// The gradient sums of layer l (`layer_grad.wgsl`).
    fn grad_kernel(&self, s: &Specialise, l: usize) -> KernelSpec {
        let (fi, fo) = (self.widths[l - 1], self.widths[l]);
        let left = if l == 1 {
            self.io.x0
        } else {
            self.hidden[l - 2].a
        };
        let right = match self.hidden.get(l - 1) {
            Some(h) => h.p,
            None => self.io.pl,
        };
        let mut c = self.common(s);
        c.extend([
            ("M", (fi + 1) as f64),
            ("N", fo as f64),
            ("K", (3 * self.b) as f64),
            ("KC", self.kc as f64),
            ("LEFT", left as f64),
            ("RIGHT", right as f64),
            ("W_OFF", self.w_off[l - 1] as f64),
            ("BIAS_OFF", self.b_off[l - 1] as f64),
            ("PART", self.part as f64),
            ("THETA_LEN", self.theta_len as f64),
        ]);
        let (core, groups) = Self::matmul(s, fi + 1, fo, self.chunks);
        KernelSpec {
            label: format!("grad {l}"),
            phase: Phase::Body,
            source: Source::Grad,
            entry: "main",
            constants: c,
            groups,
            core,
        }
    }

    /// The kernels of one step in `mode`, in order (see the table in `fused/mod.rs`).
    pub fn kernels(&self, s: &Specialise, mode: Mode) -> Vec<KernelSpec> {
        let layers = self.layers();
        let rows = [self.b.div_ceil(ROWS_WG) as u32, 1, 1];
        let mut k = Vec::new();
        if !self.sn_slots.is_empty() {
            let entry = match mode {
                Mode::Train => "power_iteration",
                _ => "sigma_stored",
            };
            k.push(self.rows_kernel(s, entry, [self.sn_slots.len() as u32, 1, 1]));
        }
        let input = match mode {
            Mode::Train => "rows_input_drawn",
            Mode::Eval => "rows_input_given",
            Mode::EvalGivenNoise => "rows_input_given_noise",
        };
        k.push(self.rows_kernel(s, input, rows));
        k.extend((1..=layers).map(|l| self.forward(s, l, 0)));
        k.extend((1..=layers).rev().map(|l| self.backward(s, l, 0)));
        k.push(self.rows_kernel(s, "rows_step", rows));
        k.extend((1..=layers).map(|l| self.forward(s, l, 1)));
        k.push(self.rows_kernel(s, "rows_diff", rows));
        k.extend((1..=layers).rev().map(|l| self.backward(s, l, 1)));
        k.push(self.rows_kernel(s, "rows_adj", rows));
        k.extend((1..layers).map(|l| self.forward(s, l, 2)));
        k.extend((2..=layers).rev().map(|l| self.backward(s, l, 2)));
        if !self.sn_slots.is_empty() {
            k.push(self.rows_kernel(s, "rows_dots", rows));
        }
        k.push(self.rows_kernel(s, "sums", [1, 1, 1]));
        k.extend((1..=layers).map(|l| self.grad_kernel(s, l)));
        let groups = self.theta_len.div_ceil(256);
        let gx = groups.min(65535);
        let update = match mode {
            Mode::Train => "update_train",
            _ => "update_grad",
        };
        k.push(self.rows_kernel(s, update, [gx as u32, groups.div_ceil(gx) as u32, 1]));
        k
    }
}
