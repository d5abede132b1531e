//! The command line's one definition: options, help text and value lists (clap derive).
//! Names come from the library's own lists, so what `--help` shows is what is accepted.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use wmvl::model::ACT_NAMES;

const ENVIRONMENT: &str = "Environment:
  WGPU_BACKEND       restrict backends (vulkan, metal, dx12, gl; comma-separated)
  WGPU_ADAPTER_NAME  pick the adapter whose name contains this text
  WMVL_KERNELS       gpu (tiled) or cpu (barrier-free) kernels; unset: chosen by adapter
  WMVL_FUSED_SHAPE   the fused MVL step's shape: tile-gpu, tile-cpu or layers (as --shape)
  WMVL_TILE          rows,groups,size of a tile shape (to measure others on an adapter)

On failure or Ctrl-C, `train` never replaces --out: it saves the last good parameters and
the optimiser state to OUT.partial.safetensors and says how to resume (--resume).";

#[derive(Parser)]
#[command(
    name = "wmvl",
    version,
    about = "Energy-based models trained by Wasserstein minimum velocity learning on the GPU",
    after_help = ENVIRONMENT,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the GPU adapter, backend, limits and features, and run a self-check (forward and
    /// double backward of a small MLP energy on the GPU against the f64 CPU reference)
    Info,
    /// Fit an energy model to data
    Train(Box<TrainArgs>),
    /// Print an objective's value (mean ± standard error) on data, optionally its gradient
    Eval(EvalArgs),
    /// Energy and score (−∇E) at given points, written as columns [E, score_1..score_d]
    Score(ScoreArgs),
    /// Draw samples from a model by Langevin dynamics or MALA
    Sample(SampleArgs),
}

/// A count: `1000`, `1e3` or `10_000`.
pub fn count(s: &str) -> Result<usize, String> {
    let t = s.replace('_', "");
    if let Ok(n) = t.parse::<usize>() {
        return Ok(n);
    }
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 9.0e15 => Ok(v as usize),
        _ => Err(format!(
            "{s:?} is not a whole number ≥ 0 (e.g. 1000 or 1e3)"
        )),
    }
}

/// Hidden widths: `100,100`.
fn widths(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|w| match count(w.trim()) {
            Ok(0) | Err(_) => Err(format!(
                "{s:?} is not a list of positive widths like 100,100"
            )),
            Ok(n) => Ok(n),
        })
        .collect()
}

fn names(list: &'static [&'static str]) -> impl TypedValueParser<Value = String> {
    PossibleValuesParser::new(list)
}

const OBJECTIVES: [&str; 10] = [
    "mvl",
    "dsm",
    "vr-dsm",
    "cd1",
    "ssm",
    "ssm-vr",
    "exact-sm",
    "spos",
    "svgd",
    "birth-death",
];
const OPTIMIZERS: [&str; 3] = ["rmsprop", "rmsprop-torch", "adam"];
const PATHS: [&str; 3] = ["auto", "tape", "fused"];
const SHAPES: [&str; 4] = wmvl::fused::ShapeChoice::NAMES;
const MANIFOLDS: [&str; 3] = wmvl::manifold::Manifold::NAMES;
const DATASETS: [&str; 7] = [
    "banana",
    "cosine",
    "funnel",
    "ring",
    "multiring",
    "s1mix",
    "s2mix",
];

/// The objective options `train` and `eval` share.
#[derive(Args, Clone)]
pub struct ObjectiveArgs {
    /// Objective (SPEC §2-4, §6); mvl is the Wasserstein minimum velocity loss with Langevin
    /// dynamics; spos, svgd and birth-death are MVL with those samplers
    #[arg(long, value_parser = names(&OBJECTIVES), default_value = "mvl")]
    pub objective: String,
    /// Sampler step size ε₀ of MVL (noise scale of DSM)
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    pub eps: f32,
    /// Without the control variate
    #[arg(long)]
    pub no_cv: bool,
    /// Without per-sample rescaling of the step
    #[arg(long)]
    pub no_rescale: bool,
    /// Energy regulariser weight C (adds C·E² terms, SPEC §2)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub energy_reg: f32,
    /// SPOS: weight α of the SVGD direction (1 − α on Langevin)
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// SPOS/SVGD: the RBF kernel bandwidth h (default: the median heuristic of SPEC §6)
    #[arg(long)]
    pub kernel_bandwidth: Option<f32>,
    /// Birth–death: the data density estimate's bandwidth σ (default: Scott's rule)
    #[arg(long)]
    pub kde_bandwidth: Option<f32>,
    /// Where the data live (embedded coordinates: unit vectors for the sphere S^n, points of
    /// the open unit ball for hyperbolic space H^n, the Poincaré ball); default: euclidean,
    /// sphere for directional --dataset, or the checkpoint's
    #[arg(long, value_parser = names(&MANIFOLDS))]
    pub manifold: Option<String>,
    /// auto: the fused kernels wherever they apply (mvl on score-net energies with swish,
    /// tanh, sigmoid or softplus), else the tape
    #[arg(long, value_parser = names(&PATHS), default_value = "auto")]
    pub path: String,
    /// The fused step's shape: auto chooses for the adapter (tile-cpu on CPU drivers such as
    /// lavapipe, tile-gpu on GPUs, layers for wide layers and large batches); the others force
    /// one (also WMVL_FUSED_SHAPE)
    #[arg(long, value_parser = names(&SHAPES), default_value = "auto")]
    pub shape: String,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("source").args(["dataset", "data", "resume"]).required(true).multiple(true))]
pub struct TrainArgs {
    /// A built-in density to draw the training data from: 2-D (banana … multiring) or on the
    /// sphere (s1mix, s2mix: the vMF mixtures of SPEC §8)
    #[arg(long, value_parser = names(&DATASETS), conflicts_with = "data")]
    pub dataset: Option<String>,
    /// Training data: .npy (any real dtype) or .csv, one row per point
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Where the trained model goes (.safetensors); replaced only by a finished run
    #[arg(long, value_name = "CHECKPOINT")]
    pub out: PathBuf,
    /// Continue a saved run (OUT.partial.safetensors or a finished checkpoint) exactly where it
    /// stopped: model, optimiser state, step and random stream; its options are the defaults
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "init_from")]
    pub resume: Option<PathBuf>,
    /// Warm start: begin from this checkpoint's parameters (and architecture) with a fresh
    /// optimiser at step 0
    #[arg(long, value_name = "CHECKPOINT")]
    pub init_from: Option<PathBuf>,
    #[command(flatten)]
    pub objective: ObjectiveArgs,
    /// Training steps in all (a resumed run continues up to this many)
    #[arg(long, value_parser = count, default_value = "1000")]
    pub steps: usize,
    /// Minibatch size (at most the number of training rows)
    #[arg(long, value_parser = count, default_value = "200")]
    pub batch: usize,
    /// Learning rate
    #[arg(long, default_value_t = 4e-3, allow_negative_numbers = true)]
    pub lr: f32,
    /// Decay the learning rate linearly to this value over the run
    #[arg(long, value_name = "LR", allow_negative_numbers = true)]
    pub lr_final: Option<f32>,
    /// Seed of everything random (initial parameters, data, minibatches, noise)
    #[arg(long, value_parser = count, default_value = "0")]
    pub seed: usize,
    /// rmsprop has TensorFlow-1 semantics (as the paper); rmsprop-torch PyTorch's
    #[arg(long, value_parser = names(&OPTIMIZERS), default_value = "rmsprop")]
    pub optimizer: String,
    /// Hidden layer widths
    #[arg(long, value_parser = widths, default_value = "100,100")]
    pub hidden: ::std::vec::Vec<usize>,
    /// Activation of the hidden layers
    #[arg(long, value_parser = names(&ACT_NAMES), default_value = "swish")]
    pub act: String,
    /// Without spectral normalisation of the hidden layers
    #[arg(long)]
    pub no_sn: bool,
    /// scorenet: E(x) = ½‖x − f(x)‖² (the paper's); scalar: an MLP with one output
    #[arg(long, value_parser = names(&["scorenet", "scalar"]), default_value = "scorenet")]
    pub energy: String,
    /// Initial weights: glorot (uniform) or torch (PyTorch's Linear default)
    #[arg(long, value_parser = names(&["glorot", "torch"]), default_value = "glorot")]
    pub init: String,
    /// Points drawn from --dataset
    #[arg(long, value_parser = count, default_value = "10000")]
    pub n: usize,
    /// Fraction of the data held out for evaluation (0: none)
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub heldout: f64,
    /// Evaluate on the held-out set every this many steps (default: 2 × --log-every)
    #[arg(long, value_parser = count)]
    pub eval_every: Option<usize>,
    /// Stop after this many held-out evaluations without improvement, keeping the best (0: never)
    #[arg(long, value_parser = count, default_value = "0")]
    pub patience: usize,
    /// Read the loss (and report progress) every this many steps
    #[arg(long, value_parser = count, default_value = "50")]
    pub log_every: usize,
    /// Steps recorded into one GPU submission (the GPU runs them while the next are recorded)
    #[arg(long, value_parser = count, default_value = "100")]
    pub steps_per_submit: usize,
    /// Save the run to OUT.partial.safetensors every this many steps (0: never)
    #[arg(long, value_parser = count, default_value = "0")]
    pub checkpoint_every: usize,
    /// Which parameters --out gets: those of the last step, or of the best held-out evaluation
    #[arg(long, value_parser = names(&["last", "best"]), default_value = "last")]
    pub keep: String,
    /// F: the run has diverged when the loss rises more than F × its initial scale above the
    /// initial loss, or anything exceeds F² × that scale (0: only NaN/Inf count)
    #[arg(long, default_value_t = 1e3, allow_negative_numbers = true)]
    pub diverge_factor: f64,
    /// A figure (.png) of the learned density: next to the truth for --dataset, next to a
    /// histogram of the data for 2-D --data
    #[arg(long, value_name = "FIG.png")]
    pub plot: Option<PathBuf>,
    /// The loss log (.csv: step, loss, held-out value, seconds)
    #[arg(long, value_name = "LOG.csv")]
    pub log: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Points (.npy or .csv), the model's width
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    #[command(flatten)]
    pub objective: ObjectiveArgs,
    /// The standard-normal draws the objective needs (one row per point, the data's width);
    /// default: drawn from --seed
    #[arg(long, value_name = "Z.npy")]
    pub noise: Option<PathBuf>,
    /// Write the parameter gradient of the objective here (.safetensors)
    #[arg(long, value_name = "G.safetensors")]
    pub grad_out: Option<PathBuf>,
    #[arg(long, value_parser = count, default_value = "0")]
    pub seed: usize,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[arg(long, value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Points (.npy or .csv), the model's width
    #[arg(long, value_name = "FILE")]
    pub points: PathBuf,
    /// Output (.npy), one row [E, score_1..score_d] per point (on a manifold: the
    /// Riemannian score, in embedded coordinates)
    #[arg(long, value_name = "OUT.npy")]
    pub out: PathBuf,
    /// Default: the checkpoint's
    #[arg(long, value_parser = names(&MANIFOLDS))]
    pub manifold: Option<String>,
}

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long, value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Number of samples (independent chains)
    #[arg(long, value_parser = count)]
    pub n: usize,
    /// Output (.npy), one row per sample
    #[arg(long, value_name = "OUT.npy")]
    pub out: PathBuf,
    /// langevin and mala: independent chains (Riemannian on the sphere and the ball); svgd:
    /// interacting particles in groups of 1024 (R^d)
    #[arg(long, value_parser = names(&["langevin", "mala", "svgd"]), default_value = "langevin")]
    pub sampler: String,
    /// Steps per chain
    #[arg(long, value_parser = count, default_value = "1000")]
    pub steps: usize,
    #[arg(long, default_value_t = 1e-2, allow_negative_numbers = true)]
    pub step_size: f64,
    #[arg(long, value_parser = count, default_value = "0")]
    pub seed: usize,
    /// Chains start from N(0, init_std² I) (sphere: normalised; ball: mapped inside)
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub init_std: f64,
    /// Riemannian Langevin / MALA on the sphere or the Poincaré ball; default: the checkpoint's
    #[arg(long, value_parser = names(&MANIFOLDS))]
    pub manifold: Option<String>,
}

/// The names above are the library's: a test checks that each one parses there.
#[cfg(test)]
pub fn check_names() -> Result<(), wmvl::Error> {
    for o in OBJECTIVES {
        wmvl::objective::Objective::from_name(o)?;
    }
    for o in OPTIMIZERS {
        wmvl::optim::Rule::from_name(o)?;
    }
    for p in PATHS {
        wmvl::fused::Path::from_name(p)?;
    }
    for s in SHAPES {
        wmvl::fused::ShapeChoice::from_name(s)?;
    }
    for d in DATASETS {
        if wmvl::data::Toy::from_name(d).is_err() {
            wmvl::directional::Directional::from_name(d)?;
        }
    }
    for s in ["langevin", "mala", "svgd"] {
        wmvl::sample::Sampler::from_name(s)?;
    }
    if OBJECTIVES.len() != wmvl::objective::Objective::ALL.len() {
        return Err(wmvl::Error::Invalid(
            "the objective list is out of date".into(),
        ));
    }
    Ok(())
}
