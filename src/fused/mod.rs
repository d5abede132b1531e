//! The fused MVL step: loss and parameter gradient of the Langevin MVL objective (SPEC §2)
//! for the score-net energy E(y) = ⟨ỹ, ψ(ỹ)⟩ (ỹ = s·y; the conditional energy
//! ⟨ỹ, ψ([ỹ, c])⟩ of the auto-encoders), ψ an MLP, in hand-written kernels instead of a
//! tape — two dispatches per training step in the tile shape, the optimiser included — with
//! pipelines and bind groups made once and the step counter on the device.
//!
//! # The computation, per sample
//!
//! Hidden layers l < L: z_l = a_{l−1}·W̃_l + b_l, a_l = f(z_l); ψ = z_L; a₀ = ỹ; W̃ = W/σ on
//! spectrally normalised layers. Training needs ∂θ of the loss through E(y₁), E(y₀), g = ∇_yE(y₀)
//! inside y₁ and inside the control variate. Reverse mode over that graph gives, per sample,
//!
//!   ∂θloss = c₁·∂θE|₁ + c₀·∂θE|₀ + ∂θ(g·v),
//!   c₁ = (−1/εᵢ + 2cE₁)/B,  c₀ = (1/εᵢ + 2cE₀)/B,  v = −(εᵢ/2)c₁·∇E(y₁) + [cv]·ξ/(Bεᵢ),
//!
//! (c the energy regulariser). ∂θ(g·v) is the reverse of the backward pass that made g: its
//! adjoints are the forward tangents along ṽ = s·v (ż, ȧ) plus f″ terms (ρ).
//!
//! # Precision (SPEC §2, "Precision")
//!
//! E(y₁) − E(y₀) is O(√ε) and ediff O(ε), so the step never forms E(y₁) or ∇E(y₁) and
//! subtracts: it propagates the differences Δz = Δa·W̃, Δa = f(z+Δz) − f(z) (computed without
//! cancellation, `dact` in `shaders/fused/prelude.wgsl`), Δψ, and likewise Δ(δz) for the input
//! gradient. The parameter gradient is regrouped the same way, so that every outer product
//! has O(1) factors and the O(1/√ε) terms cancel per sample, in registers, before any sum:
//!
//!   ∂W̃_l = Σᵢ a₀ᵀP + Qᵀδz + RᵀΔδz,   ∂b_l = Σᵢ P,
//!   P = c₁Δδz + (c₁+c₀)δz + ρ,  Q = c₁Δa + ȧ,  R = c₁Δa   (factors of layers l−1 and l),
//!
//! a single product [a₀; Q; R]ᵀ·[P; δz; Δδz] over 3B rows, summed in blocks. The gradient
//! through σ needs ⟨∂W̃, W⟩, which is a per-sample dot of known streams (each left factor
//! times W is σ(z − b), σ(c₁Δz + ż) or σc₁Δz).
//!
//! # The stages of a step (shaders/fused/), and the two shapes
//!
//! | stage               | computes                                                     |
//! |---------------------|--------------------------------------------------------------|
//! | power iteration     | v, u′, σ of every normalised layer (SPEC §7); evaluating: σ    |
//! |                     | from the stored u                                            |
//! | input               | minibatch rows y₀ (Philox draw or given rows), noise z       |
//! | forward l = 1..L    | z_l, a_l; ψ                                                  |
//! | backward l = L..1   | δa, δz (cotangent ỹ₀ on ψ); g = s·(ψ + δa₀)                  |
//! | step                | εᵢ, ξ = √(2εᵢ)z, Δy = −(εᵢ/2)g + ξ, E₀ (charts: SPEC §5's step,|
//! |                     | the network's Δy = y(x + Δx) − y(x) without cancellation, Jξ) |
//! | diff forward        | Δz_l, Δa_l; Δψ                                               |
//! | diff                | E₁ − E₀ = Δỹ·ψ(ỹ₁) + ỹ₀·Δψ, ediff, per-sample loss, c₀, c₁    |
//! | diff backward       | Δδz_l; Δg                                                    |
//! | adj                 | v, and the io factors Q₀, R₀, P_L                            |
//! | tangent l < L       | ż_l, ȧ_l, Q_l, R_l                                           |
//! | adjoint l = L..2    | ρ_{l−1}, P_{l−1}                                             |
//! | dots                | per-sample ⟨∂W̃, W⟩/σ terms (spectral norm only)              |
//! | sums                | loss, energies, ⟨∂W̃, W⟩ (partial sums)                       |
//! | grad l = 1..L       | the gradient's partial sums                                  |
//! | update              | partials added in order, chain rule through σ, gradient kept, |
//! |                     | optimiser, u ← u′, loss ring, step counter                   |
//!
//! **Tile shape** ([`Shape::Tile`]): the whole table but the update is one dispatch — a
//! workgroup per tile of rows runs every stage for its tile, with a barrier between stages,
//! computes the power iteration itself (every workgroup the same, deterministic; workgroup 0
//! stores it) and writes its tile's partial sums to its own slot; the update is the second
//! dispatch. Sized for GPUs (small tiles, many workgroups, the weights in workgroup memory
//! where they fit) or for CPU drivers (one long workgroup per core). **Layers shape**
//! ([`Shape::Layers`]): one kernel per stage, each over the whole batch (wide layers, large
//! batches), with sub-batches where the workspace does not fit one binding.
//!
//! Training steps read their random draws and optimiser step t from a counter on the device
//! (`seam::ctl`), so every step of a submission has the same parameter block and many steps
//! go in one submission; the update writes each step's loss to a ring read every few steps.
//!
//! On the sphere (`Config::manifold`) the data rows are chart forms (x, σ), in the Poincaré
//! ball the ball points (one column fewer than the network, which sees the hyperboloid point);
//! only the per-sample stages change: the layer sweeps see ỹ₀, Δỹ and ṽ as in R^d.
//!
//! The tape path (`objective::estimate`) computes the same loss and gradient; the tests hold
//! both to each other and to the f64 reference, on every shape.

#[doc(hidden)]
pub mod core;
pub mod given;
mod module;
mod plan;
pub mod seam;
pub mod shape;
mod step;

pub use step::{FusedData, FusedMvl};

pub use plan::{KernelSpec, LayersShape, Mode, Net, Phase, Plan, Shape, Specialise, TileShape};
pub use shape::ShapeChoice;

use crate::error::{Error, Result};
use crate::model::EnergyKind;
use crate::objective::{self, Objective};
use crate::ops::Fun;
use crate::optim::Optimizer;

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
    if !matches!(
        arch.kind,
        EnergyKind::ScoreNet | EnergyKind::Conditional { .. }
    ) {
        return Some(
            "the fused path implements the score-net energy ⟨x, ψ(x)⟩ (and its conditional form) only"
                .into(),
        );
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
    if cfg.manifold != crate::manifold::Manifold::Euclidean && arch.out_dim() < 2 {
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

/// How to build a fused step besides the model and the objective.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub shape: ShapeChoice,
    /// Layers shape: sub-batches of this many rows (None: the largest power of two whose
    /// workspace the adapter binds, up to the batch).
    pub sub_batch: Option<usize>,
    /// The network sees s·y (the auto-encoders' √dim on the sphere).
    pub scale: f32,
    /// Steps whose losses the ring keeps (the trainer reads it every few steps).
    pub ring: usize,
    /// An explicit tile shape instead of the choice (to test or measure one).
    pub tile: Option<TileShape>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            shape: ShapeChoice::Auto,
            sub_batch: None,
            scale: 1.0,
            ring: 1024,
            tile: None,
        }
    }
}

impl Options {
    /// The defaults, with the shape from `WMVL_FUSED_SHAPE`.
    pub fn from_env() -> Result<Options> {
        Ok(Options {
            shape: ShapeChoice::from_env()?,
            ..Options::default()
        })
    }
}

/// The random stream and learning rate of a run of training steps: the step with optimiser
/// count t (0-based, t ≥ t_base) draws streams stream + draws·(t − t_base) + 1 (rows) and + 2
/// (noise) of `seed` — what `rng::Rng` hands out — and uses the learning rate
/// lr0 + lr_slope·(t − lr_t0). Fixed over a run, so that every step has the same block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    pub seed: u64,
    pub stream: u64,
    pub t_base: u32,
    pub lr0: f32,
    pub lr_slope: f32,
    /// The optimiser step at which the rate is lr0 (a run's first: a resumed run computes
    /// the same rates).
    pub lr_t0: u32,
    /// Draws a step takes from the stream: 2 (rows, then noise), or 1 (noise only, for
    /// steps on given rows whose caller draws nothing else).
    pub draws: u32,
}

impl Segment {
    /// A segment starting at the optimiser's current step and rate, constant rate.
    pub fn at(seed: u64, stream: u64, opt: &Optimizer) -> Segment {
        Segment {
            seed,
            stream,
            t_base: opt.t,
            lr0: opt.lr,
            lr_slope: 0.0,
            lr_t0: opt.t,
            draws: 2,
        }
    }
}
