//! 2-D convolutions on the tape, as im2col ([`Var::unfold`]) followed by a matrix product.
//!
//! # Layout
//!
//! Tensors are 2-D and row-major, so a batch of images is stored **one image per row,
//! channel-last**: row `b` of a `(B, H·W·C)` tensor holds pixel `(y, x)`, channel `c` of
//! image `b` at column `(y·W + x)·C + c`. A convolution's output uses the same layout, with
//! the output's height, width and channels.
//!
//! A [`Geometry`] describes one square-kernel convolution: input size `H × W × C`, kernel
//! size `k`, `stride` and zero padding `pad` on all four sides. The output is
//! `Ho × Wo` with `Ho = (H + 2·pad − k)/stride + 1` (rounded down), likewise `Wo`.
//!
//! **unfold** (im2col) turns `(B, H·W·C)` into the matrix of patches
//! `(B·Ho·Wo, k·k·C)`: row `b·Ho·Wo + oy·Wo + ox` is the `k × k × C` window whose top-left
//! corner sits at `(oy·stride − pad, ox·stride − pad)`, stored in the same channel-last order:
//! column `(ky·k + kx)·C + c` holds input pixel `(oy·stride + ky − pad, ox·stride + kx − pad)`,
//! channel `c`, or 0 where that pixel lies in the padding.
//!
//! **fold** (col2im) is its adjoint, `(B·Ho·Wo, k·k·C) → (B, H·W·C)`: every patch entry is
//! added back to the pixel it was copied from (overlapping windows sum; entries that came from
//! the padding are dropped), so that ⟨unfold(x), y⟩ = ⟨x, fold(y)⟩. Each is the other's
//! backward rule, which is why gradients of gradients through a convolution work.
//!
//! [`conv2d`] is then one matrix product: with weights `(k·k·C, F)` (row `(ky·k + kx)·C + c`,
//! column `f`) and a bias `(1, F)`, `unfold(x)·W + b` is `(B·Ho·Wo, F)`, whose row-major
//! order is already the output images' channel-last order; [`Var::reshape`] views it as
//! `(B, Ho·Wo·F)`, one output image per row. It computes the cross-correlation
//! `out[b, oy, ox, f] = bias[f] + Σ_{ky,kx,c} W[(ky·k + kx)·C + c, f] · in[b, oy·s + ky − pad, ox·s + kx − pad, c]`
//! (what deep-learning libraries call convolution).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::Var;

/// The geometry of a square-kernel 2-D convolution on channel-last images (see the
/// [module documentation](self) for the layouts it implies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Input height H.
    pub h: usize,
    /// Input width W.
    pub w: usize,
    /// Input channels C.
    pub c: usize,
    /// Kernel size k (the kernel is k × k).
    pub k: usize,
    /// Step between neighbouring windows, in pixels.
    pub stride: usize,
    /// Zero padding added on each of the four sides.
    pub pad: usize,
}

/// Largest value any size or index of a geometry may reach: the GPU kernels compute indices
/// in u32.
const INDEX_LIMIT: usize = u32::MAX as usize;

impl Geometry {
    /// A validated geometry (see [`Geometry::validate`]).
    pub fn new(h: usize, w: usize, c: usize, k: usize, stride: usize, pad: usize) -> Result<Self> {
        let g = Geometry {
            h,
            w,
            c,
            k,
            stride,
            pad,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks that the geometry makes sense: positive sizes, kernel and stride; a kernel that
    /// fits in the padded image; padding smaller than the kernel (a wider border would add
    /// windows that see nothing but zeros); and sizes whose indices fit in 32 bits.
    pub fn validate(&self) -> Result<()> {
        let Geometry {
            h,
            w,
            c,
            k,
            stride,
            pad,
        } = *self;
        if h == 0 || w == 0 || c == 0 {
            return Err(Error::Invalid(format!(
                "convolution input of {h}×{w} pixels × {c} channels: every size must be positive"
            )));
        }
        if k == 0 || stride == 0 {
            return Err(Error::Invalid(format!(
                "convolution kernel size {k} and stride {stride} must both be positive"
            )));
        }
        if pad >= k {
            return Err(Error::Invalid(format!(
                "convolution padding {pad} must be smaller than the kernel size {k}"
            )));
        }
        let too_big = || {
            Error::Invalid(format!(
                "convolution of {h}×{w}×{c} images with a {k}×{k} kernel: sizes beyond 2³² − 1 \
                 elements are not supported"
            ))
        };
        let hw = h.checked_mul(w).ok_or_else(too_big)?;
        let pixels = hw.checked_mul(c).ok_or_else(too_big)?;
        let patch = k
            .checked_mul(k)
            .and_then(|kk| kk.checked_mul(c))
            .ok_or_else(too_big)?;
        let padded = |n: usize| n.checked_add(2 * pad).ok_or_else(too_big);
        let (hp, wp) = (padded(h)?, padded(w)?);
        if [pixels, patch, hp, wp, stride]
            .iter()
            .any(|&v| v > INDEX_LIMIT)
        {
            return Err(too_big());
        }
        if k > hp || k > wp {
            return Err(Error::Invalid(format!(
                "a {k}×{k} kernel does not fit in {h}×{w} images padded by {pad} ({hp}×{wp})"
            )));
        }
        Ok(())
    }

    /// Output size along an input size `n`: (n + 2·pad − k)/stride + 1. The sizes below are
    /// meaningful for a valid geometry only; for others they saturate instead of failing.
    fn out_len(&self, n: usize) -> usize {
        n.saturating_add(self.pad.saturating_mul(2))
            .saturating_sub(self.k)
            / self.stride.max(1)
            + 1
    }

    /// Output height Ho = (H + 2·pad − k)/stride + 1.
    pub fn out_h(&self) -> usize {
        self.out_len(self.h)
    }

    /// Output width Wo = (W + 2·pad − k)/stride + 1.
    pub fn out_w(&self) -> usize {
        self.out_len(self.w)
    }

    /// Output positions per image, Ho·Wo (the rows of [`Var::unfold`] per image).
    pub fn positions(&self) -> usize {
        self.out_h().saturating_mul(self.out_w())
    }

    /// Values per input image, H·W·C (the columns of the input).
    pub fn pixels(&self) -> usize {
        self.h.saturating_mul(self.w).saturating_mul(self.c)
    }

    /// Values per patch, k·k·C (the columns of [`Var::unfold`], the rows of the weights).
    pub fn patch(&self) -> usize {
        self.k.saturating_mul(self.k).saturating_mul(self.c)
    }

    /// The geometry of a convolution applied to this one's output: `Ho × Wo × channels`
    /// images with kernel `k`, `stride`, `pad`.
    pub fn next(&self, channels: usize, k: usize, stride: usize, pad: usize) -> Result<Geometry> {
        Geometry::new(self.out_h(), self.out_w(), channels, k, stride, pad)
    }

    /// Validates the geometry and that `shape` is a batch of its input images,
    /// `(B, H·W·C)`; returns B·Ho·Wo, the rows of the unfolded patches.
    pub fn check_unfold(&self, shape: (usize, usize)) -> Result<usize> {
        self.validate()?;
        let (rows, cols) = shape;
        if cols != self.pixels() {
            return Err(Error::Shape(format!(
                "unfold: input has {cols} columns, but {}×{}×{} images need H·W·C = {}",
                self.h,
                self.w,
                self.c,
                self.pixels()
            )));
        }
        rows.checked_mul(self.positions())
            .filter(|&n| n <= INDEX_LIMIT)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unfold: {rows} images of {} positions each exceed 2³² − 1 rows",
                    self.positions()
                ))
            })
    }

    /// Validates the geometry and that `shape` is a matrix of patches, `(B·Ho·Wo, k·k·C)`;
    /// returns B, the number of images [`Var::fold`] produces.
    pub fn check_fold(&self, shape: (usize, usize)) -> Result<usize> {
        self.validate()?;
        let (rows, cols) = shape;
        let positions = self.positions();
        if cols != self.patch() {
            return Err(Error::Shape(format!(
                "fold: input has {cols} columns, but a {k}×{k} kernel on {c} channels has \
                 k·k·C = {} values per patch",
                self.patch(),
                k = self.k,
                c = self.c
            )));
        }
        if rows % positions != 0 {
            return Err(Error::Shape(format!(
                "fold: {rows} rows are not a whole number of images of Ho·Wo = {}×{} = \
                 {positions} positions",
                self.out_h(),
                self.out_w()
            )));
        }
        Ok(rows / positions)
    }
}

/// A 2-D convolution of a batch of channel-last images: `x` is `(B, H·W·C)` (one image per
/// row), `weight` is `(k·k·C, F)`, `bias` is `(1, F)`; the result is `(B, Ho·Wo·F)`, one
/// output image per row, channel-last. Computed as `reshape(unfold(x)·weight + bias)` (see
/// the [module documentation](self)), so it is differentiable to any order the rest of the
/// tape supports.
pub fn conv2d<'t, B: Backend>(
    x: Var<'t, B>,
    weight: Var<'t, B>,
    bias: Var<'t, B>,
    geometry: &Geometry,
) -> Result<Var<'t, B>> {
    geometry.validate()?;
    let (wr, f) = weight.shape();
    if wr != geometry.patch() {
        return Err(Error::Shape(format!(
            "conv2d: weight is {wr}×{f}, but a {k}×{k} kernel on {c} channels needs k·k·C = {} \
             rows",
            geometry.patch(),
            k = geometry.k,
            c = geometry.c
        )));
    }
    if bias.shape() != (1, f) {
        return Err(Error::Shape(format!(
            "conv2d: bias is {:?}, but {f} output channels need a 1×{f} bias",
            bias.shape()
        )));
    }
    let b = x.shape().0;
    x.unfold(geometry)?
        .matmul(weight)?
        .add(bias)?
        .reshape(b, geometry.positions() * f)
}
