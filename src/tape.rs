//! Reverse-mode automatic differentiation that can differentiate its own gradients.
//!
//! Every op computes its value at once (on the GPU: records a kernel launch) and appends a
//! node to the tape. [`Tape::grad`] walks the nodes backwards and applies one rule per op
//! (see [`Tape::backward_rule`]); the rules are written with the same tape ops as the forward
//! pass, so a gradient is an ordinary tape value and can be differentiated again. That is
//! what the MVL objective needs: its loss contains ∇ₓE, and training needs ∂θ of that loss.
//!
//! The same tape runs on the GPU ([`crate::gpu::Gpu`], f32) and on the CPU reference
//! ([`crate::cpu::Cpu`], f64).

use std::cell::RefCell;

use crate::backend::{Backend, RandomFill};
use crate::conv::Geometry;
use crate::error::{Error, Result};
use crate::ops::{broadcast_shape, Axis, BinOp, Fun, MAX_ORDER};
use crate::rng::Dist;

/// What produced a node: the forward op and whatever the backward rule needs to know.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// An input: parameter, data or constant. Differentiable with respect to, never through.
    Leaf,
    MatMul {
        ta: bool,
        tb: bool,
    },
    Binary(BinOp),
    /// f⁽ᵒʳᵈᵉʳ⁾(x).
    Map {
        f: Fun,
        order: u8,
    },
    /// a·x + b.
    Affine {
        a: f32,
        b: f32,
    },
    Sum(Axis),
    /// Broadcast to (rows, cols).
    Expand {
        rows: usize,
        cols: usize,
    },
    RowDot,
    ConcatCols,
    SliceCols {
        start: usize,
        end: usize,
    },
    PadCols {
        start: usize,
        total: usize,
    },
    /// Rows of input 0 picked by the tape's index `index`.
    GatherRows {
        index: usize,
    },
    /// Adjoint of gather: rows summed into `n` rows.
    ScatterAddRows {
        index: usize,
        n: usize,
    },
    /// im2col: images (B, H·W·C) to patches (B·Ho·Wo, k·k·C), see [`crate::conv`].
    Unfold(Geometry),
    /// col2im, the adjoint of `Unfold`: patches summed back into (B, H·W·C) images.
    Fold(Geometry),
    /// The same row-major values viewed as (rows, cols).
    Reshape {
        rows: usize,
        cols: usize,
    },
}

struct Node<B: Backend> {
    value: B::Tensor,
    op: Op,
    inputs: Vec<usize>,
}

/// A value on a tape. Cheap to copy; ops on it append to the same tape.
pub struct Var<'t, B: Backend> {
    tape: &'t Tape<B>,
    id: usize,
}

impl<B: Backend> Clone for Var<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Var<'_, B> {}

impl<B: Backend> std::fmt::Debug for Var<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (r, c) = self.shape();
        write!(f, "Var#{}({r}x{c})", self.id)
    }
}

/// The tape: a list of nodes in creation (hence topological) order. Build one per training
/// step; dropping it returns all intermediate buffers to the pool.
pub struct Tape<B: Backend> {
    backend: B,
    nodes: RefCell<Vec<Node<B>>>,
    indices: RefCell<Vec<B::Index>>,
}

impl<B: Backend> Tape<B> {
    pub fn new(backend: B) -> Tape<B> {
        Tape {
            backend,
            nodes: RefCell::new(Vec::new()),
            indices: RefCell::new(Vec::new()),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, value: B::Tensor, op: Op, inputs: Vec<usize>) -> Var<'_, B> {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node { value, op, inputs });
        Var {
            tape: self,
            id: nodes.len() - 1,
        }
    }

    fn value_of(&self, id: usize) -> B::Tensor {
        self.nodes.borrow()[id].value.clone()
    }

    fn shape_of(&self, id: usize) -> (usize, usize) {
        self.backend.shape(&self.nodes.borrow()[id].value)
    }

    /// A leaf holding `t` (parameter, data or constant).
    pub fn leaf(&self, t: B::Tensor) -> Var<'_, B> {
        self.push(t, Op::Leaf, vec![])
    }

    /// A constant tensor filled with `value`.
    pub fn full(&self, rows: usize, cols: usize, value: f32) -> Result<Var<'_, B>> {
        Ok(self.leaf(self.backend.full(rows, cols, value)?))
    }

    /// Register row indices for [`Var::gather_rows`]; returns the handle to pass.
    pub fn index(&self, idx: B::Index) -> usize {
        let mut v = self.indices.borrow_mut();
        v.push(idx);
        v.len() - 1
    }

    /// Gradients of the scalar `y` with respect to each of `wrt`, as tape values.
    ///
    /// With `create_graph` the gradients stay connected to the tape and can be
    /// differentiated again (double backward); without, they are returned detached.
    /// A `wrt` that `y` does not depend on gets zeros.
    pub fn grad<'t>(
        &'t self,
        y: Var<'t, B>,
        wrt: &[Var<'t, B>],
        create_graph: bool,
    ) -> Result<Vec<Var<'t, B>>> {
        if y.shape() != (1, 1) {
            let (r, c) = y.shape();
            return Err(Error::Shape(format!(
                "grad needs a scalar (1x1) output, got {r}x{c}; sum or mean it first"
            )));
        }
        let seed = self.full(1, 1, 1.0)?;
        self.vjp(y, seed, wrt, create_graph)
    }

    /// Vector–Jacobian product: gradients of ⟨y, gy⟩ with respect to `wrt`.
    pub fn vjp<'t>(
        &'t self,
        y: Var<'t, B>,
        gy: Var<'t, B>,
        wrt: &[Var<'t, B>],
        create_graph: bool,
    ) -> Result<Vec<Var<'t, B>>> {
        if y.shape() != gy.shape() {
            return Err(Error::Shape(format!(
                "vjp: cotangent {:?} does not match output {:?}",
                gy.shape(),
                y.shape()
            )));
        }
        // Which nodes lie on a path from some wrt: only those need gradients.
        let n = y.id + 1;
        let mut relevant = vec![false; n];
        for w in wrt {
            if w.id < n {
                relevant[w.id] = true;
            }
        }
        let lo = wrt.iter().map(|w| w.id).min().unwrap_or(n);
        for id in lo..n {
            if !relevant[id] {
                let nodes = self.nodes.borrow();
                relevant[id] = nodes[id].inputs.iter().any(|&i| relevant[i]);
            }
        }
        let mut grads: Vec<Option<Var<'t, B>>> = vec![None; n];
        grads[y.id] = Some(gy);
        for id in (lo..n).rev() {
            let Some(g) = grads[id] else { continue };
            if !relevant[id] {
                continue;
            }
            let (op, inputs) = {
                let nodes = self.nodes.borrow();
                (nodes[id].op.clone(), nodes[id].inputs.clone())
            };
            if inputs.iter().all(|&i| !relevant[i]) {
                continue;
            }
            let out = Var { tape: self, id };
            let ins: Vec<Var<'t, B>> = inputs.iter().map(|&i| Var { tape: self, id: i }).collect();
            let contributions = self.backward_rule(&op, &ins, out, g)?;
            for (input, contribution) in ins.iter().zip(contributions) {
                let Some(c) = contribution else { continue };
                if !relevant[input.id] {
                    continue;
                }
                grads[input.id] = Some(match grads[input.id] {
                    Some(prev) => prev.add(c)?,
                    None => c,
                });
            }
        }
        wrt.iter()
            .map(|w| {
                let g = match grads.get(w.id).copied().flatten() {
                    Some(g) => g,
                    None => {
                        let (r, c) = w.shape();
                        self.full(r, c, 0.0)?
                    }
                };
                Ok(if create_graph { g } else { g.detach() })
            })
            .collect()
    }

    /// The rule table: the contribution of output cotangent `g` to each input's gradient,
    /// written with tape ops so that it is itself differentiable. `None`: no gradient flows.
    fn backward_rule<'t>(
        &'t self,
        op: &Op,
        x: &[Var<'t, B>],
        y: Var<'t, B>,
        g: Var<'t, B>,
    ) -> Result<Vec<Option<Var<'t, B>>>> {
        Ok(match *op {
            Op::Leaf => vec![],
            Op::MatMul { ta, tb } => {
                // y = op(a)·op(b)  ⇒  ∂a = g·op(b)ᵀ (or its transpose), ∂b = op(a)ᵀ·g (or its transpose).
                let (a, b) = (x[0], x[1]);
                let ga = if ta {
                    b.matmul_t(g, tb, true)?
                } else {
                    g.matmul_t(b, false, !tb)?
                };
                let gb = if tb {
                    g.matmul_t(a, true, ta)?
                } else {
                    a.matmul_t(g, !ta, false)?
                };
                vec![Some(ga), Some(gb)]
            }
            Op::Binary(bop) => {
                let (a, b) = (x[0], x[1]);
                let (ga, gb) = match bop {
                    BinOp::Add => (g, g),
                    BinOp::Sub => (g, g.neg()?),
                    BinOp::Mul => (g.mul(b)?, g.mul(a)?),
                    // y = a/b ⇒ ∂a = g/b, ∂b = −g·y/b
                    BinOp::Div => (g.div(b)?, g.mul(y)?.div(b)?.neg()?),
                };
                // Broadcast inputs receive the sum over the broadcast dimensions.
                vec![Some(ga.sum_to(a.shape())?), Some(gb.sum_to(b.shape())?)]
            }
            Op::Map { f, order } => {
                if order >= MAX_ORDER {
                    return Err(Error::Invalid(format!(
                        "derivative of order {} of {f:?} requested; wmvl implements up to order {MAX_ORDER}",
                        order + 1
                    )));
                }
                vec![Some(g.mul(x[0].map(f, order + 1)?)?)]
            }
            Op::Affine { a, .. } => vec![Some(g.scale(a)?)],
            Op::Sum(_) => {
                let (r, c) = x[0].shape();
                vec![Some(g.expand(r, c)?)]
            }
            Op::Expand { .. } => vec![Some(g.sum_to(x[0].shape())?)],
            Op::RowDot => {
                // y_r = Σ_c a_rc b_rc ⇒ ∂a = g ⊙ b (g broadcast over columns).
                vec![Some(g.mul(x[1])?), Some(g.mul(x[0])?)]
            }
            Op::ConcatCols => {
                let ca = x[0].shape().1;
                let cb = x[1].shape().1;
                vec![Some(g.slice_cols(0, ca)?), Some(g.slice_cols(ca, ca + cb)?)]
            }
            Op::SliceCols { start, .. } => {
                let total = x[0].shape().1;
                vec![Some(g.pad_cols(start, total)?)]
            }
            Op::PadCols { start, .. } => {
                let c = x[0].shape().1;
                vec![Some(g.slice_cols(start, start + c)?)]
            }
            Op::GatherRows { index } => {
                let n = x[0].shape().0;
                vec![Some(g.scatter_add_rows(index, n)?)]
            }
            Op::ScatterAddRows { index, .. } => vec![Some(g.gather_rows(index)?)],
            // Linear maps: the backward of each is its adjoint (fold ⇄ unfold), itself taped.
            Op::Unfold(geometry) => vec![Some(g.fold(&geometry)?)],
            Op::Fold(geometry) => vec![Some(g.unfold(&geometry)?)],
            Op::Reshape { .. } => {
                let (r, c) = x[0].shape();
                vec![Some(g.reshape(r, c)?)]
            }
        })
    }
}

impl<B: RandomFill> Tape<B> {
    /// A constant of random numbers from draw (seed, stream); see [`crate::rng`].
    pub fn random(
        &self,
        rows: usize,
        cols: usize,
        dist: Dist,
        seed: u64,
        stream: u64,
    ) -> Result<Var<'_, B>> {
        Ok(self.leaf(self.backend.random(rows, cols, dist, seed, stream)?))
    }
}

// `add`, `sub`, … return `Result` (shapes are checked), so they are methods, not operator traits.
#[allow(clippy::should_implement_trait)]
impl<'t, B: Backend> Var<'t, B> {
    pub fn id(&self) -> usize {
        self.id
    }

    /// The tape this value lives on.
    pub fn tape(&self) -> &'t Tape<B> {
        self.tape
    }

    pub fn shape(&self) -> (usize, usize) {
        self.tape.shape_of(self.id)
    }

    /// The value (on the tape's device).
    pub fn value(&self) -> B::Tensor {
        self.tape.value_of(self.id)
    }

    /// The same value as a new leaf: gradients do not flow through it (stop-gradient).
    pub fn detach(self) -> Var<'t, B> {
        self.tape.leaf(self.value())
    }

    fn unary(self, op: Op, value: B::Tensor) -> Var<'t, B> {
        self.tape.push(value, op, vec![self.id])
    }

    fn same_tape(self, other: Var<'t, B>) -> Result<()> {
        if std::ptr::eq(self.tape, other.tape) {
            Ok(())
        } else {
            Err(Error::Invalid("operands belong to different tapes".into()))
        }
    }

    /// op(self)·op(other), op = transpose where flagged.
    pub fn matmul_t(self, other: Var<'t, B>, ta: bool, tb: bool) -> Result<Var<'t, B>> {
        self.same_tape(other)?;
        let (ar, ac) = self.shape();
        let (br, bc) = other.shape();
        let (m, k1) = if ta { (ac, ar) } else { (ar, ac) };
        let (k2, n) = if tb { (bc, br) } else { (br, bc) };
        if k1 != k2 {
            return Err(Error::Shape(format!(
                "matmul: {m}x{k1} times {k2}x{n} (transposes: {ta}, {tb})"
            )));
        }
        let v = self
            .tape
            .backend
            .matmul(&self.value(), &other.value(), ta, tb)?;
        Ok(self
            .tape
            .push(v, Op::MatMul { ta, tb }, vec![self.id, other.id]))
    }

    pub fn matmul(self, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.matmul_t(other, false, false)
    }

    fn binary(self, op: BinOp, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.same_tape(other)?;
        let (sa, sb) = (self.shape(), other.shape());
        if broadcast_shape(sa, sb).is_none() {
            return Err(Error::Shape(format!(
                "{op:?}: shapes {sa:?} and {sb:?} do not broadcast"
            )));
        }
        let v = self
            .tape
            .backend
            .binary(op, &self.value(), &other.value())?;
        Ok(self.tape.push(v, Op::Binary(op), vec![self.id, other.id]))
    }

    /// Elementwise sum; a (1, c), (r, 1) or (1, 1) operand is broadcast (e.g. a bias row).
    pub fn add(self, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.binary(BinOp::Add, other)
    }
    pub fn sub(self, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.binary(BinOp::Sub, other)
    }
    pub fn mul(self, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.binary(BinOp::Mul, other)
    }
    pub fn div(self, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.binary(BinOp::Div, other)
    }

    /// f⁽ᵒʳᵈᵉʳ⁾ elementwise.
    pub fn map(self, f: Fun, order: u8) -> Result<Var<'t, B>> {
        if order > MAX_ORDER {
            return Err(Error::Invalid(format!(
                "derivative of order {order} of {f:?}: up to {MAX_ORDER} is implemented"
            )));
        }
        let v = self.tape.backend.map(f, order, &self.value())?;
        Ok(self.unary(Op::Map { f, order }, v))
    }
    pub fn swish(self) -> Result<Var<'t, B>> {
        self.map(Fun::Swish, 0)
    }
    pub fn tanh(self) -> Result<Var<'t, B>> {
        self.map(Fun::Tanh, 0)
    }
    pub fn sigmoid(self) -> Result<Var<'t, B>> {
        self.map(Fun::Sigmoid, 0)
    }
    pub fn softplus(self) -> Result<Var<'t, B>> {
        self.map(Fun::Softplus, 0)
    }
    pub fn elu(self) -> Result<Var<'t, B>> {
        self.map(Fun::Elu, 0)
    }
    pub fn exp(self) -> Result<Var<'t, B>> {
        self.map(Fun::Exp, 0)
    }
    pub fn log(self) -> Result<Var<'t, B>> {
        self.map(Fun::Log, 0)
    }
    pub fn square(self) -> Result<Var<'t, B>> {
        self.map(Fun::Square, 0)
    }
    pub fn sqrt(self) -> Result<Var<'t, B>> {
        self.map(Fun::Sqrt, 0)
    }
    pub fn recip(self) -> Result<Var<'t, B>> {
        self.map(Fun::Recip, 0)
    }

    /// a·self + b.
    pub fn affine(self, a: f32, b: f32) -> Result<Var<'t, B>> {
        let v = self.tape.backend.affine(&self.value(), a, b)?;
        Ok(self.unary(Op::Affine { a, b }, v))
    }
    pub fn scale(self, a: f32) -> Result<Var<'t, B>> {
        self.affine(a, 0.0)
    }
    pub fn neg(self) -> Result<Var<'t, B>> {
        self.affine(-1.0, 0.0)
    }

    pub fn sum(self, axis: Axis) -> Result<Var<'t, B>> {
        let v = self.tape.backend.sum(&self.value(), axis)?;
        Ok(self.unary(Op::Sum(axis), v))
    }
    pub fn sum_all(self) -> Result<Var<'t, B>> {
        self.sum(Axis::All)
    }
    pub fn mean(self, axis: Axis) -> Result<Var<'t, B>> {
        let (r, c) = self.shape();
        let n = match axis {
            Axis::Rows => r,
            Axis::Cols => c,
            Axis::All => r * c,
        };
        if n == 0 {
            return Err(Error::Shape("mean of an empty tensor".into()));
        }
        self.sum(axis)?.scale(1.0 / n as f32)
    }
    pub fn mean_all(self) -> Result<Var<'t, B>> {
        self.mean(Axis::All)
    }

    /// Broadcast a (1|rows, 1|cols) value to (rows, cols).
    pub fn expand(self, rows: usize, cols: usize) -> Result<Var<'t, B>> {
        let (r, c) = self.shape();
        if broadcast_shape((rows, cols), (r, c)) != Some((rows, cols)) {
            return Err(Error::Shape(format!(
                "cannot expand {r}x{c} to {rows}x{cols}"
            )));
        }
        if (r, c) == (rows, cols) {
            return Ok(self);
        }
        let v = self.tape.backend.expand(&self.value(), rows, cols)?;
        Ok(self.unary(Op::Expand { rows, cols }, v))
    }

    /// Sum over broadcast dimensions down to `shape` (the adjoint of `expand`).
    pub fn sum_to(self, shape: (usize, usize)) -> Result<Var<'t, B>> {
        let (r, c) = self.shape();
        match (shape.0 == r, shape.1 == c) {
            (true, true) => Ok(self),
            (false, false) if shape == (1, 1) => self.sum(Axis::All),
            (false, true) if shape.0 == 1 => self.sum(Axis::Rows),
            (true, false) if shape.1 == 1 => self.sum(Axis::Cols),
            _ => Err(Error::Shape(format!(
                "cannot sum {r}x{c} down to {shape:?}"
            ))),
        }
    }

    /// Row-wise dot product: (r, c)·(r, c) → (r, 1).
    pub fn rowdot(self, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.same_tape(other)?;
        if self.shape() != other.shape() {
            return Err(Error::Shape(format!(
                "rowdot: {:?} and {:?}",
                self.shape(),
                other.shape()
            )));
        }
        let v = self.tape.backend.rowdot(&self.value(), &other.value())?;
        Ok(self.tape.push(v, Op::RowDot, vec![self.id, other.id]))
    }

    /// [self, other] side by side.
    pub fn concat_cols(self, other: Var<'t, B>) -> Result<Var<'t, B>> {
        self.same_tape(other)?;
        if self.shape().0 != other.shape().0 {
            return Err(Error::Shape(format!(
                "concat_cols: {:?} and {:?} differ in rows",
                self.shape(),
                other.shape()
            )));
        }
        let v = self
            .tape
            .backend
            .concat_cols(&self.value(), &other.value())?;
        Ok(self.tape.push(v, Op::ConcatCols, vec![self.id, other.id]))
    }

    /// Columns start..end.
    pub fn slice_cols(self, start: usize, end: usize) -> Result<Var<'t, B>> {
        let c = self.shape().1;
        if start > end || end > c {
            return Err(Error::Shape(format!(
                "slice_cols {start}..{end} of {c} columns"
            )));
        }
        let v = self.tape.backend.slice_cols(&self.value(), start, end)?;
        Ok(self.unary(Op::SliceCols { start, end }, v))
    }

    /// Place self at columns start.. of a zero tensor `total` columns wide.
    pub fn pad_cols(self, start: usize, total: usize) -> Result<Var<'t, B>> {
        let c = self.shape().1;
        if start + c > total {
            return Err(Error::Shape(format!(
                "pad_cols: {c} columns at {start} exceed {total}"
            )));
        }
        let v = self.tape.backend.pad_cols(&self.value(), start, total)?;
        Ok(self.unary(Op::PadCols { start, total }, v))
    }

    fn index(&self, index: usize) -> Result<B::Index> {
        self.tape
            .indices
            .borrow()
            .get(index)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no index #{index} on this tape")))
    }

    /// Rows picked by the tape index `index` (see [`Tape::index`]).
    pub fn gather_rows(self, index: usize) -> Result<Var<'t, B>> {
        let idx = self.index(index)?;
        let rows = self.shape().0;
        if self.tape.backend.index_bound(&idx) > rows {
            return Err(Error::Invalid(format!(
                "gather_rows: an index reaches row {} of a {rows}-row tensor",
                self.tape.backend.index_bound(&idx) - 1
            )));
        }
        let v = self.tape.backend.gather_rows(&self.value(), &idx)?;
        Ok(self.unary(Op::GatherRows { index }, v))
    }

    /// Adjoint of gather: row i added into row idx[i] of an (n, cols) zero tensor.
    pub fn scatter_add_rows(self, index: usize, n: usize) -> Result<Var<'t, B>> {
        let idx = self.index(index)?;
        if self.tape.backend.index_len(&idx) != self.shape().0 {
            return Err(Error::Shape(format!(
                "scatter_add_rows: {} indices for {} rows",
                self.tape.backend.index_len(&idx),
                self.shape().0
            )));
        }
        if self.tape.backend.index_bound(&idx) > n {
            return Err(Error::Invalid(format!(
                "scatter_add_rows: an index reaches row {} of {n}",
                self.tape.backend.index_bound(&idx) - 1
            )));
        }
        let v = self.tape.backend.scatter_add_rows(&self.value(), &idx, n)?;
        Ok(self.unary(Op::ScatterAddRows { index, n }, v))
    }

    /// im2col: a batch of channel-last images (B, H·W·C) to its matrix of patches
    /// (B·Ho·Wo, k·k·C), zeros where a window reaches into the padding. Layouts: [`crate::conv`].
    pub fn unfold(self, geometry: &Geometry) -> Result<Var<'t, B>> {
        geometry.check_unfold(self.shape())?;
        let v = self.tape.backend.unfold(&self.value(), geometry)?;
        Ok(self.unary(Op::Unfold(*geometry), v))
    }

    /// col2im, the adjoint of [`Var::unfold`]: patches (B·Ho·Wo, k·k·C) summed back into
    /// the pixels they were taken from, (B, H·W·C).
    pub fn fold(self, geometry: &Geometry) -> Result<Var<'t, B>> {
        geometry.check_fold(self.shape())?;
        let v = self.tape.backend.fold(&self.value(), geometry)?;
        Ok(self.unary(Op::Fold(*geometry), v))
    }

    /// The same row-major values as a (rows, cols) tensor of equal element count (no copy
    /// on either device: every tensor is contiguous).
    pub fn reshape(self, rows: usize, cols: usize) -> Result<Var<'t, B>> {
        let (r, c) = self.shape();
        if rows.checked_mul(cols) != Some(r * c) {
            return Err(Error::Shape(format!(
                "reshape: a {r}x{c} tensor has {} elements, {rows}x{cols} would need {}",
                r * c,
                rows.saturating_mul(cols)
            )));
        }
        if (rows, cols) == (r, c) {
            return Ok(self);
        }
        let v = self.tape.backend.reshape(&self.value(), rows, cols)?;
        Ok(self.unary(Op::Reshape { rows, cols }, v))
    }
}
