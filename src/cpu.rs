//! f64 CPU reference of every op. Slow and obviously correct: the tests compare every GPU
//! kernel against it, and users can run a tape on it to check a GPU result.

use crate::backend::Backend;
use crate::conv::Geometry;
use crate::error::{Error, Result};
use crate::ops::{Axis, BinOp, Fun};

/// A row-major f64 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Result<Mat> {
        if data.len() != rows * cols {
            return Err(Error::Shape(format!(
                "{} values given for a {rows}x{cols} matrix",
                data.len()
            )));
        }
        Ok(Mat { rows, cols, data })
    }
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Result<Mat> {
        Mat::new(rows, cols, data.iter().map(|&v| v as f64).collect())
    }
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }
    /// Element at (r, c) of a matrix broadcast to a larger shape.
    fn bcast(&self, r: usize, c: usize) -> f64 {
        let r = if self.rows == 1 { 0 } else { r };
        let c = if self.cols == 1 { 0 } else { c };
        self.at(r, c)
    }
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

/// The CPU device. Stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

fn build(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Mat {
    let mut data = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            data.push(f(r, c));
        }
    }
    Mat { rows, cols, data }
}

impl Backend for Cpu {
    type Tensor = Mat;
    type Index = Vec<u32>;

    fn shape(&self, t: &Mat) -> (usize, usize) {
        (t.rows, t.cols)
    }
    fn to_host(&self, t: &Mat) -> Result<Vec<f64>> {
        Ok(t.data.clone())
    }
    fn upload_host(&self, rows: usize, cols: usize, data: &[f64]) -> Result<Mat> {
        Mat::new(rows, cols, data.to_vec())
    }
    fn index_len(&self, i: &Vec<u32>) -> usize {
        i.len()
    }
    fn index_bound(&self, i: &Vec<u32>) -> usize {
        i.iter().map(|&v| v as usize + 1).max().unwrap_or(0)
    }
    fn full(&self, rows: usize, cols: usize, value: f32) -> Result<Mat> {
        Ok(Mat {
            rows,
            cols,
            data: vec![value as f64; rows * cols],
        })
    }
    fn matmul(&self, a: &Mat, b: &Mat, ta: bool, tb: bool) -> Result<Mat> {
        let ga = |i: usize, k: usize| if ta { a.at(k, i) } else { a.at(i, k) };
        let gb = |k: usize, j: usize| if tb { b.at(j, k) } else { b.at(k, j) };
        let (m, kk) = if ta {
            (a.cols, a.rows)
        } else {
            (a.rows, a.cols)
        };
        let n = if tb { b.rows } else { b.cols };
        Ok(build(m, n, |i, j| {
            (0..kk).map(|k| ga(i, k) * gb(k, j)).sum()
        }))
    }
    fn binary(&self, op: BinOp, a: &Mat, b: &Mat) -> Result<Mat> {
        let rows = a.rows.max(b.rows);
        let cols = a.cols.max(b.cols);
        Ok(build(rows, cols, |r, c| {
            op.apply(a.bcast(r, c), b.bcast(r, c))
        }))
    }
    fn map(&self, f: Fun, order: u8, x: &Mat) -> Result<Mat> {
        Ok(Mat {
            data: x.data.iter().map(|&v| f.eval(order, v)).collect(),
            ..*x
        })
    }
    fn affine(&self, x: &Mat, a: f32, b: f32) -> Result<Mat> {
        let (a, b) = (a as f64, b as f64);
        Ok(Mat {
            data: x.data.iter().map(|&v| a * v + b).collect(),
            ..*x
        })
    }
    fn sum(&self, x: &Mat, axis: Axis) -> Result<Mat> {
        Ok(match axis {
            Axis::Rows => build(1, x.cols, |_, c| (0..x.rows).map(|r| x.at(r, c)).sum()),
            Axis::Cols => build(x.rows, 1, |r, _| (0..x.cols).map(|c| x.at(r, c)).sum()),
            Axis::All => build(1, 1, |_, _| x.data.iter().sum()),
        })
    }
    fn expand(&self, x: &Mat, rows: usize, cols: usize) -> Result<Mat> {
        Ok(build(rows, cols, |r, c| x.bcast(r, c)))
    }
    fn rowdot(&self, a: &Mat, b: &Mat) -> Result<Mat> {
        Ok(build(a.rows, 1, |r, _| {
            (0..a.cols).map(|c| a.at(r, c) * b.at(r, c)).sum()
        }))
    }
    fn concat_cols(&self, a: &Mat, b: &Mat) -> Result<Mat> {
        Ok(build(a.rows, a.cols + b.cols, |r, c| {
            if c < a.cols {
                a.at(r, c)
            } else {
                b.at(r, c - a.cols)
            }
        }))
    }
    fn slice_cols(&self, x: &Mat, start: usize, end: usize) -> Result<Mat> {
        Ok(build(x.rows, end - start, |r, c| x.at(r, c + start)))
    }
    fn pad_cols(&self, x: &Mat, start: usize, total: usize) -> Result<Mat> {
        Ok(build(x.rows, total, |r, c| {
            if c >= start && c < start + x.cols {
                x.at(r, c - start)
            } else {
                0.0
            }
        }))
    }
    fn gather_rows(&self, x: &Mat, idx: &Vec<u32>) -> Result<Mat> {
        Ok(build(idx.len(), x.cols, |r, c| x.at(idx[r] as usize, c)))
    }
    fn scatter_add_rows(&self, x: &Mat, idx: &Vec<u32>, n: usize) -> Result<Mat> {
        let mut out = Mat::zeros(n, x.cols);
        for (i, &j) in idx.iter().enumerate() {
            for c in 0..x.cols {
                out.data[j as usize * x.cols + c] += x.at(i, c);
            }
        }
        Ok(out)
    }
    fn unfold(&self, x: &Mat, g: &Geometry) -> Result<Mat> {
        let rows = g.check_unfold((x.rows, x.cols))?;
        let (ho, wo) = (g.out_h(), g.out_w());
        Ok(build(rows, g.patch(), |r, col| {
            let (b, oy, ox) = (r / (ho * wo), r % (ho * wo) / wo, r % wo);
            let (ky, kx, c) = (col / g.c / g.k, col / g.c % g.k, col % g.c);
            // Coordinates in the padded image; the real pixel is pad less.
            let (yp, xp) = (oy * g.stride + ky, ox * g.stride + kx);
            if yp < g.pad || yp - g.pad >= g.h || xp < g.pad || xp - g.pad >= g.w {
                0.0
            } else {
                x.at(b, ((yp - g.pad) * g.w + xp - g.pad) * g.c + c)
            }
        }))
    }
    /// The adjoint by definition: each patch entry added to the pixel `unfold` took it from.
    fn fold(&self, x: &Mat, g: &Geometry) -> Result<Mat> {
        let batch = g.check_fold((x.rows, x.cols))?;
        let (ho, wo) = (g.out_h(), g.out_w());
        let mut out = Mat::zeros(batch, g.pixels());
        for b in 0..batch {
            for oy in 0..ho {
                for ox in 0..wo {
                    let r = (b * ho + oy) * wo + ox;
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let (yp, xp) = (oy * g.stride + ky, ox * g.stride + kx);
                            if yp < g.pad || yp - g.pad >= g.h || xp < g.pad || xp - g.pad >= g.w {
                                continue;
                            }
                            for c in 0..g.c {
                                let pixel = ((yp - g.pad) * g.w + xp - g.pad) * g.c + c;
                                out.data[b * g.pixels() + pixel] +=
                                    x.at(r, (ky * g.k + kx) * g.c + c);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
    fn reshape(&self, x: &Mat, rows: usize, cols: usize) -> Result<Mat> {
        if rows.checked_mul(cols) != Some(x.data.len()) {
            return Err(Error::Shape(format!(
                "cannot reshape a {}x{} tensor to {rows}x{cols}: the element counts differ",
                x.rows, x.cols
            )));
        }
        Ok(Mat {
            rows,
            cols,
            data: x.data.clone(),
        })
    }
}

impl crate::backend::RandomFill for Cpu {
    fn random(
        &self,
        rows: usize,
        cols: usize,
        dist: crate::rng::Dist,
        seed: u64,
        stream: u64,
    ) -> Result<Mat> {
        Mat::new(
            rows,
            cols,
            crate::rng::reference_draw(rows * cols, dist, seed, stream),
        )
    }
}
