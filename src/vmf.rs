//! The von Mises–Fisher posterior of the hyperspherical VAE (Davidson et al. 2018) on the
//! tape: a reparameterised sample and the KL divergence to the uniform prior, both
//! differentiable in the mean direction μ and the concentration κ.
//!
//! The latent space is the sphere S^(m−1) ⊂ R^m (m the ambient dimension, as `p` in
//! [`crate::directional`]); q = vMF(μ, κ) has density C_m(κ) exp(κ μ·z) with respect to the
//! surface measure, C_m(κ) = κ^(m/2−1) / ((2π)^(m/2) I_(m/2−1)(κ)).
//!
//! # Sample ([`sample`])
//!
//! Wood's (1994) rejection sampler draws the component w = μ·z through an envelope
//! w = h(ε, κ) = (1 − (1+b)ε)/(1 − (1−b)ε), b = (−2κ + √(4κ² + (m−1)²))/(m−1), with
//! ε ~ Beta((m−1)/2, (m−1)/2). Davidson et al. reparameterise by the *accepted* ε: the
//! rejection loop runs on the host (it is data-dependent, which fixed-shape kernels cannot
//! express), and only w = h(ε, κ) is computed on the tape, so the gradient reaches κ through
//! b. Then z′ = [w, √(1 − w²)·v] with v uniform on S^(m−2) (the directions ⟂ e₁), and an
//! orthogonal map Q with Q e₁ = μ gives z = Q z′.
//!
//! Dropped term: the distribution of the accepted ε depends on κ, which contributes a
//! second, score-function term g_cor to ∇_κ E[f(z)]. Like Davidson's code we drop it: the
//! pathwise gradient alone is biased, by an amount that vanishes as the acceptance rate → 1
//! (large κ). tests/vmf_vae.rs measures the gap for d/dκ E[μ·z] = A′_m(κ).
//!
//! # KL to the uniform prior ([`kl_to_uniform`], [`kl_to_uniform_host`])
//!
//! KL(vMF(μ, κ) ‖ U(S^(m−1))) = κ A_m(κ) + ln C_m(κ) + ln |S^(m−1)|, with
//! A_m(κ) = I_(m/2)(κ)/I_(m/2−1)(κ) = E[μ·z] and |S^(m−1)| = 2π^(m/2)/Γ(m/2). It does not
//! depend on μ. Its derivative is dKL/dκ = κ A′_m(κ), A′ = 1 − A² − (m − 1)A/κ (from the
//! Bessel recurrences). Bessel functions are not tape ops, so both are computed in f64 on the
//! host and the tape gets a value with that first derivative.
//!
//! # Reference
//!
//! T. R. Davidson, L. Falorsi, N. De Cao, T. Kipf, J. M. Tomczak (2018), Hyperspherical
//! variational auto-encoders, UAI (arXiv:1804.00891), §3 and appendices; A. T. A. Wood
//! (1994), Simulation of the von Mises Fisher distribution.

use crate::backend::Backend;
use crate::directional::{
    log_bessel_i_scaled, log_sphere_area, mean_resultant_length_derivative, uniform_unit,
    wood_epsilon,
};
use crate::error::{Error, Result};
use crate::rng::HostRng;
use crate::tape::Var;

/// ln 2π.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Below this κ the KL is evaluated through the series of ₀F₁ (see [`kl_to_uniform_host`]).
const SMALL_KAPPA: f64 = 1.0;

/// Largest |‖μ‖² − 1| accepted for a mean direction (f32 normalisation is far better).
const UNIT_TOLERANCE: f64 = 1e-3;

/// One reparameterised draw z ~ vMF(μ_r, κ_r) per row, on the tape.
///
/// `mu` is (rows, m), m ≥ 2, with unit rows (normalise on the tape first; rows off the
/// sphere by more than 1e-3 in ‖μ‖² are an error); `kappa` is (rows, 1), finite and ≥ 0.
/// Returns z (rows, m), unit rows, differentiable in μ and κ (module docs). For each row in
/// turn `rng` gives Wood's accepted ε ([`wood_epsilon`]) and then the tangent direction v.
///
/// Host traffic: one read of [κ, μ] per call (a GPU sync). κ is needed because the rejection
/// loop runs on the host; μ rides along in the same read because the choice of reflection
/// below depends on the sign of μ₁. Then ε, 1 − ε, √(ε(1 − ε)), v and the reflection's
/// signs are uploaded as constants.
///
/// Range: on an f32 device κ² is formed on the tape, so κ must stay below ~1e19.
///
/// On the tape (b in its rationalised form (m−1)/(2κ + √(4κ² + (m−1)²)), which has no
/// cancellation at large κ in f32):
/// 1 − w = 2bε/(1 − (1−b)ε) and √(1 − w²) = 2√b·√(ε(1 − ε))/(1 − (1−b)ε) — written so that
/// 1 − w² is a product of positive factors: never negative, and no square root of a
/// rounding error (∂√x at x = 0 would be infinite).
///
/// The map Q: Davidson uses the Householder reflection H_a = I − 2aaᵀ/‖a‖² with
/// a = e₁ − μ. It is singular at μ = e₁, its derivative in μ grows like 1/‖e₁ − μ‖, and any
/// additive guard in ‖a‖² stops it being orthogonal where ‖a‖² is of the guard's size
/// (easily reached in f32). So for rows with μ₁ > 0 we use instead
/// Q = −H_a with a = −e₁ − μ, which also maps e₁ to μ: in both cases ‖a‖² = 2 + 2|μ₁| ≥ 2.
/// Any orthogonal Q with Q e₁ = μ gives the same distribution (v is uniform around e₁), so
/// the switch at μ₁ = 0 changes individual draws but not the distribution or the expected
/// gradient.
pub fn sample<'t, B: Backend>(
    mu: Var<'t, B>,
    kappa: Var<'t, B>,
    rng: &mut HostRng,
) -> Result<Var<'t, B>> {
    let (rows, m) = mu.shape();
    if m < 2 {
        return Err(Error::Shape(format!(
            "vmf::sample: mu must have m >= 2 columns (a point on S^(m-1) in R^m), got {m}"
        )));
    }
    if rows == 0 {
        return Err(Error::Shape("vmf::sample: mu has no rows".into()));
    }
    if kappa.shape() != (rows, 1) {
        return Err(Error::Shape(format!(
            "vmf::sample: kappa must be ({rows}, 1) to match mu ({rows}, {m}), got {:?}",
            kappa.shape()
        )));
    }
    let tape = mu.tape();
    let dev = tape.backend();
    let host = dev.to_host(&dev.concat_cols(&kappa.value(), &mu.value())?)?;

    let mut eps = Vec::with_capacity(rows);
    let mut one_minus_eps = Vec::with_capacity(rows);
    let mut root_eps = Vec::with_capacity(rows);
    let mut v = Vec::with_capacity(rows * (m - 1));
    let mut sign = Vec::with_capacity(rows);
    let mut sign_e1 = vec![0.0; rows * m];
    for (r, row) in host.chunks_exact(m + 1).enumerate() {
        let (k, mu_r) = (row[0], &row[1..]);
        if !(k.is_finite() && k >= 0.0) {
            return Err(Error::Invalid(format!(
                "vmf::sample: kappa must be finite and >= 0, row {r} has {k}"
            )));
        }
        let n2: f64 = mu_r.iter().map(|x| x * x).sum();
        if !n2.is_finite() || (n2 - 1.0).abs() > UNIT_TOLERANCE {
            return Err(Error::Invalid(format!(
                "vmf::sample: mu rows must be unit vectors, row {r} has squared norm {n2} \
                 (normalise mu on the tape first)"
            )));
        }
        let (e, _) = wood_epsilon(m, k, rng)?;
        eps.push(e);
        one_minus_eps.push(1.0 - e);
        root_eps.push((e * (1.0 - e)).sqrt());
        v.extend(uniform_unit(m - 1, rng));
        let s = if mu_r[0] > 0.0 { -1.0 } else { 1.0 };
        sign.push(s);
        sign_e1[r * m] = s;
    }
    let leaf =
        |c: usize, d: &[f64]| -> Result<Var<'t, B>> { Ok(tape.leaf(dev.upload_host(rows, c, d)?)) };
    let eps = leaf(1, &eps)?;
    let one_minus_eps = leaf(1, &one_minus_eps)?;
    let root_eps = leaf(1, &root_eps)?;
    let v = leaf(m - 1, &v)?;
    let sign = leaf(1, &sign)?;
    let sign_e1 = leaf(m, &sign_e1)?;

    // w = h(ε, κ) on the tape. g_cor (the rejection-correction term) is dropped, as in
    // Davidson's code: see the module docs.
    let m1 = (m - 1) as f32;
    let root = kappa.square()?.affine(4.0, m1 * m1)?.sqrt()?; // √(4κ² + (m−1)²)
    let b = kappa.scale(2.0)?.add(root)?.recip()?.scale(m1)?;
    let b_eps = b.mul(eps)?;
    let den = b_eps.add(one_minus_eps)?; // 1 − (1 − b)ε > 0
    let w = b_eps.div(den)?.affine(-2.0, 1.0)?; // 1 − 2bε/den
    let sin = b.sqrt()?.mul(root_eps)?.div(den)?.scale(2.0)?; // √(1 − w²)
    let z0 = w.concat_cols(sin.mul(v)?)?;

    // z = σ·(z′ − 2(z′·a)a/‖a‖²) with a = σe₁ − μ, ‖a‖² ≥ 2 (see above).
    let a = sign_e1.sub(mu)?;
    let coef = z0.rowdot(a)?.div(a.rowdot(a)?)?.scale(2.0)?;
    z0.sub(a.mul(coef)?)?.mul(sign)
}

/// KL(vMF(μ, κ) ‖ Uniform(S^(m−1))) per row, on the tape: `kappa` (rows, 1), finite, ≥ 0;
/// returns (rows, 1).
///
/// The value and dKL/dκ come from [`kl_to_uniform_host`] (one read of κ per call: Bessel
/// functions are not tape ops). The result is KL + dKL/dκ·(κ − stop_gradient(κ)): its
/// value is exactly KL (rounded to the device's precision) and its gradient in κ is dKL/dκ.
/// **First-order only**: differentiating the gradient again gives 0, not d²KL/dκ², so do not
/// put it under a double backward.
pub fn kl_to_uniform<'t, B: Backend>(m: usize, kappa: Var<'t, B>) -> Result<Var<'t, B>> {
    let (rows, c) = kappa.shape();
    if c != 1 {
        return Err(Error::Shape(format!(
            "vmf::kl_to_uniform: kappa must be (rows, 1), got ({rows}, {c})"
        )));
    }
    let tape = kappa.tape();
    let dev = tape.backend();
    let mut kl = Vec::with_capacity(rows);
    let mut dkl = Vec::with_capacity(rows);
    for k in dev.to_host(&kappa.value())? {
        let (v, d) = kl_to_uniform_host(m, k)?;
        kl.push(v);
        dkl.push(d);
    }
    let kl = tape.leaf(dev.upload_host(rows, 1, &kl)?);
    let dkl = tape.leaf(dev.upload_host(rows, 1, &dkl)?);
    // κ − κ is exactly 0 in any precision: the value stays KL.
    kappa.sub(kappa.detach())?.mul(dkl)?.add(kl)
}

/// (KL, dKL/dκ) of vMF(μ, κ) on S^(m−1) ⊂ R^m against the uniform distribution, in f64.
/// Needs m ≥ 2 and κ finite, ≥ 0 (κ = 0 gives (0, 0)).
///
/// With ν = m/2 − 1, A = I_(ν+1)/I_ν is computed as exp(ln Î_(ν+1) − ln Î_ν) from the
/// exponentially scaled [`log_bessel_i_scaled`] (ln Î = ln I − κ): unscaled logs are ≈ κ and
/// would carry an absolute error ≈ κ·1e-16 into A; 1 − A = −expm1(…) keeps its relative
/// digits at large κ. A′ comes from [`mean_resultant_length_derivative`], which avoids the
/// cancellation in 1 − A² − (m − 1)A/κ ≈ (m − 1)/(2κ²) at large κ.
///
/// The value, two forms of the same function:
/// - κ < 1: KL = κA − ln ₀F₁(; m/2; κ²/4), since I_ν(κ) = (κ/2)^ν ₀F₁(; ν+1; κ²/4)/Γ(ν+1)
///   and the constants cancel against ln |S^(m−1)|. Both terms are O(κ²) (KL ≈ κ²/(2m)),
///   computed to full relative precision; the direct formula would subtract O(1)–O(100)
///   numbers to get 1e-8.
/// - κ ≥ 1: KL = −κ(1 − A) + ν ln κ − (m/2) ln 2π − ln Î_ν(κ) + ln |S^(m−1)|, the direct
///   formula with the two ≈ κ terms (κA and ln I_ν) cancelled analytically.
///
/// Against mpmath (tests/vmf_vae.rs, m = 3, 8, 32, κ = 1e-3 … 1e4) the worst relative
/// errors are 1.1e-12 (KL) and 7e-12 (dKL/dκ).
pub fn kl_to_uniform_host(m: usize, kappa: f64) -> Result<(f64, f64)> {
    if m < 2 {
        return Err(Error::Invalid(format!(
            "vMF KL: the sphere S^(m-1) needs ambient dimension m >= 2, got {m}"
        )));
    }
    if !(kappa.is_finite() && kappa >= 0.0) {
        return Err(Error::Invalid(format!(
            "vMF KL: kappa must be finite and >= 0, got {kappa}"
        )));
    }
    if kappa == 0.0 {
        return Ok((0.0, 0.0));
    }
    let nu = 0.5 * m as f64 - 1.0;
    let l0 = log_bessel_i_scaled(nu, kappa)?;
    let ln_a = log_bessel_i_scaled(nu + 1.0, kappa)? - l0;
    let a = ln_a.exp();
    let one_minus_a = -ln_a.exp_m1();
    let da = mean_resultant_length_derivative(m, kappa)?;
    let kl = if kappa < SMALL_KAPPA {
        kappa * a - ln_hyp0f1(nu + 1.0, 0.25 * kappa * kappa)
    } else {
        -kappa * one_minus_a + nu * kappa.ln() - 0.5 * m as f64 * LN_2PI - l0 + log_sphere_area(m)
    };
    Ok((kl, kappa * da))
}

/// ln ₀F₁(; c; q) = ln Σₖ qᵏ/(k! (c)ₖ) for c ≥ 1 and 0 ≤ q ≤ ¼ (all terms positive, the
/// ratio of successive terms below q/c ≤ ¼), as ln(1 + tail) without losing the tail.
fn ln_hyp0f1(c: f64, q: f64) -> f64 {
    let (mut term, mut tail, mut k) = (1.0f64, 0.0f64, 0.0f64);
    loop {
        k += 1.0;
        term *= q / (k * (c + k - 1.0));
        tail += term;
        if term <= 1e-17 * tail {
            return tail.ln_1p();
        }
    }
}
