//! MVL in other distribution spaces (SPEC §6, paper appendix B): one step of an interacting
//! particle sampler from the batch towards q^½, then the same energy difference.
//!
//! - **SPOS** (α mixes SVGD and Langevin): x₁ = x₀ + α·εᵢ·φ(x₀) + (1 − α)(−εᵢ·½g + ξ); the
//!   control variate is (1 − α)·g·ξ. α = 0 is Langevin MVL; α = 1 is **SVGD**, whose MVL
//!   objective is the kernelized Stein discrepancy: 2·loss = KSD²(p, q) − E[∇log p·K·∇log p′].
//! - **Birth–death accelerated Langevin** (Wasserstein–Fisher–Rao space, `docs/birth_death.md`):
//!   the Langevin step plus the Fisher–Rao part of the flow taken in expectation, reweighting
//!   the batch by a kernel estimate p̂ of the data density: the per-sample term
//!   (Eᵢ − Ē)(log p̂ᵢ − mean log p̂) + ½(Eᵢ − Ē)², whose mean is Cov(E, log p̂) + ½Var(E).
//!
//! φ(xᵢ) = (1/B) Σⱼ [K(xⱼ, xᵢ)(−½gⱼ) + ∇_{xⱼ}K(xⱼ, xᵢ)] with K(a, b) = exp(−‖a − b‖²/(2h)):
//! since Σⱼ ∇_{xⱼ}K(xⱼ, xᵢ) = (xᵢ·Σⱼ Kᵢⱼ − (Kx)ᵢ)/h and K is symmetric,
//! φ = (1/B)[−½·K g + (x ⊙ K1 − K x)/h]. The batch is a constant, so K is too.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::Axis;
use crate::tape::Var;

/// Pairwise squared distances ‖xᵢ − xⱼ‖² (B, B) of a constant batch.
fn sq_distances<'t, B: Backend>(x: Var<'t, B>) -> Result<Var<'t, B>> {
    let (b, _) = x.shape();
    let n = x.rowdot(x)?; // (B, 1)
    let cross = x.matmul_t(x, false, true)?; // x xᵀ (B, B)
                                             // (i, j): ‖xᵢ‖² + ‖xⱼ‖² − 2xᵢ·xⱼ.
    n.expand(b, b)?.add(row_t(n, b)?)?.sub(cross.scale(2.0)?)
}

/// (B, 1) → (B, B) with entry (i, j) = vⱼ.
fn row_t<'t, B: Backend>(v: Var<'t, B>, b: usize) -> Result<Var<'t, B>> {
    let ones = v.tape().full(b, 1, 1.0)?;
    ones.matmul_t(v, false, true)
}

/// The median heuristic of SPEC §6: h = max(½·med / log(B + 1), 1e−5), med the median of
/// all B² pairwise squared distances.
pub fn median_bandwidth(d2: &[f64], b: usize) -> f64 {
    let mut v = d2.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len();
    let med = if m % 2 == 1 {
        v[m / 2]
    } else {
        0.5 * (v[m / 2 - 1] + v[m / 2])
    };
    (0.5 * med / ((b + 1) as f64).ln()).max(1e-5)
}

/// The RBF kernel matrix of a constant batch and its bandwidth h: `h` if given, else the
/// median heuristic (which reads the distances back: one host round trip per batch).
pub fn rbf_kernel<'t, B: Backend>(x: Var<'t, B>, h: Option<f32>) -> Result<(Var<'t, B>, f32)> {
    let (b, _) = x.shape();
    let d2 = sq_distances(x)?.detach();
    let h = match h {
        Some(h) if h.is_finite() && h > 0.0 => h,
        Some(h) => {
            return Err(Error::Invalid(format!(
                "kernel bandwidth must be positive, got {h}"
            )))
        }
        None => median_bandwidth(&x.tape().backend().to_host(&d2.value())?, b) as f32,
    };
    Ok((d2.scale(-0.5 / h)?.exp()?.detach(), h))
}

/// The SVGD direction towards q^s at the batch x (constant) with ∇E = `g` (differentiable).
pub fn svgd_direction<'t, B: Backend>(
    x: Var<'t, B>,
    g: Var<'t, B>,
    k: Var<'t, B>,
    h: f32,
    s: f32,
) -> Result<Var<'t, B>> {
    let b = x.shape().0 as f32;
    let drive = k.matmul(g)?.scale(-s)?;
    let repulse = x
        .mul(k.sum(Axis::Cols)?)?
        .sub(k.matmul(x)?)?
        .scale(1.0 / h)?;
    drive.add(repulse)?.scale(1.0 / b)
}

/// Leave-one-out Gaussian kernel density estimate log p̂(xᵢ) = log[(1/(B − 1)) Σ_{j≠i}
/// N(xᵢ; xⱼ, σ²I)] of the rows of `x` (B × d, host), in f64 with log-sum-exp: an isolated
/// point's density underflows f32, and the estimate depends on the data only, so it is
/// computed here and handed to the tape as a constant.
pub fn log_kde(x: &[f64], b: usize, d: usize, sigma: f64) -> Result<Vec<f64>> {
    if b < 2 {
        return Err(Error::Invalid(
            "the birth–death objective needs batches of at least 2 rows".into(),
        ));
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::Invalid(format!(
            "the density estimate's bandwidth must be positive, got {sigma}"
        )));
    }
    let log_norm = -(((b - 1) as f64).ln()
        + 0.5 * d as f64 * (2.0 * std::f64::consts::PI * sigma * sigma).ln());
    let row = |i: usize| &x[i * d..(i + 1) * d];
    Ok((0..b)
        .map(|i| {
            let a: Vec<f64> = (0..b)
                .filter(|&j| j != i)
                .map(|j| {
                    let r2: f64 = row(i)
                        .iter()
                        .zip(row(j))
                        .map(|(p, q)| (p - q).powi(2))
                        .sum();
                    -r2 / (2.0 * sigma * sigma)
                })
                .collect();
            let m = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            m + a.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + log_norm
        })
        .collect())
}

/// Scott's rule for the KDE bandwidth: σ = sd · B^(−1/(d + 4)), sd the mean per-column
/// standard deviation of the batch.
pub fn scott_bandwidth(x: &[f64], b: usize, d: usize) -> f64 {
    let mut sd = 0.0;
    for c in 0..d {
        let col: Vec<f64> = (0..b).map(|r| x[r * d + c]).collect();
        let m = col.iter().sum::<f64>() / b as f64;
        sd +=
            (col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (b as f64 - 1.0).max(1.0)).sqrt();
    }
    (sd / d as f64).max(1e-6) * (b as f64).powf(-1.0 / (d as f64 + 4.0))
}
