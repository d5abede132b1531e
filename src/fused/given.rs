//! A fused MVL training step on rows its caller makes every step — the auto-encoders train
//! their energies (the implicit VAE's conditional energy, the WAE's energy of q̃) on their
//! encoder's samples of the minibatch — with its input buffers and bindings made once: each
//! step copies the rows (and condition rows) in and records the step.

use super::{FusedData, FusedMvl, Options, Path, Segment};
use crate::backend::Backend;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::model::Model;
use crate::objective::{self, Objective};
use crate::optim::Optimizer;

/// The step a trainer keeps for its energy: built at its first step and again whenever the
/// batch size changes; holds `None` where the energy stays on the tape.
#[derive(Default)]
pub struct GivenCache<'g>(Option<Option<GivenRows<'g>>>);

impl<'g> GivenCache<'g> {
    /// The step for batches of `rows` rows, built by `build` if there is none for them yet.
    pub fn get(
        &mut self,
        rows: usize,
        build: impl FnOnce() -> Result<Option<GivenRows<'g>>>,
    ) -> Result<Option<&GivenRows<'g>>> {
        let stale = self
            .0
            .as_ref()
            .is_none_or(|f| f.as_ref().is_some_and(|f| f.rows() != rows));
        if stale {
            self.0 = Some(build()?);
        }
        Ok(self.0.as_ref().and_then(|f| f.as_ref()))
    }
}

pub struct GivenRows<'g> {
    gpu: &'g Gpu,
    pub step: FusedMvl<'g>,
    rows: Tensor,
    cond: Option<Tensor>,
    data: FusedData,
}

impl<'g> GivenRows<'g> {
    /// The step for `model` (trained by `opt`) on `rows` rows of `width` columns (data
    /// coordinates: the chart form on the sphere) and, for a conditional energy, condition
    /// rows of `cond_width` columns; the network sees s·y (`scale`). None where `path` or the
    /// model keeps the step on the tape.
    pub fn new(
        gpu: &'g Gpu,
        model: &mut Model<&'g Gpu>,
        cfg: &objective::Config,
        opt: &Optimizer,
        path: Path,
        (rows, width, cond_width): (usize, usize, usize),
        scale: f32,
    ) -> Result<Option<GivenRows<'g>>> {
        if !path.use_fused(&model.arch, Objective::Mvl, cfg)? {
            return Ok(None);
        }
        let opts = Options {
            scale,
            ..Options::from_env()?
        };
        let step = FusedMvl::build(gpu, model, cfg, rows, Some(opt), &opts)?;
        let y = gpu.full(rows, width, 0.0)?;
        let cond = (cond_width > 0)
            .then(|| gpu.full(rows, cond_width, 0.0))
            .transpose()?;
        let data = step.bind_with(&y, None, cond.as_ref())?;
        Ok(Some(GivenRows {
            gpu,
            step,
            rows: y,
            cond,
            data,
        }))
    }

    /// Rows a step takes.
    pub fn rows(&self) -> usize {
        self.rows.shape().0
    }

    /// One training step on rows `y` (and condition rows `c`) with the noise of draw
    /// (seed, stream) — the draw the tape path's `tape.random` would make — then the
    /// optimiser step; returns the loss (a copy: the next step overwrites the step's own).
    pub fn record(
        &self,
        model: &mut Model<&'g Gpu>,
        opt: &mut Optimizer,
        y: &Tensor,
        c: Option<&Tensor>,
        (seed, stream): (u64, u64),
    ) -> Result<Tensor> {
        self.gpu.copy_into(y, &self.rows)?;
        if let (Some(dst), Some(src)) = (&self.cond, c) {
            self.gpu.copy_into(src, dst)?;
        }
        // One draw a step (the noise), stream `stream`: a segment of its own starting here.
        let seg = Segment {
            seed,
            stream: stream - 1,
            t_base: opt.t,
            lr0: opt.lr,
            lr_slope: 0.0,
            lr_t0: opt.t,
            draws: 1,
        };
        self.step.record_step_given(&self.data, model, opt, &seg)?;
        self.gpu.affine(&self.step.loss()?, 1.0, 0.0)
    }
}
