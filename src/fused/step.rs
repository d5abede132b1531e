//! The fused step on a device: its buffers, bindings and kernels, and the calls that record
//! a training step or an evaluation (see the module documentation for what they compute).

use std::cell::Cell;
use std::sync::Arc;

use super::plan::{LayersShape, Mode, Net, Phase, Plan, Shape, Specialise};
use super::seam::{self, StepParams};
use super::{shape, unsupported, Options, Segment, ShapeChoice};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::gpu::{CustomBindings, CustomKernel, CustomLayout, Gpu, Tensor};
use crate::model::Model;
use crate::objective::{self, Objective};
use crate::optim::{Optimizer, Rule};
use crate::rng::words;

/// The fused step, built for one model shape, batch size and objective settings, and
/// bound to the model's parameters and an optimiser's state. The data it runs on are bound
/// separately ([`FusedMvl::bind`]), so training and held-out evaluation share the kernels.
pub struct FusedMvl<'g> {
    gpu: &'g Gpu,
    plan: Plan,
    spec: Specialise,
    /// Rows of a training minibatch (a multiple of the plan's rows or not).
    batch: usize,
    /// The launches of a step (every mode: the mode is a value of the parameter block),
    /// built on first use: a driver compiles each kernel when its pipeline is made
    /// (lavapipe: seconds for the tile kernel).
    launches: std::cell::OnceCell<Launches>,
    /// Pipelines made so far, by entry point (shared between modes).
    pipelines: std::cell::RefCell<Vec<(String, Arc<CustomKernel>)>>,
    layout: Arc<CustomLayout>,
    trains: bool,
    ws: Tensor,
    sn: Tensor,
    theta: Tensor,
    s1: Tensor,
    s2: Tensor,
    ctl: Tensor,
    ring: usize,
    rule: Option<Rule>,
    /// Host mirror of the device counter's t (None: unknown, write it before the next step).
    counter: Cell<Option<u32>>,
    /// Columns of a data row (one fewer than the variable in the Poincaré ball) and of a
    /// condition row.
    data_width: usize,
    cond_width: usize,
}

/// Data (and optionally a fixed noise draw, one row per data row, and condition rows)
/// bound for a fused step.
pub struct FusedData {
    bindings: Arc<CustomBindings>,
    rows: usize,
    given_noise: bool,
}

impl FusedData {
    /// Rows of the bound data.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

type Launches = Vec<(Arc<CustomKernel>, [u32; 3], Phase)>;

/// The plan of a step for `arch` with launches of `batch` rows on this adapter in `shape`.
fn plan_for(
    gpu: &Gpu,
    arch: &crate::model::Arch,
    cfg: &objective::Config,
    opts: &Options,
    batch: usize,
    shape: Shape,
    theta: (&[usize], usize),
) -> Result<Plan> {
    let align = (gpu.report().limits.min_storage_buffer_offset_alignment as usize / 4).max(4);
    let d = arch.out_dim();
    let net = Net {
        d,
        dc: arch.dim - d,
        hidden: arch.hidden.clone(),
        act: arch.act,
        spectral_norm: arch.spectral_norm,
        scale: opts.scale,
    };
    let ball = cfg.manifold == crate::manifold::Manifold::Hyperbolic;
    Plan::new(&net, batch, shape, ball, theta, align)
}

/// Loop iterations an invocation may run on a CPU driver (llvmpipe's limit is 65 535 in all),
/// with a margin for the estimate.
const LOOP_BUDGET: usize = 60_000;

/// The settings the kernels are specialised for.
fn spec_for(cfg: &objective::Config, opt: Option<&Optimizer>, gpu: &Gpu) -> Specialise {
    Specialise {
        eps: cfg.eps,
        rescale: cfg.rescale,
        control_variate: cfg.control_variate,
        energy_reg: cfg.energy_reg,
        opt_code: opt.map_or(0, |o| o.rule.kernel_args(0.0, 1).0),
        subgroup: gpu.subgroup_core(),
        sphere: cfg.manifold == crate::manifold::Manifold::Sphere,
        ball: cfg.manifold == crate::manifold::Manifold::Hyperbolic,
    }
}

/// The packed layout of a model's parameters on this adapter.
fn theta_layout(gpu: &Gpu, arch: &crate::model::Arch) -> (Vec<usize>, usize) {
    let shapes: Vec<(usize, usize)> = arch
        .layer_shapes()
        .iter()
        .flat_map(|&(fi, fo)| [(fi, fo), (1, fo)])
        .collect();
    gpu.packed_layout(&shapes)
}

/// What the shape choice sees of this adapter and step.
fn shape_context(gpu: &Gpu, arch: &crate::model::Arch, batch: usize) -> shape::Context {
    let r = gpu.report();
    let mut widths = vec![arch.dim];
    widths.extend(&arch.hidden);
    shape::Context {
        cpu: r.device_type == "Cpu",
        cpu_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        workgroup_bytes: r.limits.max_compute_workgroup_storage_size as usize,
        max_invocations: r.limits.max_compute_invocations_per_workgroup as usize,
        batch,
        widths,
        theta_len: theta_layout(gpu, arch).1,
    }
}

/// Make the model's parameters one packed buffer (W₁, b₁, W₂, … at [`Gpu::packed_layout`]
/// offsets from element 0), copying them there if they are not; returns the whole buffer.
fn pack_params(gpu: &Gpu, model: &mut Model<&Gpu>) -> Result<(Tensor, Vec<usize>, usize)> {
    let params = model.params();
    let shapes: Vec<(usize, usize)> = params.iter().map(|p| p.shape()).collect();
    let (offsets, total) = gpu.packed_layout(&shapes);
    let packed = params
        .iter()
        .zip(&offsets)
        .all(|(p, &at)| p.shares_buffer(&params[0]) && p.offset_elems() == at);
    let whole = if packed {
        params[0].view(0, 1, total)?
    } else {
        let whole = gpu.full(1, total, 0.0)?;
        let views: Vec<Tensor> = shapes
            .iter()
            .zip(&offsets)
            .map(|(&(r, c), &at)| whole.view(at, r, c))
            .collect::<Result<_>>()?;
        for (src, dst) in params.iter().zip(&views) {
            gpu.copy_into(src, dst)?;
        }
        for (l, pair) in views.chunks(2).enumerate() {
            model.weights[l] = pair[0].clone();
            model.biases[l] = pair[1].clone();
        }
        whole
    };
    Ok((whole, offsets, total))
}

/// Storage bindings of the fused kernels: data, theta, sn, ws, s1, s2, given, ctl, cond.
const READ_ONLY: [bool; 9] = [true, false, false, false, false, false, true, false, true];

impl<'g> FusedMvl<'g> {
    /// Build the step for `model` with batches of `batch` rows, the shape from
    /// `WMVL_FUSED_SHAPE` or chosen for the adapter. With `opt` (whose state must belong to
    /// the model's parameters) [`FusedMvl::record_step`] trains; without, only
    /// [`FusedMvl::record_eval`] is available (chunks of at most `batch` rows). Packs the
    /// model's parameters into one buffer if they are not already.
    pub fn new(
        gpu: &'g Gpu,
        model: &mut Model<&'g Gpu>,
        cfg: &objective::Config,
        batch: usize,
        opt: Option<&Optimizer>,
    ) -> Result<FusedMvl<'g>> {
        Self::build(gpu, model, cfg, batch, opt, &Options::from_env()?)
    }

    /// [`FusedMvl::new`] in the layers shape with training minibatches processed in
    /// sub-batches of `sub` rows (the same draws, loss and gradient; less memory, more
    /// launches).
    pub fn with_sub_batch(
        gpu: &'g Gpu,
        model: &mut Model<&'g Gpu>,
        cfg: &objective::Config,
        batch: usize,
        sub: usize,
        opt: Option<&Optimizer>,
    ) -> Result<FusedMvl<'g>> {
        let opts = Options {
            shape: ShapeChoice::Layers,
            sub_batch: Some(sub),
            ..Options::default()
        };
        Self::build(gpu, model, cfg, batch, opt, &opts)
    }

    /// The step with explicit options.
    pub fn build(
        gpu: &'g Gpu,
        model: &mut Model<&'g Gpu>,
        cfg: &objective::Config,
        batch: usize,
        opt: Option<&Optimizer>,
        opts: &Options,
    ) -> Result<FusedMvl<'g>> {
        let arch = model.arch.clone();
        if let Some(why) = unsupported(&arch, Objective::Mvl, cfg) {
            return Err(Error::Invalid(why));
        }
        if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
            return Err(Error::Invalid(format!(
                "step size eps must be positive, got {}",
                cfg.eps
            )));
        }
        if !(cfg.energy_reg.is_finite() && cfg.energy_reg >= 0.0) {
            return Err(Error::Invalid(format!(
                "the energy regulariser must be finite and non-negative, got {}",
                cfg.energy_reg
            )));
        }
        if opts.ring == 0 || opts.ring > 1 << 20 {
            return Err(Error::Invalid(format!(
                "the loss ring must hold 1 to 2^20 steps, got {}",
                opts.ring
            )));
        }
        if batch == 0 || opts.sub_batch.is_some_and(|s| s == 0 || s > batch) {
            return Err(Error::Invalid(format!(
                "batch {batch} in sub-batches of {:?}: both must be positive, the sub-batch at most the batch",
                opts.sub_batch
            )));
        }
        let limits = &gpu.report().limits;
        if (limits.max_storage_buffers_per_shader_stage as usize) < READ_ONLY.len() {
            return Err(Error::Device(format!(
                "the fused step binds {} storage buffers, this adapter at most {} (use --path tape)",
                READ_ONLY.len(),
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let max_binding = gpu.max_tensor_bytes();
        let (offsets, total) = theta_layout(gpu, &arch);
        let ctx = shape_context(gpu, &arch, batch);
        let mut shape = match opts.tile {
            Some(t) => Shape::Tile(t),
            None => shape::choose(opts.shape, &ctx),
        };
        let fits = |p: &Plan| 4 * p.ws_len as u64 <= max_binding;
        // The layers shape's rows per launch: the given sub-batch, or for training the largest
        // batch whose workspace fits one binding (evaluation takes chunks of the batch).
        let layers_rows = || match (opts.sub_batch, opt) {
            (Some(s), _) => s,
            (None, Some(_)) => Self::largest_batch(gpu, &arch, batch).unwrap_or(batch),
            (None, None) => batch,
        };
        let plan = match shape {
            Shape::Layers(_) => plan_for(
                gpu,
                &arch,
                cfg,
                opts,
                layers_rows(),
                shape,
                (&offsets, total),
            )?,
            Shape::Tile(mut t) => loop {
                // Fewer rows in flight until the workspace fits one binding.
                shape = Shape::Tile(t);
                let p = plan_for(gpu, &arch, cfg, opts, batch, shape, (&offsets, total))?;
                if fits(&p) || t.rows == 1 {
                    break p;
                }
                t.rows = t.rows.div_ceil(2);
            },
        };
        // A CPU driver (llvmpipe) ends an invocation's loops after 65 535 iterations in all:
        // more invocations per workgroup until the tile kernel stays below that, or refuse.
        let plan = match plan.shape {
            Shape::Tile(mut t) if ctx.cpu => {
                let mut p = plan;
                while p.tile_loop_iterations(&spec_for(cfg, opt, gpu)) > LOOP_BUDGET
                    && 2 * t.size <= ctx.max_invocations.min(1024)
                {
                    t.size *= 2;
                    p = plan_for(
                        gpu,
                        &arch,
                        cfg,
                        opts,
                        batch,
                        Shape::Tile(t),
                        (&offsets, total),
                    )?;
                }
                let n = p.tile_loop_iterations(&spec_for(cfg, opt, gpu));
                if n > LOOP_BUDGET && opts.shape == ShapeChoice::Auto {
                    let layers = Shape::Layers(LayersShape { size: 64 });
                    plan_for(
                        gpu,
                        &arch,
                        cfg,
                        opts,
                        layers_rows(),
                        layers,
                        (&offsets, total),
                    )?
                } else if n > LOOP_BUDGET {
                    return Err(Error::Invalid(format!(
                        "the tile shape's kernel would run {n} loop iterations per invocation, more than this CPU driver runs ({LOOP_BUDGET}); use --shape layers (or a smaller batch)"
                    )));
                } else {
                    p
                }
            }
            _ => plan,
        };
        if !fits(&plan) {
            return Err(Error::OutOfMemory(format!(
                "the fused step needs a {} MiB workspace for (sub-)batches of {} rows and hidden widths {:?}, more than this adapter binds at once ({} MiB); reduce the batch size (or use --path tape)",
                (4 * plan.ws_len as u64) >> 20,
                plan.ws_rows,
                arch.hidden,
                max_binding >> 20
            )));
        }
        let (theta, offsets, total) = pack_params(gpu, model)?;
        if total != plan.theta_len || offsets.len() != 2 * plan.layers() {
            return Err(Error::Shape(
                "the model's packed parameters do not match its architecture".into(),
            ));
        }
        let ws = gpu.scratch(1, plan.ws_len)?;
        let sn = gpu.full(1, plan.sn_len, 0.0)?;
        let ctl = gpu.full(1, seam::ctl::RING as usize + opts.ring, 0.0)?;
        let (s1, s2) = match opt {
            Some(o) => {
                let (s1, s2) = o.packed_state();
                if s1.len() < total || s2.len() < total || o.state().len() != offsets.len() {
                    return Err(Error::Shape(
                        "the optimiser does not hold this model's parameters".into(),
                    ));
                }
                (s1.clone(), s2.clone())
            }
            None => (gpu.full(1, 1, 0.0)?, gpu.full(1, 1, 0.0)?),
        };
        let spec = spec_for(cfg, opt, gpu);
        let layout = gpu.shared_layout(&READ_ONLY)?;
        // The whole module once, so that a WGSL error shows here, before any work; each
        // kernel is built from a module of its own when first used.
        gpu.custom_module(&format!("fused {}", plan.shape.name()), &plan.module(&spec))?;
        let data_width = plan.io.dw as usize;
        let cond_width = plan.io.dc as usize;
        let fused = FusedMvl {
            gpu,
            plan,
            spec,
            batch,
            launches: Default::default(),
            pipelines: Default::default(),
            layout,
            trains: opt.is_some(),
            ws,
            sn,
            theta,
            s1,
            s2,
            ctl,
            ring: opts.ring,
            rule: opt.map(|o| o.rule),
            counter: Cell::new(None),
            data_width,
            cond_width,
        };
        fused.attach_sn(model)?;
        Ok(fused)
    }

    /// The largest batch (a power of two, at most `want`) whose layers-shape workspace this
    /// adapter can bind for a model of `arch`, or None if not even 64 rows fit.
    pub fn largest_batch(gpu: &Gpu, arch: &crate::model::Arch, want: usize) -> Option<usize> {
        let (offsets, total) = theta_layout(gpu, arch);
        let max = gpu.max_tensor_bytes();
        let shape = Shape::Layers(LayersShape { size: 64 });
        let cfg = objective::Config::default();
        let opts = Options::default();
        let mut b = want.max(1).next_power_of_two();
        while b >= 64 {
            let fits = plan_for(gpu, arch, &cfg, &opts, b, shape, (&offsets, total))
                .is_ok_and(|p| 4 * p.ws_len as u64 <= max);
            if fits {
                return Some(b.min(want));
            }
            b /= 2;
        }
        None
    }

    /// The largest chunk (at most `want` rows) this adapter evaluates in one pass for
    /// `arch` with per-sample values kept, or None: the tile shape's rows in flight, the
    /// layers shape's [`FusedMvl::largest_batch`].
    pub fn largest_chunk(
        gpu: &Gpu,
        arch: &crate::model::Arch,
        want: usize,
    ) -> Result<Option<usize>> {
        let ctx = shape_context(gpu, arch, want);
        match shape::choose(ShapeChoice::from_env()?, &ctx) {
            Shape::Tile(t) => Ok(Some(want.min(t.rows * t.groups))),
            Shape::Layers(_) => Ok(Self::largest_batch(gpu, arch, want)),
        }
    }

    /// The shape a step for `arch` with launches of `batch` rows takes on this adapter
    /// (`WMVL_FUSED_SHAPE`, `WMVL_TILE` or the adapter's choice), before any fitting to
    /// the workspace binding.
    pub fn shape_for(gpu: &Gpu, arch: &crate::model::Arch, batch: usize) -> Result<Shape> {
        Ok(shape::choose(
            ShapeChoice::from_env()?,
            &shape_context(gpu, arch, batch),
        ))
    }

    /// Bind data (n, d) to run on, with an optional fixed noise draw of the same shape.
    pub fn bind(&self, data: &Tensor, noise: Option<&Tensor>) -> Result<FusedData> {
        self.bind_with(data, noise, None)
    }

    /// [`FusedMvl::bind`] with the condition rows (n, dc) of a conditional energy.
    pub fn bind_with(
        &self,
        data: &Tensor,
        noise: Option<&Tensor>,
        cond: Option<&Tensor>,
    ) -> Result<FusedData> {
        let (n, d) = data.shape();
        if d != self.data_width {
            return Err(Error::Shape(format!(
                "the model takes data of {} columns, the data has {d}",
                self.data_width
            )));
        }
        if n == 0 {
            return Err(Error::Invalid("no data rows to bind".into()));
        }
        if let Some(z) = noise {
            if z.shape() != (n, d) {
                return Err(Error::Shape(format!(
                    "noise has shape {:?}, the data {:?}",
                    z.shape(),
                    (n, d)
                )));
            }
        }
        match (cond, self.cond_width) {
            (None, 0) => {}
            (Some(c), w) if c.shape() == (n, w) && w > 0 => {}
            (Some(c), w) => {
                return Err(Error::Shape(format!(
                    "condition rows have shape {:?}, the model takes {n} × {w}",
                    c.shape()
                )))
            }
            (None, w) => {
                return Err(Error::Invalid(format!(
                    "this conditional energy needs {w} condition columns per data row"
                )))
            }
        }
        let unused = self.gpu.full(1, 1, 0.0)?;
        let bindings = self.gpu.custom_bindings(
            &self.layout,
            &[
                data,
                &self.theta,
                &self.sn,
                &self.ws,
                &self.s1,
                &self.s2,
                noise.unwrap_or(&unused),
                &self.ctl,
                cond.unwrap_or(&unused),
            ],
        )?;
        Ok(FusedData {
            bindings,
            rows: n,
            given_noise: noise.is_some(),
        })
    }

    /// The plan (layout and kernel list) this step runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The shape this step runs in.
    pub fn shape(&self) -> Shape {
        self.plan.shape
    }

    /// The launches of a step, built now if they were not.
    fn launches(&self) -> Result<&Launches> {
        if let Some(l) = self.launches.get() {
            return Ok(l);
        }
        let mut list = Vec::new();
        for k in self.plan.kernels(&self.spec) {
            let found = self
                .pipelines
                .borrow()
                .iter()
                .find(|(e, _)| *e == k.entry)
                .map(|(_, p)| p.clone());
            let kernel = match found {
                Some(p) => p,
                None => {
                    // A module of its own (see `Plan::module_for`), shared with every step
                    // built for the same model and settings on this device.
                    let p = self.gpu.cached_kernel(
                        &self.layout,
                        &self.plan.module_for(&self.spec, Some(&k.entry)),
                        &k.label,
                        &k.entry,
                    )?;
                    self.pipelines
                        .borrow_mut()
                        .push((k.entry.clone(), p.clone()));
                    p
                }
            };
            list.push((kernel, k.groups, k.phase));
        }
        Ok(self.launches.get_or_init(|| list))
    }

    /// Kernel launches (dispatches) per training step, derived from the kernel list.
    pub fn launches_per_step(&self) -> usize {
        let train = self.plan.kernels(&self.spec);
        let subs = self.batch.div_ceil(self.plan.b).max(1);
        let body = train.iter().filter(|k| k.phase == Phase::Body).count();
        train.len() + (subs - 1) * body
    }

    /// Rows per sub-batch (layers shape) or per launch.
    pub fn sub_batch(&self) -> usize {
        self.plan.b
    }

    /// Bytes of device memory the step itself holds (workspace, spectral-norm slots, counter).
    pub fn memory_bytes(&self) -> u64 {
        4 * (self.ws.len() + self.sn.len() + self.ctl.len()) as u64
    }

    /// Make the model's spectral-norm vectors live in the step's buffer (copying them there
    /// if something replaced them, e.g. a tape step or a restore), so both stay one thing.
    fn attach_sn(&self, model: &mut Model<&'g Gpu>) -> Result<()> {
        for (m, slots) in self.plan.sn_slots.iter().enumerate() {
            let view = self.sn.view(slots.u, 1, self.plan.widths[m + 1])?;
            let current = model.sn_u[m]
                .as_ref()
                .ok_or_else(|| Error::Invalid(format!("layer {m} has no spectral-norm vector")))?;
            if current.shares_buffer(&view) && current.offset_elems() == view.offset_elems() {
                continue;
            }
            self.gpu.copy_into(current, &view)?;
            model.sn_u[m] = Some(view);
        }
        Ok(())
    }

    /// Check that the model still holds the parameters this step was built on, and that its
    /// spectral-norm vectors are the step's.
    fn check_model(&self, model: &mut Model<&'g Gpu>) -> Result<()> {
        let params = model.params();
        let ok = params.len() == 2 * self.plan.layers()
            && params.iter().enumerate().all(|(i, p)| {
                let at = if i % 2 == 0 {
                    self.plan.w_off[i / 2]
                } else {
                    self.plan.b_off[i / 2]
                };
                p.shares_buffer(&self.theta) && p.offset_elems() == at
            });
        if !ok {
            return Err(Error::Invalid(
                "the model's parameters were replaced after the fused step was built; build it again".into(),
            ));
        }
        self.attach_sn(model)
    }

    /// Record the kernels in `phases` with parameter block `step` (its flags: the mode).
    fn launch(&self, phases: &[Phase], data: &FusedData, step: &StepParams) -> Result<()> {
        let words: &[u32] = bytemuck::cast_slice(std::slice::from_ref(step));
        for (k, groups, phase) in self.launches()? {
            if phases.contains(phase) {
                self.gpu.launch_custom(k, &data.bindings, words, *groups)?;
            }
        }
        Ok(())
    }

    /// The device counter must hold the optimiser's t before a training step: write it
    /// where the host's mirror says otherwise (a new step, a restore, a resume).
    fn sync_counter(&self, t: u32) -> Result<()> {
        if self.counter.get() == Some(t) {
            return Ok(());
        }
        self.gpu.write(
            &self.ctl.buf,
            self.ctl.offset,
            bytemuck::bytes_of(&[t, t + 1]),
        )?;
        self.counter.set(Some(t));
        Ok(())
    }

    /// The parameter block of a training step in segment `seg`.
    fn train_params(&self, data: &FusedData, opt: &Optimizer, seg: &Segment) -> Result<StepParams> {
        if opt.t < seg.t_base {
            return Err(Error::Invalid(format!(
                "the optimiser's step {} precedes its segment's first step {}",
                opt.t, seg.t_base
            )));
        }
        if self.rule != Some(opt.rule) || !opt.packed_state().0.shares_buffer(&self.s1) {
            return Err(Error::Invalid(
                "this fused step was built without (or for another) optimiser".into(),
            ));
        }
        let (_, f, _) = opt.rule.kernel_args(seg.lr0, 1);
        let (lb1, lb2) = match opt.rule {
            Rule::Adam { beta1, beta2, .. } => {
                ((beta1 as f64).ln() as f32, (beta2 as f64).ln() as f32)
            }
            _ => (0.0, 0.0),
        };
        let w = words(seg.seed, seg.stream);
        Ok(StepParams {
            seed: [w[2], w[3]],
            stream_base: [w[0], w[1]],
            t_base: seg.t_base,
            data_rows: data.rows as u32,
            total: self.batch as u32,
            ring_len: self.ring as u32,
            lr0: seg.lr0,
            lr_slope: seg.lr_slope,
            rho: f[1],
            opt_eps: f[2],
            f3: f[3],
            log_beta1: lb1,
            log_beta2: lb2,
            eps0: self.spec.eps,
            reg: self.spec.energy_reg,
            draws: seg.draws.clamp(1, 2),
            lr_t0: seg.lr_t0,
            ..StepParams::default()
        })
    }

    /// Record one training step (nothing is waited for): a minibatch of `batch` rows of
    /// `data` drawn, with its noise, from the draws of `seg` at the optimiser's step (the
    /// draws the tape path makes with the same `rng::Rng`), the power iteration, then the
    /// optimiser step. Advances `opt.t`; the caller advances its random stream by two.
    pub fn record_step(
        &self,
        data: &FusedData,
        model: &mut Model<&'g Gpu>,
        opt: &mut Optimizer,
        seg: &Segment,
    ) -> Result<()> {
        self.record_train(Mode::Train, data, model, opt, seg)
    }

    /// Record one training step on the first `batch` rows of `data` in order (the
    /// auto-encoders' energies train on the encoder's samples of their minibatch), noise from
    /// `seg`'s draws.
    pub fn record_step_given(
        &self,
        data: &FusedData,
        model: &mut Model<&'g Gpu>,
        opt: &mut Optimizer,
        seg: &Segment,
    ) -> Result<()> {
        if data.rows < self.batch {
            return Err(Error::Shape(format!(
                "{} data rows for a step of {} rows",
                data.rows, self.batch
            )));
        }
        self.record_train(Mode::TrainGiven, data, model, opt, seg)
    }

    fn record_train(
        &self,
        mode: Mode,
        data: &FusedData,
        model: &mut Model<&'g Gpu>,
        opt: &mut Optimizer,
        seg: &Segment,
    ) -> Result<()> {
        if !self.trains {
            return Err(Error::Invalid(
                "this fused step was built without an optimiser: it evaluates only".into(),
            ));
        }
        if self.gpu.is_recording() {
            return Err(crate::gpu::fused_inside());
        }
        let mut step = self.train_params(data, opt, seg)?;
        step.flags = mode.flags();
        self.check_model(model)?;
        self.sync_counter(opt.t)?;
        // A minibatch larger than the workspace holds runs in sub-batches of the plan's size
        // (layers shape): rows row0.. of the same draw, their sums added up, one update after.
        self.launch(&[Phase::Head], data, &step)?;
        for (s, row0) in (0..self.batch).step_by(self.plan.b).enumerate() {
            step.row0 = row0 as u32;
            step.rows = self.plan.b.min(self.batch - row0) as u32;
            step.acc = (s > 0) as u32;
            self.launch(&[Phase::Body], data, &step)?;
        }
        self.launch(&[Phase::Tail], data, &step)?;
        opt.t += 1;
        self.counter.set(Some(opt.t));
        Ok(())
    }

    /// Record the loss and gradient of rows `row0 .. row0 + rows` of the bound data (rows ≤
    /// the batch size), with its fixed noise or noise from draw `noise_draw`; the parameters
    /// and spectral-norm vectors are not changed. Read [`FusedMvl::loss`],
    /// [`FusedMvl::per_sample`] and [`FusedMvl::grads`] afterwards.
    pub fn record_eval(
        &self,
        data: &FusedData,
        model: &mut Model<&'g Gpu>,
        row0: usize,
        rows: usize,
        noise_draw: (u64, u64),
    ) -> Result<()> {
        if rows == 0 || rows > self.plan.b || row0 + rows > data.rows {
            return Err(Error::Invalid(format!(
                "rows {row0}..{} of {} in chunks of at most {}",
                row0 + rows,
                data.rows,
                self.plan.b
            )));
        }
        self.check_model(model)?;
        let mode = if data.given_noise {
            Mode::EvalGivenNoise
        } else {
            Mode::Eval
        };
        self.launch(
            &[Phase::Head, Phase::Body, Phase::Tail],
            data,
            &StepParams {
                noise_words: words(noise_draw.0, noise_draw.1),
                data_rows: data.rows as u32,
                row0: row0 as u32,
                rows: rows as u32,
                total: rows as u32,
                ring_len: self.ring as u32,
                eps0: self.spec.eps,
                reg: self.spec.energy_reg,
                flags: mode.flags(),
                draws: 2,
                ..Default::default()
            },
        )
    }

    /// The loss of the last recorded step (1 × 1): mean per-sample value plus regulariser.
    pub fn loss(&self) -> Result<Tensor> {
        self.ws.view(self.plan.io.out as usize, 1, 1)
    }

    /// The per-sample values −ediff/εᵢ of the last recorded evaluation (its first `rows`
    /// rows; the layers shape's and the tile shape's workspace rows are the launch's rows).
    pub fn per_sample(&self, rows: usize) -> Result<Tensor> {
        if let Shape::Tile(t) = self.plan.shape {
            if rows > t.rows * self.plan.groups {
                // Rows beyond the rows in flight were overwritten by later tiles.
                return Err(Error::Invalid(format!(
                    "per-sample values of {rows} rows: this tile shape keeps {} (evaluate in chunks of at most that)",
                    t.rows * self.plan.groups
                )));
            }
        }
        self.ws
            .view(self.plan.io.loss as usize, rows.min(self.plan.ws_rows), 1)
    }

    /// Rows whose per-sample values one evaluation keeps (the chunk size for [`FusedMvl::per_sample`]).
    pub fn eval_rows(&self) -> usize {
        self.plan.ws_rows.min(self.plan.b)
    }

    /// The parameter gradient of the last recorded step, in [`Model::params`] order.
    pub fn grads(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        let grad = self.plan.io.grad as usize;
        for l in 1..=self.plan.layers() {
            let (fi, fo) = (self.plan.widths[l - 1], self.plan.widths[l]);
            out.push(self.ws.view(grad + self.plan.w_off[l - 1], fi, fo)?);
            out.push(self.ws.view(grad + self.plan.b_off[l - 1], 1, fo)?);
        }
        Ok(out)
    }

    /// Steps the loss ring holds.
    pub fn ring_len(&self) -> usize {
        self.ring
    }

    /// The losses of training steps `first .. first + count` (optimiser counts t, 0-based:
    /// the step that took t to t + 1), read from the ring (waits for the GPU). The ring holds
    /// the last `ring_len` steps.
    pub fn read_losses(&self, first: u32, count: usize) -> Result<Vec<f32>> {
        if count > self.ring {
            return Err(Error::Invalid(format!(
                "{count} losses from a ring of {}",
                self.ring
            )));
        }
        let ring = self.gpu.read(&self.ring()?)?;
        Ok((0..count)
            .map(|k| ring[(first as usize + k) % self.ring])
            .collect())
    }

    /// The loss ring (ring_len f32 values, the loss of optimiser step t — the one that took
    /// t to t + 1 — at slot t mod ring_len).
    pub fn ring(&self) -> Result<Tensor> {
        self.ctl.view(seam::ctl::RING as usize, 1, self.ring)
    }

    /// Settings this step was specialised for.
    pub fn specialised(&self) -> &Specialise {
        &self.spec
    }
}
