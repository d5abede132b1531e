//! Checks of a trained model that the training loss does not see.
//!
//! **Tails** ([`tail_check`]). Score matching (and MVL, which estimates it) only looks at the
//! energy where the data are: a model can fit the data perfectly and still have regions far
//! away with *lower* energy than the data's mode, or an energy that *falls* outward. Then
//! q ∝ exp(−E) cannot be normalised (exp(−E) is integrable only if E grows at least like
//! d·log r along every direction), and Langevin or MALA chains that wander out find a downhill
//! path and run away — the figures look fine, the samples do not.
//!
//! The check evaluates E on spheres ("shells") around the data's mean, at radii 1.5, 2, 4, 8
//! and 16 × R, R the 99th percentile of the data's distances from the mean, along the same
//! 2048 random directions on every shell, and warns when either
//!
//! - a point on a shell has lower energy than the data's 1 % quantile: it is more probable
//!   than 99 % of the data although nothing was observed there, so samplers are drawn to it; or
//! - the lowest shell energy falls from 4R to 8R and again from 8R to 16R (by more than a
//!   rounding margin): the energy decreases outward, so the density is not normalisable even
//!   if the energies there are still above the data's.
//!
//! A NaN energy on a shell is also reported. The check is a sample, not a proof: it can miss a
//! narrow downhill valley between its directions, but it finds the broad ones that make chains
//! run away, in about 10 000 energy evaluations.

use std::fmt;

use crate::data::Matrix;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::Model;
use crate::rng::HostRng;
use crate::train::energy_and_score;

/// Shell radii in units of the data's radius R.
pub const SHELLS: [f64; 5] = [1.5, 2.0, 4.0, 8.0, 16.0];
/// Random directions per shell (the same on every shell).
pub const DIRECTIONS: usize = 2048;
/// Most data rows whose energies are evaluated (evenly spaced through the data).
const MAX_DATA_ROWS: usize = 65_536;
/// Rows per upload.
const CHUNK: usize = 16_384;

/// What [`tail_check`] found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailProblem {
    /// A point beyond the data has lower energy than the data's 1 % quantile.
    BelowData,
    /// The lowest shell energy decreases outward over the outer shells.
    DecreasingOutward,
    /// The energy is NaN somewhere beyond the data.
    NotANumber,
}

/// A warning from [`tail_check`]: where the energy is too low, and how low.
#[derive(Clone, Debug, PartialEq)]
pub struct TailWarning {
    pub problem: TailProblem,
    /// The worst point found (the lowest energy, on the outermost shell for
    /// `DecreasingOutward`).
    pub point: Vec<f64>,
    /// Its energy.
    pub energy: f64,
    /// The data's reference energy: the 1 % quantile of the energies on the data.
    pub reference: f64,
    /// Distance of `point` from the data's mean, and the data's radius R (99th percentile
    /// distance from the mean).
    pub distance: f64,
    pub data_radius: f64,
    /// (radius, lowest energy) for each shell, innermost first.
    pub shells: Vec<(f64, f64)>,
}

impl fmt::Display for TailWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at: Vec<String> = self.point.iter().map(|v| format!("{v:.3}")).collect();
        let at = format!(
            "x = ({}), {:.1} × the data's radius from its mean",
            at.join(", "),
            self.distance / self.data_radius
        );
        match self.problem {
            TailProblem::BelowData => write!(
                f,
                "the learned density may not be normalisable: at {at}, far from any data, the \
                 energy is {:.4}, lower than at 99 % of the data (1 % quantile {:.4})",
                self.energy, self.reference
            )?,
            TailProblem::DecreasingOutward => {
                let mins: Vec<String> = self
                    .shells
                    .iter()
                    .map(|(r, e)| format!("{:.0}R: {e:.4}", r / self.data_radius))
                    .collect();
                write!(
                    f,
                    "the learned density may not be normalisable: the lowest energy beyond the \
                     data falls outward ({}), down to {:.4} at {at}",
                    mins.join(", "),
                    self.energy
                )?
            }
            TailProblem::NotANumber => {
                write!(f, "the learned energy is NaN at {at}, beyond the data")?
            }
        }
        write!(
            f,
            "; samples may run away. Train longer, add --energy-reg (e.g. 1e-4), or sample with \
             a smaller --step-size and check the samples"
        )
    }
}

/// Looks for regions beyond the data where the model's energy is lower than on the data or
/// falls outward (see the [module docs](self) for the criterion and why). `None` when nothing
/// was found. Deterministic for a given `seed`.
///
/// Errors: [`Error::Shape`] when the data's width is not the model's, [`Error::Invalid`] for
/// empty or non-finite data or a model whose energy is not finite on the data.
pub fn tail_check<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    data: &Matrix,
    seed: u64,
) -> Result<Option<TailWarning>> {
    let summary = DataSummary::of(data, MAX_DATA_ROWS)?;
    check(gpu, model, &summary, seed)
}

/// What the tail check needs of the data: centre, radius and some rows.
#[derive(Clone, Debug, PartialEq)]
struct DataSummary {
    dim: usize,
    centre: Vec<f64>,
    radius: f64,
    /// Evenly spaced rows, row-major, and the stride they were taken with.
    rows: Vec<f32>,
    stride: usize,
}

impl DataSummary {
    /// Centre and radius from all of at most `max_rows` evenly spaced rows.
    fn of(data: &Matrix, max_rows: usize) -> Result<DataSummary> {
        let d = data.cols;
        if data.rows == 0 || d == 0 || data.data.len() != data.rows * d {
            return Err(Error::Invalid(format!(
                "tail check needs data points ({} rows of {d} values given)",
                data.rows
            )));
        }
        if let Some(i) = data.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "data row {} has a non-finite value; remove it before checking the model",
                i / d + 1
            )));
        }
        // Evenly spaced rows bound the cost on large data; quantiles barely change.
        let stride = data.rows.div_ceil(max_rows.max(1));
        let rows: Vec<&[f32]> = data.data.chunks(d).step_by(stride).collect();
        let mut centre = vec![0.0f64; d];
        for r in &rows {
            for (c, &v) in centre.iter_mut().zip(r.iter()) {
                *c += v as f64;
            }
        }
        centre.iter_mut().for_each(|c| *c /= rows.len() as f64);
        let mut dist: Vec<f64> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&centre)
                    .map(|(&v, c)| (v as f64 - c).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        dist.sort_by(f64::total_cmp);
        // Identical points have no spread: any small sphere around them is "beyond the data".
        let scale = centre.iter().fold(1.0f64, |m, c| m.max(c.abs()));
        let radius = quantile(&dist, 0.99).max(1e-3 * scale);
        Ok(DataSummary {
            dim: d,
            centre,
            radius,
            rows: rows.concat(),
            stride,
        })
    }
}

fn check<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    data: &DataSummary,
    seed: u64,
) -> Result<Option<TailWarning>> {
    let d = data.dim;
    if d != model.arch.dim {
        return Err(Error::Shape(format!(
            "the model takes {} columns, the data has {d}; check with the model's training data",
            model.arch.dim
        )));
    }
    let (centre, radius) = (&data.centre, data.radius);
    let mut data_e = energies(gpu, model, &data.rows, d)?;
    if let Some(r) = data_e.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "the model's energy is {} at data row {}; the model is unusable there, retrain it",
            data_e[r],
            r * data.stride + 1
        )));
    }
    data_e.sort_by(f64::total_cmp);
    let reference = quantile(&data_e, 0.01);

    // The same directions on every shell, so that shells compare along the same rays.
    let mut rng = HostRng::new(seed);
    let mut dirs = Vec::with_capacity(DIRECTIONS * d);
    for _ in 0..DIRECTIONS {
        let z: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let n = z.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        dirs.extend(z.iter().map(|v| v / n));
    }
    let mut shells = Vec::with_capacity(SHELLS.len());
    // Per shell: (lowest energy, its direction); the first NaN found (radius, direction).
    let mut lowest = Vec::with_capacity(SHELLS.len());
    let mut nan: Option<(f64, usize)> = None;
    for &k in &SHELLS {
        let r = k * radius;
        let pts: Vec<f32> = dirs
            .chunks(d)
            .flat_map(|u| u.iter().zip(centre).map(move |(u, c)| (c + r * u) as f32))
            .collect();
        let e = energies(gpu, model, &pts, d)?;
        let mut best = (f64::INFINITY, 0usize);
        for (j, &v) in e.iter().enumerate() {
            if v.is_nan() {
                nan.get_or_insert((r, j));
            } else if v < best.0 {
                best = (v, j);
            }
        }
        shells.push((r, best.0));
        lowest.push(best);
    }

    let warning = |problem, r: f64, j: usize, energy| {
        Some(TailWarning {
            problem,
            point: dirs[j * d..(j + 1) * d]
                .iter()
                .zip(centre)
                .map(|(u, c)| c + r * u)
                .collect(),
            energy,
            reference,
            distance: r,
            data_radius: radius,
            shells: shells.clone(),
        })
    };
    if let Some((r, j)) = nan {
        return Ok(warning(TailProblem::NotANumber, r, j, f64::NAN));
    }
    let (mut s, mut e, mut j) = (0, f64::INFINITY, 0);
    for (k, &(v, dir)) in lowest.iter().enumerate() {
        if v < e {
            (s, e, j) = (k, v, dir);
        }
    }
    if e < reference {
        return Ok(warning(TailProblem::BelowData, shells[s].0, j, e));
    }
    // Falling over the three outer shells, by more than f32 rounding of the energies.
    let outer = &lowest[SHELLS.len() - 3..];
    let falls = outer
        .windows(2)
        .all(|w| w[1].0 < w[0].0 - 1e-4 * w[0].0.abs().max(1.0));
    if falls {
        let (e, j) = outer[2];
        return Ok(warning(
            TailProblem::DecreasingOutward,
            shells[SHELLS.len() - 1].0,
            j,
            e,
        ));
    }
    Ok(None)
}

/// The `q` quantile of sorted values (nearest rank below).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).floor() as usize]
}

/// Energies of `pts` ((rows, d) row-major), in chunks.
fn energies<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    pts: &[f32],
    d: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(pts.len() / d);
    for part in pts.chunks(CHUNK * d) {
        if let Some(v) = part.iter().find(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "a point of the tail check is {v} in f32: the data's scale is too large; \
                 standardise the data"
            )));
        }
        let x = gpu.upload(part.len() / d, d, part)?;
        let (e, _) = energy_and_score(gpu, model, &x, 4096)?;
        out.extend(e.iter().map(|&v| v as f64));
    }
    Ok(out)
}
