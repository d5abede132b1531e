//! Directional data: distributions on the sphere S^n ⊂ R^(n+1) and on hyperbolic space H^n
//! (Poincaré ball), with exact samplers, normalised log densities and Riemannian scores, all
//! in f64 on the host (SPEC §5, §8).
//!
//! # Sphere
//!
//! Points are unit vectors y ∈ R^p, p = n + 1 (the *ambient* dimension). Every sphere density
//! here is with respect to the **surface (Hausdorff) measure** σ on S^n, whose total mass is
//! |S^n| = 2π^(p/2)/Γ(p/2) (2π on S¹, 4π on S²); the uniform density is 1/|S^n|.
//!
//! - von Mises–Fisher [`Vmf`] (Mardia & Jupp 2000, §9.3.2): p(y) = C_p(κ) exp(κ μ·y) with
//!   C_p(κ) = κ^(p/2−1) / ((2π)^(p/2) I_(p/2−1)(κ)); sampled by Wood's (1994) rejection
//!   algorithm.
//! - mixtures [`VmfMixture`], the uniform distribution [`Uniform`], and the named data sets
//!   [`Directional`] ("s1mix", "s2mix" of SPEC §8).
//!
//! The Riemannian score is the gradient of log p for the metric induced from R^p: the
//! tangent projection (I − yyᵀ)∇_y log p of the Euclidean gradient of the log density
//! extended off the sphere by the same formula; for one vMF it is κ(μ − (μ·y)y).
//!
//! # Hyperbolic space
//!
//! H^n (curvature −1) as the Poincaré ball: points x with ‖x‖ < 1, metric
//! g = λ(x)² δ with λ(x) = 2/(1 − ‖x‖²); the distance from the origin is d = 2 artanh ‖x‖.
//! Densities are with respect to the **Riemannian volume** dvol = λ(x)^n dx. See
//! [`WrappedNormal`] and the maps [`poincare_exp0`], [`poincare_log0`].
//!
//! # References
//!
//! - A. T. A. Wood (1994), Simulation of the von Mises Fisher distribution, Comm. Statist.
//!   Simulation Comput. 23(1), 157–164.
//! - K. V. Mardia, P. E. Jupp (2000), Directional Statistics, Wiley, §9.3.2.
//! - Y. Nagano, S. Yamaguchi, Y. Fujita, M. Koyama (2019), A wrapped normal distribution on
//!   hyperbolic space for gradient-based learning, ICML.
//! - M. Abramowitz, I. Stegun, Handbook of Mathematical Functions, 9.6.10 and 9.7.1.

use crate::data::Matrix;
use crate::error::{Error, Result};
use crate::rng::HostRng;
use std::f64::consts::{LN_2, PI};
use std::sync::OnceLock;

/// ln √(2π).
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

// ---------------------------------------------------------------------------------
// Special functions
// ---------------------------------------------------------------------------------

/// ln Γ(z) for z ≥ 0.5 (Lanczos approximation, g = 7, 9 coefficients; relative error of
/// Γ about 1e-15). Only called with z = p/2 ≥ 1 and z = ν + 1 ≥ 1.
fn ln_gamma(z: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let z = z - 1.0;
    let mut a = C[0];
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (z + i as f64);
    }
    let t = z + G + 0.5;
    LN_SQRT_2PI + (z + 0.5) * t.ln() - t + a.ln()
}

/// ln sinh(x) for x > 0 without overflow: x + ln(1 − e^(−2x)) − ln 2.
fn ln_sinh(x: f64) -> f64 {
    x + (-(-2.0 * x).exp_m1()).ln() - LN_2
}

/// ln(sinh(d)/d) for d ≥ 0 (series d²/6 − d⁴/180 near 0).
fn ln_sinhc(d: f64) -> f64 {
    if d < 1e-3 {
        let d2 = d * d;
        d2 / 6.0 - d2 * d2 / 180.0
    } else {
        ln_sinh(d) - d.ln()
    }
}

/// coth(d) − 1/d for d > 0 (series d/3 − d³/45 + 2d⁵/945 near 0).
fn coth_minus_inv(d: f64) -> f64 {
    if d < 1e-2 {
        let d2 = d * d;
        d * (1.0 / 3.0 - d2 / 45.0 + 2.0 * d2 * d2 / 945.0)
    } else {
        1.0 / d.tanh() - 1.0 / d
    }
}

/// ln |S^(p−1)| = ln(2π^(p/2)/Γ(p/2)), the surface area of the unit sphere in R^p.
pub fn log_sphere_area(p: usize) -> f64 {
    let h = 0.5 * p as f64;
    LN_2 + h * PI.ln() - ln_gamma(h)
}

/// ln I_ν(x), the modified Bessel function of the first kind, for real ν ≥ 0 and x ≥ 0.
///
/// - x = 0: 0 for ν = 0, −∞ otherwise.
/// - ν = ½: closed form I_½(x) = √(2/(πx)) sinh x.
/// - x ≥ 30: Hankel's exponentially scaled asymptotic expansion
///   I_ν(x) ≈ eˣ/√(2πx) Σₖ (−1)ᵏ aₖ(ν)/xᵏ, aₖ = ∏ⱼ₌₁ᵏ (4ν² − (2j−1)²)/(k! 8ᵏ)
///   (Abramowitz & Stegun 9.7.1), summed until a term is below 1e-17 of the sum; the
///   neglected e^(−x) part is below e^(−60) relative. Used only if the terms fall that far
///   before they start to grow (x well above ν²).
/// - otherwise: the power series Σₖ (x/2)^(2k+ν)/(k! Γ(k+ν+1)) (A&S 9.6.10), whose terms
///   are all positive, summed with a running rescale so nothing overflows. It needs about
///   x/2 + a few √x terms (only large ν with x ≳ ν² would make that many).
///
/// Accurate to about 1e-14 relative in I (checked against mpmath in tests/directional.rs).
pub fn log_bessel_i(nu: f64, x: f64) -> Result<f64> {
    check_bessel_args(nu, x)?;
    Ok(ln_bessel_i(nu, x))
}

/// The argument checks of [`log_bessel_i`] and [`log_bessel_i_scaled`].
fn check_bessel_args(nu: f64, x: f64) -> Result<()> {
    if !(nu.is_finite() && nu >= 0.0) {
        return Err(Error::Invalid(format!(
            "log_bessel_i: the order must be finite and >= 0, got {nu}"
        )));
    }
    if !(x.is_finite() && x >= 0.0) {
        return Err(Error::Invalid(format!(
            "log_bessel_i: the argument must be finite and >= 0, got {x}"
        )));
    }
    Ok(())
}

/// [`log_bessel_i`] without the argument checks (ν ≥ 0, x ≥ 0 finite).
fn ln_bessel_i(nu: f64, x: f64) -> f64 {
    if x == 0.0 {
        return if nu == 0.0 { 0.0 } else { f64::NEG_INFINITY };
    }
    if nu == 0.5 {
        return 0.5 * ((2.0 / PI).ln() - x.ln()) + ln_sinh(x);
    }
    if x >= 30.0 {
        if let Some(v) = ln_bessel_i_hankel(nu, x) {
            return v;
        }
    }
    ln_bessel_i_series(nu, x)
}

/// Hankel's large-argument expansion of ln I_ν(x); `None` if it does not converge to 1e-17.
fn ln_bessel_i_hankel(nu: f64, x: f64) -> Option<f64> {
    let sum = hankel_sum(nu, x)?;
    Some(x - 0.5 * (std::f64::consts::TAU.ln() + x.ln()) + sum.ln())
}

/// Σₖ (−1)ᵏ aₖ(ν)/xᵏ of Hankel's expansion I_ν(x) ≈ eˣ/√(2πx)·Σ (see [`log_bessel_i`]);
/// `None` if it does not converge to 1e-17.
fn hankel_sum(nu: f64, x: f64) -> Option<f64> {
    let mu = 4.0 * nu * nu;
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for k in 1..200 {
        let odd = (2 * k - 1) as f64;
        let next = -term * (mu - odd * odd) / (8.0 * k as f64 * x);
        if next.abs() > term.abs() {
            return None;
        }
        sum += next;
        term = next;
        if term.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    if term.abs() > 1e-17 * sum.abs() || sum <= 0.0 {
        return None;
    }
    Some(sum)
}

/// ln(e^(−x) I_ν(x)) = ln I_ν(x) − x, the exponentially scaled log Bessel function, for
/// real ν ≥ 0 and x ≥ 0 (same methods and checks as [`log_bessel_i`]).
///
/// Why a second function: for large x, ln I_ν(x) ≈ x, so it carries an absolute rounding
/// error of about x·1e-16 (1e-12 at x = 1e4), and differences such as
/// ln I_(ν+1) − ln I_ν (the log of the mean resultant length) lose that much. Here the eˣ
/// factor of Hankel's expansion is never added, so for x ≥ 30 the result is
/// −½ ln(2πx) + ln Σ, good to about 1e-16 absolute, and differences of two orders keep
/// their digits (what [`crate::vmf::kl_to_uniform_host`] needs at κ = 1e4). ν = ½ uses
/// the closed form, scaled: ½ ln(2/(πx)) + ln(1 − e^(−2x)) − ln 2.
pub fn log_bessel_i_scaled(nu: f64, x: f64) -> Result<f64> {
    check_bessel_args(nu, x)?;
    if x == 0.0 {
        return Ok(ln_bessel_i(nu, x));
    }
    if nu == 0.5 {
        return Ok(0.5 * ((2.0 / PI).ln() - x.ln()) + (-(-2.0 * x).exp_m1()).ln() - LN_2);
    }
    if x >= 30.0 {
        if let Some(sum) = hankel_sum(nu, x) {
            return Ok(sum.ln() - 0.5 * (std::f64::consts::TAU.ln() + x.ln()));
        }
    }
    Ok(ln_bessel_i_series(nu, x) - x)
}

/// Power series of ln I_ν(x), all terms positive, rescaled as it grows.
fn ln_bessel_i_series(nu: f64, x: f64) -> f64 {
    const RESCALE: f64 = 1e280;
    let q = 0.25 * x * x;
    let mut log_scale = nu * (x.ln() - LN_2) - ln_gamma(nu + 1.0);
    // Sum = head + tail, head the k = 0 term, kept apart so that ln(1 + tail) keeps its
    // digits when the tail is tiny (small x).
    let (mut head, mut tail, mut term) = (1.0f64, 0.0f64, 1.0f64);
    let mut k = 0.0f64;
    loop {
        k += 1.0;
        term *= q / (k * (k + nu));
        tail += term;
        // Past the peak (ratio < 1/2) the rest is below the current term.
        if k * (k + nu) > 2.0 * q && term <= 1e-17 * (head + tail) {
            break;
        }
        if tail > RESCALE {
            head /= RESCALE;
            tail /= RESCALE;
            term /= RESCALE;
            log_scale += RESCALE.ln();
        }
    }
    if head == 1.0 {
        log_scale + tail.ln_1p()
    } else {
        log_scale + (head + tail).ln()
    }
}

/// The mean resultant length A_p(κ) = ‖E y‖ = E(μ·y) = I_(p/2)(κ)/I_(p/2−1)(κ) of a vMF
/// on S^(p−1) ⊂ R^p (Mardia & Jupp 2000, §9.3.2); for S² (p = 3) it is coth κ − 1/κ.
/// 0 at κ = 0, → 1 − (p−1)/(2κ) for large κ. Needs p ≥ 2, κ ≥ 0 finite. Computed as
/// exp(ln I_(p/2) − ln I_(p/2−1)) with [`log_bessel_i`].
pub fn mean_resultant_length(p: usize, kappa: f64) -> Result<f64> {
    check_ambient(p)?;
    check_kappa(kappa)?;
    Ok(mrl(p, kappa))
}

fn mrl(p: usize, kappa: f64) -> f64 {
    if kappa == 0.0 {
        return 0.0;
    }
    let nu = 0.5 * p as f64 - 1.0;
    (ln_bessel_i(nu + 1.0, kappa) - ln_bessel_i(nu, kappa)).exp()
}

/// A_p′(κ) = dA_p/dκ = 1 − A² − (p − 1)A/κ, which is also Var(μ·y) under the vMF
/// (Mardia & Jupp 2000, §9.3.2). 1/p at κ = 0, → (p − 1)/(2κ²) for large κ. Needs p ≥ 2,
/// κ ≥ 0 finite.
///
/// For large κ the formula is a difference of two terms ≈ (p − 1)/κ whose result is
/// ≈ (p − 1)/(2κ²): it would lose log₁₀ κ digits of A. So for κ ≥ 30, where Hankel's
/// expansion I_ν(κ) ≈ e^κ/√(2πκ)·S_ν converges for both orders ν = p/2 − 1 and ν + 1, it is
/// evaluated as A′ = 2N/S_ν − δ² + (p − 1)δ/κ, with δ = 1 − A = (S_ν − S_(ν+1))/S_ν and
/// N = S_ν − S_(ν+1) − (p − 1)/(2κ)·S_ν, both numerators summed term by term: the O(1)
/// terms of S_ν − S_(ν+1) and the O(1/κ) terms of N cancel exactly
/// (a₁(ν+1) − a₁(ν) = ν + ½) and are left out, so no digits are lost. Otherwise
/// (κ < 30, or large p) the formula with A = exp(ln Î_(ν+1) − ln Î_ν) of
/// [`log_bessel_i_scaled`] is used; there κ²·1e-16 is small.
pub fn mean_resultant_length_derivative(p: usize, kappa: f64) -> Result<f64> {
    check_ambient(p)?;
    check_kappa(kappa)?;
    if kappa == 0.0 {
        return Ok(1.0 / p as f64);
    }
    let nu = 0.5 * p as f64 - 1.0;
    if kappa >= 30.0 {
        if let Some(d) = mrl_derivative_hankel(nu, kappa) {
            return Ok(d);
        }
    }
    let scaled = |nu: f64| log_bessel_i_scaled(nu, kappa);
    let ln_a = scaled(nu + 1.0)? - scaled(nu)?;
    let (a, one_minus_a) = (ln_a.exp(), -ln_a.exp_m1());
    Ok(one_minus_a * (2.0 - one_minus_a) - (p - 1) as f64 * a / kappa)
}

/// A′ for large x from Hankel's sums (see [`mean_resultant_length_derivative`]); `None`
/// unless both expansions converge to 1e-17 as in [`hankel_sum`].
fn mrl_derivative_hankel(nu: f64, x: f64) -> Option<f64> {
    let (mu0, mu1) = (4.0 * nu * nu, 4.0 * (nu + 1.0) * (nu + 1.0));
    let c = (nu + 0.5) / x; // (p − 1)/(2x)
                            // tᵢ: the current terms (−1)ᵏ aₖ/xᵏ of S_ν and S_(ν+1); s: the sums; d = S_ν − S_(ν+1)
                            // and n = N without their (exactly cancelling) leading terms.
    let (mut t0, mut t1) = (1.0f64, 1.0f64);
    let (mut s0, mut s1, mut d, mut n) = (1.0f64, 1.0f64, 0.0f64, 0.0f64);
    let mut converged = false;
    for k in 1..200 {
        let odd = (2 * k - 1) as f64;
        let next0 = -t0 * (mu0 - odd * odd) / (8.0 * k as f64 * x);
        let next1 = -t1 * (mu1 - odd * odd) / (8.0 * k as f64 * x);
        if next0.abs() > t0.abs() || next1.abs() > t1.abs() {
            return None;
        }
        d += next0 - next1;
        if k >= 2 {
            n += next0 - next1 - c * t0;
        }
        s0 += next0;
        s1 += next1;
        (t0, t1) = (next0, next1);
        if t0.abs() <= 1e-17 * s0.abs() && t1.abs() <= 1e-17 * s1.abs() {
            converged = true;
            break;
        }
    }
    if !converged || s0 <= 0.0 || s1 <= 0.0 {
        return None;
    }
    let delta = d / s0;
    Some(2.0 * n / s0 - delta * delta + 2.0 * c * delta)
}

fn check_ambient(p: usize) -> Result<()> {
    if p < 2 {
        return Err(Error::Invalid(format!(
            "a sphere needs ambient dimension p >= 2 (S^(p-1) in R^p), got p = {p}"
        )));
    }
    Ok(())
}

fn check_kappa(kappa: f64) -> Result<()> {
    if !(kappa.is_finite() && kappa >= 0.0) {
        return Err(Error::Invalid(format!(
            "vMF concentration kappa must be finite and >= 0, got {kappa}"
        )));
    }
    Ok(())
}

/// Checks that `y` has `dim` finite coordinates.
fn check_point(what: &str, y: &[f64], dim: usize) -> Result<()> {
    if y.len() != dim {
        return Err(Error::Shape(format!(
            "{what}: expected a point with {dim} coordinates, got {}",
            y.len()
        )));
    }
    if let Some(i) = y.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "{what}: coordinate {i} of the point is not finite ({})",
            y[i]
        )));
    }
    Ok(())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// A uniform unit vector in R^p (normalised standard normal, redrawn if it is 0).
pub(crate) fn uniform_unit(p: usize, rng: &mut HostRng) -> Vec<f64> {
    loop {
        let g: Vec<f64> = (0..p).map(|_| rng.normal()).collect();
        let r = norm(&g);
        if r > 0.0 {
            return g.iter().map(|v| v / r).collect();
        }
    }
}

/// Rows of f64 points as an f32 matrix with `cols` columns.
fn to_matrix(points: &[Vec<f64>], cols: usize) -> Matrix {
    Matrix {
        rows: points.len(),
        cols,
        data: points.iter().flatten().map(|&v| v as f32).collect(),
    }
}

// ---------------------------------------------------------------------------------
// von Mises–Fisher
// ---------------------------------------------------------------------------------

/// The von Mises–Fisher distribution on S^(p−1) ⊂ R^p with unit mean direction μ and
/// concentration κ ≥ 0: p(y) = C_p(κ) exp(κ μ·y) with respect to the surface measure
/// (module docs). κ = 0 is the uniform distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Vmf {
    mean: Vec<f64>,
    kappa: f64,
    /// ln C_p(κ).
    log_norm: f64,
}

impl Vmf {
    /// A vMF with mean direction `mean` (normalised here; any nonzero finite vector of length
    /// p ≥ 2) and concentration `kappa` (finite, ≥ 0).
    pub fn new(mean: Vec<f64>, kappa: f64) -> Result<Vmf> {
        check_ambient(mean.len())?;
        check_kappa(kappa)?;
        let r = norm(&mean);
        if !(r.is_finite() && r > 0.0) {
            return Err(Error::Invalid(format!(
                "vMF mean direction must be a nonzero finite vector, got {mean:?}"
            )));
        }
        Ok(Vmf::from_valid(&mean, kappa))
    }

    /// Constructor for arguments already checked (nonzero finite mean, p ≥ 2, κ ≥ 0).
    fn from_valid(mean: &[f64], kappa: f64) -> Vmf {
        let r = norm(mean);
        let p = mean.len();
        let log_norm = if kappa == 0.0 {
            -log_sphere_area(p)
        } else {
            // ln C_p(κ) = ν ln κ − (p/2) ln 2π − ln I_ν(κ), ν = p/2 − 1.
            let nu = 0.5 * p as f64 - 1.0;
            nu * kappa.ln() - p as f64 * LN_SQRT_2PI - ln_bessel_i(nu, kappa)
        };
        Vmf {
            mean: mean.iter().map(|v| v / r).collect(),
            kappa,
            log_norm,
        }
    }

    /// The unit mean direction μ.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The concentration κ.
    pub fn kappa(&self) -> f64 {
        self.kappa
    }

    /// The ambient dimension p (the sphere is S^(p−1)).
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// ln C_p(κ), the log normalising constant (−ln |S^(p−1)| at κ = 0).
    pub fn log_normalizer(&self) -> f64 {
        self.log_norm
    }

    /// The mean resultant length A_p(κ) = E(μ·y) (see [`mean_resultant_length`]).
    pub fn mean_resultant_length(&self) -> f64 {
        mrl(self.dim(), self.kappa)
    }

    /// ln p(y) = ln C_p(κ) + κ μ·y, density with respect to the surface measure. `y` should
    /// be a unit vector; the formula is applied as is to any finite y of length p.
    pub fn log_density(&self, y: &[f64]) -> Result<f64> {
        check_point("vMF log density", y, self.dim())?;
        Ok(self.log_norm + self.kappa * dot(&self.mean, y))
    }

    /// The Riemannian score κ(μ − (μ·y)y) (tangent at a unit vector y).
    pub fn riemannian_score(&self, y: &[f64]) -> Result<Vec<f64>> {
        check_point("vMF score", y, self.dim())?;
        Ok(self.score_unchecked(y))
    }

    fn score_unchecked(&self, y: &[f64]) -> Vec<f64> {
        let m = dot(&self.mean, y);
        self.mean
            .iter()
            .zip(y)
            .map(|(mu, yi)| self.kappa * (mu - m * yi))
            .collect()
    }

    /// One exact draw.
    ///
    /// κ = 0: a uniform unit vector. Otherwise Wood (1994): draw the component w = μ·y by
    /// rejection from the envelope w = (1 − (1+b)z)/(1 − (1−b)z), z ~ Beta((p−1)/2, (p−1)/2),
    /// with b = (p−1)/(2κ + √(4κ² + (p−1)²)) (rationalised form of Wood's
    /// (−2κ + √(4κ² + (p−1)²))/(p−1), no cancellation at large κ), x₀ = (1−b)/(1+b),
    /// c = κx₀ + (p−1) ln(1 − x₀²), accepting when κw + (p−1) ln(1 − x₀w) − c ≥ ln u;
    /// then y = wμ + √(1 − w²) v with v uniform on the unit sphere orthogonal to μ.
    /// The test is evaluated through 1 − w = 2bz/(1 − (1−b)z) and 1 − x₀ = 2b/(1+b), so
    /// κ = 1e4 and beyond neither overflow nor lose the small quantities. Beta(a, a) with
    /// a = (p−1)/2 is drawn as X/(X + Y), X, Y ~ χ²_(p−1) (sums of squared normals).
    pub fn sample_one(&self, rng: &mut HostRng) -> Vec<f64> {
        let p = self.dim();
        if self.kappa == 0.0 {
            return uniform_unit(p, rng);
        }
        let (_, omw) = wood(self.dim(), self.kappa, rng);
        let w = 1.0 - omw;
        let s = (omw * (2.0 - omw)).max(0.0).sqrt(); // √(1 − w²)
        let v = orthogonal_unit(&self.mean, rng);
        let y: Vec<f64> = self
            .mean
            .iter()
            .zip(&v)
            .map(|(m, vi)| w * m + s * vi)
            .collect();
        let r = norm(&y);
        y.iter().map(|v| v / r).collect()
    }

    /// `n` independent draws (see [`Vmf::sample_one`]).
    pub fn sample(&self, n: usize, rng: &mut HostRng) -> Vec<Vec<f64>> {
        (0..n).map(|_| self.sample_one(rng)).collect()
    }
}

/// Wood's (1994) rejection step for the vMF on S^(p−1) ⊂ R^p, exposed for the
/// reparameterised sampler of [`crate::vmf`]: returns the accepted envelope draw
/// ε ~ Beta((p−1)/2, (p−1)/2) (accepted, so no longer Beta-distributed) together with
/// 1 − w, where w = h(ε, κ) = (1 − (1+b)ε)/(1 − (1−b)ε) = μ·y is the component along the
/// mean (see [`Vmf::sample_one`] for the algorithm). 1 − w rather than w because near
/// w = 1 (large κ) w itself would lose the digits that matter. κ = 0 is allowed (b = 1,
/// every proposal accepted: w = 1 − 2ε, the uniform distribution's marginal). Needs
/// p ≥ 2 and κ finite, ≥ 0. Uses the same random numbers as [`Vmf::sample_one`] (for
/// κ > 0) does before it draws the tangent direction.
pub fn wood_epsilon(p: usize, kappa: f64, rng: &mut HostRng) -> Result<(f64, f64)> {
    check_ambient(p)?;
    check_kappa(kappa)?;
    Ok(wood(p, kappa, rng))
}

/// [`wood_epsilon`] without the checks: (ε, 1 − w).
fn wood(p: usize, kappa: f64, rng: &mut HostRng) -> (f64, f64) {
    let dof = p - 1;
    let m1 = dof as f64;
    let b = m1 / (2.0 * kappa + (2.0 * kappa).hypot(m1));
    if b == 0.0 {
        // κ ≳ 1e307: the distribution is a point mass at μ to f64 precision (and ε = 0
        // gives h(ε, κ) = 1 for every b).
        return (0.0, 0.0);
    }
    let x0 = (1.0 - b) / (1.0 + b);
    let one_minus_x0 = 2.0 * b / (1.0 + b);
    let ln_one_minus_x0sq = (one_minus_x0 * (1.0 + x0)).ln();
    loop {
        let xa: f64 = (0..dof).map(|_| rng.normal().powi(2)).sum();
        let xb: f64 = (0..dof).map(|_| rng.normal().powi(2)).sum();
        let z = xa / (xa + xb);
        if !z.is_finite() {
            continue;
        }
        let omw = 2.0 * b * z / (1.0 - (1.0 - b) * z);
        let u = 1.0 - rng.uniform(); // (0, 1]
                                     // κw + m1 ln(1 − x₀w) − c with w = 1 − omw, rearranged around x₀.
        let one_minus_x0w = one_minus_x0 + x0 * omw;
        let t = kappa * (one_minus_x0 - omw) + m1 * (one_minus_x0w.ln() - ln_one_minus_x0sq);
        if t >= u.ln() {
            return (z, omw);
        }
    }
}

/// A uniform unit vector orthogonal to the unit vector `mu` (p ≥ 2).
fn orthogonal_unit(mu: &[f64], rng: &mut HostRng) -> Vec<f64> {
    loop {
        let mut g: Vec<f64> = (0..mu.len()).map(|_| rng.normal()).collect();
        let m = dot(&g, mu);
        for (gi, mi) in g.iter_mut().zip(mu) {
            *gi -= m * mi;
        }
        let r = norm(&g);
        if r > 1e-8 {
            return g.iter().map(|v| v / r).collect();
        }
    }
}

// ---------------------------------------------------------------------------------
// Mixtures and the uniform distribution
// ---------------------------------------------------------------------------------

/// A finite mixture Σₖ wₖ vMF(μₖ, κₖ) on one sphere.
#[derive(Clone, Debug, PartialEq)]
pub struct VmfMixture {
    components: Vec<(f64, Vmf)>,
}

impl VmfMixture {
    /// A mixture of (weight, component) pairs: at least one component, all of the same
    /// dimension, weights finite and ≥ 0 with a positive sum (normalised here to sum 1).
    pub fn new(components: Vec<(f64, Vmf)>) -> Result<VmfMixture> {
        let Some(first) = components.first() else {
            return Err(Error::Invalid(
                "a vMF mixture needs at least one component".into(),
            ));
        };
        let p = first.1.dim();
        if let Some((k, (_, c))) = components
            .iter()
            .enumerate()
            .find(|(_, (_, c))| c.dim() != p)
        {
            return Err(Error::Shape(format!(
                "vMF mixture: component 0 lives in R^{p} but component {k} in R^{}",
                c.dim()
            )));
        }
        if let Some((k, (w, _))) = components
            .iter()
            .enumerate()
            .find(|(_, (w, _))| !(w.is_finite() && *w >= 0.0))
        {
            return Err(Error::Invalid(format!(
                "vMF mixture: weight {k} must be finite and >= 0, got {w}"
            )));
        }
        let total: f64 = components.iter().map(|(w, _)| w).sum();
        if !(total > 0.0 && total.is_finite()) {
            return Err(Error::Invalid(format!(
                "vMF mixture: the weights must have a positive finite sum, got {total}"
            )));
        }
        Ok(VmfMixture {
            components: components
                .into_iter()
                .map(|(w, c)| (w / total, c))
                .collect(),
        })
    }

    /// The (normalised weight, component) pairs.
    pub fn components(&self) -> &[(f64, Vmf)] {
        &self.components
    }

    /// The ambient dimension p.
    pub fn dim(&self) -> usize {
        self.components[0].1.dim()
    }

    /// ln wₖ + ln pₖ(y) for each component (y already checked).
    fn joint(&self, y: &[f64]) -> Vec<f64> {
        self.components
            .iter()
            .map(|(w, c)| w.ln() + c.log_norm + c.kappa * dot(&c.mean, y))
            .collect()
    }

    /// ln Σₖ wₖ pₖ(y) (log-sum-exp), with respect to the surface measure.
    pub fn log_density(&self, y: &[f64]) -> Result<f64> {
        check_point("vMF mixture log density", y, self.dim())?;
        Ok(log_sum_exp(&self.joint(y)))
    }

    /// Σₖ rₖ(y) κₖ(μₖ − (μₖ·y)y) with the posterior responsibilities
    /// rₖ = wₖpₖ(y)/Σⱼ wⱼpⱼ(y) (the projected gradient of the log mixture density).
    pub fn riemannian_score(&self, y: &[f64]) -> Result<Vec<f64>> {
        check_point("vMF mixture score", y, self.dim())?;
        let joint = self.joint(y);
        let lse = log_sum_exp(&joint);
        let mut out = vec![0.0; y.len()];
        for ((_, c), l) in self.components.iter().zip(&joint) {
            let r = (l - lse).exp();
            for (o, s) in out.iter_mut().zip(c.score_unchecked(y)) {
                *o += r * s;
            }
        }
        Ok(out)
    }

    /// One draw: a component by its weight, then a draw from it.
    pub fn sample_one(&self, rng: &mut HostRng) -> Vec<f64> {
        let u = rng.uniform();
        let mut acc = 0.0;
        let last = self.components.len() - 1;
        for (w, c) in &self.components[..last] {
            acc += w;
            if u < acc {
                return c.sample_one(rng);
            }
        }
        self.components[last].1.sample_one(rng)
    }

    /// `n` independent draws.
    pub fn sample(&self, n: usize, rng: &mut HostRng) -> Vec<Vec<f64>> {
        (0..n).map(|_| self.sample_one(rng)).collect()
    }
}

fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// The uniform distribution on S^n ⊂ R^(n+1): density 1/|S^n| (surface measure), score 0,
/// sampled as a normalised standard normal vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uniform {
    /// Ambient dimension n + 1.
    dim: usize,
}

impl Uniform {
    /// The uniform distribution on S^n (n ≥ 1), embedded in R^(n+1).
    pub fn on_sphere(n: usize) -> Result<Uniform> {
        if n < 1 {
            return Err(Error::Invalid(format!(
                "the uniform distribution needs a sphere S^n with n >= 1, got n = {n}"
            )));
        }
        Ok(Uniform { dim: n + 1 })
    }

    /// The ambient dimension n + 1.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// −ln |S^n|.
    pub fn log_density(&self, y: &[f64]) -> Result<f64> {
        check_point("uniform log density", y, self.dim)?;
        Ok(-log_sphere_area(self.dim))
    }

    /// The zero vector.
    pub fn riemannian_score(&self, y: &[f64]) -> Result<Vec<f64>> {
        check_point("uniform score", y, self.dim)?;
        Ok(vec![0.0; self.dim])
    }

    /// One draw: a normalised standard normal vector.
    pub fn sample_one(&self, rng: &mut HostRng) -> Vec<f64> {
        uniform_unit(self.dim, rng)
    }

    /// `n` independent draws.
    pub fn sample(&self, n: usize, rng: &mut HostRng) -> Vec<Vec<f64>> {
        (0..n).map(|_| self.sample_one(rng)).collect()
    }
}

// ---------------------------------------------------------------------------------
// Named data sets
// ---------------------------------------------------------------------------------

/// S¹ mixture of SPEC §8 (Fig. 2): (weight, mean, κ).
const S1MIX: [(f64, [f64; 2], f64); 2] = [
    (0.7, [0.0, 1.0], 2.0),
    (
        0.3,
        [
            std::f64::consts::FRAC_1_SQRT_2,
            -std::f64::consts::FRAC_1_SQRT_2,
        ],
        3.0,
    ),
];

/// S² mixture of SPEC §8 (Fig. 4): (weight, mean as listed — normalised on use, κ).
const S2MIX: [(f64, [f64; 3], f64); 4] = [
    (0.0751, [0.6508, 0.0252, -0.7588], 5.567),
    (0.0719, [0.6003, 0.4440, -0.6652], 7.096),
    (0.5370, [-0.2062, -0.6382, -0.7418], 6.612),
    (0.3160, [0.9200, -0.1804, 0.3479], 2.147),
];

/// A named directional data set on a sphere (SPEC §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Directional {
    /// "s1mix": on S¹ ⊂ R², 0.7·vMF((0, 1), 2) + 0.3·vMF((1, −1)/√2, 3).
    S1Mix,
    /// "s2mix": on S² ⊂ R³, the 4-component vMF mixture of SPEC §8 (means normalised).
    S2Mix,
    /// `"uniform-s<n>"`: the uniform distribution on S^n.
    Uniform(Uniform),
}

impl Directional {
    /// The fixed names accepted by [`Directional::from_name`]; it also accepts
    /// `"uniform-s<n>"` (n ≥ 1) for the uniform distribution on S^n.
    pub const NAMES: [&'static str; 2] = ["s1mix", "s2mix"];

    /// The data set called `name` (ASCII case-insensitive): one of [`Directional::NAMES`]
    /// or `"uniform-s<n>"`.
    pub fn from_name(name: &str) -> Result<Directional> {
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "s1mix" => return Ok(Directional::S1Mix),
            "s2mix" => return Ok(Directional::S2Mix),
            _ => {}
        }
        if let Some(n) = lower.strip_prefix("uniform-s") {
            if let Ok(n) = n.parse::<usize>() {
                return Directional::uniform(n);
            }
        }
        Err(Error::Invalid(format!(
            "unknown directional data set '{name}'; valid names are: {}, uniform-s<n> (n >= 1)",
            Directional::NAMES.join(", ")
        )))
    }

    /// The uniform distribution on S^n (n ≥ 1).
    pub fn uniform(n: usize) -> Result<Directional> {
        Ok(Directional::Uniform(Uniform::on_sphere(n)?))
    }

    /// The name, as accepted by [`Directional::from_name`].
    pub fn name(&self) -> String {
        match self {
            Directional::S1Mix => "s1mix".into(),
            Directional::S2Mix => "s2mix".into(),
            Directional::Uniform(u) => format!("uniform-s{}", u.dim - 1),
        }
    }

    /// The ambient dimension (2 for S¹, 3 for S², n + 1 for S^n).
    pub fn dim(&self) -> usize {
        match self {
            Directional::S1Mix => 2,
            Directional::S2Mix => 3,
            Directional::Uniform(u) => u.dim,
        }
    }

    /// The vMF mixture behind a named mixture; `None` for the uniform distribution.
    pub fn mixture(&self) -> Option<VmfMixture> {
        match self.model() {
            Model::Mixture(m) => Some(m.clone()),
            Model::Uniform(_) => None,
        }
    }

    /// The distribution; the built-in mixtures are built once (their normalising constants
    /// need Bessel functions) and shared.
    fn model(&self) -> Model {
        fn build<const P: usize>(table: &[(f64, [f64; P], f64)]) -> VmfMixture {
            let total: f64 = table.iter().map(|t| t.0).sum();
            VmfMixture {
                components: table
                    .iter()
                    .map(|(w, m, k)| (w / total, Vmf::from_valid(m, *k)))
                    .collect(),
            }
        }
        static S1: OnceLock<VmfMixture> = OnceLock::new();
        static S2: OnceLock<VmfMixture> = OnceLock::new();
        match self {
            Directional::S1Mix => Model::Mixture(S1.get_or_init(|| build(&S1MIX))),
            Directional::S2Mix => Model::Mixture(S2.get_or_init(|| build(&S2MIX))),
            Directional::Uniform(u) => Model::Uniform(*u),
        }
    }

    /// `n` independent exact draws (unit vectors in R^dim), determined by `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = HostRng::new(seed);
        match self.model() {
            Model::Mixture(m) => m.sample(n, &mut rng),
            Model::Uniform(u) => u.sample(n, &mut rng),
        }
    }

    /// [`Directional::sample`] as an `n × dim` f32 [`Matrix`] (row-major, embedded
    /// coordinates; rows have unit norm to f32 precision).
    pub fn sample_matrix(&self, n: usize, seed: u64) -> Matrix {
        to_matrix(&self.sample(n, seed), self.dim())
    }

    /// ln p(y) with respect to the surface measure on the sphere.
    pub fn log_density(&self, y: &[f64]) -> Result<f64> {
        match self.model() {
            Model::Mixture(m) => m.log_density(y),
            Model::Uniform(u) => u.log_density(y),
        }
    }

    /// The Riemannian score (I − yyᵀ)∇ log p(y).
    pub fn riemannian_score(&self, y: &[f64]) -> Result<Vec<f64>> {
        match self.model() {
            Model::Mixture(m) => m.riemannian_score(y),
            Model::Uniform(u) => u.riemannian_score(y),
        }
    }
}

/// The distribution behind a [`Directional`].
enum Model {
    Mixture(&'static VmfMixture),
    Uniform(Uniform),
}

impl std::fmt::Display for Directional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Directional {
    type Err = Error;
    fn from_str(s: &str) -> Result<Directional> {
        Directional::from_name(s)
    }
}

// ---------------------------------------------------------------------------------
// Hyperbolic space: the Poincaré ball
// ---------------------------------------------------------------------------------

/// Largest radius a ball point is given: ‖x‖ ≤ 1 − 1e-7 (distance from the origin
/// 2 artanh(1 − 1e-7) ≈ 16.8). In f64 tanh(d/2) rounds to 1 for d ≳ 38, and a point on
/// the boundary is at infinite distance, so samples and [`poincare_exp0`] clip their radius
/// here; for the wrapped normal this moves only draws with ‖v‖ > 16.8, which need σ ≳ 3 to be
/// of any probability.
pub const BALL_MAX_RADIUS: f64 = 1.0 - 1e-7;

/// Largest radius of ball points written as f32 ([`WrappedNormal::sample_matrix`]): 1 − 4e-7,
/// so that rounding each coordinate to f32 (relative error ≤ 2⁻²⁴ ≈ 6e-8) keeps ‖x‖ < 1.
pub const F32_BALL_MAX_RADIUS: f64 = 1.0 - 4e-7;

/// The conformal factor λ(x) = 2/(1 − ‖x‖²) of the Poincaré ball (metric λ²δ).
pub fn poincare_conformal_factor(x: &[f64]) -> f64 {
    2.0 / (1.0 - dot(x, x))
}

/// Distance from the origin, d = 2 artanh ‖x‖ (∞ for ‖x‖ ≥ 1).
pub fn poincare_dist0(x: &[f64]) -> f64 {
    let r = norm(x);
    if r >= 1.0 {
        f64::INFINITY
    } else {
        2.0 * r.atanh()
    }
}

/// The exponential map at the origin, exp₀(v) = tanh(‖v‖/2) v/‖v‖, for v written in an
/// orthonormal basis of T₀H^n (so ‖v‖ is the Riemannian length and d(0, exp₀ v) = ‖v‖; as a
/// Euclidean vector of the chart the tangent vector is v/2, since λ(0) = 2). The radius is
/// clipped at [`BALL_MAX_RADIUS`].
pub fn poincare_exp0(v: &[f64]) -> Vec<f64> {
    let d = norm(v);
    if d == 0.0 {
        return vec![0.0; v.len()];
    }
    let r = (0.5 * d).tanh();
    clip_radius(v.iter().map(|vi| r * vi / d).collect(), BALL_MAX_RADIUS)
}

/// `x` scaled towards the origin, if needed, so that its computed norm is at most `max`
/// (a scaled vector's norm can round above its target, hence the loop; it ends within a
/// few passes).
fn clip_radius(mut x: Vec<f64>, max: f64) -> Vec<f64> {
    loop {
        let r = norm(&x);
        if r <= max {
            return x;
        }
        let f = max / r * (1.0 - 4.0 * f64::EPSILON);
        x.iter_mut().for_each(|v| *v *= f);
    }
}

/// The logarithm map at the origin, log₀(x) = 2 artanh(‖x‖) x/‖x‖ (inverse of
/// [`poincare_exp0`], same orthonormal coordinates); infinite for ‖x‖ ≥ 1.
pub fn poincare_log0(x: &[f64]) -> Vec<f64> {
    let r = norm(x);
    if r == 0.0 {
        return vec![0.0; x.len()];
    }
    let d = poincare_dist0(x);
    x.iter().map(|xi| d * xi / r).collect()
}

/// The wrapped (Riemannian-exponential) normal at the origin of H^n, Poincaré ball
/// (Nagano et al. 2019): x = exp₀(v),
/// v ~ N(0, σ²I_n) in orthonormal coordinates of T₀H^n, so d(0, x) = ‖v‖ ~ σχ_n.
///
/// Density with respect to the Riemannian volume dvol = λ(x)^n dx:
/// ln p(x) = ln N(log₀ x; 0, σ²I) − (n−1) ln(sinh d / d), d = 2 artanh ‖x‖, where
/// (sinh d/d)^(n−1) is the Jacobian of exp₀ in curvature −1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrappedNormal {
    dim: usize,
    sigma: f64,
}

impl WrappedNormal {
    /// The wrapped normal on H^n (n = `dim` ≥ 1) at the origin with scale σ > 0 (finite).
    pub fn new(dim: usize, sigma: f64) -> Result<WrappedNormal> {
        if dim < 1 {
            return Err(Error::Invalid(
                "the wrapped normal needs H^n with n >= 1".into(),
            ));
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::Invalid(format!(
                "the wrapped normal's scale sigma must be finite and > 0, got {sigma}"
            )));
        }
        Ok(WrappedNormal { dim, sigma })
    }

    /// n, the dimension of the ball (points have n coordinates).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The scale σ.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Checks a point: n finite coordinates, strictly inside the ball; returns ‖x‖.
    fn check(&self, what: &str, x: &[f64]) -> Result<f64> {
        check_point(what, x, self.dim)?;
        let r = norm(x);
        if r >= 1.0 {
            return Err(Error::Invalid(format!(
                "{what}: the point has norm {r}, outside the open unit ball (Poincaré model)"
            )));
        }
        Ok(r)
    }

    /// ln p(x) with respect to the Riemannian volume (type docs). Points with ‖x‖ ≥ 1 are
    /// an error.
    pub fn log_density(&self, x: &[f64]) -> Result<f64> {
        let r = self.check("wrapped normal log density", x)?;
        let n = self.dim as f64;
        let s2 = self.sigma * self.sigma;
        let d = 2.0 * r.atanh();
        Ok(-n * (LN_SQRT_2PI + self.sigma.ln()) - 0.5 * d * d / s2 - (n - 1.0) * ln_sinhc(d))
    }

    /// The Riemannian score λ(x)⁻² ∇ₓ ln p(x). With f(d) = −d²/(2σ²) − (n−1) ln(sinh d/d),
    /// f′(d) = −d/σ² − (n−1)(coth d − 1/d) and ∇ₓd = λ(x) x/‖x‖, it is
    /// f′(d)·(1 − ‖x‖²)/(2‖x‖)·x (0 at the origin).
    pub fn riemannian_score(&self, x: &[f64]) -> Result<Vec<f64>> {
        let r = self.check("wrapped normal score", x)?;
        if r == 0.0 {
            return Ok(vec![0.0; self.dim]);
        }
        let n = self.dim as f64;
        let d = 2.0 * r.atanh();
        let fp = -d / (self.sigma * self.sigma) - (n - 1.0) * coth_minus_inv(d);
        let g = fp * (1.0 - r * r) / (2.0 * r);
        Ok(x.iter().map(|xi| g * xi).collect())
    }

    /// One draw: exp₀(v), v ~ N(0, σ²I) (radius clipped at [`BALL_MAX_RADIUS`]).
    pub fn sample_one(&self, rng: &mut HostRng) -> Vec<f64> {
        let v: Vec<f64> = (0..self.dim).map(|_| self.sigma * rng.normal()).collect();
        poincare_exp0(&v)
    }

    /// `n` independent draws.
    pub fn sample(&self, n: usize, rng: &mut HostRng) -> Vec<Vec<f64>> {
        (0..n).map(|_| self.sample_one(rng)).collect()
    }

    /// `n` draws determined by `seed` as an `n × dim` f32 [`Matrix`]. Rounding to f32 moves
    /// a radius by up to ~6e-8 relative, so before it the radius is clipped at
    /// [`F32_BALL_MAX_RADIUS`] = 1 − 4e-7: every f32 row lies strictly inside the ball.
    pub fn sample_matrix(&self, n: usize, seed: u64) -> Matrix {
        let mut rng = HostRng::new(seed);
        let points: Vec<Vec<f64>> = self
            .sample(n, &mut rng)
            .into_iter()
            .map(|x| clip_radius(x, F32_BALL_MAX_RADIUS))
            .collect();
        to_matrix(&points, self.dim)
    }
}
