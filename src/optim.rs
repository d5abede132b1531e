//! Optimisers (SPEC §7): RMSProp with TensorFlow-1 semantics (the reference's, default),
//! RMSProp with PyTorch semantics, and Adam. One in-place GPU kernel launch for all parameter
//! tensors (`src/gpu/optim_all.rs`; one per tensor, `shaders/optim.wgsl`, where the adapter
//! binds too few buffers); [`Optimizer::reference_step`] is the f64 CPU twin.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::tape::Var;

/// Update rule and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// TF1 `RMSPropOptimizer`: ms ← ρ·ms + (1−ρ)g²; mom ← μ·mom + lr·g/√(ms + ε); θ ← θ − mom.
    /// Accumulator starts at 1. Defaults ρ = 0.9, μ = 0, ε = 1e−10.
    RmsPropTf { decay: f32, momentum: f32, eps: f32 },
    /// `torch.optim.RMSprop`: v ← α·v + (1−α)g²; b ← μ·b + g/(√v + ε); θ ← θ − lr·b.
    /// Accumulator starts at 0. Defaults α = 0.99, μ = 0, ε = 1e−8.
    RmsPropTorch { alpha: f32, momentum: f32, eps: f32 },
    /// Adam (Kingma & Ba) with bias correction. Defaults β₁ = 0.9, β₂ = 0.999, ε = 1e−8.
    Adam { beta1: f32, beta2: f32, eps: f32 },
}

impl Rule {
    pub const RMSPROP_TF: Rule = Rule::RmsPropTf {
        decay: 0.9,
        momentum: 0.0,
        eps: 1e-10,
    };
    pub const RMSPROP_TORCH: Rule = Rule::RmsPropTorch {
        alpha: 0.99,
        momentum: 0.0,
        eps: 1e-8,
    };
    pub const ADAM: Rule = Rule::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };

    /// `rmsprop` (TF-style), `rmsprop-torch` or `adam`.
    pub fn from_name(name: &str) -> Result<Rule> {
        match name {
            "rmsprop" | "rmsprop-tf" => Ok(Rule::RMSPROP_TF),
            "rmsprop-torch" => Ok(Rule::RMSPROP_TORCH),
            "adam" => Ok(Rule::ADAM),
            _ => Err(Error::Invalid(format!(
                "unknown optimiser {name:?}; use rmsprop (TensorFlow-1 semantics), rmsprop-torch or adam"
            ))),
        }
    }

    /// Initial value of the first state buffer.
    pub(crate) fn s1_init(&self) -> f32 {
        match self {
            Rule::RmsPropTf { .. } => 1.0,
            _ => 0.0,
        }
    }

    /// (code, f0..f3, bias corrections) for the kernel at step t (1-based).
    pub(crate) fn kernel_args(&self, lr: f32, t: u32) -> (u32, [f32; 4], [f32; 2]) {
        match *self {
            Rule::RmsPropTf {
                decay,
                momentum,
                eps,
            } => (0, [lr, decay, eps, momentum], [1.0; 2]),
            Rule::RmsPropTorch {
                alpha,
                momentum,
                eps,
            } => (1, [lr, alpha, eps, momentum], [1.0; 2]),
            Rule::Adam { beta1, beta2, eps } => {
                let bc1 = 1.0 / (1.0 - (beta1 as f64).powi(t as i32));
                let bc2 = 1.0 / (1.0 - (beta2 as f64).powi(t as i32));
                (2, [lr, beta1, eps, beta2], [bc1 as f32, bc2 as f32])
            }
        }
    }
}

/// An optimiser over a fixed list of parameter tensors, holding their state on the GPU.
/// The state of all parameters is packed into two buffers (one per state variable) with the
/// layout [`Gpu::packed_layout`] gives, so a fused kernel can update every parameter at once.
pub struct Optimizer {
    pub rule: Rule,
    pub lr: f32,
    /// The learning rate's change per step in a recorded step's replays (`gpu::Recording`):
    /// replayed step k after the recorded one steps at `lr + k · lr_slope`. Steps built one
    /// by one use `lr` as set (their caller moves it).
    pub lr_slope: f32,
    /// Steps taken so far.
    pub t: u32,
    state: Vec<(Tensor, Tensor)>,
    packed: (Tensor, Tensor),
}

impl Optimizer {
    pub fn new(gpu: &Gpu, rule: Rule, lr: f32, params: &[Tensor]) -> Result<Optimizer> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Invalid(format!(
                "learning rate must be positive, got {lr}"
            )));
        }
        let shapes: Vec<(usize, usize)> = params.iter().map(|p| p.shape()).collect();
        let (offsets, total) = gpu.packed_layout(&shapes);
        let packed = (
            gpu.full(1, total.max(1), rule.s1_init())?,
            gpu.full(1, total.max(1), 0.0)?,
        );
        let state = shapes
            .iter()
            .zip(&offsets)
            .map(|(&(r, c), &at)| Ok((packed.0.view(at, r, c)?, packed.1.view(at, r, c)?)))
            .collect::<Result<_>>()?;
        Ok(Optimizer {
            rule,
            lr,
            lr_slope: 0.0,
            t: 0,
            state,
            packed,
        })
    }

    /// One descent step on `loss`: its gradients with respect to `leaves` (the tape's leaves
    /// for `params`, in the same order) applied to `params`. Records kernels; does not wait.
    pub fn minimize<'t, 'g>(
        &mut self,
        gpu: &'g Gpu,
        loss: Var<'t, &'g Gpu>,
        leaves: &[Var<'t, &'g Gpu>],
        params: &[Tensor],
    ) -> Result<()> {
        let grads: Vec<Tensor> = loss
            .tape()
            .grad(loss, leaves, false)?
            .iter()
            .map(|g| g.value())
            .collect();
        self.step(gpu, params, &grads)
    }

    /// θ ← update(θ, ∇θ) in place, for every parameter. Records kernels; does not wait.
    pub fn step(&mut self, gpu: &Gpu, params: &[Tensor], grads: &[Tensor]) -> Result<()> {
        if params.len() != self.state.len() || grads.len() != params.len() {
            return Err(Error::Shape(format!(
                "optimiser holds {} parameters, step got {} parameters and {} gradients",
                self.state.len(),
                params.len(),
                grads.len()
            )));
        }
        // Validate every shape before touching any state: a rejected step must leave t and
        // all parameters as they were.
        for (i, ((p, g), (s1, _))) in params.iter().zip(grads).zip(&self.state).enumerate() {
            if p.shape() != s1.shape() || g.shape() != p.shape() {
                return Err(Error::Shape(format!(
                    "optimiser step: parameter {i} is {:?} (the optimiser holds {:?}), its gradient {:?}",
                    p.shape(),
                    s1.shape(),
                    g.shape()
                )));
            }
        }
        self.t += 1;
        let (code, f, bc) = self.rule.kernel_args(self.lr, self.t);
        // One dispatch for all tensors where the adapter binds enough buffers; else one each.
        // (Not in a recorded step whose arguments change between steps: Adam's bias
        // corrections and a moving rate come from the recording's counter, which only the
        // per-tensor kernel reads.)
        let packed = (&self.packed.0, &self.packed.1);
        let moving = matches!(self.rule, Rule::Adam { .. }) || self.lr_slope != 0.0;
        if !(moving && gpu.is_recording())
            && gpu.update_all(code, f, bc, grads, params, packed, &self.state)?
        {
            return Ok(());
        }
        let step = (self.t, self.lr_slope);
        for ((p, g), (s1, s2)) in params.iter().zip(grads).zip(&self.state) {
            gpu.update_in_place(code, f, bc, step, g, p, s1, s2)?;
        }
        Ok(())
    }

    /// The f64 CPU reference of one step on one parameter tensor (state in `s1`, `s2`,
    /// which start at [`Optimizer::initial_state`]); `t` is 1-based.
    pub fn reference_step(
        rule: Rule,
        lr: f64,
        t: u32,
        p: &mut [f64],
        g: &[f64],
        s1: &mut [f64],
        s2: &mut [f64],
    ) {
        for i in 0..p.len() {
            match rule {
                Rule::RmsPropTf {
                    decay,
                    momentum,
                    eps,
                } => {
                    let (rho, mu, eps) = (decay as f64, momentum as f64, eps as f64);
                    s1[i] = rho * s1[i] + (1.0 - rho) * g[i] * g[i];
                    let mom = mu * s2[i] + lr * g[i] / (s1[i] + eps).sqrt();
                    p[i] -= mom;
                    if mu != 0.0 {
                        s2[i] = mom; // without momentum the buffer is not kept (stays 0)
                    }
                }
                Rule::RmsPropTorch {
                    alpha,
                    momentum,
                    eps,
                } => {
                    let (a, mu, eps) = (alpha as f64, momentum as f64, eps as f64);
                    s1[i] = a * s1[i] + (1.0 - a) * g[i] * g[i];
                    let buf = mu * s2[i] + g[i] / (s1[i].sqrt() + eps);
                    p[i] -= lr * buf;
                    if mu != 0.0 {
                        s2[i] = buf;
                    }
                }
                Rule::Adam { beta1, beta2, eps } => {
                    let (b1, b2, eps) = (beta1 as f64, beta2 as f64, eps as f64);
                    s1[i] = b1 * s1[i] + (1.0 - b1) * g[i];
                    s2[i] = b2 * s2[i] + (1.0 - b2) * g[i] * g[i];
                    let mhat = s1[i] / (1.0 - b1.powi(t as i32));
                    let vhat = s2[i] / (1.0 - b2.powi(t as i32));
                    p[i] -= lr * mhat / (vhat.sqrt() + eps);
                }
            }
        }
    }

    /// Initial (s1, s2) values of a rule's state.
    pub fn initial_state(rule: Rule) -> (f64, f64) {
        (rule.s1_init() as f64, 0.0)
    }

    /// The optimiser state tensors (s1, s2) of each parameter, e.g. for checkpoints.
    pub fn state(&self) -> &[(Tensor, Tensor)] {
        &self.state
    }

    /// The state variables (s1, s2) of all parameters, packed, read to the host: with `t`,
    /// everything a resumed run needs to continue exactly where this one stopped.
    pub fn state_host(&self, gpu: &Gpu) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((gpu.read(&self.packed.0)?, gpu.read(&self.packed.1)?))
    }

    /// Put back a state read by [`Optimizer::state_host`] (same parameter shapes), into the
    /// same buffers (a fused step built on this optimiser keeps working).
    pub fn load_state(&mut self, gpu: &Gpu, t: u32, s1: &[f32], s2: &[f32]) -> Result<()> {
        let n = self.packed.0.shape().1;
        if s1.len() != n || s2.len() != n {
            return Err(Error::Shape(format!(
                "optimiser state of {} and {} values for parameters packed in {n}",
                s1.len(),
                s2.len()
            )));
        }
        if let Some(i) = s1.iter().chain(s2).position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "optimiser state value {i} is not finite"
            )));
        }
        gpu.copy_into(&gpu.upload(1, n, s1)?, &self.packed.0)?;
        gpu.copy_into(&gpu.upload(1, n, s2)?, &self.packed.1)?;
        self.t = t;
        Ok(())
    }

    /// The whole packed state buffers (s1, s2), in the layout of the parameters' packing.
    pub(crate) fn packed_state(&self) -> (&Tensor, &Tensor) {
        (&self.packed.0, &self.packed.1)
    }
}
