//! Wasserstein auto-encoders with Euclidean or hyperspherical latents (paper §4.2 and
//! §6.2.2, appendix E.2; SPEC §9, Table 2).
//!
//! The WAE objective is E_x E_q(z|x) c(x, G(z)) + λ·D(q̃, p) with q̃(z) = ∫p(x)q(z|x)dx the
//! aggregated posterior, c the cross-entropy of the decoder's Bernoulli means against the grey
//! levels, and λ = 10. The encoder is implicit, z = f([x, ε]) (normalised on the sphere), as in
//! the VAEs of [`crate::vae`]. Two choices of D:
//!
//! - **MVL**: the exclusive KL(q̃ ‖ p) = −H[q̃] − E_q̃ log p(z). The entropy's gradient is
//!   eq. 19 with −∇z E(z) standing in for the score of q̃, E(z) = ⟨z̃, ψ(z̃)⟩ (2 × 256 tanh, no
//!   spectral norm) fitted to the encoder's samples by (Riemannian) MVL, one step per
//!   auto-encoder step (ε₀ = 1e-3, energy regulariser 1e-5).
//! - **GAN** (WAE-GAN, Tolstikhin et al. 2018): a latent discriminator D(z̃) (2 × 256 tanh,
//!   L2 1e-5 on its weights) tells prior samples from the encoder's; the encoder pays
//!   λ·(−log D(z̃)), the non-saturating form of their Algorithm 1.
//!
//! z̃ = √n_z·z on the sphere (as for the VAEs), so that the networks see inputs of order one.

use std::path::Path;

use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::fused::given::{GivenCache, GivenRows};
use crate::gpu::{Gpu, Recording, Tensor};
use crate::manifold::sphere_chart_form;
use crate::model::{Arch, Bound, EnergyKind, HostParams, Init, Model};
use crate::objective::{estimate, Config, Energy, Objective};
use crate::ops::{Axis, Fun};
use crate::optim::{Optimizer, Rule};
use crate::rng::{Dist, Rng};
use crate::tape::{Tape, Var};
use crate::vae::io::{
    in_file, join_widths, load_opt, load_params, meta_latent, meta_widths, put_model, put_opt,
};
use crate::vae::{bernoulli_log_lik, entropy_surrogate, log_prior, Latent};

/// How the WAE measures D(q̃, p).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// KL(q̃ ‖ p), its entropy gradient from an energy of q̃ trained by (Riemannian) MVL.
    Mvl,
    /// The Jensen–Shannon-like divergence of a latent discriminator (WAE-GAN).
    Gan,
}

impl Divergence {
    pub fn name(self) -> &'static str {
        match self {
            Divergence::Mvl => "mvl",
            Divergence::Gan => "gan",
        }
    }
}

/// A WAE's architecture and training settings; [`WaeConfig::paper`] gives the paper's.
#[derive(Clone, Debug, PartialEq)]
pub struct WaeConfig {
    pub nz: usize,
    pub latent: Latent,
    pub divergence: Divergence,
    pub pixels: usize,
    /// Hidden widths of encoder and decoder.
    pub hidden: Vec<usize>,
    /// Hidden widths of the energy of q̃ or of the discriminator.
    pub critic_hidden: Vec<usize>,
    /// λ, the weight of the divergence.
    pub lambda: f32,
    /// RMSProp (TF-style) learning rate of every network.
    pub lr: f32,
    pub batch: usize,
    /// MVL: the energy-scale regulariser; GAN: the discriminator's L2 coefficient.
    pub critic_reg: f32,
    /// MVL's step size ε₀.
    pub eps: f32,
    pub seed: u64,
    /// WAE-MVL's energy step on the fused kernels (`Auto`: wherever they apply) or the tape.
    /// Not part of the model: a checkpoint does not record it.
    pub path: crate::fused::Path,
}

impl WaeConfig {
    /// Appendix E.2: n_z = 8, λ = 10, 784–256–256 tanh networks, RMSProp lr 1e-3, batch 128,
    /// ε₀ = 1e-3, energy regulariser and discriminator L2 1e-5.
    pub fn paper(latent: Latent, divergence: Divergence) -> WaeConfig {
        WaeConfig {
            nz: 8,
            latent,
            divergence,
            pixels: 784,
            hidden: vec![256, 256],
            critic_hidden: vec![256, 256],
            lambda: 10.0,
            lr: 1e-3,
            batch: 128,
            critic_reg: 1e-5,
            eps: 1e-3,
            seed: 0,
            path: crate::fused::Path::Auto,
        }
    }

    /// "mvl-sphere" and the like: names checkpoints and table rows.
    pub fn name(&self) -> String {
        format!("{}-{}", self.divergence.name(), self.latent.name())
    }

    pub fn validate(&self) -> Result<()> {
        let min_nz = if self.latent == Latent::Sphere { 2 } else { 1 };
        if self.nz < min_nz || self.pixels == 0 || self.batch == 0 {
            return Err(Error::Invalid(format!(
                "WAE: need n_z ≥ {min_nz}, pixels > 0 and batch > 0 (got n_z {}, pixels {}, batch {})",
                self.nz, self.pixels, self.batch
            )));
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        let settings_ok = positive(self.lr)
            && positive(self.eps)
            && positive(self.lambda)
            && self.critic_reg.is_finite()
            && self.critic_reg >= 0.0;
        if !settings_ok {
            return Err(Error::Invalid(format!(
                "WAE: learning rate, ε₀ and λ must be positive and the regulariser ≥ 0 (got {}, {}, {}, {})",
                self.lr, self.eps, self.lambda, self.critic_reg
            )));
        }
        Ok(())
    }

    fn scale(&self) -> f32 {
        self.latent.scale(self.nz)
    }

    fn net(&self, dim: usize, kind: EnergyKind, hidden: &[usize]) -> Arch {
        Arch {
            kind,
            dim,
            hidden: hidden.to_vec(),
            act: Fun::Tanh,
            spectral_norm: false,
        }
    }

    /// The energy of q̃, E(z) = ⟨z̃, ψ(z̃)⟩, or the discriminator's logit.
    fn critic_arch(&self) -> Arch {
        let kind = match self.divergence {
            Divergence::Mvl => EnergyKind::ScoreNet,
            Divergence::Gan => EnergyKind::Net { out: 1 },
        };
        self.net(self.nz, kind, &self.critic_hidden)
    }
}

/// An energy of z̃ = s·z as a function of z.
struct Scaled<'a, 't, B: Backend> {
    energy: &'a Bound<'t, B>,
    scale: f32,
}

impl<'t, B: Backend> Energy<'t, B> for Scaled<'_, 't, B> {
    fn energy(&self, z: Var<'t, B>) -> Result<Var<'t, B>> {
        self.energy.energy(z.scale(self.scale)?)
    }
}

/// Per-batch means of what a step optimised.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WaeStats {
    /// The cross-entropy c(x, G(z)) in nats per image.
    pub reconstruction: f64,
    /// The divergence term's value before λ: MVL, −E log p(z) (the entropy has no estimate,
    /// only a gradient); GAN, −E log D(z̃).
    pub divergence: f64,
    /// The energy's MVL loss or the discriminator's cross-entropy.
    pub critic_loss: f64,
}

/// A WAE and its optimisers on a GPU.
pub struct Wae<'g> {
    gpu: &'g Gpu,
    pub cfg: WaeConfig,
    pub encoder: Model<&'g Gpu>,
    pub decoder: Model<&'g Gpu>,
    /// The energy of q̃ (MVL) or the discriminator (GAN).
    pub critic: Model<&'g Gpu>,
    opt: Optimizer,
    opt_critic: Optimizer,
    /// Device random streams, derived from (seed, stream) so a resumed run repeats them.
    rng: Rng,
    pub steps_done: usize,
    /// WAE-MVL's fused energy step (built at the first step: None on the tape).
    critic_fused: GivenCache<'g>,
}

impl<'g> Wae<'g> {
    pub fn new(gpu: &'g Gpu, cfg: WaeConfig) -> Result<Wae<'g>> {
        cfg.validate()?;
        let build = |arch: Arch, seed: u64| -> Result<Model<&'g Gpu>> {
            let hp = HostParams::init(&arch, Init::Glorot, seed)?;
            Model::from_host(arch, &hp, |r, c, v| gpu.upload(r, c, v))
        };
        let s = cfg.seed.wrapping_mul(4);
        let out = EnergyKind::Net { out: cfg.nz };
        let encoder = build(cfg.net(cfg.pixels + cfg.nz, out, &cfg.hidden), s)?;
        let pixels = EnergyKind::Net { out: cfg.pixels };
        let decoder = build(cfg.net(cfg.nz, pixels, &cfg.hidden), s + 1)?;
        let critic = build(cfg.critic_arch(), s + 2)?;
        let mut params = encoder.params();
        params.extend(decoder.params());
        let opt = Optimizer::new(gpu, Rule::RMSPROP_TF, cfg.lr, &params)?;
        let opt_critic = Optimizer::new(gpu, Rule::RMSPROP_TF, cfg.lr, &critic.params())?;
        Ok(Wae {
            gpu,
            rng: Rng::new(cfg.seed),
            cfg,
            encoder,
            decoder,
            critic,
            opt,
            opt_critic,
            steps_done: 0,
            critic_fused: GivenCache::default(),
        })
    }

    fn check_batch(&self, x: &Tensor) -> Result<()> {
        let (rows, cols) = x.shape();
        if cols != self.cfg.pixels || rows == 0 {
            return Err(Error::Shape(format!(
                "WAE batch is {rows} × {cols}; the model takes images of {} pixels",
                self.cfg.pixels
            )));
        }
        Ok(())
    }

    /// z ~ q(z|x) = f([x, ε]) on `tape`, differentiable in the encoder's parameters.
    fn encode<'t>(
        &mut self,
        tape: &'t Tape<&'g Gpu>,
        enc: &Bound<'t, &'g Gpu>,
        x: Var<'t, &'g Gpu>,
    ) -> Result<Var<'t, &'g Gpu>> {
        let (rows, _) = x.shape();
        let (seed, stream) = self.rng.next_draw();
        let eps = tape.random(rows, self.cfg.nz, Dist::STANDARD_NORMAL, seed, stream)?;
        self.cfg.latent.project(enc.mlp(x.concat_cols(eps)?)?)
    }

    /// `rows` prior draws on `tape`: N(0, I), or uniform on the sphere (normalised normals).
    fn prior<'t>(&mut self, tape: &'t Tape<&'g Gpu>, rows: usize) -> Result<Var<'t, &'g Gpu>> {
        let (seed, stream) = self.rng.next_draw();
        let z = tape.random(rows, self.cfg.nz, Dist::STANDARD_NORMAL, seed, stream)?;
        self.cfg.latent.project(z)
    }

    /// One training step on a batch x (rows, pixels) of grey levels in [0, 1]: one step of
    /// the critic (the energy of q̃ by MVL, or the discriminator) on the encoder's current
    /// samples, then one step of encoder and decoder. Records kernels; the returned stats
    /// are device scalars (read them with [`Wae::read_stats`] only every so often).
    pub fn record_step(&mut self, x: &Tensor) -> Result<[Tensor; 3]> {
        self.check_batch(x)?;
        let critic_loss = self.critic_step(x)?;
        let gpu = self.gpu;
        let tape = Tape::new(gpu);
        let xv = tape.leaf(x.clone());
        let enc = self.encoder.bind(&tape, false)?;
        let dec = self.decoder.bind(&tape, false)?;
        let z = self.encode(&tape, &enc, xv)?;
        let scale = self.cfg.scale();
        let rec = bernoulli_log_lik(xv, dec.mlp(z.scale(scale)?)?)?.neg()?;
        let critic = self.critic.bind(&tape, false)?;
        // The divergence per sample: its value (reported) and its surrogate (differentiated).
        let (value, surrogate) = match self.cfg.divergence {
            Divergence::Mvl => {
                // KL(q̃ ‖ p) = −H[q̃] − E log p(z); ∂φ of −⟨sg(∇zE), z⟩ is −∂φH (eq. 19).
                let energy = Scaled {
                    energy: &critic,
                    scale,
                };
                let lp = log_prior(self.cfg.latent, z)?;
                (lp.neg()?, lp.add(entropy_surrogate(&energy, z)?)?.neg()?)
            }
            Divergence::Gan => {
                // −log D(z̃) = softplus(−logit).
                let v = critic.mlp(z.scale(scale)?)?.neg()?.softplus()?;
                (v, v)
            }
        };
        let loss = rec.add(surrogate.scale(self.cfg.lambda)?)?.mean_all()?;
        let mut leaves = enc.leaves.clone();
        leaves.extend(&dec.leaves);
        let mut params = self.encoder.params();
        params.extend(self.decoder.params());
        self.opt.minimize(gpu, loss, &leaves, &params)?;
        self.steps_done += 1;
        Ok([
            rec.mean_all()?.value(),
            value.mean_all()?.value(),
            critic_loss,
        ])
    }

    /// One training step (critic, then encoder and decoder) recorded for replaying
    /// ([`Wae::replay`]) on the batch that `batch` makes on the device: nothing runs and the
    /// model stays as it is. Refused, before any work, where the step cannot be recorded:
    /// WAE-MVL's critic step on the fused kernels (it keeps its own counter and runs on the
    /// device already); on the tape every cell records.
    pub fn record_steps(
        &mut self,
        batch: impl FnOnce(&'g Gpu) -> Result<Tensor>,
    ) -> Result<Recording<[Tensor; 3]>> {
        let saved = (
            self.opt.t,
            self.opt_critic.t,
            self.steps_done,
            self.rng.clone(),
        );
        let gpu = self.gpu;
        let rec = gpu.record_step(self.steps_done as u64, || {
            let x = batch(gpu)?;
            self.record_step(&x)
        });
        // The build ran nothing: its host counters go back.
        (self.opt.t, self.opt_critic.t, self.steps_done, self.rng) = saved;
        rec
    }

    /// `steps` training steps of a recording in one submission (does not wait): steps
    /// `steps_done + 1 ..`, their batches and noise drawn from their step numbers, the
    /// optimisers' t from them. Returns the stats of the last (as [`Wae::record_step`]'s).
    pub fn replay(&mut self, r: &Recording<[Tensor; 3]>, steps: u32) -> Result<[Tensor; 3]> {
        r.replay(self.gpu, self.steps_done as u64, steps)?;
        self.steps_done += steps as usize;
        self.opt.t += steps;
        self.opt_critic.t += steps;
        Ok(r.value().clone())
    }

    /// One step of the critic on z ~ q̃ for the batch x; returns its loss (device scalar).
    fn critic_step(&mut self, x: &Tensor) -> Result<Tensor> {
        let gpu = self.gpu;
        let tape = Tape::new(gpu);
        let xv = tape.leaf(x.clone());
        let enc = self.encoder.bind(&tape, false)?;
        let z = self.encode(&tape, &enc, xv)?.detach();
        let (rows, _) = x.shape();
        let scale = self.cfg.scale();
        let (loss, leaves) = match self.cfg.divergence {
            Divergence::Mvl => {
                let form = match self.cfg.latent {
                    Latent::Sphere => sphere_chart_form(z)?,
                    Latent::Euclidean => z,
                };
                let (seed, stream) = self.rng.next_draw();
                let cfg = Config {
                    eps: self.cfg.eps,
                    energy_reg: self.cfg.critic_reg,
                    manifold: self.cfg.latent.manifold(),
                    ..Config::default()
                };
                // The fused step where it applies (built once, for this batch size).
                let (critic, opt, path) = (&mut self.critic, &self.opt_critic, self.cfg.path);
                let fused = self.critic_fused.get(rows, || {
                    GivenRows::new(gpu, critic, &cfg, opt, path, (rows, self.cfg.nz, 0), scale)
                })?;
                if let Some(f) = fused {
                    return f.record(
                        &mut self.critic,
                        &mut self.opt_critic,
                        &form.value(),
                        None,
                        (seed, stream),
                    );
                }
                let noise = tape.random(rows, self.cfg.nz, Dist::STANDARD_NORMAL, seed, stream)?;
                let bound = self.critic.bind(&tape, false)?;
                let energy = Scaled {
                    energy: &bound,
                    scale,
                };
                let loss = estimate(Objective::Mvl, &cfg, &energy, form, Some(noise))?.loss;
                (loss, bound.leaves)
            }
            Divergence::Gan => {
                let zp = self.prior(&tape, rows)?;
                let bound = self.critic.bind(&tape, false)?;
                // −log D(prior) − log(1 − D(q̃)) with D = σ(logit), plus L2 on the weights.
                let real = bound.mlp(zp.scale(scale)?)?.neg()?.softplus()?;
                let fake = bound.mlp(z.scale(scale)?)?.softplus()?;
                let mut loss = real.add(fake)?.mean_all()?;
                for w in bound.leaves.iter().step_by(2) {
                    let l2 = w.square()?.sum(Axis::All)?.scale(self.cfg.critic_reg)?;
                    loss = loss.add(l2)?;
                }
                (loss, bound.leaves)
            }
        };
        self.opt_critic
            .minimize(gpu, loss, &leaves, &self.critic.params())?;
        Ok(loss.value())
    }

    /// The stats of [`Wae::record_step`] on the host (waits for the device).
    pub fn read_stats(&self, t: &[Tensor; 3]) -> Result<WaeStats> {
        let r = |t: &Tensor| -> Result<f64> { Ok(self.gpu.read(t)?[0] as f64) };
        Ok(WaeStats {
            reconstruction: r(&t[0])?,
            divergence: r(&t[1])?,
            critic_loss: r(&t[2])?,
        })
    }

    /// The reconstruction cross-entropy (nats per image) on a batch x without training.
    pub fn reconstruction(&mut self, x: &Tensor) -> Result<f64> {
        self.check_batch(x)?;
        let tape = Tape::new(self.gpu);
        let xv = tape.leaf(x.clone());
        let enc = self.encoder.bind(&tape, false)?;
        let dec = self.decoder.bind(&tape, false)?;
        let z = self.encode(&tape, &enc, xv)?;
        let rec = bernoulli_log_lik(xv, dec.mlp(z.scale(self.cfg.scale())?)?)?;
        Ok(-(self.gpu.read(&rec.mean_all()?.value())?[0] as f64))
    }

    /// One z ~ q(z|x) per row of x (rows × n_z, row-major): draws from the aggregated
    /// posterior when x are data.
    pub fn latents(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        self.check_batch(x)?;
        let tape = Tape::new(self.gpu);
        let enc = self.encoder.bind(&tape, false)?;
        let z = self.encode(&tape, &enc, tape.leaf(x.clone()))?;
        self.gpu.read(&z.value())
    }

    /// Bernoulli means σ(G(z)) for latents z (rows, n_z).
    pub fn decode_means(&mut self, z: &Tensor) -> Result<Vec<f32>> {
        let tape = Tape::new(self.gpu);
        let dec = self.decoder.bind(&tape, false)?;
        let z = tape.leaf(z.clone()).scale(self.cfg.scale())?;
        self.gpu.read(&dec.mlp(z)?.sigmoid()?.value())
    }

    /// Reconstructions σ(G(z)), one z ~ q(z|x) per row of x.
    pub fn reconstruct(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        self.check_batch(x)?;
        let tape = Tape::new(self.gpu);
        let enc = self.encoder.bind(&tape, false)?;
        let z = self.encode(&tape, &enc, tape.leaf(x.clone()))?.value();
        drop(tape);
        self.decode_means(&z)
    }

    /// `n` decoded prior samples (Bernoulli means, n × pixels), the images FID scores;
    /// drawn from the stream `seed` alone, so that every model is scored on the same latents.
    pub fn samples(&mut self, n: usize, seed: u64) -> Result<Vec<f32>> {
        let tape = Tape::new(self.gpu);
        let z = tape.random(n, self.cfg.nz, Dist::STANDARD_NORMAL, seed, 0)?;
        let z = self.cfg.latent.project(z)?.value();
        drop(tape);
        self.decode_means(&z)
    }

    /// Writes the WAE, its optimisers and step atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let gpu = self.gpu;
        let mut ck = Checkpoint::new();
        put_model(&mut ck, gpu, "encoder", &self.encoder)?;
        put_model(&mut ck, gpu, "decoder", &self.decoder)?;
        put_model(&mut ck, gpu, "critic", &self.critic)?;
        put_opt(&mut ck, gpu, "autoencoder", &self.opt)?;
        put_opt(&mut ck, gpu, "critic", &self.opt_critic)?;
        let c = &self.cfg;
        for (k, v) in [
            ("wae.nz", c.nz.to_string()),
            ("wae.latent", c.latent.name().to_string()),
            ("wae.divergence", c.divergence.name().to_string()),
            ("wae.pixels", c.pixels.to_string()),
            ("wae.hidden", join_widths(&c.hidden)),
            ("wae.critic_hidden", join_widths(&c.critic_hidden)),
            ("wae.lambda", format!("{:?}", c.lambda)),
            ("wae.lr", format!("{:?}", c.lr)),
            ("wae.batch", c.batch.to_string()),
            ("wae.critic_reg", format!("{:?}", c.critic_reg)),
            ("wae.eps", format!("{:?}", c.eps)),
            ("wae.seed", c.seed.to_string()),
            ("wae.step", self.steps_done.to_string()),
            ("wae.rng_stream", self.rng.stream.to_string()),
        ] {
            ck.metadata.insert(k.to_string(), v);
        }
        ck.save(path)
    }

    /// A WAE saved by [`Wae::save`], with its optimisers and step.
    pub fn load(gpu: &'g Gpu, path: &Path) -> Result<Wae<'g>> {
        let ck = Checkpoint::load(path)?;
        let at = in_file(path);
        let cfg = (|| -> Result<WaeConfig> {
            Ok(WaeConfig {
                nz: ck.meta_parse("wae.nz")?,
                latent: meta_latent(&ck, "wae.latent")?,
                divergence: match ck.meta("wae.divergence")? {
                    "mvl" => Divergence::Mvl,
                    "gan" => Divergence::Gan,
                    o => return Err(Error::Invalid(format!("unknown divergence {o:?}"))),
                },
                pixels: ck.meta_parse("wae.pixels")?,
                hidden: meta_widths(&ck, "wae.hidden")?,
                critic_hidden: meta_widths(&ck, "wae.critic_hidden")?,
                lambda: ck.meta_parse("wae.lambda")?,
                lr: ck.meta_parse("wae.lr")?,
                batch: ck.meta_parse("wae.batch")?,
                critic_reg: ck.meta_parse("wae.critic_reg")?,
                eps: ck.meta_parse("wae.eps")?,
                seed: ck.meta_parse("wae.seed")?,
                path: crate::fused::Path::Auto,
            })
        })()
        .map_err(at)?;
        let mut wae = Wae::new(gpu, cfg).map_err(at)?;
        (|| -> Result<()> {
            load_params(gpu, &ck, "encoder", &mut wae.encoder)?;
            load_params(gpu, &ck, "decoder", &mut wae.decoder)?;
            load_params(gpu, &ck, "critic", &mut wae.critic)?;
            load_opt(gpu, &ck, "autoencoder", &mut wae.opt)?;
            load_opt(gpu, &ck, "critic", &mut wae.opt_critic)?;
            wae.steps_done = ck.meta_parse("wae.step")?;
            wae.rng.stream = ck.meta_parse("wae.rng_stream")?;
            Ok(())
        })()
        .map_err(at)?;
        Ok(wae)
    }
}
