//! Annealed importance sampling (AIS; Neal 2001) for the log marginal likelihood
//! log p(x) = log ∫ p(z) p(x|z) dz of a latent-variable model such as a VAE decoder.
//!
//! AIS walks from the prior π₀ = p(z) to the posterior π_T ∝ p(z) p(x|z) through the
//! geometric path π_t ∝ p(z) p(x|z)^β_t, 0 = β₀ < … < β_T = 1. A chain starts at z₀ ~ p(z);
//! at step t it adds (β_t − β_{t−1})·log p(x|z_{t−1}) to its log weight and then moves z by a
//! Markov transition that leaves π_t invariant. E w = p(x) exactly, so log-mean-exp of the
//! weights over chains is a stochastic lower bound on log p(x) that tightens as T grows.
//!
//! This is how "Wasserstein minimum velocity learning" evaluates its VAEs (Table 1: negative
//! log-likelihood by AIS with 1 000 intermediate distributions), following Wu et al. (2017),
//! "On the quantitative analysis of decoder-based generative models": sigmoid schedule,
//! Hamiltonian Monte Carlo transitions for Euclidean latents with the step size adapted
//! towards 65 % acceptance. For latents on the sphere S^(m−1) (uniform prior) the transition
//! is Riemannian Langevin with a Metropolis–Hastings correction (MALA): the step of
//! [`crate::langevin`] in stereographic charts, its acceptance ratio taken between densities
//! on the sphere so that a move into the other hemisphere's chart is scored correctly. Each
//! transition makes `leapfrog` such moves, the gradient budget of an HMC transition.
//!
//! Rows are independent chains: the caller lays them out (e.g. row = chain·n_data + i) and
//! its [`LogLikelihood`] knows which data point each row belongs to; [`log_marginal`] then
//! averages the weights over chains.

use crate::backend::{Backend, RandomFill};
use crate::directional::Uniform;
use crate::error::{Error, Result};
use crate::langevin::step;
use crate::manifold::Manifold;
use crate::objective::Energy;
use crate::rng::{Dist, HostRng};
use crate::tape::{Tape, Var};

/// The model: log p(x_r | z_r) for every row r of a batch of latents.
pub trait LogLikelihood<B: Backend> {
    /// Latents z (rows, dim) → log-likelihoods (rows, 1) on z's tape, differentiable in z.
    fn log_lik<'t>(&self, z: Var<'t, B>) -> Result<Var<'t, B>>;
}

/// The prior p(z) the chains start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentPrior {
    /// N(0, I) on R^dim; HMC transitions.
    StandardNormal,
    /// Uniform on the unit sphere S^(dim−1) ⊂ R^dim (z unit vectors); MALA transitions.
    UniformSphere,
}

/// Settings of an AIS run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AisConfig {
    /// Number of intermediate distributions T (transitions).
    pub steps: usize,
    /// Gradient evaluations per transition: leapfrog steps of HMC (Euclidean latents), or
    /// Riemannian MALA moves at the same β (sphere), so that both spend the same budget.
    pub leapfrog: usize,
    /// Initial step size: the HMC leapfrog step, or the Langevin ε₀ on the sphere (proposal
    /// noise variance 2ε₀·g⁻¹). Adapted after every transition.
    pub step_size: f64,
    /// The acceptance rate the step size is adapted towards.
    pub target_accept: f64,
    /// Seed of every random draw (initial latents, momenta or noise, accept decisions).
    pub seed: u64,
}

impl Default for AisConfig {
    fn default() -> Self {
        AisConfig {
            steps: 1000,
            leapfrog: 10,
            step_size: 0.05,
            target_accept: 0.65,
            seed: 0,
        }
    }
}

/// What an AIS run returns.
#[derive(Clone, Debug, PartialEq)]
pub struct AisOutput {
    /// log w per row.
    pub log_w: Vec<f64>,
    /// The final latents (rows × dim, row-major), approximately from the posteriors.
    pub z: Vec<f64>,
    /// The step size after the last adaptation.
    pub step_size: f64,
    /// Mean acceptance probability over all transitions and rows.
    pub mean_accept: f64,
}

/// β₀ = 0 < … < β_T = 1: the sigmoid schedule of Wu et al. (2017), σ(δ(2t/T − 1)) with δ = 4
/// rescaled to [0, 1]. It spends more steps near both ends, where log p(x|z) changes fastest
/// relative to β.
pub fn sigmoid_schedule(steps: usize) -> Vec<f64> {
    const DELTA: f64 = 4.0;
    let s = |t: usize| 1.0 / (1.0 + (-DELTA * (2.0 * t as f64 / steps as f64 - 1.0)).exp());
    let (lo, hi) = (s(0), s(steps));
    (0..=steps)
        .map(|t| match t {
            0 => 0.0,
            t if t == steps => 1.0,
            t => (s(t) - lo) / (hi - lo),
        })
        .collect()
}

/// Runs `rows` independent AIS chains of `cfg.steps` transitions for the latents
/// (rows, `dim`) of `model` under `prior`; returns their log weights (see the module docs),
/// whose exp is an unbiased estimate of each row's p(x).
///
/// `backend` is taken by value so that each transition gets a fresh tape (dropping it frees
/// the step's buffers): pass `&gpu` or `Cpu`. `progress(t, T)` is called after each step.
pub fn ais<B: RandomFill + Copy>(
    backend: B,
    model: &dyn LogLikelihood<B>,
    rows: usize,
    dim: usize,
    prior: LatentPrior,
    cfg: &AisConfig,
    mut progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<AisOutput> {
    check(rows, dim, prior, cfg)?;
    let betas = sigmoid_schedule(cfg.steps);
    // Separate host streams for the start and the accept decisions; device draws (momenta,
    // Langevin noise) use stream t of the seed, so every transition gets fresh numbers.
    let mut start = HostRng::for_stream(cfg.seed, 0);
    let mut uniforms = HostRng::for_stream(cfg.seed, 1);
    let mut run = Run {
        backend,
        model,
        rows,
        dim,
        cfg,
        log_w: vec![0.0; rows],
        eps: cfg.step_size,
        accept_sum: 0.0,
        decisions: 0,
        uniforms: &mut uniforms,
    };
    let z = match prior {
        LatentPrior::StandardNormal => {
            let z0: Vec<f64> = (0..rows * dim).map(|_| start.normal()).collect();
            let mut z = backend.upload_host(rows, dim, &z0)?;
            for t in 1..=cfg.steps {
                z = run.hmc(&z, &betas, t)?;
                if let Some(p) = progress.as_mut() {
                    p(t, cfg.steps);
                }
            }
            backend.to_host(&z)?
        }
        LatentPrior::UniformSphere => {
            let u = Uniform::on_sphere(dim - 1)?;
            let mut z: Vec<f64> = (0..rows).flat_map(|_| u.sample_one(&mut start)).collect();
            for t in 1..=cfg.steps {
                for k in 0..cfg.leapfrog {
                    run.mala(&mut z, &betas, t, k)?;
                }
                if let Some(p) = progress.as_mut() {
                    p(t, cfg.steps);
                }
            }
            z
        }
    };
    Ok(AisOutput {
        log_w: run.log_w,
        z,
        step_size: run.eps,
        mean_accept: run.accept_sum / run.decisions.max(1) as f64,
    })
}

/// Per data point log p̂(x_i) = log-mean-exp over chains of the weights of rows
/// chain·n_data + i, computed around the maximum so that nothing overflows.
pub fn log_marginal(log_w: &[f64], n_data: usize, chains: usize) -> Result<Vec<f64>> {
    if n_data == 0 || chains == 0 || log_w.len() != n_data * chains {
        return Err(Error::Shape(format!(
            "log_marginal: {} log weights for {n_data} data points × {chains} chains",
            log_w.len()
        )));
    }
    Ok((0..n_data)
        .map(|i| {
            let w = (0..chains).map(|c| log_w[c * n_data + i]);
            let m = w.clone().fold(f64::NEG_INFINITY, f64::max);
            if !m.is_finite() {
                return m; // all −∞ (or a +∞/NaN weight): nothing to rescale
            }
            m + (w.map(|v| (v - m).exp()).sum::<f64>() / chains as f64).ln()
        })
        .collect())
}

fn check(rows: usize, dim: usize, prior: LatentPrior, cfg: &AisConfig) -> Result<()> {
    let bad = |m: String| Err(Error::Invalid(format!("AIS: {m}")));
    if rows == 0 {
        return bad("no chains (rows = 0); give at least one row".into());
    }
    if cfg.steps == 0 {
        return bad("steps = 0; AIS needs at least one intermediate distribution".into());
    }
    match prior {
        LatentPrior::StandardNormal if dim == 0 => return bad("latent dimension 0".into()),
        LatentPrior::StandardNormal if cfg.leapfrog == 0 => {
            return bad("leapfrog = 0; HMC needs at least one leapfrog step".into())
        }
        LatentPrior::UniformSphere if dim < 2 => {
            return bad(format!(
                "sphere latents need at least 2 coordinates (S¹ ⊂ R²), got dim = {dim}"
            ))
        }
        _ => {}
    }
    if !(cfg.step_size.is_finite() && cfg.step_size > 0.0) {
        return bad(format!(
            "the step size must be finite and > 0, got {}",
            cfg.step_size
        ));
    }
    if !(cfg.target_accept > 0.0 && cfg.target_accept < 1.0) {
        return bad(format!(
            "the target acceptance must lie in (0, 1), got {}",
            cfg.target_accept
        ));
    }
    Ok(())
}

/// −β·log p(x|y): the energy of π_β on the sphere (the uniform prior is a constant).
struct Tempered<'m, B: Backend> {
    model: &'m dyn LogLikelihood<B>,
    beta: f32,
}

impl<'t, B: Backend> Energy<'t, B> for Tempered<'_, B> {
    fn energy(&self, y: Var<'t, B>) -> Result<Var<'t, B>> {
        log_lik_of(self.model, y)?.scale(-self.beta)
    }
}

/// The model's log-likelihood, refused unless it has one value per row.
fn log_lik_of<'t, B: Backend>(model: &dyn LogLikelihood<B>, z: Var<'t, B>) -> Result<Var<'t, B>> {
    let ll = model.log_lik(z)?;
    let rows = z.shape().0;
    if ll.shape() != (rows, 1) {
        return Err(Error::Shape(format!(
            "AIS: the log-likelihood of {rows} latents has shape {:?}; it must be ({rows}, 1)",
            ll.shape()
        )));
    }
    Ok(ll)
}

/// U(z) = ½‖z‖² − β log p(x|z) per row: the potential of π_β for the N(0, I) prior.
fn potential<'t, B: Backend>(z: Var<'t, B>, ll: Var<'t, B>, beta: f32) -> Result<Var<'t, B>> {
    z.rowdot(z)?.scale(0.5)?.sub(ll.scale(beta)?)
}

/// ∇_z Σ_rows u (each row's gradient is its own: the rows are independent), detached.
fn grad<'t, B: Backend>(u: Var<'t, B>, z: Var<'t, B>) -> Result<Var<'t, B>> {
    Ok(z.tape().grad(u.sum_all()?, &[z], false)?[0])
}

/// The state shared by the transitions of one run.
struct Run<'a, B: Backend> {
    backend: B,
    model: &'a dyn LogLikelihood<B>,
    rows: usize,
    dim: usize,
    cfg: &'a AisConfig,
    log_w: Vec<f64>,
    eps: f64,
    accept_sum: f64,
    /// Accept/reject rounds so far (one per HMC transition, `leapfrog` per sphere one).
    decisions: usize,
    uniforms: &'a mut HostRng,
}

impl<B: RandomFill + Copy> Run<'_, B> {
    /// log w += (β_t − β_{t−1})·log p(x|z_{t−1}), refusing a non-finite log-likelihood
    /// (the weight would be meaningless) with the step and row that produced it.
    fn accumulate(&mut self, ll: Var<'_, B>, betas: &[f64], t: usize) -> Result<()> {
        let ll = self.backend.to_host(&ll.value())?;
        let db = betas[t] - betas[t - 1];
        for (r, (w, l)) in self.log_w.iter_mut().zip(&ll).enumerate() {
            if !l.is_finite() {
                return Err(Error::Invalid(format!(
                    "AIS: the log-likelihood of row {r} is {l} at step {t} of {} (β = {:.3e}); \
                     the model must give a finite log p(x|z) at every latent",
                    self.cfg.steps,
                    betas[t - 1]
                )));
            }
            *w += db * l;
        }
        Ok(())
    }

    /// Accept row r with probability min(1, exp(log αᵣ)) (a non-finite log α — a diverged
    /// proposal — is rejected); adapts the step size from the mean acceptance probability,
    /// which depends only on the past and so keeps every later transition valid.
    fn decide(&mut self, log_a: &[f64]) -> Vec<bool> {
        let mut mean = 0.0;
        let accept = log_a
            .iter()
            .map(|&la| {
                let u = 1.0 - self.uniforms.uniform(); // (0, 1]
                if la.is_nan() || la == f64::INFINITY {
                    return false;
                }
                mean += la.min(0.0).exp();
                u.ln() < la
            })
            .collect();
        mean /= self.rows as f64;
        self.accept_sum += mean;
        self.decisions += 1;
        self.eps *= if mean > self.cfg.target_accept {
            1.02
        } else {
            0.98
        };
        accept
    }

    /// One HMC transition at β_t from z (rows, dim) on the device, after adding z's weight
    /// increment. U(z) = ½‖z‖² − β log p(x|z) per row, momenta p ~ N(0, I).
    fn hmc(&mut self, z: &B::Tensor, betas: &[f64], t: usize) -> Result<B::Tensor> {
        let tape = Tape::new(self.backend);
        let beta = betas[t] as f32;
        let eps = self.eps as f32;
        let z0 = tape.leaf(z.clone());
        let ll0 = log_lik_of(self.model, z0)?;
        self.accumulate(ll0, betas, t)?;
        let u0 = potential(z0, ll0, beta)?;
        let p0 = tape.random(
            self.rows,
            self.dim,
            Dist::STANDARD_NORMAL,
            self.cfg.seed,
            t as u64,
        )?;
        let h0 = u0.add(p0.rowdot(p0)?.scale(0.5)?)?;
        // Leapfrog: half momentum step, L position steps with full momentum steps between,
        // half momentum step. Positions are detached so each gradient only walks one step.
        let mut p = p0.sub(grad(u0, z0)?.scale(0.5 * eps)?)?;
        let (mut zl, mut ul) = (z0, u0);
        for i in 0..self.cfg.leapfrog {
            zl = zl.add(p.scale(eps)?)?.detach();
            ul = potential(zl, log_lik_of(self.model, zl)?, beta)?;
            let h = if i + 1 < self.cfg.leapfrog {
                eps
            } else {
                0.5 * eps
            };
            p = p.sub(grad(ul, zl)?.scale(h)?)?.detach();
        }
        let h1 = ul.add(p.rowdot(p)?.scale(0.5)?)?;
        let log_a = self.backend.to_host(&h0.sub(h1)?.value())?;
        let accept = self.decide(&log_a);
        let mask: Vec<f64> = accept.iter().map(|&a| if a { 1.0 } else { 0.0 }).collect();
        if log_a.iter().all(|v| v.is_finite()) {
            // z ← (1 − m)∘z + m∘z′ on the device: exact for m ∈ {0, 1} and no round trip.
            let m = tape.leaf(self.backend.upload_host(self.rows, 1, &mask)?);
            let keep = m.affine(-1.0, 1.0)?;
            return Ok(z0.mul(keep)?.add(zl.mul(m)?)?.value());
        }
        // A diverged proposal may hold Inf/NaN, which 0·z′ would spread: select on the host.
        let (old, new) = (self.backend.to_host(z)?, self.backend.to_host(&zl.value())?);
        let d = self.dim;
        let z: Vec<f64> = (0..self.rows)
            .flat_map(|r| {
                let src = if accept[r] { &new } else { &old };
                src[r * d..(r + 1) * d].iter().copied()
            })
            .collect();
        self.backend.upload_host(self.rows, d, &z)
    }

    /// Move k of a MALA transition at β_t of the unit vectors z (rows × dim, host); move 0
    /// first adds z's weight increment. The proposal is the Riemannian Langevin step towards π_t (s = 1, no
    /// rescaling) in each row's own stereographic chart, chosen on the host in f64 so that
    /// the chart point lies in the unit ball, where the metric is well conditioned.
    ///
    /// The chart depends on the state, so the reverse move y′ → y is proposed in the chart
    /// of y′, which differs when the step crosses the equator. [`Step::mh_log_alpha`] scores
    /// the reverse move in the forward chart (right for a fixed chart); here a crossing would
    /// bias the weights, so log α is assembled on the host with densities on the sphere:
    /// log α = E(y) − E(y′) + log q_σ′(y|y′) − log q_σ(y′|y), where a chart density becomes
    /// one on the sphere by dividing by √det g = ν^(−n/2), ν = g⁻¹.
    ///
    /// [`Step::mh_log_alpha`]: crate::langevin::Step::mh_log_alpha
    fn mala(&mut self, z: &mut [f64], betas: &[f64], t: usize, k: usize) -> Result<()> {
        let sphere = Manifold::Sphere;
        let (rows, d, n) = (self.rows, self.dim, self.dim - 1);
        let (beta, eps) = (betas[t], self.eps);
        let tape = Tape::new(self.backend);
        let zt = tape.leaf(self.backend.upload_host(rows, d, z)?);
        let ll0 = log_lik_of(self.model, zt)?;
        if k == 0 {
            self.accumulate(ll0, betas, t)?;
        }
        let ll0 = self.backend.to_host(&ll0.value())?;
        let mut form = Vec::with_capacity(rows * d);
        for r in 0..rows {
            form.extend(sphere.to_chart(&z[r * d..(r + 1) * d])?);
        }
        let form_t = tape.leaf(self.backend.upload_host(rows, d, &form)?);
        // Stream t·L + k: a fresh draw for every move of every transition.
        let stream = (t * self.cfg.leapfrog + k) as u64;
        let noise = tape.random(rows, n, Dist::STANDARD_NORMAL, self.cfg.seed, stream)?;
        let energy = Tempered {
            model: self.model,
            beta: beta as f32,
        };
        let st = step(sphere, &energy, form_t, noise, 1.0, eps as f32, false)?;
        let x1 = self.backend.to_host(&st.x1.value())?;
        let xi = self.backend.to_host(&st.xi.value())?;
        // The proposals y′ on the sphere, their log-likelihoods and embedded gradients.
        let mut y1 = Vec::with_capacity(rows * d);
        for r in 0..rows {
            y1.extend(sphere.point(&x1[r * n..(r + 1) * n], form[r * d + n]));
        }
        let y1_t = tape.leaf(self.backend.upload_host(rows, d, &y1)?);
        let ll1 = log_lik_of(self.model, y1_t)?;
        let g1 = self.backend.to_host(&grad(ll1, y1_t)?.value())?;
        let ll1 = self.backend.to_host(&ll1.value())?;
        let log_nu = |x: &[f64]| sphere.g_inv(x).ln();
        let nh = 0.5 * n as f64;
        let log_a: Vec<f64> = (0..rows)
            .map(|r| {
                let (x0, x1) = (&form[r * d..r * d + n], &x1[r * n..(r + 1) * n]);
                let (y0, y1) = (&z[r * d..(r + 1) * d], &y1[r * d..(r + 1) * d]);
                // Forward: x₁ = x₀ + ε·drift(x₀) + ξ in chart σ, ξ ~ N(0, 2εν(x₀)I).
                let xi2: f64 = xi[r * n..(r + 1) * n].iter().map(|v| v * v).sum();
                let fwd = -xi2 / (4.0 * eps * sphere.g_inv(x0)) - nh * log_nu(x0) + nh * log_nu(x1);
                // Reverse, in the chart σ′ of y′: drift from ∇_y E(y′) = −β∇_y log p(x|y′).
                let s1 = sphere.sign_of(y1);
                let (b1, b0) = (sphere.chart_in(y1, s1), sphere.chart_in(y0, s1));
                let grad_e: Vec<f64> = g1[r * d..(r + 1) * d].iter().map(|g| -beta * g).collect();
                let dr = sphere.drift(&b1, s1, &grad_e, 1.0);
                let res2: f64 = (0..n).map(|j| (b0[j] - b1[j] - eps * dr[j]).powi(2)).sum();
                let rev =
                    -res2 / (4.0 * eps * sphere.g_inv(&b1)) - nh * log_nu(&b1) + nh * log_nu(&b0);
                beta * (ll1[r] - ll0[r]) + rev - fwd
            })
            .collect();
        let accept = self.decide(&log_a);
        for r in (0..rows).filter(|&r| accept[r]) {
            let y = &y1[r * d..(r + 1) * d];
            let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            // A finite log α implies a finite proposal; renormalising removes rounding.
            for (dst, v) in z[r * d..(r + 1) * d].iter_mut().zip(y) {
                *dst = v / norm;
            }
        }
        Ok(())
    }
}
