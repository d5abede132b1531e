//! Drawing samples from a trained energy model: unadjusted Langevin dynamics or MALA
//! (Metropolis-adjusted Langevin). Energies and gradients come from the GPU; the accept/reject
//! bookkeeping is done on the host, one read-back per step.
//!
//! Chains run in chunks of at most [`DEFAULT_CHUNK`] chains, and each finished chunk is
//! handed to a callback, so memory stays bounded for any number of samples. Every chain draws
//! its randomness (initial point, noise, accept/reject) from its own stream, named by
//! (seed, chain index): the samples do not depend on the chunk size.
//!
//! ```no_run
//! use wmvl::sample::{sample_points, Options, Sampler};
//! # fn main() -> wmvl::Result<()> {
//! # let gpu = wmvl::gpu::Gpu::new()?;
//! # let (mut model, _) = wmvl::app::load_model(&gpu, "model.safetensors".as_ref())?;
//! let opts = Options { sampler: Sampler::Mala, ..Options::default() };
//! let s = sample_points(&gpu, &mut model, 1000, &opts, &mut |p| eprintln!("{}", p.line()))?;
//! println!("acceptance {:.3}", s.acceptance);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::manifold::Manifold;
use crate::model::Model;
use crate::progress::{Progress, Reporter};
use crate::rng::HostRng;
use crate::train::energy_and_score;

mod riemannian;
pub mod svgd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// x ← x − h∇E(x) + √(2h) z.
    Langevin,
    /// The Langevin proposal accepted with the Metropolis–Hastings probability.
    Mala,
    /// Stein variational gradient descent (R^d; particles interact in groups, see [`svgd`]).
    Svgd,
}

impl Sampler {
    pub fn from_name(s: &str) -> Result<Sampler> {
        match s {
            "langevin" => Ok(Sampler::Langevin),
            "mala" => Ok(Sampler::Mala),
            "svgd" => Ok(Sampler::Svgd),
            _ => Err(Error::Invalid(format!(
                "unknown sampler {s:?}; use langevin, mala or svgd"
            ))),
        }
    }
}

/// Chains per chunk by default: 65 536 chains of a few dimensions take a few MiB.
pub const DEFAULT_CHUNK: usize = 65_536;

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub sampler: Sampler,
    /// Steps per chain.
    pub steps: usize,
    /// Step size h.
    pub step_size: f64,
    pub seed: u64,
    /// Chains start at N(0, init_std² I), drawn from their own streams (on the sphere:
    /// normalised, i.e. uniform; on the ball: mapped inside by v ↦ tanh(‖v‖/2)·v/‖v‖).
    pub init_std: f64,
    /// Where the chains run: Riemannian Langevin / MALA in charts on S^n and H^n.
    pub manifold: Manifold,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sampler: Sampler::Langevin,
            steps: 1000,
            step_size: 1e-2,
            seed: 0,
            init_std: 1.0,
            manifold: Manifold::Euclidean,
        }
    }
}

/// What a sampling run reports besides the points.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleStats {
    pub chains: usize,
    pub dim: usize,
    /// MALA: the fraction of accepted proposals (1 for Langevin).
    pub acceptance: f64,
}

/// Accepted and proposed MALA moves: the acceptance rate shown and returned.
#[derive(Default)]
pub(crate) struct Tally {
    pub accepted: usize,
    pub proposed: usize,
}

impl Tally {
    /// For the progress line: "acceptance 0.93" once something was proposed.
    pub fn detail(&self) -> String {
        if self.proposed > 0 {
            format!(
                "acceptance {:.3}",
                self.accepted as f64 / self.proposed as f64
            )
        } else {
            String::new()
        }
    }

    /// The run's statistics (acceptance 1 when nothing was proposed: Langevin).
    pub fn stats(&self, chains: usize, dim: usize) -> SampleStats {
        SampleStats {
            chains,
            dim,
            acceptance: if self.proposed > 0 {
                self.accepted as f64 / self.proposed as f64
            } else {
                1.0
            },
        }
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

/// Where chains start.
pub(crate) enum Start<'a> {
    /// N(0, std² I) from each chain's own stream.
    Normal(f64),
    /// Given points, (n, d) row-major.
    Points(&'a [f32]),
}

/// Runs `n` chains in chunks of at most [`DEFAULT_CHUNK`], calling `on_chunk` with each
/// finished chunk's points ((chunk rows, d) row-major, in chain order) and `progress` as it
/// goes (unit: chain steps, i.e. steps × chains; chains when `opts.steps` is 0).
///
/// Errors: [`Error::Invalid`] for n = 0, a non-positive step size or a negative `init_std`,
/// and when a chain leaves the finite numbers (the message names the step); whatever
/// `on_chunk` returns, which stops sampling.
pub fn sample_chunked<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    n: usize,
    opts: &Options,
    on_chunk: &mut dyn FnMut(&[f32]) -> Result<()>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SampleStats> {
    sample_chunked_by(gpu, model, n, opts, DEFAULT_CHUNK, on_chunk, progress)
}

/// [`sample_chunked`] with at most `chunk` chains at once (the samples do not depend on it).
pub fn sample_chunked_by<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    n: usize,
    opts: &Options,
    chunk: usize,
    on_chunk: &mut dyn FnMut(&[f32]) -> Result<()>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SampleStats> {
    if !(opts.init_std.is_finite() && opts.init_std >= 0.0) {
        return Err(Error::Invalid(format!(
            "the initial spread must be a finite number >= 0, got {}; use e.g. --init-std 1",
            opts.init_std
        )));
    }
    run(
        gpu,
        model,
        n,
        Start::Normal(opts.init_std),
        opts,
        chunk,
        on_chunk,
        progress,
    )
}

/// [`sample_chunked`] collecting every point: for numbers of samples that fit in memory.
pub fn sample_points<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    n: usize,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Samples> {
    let mut points = Vec::new();
    let stats = sample_chunked(
        gpu,
        model,
        n,
        opts,
        &mut |c| {
            points.extend_from_slice(c);
            Ok(())
        },
        progress,
    )?;
    Ok(Samples {
        points,
        dim: stats.dim,
        acceptance: stats.acceptance,
    })
}

/// The former interface, kept for callers that make their own initial points ((n, d)
/// row-major): runs `steps` steps of `sampler` with step size `h` and returns all points.
/// `progress` is ignored (the library does not print); use [`sample_chunked`] for progress.
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
    let _ = progress;
    let d = model.arch.dim;
    if init.is_empty() || !init.len().is_multiple_of(d) {
        return Err(Error::Shape(format!(
            "{} initial values for {d}-dimensional points; give a whole number of points",
            init.len()
        )));
    }
    let opts = Options {
        sampler,
        steps,
        step_size: h,
        seed,
        ..Options::default()
    };
    let mut points = Vec::with_capacity(init.len());
    let stats = run(
        gpu,
        model,
        init.len() / d,
        Start::Points(&init),
        &opts,
        DEFAULT_CHUNK,
        &mut |c| {
            points.extend_from_slice(c);
            Ok(())
        },
        &mut crate::progress::quiet,
    )?;
    Ok(Samples {
        points,
        dim: d,
        acceptance: stats.acceptance,
    })
}

#[allow(clippy::too_many_arguments)]
fn run<'g>(
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
    let h = cfg.step_size;
    if n == 0 {
        return Err(Error::Invalid(
            "no chains to run; ask for at least one sample".into(),
        ));
    }
    if !(h.is_finite() && h > 0.0) {
        return Err(Error::Invalid(format!(
            "step size must be positive, got {h}; use e.g. --step-size 0.01"
        )));
    }
    if chunk == 0 {
        return Err(Error::Invalid("chunk of 0 chains; use at least 1".into()));
    }
    if cfg.sampler == Sampler::Svgd {
        if cfg.manifold != Manifold::Euclidean {
            return Err(Error::Invalid(format!(
                "the SVGD sampler runs in R^d; on the {} use langevin or mala",
                cfg.manifold.name()
            )));
        }
        return svgd::run(gpu, model, n, start, cfg, chunk, on_chunk, progress);
    }
    if cfg.manifold != Manifold::Euclidean {
        return riemannian::run(gpu, model, n, start, cfg, chunk, on_chunk, progress);
    }
    let per_chain = cfg.steps.max(1);
    let mut reporter = Reporter::new(
        "sample",
        "chain steps",
        n.saturating_mul(per_chain),
        progress,
    );
    let mut tally = Tally::default();
    for c0 in (0..n).step_by(chunk) {
        let m = chunk.min(n - c0);
        let mut rngs = chain_rngs(cfg.seed, c0, m);
        let mut x = initial(&start, &mut rngs, c0, d);
        let eval = |model: &mut Model<&'g Gpu>, x: &[f64], step: usize| {
            eval_chunk(gpu, model, x, d, c0, step)
        };
        let (mut e, mut s) = eval(model, &x, 0)?;
        let sq = (2.0 * h).sqrt();
        let mut xp = vec![0.0; x.len()];
        for step in 1..=cfg.steps {
            // Proposal: x' = x + h·score(x) + √(2h) z (score = −∇E).
            for (r, rng) in rngs.iter_mut().enumerate() {
                for i in r * d..(r + 1) * d {
                    xp[i] = x[i] + h * s[i] + sq * rng.normal();
                }
            }
            let (ep, sp) = eval(model, &xp, step)?;
            match cfg.sampler {
                // (SVGD is dispatched to its own loop above.)
                Sampler::Langevin | Sampler::Svgd => {
                    std::mem::swap(&mut x, &mut xp);
                    e = ep;
                    s = sp;
                }
                Sampler::Mala => {
                    for (r, rng) in rngs.iter_mut().enumerate() {
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
                        tally.proposed += 1;
                        if rng.uniform().ln() < log_a {
                            tally.accepted += 1;
                            x[row.clone()].copy_from_slice(&xp[row.clone()]);
                            s[row.clone()].copy_from_slice(&sp[row]);
                            e[r] = ep[r];
                        }
                    }
                }
            }
            reporter.update(c0 * per_chain + step * m, || tally.detail());
        }
        let points: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        on_chunk(&points)?;
        if cfg.steps == 0 {
            reporter.update(c0 + m, String::new);
        }
    }
    Ok(tally.stats(n, d))
}

/// The random streams of chains c0..c0+m: one per chain, named by (seed, chain index).
pub(crate) fn chain_rngs(seed: u64, c0: usize, m: usize) -> Vec<HostRng> {
    (c0..c0 + m)
        .map(|c| HostRng::for_stream(seed, c as u64))
        .collect()
}

/// The chains' starting points (m × d): N(0, std²I) from each chain's stream (which goes on
/// to drive its steps), or the given points.
pub(crate) fn initial(start: &Start<'_>, rngs: &mut [HostRng], c0: usize, d: usize) -> Vec<f64> {
    match start {
        Start::Normal(std) => rngs
            .iter_mut()
            .flat_map(|r| (0..d).map(|_| r.normal() * std).collect::<Vec<_>>())
            .collect(),
        Start::Points(p) => p[c0 * d..(c0 + rngs.len()) * d]
            .iter()
            .map(|&v| v as f64)
            .collect(),
    }
}

/// Energies and scores of one chunk's points, refusing points, energies or scores that are
/// not finite f32 numbers (the chains have run away; step 0 means the starting points).
pub(crate) fn eval_chunk<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    x: &[f64],
    d: usize,
    first_chain: usize,
    step: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let lost = |what: &str, i: usize| {
        let chain = first_chain + i / d.max(1);
        if step == 0 {
            Error::Invalid(format!(
                "{what} of chain {chain} is not a finite f32 at its starting point; \
                 start the chains closer to the data (e.g. a smaller --init-std)"
            ))
        } else {
            Error::Invalid(format!(
                "sampling left the finite numbers at step {step} ({what} of chain {chain} \
                 is not a finite f32); use a smaller --step-size"
            ))
        }
    };
    let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    if let Some(i) = xf.iter().position(|v| !v.is_finite()) {
        return Err(lost("the position", i));
    }
    let t = gpu.upload(x.len() / d, d, &xf)?;
    let (e, s) = energy_and_score(gpu, model, &t, 4096)?;
    if let Some(r) = e.iter().position(|v| !v.is_finite()) {
        return Err(lost("the energy", r * d));
    }
    if let Some(i) = s.iter().position(|v| !v.is_finite()) {
        return Err(lost("the score", i));
    }
    Ok((
        e.iter().map(|&v| v as f64).collect(),
        s.iter().map(|&v| v as f64).collect(),
    ))
}
