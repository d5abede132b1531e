//! The [`Backend`] ops of the GPU: each records one or two kernel launches.

use crate::backend::{Backend, RandomFill};
use crate::conv::Geometry;
use crate::error::{Error, Result};
use crate::ops::{Axis, BinOp, Fun};
use crate::rng::{words, Dist};

use super::launch::{Binding, Kernel, Params};
use super::matmul_cpu::{self, Layout};
use super::{Gpu, Index, Tensor};

/// Longest inner size a matmul kernel sums in one go (longer ones are split, see
/// `launch_matmul`). Also below llvmpipe's cap of 65535 loop iterations.
const MATMUL_K_CHUNK: usize = 512;

/// Workgroups a product on a GPU should have at least: two per multiprocessor of a large GPU
/// (132 on an H100). Outputs of fewer 64 × 64 tiles (a 128 × 256 layer at batch 128 has 8)
/// split K further, down to chunks of `GPU_MIN_CHUNK`, and a second pass adds the chunks.
const GPU_MIN_WORKGROUPS: usize = 264;
const GPU_MIN_CHUNK: usize = 64;

impl Gpu {
    /// Workgroup grid for `threads` invocations of a 256-wide 1-D kernel (2-D when large).
    pub(crate) fn grid(&self, threads: usize) -> [u32; 3] {
        let groups = threads.div_ceil(256).max(1) as u64;
        let max = self.report.limits.max_compute_workgroups_per_dimension as u64;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            [max as u32, groups.div_ceil(max) as u32, 1]
        }
    }

    fn elementwise(
        &self,
        kernel: Kernel,
        mut params: Params,
        inputs: [Option<Binding>; 2],
        rows: usize,
        cols: usize,
    ) -> Result<Tensor> {
        let out = self.empty(rows, cols)?;
        let n = rows * cols;
        params.n = n as u32;
        params.rows = rows as u32;
        params.cols = cols as u32;
        // Four elements per invocation where every binding is whole vec4s: a length that is a
        // multiple of 4, and rows of a multiple of 4 where one is broadcast (a bias row; a
        // column broadcast also needs the column's length a multiple of 4).
        let vec4 = match kernel {
            Kernel::BinaryRow => cols.is_multiple_of(4),
            Kernel::BinaryCol => cols.is_multiple_of(4) && rows.is_multiple_of(4),
            _ => n.is_multiple_of(4),
        };
        let (kernel, threads) = match kernel.vec4() {
            Some(k4) if vec4 => (k4, n / 4),
            _ => (kernel, n),
        };
        if n > 0 {
            self.record(kernel, params, inputs, out.binding(), self.grid(threads))?;
        }
        Ok(out)
    }

    fn reduce(&self, code: u32, a: &Tensor, b: &Tensor, axis: Axis) -> Result<Tensor> {
        let (r, c) = (a.rows, a.cols);
        // (outputs, length, output stride, element stride)
        let (n, len, so, sj, shape) = match axis {
            Axis::Rows => (c, r, 1, c, (1, c)),
            Axis::Cols => (r, c, c, 1, (r, 1)),
            Axis::All => (1, r * c, 0, 1, (1, 1)),
        };
        if len == 0 {
            // Empty sums are zero.
            return self.full(shape.0, shape.1, 0.0);
        }
        let inputs = [Some(a.binding()), Some(b.binding())];
        // Long sums are cut into chunks whose partial sums (chunks × n) a second pass adds up
        // over rows: blocked summation (error O(chunk + chunks) ulp, not O(len)), and on a
        // GPU enough workgroups to use the whole chip for a single long sum.
        //   GPU kernels:  a 256-thread workgroup per (output, chunk of up to 16384), tree sum;
        //                 used for few long reductions (many short ones: a thread each);
        //   CPU drivers:  a thread per (output, chunk of up to 256), where barriers cost.
        let group = !self.barrier_free && len > 64 && n < 256;
        let limit = if group { 16384 } else { 256 };
        let chunk = if len <= limit {
            len
        } else {
            len.div_ceil(len.div_ceil(limit)).next_multiple_of(4)
        };
        let chunks = len.div_ceil(chunk);
        let partial = self.empty(chunks, n)?;
        let params = Params {
            n: n as u32,
            code,
            rows: (n * chunks) as u32,
            u: [len as u32, so as u32, sj as u32, chunk as u32],
            ..Default::default()
        };
        if group {
            let max = self.report.limits.max_compute_workgroups_per_dimension as usize;
            let outs = n * chunks;
            let groups = if outs <= max {
                [outs as u32, 1, 1]
            } else {
                [max as u32, outs.div_ceil(max) as u32, 1]
            };
            self.record(
                Kernel::ReduceGroup,
                params,
                inputs,
                partial.binding(),
                groups,
            )?;
        } else {
            // vec4 loads where the rows are whole vec4s: four columns per thread for sums
            // over rows (the same order per column), vec4 terms along a row otherwise.
            let whole = c.is_multiple_of(4) && (c > 0);
            let (kernel, threads) = match axis {
                Axis::Rows if whole => (Kernel::ReduceRows4, n * chunks / 4),
                Axis::Cols | Axis::All if whole && chunk.is_multiple_of(4) => {
                    (Kernel::ReduceCols4, n * chunks)
                }
                _ => (Kernel::ReduceThread, n * chunks),
            };
            self.record(
                kernel,
                params,
                inputs,
                partial.binding(),
                self.grid(threads),
            )?;
        }
        let total = if chunks == 1 {
            partial
        } else {
            self.reduce(0, &partial, &partial, Axis::Rows)?
        };
        Ok(Tensor {
            rows: shape.0,
            cols: shape.1,
            ..total
        })
    }

    /// One optimiser step on one parameter, in place (see `shaders/optim.wgsl`): step
    /// (t, 1-based, and the rate's slope in a recording's replays), whose bias corrections
    /// the host computed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_in_place(
        &self,
        code: u32,
        f: [f32; 4],
        bias_corrections: [f32; 2],
        (t, lr_slope): (u32, f32),
        grad: &Tensor,
        param: &Tensor,
        s1: &Tensor,
        s2: &Tensor,
    ) -> Result<()> {
        let n = param.len();
        if [grad.shape(), s1.shape(), s2.shape()]
            .iter()
            .any(|&s| s != param.shape())
        {
            return Err(Error::Shape(format!(
                "optimiser step: parameter {:?}, gradient {:?}, state {:?} / {:?}",
                param.shape(),
                grad.shape(),
                s1.shape(),
                s2.shape()
            )));
        }
        let mut params = Params::update(n, code, f, bias_corrections);
        let ctl = self.replay_update(&mut params, t, lr_slope)?;
        if n == 0 {
            return Ok(());
        }
        let (kernel, threads) = if n.is_multiple_of(4) {
            (Kernel::Update4, n / 4)
        } else {
            (Kernel::Update, n)
        };
        self.record_bindings(
            kernel,
            params,
            vec![
                grad.binding(),
                param.binding(),
                s1.binding(),
                s2.binding(),
                ctl,
            ],
            self.grid(threads),
        )
    }

    /// op(a)·op(b), op = transpose where flagged; shapes were checked by the tape.
    ///
    /// Inner sizes above `MATMUL_K_CHUNK` are split (workgroup z takes one chunk of K and
    /// writes its own partial product) and the partial products added by a second pass:
    /// blocked summation, so the error of a long product (e.g. a weight gradient summed over
    /// a batch of thousands) grows with the chunk, not with K.
    fn launch_matmul(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        let (m, k) = if ta {
            (a.cols, a.rows)
        } else {
            (a.rows, a.cols)
        };
        let n = if tb { b.rows } else { b.cols };
        if m * n == 0 {
            return self.empty(m, n);
        }
        if k == 0 {
            return self.full(m, n, 0.0);
        }
        // Equal chunks, a multiple of 4 long (the vec4 products read k four at a time).
        let mut chunks = k.div_ceil(MATMUL_K_CHUNK);
        if !self.barrier_free {
            let tiles = m.div_ceil(64) * n.div_ceil(64);
            let wanted = GPU_MIN_WORKGROUPS.div_ceil(tiles);
            chunks = chunks.max(wanted.min(k / GPU_MIN_CHUNK));
        }
        let chunk = if chunks <= 1 {
            k
        } else {
            k.div_ceil(chunks).next_multiple_of(4)
        };
        let chunks = k.div_ceil(chunk);
        let out = self.empty(chunks * m, n)?;
        let params = Params {
            n: (m * n) as u32,
            rows: m as u32,
            cols: n as u32,
            a_cols: a.cols as u32,
            b_cols: b.cols as u32,
            u: [k as u32, ta as u32, tb as u32, chunk as u32],
            ..Default::default()
        };
        let (kernel, groups) = if self.barrier_free && self.subgroup_core().is_some() {
            let layout = Layout::choose(m, k, n, ta, tb);
            let groups = matmul_cpu::groups(layout, m, n) as u32;
            (Kernel::lanes(layout), [groups, 1, chunks as u32])
        } else if self.barrier_free {
            (
                Kernel::MatMulDirect,
                [n.div_ceil(64) as u32, m.div_ceil(32) as u32, chunks as u32],
            )
        } else {
            (
                Kernel::MatMul,
                [n.div_ceil(64) as u32, m.div_ceil(64) as u32, chunks as u32],
            )
        };
        self.record(
            kernel,
            params,
            [Some(a.binding()), Some(b.binding())],
            out.binding(),
            groups,
        )?;
        if chunks == 1 {
            return Ok(out);
        }
        let sum = self.reduce(0, &out.reshaped(chunks, m * n)?, &out, Axis::Rows)?;
        sum.reshaped(m, n)
    }

    /// dst ← src, recorded in stream order (no flush).
    pub fn copy_into(&self, src: &Tensor, dst: &Tensor) -> Result<()> {
        if src.shape() != dst.shape() {
            return Err(Error::Shape(format!(
                "copy {:?} into {:?}",
                src.shape(),
                dst.shape()
            )));
        }
        let n = src.len();
        let params = Params {
            n: n as u32,
            f: [1.0, 0.0, 0.0, 0.0],
            ..Default::default()
        };
        if n > 0 {
            self.record(
                Kernel::Affine,
                params,
                [Some(src.binding()), None],
                dst.binding(),
                self.grid(n),
            )?;
        }
        Ok(())
    }

    /// Bernoulli draws 1{u < p} for each element p of `probs` (u uniform on [0, 1) from draw
    /// (seed, stream)), made on the GPU: dynamic binarisation of images without the host.
    pub fn bernoulli(&self, probs: &Tensor, seed: u64, stream: u64) -> Result<Tensor> {
        let n = probs.len();
        let out = self.empty(probs.rows, probs.cols)?;
        let mut params = Params {
            n: n as u32,
            code: 3,
            u: words(seed, stream),
            ..Default::default()
        };
        let ctl = self.replay_draw(&mut params)?;
        if n > 0 {
            self.record(
                Kernel::Random,
                params,
                [Some(probs.binding()), ctl],
                out.binding(),
                self.grid(n.div_ceil(4)),
            )?;
        }
        Ok(out)
    }

    /// `len` uniformly random row indices in 0..bound from draw (seed, stream), made on the GPU.
    pub fn random_index(&self, len: usize, bound: usize, seed: u64, stream: u64) -> Result<Index> {
        if bound == 0 || bound > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "cannot draw row indices below {bound}"
            )));
        }
        let idx = Index {
            buf: self.alloc(4 * len as u64)?,
            len,
            bound: bound as u32,
        };
        let w = words(seed, stream);
        let mut params = Params {
            n: len as u32,
            code: 2,
            rows: bound as u32,
            u: w,
            ..Default::default()
        };
        let ctl = self.replay_draw(&mut params)?;
        if len > 0 {
            self.record(
                Kernel::Random,
                params,
                [None, ctl],
                idx.binding(),
                self.grid(len.div_ceil(4)),
            )?;
        }
        Ok(idx)
    }

    /// The parameter block of `shaders/conv.wgsl`: a_rows = H, a_cols = W, b_rows = C,
    /// b_cols = k, u = [stride, pad, Ho, Wo]. Every value fits in u32 (checked by
    /// [`Geometry::validate`]).
    fn conv_params(g: &Geometry) -> Params {
        Params {
            a_rows: g.h as u32,
            a_cols: g.w as u32,
            b_rows: g.c as u32,
            b_cols: g.k as u32,
            u: [
                g.stride as u32,
                g.pad as u32,
                g.out_h() as u32,
                g.out_w() as u32,
            ],
            ..Default::default()
        }
    }

    fn window(&self, x: &Tensor, cols: usize, u0: usize, u1: usize) -> Result<Tensor> {
        let params = Params {
            a_cols: x.cols as u32,
            u: [u0 as u32, u1 as u32, 0, 0],
            ..Default::default()
        };
        self.elementwise(
            Kernel::WindowCols,
            params,
            [Some(x.binding()), None],
            x.rows,
            cols,
        )
    }
}
impl Backend for Gpu {
    type Tensor = Tensor;
    type Index = Index;

    fn shape(&self, t: &Tensor) -> (usize, usize) {
        t.shape()
    }
    fn to_host(&self, t: &Tensor) -> Result<Vec<f64>> {
        Ok(self.read(t)?.into_iter().map(f64::from).collect())
    }
    fn upload_host(&self, rows: usize, cols: usize, data: &[f64]) -> Result<Tensor> {
        let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        self.upload(rows, cols, &v)
    }
    fn index_len(&self, i: &Index) -> usize {
        i.len
    }
    fn index_bound(&self, i: &Index) -> usize {
        i.bound as usize
    }

    fn full(&self, rows: usize, cols: usize, value: f32) -> Result<Tensor> {
        let params = Params {
            code: 1,
            f: [0.0, value, 0.0, 0.0],
            ..Default::default()
        };
        self.elementwise(Kernel::Affine, params, [None, None], rows, cols)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        self.launch_matmul(a, b, ta, tb)
    }

    fn binary(&self, op: BinOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        // A broadcast left operand of a commutative op goes right, where the specialised
        // kernels take it (IEEE addition and multiplication commute exactly).
        let (rows, cols) = (a.rows.max(b.rows), a.cols.max(b.cols));
        if matches!(op, BinOp::Add | BinOp::Mul)
            && a.shape() != (rows, cols)
            && b.shape() == (rows, cols)
        {
            return self.binary(op, b, a);
        }
        let params = Params {
            code: op.code(),
            a_rows: a.rows as u32,
            a_cols: a.cols as u32,
            b_rows: b.rows as u32,
            b_cols: b.cols as u32,
            ..Default::default()
        };
        // Specialised entry points for the common shapes: index arithmetic is what costs on
        // CPU drivers (measured on lavapipe: 415 → 243 µs for a 200×100 product).
        let kernel = match (a.shape() == (rows, cols), b.shape()) {
            (true, s) if s == (rows, cols) => Kernel::BinarySame,
            (true, (1, 1)) => Kernel::BinaryScalar,
            (true, (1, c)) if c == cols => Kernel::BinaryRow,
            (true, (r, 1)) if r == rows => Kernel::BinaryCol,
            _ => Kernel::Binary,
        };
        self.elementwise(
            kernel,
            params,
            [Some(a.binding()), Some(b.binding())],
            rows,
            cols,
        )
    }

    fn map(&self, f: Fun, order: u8, x: &Tensor) -> Result<Tensor> {
        let params = Params {
            code: f.code(),
            u: [order as u32, 0, 0, 0],
            ..Default::default()
        };
        self.elementwise(
            Kernel::Map,
            params,
            [Some(x.binding()), None],
            x.rows,
            x.cols,
        )
    }

    fn affine(&self, x: &Tensor, a: f32, b: f32) -> Result<Tensor> {
        let params = Params {
            f: [a, b, 0.0, 0.0],
            ..Default::default()
        };
        self.elementwise(
            Kernel::Affine,
            params,
            [Some(x.binding()), None],
            x.rows,
            x.cols,
        )
    }

    fn sum(&self, x: &Tensor, axis: Axis) -> Result<Tensor> {
        self.reduce(0, x, x, axis)
    }

    fn expand(&self, x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
        // A row or a column copied across whole vec4s: no index arithmetic per element.
        let n = rows * cols;
        let special = match x.shape() {
            (1, c) if c == cols && cols.is_multiple_of(4) && n > 0 => Some(Kernel::ExpandRow4),
            (r, 1) if r == rows && r.is_multiple_of(4) && cols.is_multiple_of(4) && n > 0 => {
                Some(Kernel::ExpandCol4)
            }
            _ => None,
        };
        if let Some(kernel) = special {
            let out = self.empty(rows, cols)?;
            let params = Params {
                n: n as u32,
                rows: rows as u32,
                cols: cols as u32,
                ..Default::default()
            };
            let grid = self.grid(n / 4);
            self.record(
                kernel,
                params,
                [None, Some(x.binding())],
                out.binding(),
                grid,
            )?;
            return Ok(out);
        }
        let params = Params {
            code: 4,
            a_rows: x.rows as u32,
            a_cols: x.cols as u32,
            ..Default::default()
        };
        self.elementwise(
            Kernel::Binary,
            params,
            [Some(x.binding()), None],
            rows,
            cols,
        )
    }

    fn rowdot(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.reduce(1, a, b, Axis::Cols)
    }

    fn concat_cols(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let params = Params {
            a_cols: a.cols as u32,
            b_cols: b.cols as u32,
            ..Default::default()
        };
        self.elementwise(
            Kernel::ConcatCols,
            params,
            [Some(a.binding()), Some(b.binding())],
            a.rows,
            a.cols + b.cols,
        )
    }

    fn slice_cols(&self, x: &Tensor, start: usize, end: usize) -> Result<Tensor> {
        self.window(x, end - start, start, 0)
    }

    fn pad_cols(&self, x: &Tensor, start: usize, total: usize) -> Result<Tensor> {
        self.window(x, total, 0, start)
    }

    fn gather_rows(&self, x: &Tensor, idx: &Index) -> Result<Tensor> {
        self.elementwise(
            Kernel::GatherRows,
            Params::default(),
            [Some(x.binding()), Some(idx.binding())],
            idx.len,
            x.cols,
        )
    }

    fn scatter_add_rows(&self, x: &Tensor, idx: &Index, n: usize) -> Result<Tensor> {
        if idx.len > 65535 {
            // Each output loops over all indices; llvmpipe caps loops at 65535 iterations.
            return Err(Error::Invalid(format!(
                "scatter_add_rows over {} indices: at most 65535 are supported",
                idx.len
            )));
        }
        let params = Params {
            u: [idx.len as u32, 0, 0, 0],
            ..Default::default()
        };
        self.elementwise(
            Kernel::ScatterAddRows,
            params,
            [Some(x.binding()), Some(idx.binding())],
            n,
            x.cols,
        )
    }

    fn unfold(&self, x: &Tensor, g: &Geometry) -> Result<Tensor> {
        let rows = g.check_unfold(x.shape())?;
        self.elementwise(
            Kernel::Unfold,
            Self::conv_params(g),
            [Some(x.binding()), None],
            rows,
            g.patch(),
        )
    }

    fn fold(&self, x: &Tensor, g: &Geometry) -> Result<Tensor> {
        let batch = g.check_fold(x.shape())?;
        self.elementwise(
            Kernel::Fold,
            Self::conv_params(g),
            [Some(x.binding()), None],
            batch,
            g.pixels(),
        )
    }

    /// A free view: every tensor is one contiguous row-major window of its buffer.
    fn reshape(&self, x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
        x.reshaped(rows, cols)
    }
}

impl RandomFill for Gpu {
    fn random(
        &self,
        rows: usize,
        cols: usize,
        dist: Dist,
        seed: u64,
        stream: u64,
    ) -> Result<Tensor> {
        let w = words(seed, stream);
        let (code, f0, f1) = match dist {
            Dist::Uniform { lo, hi } => (0, hi - lo, lo),
            Dist::Normal { mean, std } => (1, std, mean),
        };
        let n = rows * cols;
        let out = self.empty(rows, cols)?;
        let mut params = Params {
            n: n as u32,
            code,
            u: w,
            f: [f0, f1, 0.0, 0.0],
            ..Default::default()
        };
        let ctl = self.replay_draw(&mut params)?;
        if n > 0 {
            self.record(
                Kernel::Random,
                params,
                [None, ctl],
                out.binding(),
                self.grid(n.div_ceil(4)),
            )?;
        }
        Ok(out)
    }
}
