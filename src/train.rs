//! Training on the GPU: minibatches gathered on the device, many steps per submission, the
//! loss read back only every `log_every` steps, held-out evaluation with early stopping, and
//! divergence detection that falls back to the last good parameters.

use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fused::{FusedData, FusedMvl, Path};
use crate::gpu::{Gpu, Tensor};
use crate::model::Model;
use crate::objective::{self, estimate, Energy, Objective};
use crate::optim::{Optimizer, Rule};
use crate::rng::{Dist, Rng};
use crate::tape::Tape;

/// Steps recorded per queue submission between loss readings.
const SUBMIT_EVERY: usize = 8;

/// Everything a training run needs besides the model and data.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub objective: Objective,
    pub obj: objective::Config,
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    /// If set, the learning rate decays linearly from `lr` to this value over the run
    /// (a decaying rate removes the optimiser's noise from the final parameters).
    pub lr_final: Option<f32>,
    pub rule: Rule,
    pub seed: u64,
    /// Read the loss back (and print progress) every this many steps.
    pub log_every: usize,
    /// Evaluate on the held-out set every this many steps (0: never).
    pub eval_every: usize,
    /// Stop after this many held-out evaluations without improvement (0: never).
    pub patience: usize,
    /// Print progress lines.
    pub verbose: bool,
    /// Tape or fused kernels (`Auto`: fused wherever the model and objective allow).
    pub path: Path,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            objective: Objective::Mvl,
            obj: objective::Config::default(),
            steps: 1000,
            batch: 200,
            lr: 4e-3,
            lr_final: None,
            rule: Rule::RMSPROP_TF,
            seed: 0,
            log_every: 50,
            eval_every: 0,
            patience: 0,
            verbose: true,
            path: Path::Auto,
        }
    }
}

/// One line of training history.
#[derive(Clone, Debug, PartialEq)]
pub struct LogPoint {
    pub step: usize,
    pub loss: f64,
    pub heldout: Option<f64>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps_done: usize,
    pub history: Vec<LogPoint>,
    /// Best held-out value and its step, when evaluated.
    pub best_heldout: Option<(usize, f64)>,
    pub stopped_early: bool,
    pub seconds: f64,
}

/// Parameters (and spectral-norm vectors) copied on the GPU.
struct Snapshot {
    step: usize,
    weights: Vec<Tensor>,
    biases: Vec<Tensor>,
    sn_u: Vec<Option<Tensor>>,
}

/// A model, its optimiser and its data, on one GPU.
pub struct Trainer<'g> {
    pub gpu: &'g Gpu,
    pub model: Model<&'g Gpu>,
    pub cfg: TrainConfig,
    opt: Optimizer,
    data: Tensor,
    heldout: Option<Tensor>,
    fused: Option<Fused<'g>>,
    /// Why a run that could have been fused runs on the tape (for the user).
    path_note: Option<String>,
    rng: Rng,
    pub steps_done: usize,
}

/// The fused step with the training data (and held-out data) bound to it.
struct Fused<'g> {
    step: FusedMvl<'g>,
    train: FusedData,
    heldout: Option<FusedData>,
}

fn copy(gpu: &Gpu, t: &Tensor) -> Result<Tensor> {
    gpu.affine(t, 1.0, 0.0)
}

fn copy_sn(gpu: &Gpu, u: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    u.iter()
        .map(|u| u.as_ref().map(|t| copy(gpu, t)).transpose())
        .collect()
}

impl<'g> Trainer<'g> {
    /// `data` (n, d) on the GPU; `heldout` optional (m, d).
    pub fn new(
        gpu: &'g Gpu,
        model: Model<&'g Gpu>,
        data: Tensor,
        heldout: Option<Tensor>,
        cfg: TrainConfig,
    ) -> Result<Trainer<'g>> {
        let (n, d) = data.shape();
        if n == 0 {
            return Err(Error::Invalid("the training set is empty".into()));
        }
        if d != model.arch.dim {
            return Err(Error::Shape(format!(
                "the model takes {} columns, the training data has {d}",
                model.arch.dim
            )));
        }
        if let Some(h) = &heldout {
            if h.shape().1 != d || h.shape().0 == 0 {
                return Err(Error::Shape(format!(
                    "held-out data {:?} does not match the training data's {d} columns",
                    h.shape()
                )));
            }
        }
        if cfg.batch == 0 || cfg.log_every == 0 {
            return Err(Error::Invalid(
                "batch and log_every must be positive".into(),
            ));
        }
        let mut model = model;
        // The optimiser's state is packed in the layout of the parameters' shapes, which is
        // what the fused step (which packs the parameters themselves) expects.
        let opt = Optimizer::new(gpu, cfg.rule, cfg.lr, &model.params())?;
        let mut path_note = None;
        let fused = match cfg.path.use_fused(&model.arch, cfg.objective, &cfg.obj)? {
            true => match FusedMvl::new(gpu, &mut model, &cfg.obj, cfg.batch, Some(&opt)) {
                Ok(step) => {
                    let train = step.bind(&data, None)?;
                    let heldout = heldout.as_ref().map(|h| step.bind(h, None)).transpose()?;
                    Some(Fused {
                        step,
                        train,
                        heldout,
                    })
                }
                // `Auto` runs on the tape what the fused step cannot hold in one binding.
                Err(e @ Error::OutOfMemory(_)) if cfg.path == Path::Auto => {
                    path_note = Some(format!("running on the tape: {e}"));
                    None
                }
                Err(e) => return Err(e),
            },
            false => None,
        };
        let rng = Rng::new(cfg.seed);
        Ok(Trainer {
            gpu,
            model,
            cfg,
            opt,
            data,
            heldout,
            fused,
            path_note,
            rng,
            steps_done: 0,
        })
    }

    /// Whether steps run on the fused kernels (else on the tape).
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Why this trainer runs on the tape although the fused path applies (`Path::Auto` with a
    /// workspace too large for the adapter), if it does.
    pub fn path_note(&self) -> Option<&str> {
        self.path_note.as_deref()
    }

    /// Kernel launches per training step (fused path), for reports.
    pub fn fused_launches_per_step(&self) -> Option<usize> {
        self.fused.as_ref().map(|f| f.step.launches_per_step())
    }

    /// Record one training step (nothing is waited for); returns the loss tensor (1, 1). On the
    /// fused path it is a window of the step's workspace: read it before recording the next
    /// step (or copy it).
    pub fn record_step(&mut self) -> Result<Tensor> {
        if let Some(f) = &self.fused {
            // The same two draws as the tape path: minibatch rows, then noise.
            let rows = self.rng.next_draw();
            let noise = self.rng.next_draw();
            f.step
                .record_step(&f.train, &mut self.model, &mut self.opt, rows, noise)?;
            self.steps_done += 1;
            return f.step.loss();
        }
        let gpu = self.gpu;
        let (n, d) = self.data.shape();
        let b = self.cfg.batch;
        let tape = Tape::new(gpu);
        let (seed, s_idx) = self.rng.next_draw();
        let idx = tape.index(gpu.random_index(b, n, seed, s_idx)?);
        let x0 = tape.leaf(self.data.clone()).gather_rows(idx)?;
        let bound = self.model.bind(&tape, true)?;
        let (seed, s_noise) = self.rng.next_draw();
        let z = tape.random(b, d, Dist::STANDARD_NORMAL, seed, s_noise)?;
        let est = estimate(self.cfg.objective, &self.cfg.obj, &bound, x0, Some(z))?;
        let grads = tape.grad(est.loss, &bound.leaves, false)?;
        let grads: Vec<Tensor> = grads.iter().map(|g| g.value()).collect();
        self.opt.step(gpu, &self.model.params(), &grads)?;
        self.steps_done += 1;
        Ok(est.loss.value())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let g = self.gpu;
        let all = |ts: &[Tensor]| ts.iter().map(|t| copy(g, t)).collect::<Result<Vec<_>>>();
        Ok(Snapshot {
            step: self.steps_done,
            weights: all(&self.model.weights)?,
            biases: all(&self.model.biases)?,
            sn_u: copy_sn(g, &self.model.sn_u)?,
        })
    }

    fn restore(&mut self, s: &Snapshot) -> Result<()> {
        // Copy back into the live buffers: the optimiser updates them in place.
        let g = self.gpu;
        let live = self.model.params();
        let saved: Vec<&Tensor> = s
            .weights
            .iter()
            .zip(&s.biases)
            .flat_map(|(w, b)| [w, b])
            .collect();
        for (dst, src) in live.iter().zip(saved) {
            g.copy_into(src, dst)?;
        }
        self.model.sn_u = copy_sn(g, &s.sn_u)?;
        Ok(())
    }

    /// Train for `cfg.steps` steps (or until early stopping). On divergence (NaN/Inf loss)
    /// the parameters go back to the last good state and `Error::Diverged` names the step.
    pub fn run(&mut self) -> Result<Summary> {
        let start = Instant::now();
        let mut history = Vec::new();
        let mut good = self.snapshot()?;
        let mut best: Option<(f64, Snapshot)> = None;
        let mut since_best = 0;
        let mut stopped_early = false;
        let total = self.cfg.steps;
        let first = self.steps_done;
        while self.steps_done < first + total {
            if let Some(end) = self.cfg.lr_final {
                let frac = (self.steps_done - first) as f32 / total.max(1) as f32;
                self.opt.lr = self.cfg.lr + (end - self.cfg.lr) * frac;
            }
            let loss_t = self.record_step()?;
            let done = self.steps_done - first;
            let log_now = done.is_multiple_of(self.cfg.log_every) || done == total;
            let eval_now = self.cfg.eval_every > 0
                && (done.is_multiple_of(self.cfg.eval_every) || done == total);
            if !(log_now || eval_now) {
                // Hand the GPU what is recorded every few steps without waiting, so that it
                // runs them while the next ones are recorded.
                if done.is_multiple_of(SUBMIT_EVERY) {
                    self.gpu.flush()?;
                }
                continue;
            }
            // The only host round trip: one number every log_every steps.
            let loss = self.gpu.read(&loss_t)?[0] as f64;
            if !loss.is_finite() {
                let at = self.steps_done;
                self.restore(&good)?;
                return Err(Error::Diverged(format!(
                    "the loss became {loss} by step {at} (last finite reading at step {}); the parameters were reset to that step — lower the learning rate or the step size",
                    good.step
                )));
            }
            good = self.snapshot()?;
            let heldout = if eval_now {
                self.heldout_value()?
            } else {
                None
            };
            if let Some(h) = heldout {
                if best.as_ref().is_none_or(|(b, _)| h < *b) {
                    best = Some((h, self.snapshot()?));
                    since_best = 0;
                } else {
                    since_best += 1;
                }
            }
            history.push(LogPoint {
                step: self.steps_done,
                loss,
                heldout,
            });
            if self.cfg.verbose {
                let rate = done as f64 / start.elapsed().as_secs_f64();
                let h = heldout
                    .map(|h| format!("  held-out {h:.4}"))
                    .unwrap_or_default();
                let label = if self.cfg.objective.is_loss() {
                    "loss"
                } else {
                    "cd-1 surrogate (not a loss)"
                };
                println!(
                    "step {:>6}/{}  {label} {loss:.4}{h}  ({rate:.1} steps/s)",
                    self.steps_done,
                    first + total
                );
            }
            if self.cfg.patience > 0 && since_best >= self.cfg.patience {
                stopped_early = true;
                if self.cfg.verbose {
                    println!(
                        "early stop: no held-out improvement in {} evaluations",
                        self.cfg.patience
                    );
                }
                break;
            }
        }
        let mut best_heldout = None;
        if let Some((h, snap)) = best {
            best_heldout = Some((snap.step, h));
            if stopped_early {
                self.restore(&snap)?;
            }
        }
        self.gpu.sync()?;
        Ok(Summary {
            steps_done: self.steps_done - first,
            history,
            best_heldout,
            stopped_early,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The objective (SSM-VR for CD-1, which has none) averaged over the held-out set, with a
    /// fixed noise stream so that successive evaluations are comparable.
    pub fn heldout_value(&mut self) -> Result<Option<f64>> {
        let Some(h) = self.heldout.clone() else {
            return Ok(None);
        };
        let obj = if self.cfg.objective.is_loss() {
            self.cfg.objective
        } else {
            Objective::SsmVr
        };
        let seed = self.cfg.seed ^ 0x5eed;
        if let Some(Fused {
            step,
            heldout: Some(data),
            ..
        }) = &self.fused
        {
            let v = evaluate_fused(self.gpu, step, data, &mut self.model, seed)?;
            return Ok(Some(v.0));
        }
        let v = evaluate(
            self.gpu,
            &mut self.model,
            &h,
            obj,
            &self.cfg.obj,
            self.cfg.batch,
            seed,
        )?;
        Ok(Some(v.0))
    }
}

/// Mean and standard error of `objective`'s per-sample values over all rows of `x`, in chunks
/// of `chunk` rows, with noise from seed `seed` (streams 1, 2, … per chunk).
pub fn evaluate<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    x: &Tensor,
    objective: Objective,
    cfg: &objective::Config,
    chunk: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let (n, d) = x.shape();
    let mut values = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for (c, start) in (0..n).step_by(chunk.max(1)).enumerate() {
        let rows = chunk.min(n - start);
        let tape = Tape::new(gpu);
        let idx: Vec<u32> = (start as u32..(start + rows) as u32).collect();
        let h = tape.index(gpu.upload_index(&idx, n as u32)?);
        let xb = tape.leaf(x.clone()).gather_rows(h)?;
        let bound = model.bind(&tape, false)?;
        let z = tape.random(rows, d, Dist::STANDARD_NORMAL, seed, c as u64 + 1)?;
        let est = estimate(objective, cfg, &bound, xb, Some(z))?;
        pending.push(est.per_sample.value());
    }
    for t in pending {
        values.extend(gpu.read(&t)?.into_iter().map(|v| v as f64));
    }
    Ok(mean_se(&values))
}

/// [`evaluate`] for MVL on the fused kernels: chunks of the step's batch size, noise from
/// seed `seed` (streams 1, 2, … per chunk), the same draws as the tape version.
pub fn evaluate_fused<'g>(
    gpu: &'g Gpu,
    step: &FusedMvl<'g>,
    data: &FusedData,
    model: &mut Model<&'g Gpu>,
    seed: u64,
) -> Result<(f64, f64)> {
    let n = data.rows();
    let chunk = step.plan().b;
    let mut pending = Vec::new();
    for (c, start) in (0..n).step_by(chunk).enumerate() {
        let rows = chunk.min(n - start);
        step.record_eval(data, model, start, rows, (seed, c as u64 + 1))?;
        // The step's outputs are overwritten by the next chunk: keep a copy.
        pending.push(gpu.affine(&step.per_sample(rows)?, 1.0, 0.0)?);
    }
    let mut values = Vec::with_capacity(n);
    for t in pending {
        values.extend(gpu.read(&t)?.into_iter().map(|v| v as f64));
    }
    Ok(mean_se(&values))
}

/// Energies and scores (−∇ₓE) at the rows of `x`, in chunks.
pub fn energy_and_score<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    x: &Tensor,
    chunk: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, _) = x.shape();
    let mut parts = Vec::new();
    for start in (0..n).step_by(chunk.max(1)) {
        let rows = chunk.min(n - start);
        let tape = Tape::new(gpu);
        let idx: Vec<u32> = (start as u32..(start + rows) as u32).collect();
        let h = tape.index(gpu.upload_index(&idx, n as u32)?);
        let xb = tape.leaf(x.clone()).gather_rows(h)?;
        let bound = model.bind(&tape, false)?;
        let (e, g) = bound.energy_and_grad(xb, false)?;
        parts.push((e.value(), g.neg()?.value()));
    }
    let mut energies = Vec::with_capacity(n);
    let mut scores = Vec::new();
    for (e, s) in parts {
        energies.extend(gpu.read(&e)?);
        scores.extend(gpu.read(&s)?);
    }
    Ok((energies, scores))
}

/// Sample mean and its standard error.
pub fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (var / n).sqrt())
}
