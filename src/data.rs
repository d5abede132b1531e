//! Data sets: the 2-D toy densities of SPEC §8 (exact samplers, log densities and
//! scores) and data files (`.npy`, `.csv`) loaded into an f32 [`Matrix`].
//!
//! # Toy densities
//!
//! Every [`Toy`] is a probability density on R² with respect to Lebesgue measure,
//! normalised exactly (∫ p = 1). Points are `[f64; 2]` = (x₁, x₂). `N(x; m, v)` below
//! is the normal density with mean `m` and **variance** `v`,
//! `N(x; m, v) = exp(−(x − m)²/(2v)) / √(2πv)`.
//!
//! | toy | generative recipe | log p(x) |
//! |---|---|---|
//! | banana | x₁ ~ N(0, 4), x₂ \| x₁ ~ N(0.2(x₁² − 4), 1) | log N(x₁; 0, 4) + log N(x₂; 0.2(x₁² − 4), 1) |
//! | cosine | x₁ ~ U(−4, 4), x₂ \| x₁ ~ N(3 cos 2x₁, 1) | −log 8 + log N(x₂; 3 cos 2x₁, 1) on \|x₁\| ≤ 4, −∞ outside |
//! | funnel | x₁ ~ N(0, 4), x₂ \| x₁ ~ N(0, v(x₁)), v = clip(e^(−x₁), 0, 10) | log N(x₁; 0, 4) + log N(x₂; 0, v(x₁)) |
//! | ring | ρ = 5 + 0.2 z, θ ~ U(0, 2π) | log p_ρ(‖x‖) − log(2π‖x‖) |
//! | multiring | ρ = R + 0.2 z, R ∈ {1, 3, 5} w.p. R/9, θ ~ U(0, 2π) | log p_ρ(‖x‖) − log(2π‖x‖) |
//!
//! For the rings the point is x = ρ(cos θ, sin θ) with z ~ N(0, 1). A negative draw ρ < 0
//! is kept: it lands at distance |ρ| in the opposite direction, so the distance ‖x‖ has
//! the *folded* normal (mixture) density
//! `p_ρ(r) = Σₖ wₖ [N(r; Rₖ, σ²) + N(r; −Rₖ, σ²)]` for r ≥ 0 (σ = 0.2), and the density
//! of the point is `p_ρ(r)/(2πr)` (polar change of variables). The fold makes the
//! normalisation exact; its term is negligible except within a few σ of the origin
//! (the negative mass is Φ(−25) for the ring and (1/9)Φ(−5) ≈ 3·10⁻⁸ for multiring).
//! At the origin itself the density is +∞ (integrable, as 1/r in the plane).
//!
//! The score `∇ₓ log p(x)` is computed from analytic formulas (see [`Toy::score`]).
//!
//! # Files
//!
//! [`load_npy`] reads 2-D little-endian f32/f64 C-order `.npy` arrays (format versions
//! 1.0, 2.0 and 3.0), [`load_csv`] reads comma-separated numbers with an optional header
//! row, [`load_data`] picks one by the file extension, and [`save_npy`] writes a v1.0
//! `<f4` file atomically. Every loader returns an f32 [`Matrix`], rejects empty data,
//! NaN/±Inf values and f64 values too large for f32, and names the file and the
//! position of the problem in its error.

use crate::error::{Error, Result};
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;
use std::f64::consts::TAU;
use std::path::Path;

// ---------------------------------------------------------------------------------
// Random numbers (CPU)
// ---------------------------------------------------------------------------------

/// Uniform and standard-normal draws from a seeded PCG64 stream.
struct Draws {
    rng: Pcg64,
    spare: Option<f64>,
}

impl Draws {
    fn new(seed: u64) -> Self {
        Draws {
            rng: Pcg64::seed_from_u64(seed),
            spare: None,
        }
    }

    /// Uniform on [0, 1), 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box–Muller: with u₁ ∈ (0, 1], u₂ ∈ [0, 1),
    /// z₁ = √(−2 ln u₁) cos(2πu₂), z₂ = √(−2 ln u₁) sin(2πu₂) (z₂ kept for the next call).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

// ---------------------------------------------------------------------------------
// Toy densities
// ---------------------------------------------------------------------------------

/// Radial standard deviation of the ring densities.
const RING_SD: f64 = 0.2;
/// log √(2π).
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
/// Funnel: upper clip of the conditional variance of x₂.
const FUNNEL_MAX_VAR: f64 = 10.0;

/// One of the 2-D densities of SPEC §8 (Wenliang et al. 2019). See the module docs for
/// the exact definitions and normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Toy {
    /// x₁ ~ N(0, 4); x₂ | x₁ ~ N(0.2(x₁² − 4), 1).
    Banana,
    /// x₁ ~ U(−4, 4); x₂ | x₁ ~ N(3 cos(2x₁), 1).
    Cosine,
    /// x₁ ~ N(0, 4); x₂ | x₁ ~ N(0, clip(e^(−x₁), 0, 10)) (second argument = variance).
    Funnel,
    /// Radius 5 + 0.2·N(0, 1), angle uniform.
    Ring,
    /// Radius R + 0.2·N(0, 1) with R ∈ {1, 3, 5} chosen with probability R/9, angle uniform.
    MultiRing,
}

impl Toy {
    /// All toys, in the order of [`Toy::NAMES`].
    pub const ALL: [Toy; 5] = [
        Toy::Banana,
        Toy::Cosine,
        Toy::Funnel,
        Toy::Ring,
        Toy::MultiRing,
    ];
    /// The names accepted by [`Toy::from_name`].
    pub const NAMES: [&'static str; 5] = ["banana", "cosine", "funnel", "ring", "multiring"];

    /// The toy called `name` (one of [`Toy::NAMES`], ASCII case-insensitive).
    pub fn from_name(name: &str) -> Result<Toy> {
        let lower = name.trim().to_ascii_lowercase();
        Toy::ALL
            .iter()
            .copied()
            .find(|t| t.name() == lower)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown data set '{name}'; valid names are: {}",
                    Toy::NAMES.join(", ")
                ))
            })
    }

    /// The lower-case name, as accepted by [`Toy::from_name`].
    pub fn name(self) -> &'static str {
        match self {
            Toy::Banana => "banana",
            Toy::Cosine => "cosine",
            Toy::Funnel => "funnel",
            Toy::Ring => "ring",
            Toy::MultiRing => "multiring",
        }
    }

    /// `n` independent exact draws, determined by `seed` (PCG64 stream, Box–Muller normals).
    ///
    /// - banana: x₁ = 2z₁, x₂ = 0.2(x₁² − 4) + z₂.
    /// - cosine: x₁ = −4 + 8u, x₂ = 3 cos(2x₁) + z.
    /// - funnel: x₁ = 2z₁, x₂ = √v(x₁)·z₂ with v(x₁) = min(e^(−x₁), 10).
    /// - ring: ρ = 5 + 0.2z, θ = 2πu, x = ρ(cos θ, sin θ).
    /// - multiring: R = 1, 3, 5 with probability 1/9, 3/9, 5/9, then as ring with ρ = R + 0.2z.
    pub fn sample(self, n: usize, seed: u64) -> Vec<[f64; 2]> {
        let mut d = Draws::new(seed);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let p = match self {
                Toy::Banana => {
                    let x1 = 2.0 * d.normal();
                    [x1, 0.2 * (x1 * x1 - 4.0) + d.normal()]
                }
                Toy::Cosine => {
                    let x1 = -4.0 + 8.0 * d.uniform();
                    [x1, 3.0 * (2.0 * x1).cos() + d.normal()]
                }
                Toy::Funnel => {
                    let x1 = 2.0 * d.normal();
                    let v = funnel_var(x1);
                    [x1, v.sqrt() * d.normal()]
                }
                Toy::Ring => polar(5.0 + RING_SD * d.normal(), TAU * d.uniform()),
                Toy::MultiRing => {
                    let u = d.uniform();
                    let r = if u < 1.0 / 9.0 {
                        1.0
                    } else if u < 4.0 / 9.0 {
                        3.0
                    } else {
                        5.0
                    };
                    polar(r + RING_SD * d.normal(), TAU * d.uniform())
                }
            };
            out.push(p);
        }
        out
    }

    /// [`Toy::sample`] as an `n × 2` f32 [`Matrix`] (row-major), ready to upload.
    pub fn sample_matrix(self, n: usize, seed: u64) -> Matrix {
        Matrix {
            rows: n,
            cols: 2,
            data: to_f32(&self.sample(n, seed)),
        }
    }

    /// Exact normalised log density log p(x) with respect to Lebesgue measure on R²
    /// (formulas in the module docs).
    ///
    /// - cosine: −∞ outside the support |x₁| ≤ 4.
    /// - funnel: with c = −ln 10, log v(x₁) = −x₁ for x₁ ≥ c and ln 10 for x₁ < c, so
    ///   log p = −x₁²/8 − ln 2 − ln√(2π) − ½ log v − x₂²/(2v) − ln√(2π).
    /// - ring / multiring: log p_ρ(r) − ln(2π r), r = ‖x‖ (+∞ at the origin).
    pub fn log_density(self, x: &[f64; 2]) -> f64 {
        let [x1, x2] = *x;
        match self {
            Toy::Banana => {
                let m = 0.2 * (x1 * x1 - 4.0);
                log_normal(x1, 0.0, 4.0) + log_normal(x2, m, 1.0)
            }
            Toy::Cosine => {
                if !(-4.0..=4.0).contains(&x1) {
                    return f64::NEG_INFINITY;
                }
                let m = 3.0 * (2.0 * x1).cos();
                -(8.0f64).ln() + log_normal(x2, m, 1.0)
            }
            Toy::Funnel => {
                let (log_v, inv_v_x2sq) = funnel_terms(x1, x2);
                log_normal(x1, 0.0, 4.0) - LN_SQRT_2PI - 0.5 * log_v - 0.5 * inv_v_x2sq
            }
            Toy::Ring | Toy::MultiRing => {
                let r = x1.hypot(x2);
                let (log_pr, _) = ring_radial(self, r);
                log_pr - (TAU * r).ln()
            }
        }
    }

    /// Exact score ∇ₓ log p(x), from analytic formulas:
    ///
    /// - banana, m = 0.2(x₁² − 4): ∂₁ = −x₁/4 + 0.4x₁(x₂ − m), ∂₂ = −(x₂ − m).
    /// - cosine, m = 3 cos 2x₁: ∂₁ = −6 sin(2x₁)(x₂ − m), ∂₂ = −(x₂ − m). The uniform's
    ///   boundary is ignored: the x₁-part comes only from the conditional, also at points
    ///   outside |x₁| ≤ 4 (which have probability 0).
    /// - funnel: for x₁ ≥ −ln 10 (v = e^(−x₁)): ∂₁ = −x₁/4 + ½ − ½x₂²e^(x₁),
    ///   ∂₂ = −x₂e^(x₁); for x₁ < −ln 10 (v = 10): ∂₁ = −x₁/4, ∂₂ = −x₂/10. At the kink
    ///   x₁ = −ln 10 (probability 0) the right-hand formula is used.
    /// - ring / multiring, r = ‖x‖: ∇ log p = (d log p_ρ/dr − 1/r)·x/r with
    ///   d log p_ρ/dr = Σⱼ πⱼ(r)·(−(r − mⱼ)/σ²), where mⱼ runs over ±Rₖ and πⱼ(r) are the
    ///   posterior weights of the folded mixture terms. At the origin (where the gradient
    ///   does not exist) it returns (0, 0).
    pub fn score(self, x: &[f64; 2]) -> [f64; 2] {
        let [x1, x2] = *x;
        match self {
            Toy::Banana => {
                let d = x2 - 0.2 * (x1 * x1 - 4.0);
                [-x1 / 4.0 + 0.4 * x1 * d, -d]
            }
            Toy::Cosine => {
                let d = x2 - 3.0 * (2.0 * x1).cos();
                [-6.0 * (2.0 * x1).sin() * d, -d]
            }
            Toy::Funnel => {
                if x1 >= -FUNNEL_MAX_VAR.ln() {
                    let e = x1.exp();
                    let (q, g2) = if x2 == 0.0 {
                        (0.0, 0.0)
                    } else {
                        (x2 * x2 * e, -x2 * e)
                    };
                    [-x1 / 4.0 + 0.5 - 0.5 * q, g2]
                } else {
                    [-x1 / 4.0, -x2 / FUNNEL_MAX_VAR]
                }
            }
            Toy::Ring | Toy::MultiRing => {
                let r = x1.hypot(x2);
                if r == 0.0 {
                    return [0.0, 0.0];
                }
                let (_, dlog) = ring_radial(self, r);
                let g = (dlog - 1.0 / r) / r;
                [g * x1, g * x2]
            }
        }
    }

    /// Monte Carlo Fisher divergence ½ E_p‖∇log p(x) − s(x)‖² of a model score `s`
    /// (for an energy model E, s = −∇ₓE) over `samples` drawn from this toy.
    ///
    /// Returns (mean, standard error) of the terms tᵢ = ½‖∇log p(xᵢ) − s(xᵢ)‖²: the mean
    /// t̄ = (1/n)Σtᵢ and SE = √(Σ(tᵢ − t̄)²/(n − 1))/√n. Needs at least two samples, all
    /// finite; a model score that is not finite makes the result non-finite.
    pub fn fisher_divergence<F>(self, score_model: F, samples: &[[f64; 2]]) -> Result<(f64, f64)>
    where
        F: Fn(&[f64; 2]) -> [f64; 2],
    {
        let model: Vec<[f64; 2]> = samples.iter().map(score_model).collect();
        self.fisher_divergence_of_scores(samples, &model)
    }

    /// [`Toy::fisher_divergence`] with the model scores already evaluated
    /// (`model_scores[i]` = s(`samples[i]`), e.g. read back from the GPU).
    pub fn fisher_divergence_of_scores(
        self,
        samples: &[[f64; 2]],
        model_scores: &[[f64; 2]],
    ) -> Result<(f64, f64)> {
        if samples.len() != model_scores.len() {
            return Err(Error::Shape(format!(
                "fisher divergence: {} samples but {} model scores",
                samples.len(),
                model_scores.len()
            )));
        }
        let n = samples.len();
        if n < 2 {
            return Err(Error::Invalid(format!(
                "fisher divergence needs at least 2 samples for a standard error, got {n}"
            )));
        }
        if let Some(i) = samples
            .iter()
            .position(|p| !p[0].is_finite() || !p[1].is_finite())
        {
            return Err(Error::Invalid(format!(
                "fisher divergence: sample {i} is not finite: {:?}",
                samples[i]
            )));
        }
        let terms: Vec<f64> = samples
            .iter()
            .zip(model_scores)
            .map(|(x, s)| {
                let t = self.score(x);
                let (d1, d2) = (t[0] - s[0], t[1] - s[1]);
                0.5 * (d1 * d1 + d2 * d2)
            })
            .collect();
        let mean = terms.iter().sum::<f64>() / n as f64;
        let ss: f64 = terms.iter().map(|t| (t - mean) * (t - mean)).sum();
        let se = (ss / (n - 1) as f64).sqrt() / (n as f64).sqrt();
        Ok((mean, se))
    }
}

impl std::fmt::Display for Toy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Toy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Toy> {
        Toy::from_name(s)
    }
}

/// Points as a flat row-major f32 vector (x₁, x₂, x₁, x₂, …) for uploading.
pub fn to_f32(points: &[[f64; 2]]) -> Vec<f32> {
    points
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect()
}

/// log N(x; m, v), v the variance.
fn log_normal(x: f64, m: f64, v: f64) -> f64 {
    let d = x - m;
    -0.5 * d * d / v - 0.5 * v.ln() - LN_SQRT_2PI
}

/// Funnel conditional variance v(x₁) = clip(e^(−x₁), 0, 10).
fn funnel_var(x1: f64) -> f64 {
    (-x1).exp().min(FUNNEL_MAX_VAR)
}

/// (log v(x₁), x₂²/v(x₁)) for the funnel, computed without overflow to NaN.
fn funnel_terms(x1: f64, x2: f64) -> (f64, f64) {
    if x1 >= -FUNNEL_MAX_VAR.ln() {
        let q = if x2 == 0.0 { 0.0 } else { x2 * x2 * x1.exp() };
        (-x1, q)
    } else {
        (FUNNEL_MAX_VAR.ln(), x2 * x2 / FUNNEL_MAX_VAR)
    }
}

fn polar(r: f64, theta: f64) -> [f64; 2] {
    let (s, c) = theta.sin_cos();
    [r * c, r * s]
}

/// Folded radial density of the ring toys at r ≥ 0: (log p_ρ(r), d log p_ρ/dr).
/// p_ρ(r) = Σₖ wₖ [N(r; Rₖ, σ²) + N(r; −Rₖ, σ²)], evaluated by log-sum-exp.
fn ring_radial(toy: Toy, r: f64) -> (f64, f64) {
    const RING: [(f64, f64); 1] = [(5.0, 1.0)];
    const MULTI: [(f64, f64); 3] = [(1.0, 1.0 / 9.0), (3.0, 3.0 / 9.0), (5.0, 5.0 / 9.0)];
    let comps: &[(f64, f64)] = if toy == Toy::Ring { &RING } else { &MULTI };
    let var = RING_SD * RING_SD;
    // log of each term and its d/dr.
    let mut terms = [(0.0f64, 0.0f64); 6];
    let mut k = 0;
    for &(rad, w) in comps {
        for m in [rad, -rad] {
            terms[k] = (w.ln() + log_normal(r, m, var), -(r - m) / var);
            k += 1;
        }
    }
    let terms = &terms[..k];
    let top = terms.iter().map(|t| t.0).fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return (top, 0.0);
    }
    let (mut z, mut dz) = (0.0, 0.0);
    for &(l, d) in terms {
        let e = (l - top).exp();
        z += e;
        dz += e * d;
    }
    (top + z.ln(), dz / z)
}

// ---------------------------------------------------------------------------------
// Data files
// ---------------------------------------------------------------------------------

/// A dense row-major f32 matrix: element (i, j) is `data[i * cols + j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    /// A matrix from row-major data; `data.len()` must be `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Matrix> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Shape(format!(
                "a {rows} x {cols} matrix needs {} values, got {}",
                rows.saturating_mul(cols),
                data.len()
            )));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Row `i` (panics if `i >= rows`, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows as `[f64; 2]` points (for the toy densities); an error unless `cols == 2`.
    pub fn points2(&self) -> Result<Vec<[f64; 2]>> {
        if self.cols != 2 {
            return Err(Error::Shape(format!(
                "expected 2 columns (2-D points), the matrix has {}",
                self.cols
            )));
        }
        Ok(self
            .data
            .chunks_exact(2)
            .map(|c| [c[0] as f64, c[1] as f64])
            .collect())
    }
}

/// Loads a data file by its extension: `.npy` → [`load_npy`], `.csv` → [`load_csv`]
/// (case-insensitive); anything else is an error.
pub fn load_data(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("npy") => load_npy(path),
        Some("csv") => load_csv(path),
        _ => Err(Error::Invalid(format!(
            "{}: unsupported data file type; use a .npy (2-D f32/f64 array) or .csv file",
            path.display()
        ))),
    }
}

const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// f64 → f32 for a loaded value, rejecting NaN, ±Inf and magnitudes above f32::MAX.
/// `at` describes the position for the error message.
fn checked_f32(v: f64, file: &Path, at: impl FnOnce() -> String) -> Result<f32> {
    if v.is_nan() || v.is_infinite() {
        return Err(Error::Invalid(format!(
            "{}: {} is {v}; data must be finite",
            file.display(),
            at()
        )));
    }
    let f = v as f32;
    if !f.is_finite() {
        return Err(Error::Invalid(format!(
            "{}: {} = {v:e} overflows f32 (largest magnitude {:e})",
            file.display(),
            at(),
            f32::MAX
        )));
    }
    Ok(f)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

/// Loads a 2-D `.npy` array of little-endian f32 (`<f4`) or f64 (`<f8`) in C order,
/// format version 1.0, 2.0 or 3.0, into an f32 [`Matrix`] (f64 values are rounded to
/// the nearest f32).
///
/// Errors ([`Error::Io`] if the file cannot be read, [`Error::Invalid`] otherwise, each
/// naming the file): bad magic, unknown version, malformed header, a dtype other than
/// `<f4`/`<f8`, `fortran_order: True`, a shape that is not 2-D, zero rows or columns,
/// truncated or trailing data, a NaN/±Inf value or an f64 value too large for f32
/// (naming its row and column, counting from 1).
pub fn load_npy(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let bad =
        |what: String| Error::Invalid(format!("{}: not a valid .npy file: {what}", path.display()));
    if bytes.len() < 8 || &bytes[..6] != NPY_MAGIC {
        return Err(bad("bad magic (expected \\x93NUMPY at the start)".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => {
            if bytes.len() < 10 {
                return Err(bad("truncated header length".into()));
            }
            (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
        }
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header length".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => {
            return Err(bad(format!(
                "unsupported format version {major}.{minor} (supported: 1.0, 2.0, 3.0)"
            )))
        }
    };
    let data_start = start + header_len;
    if bytes.len() < data_start {
        return Err(bad(format!(
            "truncated header: {header_len} header bytes announced, {} present",
            bytes.len() - start
        )));
    }
    let header = std::str::from_utf8(&bytes[start..data_start])
        .map_err(|_| bad("header is not valid text".into()))?;
    let h = parse_npy_header(header)
        .map_err(|m| bad(format!("{m} in header {:?}", header.trim_end())))?;

    let itemsize = match h.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        d if d == ">f4" || d == ">f8" => {
            return Err(bad(format!(
                "dtype '{d}' is big-endian; save little-endian f32 or f64 (e.g. arr.astype('<f4'))"
            )))
        }
        d => {
            return Err(bad(format!(
                "dtype '{d}' is not supported; use little-endian float32 ('<f4') or float64 ('<f8')"
            )))
        }
    };
    if h.fortran_order {
        return Err(bad(
            "fortran_order is True; save a C-order array (np.ascontiguousarray)".into(),
        ));
    }
    if h.shape.len() != 2 {
        return Err(bad(format!(
            "array is {}-D with shape {:?}; expected a 2-D array (rows, columns)",
            h.shape.len(),
            h.shape
        )));
    }
    let (rows, cols) = (h.shape[0], h.shape[1]);
    if rows == 0 || cols == 0 {
        return Err(Error::Invalid(format!(
            "{}: the array is empty (shape ({rows}, {cols}))",
            path.display()
        )));
    }
    let count = rows
        .checked_mul(cols)
        .ok_or_else(|| bad(format!("shape ({rows}, {cols}) is too large")))?;
    let need = count
        .checked_mul(itemsize)
        .ok_or_else(|| bad(format!("shape ({rows}, {cols}) is too large")))?;
    let have = bytes.len() - data_start;
    if have < need {
        return Err(bad(format!(
            "truncated data: shape ({rows}, {cols}) of {}-byte values needs {need} bytes, the file has {have}",
            itemsize
        )));
    }
    if have > need {
        return Err(bad(format!(
            "{} unexpected trailing bytes after the ({rows}, {cols}) array",
            have - need
        )));
    }
    let body = &bytes[data_start..];
    let mut data = Vec::with_capacity(count);
    for (k, chunk) in body.chunks_exact(itemsize).enumerate() {
        let v = if itemsize == 4 {
            f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as f64
        } else {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            f64::from_le_bytes(b)
        };
        let at = || {
            format!(
                "row {} column {} (counting from 1)",
                k / cols + 1,
                k % cols + 1
            )
        };
        data.push(checked_f32(v, path, at)?);
    }
    Ok(Matrix { rows, cols, data })
}

/// The fields of an `.npy` header that matter here.
#[derive(Debug)]
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of an `.npy` header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }`.
fn parse_npy_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let mut p = Lit {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            k => return Err(format!("unexpected key '{k}'")),
        }
        p.ws();
        if p.eat(b',') {
            continue;
        }
        p.ws();
        p.expect(b'}')?;
        break;
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("unexpected text after the dictionary".into());
    }
    Ok(NpyHeader {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran.ok_or("missing 'fortran_order'")?,
        shape: shape.ok_or("missing 'shape'")?,
    })
}

/// A tiny reader for the Python literals found in `.npy` headers.
struct Lit<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lit<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.s.get(self.i) {
            Some(&q) if q == b'\'' || q == b'"' => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i == self.s.len() {
            return Err("unterminated string".into());
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(out)
    }
    fn boolean(&mut self) -> std::result::Result<bool, String> {
        let rest = &self.s[self.i..];
        if rest.starts_with(b"True") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"False") {
            self.i += 5;
            Ok(false)
        } else {
            Err(format!("expected True or False at byte {}", self.i))
        }
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Ok(out);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if self.i == start {
                return Err(format!("expected a dimension at byte {}", self.i));
            }
            // Python 2 era files may write dimensions as `3L`.
            self.eat(b'L');
            let digits = std::str::from_utf8(&self.s[start..self.i])
                .unwrap_or("")
                .trim_end_matches('L');
            out.push(
                digits
                    .parse::<usize>()
                    .map_err(|_| format!("dimension {digits} is too large"))?,
            );
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                return Ok(out);
            }
        }
    }
}

/// Loads comma-separated numbers into an f32 [`Matrix`], one row per line.
///
/// - Blank (whitespace-only) lines are ignored; cells are trimmed; `\r\n` line ends and a
///   leading UTF-8 byte-order mark are accepted.
/// - The first non-blank line is a header and is skipped when none of its cells parses
///   as a number (e.g. `x1,x2`); its number of cells must match the data.
/// - Every data row must have the same number of cells; every cell must parse as a
///   number (`f64` syntax), be finite, and fit in f32.
///
/// Errors name the file, the line (counting from 1) and the column (counting from 1);
/// an empty file (or a header only) is an error.
pub fn load_csv(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not UTF-8 text: {e}", path.display())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |line: usize, msg: String| {
        Error::Invalid(format!("{}: line {line}: {msg}", path.display()))
    };

    let mut cols: Option<usize> = None;
    let mut header_cols: Option<(usize, usize)> = None; // (line, cells)
    let mut seen_first = false;
    let mut rows = 0usize;
    let mut data = Vec::new();
    for (idx, raw) in text.split('\n').enumerate() {
        let lineno = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if !seen_first {
            seen_first = true;
            if cells.iter().all(|c| c.parse::<f64>().is_err()) {
                header_cols = Some((lineno, cells.len()));
                continue;
            }
        }
        match cols {
            None => {
                if let Some((hl, hn)) = header_cols {
                    if hn != cells.len() {
                        return Err(err(
                            lineno,
                            format!(
                                "{} columns, but the header on line {hl} names {hn}",
                                cells.len()
                            ),
                        ));
                    }
                }
                cols = Some(cells.len());
            }
            Some(c) if c != cells.len() => {
                return Err(err(
                    lineno,
                    format!(
                        "ragged row: {} columns, expected {c} as in the first data row",
                        cells.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        rows += 1;
        for (j, cell) in cells.iter().enumerate() {
            let col = j + 1;
            let v: f64 = cell.parse().map_err(|_| {
                if cell.is_empty() {
                    err(lineno, format!("column {col}: empty cell"))
                } else {
                    err(lineno, format!("column {col}: not a number: '{cell}'"))
                }
            })?;
            data.push(checked_f32(v, path, || {
                format!("line {lineno} (data row {rows}) column {col}")
            })?);
        }
    }
    match cols {
        Some(cols) if rows > 0 => Ok(Matrix { rows, cols, data }),
        _ => Err(Error::Invalid(format!(
            "{}: no data rows (the file is empty{})",
            path.display(),
            if header_cols.is_some() {
                " apart from its header"
            } else {
                ""
            }
        ))),
    }
}

/// Writes `data` (row-major, `rows × cols`) as a version 1.0 `.npy` file of
/// little-endian f32 (`<f4`) in C order.
///
/// Atomic: the bytes go to a temporary file in the same directory, which is flushed to
/// disk and then renamed over `path`; on any error the temporary file is removed and
/// `path` is untouched, so it never holds a partial file.
pub fn save_npy(path: impl AsRef<Path>, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(Error::Shape(format!(
            "save_npy {}: a {rows} x {cols} array needs {} values, got {}",
            path.display(),
            rows.saturating_mul(cols),
            data.len()
        )));
    }
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of
    // 64 bytes, ending in '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let hlen = u16::try_from(header.len())
        .map_err(|_| Error::Invalid(format!("save_npy {}: header too long", path.display())))?;
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * data.len());
    bytes.extend_from_slice(NPY_MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&hlen.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::fsutil::write_atomic(path, &bytes)
}
