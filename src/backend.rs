//! The interface the tape needs from a device: one method per primitive op.
//!
//! Two implementations: [`crate::gpu::Gpu`] (WGSL kernels, f32) and [`crate::cpu::Cpu`]
//! (plain f64 loops, the reference every kernel is tested against). The tape validates
//! shapes before calling, so implementations may assume well-shaped operands.

use crate::conv::Geometry;
use crate::error::Result;
use crate::ops::{Axis, BinOp, Fun};

pub trait Backend {
    /// A 2-D (rows, cols) row-major array of numbers living on this device.
    type Tensor: Clone;
    /// A vector of row indices living on this device.
    type Index: Clone;

    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// The values on the host (a round trip on a GPU: for data-dependent constants such as a
    /// kernel bandwidth, never inside the differentiable graph).
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f64>>;
    /// A tensor from host values (rounded to the device's precision).
    fn upload_host(&self, rows: usize, cols: usize, data: &[f64]) -> Result<Self::Tensor>;
    fn index_len(&self, i: &Self::Index) -> usize;
    /// Every index value is smaller than this.
    fn index_bound(&self, i: &Self::Index) -> usize;

    /// A (rows, cols) tensor filled with `value`.
    fn full(&self, rows: usize, cols: usize, value: f32) -> Result<Self::Tensor>;
    /// op(a)·op(b) where op transposes when the flag is set.
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        ta: bool,
        tb: bool,
    ) -> Result<Self::Tensor>;
    /// a ∘ b with broadcasting of size-1 rows/columns.
    fn binary(&self, op: BinOp, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// f⁽ᵒʳᵈᵉʳ⁾(x) elementwise.
    fn map(&self, f: Fun, order: u8, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// a·x + b elementwise.
    fn affine(&self, x: &Self::Tensor, a: f32, b: f32) -> Result<Self::Tensor>;
    fn sum(&self, x: &Self::Tensor, axis: Axis) -> Result<Self::Tensor>;
    /// Broadcast a (1|r, 1|c) tensor to (r, c).
    fn expand(&self, x: &Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// Row-wise dot product: (r, c)·(r, c) → (r, 1).
    fn rowdot(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// [a, b] side by side.
    fn concat_cols(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// Columns start..end.
    fn slice_cols(&self, x: &Self::Tensor, start: usize, end: usize) -> Result<Self::Tensor>;
    /// Inverse of slicing: x placed at columns start.. of a zero (r, total) tensor.
    fn pad_cols(&self, x: &Self::Tensor, start: usize, total: usize) -> Result<Self::Tensor>;
    /// out[i] = x[idx[i]].
    fn gather_rows(&self, x: &Self::Tensor, idx: &Self::Index) -> Result<Self::Tensor>;
    /// out (n rows): out[j] = Σ_{i: idx[i] = j} x[i]. The adjoint of `gather_rows`.
    fn scatter_add_rows(
        &self,
        x: &Self::Tensor,
        idx: &Self::Index,
        n: usize,
    ) -> Result<Self::Tensor>;
    /// im2col: a batch of channel-last images (B, H·W·C) to its matrix of patches
    /// (B·Ho·Wo, k·k·C), zeros where a window reaches into the padding (layout:
    /// [`crate::conv`]). Refuses (never panics on) a shape that does not fit `g`.
    fn unfold(&self, x: &Self::Tensor, g: &Geometry) -> Result<Self::Tensor>;
    /// col2im, the adjoint of `unfold`: patches (B·Ho·Wo, k·k·C) summed back into the
    /// pixels they came from, (B, H·W·C). Refuses a shape that does not fit `g`.
    fn fold(&self, x: &Self::Tensor, g: &Geometry) -> Result<Self::Tensor>;
    /// The same row-major values as a (rows, cols) tensor (equal element count, checked).
    fn reshape(&self, x: &Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor>;
}

/// Random fills are not part of the differentiable vocabulary (they are constants to the
/// tape) but both devices make the same stream, see [`crate::rng`].
pub trait RandomFill: Backend {
    fn random(
        &self,
        rows: usize,
        cols: usize,
        dist: crate::rng::Dist,
        seed: u64,
        stream: u64,
    ) -> Result<Self::Tensor>;
}

/// A borrowed backend is a backend: tapes usually borrow the device (`Tape::new(&gpu)`).
impl<B: Backend + ?Sized> Backend for &B {
    type Tensor = B::Tensor;
    type Index = B::Index;

    fn shape(&self, t: &Self::Tensor) -> (usize, usize) {
        (**self).shape(t)
    }
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f64>> {
        (**self).to_host(t)
    }
    fn upload_host(&self, rows: usize, cols: usize, data: &[f64]) -> Result<Self::Tensor> {
        (**self).upload_host(rows, cols, data)
    }
    fn index_len(&self, i: &Self::Index) -> usize {
        (**self).index_len(i)
    }
    fn index_bound(&self, i: &Self::Index) -> usize {
        (**self).index_bound(i)
    }
    fn full(&self, rows: usize, cols: usize, value: f32) -> Result<Self::Tensor> {
        (**self).full(rows, cols, value)
    }
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        ta: bool,
        tb: bool,
    ) -> Result<Self::Tensor> {
        (**self).matmul(a, b, ta, tb)
    }
    fn binary(&self, op: BinOp, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        (**self).binary(op, a, b)
    }
    fn map(&self, f: Fun, order: u8, x: &Self::Tensor) -> Result<Self::Tensor> {
        (**self).map(f, order, x)
    }
    fn affine(&self, x: &Self::Tensor, a: f32, b: f32) -> Result<Self::Tensor> {
        (**self).affine(x, a, b)
    }
    fn sum(&self, x: &Self::Tensor, axis: Axis) -> Result<Self::Tensor> {
        (**self).sum(x, axis)
    }
    fn expand(&self, x: &Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor> {
        (**self).expand(x, rows, cols)
    }
    fn rowdot(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        (**self).rowdot(a, b)
    }
    fn concat_cols(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        (**self).concat_cols(a, b)
    }
    fn slice_cols(&self, x: &Self::Tensor, start: usize, end: usize) -> Result<Self::Tensor> {
        (**self).slice_cols(x, start, end)
    }
    fn pad_cols(&self, x: &Self::Tensor, start: usize, total: usize) -> Result<Self::Tensor> {
        (**self).pad_cols(x, start, total)
    }
    fn gather_rows(&self, x: &Self::Tensor, idx: &Self::Index) -> Result<Self::Tensor> {
        (**self).gather_rows(x, idx)
    }
    fn scatter_add_rows(
        &self,
        x: &Self::Tensor,
        idx: &Self::Index,
        n: usize,
    ) -> Result<Self::Tensor> {
        (**self).scatter_add_rows(x, idx, n)
    }
    fn unfold(&self, x: &Self::Tensor, g: &Geometry) -> Result<Self::Tensor> {
        (**self).unfold(x, g)
    }
    fn fold(&self, x: &Self::Tensor, g: &Geometry) -> Result<Self::Tensor> {
        (**self).fold(x, g)
    }
    fn reshape(&self, x: &Self::Tensor, rows: usize, cols: usize) -> Result<Self::Tensor> {
        (**self).reshape(x, rows, cols)
    }
}

impl<B: RandomFill + ?Sized> RandomFill for &B {
    fn random(
        &self,
        rows: usize,
        cols: usize,
        dist: crate::rng::Dist,
        seed: u64,
        stream: u64,
    ) -> Result<Self::Tensor> {
        (**self).random(rows, cols, dist, seed, stream)
    }
}
