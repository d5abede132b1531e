//! The MVL family of objectives (SPEC §2–4) against closed forms.
//!
//! Test problem: a Gaussian energy E(x) = ½(x−μ)ᵀA(x−μ) in d = 3 with A symmetric positive
//! definite, built from tape ops (rowdot((x−μ)·A, x−μ)·½), and data x ~ N(m, S) with m ≠ μ and
//! S ≠ A⁻¹ (so the model is not the data distribution and J is not at its minimum). With
//! g = A(x−μ) and ΔE = tr A the score-matching loss is, exactly,
//!
//!   J = E_p[½‖A(x−μ)‖² − tr A] = ½ tr(A²S) + ½ (m−μ)ᵀA²(m−μ) − tr A.
//!
//! Because E is quadratic, every estimator's per-sample value is a polynomial in (g, z) that
//! can be written down (δ = x₁ − x₀, ξ = √(2εᵢ) z):
//!
//! - MVL (s = ½, control variate): −[E(x₁) − E(x₀) − gᵀξ]/εᵢ
//!   = ½‖g‖² − εᵢ gᵀAg/8 + √(εᵢ/2) gᵀAz − zᵀAz, mean J − E[εᵢ gᵀAg]/8 (bias O(ε));
//!   without the control variate add −√(2/εᵢ) gᵀz: variance + 2E[‖g‖²/εᵢ] ∝ 1/ε.
//! - DSM (σ² = ε), ½ε⁻²‖√ε z − ε∇E(x + √ε z)‖²
//!   = ½[‖z‖²/ε − 2gᵀz/√ε − 2zᵀAz + ‖g‖² + 2√ε gᵀAz + ε zᵀA²z], mean J + d/2ε + ε tr A²/2:
//!   eq. 13's "2 D_Fisher + const" halved, with const = d/ε + O(ε) (not θ-dependent), and a
//!   variance that blows up like 1/ε².
//! - VR-DSM (eq. 15, also halved) drops the first two terms: mean J + ε tr A²/2, bounded
//!   variance. (wmvl reports ½ε⁻² so that all score-matching objectives estimate J.)
//! - SSM (v uniform on the sphere of radius √d): ½(vᵀg)² − vᵀAv; SSM-VR: ½‖g‖² − zᵀAz;
//!   exact SM: ½‖g‖² − tr A. All have mean J exactly.
//! - CD-1 (s = 1, x₁ constant): [E(x₀) − E(x₁) + gᵀξ]/ε = ‖g‖² − ½δᵀAδ/ε.
//!
//! [`per_sample_values_match_closed_forms`] checks those formulas to f64 rounding on the CPU
//! tape (deterministic, no statistics). The statistical tests then check the means against J
//! within 3 standard errors (SE = sample sd / √n of the per-sample values; rows are i.i.d.
//! pairs (x, z), so the SE covers both the data and the noise) on the GPU, and the variance
//! patterns of SPEC §2–3. The parameter-gradient tests use a small score-net EBM.
//!
//! Seeds are fixed, so each run is deterministic; a 3-SE band fails by chance with
//! probability 0.27% per comparison at the design stage, and the numbers printed with
//! `--nocapture` show how far inside the bands the estimates are.

use std::sync::OnceLock;

use wmvl::backend::RandomFill;
use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, EnergyKind, HostParams, Init, Model};
use wmvl::objective::{estimate, Config, Energy, EnergyFn, Objective};
use wmvl::ops::Fun;
use wmvl::rng::{reference_draw, Dist};
use wmvl::tape::{Tape, Var};
use wmvl::Result;

/// One GPU for the whole binary.
fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// Moving numbers on and off both devices. Everything put on a device is first rounded to f32,
/// so that the GPU (f32) and the CPU reference (f64) see exactly the same inputs.
trait Dev: RandomFill + Copy {
    fn put(&self, rows: usize, cols: usize, data: &[f64]) -> Result<Self::Tensor>;
    fn get(&self, t: &Self::Tensor) -> Result<Vec<f64>>;
}

impl Dev for Cpu {
    fn put(&self, rows: usize, cols: usize, data: &[f64]) -> Result<Mat> {
        Mat::new(rows, cols, data.iter().map(|&v| v as f32 as f64).collect())
    }
    fn get(&self, t: &Mat) -> Result<Vec<f64>> {
        Ok(t.data.clone())
    }
}

impl Dev for &Gpu {
    fn put(&self, rows: usize, cols: usize, data: &[f64]) -> Result<wmvl::gpu::Tensor> {
        let v: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        self.upload(rows, cols, &v)
    }
    fn get(&self, t: &wmvl::gpu::Tensor) -> Result<Vec<f64>> {
        Ok(self.read(t)?.into_iter().map(f64::from).collect())
    }
}

fn scalar<B: Dev>(dev: B, v: Var<'_, B>) -> Result<f64> {
    Ok(dev.get(&v.value())?[0])
}

// ---------------------------------------------------------------------------------------------
// Small dense linear algebra in f64 (row-major d×d)
// ---------------------------------------------------------------------------------------------

fn mat_mul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            for j in 0..d {
                c[i * d + j] += a[i * d + k] * b[k * d + j];
            }
        }
    }
    c
}

fn mat_vec(a: &[f64], x: &[f64]) -> Vec<f64> {
    let d = x.len();
    (0..d)
        .map(|i| (0..d).map(|k| a[i * d + k] * x[k]).sum())
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn trace(a: &[f64], d: usize) -> f64 {
    (0..d).map(|i| a[i * d + i]).sum()
}

/// Lower Cholesky factor of an SPD matrix.
fn cholesky(s: &[f64], d: usize) -> Vec<f64> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = s[i * d + i] - sum;
                assert!(v > 0.0, "not positive definite");
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (s[i * d + j] - sum) / l[j * d + j];
            }
        }
    }
    l
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

/// Mean, unbiased variance and standard error of the mean.
#[derive(Clone, Copy, Debug)]
struct Stats {
    mean: f64,
    var: f64,
    se: f64,
}

fn stats(v: &[f64]) -> Stats {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Stats {
        mean,
        var,
        se: (var / n).sqrt(),
    }
}

// ---------------------------------------------------------------------------------------------
// The Gaussian problem
// ---------------------------------------------------------------------------------------------

const D: usize = 3;
/// Seed of the data draw (stream 0) and of the estimator noise (streams ≥ 1).
const DATA_SEED: u64 = 0x5eed_da7a;
const NOISE_SEED: u64 = 0x5eed_0015e;

struct Gauss {
    /// Energy matrix (SPD) and centre.
    a: Vec<f64>,
    mu: Vec<f64>,
    /// Data mean and covariance.
    m: Vec<f64>,
    s: Vec<f64>,
}

impl Gauss {
    /// All entries are rounded to f32 here, so that the devices (which hold f32 inputs) and
    /// the host formulas use identical numbers.
    fn new() -> Gauss {
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32 as f64).collect();
        Gauss {
            // Diagonally dominant, hence SPD; eigenvalues ≈ 0.79, 1.44, 2.27.
            a: f(vec![2.0, 0.5, 0.2, 0.5, 1.5, -0.3, 0.2, -0.3, 1.0]),
            mu: f(vec![0.5, -0.3, 0.2]),
            m: f(vec![-0.2, 0.4, 0.1]),
            s: f(vec![1.0, 0.3, 0.0, 0.3, 0.8, 0.1, 0.0, 0.1, 0.6]),
        }
    }

    /// n rows of x ~ N(m, S) (Philox draw, rounded to f32), row-major.
    fn sample(&self, n: usize) -> Vec<f64> {
        let l = cholesky(&self.s, D);
        let z = reference_draw(n * D, Dist::STANDARD_NORMAL, DATA_SEED, 0);
        let mut x = Vec::with_capacity(n * D);
        for zi in z.chunks(D) {
            let lz = mat_vec(&l, zi);
            x.extend((0..D).map(|j| (self.m[j] + lz[j]) as f32 as f64));
        }
        x
    }

    fn a2(&self) -> Vec<f64> {
        mat_mul(&self.a, &self.a, D)
    }

    fn dm(&self) -> Vec<f64> {
        self.m.iter().zip(&self.mu).map(|(a, b)| a - b).collect()
    }

    /// J = ½ tr(A²S) + ½ (m−μ)ᵀA²(m−μ) − tr A.
    fn j(&self) -> f64 {
        let a2 = self.a2();
        let dm = self.dm();
        0.5 * trace(&mat_mul(&a2, &self.s, D), D) + 0.5 * dot(&dm, &mat_vec(&a2, &dm))
            - trace(&self.a, D)
    }

    /// E_p[gᵀAg] = tr(A³S) + (m−μ)ᵀA³(m−μ).
    fn mean_gag(&self) -> f64 {
        let a3 = mat_mul(&self.a2(), &self.a, D);
        let dm = self.dm();
        trace(&mat_mul(&a3, &self.s, D), D) + dot(&dm, &mat_vec(&a3, &dm))
    }

    fn energy_host(&self, x: &[f64]) -> f64 {
        let y: Vec<f64> = x.iter().zip(&self.mu).map(|(a, b)| a - b).collect();
        0.5 * dot(&y, &mat_vec(&self.a, &y))
    }

    fn grad_host(&self, x: &[f64]) -> Vec<f64> {
        let y: Vec<f64> = x.iter().zip(&self.mu).map(|(a, b)| a - b).collect();
        mat_vec(&self.a, &y)
    }

    /// A and μ as fresh leaves on `tape` (for [`quadratic`]).
    fn leaves<'t, B: Dev>(&self, tape: &'t Tape<B>) -> Result<(Var<'t, B>, Var<'t, B>)> {
        let dev = *tape.backend();
        let a = tape.leaf(dev.put(D, D, &self.a)?);
        let mu = tape.leaf(dev.put(1, D, &self.mu)?);
        Ok((a, mu))
    }
}

/// E(x) = ½ rowdot((x−μ)·A, x−μ) for tape values A (d × d) and μ (1 × d).
fn quadratic<'t, B: Dev + 't>(
    a: Var<'t, B>,
    mu: Var<'t, B>,
) -> EnergyFn<impl Fn(Var<'t, B>) -> Result<Var<'t, B>>> {
    EnergyFn(move |x: Var<'t, B>| {
        let y = x.sub(mu)?;
        y.matmul(a)?.rowdot(y)?.scale(0.5)
    })
}

/// What one evaluation returned, read back to the host.
struct Run {
    per_sample: Vec<f64>,
    loss: f64,
    acceptance: Option<f64>,
    monitor: Option<f64>,
    is_loss: bool,
}

/// Evaluate `obj` on the Gaussian problem for data `x` (n × D) and noise draw `stream`.
fn run<B: Dev>(
    dev: B,
    g: &Gauss,
    x: &[f64],
    obj: Objective,
    cfg: &Config,
    stream: u64,
) -> Result<Run> {
    let n = x.len() / D;
    let tape = Tape::new(dev);
    let x0 = tape.leaf(dev.put(n, D, x)?);
    let z = tape.random(n, D, Dist::STANDARD_NORMAL, NOISE_SEED, stream)?;
    let (a, mu) = g.leaves(&tape)?;
    let energy = quadratic(a, mu);
    let est = estimate(obj, cfg, &energy, x0, Some(z))?;
    Ok(Run {
        per_sample: dev.get(&est.per_sample.value())?,
        loss: scalar(dev, est.loss)?,
        acceptance: est.acceptance.map(|a| scalar(dev, a)).transpose()?,
        monitor: est.monitor.map(|m| scalar(dev, m)).transpose()?,
        is_loss: obj.is_loss(),
    })
}

fn cfg(eps: f32, control_variate: bool, rescale: bool) -> Config {
    Config {
        eps,
        control_variate,
        rescale,
        ..Config::default()
    }
}

/// εᵢ = ε₀ / max(1, ‖g‖²) (or ε₀).
fn step_i(eps: f64, g: &[f64], rescale: bool) -> f64 {
    if rescale {
        eps / dot(g, g).max(1.0)
    } else {
        eps
    }
}

// ---------------------------------------------------------------------------------------------
// Closed forms, exactly (f64 CPU tape)
// ---------------------------------------------------------------------------------------------

/// Every objective's per-sample value equals its closed form (module docs) to f64 rounding,
/// for the same data and the same Philox noise; also the CD-1 monitor, the MH acceptance
/// (from the textbook MALA ratio) and the loss = mean(per-sample).
#[test]
fn per_sample_values_match_closed_forms() -> Result<()> {
    let g = Gauss::new();
    let n = 64;
    let x = g.sample(n);
    let stream = 7;
    let z = reference_draw(n * D, Dist::STANDARD_NORMAL, NOISE_SEED, stream);
    let a = &g.a;
    let a2 = g.a2();
    let tr_a = trace(a, D);
    let d = D as f64;
    for &eps in &[1e-1f32, 1e-3] {
        let e = eps as f64;
        for &(obj, cv, rescale) in &[
            (Objective::Mvl, true, true),
            (Objective::Mvl, true, false),
            (Objective::Mvl, false, true),
            (Objective::Mvl, false, false),
            (Objective::Dsm, true, true),
            (Objective::VrDsm, true, true),
            (Objective::Cd1, true, true),
            (Objective::Cd1, false, true),
            (Objective::Ssm, true, true),
            (Objective::SsmVr, true, true),
            (Objective::ExactSm, true, true),
        ] {
            let mut c = cfg(eps, cv, rescale);
            c.mh_diagnostic = obj == Objective::Mvl;
            let r = run(Cpu, &g, &x, obj, &c, stream)?;
            let mut want = Vec::with_capacity(n);
            let mut accept = 0.0;
            let mut monitor = 0.0;
            for (xi, zi) in x.chunks(D).zip(z.chunks(D)) {
                let gr = g.grad_host(xi);
                let gg = dot(&gr, &gr);
                let gz = dot(&gr, zi);
                let zaz = dot(zi, &mat_vec(a, zi));
                let gaz = dot(&gr, &mat_vec(a, zi));
                let gag = dot(&gr, &mat_vec(a, &gr));
                // (closed form, Σ|terms| including terms that cancel: the rounding scale)
                let (v, mag) = match obj {
                    Objective::Mvl => {
                        let ei = step_i(e, &gr, rescale);
                        let mut v = 0.5 * gg - ei * gag / 8.0 + (ei / 2.0).sqrt() * gaz - zaz;
                        if !cv {
                            v -= (2.0 / ei).sqrt() * gz;
                        }
                        // MALA acceptance of x' = x − εᵢ∇E(x) + ξ for π ∝ exp(−E), proposal
                        // density q(b | a) = N(b; a − εᵢ∇E(a), 2εᵢ I).
                        let xi_noise: Vec<f64> = zi.iter().map(|v| (2.0 * ei).sqrt() * v).collect();
                        let xp: Vec<f64> =
                            (0..D).map(|j| xi[j] - ei * gr[j] + xi_noise[j]).collect();
                        let gp = g.grad_host(&xp);
                        let log_q = |to: &[f64], from: &[f64], gfrom: &[f64]| {
                            -(0..D)
                                .map(|j| (to[j] - from[j] + ei * gfrom[j]).powi(2))
                                .sum::<f64>()
                                / (4.0 * ei)
                        };
                        let log_a = (-g.energy_host(&xp) + log_q(xi, &xp, &gp))
                            - (-g.energy_host(xi) + log_q(&xp, xi, &gr));
                        accept += log_a.min(0.0).exp() / n as f64;
                        (v, 0.5 * gg + zaz.abs() + (2.0 / ei).sqrt() * gz.abs())
                    }
                    Objective::Dsm | Objective::VrDsm => {
                        let za2z = dot(zi, &mat_vec(&a2, zi));
                        let mut v = -2.0 * zaz + gg + 2.0 * e.sqrt() * gaz + e * za2z;
                        if obj == Objective::Dsm {
                            v += dot(zi, zi) / e - 2.0 * gz / e.sqrt();
                        }
                        // wmvl reports ½ε⁻²L.
                        let v = 0.5 * v;
                        let mag = 2.0 * zaz.abs()
                            + gg
                            + 2.0 * (e.sqrt() * gaz).abs()
                            + e * za2z
                            + dot(zi, zi) / e
                            + 2.0 * gz.abs() / e.sqrt();
                        (v, mag)
                    }
                    Objective::Cd1 => {
                        let delta: Vec<f64> = (0..D)
                            .map(|j| -e * gr[j] + (2.0 * e).sqrt() * zi[j])
                            .collect();
                        let dad = dot(&delta, &mat_vec(a, &delta));
                        monitor -= (dot(&gr, &delta) + 0.5 * dad) / n as f64;
                        let mut v = gg - 0.5 * dad / e;
                        if !cv {
                            v -= (2.0 / e).sqrt() * gz;
                        }
                        (v, gg + 0.5 * dad / e + (2.0 / e).sqrt() * gz.abs())
                    }
                    Objective::Ssm => {
                        let nz = dot(zi, zi).sqrt();
                        let v: Vec<f64> = zi.iter().map(|c| c * d.sqrt() / nz).collect();
                        let vav = dot(&v, &mat_vec(a, &v));
                        (0.5 * dot(&v, &gr).powi(2) - vav, 0.5 * gg * d + vav)
                    }
                    Objective::SsmVr => (0.5 * gg - zaz, 0.5 * gg + zaz.abs()),
                    Objective::ExactSm => (0.5 * gg - tr_a, 0.5 * gg + tr_a),
                    // Batch-coupled objectives: tested against their own references in
                    // tests/particles.rs, not listed above.
                    Objective::Spos | Objective::Svgd | Objective::BirthDeath => {
                        unreachable!("not in this table")
                    }
                };
                want.push((v, mag));
            }
            // Tolerance relative to each row's Σ|terms|. MVL, SSM-VR, exact SM: pure f64 with
            // exact constants (ε, ½, 2), so ~1e-15 × (1/ε) from differencing E ≈ O(10):
            // 1e-9. DSM, VR-DSM, CD-1, SSM build constants in f32 (√ε, 2ε^{3/2}, 1/ε², √(2ε),
            // 1/ε, √d; `Var::scale` takes f32), each off by ≤ 2⁻²⁴ ≈ 6e-8 relative; VR-DSM's
            // control variate cancels ‖z‖²/ε only up to that: 1e-6 (≥ 16× the worst case).
            // A formula error (a wrong sign, factor or term) is O(1) per row.
            let rel = match obj {
                Objective::Dsm | Objective::VrDsm | Objective::Cd1 | Objective::Ssm => 1e-6,
                _ => 1e-9,
            };
            let worst = r
                .per_sample
                .iter()
                .zip(&want)
                .map(|(got, (v, mag))| (got - v).abs() / (rel * mag.max(1.0)))
                .fold(0.0f64, f64::max);
            assert!(
                worst <= 1.0,
                "{} eps={eps} cv={cv} rescale={rescale}: per-sample error {worst:.3e} × tolerance",
                obj.name()
            );
            let mean = want.iter().map(|w| w.0).sum::<f64>() / n as f64;
            let scale = want.iter().map(|w| w.1).fold(1.0, f64::max);
            assert!((r.loss - mean).abs() <= rel * scale, "loss is not the mean");
            assert_eq!(r.is_loss, obj != Objective::Cd1);
            match obj {
                Objective::Mvl => {
                    let acc = r.acceptance.expect("mh_diagnostic was requested");
                    assert!(
                        (acc - accept).abs() < 1e-10,
                        "MH acceptance {acc} vs MALA ratio {accept} (eps {eps}, rescale {rescale})"
                    );
                }
                Objective::Cd1 => {
                    let m = r.monitor.expect("CD-1 reports a monitor");
                    // ξ = f32(√(2ε))·z: ~6e-8 relative, on terms gᵀξ ~ O(1).
                    assert!((m - monitor).abs() < 1e-6, "CD-1 monitor {m} vs {monitor}");
                    assert!(r.acceptance.is_none());
                }
                _ => assert!(r.monitor.is_none() && r.acceptance.is_none()),
            }
        }
    }
    Ok(())
}

/// The parameter gradient, exactly: differentiate each loss with respect to μ (a leaf of the
/// energy) on the f64 CPU tape and compare with the derivative of its closed form, holding
/// εᵢ and ξ constant (SPEC §2: no gradient through εᵢ, ε₀/εᵢ, ξ or x₀) and, for CD-1, x₁.
/// With g = A(x−μ), ∂g/∂μ = −A:
/// - MVL: ∂/∂μ [½‖g‖² − εᵢgᵀAg/8 + √(εᵢ/2) gᵀAz − zᵀAz] = −Ag + εᵢA²g/4 − √(εᵢ/2) A²z;
///   without the control variate add +√(2/εᵢ) Az.
/// - CD-1: ∂/∂μ [E(x₀) − E(x₁) + gᵀξ]/ε with x₁ constant = [−g₀ + g(x₁) − Aξ]/ε = −Ag₀
///   exactly (the SM gradient ∂/∂μ ½‖g‖²); without the control variate −Ag₀ + Aξ/ε.
/// - exact SM: −Ag.
///
/// This pins down the double-backward paths (g inside x₁, g in the control variate) and
/// every stop-gradient: a gradient through εᵢ would add −v·∂μ log εᵢ on the rescaled rows
/// (most rows here: ‖g‖² > 1), one through x₁ in CD-1 would add εA·g(x₁).
#[test]
fn parameter_gradients_match_closed_forms() -> Result<()> {
    let g = Gauss::new();
    let n = 256;
    let x = g.sample(n);
    let stream = 9;
    let z = reference_draw(n * D, Dist::STANDARD_NORMAL, NOISE_SEED, stream);
    let a = &g.a;
    let a2 = g.a2();
    let rescaled = x
        .chunks(D)
        .filter(|xi| {
            let gr = g.grad_host(xi);
            dot(&gr, &gr) > 1.0
        })
        .count();
    assert!(rescaled > n / 4, "only {rescaled} rows rescaled");
    for &(obj, cv, rescale) in &[
        (Objective::Mvl, true, true),
        (Objective::Mvl, true, false),
        (Objective::Mvl, false, true),
        (Objective::Cd1, true, true),
        (Objective::Cd1, false, true),
        (Objective::ExactSm, true, true),
    ] {
        let eps = 1e-2f32;
        let e = eps as f64;
        let tape = Tape::new(Cpu);
        let al = tape.leaf(Cpu.put(D, D, a)?);
        let mu = tape.leaf(Cpu.put(1, D, &g.mu)?);
        let x0 = tape.leaf(Cpu.put(n, D, &x)?);
        let zt = tape.random(n, D, Dist::STANDARD_NORMAL, NOISE_SEED, stream)?;
        let est = estimate(
            obj,
            &cfg(eps, cv, rescale),
            &quadratic(al, mu),
            x0,
            Some(zt),
        )?;
        let got = tape.grad(est.loss, &[mu], false)?[0].value().data;
        let mut want = vec![0.0; D];
        let mut scale = 0.0f64;
        for (xi, zi) in x.chunks(D).zip(z.chunks(D)) {
            let gr = g.grad_host(xi);
            let ag = mat_vec(a, &gr);
            let a2g = mat_vec(&a2, &gr);
            let az = mat_vec(a, zi);
            let a2z = mat_vec(&a2, zi);
            for j in 0..D {
                let terms = match obj {
                    Objective::Mvl => {
                        let ei = step_i(e, &gr, rescale);
                        let cv_off = if cv { 0.0 } else { (2.0 / ei).sqrt() * az[j] };
                        [
                            -ag[j],
                            ei * a2g[j] / 4.0,
                            -(ei / 2.0).sqrt() * a2z[j],
                            cv_off,
                        ]
                    }
                    Objective::Cd1 => {
                        let cv_off = if cv { 0.0 } else { (2.0 / e).sqrt() * az[j] };
                        [-ag[j], cv_off, 0.0, 0.0]
                    }
                    _ => [-ag[j], 0.0, 0.0, 0.0],
                };
                want[j] += terms.iter().sum::<f64>() / n as f64;
                scale = scale.max(terms.iter().map(|t| t.abs()).sum::<f64>());
            }
        }
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        // f64 rounding of E differences divided by ε = 1e-2, and CD-1's f32 constants √(2ε)
        // and 1/ε (relative ≤ 6e-8 on terms of size `scale`): 1e-6·scale.
        assert!(
            err <= 1e-6 * scale,
            "{} cv={cv} rescale={rescale}: ∂loss/∂μ = {got:?}, closed form {want:?}",
            obj.name()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Means against J (GPU)
// ---------------------------------------------------------------------------------------------

/// Rows for the statistical tests: the per-sample sd of the J estimators is ≈ 5–7.5, so
/// SE ≈ 0.03–0.04 and 3 SE ≈ 0.1, far below the effect of a plausible formula error: e.g.
/// energy scale s = 1 instead of ½ shifts MVL's mean by E[½‖g‖²] = J + tr A ≈ 4.9 (≈ 140 SE),
/// and mutations of that kind were checked to fail this test.
const N: usize = 32_768;

#[test]
fn estimators_are_unbiased_for_closed_form_j() -> Result<()> {
    let gpu = gpu();
    let g = Gauss::new();
    let x = g.sample(N);
    let j = g.j();
    let tr_a2 = trace(&g.a2(), D);
    let d = D as f64;
    println!("closed-form J = {j:.5}  (d = {D}, n = {N})");

    // (name, per-sample statistics, target). Exact SM (no noise, SE ≈ 0.028 from the data
    // alone) also guards the test problem itself: the Philox data draw has the stated m, S.
    let mut checks: Vec<(String, Stats, f64)> = Vec::new();
    let eps = 1e-3f32;
    let e = eps as f64;
    for (k, &rescale) in [true, false].iter().enumerate() {
        let r = run(
            gpu,
            &g,
            &x,
            Objective::Mvl,
            &cfg(eps, true, rescale),
            1 + k as u64,
        )?;
        // Bias of the quadratic case: −E[εᵢ gᵀAg]/8 (≤ ε₀ λ_max/8 ≈ 3e-4 with rescaling).
        let bias = if rescale {
            -x.chunks(D)
                .map(|xi| {
                    let gr = g.grad_host(xi);
                    step_i(e, &gr, true) * dot(&gr, &mat_vec(&g.a, &gr)) / 8.0
                })
                .sum::<f64>()
                / N as f64
        } else {
            -e * g.mean_gag() / 8.0
        };
        let s = stats(&r.per_sample);
        assert!((r.loss - s.mean).abs() < 1e-4 * (1.0 + s.mean.abs()));
        checks.push((format!("mvl (cv, rescale={rescale})"), s, j + bias));
    }
    for (obj, stream) in [
        (Objective::Ssm, 3),
        (Objective::SsmVr, 4),
        (Objective::ExactSm, 5),
    ] {
        let r = run(gpu, &g, &x, obj, &cfg(eps, true, true), stream)?;
        checks.push((obj.name().to_string(), stats(&r.per_sample), j));
    }
    // VR-DSM (halved): J + ε tr A²/2.
    let r = run(gpu, &g, &x, Objective::VrDsm, &cfg(eps, true, true), 6)?;
    checks.push((
        "vr-dsm (target J + ε trA²/2)".into(),
        stats(&r.per_sample),
        j + 0.5 * e * tr_a2,
    ));
    // Plain DSM at a moderate ε = 0.1, where its variance (≈ d/2ε² = 150) is still finite:
    // mean J + d/2ε + ε tr A²/2.
    let e_dsm = 0.1f32;
    let r = run(gpu, &g, &x, Objective::Dsm, &cfg(e_dsm, true, true), 7)?;
    let ed = e_dsm as f64;
    checks.push((
        "dsm eps=0.1 (target J + d/2ε + ε trA²/2)".into(),
        stats(&r.per_sample),
        j + 0.5 * (d / ed + ed * tr_a2),
    ));

    let mut failures = Vec::new();
    for (name, s, want) in &checks {
        let z = (s.mean - want) / s.se;
        println!(
            "{name:42} mean {:10.5}  target {:10.5}  SE {:.5}  z = {z:+.2}",
            s.mean, want, s.se
        );
        if z.abs() >= 3.0 {
            failures.push(format!("{name}: {:.5} vs {want:.5} is {z:+.2} SE", s.mean));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Variance pattern (SPEC §2 step 5, §3)
// ---------------------------------------------------------------------------------------------

/// With the control variate, MVL's per-sample variance is O(1) in ε₀ (changes < 3× over
/// 1e-1 … 1e-5); without it grows like 1/ε₀ (> 100× from 1e-1 to 1e-5, and at 1e-5 the
/// excess equals 2E[‖g‖²/εᵢ] within 3 SE of a variance estimate, 11%). VR-DSM bounded,
/// DSM growing (like 1/ε²).
///
/// Runs on the GPU at all three step sizes. f32 rounding at ε₀ = 1e-5 adds to MVL an error
/// of ~ulp(E)/εᵢ = ulp(E)·max(1, ‖g‖²)/ε₀ per sample: ~0.1 on typical rows, up to ~10 on the
/// few rows with E ≈ 30 and ‖g‖² ≈ 50; measured, the variance goes from 41.3 (f64 tape) to
/// 42.4 (GPU), +3%, which cannot move a 3× or 100× criterion. VR-DSM: ~0.02 per sample
/// (+0.005%). The GPU-vs-CPU comparison at 1e-5 at the end of the test checks this (10%).
#[test]
fn variance_pattern_over_step_sizes() -> Result<()> {
    let gpu = gpu();
    let g = Gauss::new();
    let n = 20_000;
    let x = g.sample(n);
    let epss = [1e-1f32, 1e-3, 1e-5];
    let var = |obj, cv, eps, stream| -> Result<f64> {
        Ok(stats(&run(gpu, &g, &x, obj, &cfg(eps, cv, true), stream)?.per_sample).var)
    };
    let mut table = vec![];
    for (k, &eps) in epss.iter().enumerate() {
        let s = 10 + k as u64;
        table.push([
            var(Objective::Mvl, true, eps, s)?,
            var(Objective::Mvl, false, eps, s)?,
            var(Objective::VrDsm, true, eps, s)?,
            var(Objective::Dsm, true, eps, s)?,
        ]);
    }
    println!("eps       mvl+cv       mvl-cv        vr-dsm       dsm");
    for (eps, row) in epss.iter().zip(&table) {
        println!(
            "{eps:7.0e} {:12.4e} {:12.4e} {:12.4e} {:12.4e}",
            row[0], row[1], row[2], row[3]
        );
    }
    let spread = |c: usize| {
        let v: Vec<f64> = table.iter().map(|r| r[c]).collect();
        v.iter().cloned().fold(0.0, f64::max) / v.iter().cloned().fold(f64::INFINITY, f64::min)
    };
    let growth = |c: usize| table[2][c] / table[0][c];
    println!(
        "max/min: mvl+cv {:.3}, vr-dsm {:.3};  growth 1e-1→1e-5: mvl-cv {:.3e}, dsm {:.3e}",
        spread(0),
        spread(2),
        growth(1),
        growth(3)
    );
    assert!(
        spread(0) < 3.0,
        "MVL with control variate: variance spread {}",
        spread(0)
    );
    assert!(spread(2) < 3.0, "VR-DSM: variance spread {}", spread(2));
    assert!(
        growth(1) > 100.0,
        "MVL without control variate grew only {}×",
        growth(1)
    );
    assert!(growth(3) > 100.0, "DSM grew only {}×", growth(3));

    // The 1/ε law: the no-cv value is v_cv − w with w = √(2/εᵢ) gᵀz, so
    // Var(no cv) − Var(cv) = Var(w) − 2 Cov(v_cv, w) = 2E[‖g‖²/εᵢ] − 2E[gᵀAg], the second
    // term O(10) against ~4e7. The sample variance of w (kurtosis ≈ 27, by simulation) has
    // a relative SE of √(26/20 000) ≈ 3.6%, so 11% is 3 SE.
    let e = 1e-5;
    let excess: f64 = x
        .chunks(D)
        .map(|xi| {
            let gr = g.grad_host(xi);
            2.0 * dot(&gr, &gr) / step_i(e, &gr, true)
        })
        .sum::<f64>()
        / n as f64;
    let got = table[2][1] - table[2][0];
    println!("excess variance at 1e-5: {got:.4e}, predicted 2E[‖g‖²/εᵢ] = {excess:.4e}");
    assert!((got / excess - 1.0).abs() < 0.11);

    // f32 is good enough at 1e-5: the same run on the f64 CPU tape has the same variance
    // (same data, same Philox noise) to within 10% (measured: 3% for MVL, see above).
    let cpu_var =
        stats(&run(Cpu, &g, &x, Objective::Mvl, &cfg(1e-5, true, true), 12)?.per_sample).var;
    let vr_cpu =
        stats(&run(Cpu, &g, &x, Objective::VrDsm, &cfg(1e-5, true, true), 12)?.per_sample).var;
    println!(
        "eps 1e-5 GPU vs CPU variance: mvl+cv {:.4} vs {cpu_var:.4}, vr-dsm {:.4} vs {vr_cpu:.4}",
        table[2][0], table[2][2]
    );
    assert!((table[2][0] / cpu_var - 1.0).abs() < 0.1);
    assert!((table[2][2] / vr_cpu - 1.0).abs() < 0.1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MH acceptance diagnostic
// ---------------------------------------------------------------------------------------------

#[test]
fn mh_acceptance_in_unit_interval_and_tends_to_one() -> Result<()> {
    let gpu = gpu();
    let g = Gauss::new();
    let x = g.sample(8192);
    let mut prev = 0.0;
    for (k, &eps) in [1.0f32, 1e-1, 1e-3, 1e-5].iter().enumerate() {
        let mut c = cfg(eps, true, false);
        c.mh_diagnostic = true;
        let r = run(gpu, &g, &x, Objective::Mvl, &c, 20 + k as u64)?;
        let acc = r.acceptance.expect("requested");
        println!("eps {eps:7.0e}: acceptance {acc:.6}");
        assert!(acc > 0.0 && acc <= 1.0, "acceptance {acc} outside (0, 1]");
        // Monotone in ε (same data; the MALA rejection rate of a Gaussian is O(ε^{3/2})).
        assert!(acc > prev, "acceptance {acc} at eps {eps} not above {prev}");
        prev = acc;
        match k {
            0 => assert!(acc < 0.9, "eps = 1 should reject often, got {acc}"),
            3 => assert!(
                acc > 0.99,
                "eps = 1e-5 should accept almost surely, got {acc}"
            ),
            _ => {}
        }
    }
    // Without mh_diagnostic there is no acceptance.
    let r = run(gpu, &g, &x, Objective::Mvl, &cfg(1e-3, true, true), 30)?;
    assert!(r.acceptance.is_none());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Energy-scale regulariser
// ---------------------------------------------------------------------------------------------

/// loss(c) − loss(0) = c·(mean E(x₁)² + mean E(x₀)²) on the same noise, with x₁ computed on the
/// host (f64 tape: to 1e-9 relative; GPU: to f32 accuracy), and the per-sample values unchanged.
#[test]
fn energy_regulariser_adds_exact_penalty() -> Result<()> {
    let g = Gauss::new();
    let n = 512;
    let x = g.sample(n);
    let stream = 40;
    let z = reference_draw(n * D, Dist::STANDARD_NORMAL, NOISE_SEED, stream);
    let eps = 1e-2f32;
    let e = eps as f64;
    let (mut e0sq, mut e1sq) = (0.0, 0.0);
    for (xi, zi) in x.chunks(D).zip(z.chunks(D)) {
        let gr = g.grad_host(xi);
        let ei = step_i(e, &gr, true);
        let x1: Vec<f64> = (0..D)
            .map(|j| xi[j] - 0.5 * ei * gr[j] + (2.0 * ei).sqrt() * zi[j])
            .collect();
        e0sq += g.energy_host(xi).powi(2) / n as f64;
        e1sq += g.energy_host(&x1).powi(2) / n as f64;
    }
    for c in [1e-4f32, 1e-5] {
        let want = c as f64 * (e1sq + e0sq);
        let base = cfg(eps, true, true);
        let with = Config {
            energy_reg: c,
            ..base
        };
        let r0 = run(Cpu, &g, &x, Objective::Mvl, &base, stream)?;
        let r1 = run(Cpu, &g, &x, Objective::Mvl, &with, stream)?;
        let got = r1.loss - r0.loss;
        println!("c = {c:e}: CPU loss increase {got:.9e}, want {want:.9e}");
        assert!((got / want - 1.0).abs() < 1e-9);
        assert_eq!(
            r0.per_sample, r1.per_sample,
            "the regulariser is not per-sample"
        );

        let r0 = run(gpu(), &g, &x, Objective::Mvl, &base, stream)?;
        let r1 = run(gpu(), &g, &x, Objective::Mvl, &with, stream)?;
        let got = r1.loss - r0.loss;
        println!("c = {c:e}: GPU loss increase {got:.6e}");
        // f32: each loss (|loss| ≲ 1, a mean of 512 values) carries ~1e-6 of rounding; the
        // increase is ≥ 2.8e-4, so 2% (≥ 5.6e-6) is a few times that. Measured: ~1e-5 relative.
        assert!(
            (got - want).abs() < 2e-2 * want,
            "GPU increase {got} vs {want}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parameter gradients of a score-net EBM
// ---------------------------------------------------------------------------------------------

/// A small score-net EBM in d = 2 (2 × 32 Swish, spectral norm on the hidden layers as in the
/// paper), data from a 2-D Gaussian scaled so that ‖∇ₓE‖² > 1 for part of the batch (the
/// per-sample step rescaling is then active).
struct Net {
    arch: Arch,
    hp: HostParams,
    x: Vec<f64>,
}

fn net() -> Result<Net> {
    let arch = Arch {
        kind: EnergyKind::ScoreNet,
        dim: 2,
        hidden: vec![32, 32],
        act: Fun::Swish,
        spectral_norm: true,
    };
    let hp = HostParams::init(&arch, Init::Torch, 11)?;
    let n = 8192;
    let z = reference_draw(n * 2, Dist::STANDARD_NORMAL, DATA_SEED, 1);
    let x = z
        .chunks(2)
        .flat_map(|z| {
            [
                (1.0 + 2.0 * z[0]) as f32 as f64,
                (-0.5 + 1.0 * z[0] + 1.5 * z[1]) as f32 as f64,
            ]
        })
        .collect();
    Ok(Net { arch, hp, x })
}

/// Averaged parameter gradient of `obj` over `draws` noise draws (one when no noise is
/// needed), flattened; with the fraction of rows whose ‖∇ₓE‖² exceeds 1.
fn net_grad(
    net: &Net,
    obj: Objective,
    c: &Config,
    draws: u64,
) -> Result<(Vec<f64>, f64, Option<f64>)> {
    let gpu = gpu();
    let mut model =
        Model::<&Gpu>::from_host(net.arch.clone(), &net.hp, |r, c, d| gpu.upload(r, c, d))?;
    let n = net.x.len() / 2;
    let draws = if obj.needs_noise() { draws } else { 1 };
    let mut sum: Vec<f64> = Vec::new();
    let mut frac = 0.0;
    let mut monitor = None;
    for k in 0..draws {
        let tape = Tape::new(gpu);
        let bound = model.bind(&tape, false)?;
        let x0 = tape.leaf(gpu.put(n, 2, &net.x)?);
        let z = tape.random(n, 2, Dist::STANDARD_NORMAL, NOISE_SEED, 100 + k)?;
        let est = estimate(obj, c, &bound, x0, Some(z))?;
        if k == 0 {
            let (_, gx) = bound.energy_and_grad(x0, false)?;
            let gx = gpu.get(&gx.value())?;
            frac = gx.chunks(2).filter(|g| dot(g, g) > 1.0).count() as f64 / n as f64;
            monitor = est.monitor.map(|m| scalar(gpu, m)).transpose()?;
            assert_eq!(est.monitor.is_some(), obj == Objective::Cd1);
        }
        let grads = tape.grad(est.loss, &bound.leaves, false)?;
        let flat: Vec<f64> = grads
            .iter()
            .map(|g| gpu.get(&g.value()))
            .collect::<Result<Vec<_>>>()?
            .concat();
        if sum.is_empty() {
            sum = vec![0.0; flat.len()];
        }
        sum.iter_mut()
            .zip(&flat)
            .for_each(|(s, v)| *s += v / draws as f64);
    }
    Ok((sum, frac, monitor))
}

/// SPEC §2: the averaged MVL parameter gradient (double backward through ∇ₓE inside x₁ and the
/// control variate; stop-gradient on εᵢ and ξ) agrees with the exact-SM gradient, rescaling
/// on and off. The data are the same rows for both, so the difference is noise + O(ε) bias:
/// 8192 rows × 8 draws make the MC error ~1% of the gradient's norm (measured cosines
/// 0.99997). Checked by mutation: a gradient through εᵢ drops the cosine to 0.955, dropping
/// the second-order path (g detached inside x₁) or g in the control variate fails too.
#[test]
fn mvl_parameter_gradient_matches_exact_sm() -> Result<()> {
    let net = net()?;
    let (exact, frac, _) = net_grad(&net, Objective::ExactSm, &Config::default(), 1)?;
    println!("fraction of rows with ‖∇ₓE‖² > 1: {frac:.3}");
    assert!(frac > 0.1, "rescaling would hardly be exercised");
    for rescale in [true, false] {
        let (mvl, _, _) = net_grad(&net, Objective::Mvl, &cfg(1e-3, true, rescale), 8)?;
        let cos = cosine(&mvl, &exact);
        let ratio = dot(&mvl, &mvl).sqrt() / dot(&exact, &exact).sqrt();
        println!("MVL (rescale {rescale}) vs exact SM: cosine {cos:.5}, norm ratio {ratio:.4}");
        assert!(cos > 0.99, "cosine {cos} (rescale {rescale})");
        assert!((ratio - 1.0).abs() < 0.1, "norm ratio {ratio}");
    }
    Ok(())
}

/// SPEC §3: CD-1 with the control variate gives the SM gradient at small ε; its monitor is
/// reported and it is not a loss.
#[test]
fn cd1_with_control_variate_gradient_matches_exact_sm() -> Result<()> {
    let net = net()?;
    let (exact, _, _) = net_grad(&net, Objective::ExactSm, &Config::default(), 1)?;
    let (cd1, _, monitor) = net_grad(&net, Objective::Cd1, &cfg(1e-3, true, true), 8)?;
    let cos = cosine(&cd1, &exact);
    let ratio = dot(&cd1, &cd1).sqrt() / dot(&exact, &exact).sqrt();
    println!("CD-1 (cv) vs exact SM: cosine {cos:.5}, norm ratio {ratio:.4}, monitor {monitor:?}");
    assert!(cos > 0.99, "cosine {cos}");
    assert!((ratio - 1.0).abs() < 0.1, "norm ratio {ratio}");
    let m = monitor.expect("CD-1 reports its monitoring value");
    assert!(m.is_finite());
    assert!(!Objective::Cd1.is_loss());
    Ok(())
}
