//! Stein variational gradient descent (Liu & Wang 2016) for trained models in R^d: a group of
//! particles moves deterministically, x ← x + h·φ(x) with
//! φ(xᵢ) = (1/m) Σⱼ [K(xⱼ, xᵢ)·s(xⱼ) + ∇_{xⱼ}K(xⱼ, xᵢ)], s = −∇E, K the RBF kernel with the
//! median bandwidth of SPEC §6 recomputed every step. Particles interact within groups of at
//! most [`GROUP`] (the kernel is m × m), so unlike the Langevin samplers the result depends on
//! how the particles are grouped; the groups are independent systems.

use super::{chain_rngs, eval_chunk, initial, Options, SampleStats, Start};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::Model;
use crate::particles::median_bandwidth;
use crate::progress::{Progress, Reporter};

/// Particles per interacting group.
pub const GROUP: usize = 1024;

/// φ at every particle of one group (m × d, host f64), from the scores s = −∇E.
pub fn direction(x: &[f64], s: &[f64], d: usize) -> Vec<f64> {
    let m = x.len() / d;
    let row = |v: &[f64], i: usize| v[i * d..(i + 1) * d].to_vec();
    let mut d2 = vec![0.0; m * m];
    for i in 0..m {
        for j in 0..m {
            d2[i * m + j] = row(x, i)
                .iter()
                .zip(row(x, j))
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
        }
    }
    let h = median_bandwidth(&d2, m);
    let mut phi = vec![0.0; m * d];
    for i in 0..m {
        for j in 0..m {
            let k = (-d2[i * m + j] / (2.0 * h)).exp();
            for c in 0..d {
                // K(xⱼ, xᵢ)·s(xⱼ) + ∇_{xⱼ}K(xⱼ, xᵢ), the latter K·(xᵢ − xⱼ)/h.
                phi[i * d + c] += k * (s[j * d + c] + (x[i * d + c] - x[j * d + c]) / h);
            }
        }
    }
    phi.iter_mut().for_each(|v| *v /= m as f64);
    phi
}

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
    let d = model.arch.dim;
    let group = chunk.min(GROUP);
    let per = cfg.steps.max(1);
    let mut reporter = Reporter::new("sample", "particle steps", n.saturating_mul(per), progress);
    for c0 in (0..n).step_by(group) {
        let m = group.min(n - c0);
        let mut x = initial(&start, &mut chain_rngs(cfg.seed, c0, m), c0, d);
        for step in 1..=cfg.steps {
            let (_, s) = eval_chunk(gpu, model, &x, d, c0, step - 1)?;
            let phi = direction(&x, &s, d);
            x.iter_mut()
                .zip(&phi)
                .for_each(|(a, p)| *a += cfg.step_size * p);
            reporter.update(c0 * per + step * m, String::new);
        }
        // The final positions must be finite too.
        eval_chunk(gpu, model, &x, d, c0, cfg.steps)?;
        let points: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        on_chunk(&points)?;
    }
    Ok(SampleStats {
        chains: n,
        dim: d,
        acceptance: 1.0,
    })
}
