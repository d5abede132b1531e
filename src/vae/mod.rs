//! Variational auto-encoders with Euclidean or hyperspherical latents, explicit or implicit
//! encoders (paper §4.2 and §6.2.1, appendix E.2; SPEC §7 and §9, Table 1).
//!
//! - **Explicit** encoders have a density: a Gaussian N(μ, diag σ²) against the prior N(0, I),
//!   or a von Mises–Fisher vMF(μ, κ) against the uniform prior on S^(n_z−1) (Davidson et al.
//!   2018, [`crate::vmf`]). The ELBO's KL term is in closed form.
//! - **Implicit** encoders push noise through a network, z = f([x, ε]) (normalised on the
//!   sphere), so q(z|x) has no density. The entropy's gradient is eq. 19,
//!   ∇φH = −E[∇z log q(z|x)·∂z/∂φ], with −∇z E(z|x) of a conditional energy standing in for the
//!   score; E is fitted to the encoder's samples by (Riemannian) MVL, one step per auto-encoder
//!   step. On the sphere only the tangent part of ∇z E matters, because ∂z/∂φ is tangent.
//!
//! The decoder is Bernoulli: log p(x|z) = Σⱼ xⱼlⱼ − softplus(lⱼ) with logits l = g(z).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recording, Tensor};
use crate::manifold::sphere_chart_form;
use crate::model::{Arch, Bound, HostParams, Init, Model};
use crate::objective::{estimate, Config, Energy, Objective};
use crate::ops::Axis;
use crate::optim::{Optimizer, Rule};
use crate::rng::{Dist, HostRng, Rng};
use crate::tape::{Tape, Var};

mod config;
pub(crate) mod io;

pub use config::{Latent, Posterior, VaeConfig};

use crate::fused::given::{GivenCache, GivenRows};

/// Tags the VAE's host random stream apart from other users of the seed.
const HOST_STREAM: u64 = 0x7ae_5eed;

/// The conditional energy as a function of z alone, for a batch of conditions x (constants).
struct GivenX<'a, 't, B: Backend> {
    energy: &'a Bound<'t, B>,
    x: Var<'t, B>,
    scale: f32,
}

impl<'t, B: Backend> Energy<'t, B> for GivenX<'_, 't, B> {
    fn energy(&self, z: Var<'t, B>) -> Result<Var<'t, B>> {
        self.energy
            .energy(z.scale(self.scale)?.concat_cols(self.x)?)
    }
}

fn no_energy() -> Error {
    Error::Invalid("an implicit VAE without its conditional energy (internal error)".into())
}

/// The conditional energy bound to `tape` (implicit encoders only).
fn bind_energy<'t, 'g>(
    energy: &mut Option<Model<&'g Gpu>>,
    tape: &'t Tape<&'g Gpu>,
) -> Result<Bound<'t, &'g Gpu>> {
    energy.as_mut().ok_or_else(no_energy)?.bind(tape, false)
}

/// Per-batch means of what a step optimised (nats per image).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// −E log p(x|z).
    pub reconstruction: f64,
    /// Explicit: KL(q(z|x) ‖ p(z)), so that −ELBO = reconstruction + kl. Implicit: −E log p(z)
    /// (the entropy has no estimate, only a gradient).
    pub kl_or_prior: f64,
    /// Implicit: the conditional energy's MVL loss; 0 for explicit encoders.
    pub energy_loss: f64,
}

/// A VAE and its optimisers on a GPU.
pub struct Vae<'g> {
    gpu: &'g Gpu,
    pub cfg: VaeConfig,
    pub encoder: Model<&'g Gpu>,
    pub decoder: Model<&'g Gpu>,
    /// The conditional energy (implicit encoders only).
    pub energy: Option<Model<&'g Gpu>>,
    opt: Optimizer,
    opt_energy: Option<Optimizer>,
    /// Device random streams (noise), and the host stream (vMF acceptance), re-derived from
    /// (seed, step) every step.
    rng: Rng,
    host_rng: HostRng,
    pub steps_done: usize,
    /// The conditional energy's fused MVL step (built at the first step: None on the tape).
    energy_fused: GivenCache<'g>,
}

/// An auto-encoder's training step recorded once and replayed ([`Vae::record_steps`],
/// [`crate::wae::Wae::record_steps`]).
pub struct RecordedSteps {
    pub(crate) rec: Recording<[Tensor; 3]>,
    /// Device draws the step takes from the model's stream counter: replays move the counter
    /// on by as many per step, so that a step built after them draws fresh streams.
    pub(crate) draws: u64,
}

impl RecordedSteps {
    /// Dispatches per replayed step.
    pub fn dispatches(&self) -> usize {
        self.rec.dispatches()
    }
}

/// Rows scaled to unit norm (the sphere's encoders).
pub fn normalize_rows<'t, B: Backend>(y: Var<'t, B>) -> Result<Var<'t, B>> {
    y.div(y.rowdot(y)?.affine(1.0, 1e-24)?.sqrt()?)
}

/// Eq. 19 as a per-sample value (rows, 1) whose gradient in φ, through the reparameterised
/// samples z = f(ε; φ), estimates ∇φH[q]: ⟨sg(∇zE(z)), z⟩ with E an energy fitted to q, so
/// that −∇zE stands in for the score ∇z log q. Its value means nothing; only its gradient.
pub fn entropy_surrogate<'t, B: Backend>(
    energy: &dyn Energy<'t, B>,
    z: Var<'t, B>,
) -> Result<Var<'t, B>> {
    let (_, g) = energy.energy_and_grad(z.detach(), false)?;
    g.detach().rowdot(z)
}

/// log p(x|z) of the Bernoulli decoder from its logits l: Σⱼ xⱼlⱼ − softplus(lⱼ), (rows, 1).
pub fn bernoulli_log_lik<'t, B: Backend>(x: Var<'t, B>, logits: Var<'t, B>) -> Result<Var<'t, B>> {
    x.rowdot(logits)?.sub(logits.softplus()?.sum(Axis::Cols)?)
}

/// log p(z) of the prior (rows, 1), normalised: N(0, I) in R^n, uniform on S^(n−1) ⊂ R^n.
pub fn log_prior<'t, B: Backend>(latent: Latent, z: Var<'t, B>) -> Result<Var<'t, B>> {
    let (rows, n) = z.shape();
    match latent {
        Latent::Euclidean => z
            .rowdot(z)?
            .affine(-0.5, -0.5 * n as f32 * (std::f32::consts::TAU).ln()),
        Latent::Sphere => z
            .tape()
            .full(rows, 1, -crate::directional::log_sphere_area(n) as f32),
    }
}

impl<'g> Vae<'g> {
    pub fn new(gpu: &'g Gpu, cfg: VaeConfig) -> Result<Vae<'g>> {
        cfg.validate()?;
        let build = |arch: Arch, seed: u64| -> Result<Model<&'g Gpu>> {
            let hp = HostParams::init(&arch, Init::Glorot, seed)?;
            Model::from_host(arch, &hp, |r, c, v| gpu.upload(r, c, v))
        };
        let s = cfg.seed.wrapping_mul(4);
        let encoder = build(cfg.net(cfg.encoder_in(), cfg.encoder_out(), &cfg.hidden), s)?;
        let decoder = build(cfg.net(cfg.nz, cfg.pixels, &cfg.hidden), s + 1)?;
        let energy = match cfg.posterior {
            Posterior::Implicit => Some(build(cfg.energy_arch(), s + 2)?),
            Posterior::Explicit => None,
        };
        let mut params = encoder.params();
        params.extend(decoder.params());
        let opt = Optimizer::new(gpu, Rule::RMSPROP_TF, cfg.lr, &params)?;
        let opt_energy = match &energy {
            Some(e) => Some(Optimizer::new(gpu, Rule::RMSPROP_TF, cfg.lr, &e.params())?),
            None => None,
        };
        Ok(Vae {
            gpu,
            rng: Rng::new(cfg.seed),
            host_rng: HostRng::for_stream(cfg.seed ^ HOST_STREAM, 0),
            cfg,
            encoder,
            decoder,
            energy,
            opt,
            opt_energy,
            steps_done: 0,
            energy_fused: GivenCache::default(),
        })
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// z ~ q(z|x) for a batch x (rows, pixels) on `tape`, differentiable in the encoder's
    /// parameters (bound in `enc`), and the closed-form KL for explicit encoders.
    fn encode<'t>(
        &mut self,
        tape: &'t Tape<&'g Gpu>,
        enc: &Bound<'t, &'g Gpu>,
        x: Var<'t, &'g Gpu>,
    ) -> Result<(Var<'t, &'g Gpu>, Option<Var<'t, &'g Gpu>>)> {
        let (rows, _) = x.shape();
        let nz = self.cfg.nz;
        let (seed, stream) = self.rng.next_draw();
        match (self.cfg.posterior, self.cfg.latent) {
            (Posterior::Explicit, Latent::Euclidean) => {
                let out = enc.mlp(x)?;
                let mu = out.slice_cols(0, nz)?;
                let logv = out.slice_cols(nz, 2 * nz)?;
                let eps = tape.random(rows, nz, Dist::STANDARD_NORMAL, seed, stream)?;
                let z = mu.add(logv.scale(0.5)?.exp()?.mul(eps)?)?;
                // KL(N(μ, σ²) ‖ N(0, I)) = ½Σ(μ² + σ² − log σ² − 1).
                let kl = mu
                    .square()?
                    .add(logv.exp()?)?
                    .sub(logv)?
                    .sum(Axis::Cols)?
                    .affine(0.5, -0.5 * nz as f32)?;
                Ok((z, Some(kl)))
            }
            (Posterior::Explicit, Latent::Sphere) => {
                let out = enc.mlp(x)?;
                let mu = normalize_rows(out.slice_cols(0, nz)?)?;
                // κ = softplus(·) + 1, as Davidson et al.: keeps the sampler away from κ → 0.
                let kappa = out.slice_cols(nz, nz + 1)?.softplus()?.affine(1.0, 1.0)?;
                let z = crate::vmf::sample(mu, kappa, &mut self.host_rng)?;
                let kl = crate::vmf::kl_to_uniform(nz, kappa)?;
                Ok((z, Some(kl)))
            }
            (Posterior::Implicit, latent) => {
                let eps = tape.random(rows, nz, Dist::STANDARD_NORMAL, seed, stream)?;
                Ok((latent.project(enc.mlp(x.concat_cols(eps)?)?)?, None))
            }
        }
    }

    /// One training step on a binarised batch x (rows, pixels): for implicit encoders first
    /// one MVL step of the conditional energy on the encoder's current samples, then one
    /// step of encoder and decoder. Records kernels; the returned stats are device scalars
    /// (read them with [`Vae::read_stats`] only every so often).
    pub fn record_step(&mut self, x: &Tensor) -> Result<[Tensor; 3]> {
        let (rows, cols) = x.shape();
        if cols != self.cfg.pixels || rows == 0 {
            return Err(Error::Shape(format!(
                "VAE batch is {rows} × {cols}; the model takes images of {} pixels",
                self.cfg.pixels
            )));
        }
        let gpu = self.gpu;
        // Host draws depend on (seed, step) only, so that a resumed run repeats them.
        self.host_rng = HostRng::for_stream(self.cfg.seed ^ HOST_STREAM, self.steps_done as u64);
        let energy_loss = match self.cfg.posterior {
            Posterior::Implicit => Some(self.energy_step(x)?),
            Posterior::Explicit => None,
        };
        let tape = Tape::new(gpu);
        let xv = tape.leaf(x.clone());
        let enc = self.encoder.bind(&tape, false)?;
        let dec = self.decoder.bind(&tape, false)?;
        let (z, kl) = self.encode(&tape, &enc, xv)?;
        let log_lik = bernoulli_log_lik(xv, dec.mlp(z.scale(self.cfg.latent_scale())?)?)?;
        let (per_sample, second) = match kl {
            Some(kl) => (kl.sub(log_lik)?, kl),
            None => {
                // Eq. 19: ∂φ of −⟨sg(∇z E(z|x)), z⟩ is ∂φH with −∇zE for the score.
                let bound = bind_energy(&mut self.energy, &tape)?;
                let cond = GivenX {
                    energy: &bound,
                    x: xv,
                    scale: self.cfg.latent_scale(),
                };
                let lp = log_prior(self.cfg.latent, z)?;
                let surrogate = lp.add(log_lik)?.add(entropy_surrogate(&cond, z)?)?.neg()?;
                (surrogate, lp.neg()?)
            }
        };
        let loss = per_sample.mean_all()?;
        let mut leaves = enc.leaves.clone();
        leaves.extend(&dec.leaves);
        let mut params = self.encoder.params();
        params.extend(self.decoder.params());
        self.opt.minimize(gpu, loss, &leaves, &params)?;
        self.steps_done += 1;
        let zero = || gpu.full(1, 1, 0.0);
        Ok([
            log_lik.mean_all()?.neg()?.value(),
            second.mean_all()?.value(),
            match energy_loss {
                Some(e) => e,
                None => zero()?,
            },
        ])
    }

    /// One training step recorded for replaying ([`Vae::replay`]), on the batch that `batch`
    /// makes on the device (e.g. [`crate::mnist::DeviceImages::batch`]): nothing runs, and the
    /// model, optimiser and step count stay as they are. Refused (`Error::Invalid`) before any
    /// work where the step cannot be recorded: the vMF sampler's rejection loop needs the
    /// host, and implicit cells train their energy on the fused step where it applies.
    pub fn record_steps(
        &mut self,
        batch: impl FnOnce(&'g Gpu) -> Result<Tensor>,
    ) -> Result<RecordedSteps> {
        let (t0, done, rng) = (self.opt.t, self.steps_done, self.rng.clone());
        let t0_energy = self.opt_energy.as_ref().map(|o| o.t);
        let gpu = self.gpu;
        let rec = gpu.record_step(done as u64, || {
            let x = batch(gpu)?;
            self.record_step(&x)
        });
        let draws = self.rng.stream - rng.stream;
        // The build ran nothing: its host counters go back.
        (self.opt.t, self.steps_done, self.rng) = (t0, done, rng);
        if let (Some(o), Some(t)) = (self.opt_energy.as_mut(), t0_energy) {
            o.t = t;
        }
        Ok(RecordedSteps { rec: rec?, draws })
    }

    /// `steps` training steps of a recording in one submission (does not wait): steps
    /// `steps_done + 1 ..`, each drawing its batch and noise from its own step number (so a
    /// resumed run, recorded again, sees the same numbers) and taking its optimiser step t
    /// from it. Returns the stats of the last (device scalars, as [`Vae::record_step`]'s).
    pub fn replay(&mut self, r: &RecordedSteps, steps: u32) -> Result<[Tensor; 3]> {
        r.rec.replay(self.gpu, self.steps_done as u64, steps)?;
        self.steps_done += steps as usize;
        self.opt.t += steps;
        if let Some(o) = self.opt_energy.as_mut() {
            o.t += steps;
        }
        self.rng.stream += r.draws * steps as u64;
        Ok(r.rec.value().clone())
    }

    /// One MVL step (Riemannian on the sphere) of the conditional energy on z ~ q(z|x).
    fn energy_step(&mut self, x: &Tensor) -> Result<Tensor> {
        let gpu = self.gpu;
        let tape = Tape::new(gpu);
        let xv = tape.leaf(x.clone());
        let enc = self.encoder.bind(&tape, false)?;
        let (z, _) = self.encode(&tape, &enc, xv)?;
        let z = z.detach();
        let form = match self.cfg.latent {
            Latent::Sphere => sphere_chart_form(z)?,
            Latent::Euclidean => z,
        };
        let (rows, _) = x.shape();
        let (seed, stream) = self.rng.next_draw();
        let cfg = Config {
            eps: self.cfg.eps,
            energy_reg: self.cfg.energy_reg,
            manifold: self.cfg.manifold(),
            ..Config::default()
        };
        let (Some(model), Some(opt)) = (self.energy.as_mut(), self.opt_energy.as_mut()) else {
            return Err(no_energy());
        };
        // The fused step where it applies (built once, for this batch size).
        let shape = (rows, self.cfg.nz, self.cfg.pixels);
        let (scale, path) = (self.cfg.latent_scale(), self.cfg.path);
        let fused = self.energy_fused.get(rows, || {
            GivenRows::new(gpu, model, &cfg, opt, path, shape, scale)
        })?;
        if let Some(f) = fused {
            return f.record(model, opt, &form.value(), Some(x), (seed, stream));
        }
        let bound = bind_energy(&mut self.energy, &tape)?;
        let cond = GivenX {
            energy: &bound,
            x: xv,
            scale: self.cfg.latent_scale(),
        };
        let noise = tape.random(rows, self.cfg.nz, Dist::STANDARD_NORMAL, seed, stream)?;
        let est = estimate(Objective::Mvl, &cfg, &cond, form, Some(noise))?;
        let (Some(model), Some(opt)) = (self.energy.as_ref(), self.opt_energy.as_mut()) else {
            return Err(no_energy());
        };
        opt.minimize(gpu, est.loss, &bound.leaves, &model.params())?;
        Ok(est.loss.value())
    }

    /// The terms of [`StepStats`] on a batch x without training (energy loss 0): for
    /// explicit encoders reconstruction + KL is −ELBO, a bound on −log p(x).
    pub fn evaluate(&mut self, x: &Tensor) -> Result<StepStats> {
        let tape = Tape::new(self.gpu);
        let xv = tape.leaf(x.clone());
        let enc = self.encoder.bind(&tape, false)?;
        let dec = self.decoder.bind(&tape, false)?;
        let (z, kl) = self.encode(&tape, &enc, xv)?;
        let rec = bernoulli_log_lik(xv, dec.mlp(z.scale(self.cfg.latent_scale())?)?)?
            .mean_all()?
            .neg()?;
        let second = match kl {
            Some(kl) => kl,
            None => log_prior(self.cfg.latent, z)?.neg()?,
        };
        let second = second.mean_all()?;
        Ok(StepStats {
            reconstruction: self.gpu.read(&rec.value())?[0] as f64,
            kl_or_prior: self.gpu.read(&second.value())?[0] as f64,
            energy_loss: 0.0,
        })
    }

    /// The stats of [`Vae::record_step`] on the host (waits for the device).
    pub fn read_stats(&self, t: &[Tensor; 3]) -> Result<StepStats> {
        let r = |t: &Tensor| -> Result<f64> { Ok(self.gpu.read(t)?[0] as f64) };
        Ok(StepStats {
            reconstruction: r(&t[0])?,
            kl_or_prior: r(&t[1])?,
            energy_loss: r(&t[2])?,
        })
    }

    /// Bernoulli means σ(g(z)) for latents z (rows, n_z).
    pub fn decode_means(&mut self, z: &Tensor) -> Result<Vec<f32>> {
        let tape = Tape::new(self.gpu);
        let dec = self.decoder.bind(&tape, false)?;
        let z = tape.leaf(z.clone()).scale(self.cfg.latent_scale())?;
        let p = dec.mlp(z)?.sigmoid()?;
        self.gpu.read(&p.value())
    }

    /// Reconstructions: σ(g(z)) for one z ~ q(z|x) per row of x.
    pub fn reconstruct(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        let tape = Tape::new(self.gpu);
        let enc = self.encoder.bind(&tape, false)?;
        let (z, _) = self.encode(&tape, &enc, tape.leaf(x.clone()))?;
        let z = z.value();
        drop(tape);
        self.decode_means(&z)
    }

    /// `n` draws from the prior, on the device.
    pub fn prior_samples(&mut self, n: usize) -> Result<Tensor> {
        let nz = self.cfg.nz;
        let data: Vec<f32> = match self.cfg.latent {
            Latent::Euclidean => (0..n * nz).map(|_| self.host_rng.normal() as f32).collect(),
            Latent::Sphere => (0..n)
                .flat_map(|_| {
                    let v: Vec<f64> = (0..nz).map(|_| self.host_rng.normal()).collect();
                    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                    v.into_iter().map(move |a| (a / norm) as f32)
                })
                .collect(),
        };
        self.gpu.upload(n, nz, &data)
    }
}

/// The decoder's log p(x|z) for AIS ([`crate::ais`]): rows are (chain, digit) pairs, row
/// chain·n + i holding digit i, so that the chains of one digit can be averaged.
pub struct VaeLikelihood<'g> {
    decoder: std::cell::RefCell<Model<&'g Gpu>>,
    x: Tensor,
    scale: f32,
}

impl<'g> VaeLikelihood<'g> {
    /// For `n` binarised digits `x` (n × pixels, row-major) and `chains` chains each.
    pub fn new(vae: &mut Vae<'g>, x: &[f32], n: usize, chains: usize) -> Result<VaeLikelihood<'g>> {
        let p = vae.cfg.pixels;
        if x.len() != n * p || n == 0 || chains == 0 {
            return Err(Error::Shape(format!(
                "AIS data: {} values for {n} digits of {p} pixels, {chains} chains",
                x.len()
            )));
        }
        let rows: Vec<f32> = (0..chains).flat_map(|_| x.iter().copied()).collect();
        Ok(VaeLikelihood {
            // The same device tensors, bound afresh on each transition's tape.
            decoder: std::cell::RefCell::new(Model {
                arch: vae.decoder.arch.clone(),
                weights: vae.decoder.weights.clone(),
                biases: vae.decoder.biases.clone(),
                sn_u: vae.decoder.sn_u.clone(),
            }),
            x: vae.gpu.upload(n * chains, p, &rows)?,
            scale: vae.cfg.latent_scale(),
        })
    }
}

impl<'g> crate::ais::LogLikelihood<&'g Gpu> for VaeLikelihood<'g> {
    fn log_lik<'t>(&self, z: Var<'t, &'g Gpu>) -> Result<Var<'t, &'g Gpu>> {
        let tape = z.tape();
        let dec = self.decoder.borrow_mut().bind(tape, false)?;
        bernoulli_log_lik(tape.leaf(self.x.clone()), dec.mlp(z.scale(self.scale)?)?)
    }
}
