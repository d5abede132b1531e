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
//! [`load_npy`] reads 2-D `.npy` arrays of any real dtype (float16/32/64, 1- to 8-byte
//! integers, bool), byte order and memory order (C or Fortran; format versions 1.0, 2.0
//! and 3.0), [`load_csv`] reads comma-separated numbers with an optional header row, and
//! [`load_data`] picks one by the file extension. Every loader returns an f32 [`Matrix`],
//! rejects empty data, NaN/±Inf values, values too large for f32 and integers beyond
//! ±2²⁴ (which f32 cannot hold exactly), and names the file and the position of the
//! problem in its error.
//!
//! [`save_npy`] writes a v1.0 `<f4` file atomically; [`NpyWriter`] writes the same file
//! row block by row block in bounded memory, for outputs larger than memory, and replaces
//! an existing file only once every row has been written.

use crate::error::{Error, Result};
use crate::rng::HostRng;
use std::f64::consts::TAU;
use std::path::Path;

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
        let mut d = HostRng::new(seed);
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
            "{}: unsupported data file type; use a .npy (2-D numeric array) or .csv file",
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

/// Loads a 2-D `.npy` array (format version 1.0, 2.0 or 3.0) into an f32 [`Matrix`],
/// converting its values on load.
///
/// Accepted dtypes: float16/32/64 (`f2`, `f4`, `f8`), signed and unsigned integers of 1,
/// 2, 4 or 8 bytes (`i1` … `i8`, `u1` … `u8`) and bool (`b1`, read as 0 and 1), in any
/// byte order: little-endian `<`, big-endian `>`, and native `=` or not-applicable `|`
/// (both read in this machine's order, as NumPy does). C order and `fortran_order: True`
/// (column-major, transposed on load) are both read; the result is always row-major.
///
/// Values: f64 is rounded to the nearest f32; f16 and every integer up to 2²⁴ in
/// magnitude convert exactly. Integers beyond ±2²⁴ (16 777 216) are **refused**, not
/// rounded: f32 cannot hold them exactly, and silently rounded counts or ids would corrupt
/// the data unnoticed; convert the array to floating point first (`arr.astype('<f4')`) if
/// the rounding is acceptable.
///
/// Errors ([`Error::Io`] if the file cannot be read, [`Error::Invalid`] otherwise, each
/// naming the file): bad magic, unknown version, malformed header, a dtype not listed
/// above (complex, string, object, structured, datetime… — the message names it and lists
/// the accepted ones), a shape that is not 2-D (a 1-D array is refused; reshape it to
/// (n, 1) or (1, n)), zero rows or columns, truncated or trailing data, and a NaN/±Inf
/// value, an f64 value too large for f32 or an integer beyond ±2²⁴ (naming its row and
/// column, counting from 1).
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

    let dtype = NpyDtype::parse(&h.descr).map_err(|why| {
        Error::Invalid(format!(
            "{}: unsupported .npy dtype {}: {why}; {NPY_ACCEPTED}",
            path.display(),
            if h.descr.starts_with('[') {
                h.descr.clone()
            } else {
                format!("'{}'", h.descr)
            }
        ))
    })?;
    if h.shape.len() != 2 {
        return Err(bad(format!(
            "array is {}-D with shape {:?}; expected a 2-D array (rows, columns){}",
            h.shape.len(),
            h.shape,
            if h.shape.len() == 1 {
                " — reshape it to (n, 1) for n one-dimensional points (arr.reshape(-1, 1)), \
                 or to (1, n) for one n-dimensional point"
            } else {
                ""
            }
        )));
    }
    let (rows, cols) = (h.shape[0], h.shape[1]);
    if rows == 0 || cols == 0 {
        return Err(Error::Invalid(format!(
            "{}: the array is empty (shape ({rows}, {cols}))",
            path.display()
        )));
    }
    let itemsize = dtype.size;
    let count = rows
        .checked_mul(cols)
        .ok_or_else(|| bad(format!("shape ({rows}, {cols}) is too large")))?;
    let need = count
        .checked_mul(itemsize)
        .ok_or_else(|| bad(format!("shape ({rows}, {cols}) is too large")))?;
    let have = bytes.len() - data_start;
    if have < need {
        return Err(bad(format!(
            "truncated data: shape ({rows}, {cols}) of {itemsize}-byte values needs {need} bytes, the file has {have}"
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
    for i in 0..rows {
        for j in 0..cols {
            // Fortran order stores column after column: element (i, j) is at j·rows + i.
            let k = if h.fortran_order {
                j * rows + i
            } else {
                i * cols + j
            };
            let at = || format!("row {} column {} (counting from 1)", i + 1, j + 1);
            let v = match dtype.read(&body[k * itemsize..(k + 1) * itemsize]) {
                NpyValue::Float(v) => checked_f32(v, path, at)?,
                NpyValue::Int(v) => {
                    if v.unsigned_abs() > MAX_EXACT_INT {
                        return Err(Error::Invalid(format!(
                            "{}: {} holds the integer {v}, beyond ±2^24 = {MAX_EXACT_INT}, \
                             where f32 stops representing every integer exactly; wmvl refuses \
                             to round it silently: convert the array to floating point first \
                             (arr.astype('<f4')) if rounding is acceptable, or rescale it",
                            path.display(),
                            at()
                        )));
                    }
                    v as f32
                }
            };
            data.push(v);
        }
    }
    Ok(Matrix { rows, cols, data })
}

/// The largest integer magnitude below which f32 represents every integer exactly (2²⁴).
const MAX_EXACT_INT: u128 = 1 << 24;

/// The dtypes [`load_npy`] reads, for its error messages.
const NPY_ACCEPTED: &str = "accepted dtypes are float16/32/64 ('f2', 'f4', 'f8'), signed and \
     unsigned integers of 1, 2, 4 or 8 bytes ('i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8') \
     and bool ('b1'), in any byte order ('<', '>', '=', '|'); convert the array first, e.g. \
     arr.astype('<f4')";

/// A real `.npy` element type: kind, size in bytes, byte order.
#[derive(Clone, Copy, Debug)]
struct NpyDtype {
    kind: NpyKind,
    size: usize,
    big_endian: bool,
}

#[derive(Clone, Copy, Debug)]
enum NpyKind {
    Float,
    Int,
    Uint,
    Bool,
}

/// One element, before the range checks of the f32 conversion.
enum NpyValue {
    Float(f64),
    Int(i128),
}

impl NpyDtype {
    /// Parses a `descr` such as `<f4`, `>i8`, `|u1`, `|b1`; the error says why it is
    /// refused (a structured dtype's descr is a list, `[(...), ...]`).
    fn parse(descr: &str) -> std::result::Result<NpyDtype, String> {
        if descr.starts_with('[') {
            return Err("a structured (record) dtype; wmvl reads plain numeric arrays".into());
        }
        let mut chars = descr.chars();
        let (order, rest) = match chars.next() {
            Some(c @ ('<' | '>' | '=' | '|')) => (c, chars.as_str()),
            // NumPy always writes the byte order; a bare type is read as native.
            _ => ('=', descr),
        };
        let mut chars = rest.chars();
        let kind_char = chars.next().ok_or("an empty type")?;
        let size_text = chars.as_str();
        let what = match kind_char {
            'f' => "floating point",
            'i' => "signed integer",
            'u' => "unsigned integer",
            'b' | '?' => "bool",
            'c' => {
                return Err(
                    "a complex dtype; wmvl reads real numbers only (save the real and \
                     imaginary parts as separate columns: np.column_stack([arr.real, arr.imag]))"
                        .into(),
                )
            }
            'U' => return Err("a unicode string dtype".into()),
            'S' | 'a' => return Err("a byte string dtype".into()),
            'O' => return Err("a Python object dtype".into()),
            'V' => return Err("a raw or structured (void) dtype".into()),
            'M' => return Err("a datetime dtype".into()),
            'm' => return Err("a timedelta dtype".into()),
            _ => return Err("an unknown type code".into()),
        };
        let size: usize = size_text
            .parse()
            .map_err(|_| format!("a {what} type with an unreadable size '{size_text}'"))?;
        let kind = match (kind_char, size) {
            ('f', 2 | 4 | 8) => NpyKind::Float,
            ('i', 1 | 2 | 4 | 8) => NpyKind::Int,
            ('u', 1 | 2 | 4 | 8) => NpyKind::Uint,
            ('b' | '?', 1) => NpyKind::Bool,
            _ => return Err(format!("a {size}-byte {what} type")),
        };
        let big_endian = match order {
            '>' => true,
            '<' => false,
            // '=' (native) and '|' (not applicable): this machine's order, as NumPy reads them.
            _ => cfg!(target_endian = "big"),
        };
        Ok(NpyDtype {
            kind,
            size,
            big_endian,
        })
    }

    /// The element stored in `b` (`self.size` bytes).
    fn read(self, b: &[u8]) -> NpyValue {
        let mut le = [0u8; 8];
        le[..self.size].copy_from_slice(b);
        if self.big_endian {
            le[..self.size].reverse();
        }
        let u = u64::from_le_bytes(le);
        match (self.kind, self.size) {
            (NpyKind::Float, 2) => NpyValue::Float(f16_to_f64(u as u16)),
            (NpyKind::Float, 4) => NpyValue::Float(f32::from_bits(u as u32) as f64),
            (NpyKind::Float, _) => NpyValue::Float(f64::from_bits(u)),
            (NpyKind::Int, n) => {
                // Sign-extend the n-byte two's complement value.
                let shift = 64 - 8 * n as u32;
                NpyValue::Int((((u << shift) as i64) >> shift) as i128)
            }
            (NpyKind::Uint, _) => NpyValue::Int(u as i128),
            (NpyKind::Bool, _) => NpyValue::Int((u != 0) as i128),
        }
    }
}

/// IEEE 754 binary16 → f64 (exact: every half value is an f64).
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f64::from(h & 0x3ff);
    sign * match exp {
        0 => man * 2f64.powi(-24), // zero and subnormals
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1024.0 + man) * 2f64.powi(e - 25),
    }
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
            // A structured dtype's descr is a list; keep its text for the error message.
            "descr" if p.s.get(p.i) == Some(&b'[') => descr = Some(p.list_text()?),
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
    /// The text of a bracketed list, brackets included (quoted brackets do not count).
    fn list_text(&mut self) -> std::result::Result<String, String> {
        let start = self.i;
        let (mut depth, mut quote) = (0usize, None);
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'\'' | b'"') => quote = Some(c),
                (None, b'[') => depth += 1,
                (None, b']') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned());
                    }
                }
                _ => {}
            }
        }
        Err("unterminated list".into())
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
/// little-endian f32 (`<f4`) in C order: an [`NpyWriter`] with a single push.
///
/// `data.len()` must be `rows * cols` (else [`Error::Shape`]) and every value finite
/// (else [`Error::Invalid`] naming its row and column, counting from 1), since
/// [`load_npy`] would refuse the file.
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
    let mut w = NpyWriter::create(path, rows, cols)?;
    w.push(data)?;
    w.finish()
}

/// Streams a `rows × cols` `<f4` C-order `.npy` file to disk a few rows at a time, in
/// bounded memory, for outputs larger than memory.
///
/// [`NpyWriter::create`] writes the header for the final shape to a fresh temporary file
/// beside `path` (same directory, named like the temporary files of
/// [`crate::fsutil::write_atomic`]); [`NpyWriter::push`] appends whole rows;
/// [`NpyWriter::finish`] checks that exactly `rows` rows arrived, syncs the file and
/// renames it over `path`. An existing file at `path` is replaced only by `finish`:
/// dropping an unfinished writer (on an error, a panic, or a run stopped early) removes
/// the temporary file and leaves `path` as it was. A process killed outright leaves its
/// temporary file behind, but never a partial `path`.
///
/// ```no_run
/// # fn main() -> wmvl::Result<()> {
/// let mut w = wmvl::data::NpyWriter::create("samples.npy", 3, 2)?;
/// w.push(&[0.0, 1.0, 2.0, 3.0])?; // rows 1-2
/// w.push(&[4.0, 5.0])?; // row 3
/// w.finish()?;
/// # Ok(()) }
/// ```
pub struct NpyWriter {
    out: crate::fsutil::TempFile,
    path: std::path::PathBuf,
    rows: usize,
    cols: usize,
    written: usize,
}

impl NpyWriter {
    /// Starts a `rows × cols` array for `path`. Fails before anything is written when
    /// `cols` is 0 with `rows > 0` (such rows hold nothing to push), when `rows * cols`
    /// overflows, or when the directory of `path` is missing or not writable.
    pub fn create(path: impl AsRef<Path>, rows: usize, cols: usize) -> Result<NpyWriter> {
        let path = path.as_ref();
        if (cols == 0 && rows > 0) || rows.checked_mul(cols).is_none() {
            return Err(Error::Shape(format!(
                "writing {}: a {rows} x {cols} array cannot be written; give at least one \
                 column and a size that fits in memory addresses",
                path.display()
            )));
        }
        let mut out = crate::fsutil::TempFile::create(path)?;
        out.write_all(&npy_header(rows, cols))?;
        Ok(NpyWriter {
            out,
            path: path.to_path_buf(),
            rows,
            cols,
            written: 0,
        })
    }

    /// Appends whole rows (`values.len()` a multiple of `cols`, row-major). Refuses, and
    /// writes nothing of `values`, when they are not whole rows, would make more rows than
    /// announced, or hold a NaN/±Inf (naming its row and column in the whole array,
    /// counting from 1).
    pub fn push(&mut self, values: &[f32]) -> Result<()> {
        let (cols, path) = (self.cols, self.path.display());
        if cols == 0 {
            // Only a 0 x 0 array gets here: it has no rows to take.
            if values.is_empty() {
                return Ok(());
            }
            return Err(Error::Shape(format!(
                "writing {path}: the array was announced with 0 columns, got {} values",
                values.len()
            )));
        }
        if !values.len().is_multiple_of(cols) {
            return Err(Error::Shape(format!(
                "writing {path}: {} values are not whole rows of {cols} columns",
                values.len()
            )));
        }
        let n = values.len() / cols;
        if n > self.rows - self.written {
            return Err(Error::Shape(format!(
                "writing {path}: {n} more rows would make {} rows, but the array was \
                 announced with {}",
                self.written + n,
                self.rows
            )));
        }
        check_finite_rows(&self.path, values, cols, self.written)?;
        if cfg!(target_endian = "little") {
            self.out.write_all(bytemuck::cast_slice(values))?;
        } else {
            for v in values {
                self.out.write_all(&v.to_le_bytes())?;
            }
        }
        self.written += n;
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows_written(&self) -> usize {
        self.written
    }

    /// Completes the file: refuses (removing the temporary file, leaving `path` as it
    /// was) unless exactly the announced rows were pushed; otherwise syncs it and renames
    /// it over `path`.
    pub fn finish(self) -> Result<()> {
        if self.written != self.rows {
            return Err(Error::Shape(format!(
                "writing {}: only {} of the announced {} rows were pushed; the file was not \
                 written",
                self.path.display(),
                self.written,
                self.rows
            )));
        }
        self.out.commit()
    }
}

/// Refuses a NaN/±Inf in `values` (whole rows of `cols`; the first is row `first_row` + 1),
/// naming its row and column counting from 1.
fn check_finite_rows(path: &Path, values: &[f32], cols: usize, first_row: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(k) => Err(Error::Invalid(format!(
            "writing {}: row {} column {} (counting from 1) is {}; only finite values can be \
             written (wmvl could not load them back)",
            path.display(),
            first_row + k / cols.max(1) + 1,
            k % cols.max(1) + 1,
            values[k]
        ))),
    }
}

/// The version 1.0 header of a `rows × cols` `<f4` C-order array: magic (6) + version (2)
/// + length (2) + the dict, padded with spaces to a multiple of 64 bytes, ending in '\n'.
fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    // Two numbers of at most 20 digits: the header always fits version 1.0's u16 length.
    let mut bytes = Vec::with_capacity(10 + header.len());
    bytes.extend_from_slice(NPY_MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes
}
