//! The (Riemannian) Langevin step from a batch, written once for every objective and
//! manifold: MVL takes it towards q^½ (SPEC §2 steps 1–4, §5), CD-1 towards q with x₁ held
//! constant (§3), and the Metropolis–Hastings diagnostic scores its proposal.
//!
//! In chart coordinates x with metric g = c(r)·I (see [`crate::manifold`]):
//! h = ∇ₓ[s·E(y(x)) − ½Σ log g_ii], drift = −g⁻¹h + ∂g⁻¹, ξ ~ N(0, 2εᵢ g⁻¹(x₀)),
//! x₁ = x₀ + εᵢ·drift + ξ. In R^d (g = I) this is x₁ = x₀ − εᵢ·s·∇E + ξ.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::manifold::{chart_terms, embed, split, Manifold};
use crate::objective::Energy;
use crate::tape::Var;

/// The energy as a function of chart coordinates, E(y(x)), each row in its own chart.
pub struct ChartEnergy<'a, 't, B: Backend> {
    pub model: &'a dyn Energy<'t, B>,
    pub manifold: Manifold,
    /// The sphere's chart signs (rows, 1); None elsewhere.
    pub sign: Option<Var<'t, B>>,
}

impl<'t, B: Backend> Energy<'t, B> for ChartEnergy<'_, 't, B> {
    fn energy(&self, x: Var<'t, B>) -> Result<Var<'t, B>> {
        self.model.energy(embed(self.manifold, x, self.sign)?)
    }
}

/// One step from x₀ and what the objectives need of it.
pub struct Step<'a, 't, B: Backend> {
    pub energy: ChartEnergy<'a, 't, B>,
    /// Chart points before the step (constants).
    pub x0: Var<'t, B>,
    /// E(y(x₀)) and ∇ₓ(E∘y)(x₀), both differentiable in θ.
    pub e0: Var<'t, B>,
    pub g: Var<'t, B>,
    /// Per-sample step εᵢ (rows, 1) and the noise ξ: constants.
    pub eps_i: Var<'t, B>,
    pub xi: Var<'t, B>,
    /// x₀ + εᵢ·drift + ξ: differentiable in θ through the drift.
    pub x1: Var<'t, B>,
}

/// max(1, a) = (a + 1 + |a − 1|)/2 for constants.
fn max1<'t, B: Backend>(a: Var<'t, B>) -> Result<Var<'t, B>> {
    a.affine(1.0, 1.0)?
        .add(a.affine(1.0, -1.0)?.square()?.sqrt()?)?
        .scale(0.5)
}

/// The drift −g⁻¹∇ₓ[s·E − ½Σ log g] + ∂g⁻¹ at chart points x with ∇ₓ(E∘y) = `g`.
fn drift<'t, B: Backend>(m: Manifold, x: Var<'t, B>, g: Var<'t, B>, s: f32) -> Result<Var<'t, B>> {
    match chart_terms(m, x)? {
        None => g.scale(-s),
        Some(t) => g
            .scale(s)?
            .sub(t.grad_half_log_det)?
            .mul(t.g_inv.neg()?)?
            .add(t.d_g_inv),
    }
}

/// One Langevin step towards q^s from the batch `form` (chart form, see [`crate::manifold`])
/// with standard-normal draws `z` (rows, ≥ n). With `rescale`, εᵢ = ε₀/max(1, ‖·‖²) of the
/// gradient in R^d (SPEC §2) and of the drift on a manifold (SPEC §5); else εᵢ = ε₀.
pub fn step<'a, 't, B: Backend>(
    m: Manifold,
    model: &'a dyn Energy<'t, B>,
    form: Var<'t, B>,
    z: Var<'t, B>,
    s: f32,
    eps0: f32,
    rescale: bool,
) -> Result<Step<'a, 't, B>> {
    let (x0, sign) = split(m, form)?;
    let (rows, n) = x0.shape();
    if z.shape().0 != rows || z.shape().1 < n {
        return Err(Error::Shape(format!(
            "noise {:?} for a batch of {rows} points with {n} chart coordinates",
            z.shape()
        )));
    }
    let z = if z.shape().1 > n {
        z.slice_cols(0, n)?
    } else {
        z
    };
    let energy = ChartEnergy {
        model,
        manifold: m,
        sign,
    };
    let (e0, g) = energy.energy_and_grad(x0, true)?;
    let dr = drift(m, x0, g, s)?;
    let eps_i = if rescale {
        let v = if m == Manifold::Euclidean { g } else { dr };
        let a = v.rowdot(v)?.detach();
        max1(a)?.recip()?.scale(eps0)?.detach()
    } else {
        x0.tape().full(rows, 1, eps0)?
    };
    let var = match chart_terms(m, x0)? {
        None => eps_i.scale(2.0)?,
        Some(t) => eps_i.mul(t.g_inv)?.scale(2.0)?,
    };
    let xi = z.mul(var.sqrt()?)?.detach();
    let x1 = x0.add(dr.mul(eps_i)?)?.add(xi)?;
    Ok(Step {
        energy,
        x0,
        e0,
        g,
        eps_i,
        xi,
        x1,
    })
}

impl<'t, B: Backend> Step<'_, 't, B> {
    /// E(y(x₁)), in x₁'s chart (each sample keeps its own).
    pub fn e1(&self) -> Result<Var<'t, B>> {
        self.energy.energy(self.x1)
    }

    /// Per-sample Metropolis–Hastings log acceptance ratio log α (rows, 1), a constant, of
    /// the proposal with the same εᵢ and ξ towards q (s = 1). With ν = g⁻¹ and chart energy
    /// Ẽ = E − ½Σ log g: log α = Ẽ(x₀) − Ẽ(x′) + log q(x₀|x′) − log q(x′|x₀), where
    /// log q(b|a) = −‖b − a − εᵢ·drift(a)‖²/(4εᵢν(a)) − (n/2) log ν(a).
    ///
    /// For a step taken with s = 1 the proposal x′ is [`Step::x1`]. The reverse move is
    /// scored in x₀'s chart, so accepting x₁ with probability min(1, α) leaves q invariant
    /// for a fixed chart; a sampler whose chart follows the point (the sphere's hemisphere
    /// flip) must score a move into the other chart there, as [`crate::ais`] does.
    pub fn mh_log_alpha(&self) -> Result<Var<'t, B>> {
        let m = self.energy.manifold;
        let n = self.x0.shape().1 as f32;
        let g0 = self.g.detach();
        let xp = self
            .x0
            .add(drift(m, self.x0, g0, 1.0)?.mul(self.eps_i)?)?
            .add(self.xi)?
            .detach();
        let (ep, gp) = self.energy.energy_and_grad(xp, false)?;
        let back = self
            .x0
            .sub(xp)?
            .sub(drift(m, xp, gp, 1.0)?.mul(self.eps_i)?)?;
        let four_eps = self.eps_i.scale(4.0)?;
        let mut log_a = self.e0.detach().sub(ep)?;
        match (chart_terms(m, self.x0)?, chart_terms(m, xp)?) {
            (Some(t0), Some(tp)) => {
                log_a = log_a
                    .sub(back.rowdot(back)?.div(four_eps.mul(tp.g_inv)?)?)?
                    .add(self.xi.rowdot(self.xi)?.div(four_eps.mul(t0.g_inv)?)?)?
                    .add(t0.g_inv.log()?.sub(tp.g_inv.log()?)?.scale(n)?)?;
            }
            _ => {
                log_a = log_a
                    .sub(back.rowdot(back)?.div(four_eps)?)?
                    .add(self.xi.rowdot(self.xi)?.div(four_eps)?)?;
            }
        }
        Ok(log_a.detach())
    }

    /// Mean Metropolis–Hastings acceptance probability min(1, α) over the batch, with α from
    /// [`Step::mh_log_alpha`]: a diagnostic, never part of a loss.
    pub fn mh_acceptance(&self) -> Result<Var<'t, B>> {
        let log_a = self.mh_log_alpha()?;
        // min(1, α) = exp(min(0, log α)), min(0, y) = (y − |y|)/2.
        let m0 = log_a.sub(log_a.square()?.sqrt()?)?.scale(0.5)?;
        Ok(m0.exp()?.mean_all()?.detach())
    }
}
