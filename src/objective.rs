//! The MVL family of objectives (SPEC §2–4). Each returns per-sample values whose mean is the
//! loss to minimise (for CD-1: a surrogate whose gradient is the CD-1 estimate, and which is
//! *not* a loss). Equation numbers refer to the paper.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::langevin::{step, Step};
use crate::manifold::Manifold;
use crate::ops::Axis;
use crate::particles::{log_kde, rbf_kernel, scott_bandwidth, svgd_direction};
use crate::tape::Var;

/// Anything that maps a batch (rows, d) to per-sample energies (rows, 1) on a tape.
pub trait Energy<'t, B: Backend> {
    fn energy(&self, x: Var<'t, B>) -> Result<Var<'t, B>>;

    /// (E(x), ∇ₓE(x)); with `create_graph` the gradient stays differentiable in θ.
    fn energy_and_grad(
        &self,
        x: Var<'t, B>,
        create_graph: bool,
    ) -> Result<(Var<'t, B>, Var<'t, B>)> {
        let e = self.energy(x)?;
        let g = x.tape().grad(e.sum(Axis::All)?, &[x], create_graph)?[0];
        Ok((e, g))
    }
}

/// Energies given by a closure, e.g. closed-form test energies.
pub struct EnergyFn<F>(pub F);

impl<'t, B: Backend + 't, F: Fn(Var<'t, B>) -> Result<Var<'t, B>>> Energy<'t, B> for EnergyFn<F> {
    fn energy(&self, x: Var<'t, B>) -> Result<Var<'t, B>> {
        (self.0)(x)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// MVL with Langevin dynamics (SPEC §2).
    Mvl,
    /// Denoising score matching, eq. 12, scaled by ½ε⁻² (estimates J + d/2ε).
    Dsm,
    /// Variance-reduced DSM, eq. 15, scaled by ½ (estimates J).
    VrDsm,
    /// CD-1 with Langevin dynamics (eq. 16): a gradient estimate, not a loss.
    Cd1,
    /// Sliced score matching, v uniform on the sphere of radius √d.
    Ssm,
    /// Sliced score matching with variance reduction, v ~ N(0, I).
    SsmVr,
    /// Exact score matching: d backward passes for the Laplacian.
    ExactSm,
    /// MVL with the SPOS sampler (SPEC §6): α·SVGD + (1 − α)·Langevin.
    Spos,
    /// MVL with SVGD (SPOS with α = 1): the kernelized Stein discrepancy.
    Svgd,
    /// MVL with birth–death accelerated Langevin (Wasserstein–Fisher–Rao space).
    BirthDeath,
}

impl Objective {
    pub const ALL: [Objective; 10] = [
        Objective::Mvl,
        Objective::Dsm,
        Objective::VrDsm,
        Objective::Cd1,
        Objective::Ssm,
        Objective::SsmVr,
        Objective::ExactSm,
        Objective::Spos,
        Objective::Svgd,
        Objective::BirthDeath,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Objective::Mvl => "mvl",
            Objective::Dsm => "dsm",
            Objective::VrDsm => "vr-dsm",
            Objective::Cd1 => "cd1",
            Objective::Ssm => "ssm",
            Objective::SsmVr => "ssm-vr",
            Objective::ExactSm => "exact-sm",
            Objective::Spos => "spos",
            Objective::Svgd => "svgd",
            Objective::BirthDeath => "birth-death",
        }
    }

    pub fn from_name(s: &str) -> Result<Objective> {
        Objective::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Objective::ALL.iter().map(|o| o.name()).collect();
                Error::Invalid(format!(
                    "unknown objective {s:?}; use one of {}",
                    names.join(", ")
                ))
            })
    }

    /// Whether the objective's value estimates the score-matching loss J (CD-1's does not).
    pub fn is_loss(self) -> bool {
        self != Objective::Cd1
    }

    /// Whether it consumes a (rows, d) standard-normal draw.
    pub fn needs_noise(self) -> bool {
        self != Objective::ExactSm
    }
}

/// Settings shared by the objectives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Base step ε₀ (for DSM: the noise variance σ² = ε).
    pub eps: f32,
    /// Subtract the control variate (MVL, CD-1).
    pub control_variate: bool,
    /// Per-sample step εᵢ = ε₀ / max(1, ‖gᵢ‖²) (MVL).
    pub rescale: bool,
    /// Energy-scale regulariser c·(mean E(x₁)² + mean E(x₀)²) (MVL); 0 = off.
    pub energy_reg: f32,
    /// Compute the Metropolis–Hastings acceptance diagnostic (MVL; costs one more gradient).
    pub mh_diagnostic: bool,
    /// SPOS: the weight α of the SVGD direction (1 − α on Langevin).
    pub alpha: f32,
    /// SPOS/SVGD: the RBF kernel's bandwidth h; None: the median heuristic of SPEC §6 (which
    /// reads the batch's distances back to the host each step).
    pub kernel_bandwidth: Option<f32>,
    /// Birth–death: the data density estimate's Gaussian bandwidth σ; None: Scott's rule
    /// (host round trip per step).
    pub kde_bandwidth: Option<f32>,
    /// Where the data live; batches are in the manifold's chart form (see
    /// [`crate::manifold`]). MVL and CD-1 take the Riemannian step there (SPEC §5).
    pub manifold: Manifold,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            eps: 1e-3,
            control_variate: true,
            rescale: true,
            energy_reg: 0.0,
            mh_diagnostic: false,
            alpha: 0.5,
            kernel_bandwidth: None,
            kde_bandwidth: None,
            manifold: Manifold::Euclidean,
        }
    }
}

/// What an objective produced for one batch.
pub struct Estimate<'t, B: Backend> {
    /// Per-sample values (rows, 1): their mean is the estimate (plus the regulariser).
    pub per_sample: Var<'t, B>,
    /// The scalar to differentiate (mean of `per_sample`, plus the regulariser).
    pub loss: Var<'t, B>,
    /// CD-1 only: the usual monitoring value mean E(x₀) − mean E(x₁), which is not a loss.
    pub monitor: Option<Var<'t, B>>,
    /// MVL with `mh_diagnostic`: the mean Metropolis–Hastings acceptance probability.
    pub acceptance: Option<Var<'t, B>>,
}

/// Per-sample Langevin MVL values −ediff/εᵢ (SPEC §2 steps 1–6, §5 on manifolds): ediff·(ε₀/εᵢ)
/// with loss = −mean(ediff)/ε₀; with the step taken and E(x₁).
#[allow(clippy::type_complexity)]
fn langevin_mvl<'a, 't, B: Backend>(
    model: &'a dyn Energy<'t, B>,
    x0: Var<'t, B>,
    z: Var<'t, B>,
    cfg: &Config,
) -> Result<(Var<'t, B>, Step<'a, 't, B>, Var<'t, B>)> {
    let st = step(cfg.manifold, model, x0, z, 0.5, cfg.eps, cfg.rescale)?;
    let e1 = st.e1()?;
    let mut diff = e1.sub(st.e0)?;
    if cfg.control_variate {
        diff = diff.sub(st.g.rowdot(st.xi)?)?;
    }
    Ok((diff.div(st.eps_i)?.neg()?, st, e1))
}

/// Evaluate `objective` on batch `x0` (a constant) with standard-normal draw `z` (rows, d).
pub fn estimate<'t, B: Backend>(
    objective: Objective,
    cfg: &Config,
    model: &dyn Energy<'t, B>,
    x0: Var<'t, B>,
    z: Option<Var<'t, B>>,
) -> Result<Estimate<'t, B>> {
    let (rows, d) = x0.shape();
    if rows == 0 || d == 0 {
        return Err(Error::Invalid(format!(
            "empty batch ({rows} rows x {d} columns)"
        )));
    }
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
        return Err(Error::Invalid(format!(
            "step size eps must be positive, got {}",
            cfg.eps
        )));
    }
    let z = match (objective.needs_noise(), z) {
        (true, Some(z)) if z.shape() == (rows, d) => Some(z),
        (true, Some(z)) => {
            return Err(Error::Shape(format!(
                "noise has shape {:?}, the batch {:?}",
                z.shape(),
                (rows, d)
            )))
        }
        (true, None) => {
            return Err(Error::Invalid(format!(
                "{} needs a noise draw",
                objective.name()
            )))
        }
        (false, _) => None,
    };
    if cfg.manifold != Manifold::Euclidean && !matches!(objective, Objective::Mvl | Objective::Cd1)
    {
        return Err(Error::Invalid(format!(
            "{} is implemented in R^d only; on the {} use mvl or cd1",
            objective.name(),
            cfg.manifold.name()
        )));
    }
    let eps = cfg.eps;
    let mut monitor = None;
    let mut acceptance = None;
    let mut reg = None;
    let per_sample = match objective {
        Objective::Mvl => {
            // SPEC §2 steps 1–6 (eqs. 10–11, control variate of §3.2.1); §5 on manifolds.
            let (per_sample, st, e1) = langevin_mvl(model, x0, z.expect("checked"), cfg)?;
            if cfg.energy_reg > 0.0 {
                let r = e1.square()?.mean_all()?.add(st.e0.square()?.mean_all()?)?;
                reg = Some(r.scale(cfg.energy_reg)?);
            }
            if cfg.mh_diagnostic {
                acceptance = Some(st.mh_acceptance()?);
            }
            per_sample
        }
        Objective::Spos | Objective::Svgd => {
            // SPEC §6: x₁ = x₀ + α·εᵢ·φ(x₀) + (1 − α)(−εᵢ·½g + ξ), control variate (1 − α)g·ξ.
            let alpha = if objective == Objective::Svgd {
                1.0
            } else {
                cfg.alpha
            };
            if !(0.0..=1.0).contains(&alpha) {
                return Err(Error::Invalid(format!(
                    "SPOS α must be in [0, 1], got {alpha}"
                )));
            }
            let st = step(
                cfg.manifold,
                model,
                x0,
                z.expect("checked"),
                0.5,
                eps,
                cfg.rescale,
            )?;
            let x1 = if alpha == 0.0 {
                st.x1
            } else {
                let (k, h) = rbf_kernel(x0, cfg.kernel_bandwidth)?;
                let phi = svgd_direction(x0, st.g, k, h, 0.5)?;
                let langevin = st.x1.sub(x0)?.scale(1.0 - alpha)?;
                x0.add(langevin)?.add(phi.mul(st.eps_i)?.scale(alpha)?)?
            };
            let mut diff = st.energy.energy(x1)?.sub(st.e0)?;
            if cfg.control_variate && alpha < 1.0 {
                diff = diff.sub(st.g.rowdot(st.xi)?.scale(1.0 - alpha)?)?;
            }
            diff.div(st.eps_i)?.neg()?
        }
        Objective::BirthDeath => {
            // Langevin MVL plus the Fisher–Rao part of the flow towards q^½ taken in
            // expectation (docs/birth_death.md): (Eᵢ − Ē)(log p̂ᵢ − mean log p̂) + ½(Eᵢ − Ē)².
            let (langevin, st, _) = langevin_mvl(model, x0, z.expect("checked"), cfg)?;
            // The data density estimate: a constant of the batch, made on the host in f64.
            let dev = x0.tape().backend();
            let host = dev.to_host(&x0.value())?;
            let sigma = match cfg.kde_bandwidth {
                Some(s) => s as f64,
                None => scott_bandwidth(&host, rows, d),
            };
            let lp = log_kde(&host, rows, d, sigma)?;
            let lp = x0.tape().leaf(dev.upload_host(rows, 1, &lp)?);
            let lc = lp.sub(lp.mean_all()?)?;
            let c = st.e0.sub(st.e0.mean_all()?)?;
            langevin.add(c.mul(lc)?)?.add(c.square()?.scale(0.5)?)?
        }
        Objective::Dsm | Objective::VrDsm => {
            // L = ‖√ε z − ε∇E(x + √ε z)‖² (eq. 12 with σ² = ε); ε⁻²L → 2J + const (eq. 13), so
            // we report ½ε⁻²L (J + d/2ε for DSM) and ½ε⁻²[L − (ε‖z‖² − 2ε^{3/2}zᵀ∇E(x))] (J,
            // eq. 15): every score-matching objective here then estimates the same J.
            let z = z.expect("checked");
            let zs = z.scale(eps.sqrt())?;
            let xt = x0.add(zs)?;
            let (_, gt) = model.energy_and_grad(xt, true)?;
            let r = zs.sub(gt.scale(eps)?)?;
            let mut l = r.rowdot(r)?;
            if objective == Objective::VrDsm {
                // The control variate from the same √ε·z as L, so that its ε‖z‖² cancels exactly.
                let (_, g) = model.energy_and_grad(x0, true)?;
                let cv = zs.rowdot(zs)?.sub(zs.rowdot(g)?.scale(2.0 * eps)?)?;
                l = l.sub(cv)?;
            }
            l.scale(0.5 / (eps * eps))?
        }
        Objective::Cd1 => {
            // x₁ one Langevin step towards q (s = 1), held constant. ∂θ of
            // [E(x₀) − E(x₁) + g·ξ]/ε is the CD-1 estimate of ∂θJ (eq. 16, control variate §3.3).
            let st = step(
                cfg.manifold,
                model,
                x0,
                z.expect("checked"),
                1.0,
                eps,
                false,
            )?;
            let e1 = st.energy.energy(st.x1.detach())?;
            monitor = Some(st.e0.sub(e1)?.mean_all()?);
            let mut s = st.e0.sub(e1)?;
            if cfg.control_variate {
                s = s.add(st.g.rowdot(st.xi)?)?;
            }
            s.scale(1.0 / eps)?
        }
        Objective::Ssm | Objective::SsmVr => {
            // ½(vᵀ∇log q)² + vᵀ∇ₓ(vᵀ∇log q) with ∇log q = −g (SSM-VR: ½‖g‖² for the first term).
            let z = z.expect("checked");
            let v = if objective == Objective::Ssm {
                let n = z.rowdot(z)?.sqrt()?;
                z.div(n)?.scale((d as f32).sqrt())?
            } else {
                z
            };
            let (_, g) = model.energy_and_grad(x0, true)?;
            let vg = v.rowdot(g)?;
            let hv = x0.tape().grad(vg.sum_all()?, &[x0], true)?[0];
            let first = if objective == Objective::Ssm {
                vg.square()?.scale(0.5)?
            } else {
                g.rowdot(g)?.scale(0.5)?
            };
            first.sub(v.rowdot(hv)?)?
        }
        Objective::ExactSm => {
            // J = ½‖g‖² − ΔE; the Laplacian takes one backward pass per input dimension.
            let (_, g) = model.energy_and_grad(x0, true)?;
            let mut lap: Option<Var<'t, B>> = None;
            for j in 0..d {
                let gj = g.slice_cols(j, j + 1)?;
                let h = x0.tape().grad(gj.sum_all()?, &[x0], true)?[0];
                let hjj = h.slice_cols(j, j + 1)?;
                lap = Some(match lap {
                    Some(l) => l.add(hjj)?,
                    None => hjj,
                });
            }
            g.rowdot(g)?.scale(0.5)?.sub(lap.expect("d > 0"))?
        }
    };
    let mut loss = per_sample.mean_all()?;
    if let Some(r) = reg {
        loss = loss.add(r)?;
    }
    Ok(Estimate {
        per_sample,
        loss,
        monitor,
        acceptance,
    })
}
