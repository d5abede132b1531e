//! Riemannian Langevin and MALA on S^n and H^n: each step in the chart of the chain's current
//! point (SPEC §5 with s = 1); densities with respect to the Riemannian volume.

use super::{chain_rngs, eval_chunk, initial, Options, SampleStats, Sampler, Start, Tally};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::manifold::Manifold;
use crate::model::Model;
use crate::progress::{Progress, Reporter};
use crate::rng::HostRng;

/// One chain's proposal on a manifold, in the chart of its current point (SPEC §5 with s = 1):
/// x′ = x + h·drift(x) + √(2h g⁻¹(x))·ξ. Returns x′'s embedded point and log q_M(y′|y), the
/// proposal density with respect to the Riemannian volume (chart density ÷ √|g(x′)|).
fn propose(m: Manifold, y: &[f64], grad_y: &[f64], h: f64, rng: &mut HostRng) -> (Vec<f64>, f64) {
    let sign = m.sign_of(y);
    let x = m.chart_in(y, sign);
    let n = x.len() as f64;
    let dr = m.drift(&x, sign, grad_y, 1.0);
    let nu = m.g_inv(&x);
    let sd = (2.0 * h * nu).sqrt();
    let mut xi2 = 0.0;
    let xp: Vec<f64> = x
        .iter()
        .zip(&dr)
        .map(|(a, d)| {
            let z = rng.normal();
            xi2 += z * z;
            a + h * d + sd * z
        })
        .collect();
    // log N(x′; x + h·drift, 2hν I) = −‖ξ‖²/2 − (n/2) log ν + const; ÷ √|g(x′)| = ν(x′)^{n/2}.
    let log_q = -0.5 * xi2 - 0.5 * n * nu.ln() + 0.5 * n * m.g_inv(&xp).ln();
    if !m.contains_chart(&xp) {
        return (vec![f64::NAN; y.len()], f64::NAN);
    }
    let mut yp = m.point(&xp, sign);
    if m == Manifold::Sphere {
        // Back onto the sphere exactly (f64 rounding in the chart map).
        let norm = yp.iter().map(|v| v * v).sum::<f64>().sqrt();
        yp.iter_mut().for_each(|v| *v /= norm);
    }
    (yp, log_q)
}

/// log q_M(y_to | y_from) of [`propose`], evaluated (in y_from's chart).
fn log_proposal(m: Manifold, from: &[f64], grad_from: &[f64], to: &[f64], h: f64) -> f64 {
    let sign = m.sign_of(from);
    let (x, xt) = (m.chart_in(from, sign), m.chart_in(to, sign));
    let n = x.len() as f64;
    let dr = m.drift(&x, sign, grad_from, 1.0);
    let nu = m.g_inv(&x);
    let res2: f64 = (0..x.len())
        .map(|j| (xt[j] - x[j] - h * dr[j]).powi(2))
        .sum();
    -res2 / (4.0 * h * nu) - 0.5 * n * nu.ln() + 0.5 * n * m.g_inv(&xt).ln()
}

/// [`run`] on S^n or H^n: Riemannian Langevin (every proposal inside the manifold accepted;
/// one that leaves the ball is not taken) or Riemannian MALA (targets exp(−E) with respect to
/// the Riemannian volume). Chains are stored as embedded points, so they never leave the
/// manifold; each step works in the chart of the chain's current point.
#[allow(clippy::too_many_arguments)]
pub(super) fn run<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    n: usize,
    start: Start<'_>,
    cfg: &Options,
    chunk: usize,
    on_chunk: &mut dyn FnMut(&[f32]) -> Result<()>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SampleStats> {
    let (md, h, m) = (model.arch.dim, cfg.step_size, cfg.manifold);
    if (m == Manifold::Sphere && md < 2) || md < 1 {
        return Err(Error::Shape(format!(
            "a model of {md} inputs cannot live on the {}",
            m.name()
        )));
    }
    // Chains are data points (sphere: unit vectors; ball: ball points); the model sees
    // their embedding (the ball's hyperboloid point has one more coordinate).
    let d = if m == Manifold::Hyperbolic {
        md - 1
    } else {
        md
    };
    let per_chain = cfg.steps.max(1);
    let mut reporter = Reporter::new(
        "sample",
        "chain steps",
        n.saturating_mul(per_chain),
        progress,
    );
    let mut tally = Tally::default();
    for c0 in (0..n).step_by(chunk) {
        let k = chunk.min(n - c0);
        let mut rngs = chain_rngs(cfg.seed, c0, k);
        let mut y = initial(&start, &mut rngs, c0, d);
        if let Start::Normal(_) = start {
            // Onto the manifold: normalised (uniform on S^n), or v ↦ tanh(‖v‖/2)·v/‖v‖ into
            // the ball.
            for p in y.chunks_mut(d) {
                if m == Manifold::Sphere && p.iter().all(|a| *a == 0.0) {
                    p[d - 1] = 1.0; // --init-std 0 on the sphere: start at the north pole
                }
                let norm = p.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-300);
                let scale = match m {
                    Manifold::Sphere => 1.0 / norm,
                    _ => (norm / 2.0).tanh() / norm,
                };
                p.iter_mut().for_each(|a| *a *= scale);
            }
        }
        for r in 0..k {
            m.to_chart(&y[r * d..(r + 1) * d])
                .map_err(|e| Error::Invalid(format!("starting point of chain {}: {e}", c0 + r)))?;
        }
        let eval = |model: &mut Model<&'g Gpu>, y: &[f64], step: usize| {
            let input: Vec<f64> = y.chunks(d).flat_map(|p| m.model_input(p)).collect();
            eval_chunk(gpu, model, &input, md, c0, step)
        };
        let (mut e, mut s) = eval(model, &y, 0)?;
        let mut yp = y.clone();
        let mut fwd = vec![0.0; k];
        for step in 1..=cfg.steps {
            for (r, rng) in rngs.iter_mut().enumerate() {
                let row = r * d..(r + 1) * d;
                let grad: Vec<f64> = s[r * md..(r + 1) * md].iter().map(|v| -v).collect();
                let (p, lq) = propose(m, &y[row.clone()], &grad, h, rng);
                if p[0].is_nan() {
                    // Left the ball: stay (the proposal has no density there).
                    yp[row.clone()].copy_from_slice(&y[row]);
                    fwd[r] = f64::NAN;
                } else {
                    yp[row].copy_from_slice(&p);
                    fwd[r] = lq;
                }
            }
            let (ep, sp) = eval(model, &yp, step)?;
            for (r, rng) in rngs.iter_mut().enumerate() {
                let row = r * d..(r + 1) * d;
                let take = if fwd[r].is_nan() {
                    tally.proposed += usize::from(cfg.sampler == Sampler::Mala);
                    false
                } else if cfg.sampler == Sampler::Langevin {
                    true
                } else {
                    let grad_p: Vec<f64> = sp[r * md..(r + 1) * md].iter().map(|v| -v).collect();
                    let back = log_proposal(m, &yp[row.clone()], &grad_p, &y[row.clone()], h);
                    let log_a = e[r] - ep[r] + back - fwd[r];
                    tally.proposed += 1;
                    rng.uniform().ln() < log_a
                };
                if take {
                    if cfg.sampler == Sampler::Mala {
                        tally.accepted += 1;
                    }
                    y[row.clone()].copy_from_slice(&yp[row]);
                    s[r * md..(r + 1) * md].copy_from_slice(&sp[r * md..(r + 1) * md]);
                    e[r] = ep[r];
                }
            }
            reporter.update(c0 * per_chain + step * k, || tally.detail());
        }
        let points: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        on_chunk(&points)?;
        if cfg.steps == 0 {
            reporter.update(c0 + k, String::new);
        }
    }
    Ok(tally.stats(n, d))
}
