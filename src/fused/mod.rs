//! The fused MVL step: loss and parameter gradient of the Langevin MVL objective (SPEC §2)
//! for the score-net energy E(x) = ⟨x, ψ(x)⟩, ψ an MLP, in a fixed list of kernels instead of
//! a tape — 6L + 2(L−1) + 5 launches for L layers (two fewer without spectral norm), the
//! optimiser step included, with pipelines and bind groups made once.
//!
//! # The computation, per sample
//!
//! Hidden layers l < L: z_l = a_{l−1}·W̃_l + b_l, a_l = f(z_l); ψ = z_L; a₀ = x; W̃ = W/σ on
//! spectrally normalised layers. Training needs ∂θ of the loss through E(x₁), E(x₀), g = ∇ₓE(x₀)
//! inside x₁ and inside the control variate. Reverse mode over that graph gives, per sample,
//!
//!   ∂θloss = c₁·∂θE|ₓ₁ + c₀·∂θE|ₓ₀ + ∂θ(g·v),
//!   c₁ = (−1/εᵢ + 2cE₁)/B,  c₀ = (1/εᵢ + 2cE₀)/B,  v = −(εᵢ/2)c₁·∇E(x₁) + [cv]·ξ/(Bεᵢ),
//!
//! (c the energy regulariser). ∂θ(g·v) is the reverse of the backward pass that made g: its
//! adjoints are the forward tangents along v (ż, ȧ) plus f″ terms (ρ).
//!
//! # Precision (SPEC §2, "Precision")
//!
//! E(x₁) − E(x₀) is O(√ε) and ediff O(ε), so the step never forms E(x₁) or ∇E(x₁) and
//! subtracts: it propagates the differences Δz = Δa·W̃, Δa = f(z+Δz) − f(z) (computed without
//! cancellation, `dact` in `shaders/fused/prelude.wgsl`), Δψ, and likewise Δ(δz) for the input
//! gradient. The parameter gradient is regrouped the same way, so that every outer product
//! has O(1) factors and the O(1/√ε) terms cancel per sample, in registers, before any sum:
//!
//!   ∂W̃_l = Σᵢ a₀ᵀP + Qᵀδz + RᵀΔδz,   ∂b_l = Σᵢ P,
//!   P = c₁Δδz + (c₁+c₀)δz + ρ,  Q = c₁Δa + ȧ,  R = c₁Δa   (factors of layers l−1 and l),
//!
//! a single product [a₀; Q; R]ᵀ·[P; δz; Δδz] over 3B rows, summed in chunks of rows. The
//! gradient through σ needs ⟨∂W̃, W⟩, which is a per-sample dot of known streams (each left
//! factor times W is σ(z − b), σ(c₁Δz + ż) or σc₁Δz).
//!
//! # The kernels of one step (shaders/fused/)
//!
//! | kernel            | computes                                                       |
//! |-------------------|----------------------------------------------------------------|
//! | power_iteration   | v, u, σ of every normalised layer (SPEC §7); evaluating:        |
//! |   / sigma_stored  | v, σ from the stored u                                          |
//! | rows_input_*      | minibatch rows x₀ (Philox draw or given rows), noise z (Philox  |
//! |                   | or given)                                                       |
//! | forward l = 1..L  | z_l, a_l; ψ                                                     |
//! | backward l = L..1 | δa, δz (cotangent x₀ on ψ); g = ψ + δa₀                         |
//! | rows_step         | εᵢ, ξ = √(2εᵢ)z, Δx = −(εᵢ/2)g + ξ, E₀ (sphere: the chart step |
//! |                   | of SPEC §5, the network's Δy = y(x + Δx) − y(x) without         |
//! |                   | cancellation, and Jξ for the control variate)                   |
//! | diff_forward      | Δz_l, Δa_l; Δψ                                                  |
//! | rows_diff         | E₁ − E₀ = Δx·ψ(x₁) + x₀·Δψ, ediff, per-sample loss, c₀, c₁       |
//! | diff_backward     | Δδz_l; Δg                                                       |
//! | rows_adj          | v, and the io factors Q₀, R₀, P_L (sphere: v = J(x₀)·[−½εᵢν·c₁· |
//! |                   | J(x₁)ᵀ∇E(y₁)] + cv·Jξ, x₁ moving with g through the chart)       |
//! | tangent l < L     | ż_l, ȧ_l, Q_l, R_l                                              |
//! | adjoint l = L..2  | ρ_{l−1}, P_{l−1}                                                |
//! | rows_dots         | per-sample ⟨∂W̃, W⟩/σ terms (spectral norm only)                 |
//! | sums              | loss (mean + regulariser), ⟨∂W̃, W⟩ per normalised layer         |
//! | grad l = 1..L     | the gradient sums, in chunks of rows                            |
//! | update_train      | chunks added, chain rule through σ, gradient kept, optimiser    |
//! |   / update_grad   | (evaluating: no optimiser)                                      |
//!
//! On the sphere (`Config::manifold`) the data rows are chart forms (x, σ), in the Poincaré
//! ball the ball points (one column fewer than the network, which sees the hyperboloid point);
//! `rows_input` hands the network y(x), and only the per-sample kernels above change: the
//! layer sweeps see y₀, Δy and v as they see x₀, Δx and v in R^d.
//!
//! The tape path (`objective::estimate`) computes the same loss and gradient; the tests hold
//! both to each other and to the f64 reference.

#[doc(hidden)]
pub mod core;
mod plan;

use core::Core;
pub use plan::Plan;
use plan::{KernelSpec, Mode, Phase, Source, Specialise};

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::gpu::{CustomBindings, CustomKernel, CustomLayout, Gpu, Tensor};
use crate::model::{EnergyKind, Model};
use crate::objective::{self, Objective};
use crate::ops::Fun;
use crate::optim::Optimizer;
use crate::rng::words;

/// Why `objective` with `cfg` on a model of `arch` cannot run fused (None: it can).
pub fn unsupported(
    arch: &crate::model::Arch,
    objective: Objective,
    cfg: &objective::Config,
) -> Option<String> {
    if objective != Objective::Mvl {
        return Some(format!(
            "the fused path implements the mvl objective, not {}",
            objective.name()
        ));
    }
    if arch.kind != EnergyKind::ScoreNet {
        return Some("the fused path implements the score-net energy ⟨x, ψ(x)⟩ only".into());
    }
    if !matches!(
        arch.act,
        Fun::Swish | Fun::Tanh | Fun::Sigmoid | Fun::Softplus
    ) {
        return Some(format!(
            "the fused path supports swish, tanh, sigmoid and softplus activations, not {}",
            crate::model::act_name(arch.act)
        ));
    }
    if arch.hidden.is_empty() {
        return Some("the fused path needs at least one hidden layer".into());
    }
    if cfg.mh_diagnostic {
        return Some("the Metropolis–Hastings diagnostic is computed on the tape path only".into());
    }
    if cfg.manifold != crate::manifold::Manifold::Euclidean && arch.dim < 2 {
        return Some(format!(
            "a model on the {} needs at least 2 inputs",
            cfg.manifold.name()
        ));
    }
    None
}

/// Which implementation computes a step: the tape (every objective and model) or the fused
/// kernels (MVL on the score-net energy). `Auto` takes the fused path wherever it applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Path {
    #[default]
    Auto,
    Tape,
    Fused,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Auto => "auto",
            Path::Tape => "tape",
            Path::Fused => "fused",
        }
    }

    pub fn from_name(s: &str) -> Result<Path> {
        match s {
            "auto" => Ok(Path::Auto),
            "tape" => Ok(Path::Tape),
            "fused" => Ok(Path::Fused),
            _ => Err(Error::Invalid(format!(
                "unknown path {s:?}; use auto, tape or fused"
            ))),
        }
    }

    /// Whether to run fused; `Fused` for something the fused path does not implement is an
    /// error that says why.
    pub fn use_fused(
        self,
        arch: &crate::model::Arch,
        objective: Objective,
        cfg: &objective::Config,
    ) -> Result<bool> {
        match (self, unsupported(arch, objective, cfg)) {
            (Path::Tape, _) => Ok(false),
            (Path::Auto, why) => Ok(why.is_none()),
            (Path::Fused, None) => Ok(true),
            (Path::Fused, Some(why)) => Err(Error::Invalid(format!(
                "--path fused: {why}; use --path tape (or auto)"
            ))),
        }
    }
}

/// The fused step, built for one model shape, batch size and objective settings, and
/// bound to the model's parameters and an optimiser's state. The data it runs on are bound
/// separately ([`FusedMvl::bind`]), so training and held-out evaluation share the kernels.
pub struct FusedMvl<'g> {
    gpu: &'g Gpu,
    plan: Plan,
    /// Rows of a training minibatch (a multiple of the plan's rows or not).
    batch: usize,
    /// The launches of a step in each mode (pipelines shared between the lists).
    train: Launches,
    eval: Launches,
    eval_given_noise: Launches,
    layout: CustomLayout,
    ws: Tensor,
    sn: Tensor,
    theta: Tensor,
    s1: Tensor,
    s2: Tensor,
    /// Columns of a data row: the network's width, one fewer in the Poincaré ball (the network
    /// sees the hyperboloid point).
    data_width: usize,
}

/// Data (and optionally a fixed noise draw, one row per data row) bound for a fused step.
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

/// The per-step parameter block (`struct Step` in shaders/fused/prelude.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Step {
    idx_words: [u32; 4],
    noise_words: [u32; 4],
    data_rows: u32,
    row0: u32,
    rows: u32,
    total: u32,
    opt: [f32; 4],
    bc: [f32; 2],
    acc: u32,
    pad: u32,
}

/// The plan of a step for `arch` with batches of `batch` rows on this adapter.
fn plan_for(
    gpu: &Gpu,
    arch: &crate::model::Arch,
    batch: usize,
    theta: (&[usize], usize),
) -> Result<Plan> {
    let align = (gpu.report().limits.min_storage_buffer_offset_alignment as usize / 4).max(4);
    Plan::new(
        batch,
        arch.dim,
        &arch.hidden,
        arch.act,
        arch.spectral_norm,
        theta,
        align,
    )
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

impl<'g> FusedMvl<'g> {
    /// Build the step for `model` with batches of `batch` rows. With `opt` (whose state must
    /// belong to the model's parameters) [`FusedMvl::record_step`] trains; without, only
    /// [`FusedMvl::record_eval`] is available (chunks of at most `batch` rows). Packs the
    /// model's parameters into one buffer if they are not already. A training minibatch
    /// whose workspace the adapter cannot bind at once runs in sub-batches (the largest
    /// power of two that fits).
    pub fn new(
        gpu: &'g Gpu,
        model: &mut Model<&'g Gpu>,
        cfg: &objective::Config,
        batch: usize,
        opt: Option<&Optimizer>,
    ) -> Result<FusedMvl<'g>> {
        let sub = match (opt, Self::largest_batch(gpu, &model.arch, batch)) {
            (Some(_), Some(sub)) => sub,
            _ => batch,
        };
        Self::with_sub_batch(gpu, model, cfg, batch, sub, opt)
    }

    /// [`FusedMvl::new`] with training minibatches processed in sub-batches of `sub` rows
    /// (the same draws, loss and gradient; less memory, more launches).
    pub fn with_sub_batch(
        gpu: &'g Gpu,
        model: &mut Model<&'g Gpu>,
        cfg: &objective::Config,
        batch: usize,
        sub: usize,
        opt: Option<&Optimizer>,
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
        if batch == 0 || sub == 0 || sub > batch {
            return Err(Error::Invalid(format!(
                "batch {batch} in sub-batches of {sub}: both must be positive, the sub-batch at most the batch"
            )));
        }
        let (theta, offsets, total) = pack_params(gpu, model)?;
        let plan = plan_for(gpu, &arch, sub, (&offsets, total))?;
        let max_binding = gpu.max_tensor_bytes();
        if 4 * plan.ws_len as u64 > max_binding {
            return Err(Error::OutOfMemory(format!(
                "the fused step needs a {} MiB workspace for (sub-)batches of {sub} rows and hidden widths {:?}, more than this adapter binds at once ({} MiB) (or use --path tape)",
                (4 * plan.ws_len as u64) >> 20,
                arch.hidden,
                max_binding >> 20
            )));
        }
        let ws = gpu.scratch(1, plan.ws_len)?;
        let sn = gpu.full(1, plan.sn_len, 0.0)?;
        gpu.write(&sn.buf, 0, bytemuck::cast_slice(&plan.meta()))?;
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
        let spec = Specialise {
            eps: cfg.eps,
            rescale: cfg.rescale,
            control_variate: cfg.control_variate,
            energy_reg: cfg.energy_reg,
            opt_code: opt.map_or(0, |o| o.rule.kernel_args(0.0, 1).0),
            subgroup: gpu.subgroup_core(),
            sphere: cfg.manifold == crate::manifold::Manifold::Sphere,
            ball: cfg.manifold == crate::manifold::Manifold::Hyperbolic,
        };
        let layout = gpu.custom_layout(&[true, false, false, false, false, false, true]);
        let mut built = Built::default();
        let train = built.launches(gpu, &layout, &plan.kernels(&spec, Mode::Train))?;
        let eval = built.launches(gpu, &layout, &plan.kernels(&spec, Mode::Eval))?;
        let eval_given_noise =
            built.launches(gpu, &layout, &plan.kernels(&spec, Mode::EvalGivenNoise))?;
        let data_width = if spec.ball { plan.d - 1 } else { plan.d };
        let fused = FusedMvl {
            data_width,
            gpu,
            plan,
            batch,
            train,
            eval,
            eval_given_noise,
            layout,
            ws,
            sn,
            theta,
            s1,
            s2,
        };
        fused.attach_sn(model)?;
        Ok(fused)
    }

    /// The largest batch (a power of two, at most `want`) whose workspace this adapter can
    /// bind for a model of `arch`, or None if not even 64 rows fit.
    pub fn largest_batch(gpu: &Gpu, arch: &crate::model::Arch, want: usize) -> Option<usize> {
        let shapes: Vec<(usize, usize)> = arch
            .layer_shapes()
            .iter()
            .flat_map(|&(fi, fo)| [(fi, fo), (1, fo)])
            .collect();
        let (offsets, total) = gpu.packed_layout(&shapes);
        let max = gpu.max_tensor_bytes();
        let mut b = want.max(1).next_power_of_two();
        while b >= 64 {
            let fits =
                plan_for(gpu, arch, b, (&offsets, total)).is_ok_and(|p| 4 * p.ws_len as u64 <= max);
            if fits {
                return Some(b.min(want));
            }
            b /= 2;
        }
        None
    }

    /// Bind data (n, d) to run on, with an optional fixed noise draw of the same shape.
    pub fn bind(&self, data: &Tensor, noise: Option<&Tensor>) -> Result<FusedData> {
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
        let unused = self.gpu.full(1, 1, 0.0)?;
        let given = noise.unwrap_or(&unused);
        let bindings = self.gpu.custom_bindings(
            &self.layout,
            &[
                data,
                &self.theta,
                &self.sn,
                &self.ws,
                &self.s1,
                &self.s2,
                given,
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

    /// Kernel launches per training step (more when the minibatch runs in sub-batches).
    pub fn launches_per_step(&self) -> usize {
        let subs = self.batch.div_ceil(self.plan.b);
        let body = self.train.iter().filter(|k| k.2 == Phase::Body).count();
        self.train.len() + (subs - 1) * body
    }

    /// Rows per sub-batch: the whole minibatch, unless its workspace would not fit.
    pub fn sub_batch(&self) -> usize {
        self.plan.b
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

    /// Record the kernels of `launches` in `phases` with parameter block `step`.
    fn launch(
        &self,
        launches: &Launches,
        phases: &[Phase],
        data: &FusedData,
        step: &Step,
    ) -> Result<()> {
        let words: &[u32] = bytemuck::cast_slice(std::slice::from_ref(step));
        for (k, groups, phase) in launches {
            if phases.contains(phase) {
                self.gpu.launch_custom(k, &data.bindings, words, *groups)?;
            }
        }
        Ok(())
    }

    /// Record one training step (nothing is waited for): a minibatch of `batch` rows of
    /// `data` from draw `rows_draw`, noise from draw `noise_draw` (each a Philox (seed,
    /// stream), the draws the tape path makes), the power iteration, then the optimiser step.
    pub fn record_step(
        &self,
        data: &FusedData,
        model: &mut Model<&'g Gpu>,
        opt: &mut Optimizer,
        rows_draw: (u64, u64),
        noise_draw: (u64, u64),
    ) -> Result<()> {
        if !opt.packed_state().0.shares_buffer(&self.s1) {
            return Err(Error::Invalid(
                "this fused step was built without (or for another) optimiser".into(),
            ));
        }
        self.check_model(model)?;
        opt.t += 1;
        let (_, f, bc) = opt.rule.kernel_args(opt.lr, opt.t);
        let mut step = Step {
            idx_words: words(rows_draw.0, rows_draw.1),
            noise_words: words(noise_draw.0, noise_draw.1),
            data_rows: data.rows as u32,
            total: self.batch as u32,
            opt: f,
            bc,
            ..Default::default()
        };
        // A minibatch larger than the workspace holds runs in sub-batches of the plan's size:
        // rows row0.. of the same draw, their sums added up, one update after them.
        self.launch(&self.train, &[Phase::Head], data, &step)?;
        for (s, row0) in (0..self.batch).step_by(self.plan.b).enumerate() {
            step.row0 = row0 as u32;
            step.rows = self.plan.b.min(self.batch - row0) as u32;
            step.acc = (s > 0) as u32;
            self.launch(&self.train, &[Phase::Body], data, &step)?;
        }
        self.launch(&self.train, &[Phase::Tail], data, &step)
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
        let launches = if data.given_noise {
            &self.eval_given_noise
        } else {
            &self.eval
        };
        self.launch(
            launches,
            &[Phase::Head, Phase::Body, Phase::Tail],
            data,
            &Step {
                noise_words: words(noise_draw.0, noise_draw.1),
                data_rows: data.rows as u32,
                row0: row0 as u32,
                rows: rows as u32,
                total: rows as u32,
                ..Default::default()
            },
        )
    }

    /// The loss of the last recorded step (1 × 1): mean per-sample value plus regulariser.
    pub fn loss(&self) -> Result<Tensor> {
        self.ws.view(self.plan.io.out, 1, 1)
    }

    /// The per-sample values −ediff/εᵢ of the last recorded step (its first `rows` rows).
    pub fn per_sample(&self, rows: usize) -> Result<Tensor> {
        self.ws.view(self.plan.io.loss, rows.min(self.plan.b), 1)
    }

    /// The parameter gradient of the last recorded step, in [`Model::params`] order.
    pub fn grads(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for l in 1..=self.plan.layers() {
            let (fi, fo) = (self.plan.widths[l - 1], self.plan.widths[l]);
            out.push(
                self.ws
                    .view(self.plan.grad + self.plan.w_off[l - 1], fi, fo)?,
            );
            out.push(
                self.ws
                    .view(self.plan.grad + self.plan.b_off[l - 1], 1, fo)?,
            );
        }
        Ok(out)
    }
}

/// Kernels built so far: one shader module per source file, one pipeline per distinct
/// (source, entry point, constants), shared between the launch lists of the modes.
type ModuleKey = (Source, Option<Core>);

#[derive(Default)]
struct Built {
    modules: Vec<(ModuleKey, Arc<wgpu::ShaderModule>)>,
    pipelines: Vec<(KernelSpec, Arc<CustomKernel>)>,
}

impl Built {
    fn launches(
        &mut self,
        gpu: &Gpu,
        layout: &CustomLayout,
        specs: &[KernelSpec],
    ) -> Result<Launches> {
        specs
            .iter()
            .map(|s| Ok((self.kernel(gpu, layout, s)?, s.groups, s.phase)))
            .collect()
    }

    fn kernel(
        &mut self,
        gpu: &Gpu,
        layout: &CustomLayout,
        s: &KernelSpec,
    ) -> Result<Arc<CustomKernel>> {
        let same = |k: &KernelSpec| {
            k.source == s.source
                && k.core == s.core
                && k.entry == s.entry
                && k.constants == s.constants
        };
        if let Some((_, k)) = self.pipelines.iter().find(|(k, _)| same(k)) {
            return Ok(k.clone());
        }
        let key = (s.source, s.core);
        let module = match self.modules.iter().find(|(k, _)| *k == key) {
            Some((_, m)) => m.clone(),
            None => {
                let m = module(gpu, s.source, s.core)?;
                self.modules.push((key, m.clone()));
                m
            }
        };
        let k = gpu.custom_kernel(layout, &module, &s.label, s.entry, &s.constants)?;
        self.pipelines.push((s.clone(), k.clone()));
        Ok(k)
    }
}

/// The shader module of one source file: the shared pieces, the file, and for layer
/// kernels the matmul core for their block shape.
fn module(gpu: &Gpu, source: Source, core: Option<Core>) -> Result<Arc<wgpu::ShaderModule>> {
    let common = concat!(
        include_str!("../../shaders/functions.wgsl"),
        include_str!("../../shaders/philox_lib.wgsl"),
        include_str!("../../shaders/optim_lib.wgsl"),
        include_str!("../../shaders/fused/prelude.wgsl"),
    );
    let (file, body) = match source {
        Source::Forward => (
            "layer_forward",
            concat!(
                include_str!("../../shaders/fused/layer_common.wgsl"),
                include_str!("../../shaders/fused/layer_forward.wgsl")
            ),
        ),
        Source::Backward => (
            "layer_backward",
            concat!(
                include_str!("../../shaders/fused/layer_common.wgsl"),
                include_str!("../../shaders/fused/layer_backward.wgsl")
            ),
        ),
        Source::Grad => (
            "layer_grad",
            include_str!("../../shaders/fused/layer_grad.wgsl"),
        ),
        Source::Rows => ("rows", include_str!("../../shaders/fused/rows.wgsl")),
    };
    let core = core.map(Core::source).unwrap_or_default();
    gpu.custom_module(file, &format!("{common}\n{body}\n{core}"))
}
