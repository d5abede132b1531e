//! Training on the GPU: minibatches gathered on the device, many steps per submission, the
//! loss read back only every `log_every` steps, held-out evaluation with early stopping, and
//! divergence detection that falls back to the last good parameters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fused::{FusedData, FusedMvl, Path, Segment};
use crate::gpu::{Gpu, Recording, Tensor};
use crate::model::{HostParams, Model};
use crate::objective::{self, estimate, Energy, Objective};
use crate::optim::{Optimizer, Rule};
use crate::progress::Progress;
use crate::rng::{Dist, Rng};
use crate::tape::Tape;

/// Everything a training run needs besides the model and data.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub objective: Objective,
    pub obj: objective::Config,
    /// The run's length: [`Trainer::run`] trains until `steps_done` reaches it (a resumed
    /// trainer continues from where its state says).
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    /// If set, the learning rate decays linearly from `lr` to this value over the run
    /// (a decaying rate removes the optimiser's noise from the final parameters).
    pub lr_final: Option<f32>,
    pub rule: Rule,
    pub seed: u64,
    /// Read the loss back (and report progress) every this many steps.
    pub log_every: usize,
    /// Evaluate on the held-out set every this many steps (0: never).
    pub eval_every: usize,
    /// Stop after this many held-out evaluations without improvement (0: never).
    pub patience: usize,
    /// Hand the callback an [`Event::Checkpoint`] every this many steps (0: never).
    pub checkpoint_every: usize,
    /// F: the run has diverged when a loss rises more than F × its scale above the initial
    /// loss (that of the initial parameters), or any value exceeds F² × the scale, the scale
    /// being max(1, |initial loss|); 0 disables both (NaN/Inf always count).
    pub diverge_factor: f64,
    /// Tape or fused kernels (`Auto`: fused wherever the model and objective allow).
    pub path: Path,
    /// Steps recorded into one queue submission (the GPU runs them while the next ones are
    /// recorded); a loss reading also ends a submission.
    pub steps_per_submit: usize,
    /// The fused step's shape (`Auto`: chosen for the adapter, or `WMVL_FUSED_SHAPE`).
    pub shape: crate::fused::ShapeChoice,
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
            checkpoint_every: 0,
            diverge_factor: 1e3,
            path: Path::Auto,
            steps_per_submit: 100,
            shape: crate::fused::ShapeChoice::Auto,
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
    /// Stopped by the patience rule; the parameters were reset to the best held-out step.
    pub stopped_early: bool,
    /// Stopped because the stop flag was raised (Ctrl-C); the parameters are those after
    /// `steps_done`, whose loss was checked.
    pub interrupted: bool,
    /// The step whose parameters the model holds now (the best one after an early stop).
    pub params_step: usize,
    pub seconds: f64,
}

/// What the training loop tells its caller.
pub enum Event<'a> {
    /// A loss reading (every `log_every` steps and at the end), with the run's progress.
    Log {
        point: &'a LogPoint,
        progress: &'a Progress,
    },
    /// `checkpoint_every` steps have passed: the trainer's state is consistent, save it now.
    Checkpoint,
    /// The patience rule stopped the run; the parameters go back to `best_step`.
    EarlyStop { best_step: usize },
}

/// Everything besides the parameters that a resumed run needs to continue exactly: the step,
/// the random stream, the optimiser state and the early-stopping record.
#[derive(Clone, Debug)]
pub struct TrainState {
    pub step: usize,
    pub rng_stream: u64,
    pub opt_t: u32,
    pub opt_s1: Vec<f32>,
    pub opt_s2: Vec<f32>,
    /// Best held-out value so far: (step, value, its parameters).
    pub best: Option<(usize, f64, HostParams)>,
    pub since_best: usize,
    /// The loss of the initial parameters (the divergence rule's reference), once read.
    pub first_loss: Option<f64>,
}

/// A loss reading under way (fused path): the ring read without waiting, for the losses of
/// optimiser steps from + 1 ..= to, and the state after them (the good one if they are).
struct Reading {
    step: usize,
    from: u32,
    to: u32,
    read: crate::gpu::PendingRead,
    snapshot: FullSnapshot,
    elapsed: std::time::Duration,
}

/// Parameters (and spectral-norm vectors) copied on the GPU.
struct Snapshot {
    step: usize,
    weights: Vec<Tensor>,
    biases: Vec<Tensor>,
    sn_u: Vec<Option<Tensor>>,
}

/// Everything that changes during a step, copied on the GPU.
struct FullSnapshot {
    params: Snapshot,
    opt: (Tensor, Tensor),
    opt_t: u32,
    rng_stream: u64,
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
    best: Option<(f64, Snapshot)>,
    since_best: usize,
    first_loss: Option<f64>,
}

/// The fused step with the training data (and held-out data) bound to it.
struct Fused<'g> {
    step: FusedMvl<'g>,
    train: FusedData,
    heldout: Option<FusedData>,
    /// The random stream and learning rate of the steps recorded since the last restore;
    /// every step of a segment has the same parameter block (the device counts the steps).
    segment: Option<(Segment, usize)>,
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
        if cfg.obj.manifold.model_dim(d) != model.arch.dim {
            return Err(Error::Shape(format!(
                "the model takes {} inputs, the training data has {d} columns (on the {})",
                model.arch.dim,
                cfg.obj.manifold.name()
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
        for (name, v) in [
            ("batch", cfg.batch),
            ("log_every", cfg.log_every),
            ("steps_per_submit", cfg.steps_per_submit),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("{name} is 0; it must be positive")));
            }
        }
        if cfg.log_every > 1 << 19 {
            return Err(Error::Invalid(format!(
                "log_every {} is more than the loss ring keeps; read the loss at least every {} steps",
                cfg.log_every,
                1 << 19
            )));
        }
        let mut model = model;
        // The optimiser's state is packed in the layout of the parameters' shapes, which is
        // what the fused step (which packs the parameters themselves) expects.
        let opt = Optimizer::new(gpu, cfg.rule, cfg.lr, &model.params())?;
        let mut path_note = None;
        let fused = match cfg.path.use_fused(&model.arch, cfg.objective, &cfg.obj)? {
            true => match FusedMvl::build(
                gpu,
                &mut model,
                &cfg.obj,
                cfg.batch,
                Some(&opt),
                &crate::fused::Options {
                    shape: match cfg.shape {
                        crate::fused::ShapeChoice::Auto => crate::fused::ShapeChoice::from_env()?,
                        s => s,
                    },
                    // Two log intervals: a reading is handled one interval after it was taken.
                    ring: (2 * cfg.log_every + 1).clamp(1024, 1 << 20),
                    ..Default::default()
                },
            ) {
                Ok(step) => {
                    let train = step.bind(&data, None)?;
                    // Run the kernels once now (an evaluation changes nothing): drivers compile
                    // them at their first dispatch (lavapipe: seconds), which belongs to the
                    // set-up, not to the first training step.
                    let rows = train.rows().min(step.eval_rows());
                    step.record_eval(&train, &mut model, 0, rows, (0, 0))?;
                    gpu.sync()?;
                    let heldout = heldout.as_ref().map(|h| step.bind(h, None)).transpose()?;
                    Some(Fused {
                        step,
                        train,
                        heldout,
                        segment: None,
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
            best: None,
            since_best: 0,
            first_loss: None,
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

    /// The fused step (fused path), for reports.
    pub fn fused_step(&self) -> Option<&FusedMvl<'g>> {
        self.fused.as_ref().map(|f| &f.step)
    }

    /// The learning rate's change per step: linear decay from `lr` to `lr_final` over the
    /// run, or none.
    fn lr_slope(&self) -> f32 {
        match self.cfg.lr_final {
            Some(end) => (end - self.cfg.lr) / self.cfg.steps.max(1) as f32,
            None => 0.0,
        }
    }

    /// The learning rate at `steps_done` steps.
    fn lr_at(&self, steps_done: usize) -> f32 {
        self.cfg.lr + self.lr_slope() * steps_done as f32
    }

    /// Record one training step (nothing is waited for); returns the loss tensor (1, 1). On the
    /// fused path it is a window of the step's workspace: read it before recording the next
    /// step (or copy it).
    pub fn record_step(&mut self) -> Result<Tensor> {
        let lr_slope = self.lr_slope();
        if let Some(f) = &mut self.fused {
            // The same two draws as a tape step built on its own (`record_step`; `run`
            // replays a recorded one, whose draws follow the step number), from the
            // segment's stream at the device counter's step.
            let (t, stream) = (self.opt.t, self.rng.stream);
            let continues = f.segment.is_some_and(|(s, _)| {
                s.lr_slope == lr_slope
                    && t >= s.t_base
                    && stream == s.stream + 2 * (t - s.t_base) as u64
            });
            if !continues {
                let seg = Segment {
                    seed: self.rng.seed,
                    stream,
                    t_base: t,
                    // The rate as the tape computes it: from the run's first step.
                    lr0: self.cfg.lr,
                    lr_slope,
                    lr_t0: t.saturating_sub(self.steps_done as u32),
                    draws: 2,
                };
                f.segment = Some((seg, self.steps_done));
            }
            let (seg, _) = f.segment.expect("set above");
            f.step
                .record_step(&f.train, &mut self.model, &mut self.opt, &seg)?;
            self.rng.next_draw();
            self.rng.next_draw();
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

    /// The tape's training step recorded once for replaying ([`Trainer::replay`]): nothing
    /// runs and the trainer stays as it is. `None` on the fused path (it runs many steps per
    /// submission already) and where the step cannot be recorded (it needs the host): such
    /// runs build every step.
    pub fn record_steps(&mut self) -> Result<Option<Recording<Tensor>>> {
        if self.fused.is_some() {
            return Ok(None);
        }
        let gpu = self.gpu;
        let (t0, done, stream) = (self.opt.t, self.steps_done, self.rng.stream);
        let (lr, slope) = (self.opt.lr, self.opt.lr_slope);
        let sn_u = self.model.sn_u.clone();
        self.opt.lr = self.lr_at(done);
        self.opt.lr_slope = self.lr_slope();
        let rec = gpu.record_step(done as u64, || {
            let loss = self.record_step()?;
            // The power iteration's new u into the buffers the next step reads (the built
            // step hands the new tensors to the model instead).
            for (new, old) in self.model.sn_u.iter().zip(&sn_u) {
                if let (Some(new), Some(old)) = (new, old) {
                    gpu.copy_into(new, old)?;
                }
            }
            Ok(loss)
        });
        // The build ran nothing: the trainer's host state goes back.
        self.model.sn_u = sn_u;
        (self.opt.t, self.steps_done, self.rng.stream) = (t0, done, stream);
        (self.opt.lr, self.opt.lr_slope) = (lr, slope);
        match rec {
            Ok(r) => Ok(Some(r)),
            Err(Error::Invalid(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `k` training steps of a recording ([`Trainer::record_steps`]) in one submission (does
    /// not wait); returns the loss of the last. Minibatch rows and noise are the draws of
    /// each step's number (not those of the host's streams, which move as if the steps had
    /// been built).
    pub fn replay(&mut self, rec: &Recording<Tensor>, k: usize) -> Result<Tensor> {
        let k32 = u32::try_from(k)
            .map_err(|_| Error::Invalid(format!("{k} steps in one replay; replay fewer")))?;
        rec.replay(self.gpu, self.steps_done as u64, k32)?;
        self.steps_done += k;
        self.opt.t += k32;
        self.rng.stream += 2 * k as u64;
        Ok(rec.value().clone())
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

    /// Parameters, optimiser state, step and random stream: what a divergence goes back to.
    fn full_snapshot(&self) -> Result<FullSnapshot> {
        let (s1, s2) = self.opt.packed_state();
        Ok(FullSnapshot {
            params: self.snapshot()?,
            opt: (copy(self.gpu, s1)?, copy(self.gpu, s2)?),
            opt_t: self.opt.t,
            rng_stream: self.rng.stream,
        })
    }

    fn restore_full(&mut self, s: &FullSnapshot) -> Result<()> {
        self.restore(&s.params)?;
        let (s1, s2) = self.opt.packed_state();
        self.gpu.copy_into(&s.opt.0, s1)?;
        self.gpu.copy_into(&s.opt.1, s2)?;
        self.opt.t = s.opt_t;
        self.rng.stream = s.rng_stream;
        self.steps_done = s.params.step;
        Ok(())
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

    /// Train until `cfg.steps` steps are done (or early stopping), quietly: [`Trainer::run_with`]
    /// without a callback or stop flag.
    pub fn run(&mut self) -> Result<Summary> {
        self.run_with(&mut |_, _| Ok(()), None)
    }

    /// Train until `steps_done` reaches `cfg.steps`, early stopping, or `stop` being raised
    /// (checked before every submission of steps: a raised flag takes one more step). `on_event` hears of every loss reading, checkpoint and early stop,
    /// with the trainer (to save it); an error it returns ends the run.
    ///
    /// Divergence — a NaN/Inf loss or held-out value, or |loss| beyond `cfg.diverge_factor`
    /// times max(1, |initial loss|) — resets the parameters to the last good reading and
    /// returns `Error::Diverged` naming both steps.
    pub fn run_with(
        &mut self,
        on_event: &mut dyn FnMut(&Event, &Trainer<'g>) -> Result<()>,
        stop: Option<&AtomicBool>,
    ) -> Result<Summary> {
        let start = Instant::now();
        let mut history = Vec::new();
        let mut good = self.full_snapshot()?;
        let mut stopped_early = false;
        let mut interrupted = false;
        let mut params_step = self.steps_done;
        let total = self.cfg.steps;
        let first = self.steps_done;
        // Fused path: a loss reading at a log point is read without waiting and handled at
        // the next one, so the GPU runs the steps recorded in between (the losses of every
        // step are in the step's ring; a reading checks them all).
        let mut pending: Option<Reading> = None;
        let mut read_to = self.opt.t;
        // Tape path: the step recorded once and replayed in chunks up to the next step where
        // something happens (a reading, a checkpoint, a flush, the end).
        let recorded = self.record_steps()?;
        while self.steps_done < total {
            if self.cfg.lr_final.is_some() {
                self.opt.lr = self.lr_at(self.steps_done);
            }
            let loss_t = match &recorded {
                Some(rec) => {
                    // A raised stop flag takes one step, as the built path does.
                    let raised = stop.is_some_and(|s| s.load(Ordering::Relaxed));
                    let k = if raised { 1 } else { self.steps_to_event() };
                    self.replay(rec, k)?
                }
                None => self.record_step()?,
            };
            let done = self.steps_done;
            params_step = done;
            let stopping = stop.is_some_and(|s| s.load(Ordering::Relaxed));
            let every = |k: usize| k > 0 && done.is_multiple_of(k);
            let log_now = every(self.cfg.log_every) || done == total || stopping;
            let eval_now = self.cfg.eval_every > 0 && (every(self.cfg.eval_every) || done == total);
            let checkpoint_now = every(self.cfg.checkpoint_every);
            // The first step's loss is that of the initial parameters: the divergence scale.
            let first_now = self.first_loss.is_none();
            if !(log_now || eval_now || checkpoint_now || first_now) {
                // Hand the GPU what is recorded every few steps without waiting, so that it
                // runs them while the next ones are recorded.
                if done.is_multiple_of(self.cfg.steps_per_submit) {
                    self.gpu.flush()?;
                }
                continue;
            }
            let lagged = self.fused.is_some()
                && !(eval_now || checkpoint_now || first_now || stopping || done == total);
            if lagged {
                let reading = self.start_reading(read_to, start.elapsed())?;
                read_to = self.opt.t;
                if let Some(prev) = pending.replace(reading) {
                    self.finish_reading(prev, &mut good, &mut history, first, on_event)?;
                }
                continue;
            }
            if let Some(prev) = pending.take() {
                self.finish_reading(prev, &mut good, &mut history, first, on_event)?;
            }
            // A reading the host waits for: every step's loss since the last reading (the
            // fused ring) or this step's.
            let losses = match &self.fused {
                Some(_) => {
                    let r = self.start_reading(read_to, start.elapsed())?;
                    let l = r.read.wait(self.gpu)?;
                    self.ring_losses(&l, r.from, r.to)
                }
                None => vec![self.gpu.read(&loss_t)?[0] as f64],
            };
            read_to = self.opt.t;
            let loss = *losses.last().unwrap_or(&f64::NAN);
            if first_now {
                self.first_loss = losses.iter().copied().find(|l| l.is_finite());
            }
            let heldout = if eval_now {
                self.heldout_value()?
            } else {
                None
            };
            if let Some(why) = self.divergence(&losses, heldout) {
                self.restore_full(&good)?;
                return Err(Error::Diverged(format!(
                    "{why} by step {done} (last good reading at step {}); the parameters and optimiser were reset to that step — lower the learning rate or the step size",
                    good.params.step
                )));
            }
            good = self.full_snapshot()?;
            if let Some(h) = heldout {
                if self.best.as_ref().is_none_or(|(b, _)| h < *b) {
                    self.best = Some((h, self.snapshot()?));
                    self.since_best = 0;
                } else {
                    self.since_best += 1;
                }
            }
            if log_now || eval_now {
                let point = LogPoint {
                    step: done,
                    loss,
                    heldout,
                };
                self.log_event(&point, first, start.elapsed(), on_event)?;
                history.push(point);
            }
            if checkpoint_now {
                on_event(&Event::Checkpoint, self)?;
            }
            if self.cfg.patience > 0 && self.since_best >= self.cfg.patience {
                stopped_early = true;
                if let Some((_, snap)) = &self.best {
                    let best_step = snap.step;
                    let snap = self.copy_snapshot(snap)?;
                    self.restore(&snap)?;
                    params_step = best_step;
                    on_event(&Event::EarlyStop { best_step }, self)?;
                }
                break;
            }
            if stopping {
                interrupted = true;
                break;
            }
        }
        if let Some(prev) = pending.take() {
            self.finish_reading(prev, &mut good, &mut history, first, on_event)?;
        }
        self.gpu.sync()?;
        Ok(Summary {
            steps_done: self.steps_done.saturating_sub(first),
            history,
            best_heldout: self.best_heldout(),
            stopped_early,
            interrupted,
            params_step,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Steps from here up to and including the next one at which [`Trainer::run_with`] does
    /// something besides stepping: a loss reading, held-out value or checkpoint, a flush, the
    /// first step (its loss sets the divergence scale) or the last.
    fn steps_to_event(&self) -> usize {
        if self.first_loss.is_none() {
            return 1;
        }
        let done = self.steps_done;
        let c = &self.cfg;
        [
            c.log_every,
            c.eval_every,
            c.checkpoint_every,
            c.steps_per_submit,
        ]
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| (done / k + 1) * k)
        .chain([c.steps])
        .min()
        .map_or(1, |next| next.saturating_sub(done).max(1))
    }

    /// Start reading the losses of optimiser steps `from` + 1 ..= now (fused path) without
    /// waiting, with the state after them (good if they are).
    fn start_reading(&self, from: u32, elapsed: std::time::Duration) -> Result<Reading> {
        let f = self
            .fused
            .as_ref()
            .ok_or_else(|| Error::Invalid("a ring reading needs the fused path".into()))?;
        let to = self.opt.t;
        if (to - from) as usize > f.step.ring_len() {
            return Err(Error::Invalid(format!(
                "{} steps between loss readings, more than the ring's {} (internal error)",
                to - from,
                f.step.ring_len()
            )));
        }
        Ok(Reading {
            step: self.steps_done,
            from,
            to,
            read: self.gpu.read_async(&f.step.ring()?)?,
            snapshot: self.full_snapshot()?,
            elapsed,
        })
    }

    /// The losses of optimiser steps from + 1 ..= to from the ring's words.
    fn ring_losses(&self, words: &[f32], from: u32, to: u32) -> Vec<f64> {
        let n = words.len().max(1);
        (from..to).map(|t| words[t as usize % n] as f64).collect()
    }

    /// Handle a reading started at an earlier log point: its losses are checked (divergence
    /// goes back to the last good state), its state becomes the good one, its log event is
    /// sent.
    fn finish_reading(
        &mut self,
        r: Reading,
        good: &mut FullSnapshot,
        history: &mut Vec<LogPoint>,
        first: usize,
        on_event: &mut dyn FnMut(&Event, &Trainer<'g>) -> Result<()>,
    ) -> Result<()> {
        let words = r.read.wait(self.gpu)?;
        let losses = self.ring_losses(&words, r.from, r.to);
        if let Some(why) = self.divergence(&losses, None) {
            self.restore_full(good)?;
            return Err(Error::Diverged(format!(
                "{why} by step {} (last good reading at step {}); the parameters and optimiser were reset to that step — lower the learning rate or the step size",
                r.step, good.params.step
            )));
        }
        *good = r.snapshot;
        let point = LogPoint {
            step: r.step,
            loss: *losses.last().unwrap_or(&f64::NAN),
            heldout: None,
        };
        self.log_event(&point, first, r.elapsed, on_event)?;
        history.push(point);
        Ok(())
    }

    fn log_event(
        &self,
        point: &LogPoint,
        first: usize,
        elapsed: std::time::Duration,
        on_event: &mut dyn FnMut(&Event, &Trainer<'g>) -> Result<()>,
    ) -> Result<()> {
        let total = self.cfg.steps;
        let label = if self.cfg.objective.is_loss() {
            "loss"
        } else {
            "cd-1 surrogate (not a loss)"
        };
        let progress = Progress {
            what: "train",
            done: point.step - first,
            total: total - first,
            unit: "steps",
            elapsed,
            detail: format!(
                "step {}/{total}  {label} {:.4}{}",
                point.step,
                point.loss,
                point
                    .heldout
                    .map(|h| format!("  held-out {h:.4}"))
                    .unwrap_or_default()
            ),
        };
        on_event(
            &Event::Log {
                point,
                progress: &progress,
            },
            self,
        )
    }

    /// Why the run counts as diverged at this reading, if it does.
    /// Why the run counts as diverged at this reading, if it does: a NaN/Inf loss or held-out
    /// value; for a loss, a rise of more than F × its initial scale above the initial loss
    /// (training lowers a loss); any value beyond F² × that scale (F = `diverge_factor`, the
    /// scale max(1, |initial loss|)).
    fn divergence(&self, losses: &[f64], heldout: Option<f64>) -> Option<String> {
        losses
            .iter()
            .find_map(|&l| self.divergence_of(l))
            .or_else(|| {
                heldout
                    .filter(|h| !h.is_finite())
                    .map(|h| format!("the held-out value became {h}"))
            })
    }

    fn divergence_of(&self, loss: f64) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!("the loss became {loss}"));
        }
        let f = self.cfg.diverge_factor;
        let first = self.first_loss.unwrap_or(0.0);
        let scale = first.abs().max(1.0);
        if f <= 0.0 {
            return None;
        }
        if self.cfg.objective.is_loss() && loss - first > f * scale {
            return Some(format!(
                "the loss rose to {loss:.4e} from {first:.4e} at the start, more than {f:.0e} × its scale"
            ));
        }
        (loss.abs() > f * f * scale).then(|| {
            format!(
                "the loss reached {loss:.3e}, beyond {:.0e} × its initial scale",
                f * f
            )
        })
    }

    /// Best held-out (step, value) so far, when evaluated.
    pub fn best_heldout(&self) -> Option<(usize, f64)> {
        self.best.as_ref().map(|(h, s)| (s.step, *h))
    }

    /// Put the parameters of the best held-out evaluation back (for `--keep best`); returns
    /// its step, or None when there was no held-out evaluation.
    pub fn restore_best(&mut self) -> Result<Option<usize>> {
        let Some((_, snap)) = &self.best else {
            return Ok(None);
        };
        let step = snap.step;
        let snap = self.copy_snapshot(snap)?;
        self.restore(&snap)?;
        Ok(Some(step))
    }

    fn copy_snapshot(&self, s: &Snapshot) -> Result<Snapshot> {
        let g = self.gpu;
        let all = |ts: &[Tensor]| ts.iter().map(|t| copy(g, t)).collect::<Result<Vec<_>>>();
        Ok(Snapshot {
            step: s.step,
            weights: all(&s.weights)?,
            biases: all(&s.biases)?,
            sn_u: copy_sn(g, &s.sn_u)?,
        })
    }

    /// The state a resumed run needs (parameters aside: see [`Model::to_host`]).
    pub fn state(&self) -> Result<TrainState> {
        let (opt_s1, opt_s2) = self.opt.state_host(self.gpu)?;
        let best = match &self.best {
            Some((h, s)) => {
                let m: Model<&Gpu> = Model {
                    arch: self.model.arch.clone(),
                    weights: s.weights.clone(),
                    biases: s.biases.clone(),
                    sn_u: s.sn_u.clone(),
                };
                Some((s.step, *h, m.to_host(|t| self.gpu.read(t))?))
            }
            None => None,
        };
        Ok(TrainState {
            step: self.steps_done,
            rng_stream: self.rng.stream,
            opt_t: self.opt.t,
            opt_s1,
            opt_s2,
            best,
            since_best: self.since_best,
            first_loss: self.first_loss,
        })
    }

    /// Continue from `state` (the model given to [`Trainer::new`] holds its parameters).
    pub fn set_state(&mut self, state: &TrainState) -> Result<()> {
        self.opt
            .load_state(self.gpu, state.opt_t, &state.opt_s1, &state.opt_s2)?;
        self.steps_done = state.step;
        self.rng.stream = state.rng_stream;
        self.since_best = state.since_best;
        self.first_loss = state.first_loss;
        self.best = match &state.best {
            Some((step, h, hp)) => {
                let m: Model<&Gpu> = Model::from_host(self.model.arch.clone(), hp, |r, c, d| {
                    self.gpu.upload(r, c, d)
                })?;
                Some((
                    *h,
                    Snapshot {
                        step: *step,
                        weights: m.weights,
                        biases: m.biases,
                        sn_u: m.sn_u,
                    },
                ))
            }
            None => None,
        };
        Ok(())
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
    let chunk = step.eval_rows();
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
