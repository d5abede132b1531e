//! Drawing samples from a trained energy model: unadjusted Langevin dynamics or MALA
//! (Metropolis-adjusted Langevin). Energies and gradients come from the GPU; the accept/reject
//! bookkeeping is done on the host, one read-back per step.

use rand_core::{RngCore, SeedableRng};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::Model;
use crate::train::energy_and_score;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// x ← x − h∇E(x) + √(2h) z.
    Langevin,
    /// The Langevin proposal accepted with the Metropolis–Hastings probability.
    Mala,
}

impl Sampler {
    pub fn from_name(s: &str) -> Result<Sampler> {
        match s {
            "langevin" => Ok(Sampler::Langevin),
            "mala" => Ok(Sampler::Mala),
            _ => Err(Error::Invalid(format!(
                "unknown sampler {s:?}; use langevin or mala"
            ))),
        }
    }
}

/// Standard normal draws from a seeded PCG (Box–Muller).
pub struct Normal {
    rng: rand_pcg::Pcg64,
    spare: Option<f64>,
}

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal {
            rng: rand_pcg::Pcg64::seed_from_u64(seed),
            spare: None,
        }
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }
}

/// What a sampling run produced.
pub struct Samples {
    /// (n, d) row-major.
    pub points: Vec<f32>,
    pub dim: usize,
    /// MALA: the fraction of accepted proposals (1 for Langevin).
    pub acceptance: f64,
}

/// Run `steps` steps of `sampler` with step size `h` from `init` ((n, d) row-major).
#[allow(clippy::too_many_arguments)]
pub fn sample<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    init: Vec<f32>,
    sampler: Sampler,
    steps: usize,
    h: f64,
    seed: u64,
    progress: bool,
) -> Result<Samples> {
    let d = model.arch.dim;
    if init.is_empty() || !init.len().is_multiple_of(d) {
        return Err(Error::Shape(format!(
            "{} initial values for {d}-dimensional points",
            init.len()
        )));
    }
    if !(h.is_finite() && h > 0.0) {
        return Err(Error::Invalid(format!(
            "step size must be positive, got {h}"
        )));
    }
    let n = init.len() / d;
    let mut rng = Normal::new(seed);
    let mut x: Vec<f64> = init.iter().map(|&v| v as f64).collect();
    let eval = |model: &mut Model<&'g Gpu>, x: &[f64]| -> Result<(Vec<f64>, Vec<f64>)> {
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let t = gpu.upload(n, d, &xf).map_err(|e| match e {
            Error::Invalid(m) => Error::Diverged(format!(
                "the sampler left the finite numbers ({m}); use a smaller --step-size"
            )),
            e => e,
        })?;
        let (e, s) = energy_and_score(gpu, model, &t, 4096)?;
        Ok((
            e.iter().map(|&v| v as f64).collect(),
            s.iter().map(|&v| v as f64).collect(),
        ))
    };
    let (mut e, mut s) = eval(model, &x)?;
    let (mut accepted, mut proposed) = (0usize, 0usize);
    let sq = (2.0 * h).sqrt();
    for step in 0..steps {
        // Proposal: x' = x + h·score(x) + √(2h) z (score = −∇E).
        let mut xp = vec![0.0; x.len()];
        for i in 0..x.len() {
            xp[i] = x[i] + h * s[i] + sq * rng.sample();
        }
        let (ep, sp) = eval(model, &xp)?;
        match sampler {
            Sampler::Langevin => {
                x = xp;
                e = ep;
                s = sp;
            }
            Sampler::Mala => {
                for r in 0..n {
                    let row = r * d..(r + 1) * d;
                    // log q(x | x') − log q(x' | x), q(b | a) ∝ exp(−‖b − a − h·score(a)‖²/(4h)).
                    let (mut fwd, mut back) = (0.0, 0.0);
                    for i in row.clone() {
                        let f = xp[i] - x[i] - h * s[i];
                        let b = x[i] - xp[i] - h * sp[i];
                        fwd += f * f;
                        back += b * b;
                    }
                    let log_a = e[r] - ep[r] + (fwd - back) / (4.0 * h);
                    proposed += 1;
                    if rng.uniform().ln() < log_a {
                        accepted += 1;
                        x[row.clone()].copy_from_slice(&xp[row.clone()]);
                        s[row.clone()].copy_from_slice(&sp[row]);
                        e[r] = ep[r];
                    }
                }
            }
        }
        if progress && (step + 1) % 100.max(steps / 10).max(1) == 0 {
            eprintln!("sample: step {}/{steps}", step + 1);
        }
    }
    let acceptance = if proposed > 0 {
        accepted as f64 / proposed as f64
    } else {
        1.0
    };
    Ok(Samples {
        points: x.iter().map(|&v| v as f32).collect(),
        dim: d,
        acceptance,
    })
}
