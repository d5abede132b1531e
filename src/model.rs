//! Energy models (SPEC §7): MLPs with optional spectral normalisation, the score-net energy
//! E(x) = ⟨x, ψ(x)⟩, a scalar-output MLP energy, and the conditional energy E(z | c).
//!
//! A model owns its parameters as device tensors. Each training step *binds* it to a tape:
//! the parameters become tape leaves (the things we differentiate with respect to), spectral
//! norm does its power iteration, and the bound model evaluates energies as tape values.

use crate::rng::HostRng;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::{Axis, Fun};
use crate::tape::{Tape, Var};

/// How an energy is built from its MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnergyKind {
    /// E(x) = ⟨x, ψ(x)⟩, ψ: R^d → R^d (the paper's choice).
    ScoreNet,
    /// E(x) = ψ(x), ψ: R^d → R.
    Scalar,
    /// E(z | c) = ⟨z, ψ([z, c])⟩ with z the first `dz` columns of the input and c the rest.
    Conditional { dz: usize },
    /// Not an energy: the MLP ψ: R^dim → R^out itself (the auto-encoders' encoders and
    /// decoders), so that they share initialisation, binding and checkpoints with energies.
    Net { out: usize },
}

/// Weight initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// TensorFlow's dense-layer default: Glorot-uniform weights, zero biases.
    Glorot,
    /// PyTorch's `nn.Linear` default: U(−1/√fan_in, 1/√fan_in) for weights and biases.
    Torch,
}

/// Everything needed to rebuild a model (also what checkpoints record).
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    pub kind: EnergyKind,
    /// Input width (for `Conditional`: dz + width of c).
    pub dim: usize,
    pub hidden: Vec<usize>,
    pub act: Fun,
    /// Spectral normalisation on the hidden layers (all but the output layer).
    pub spectral_norm: bool,
}

impl Arch {
    /// The paper's synthetic setting: score-net, 2 × 100 Swish, spectral norm.
    pub fn paper(dim: usize) -> Arch {
        Arch {
            kind: EnergyKind::ScoreNet,
            dim,
            hidden: vec![100, 100],
            act: Fun::Swish,
            spectral_norm: true,
        }
    }

    /// Output width of the MLP.
    pub fn out_dim(&self) -> usize {
        match self.kind {
            EnergyKind::ScoreNet => self.dim,
            EnergyKind::Scalar => 1,
            EnergyKind::Conditional { dz } => dz,
            EnergyKind::Net { out } => out,
        }
    }

    /// (fan_in, fan_out) of each layer.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        let mut widths = vec![self.dim];
        widths.extend(&self.hidden);
        widths.push(self.out_dim());
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.hidden.contains(&0) {
            return Err(Error::Invalid(format!(
                "model widths must be positive: input width {}, hidden widths {:?}",
                self.dim, self.hidden
            )));
        }
        if self.kind == (EnergyKind::Net { out: 0 }) {
            return Err(Error::Invalid(
                "a network needs a positive output width".into(),
            ));
        }
        if let EnergyKind::Conditional { dz } = self.kind {
            if dz == 0 || dz >= self.dim {
                return Err(Error::Invalid(format!(
                    "conditional energy: dz = {dz} must be in 1..{} (the input width)",
                    self.dim
                )));
            }
        }
        if !matches!(
            self.act,
            Fun::Swish | Fun::Tanh | Fun::Elu | Fun::Softplus | Fun::Sigmoid
        ) {
            return Err(Error::Invalid(format!(
                "{} is not an activation for a model; use {}",
                act_name(self.act),
                ACT_NAMES.join(", ")
            )));
        }
        Ok(())
    }
}

/// Activation names as used on the command line and in checkpoints.
pub fn act_name(f: Fun) -> &'static str {
    match f {
        Fun::Swish => "swish",
        Fun::Tanh => "tanh",
        Fun::Elu => "elu",
        Fun::Softplus => "softplus",
        Fun::Sigmoid => "sigmoid",
        _ => "unsupported",
    }
}

/// The activations a model can use, by name (see [`act_from_name`]).
pub const ACT_NAMES: [&str; 5] = ["swish", "tanh", "sigmoid", "softplus", "elu"];

pub fn act_from_name(s: &str) -> Result<Fun> {
    Ok(match s {
        "swish" => Fun::Swish,
        "tanh" => Fun::Tanh,
        "elu" => Fun::Elu,
        "softplus" => Fun::Softplus,
        "sigmoid" => Fun::Sigmoid,
        _ => {
            return Err(Error::Invalid(format!(
                "unknown activation {s:?}; use {}",
                ACT_NAMES.join(", ")
            )))
        }
    })
}

/// An energy model with its parameters on a device.
pub struct Model<B: Backend> {
    pub arch: Arch,
    /// Per layer: weight (fan_in, fan_out) and bias (1, fan_out).
    pub weights: Vec<B::Tensor>,
    pub biases: Vec<B::Tensor>,
    /// Per spectrally normalised layer: the persistent power-iteration vector u (1, fan_out).
    pub sn_u: Vec<Option<B::Tensor>>,
}

/// Host-side initial values, so that any device (and the CPU reference) starts identically.
#[derive(Clone, Debug, PartialEq)]
pub struct HostParams {
    pub weights: Vec<(usize, usize, Vec<f32>)>,
    pub biases: Vec<(usize, usize, Vec<f32>)>,
    pub sn_u: Vec<Option<(usize, usize, Vec<f32>)>>,
}

fn uniform(rng: &mut HostRng, lim: f64) -> f32 {
    ((2.0 * rng.uniform() - 1.0) * lim) as f32
}

impl HostParams {
    fn empty() -> HostParams {
        HostParams {
            weights: vec![],
            biases: vec![],
            sn_u: vec![],
        }
    }

    /// Seeded initial parameters for `arch`.
    pub fn init(arch: &Arch, init: Init, seed: u64) -> Result<HostParams> {
        arch.validate()?;
        let mut rng = HostRng::new(seed);
        let shapes = arch.layer_shapes();
        let last = shapes.len() - 1;
        let mut hp = HostParams::empty();
        for (l, &(fi, fo)) in shapes.iter().enumerate() {
            let (wl, bl) = match init {
                Init::Glorot => ((6.0 / (fi + fo) as f64).sqrt(), 0.0),
                Init::Torch => (1.0 / (fi as f64).sqrt(), 1.0 / (fi as f64).sqrt()),
            };
            let w = (0..fi * fo).map(|_| uniform(&mut rng, wl)).collect();
            let b = (0..fo).map(|_| uniform(&mut rng, bl)).collect();
            hp.weights.push((fi, fo, w));
            hp.biases.push((1, fo, b));
            hp.sn_u.push(if arch.spectral_norm && l < last {
                let mut u: Vec<f32> = (0..fo).map(|_| uniform(&mut rng, 1.0)).collect();
                let n = u.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                u.iter_mut().for_each(|v| *v /= n);
                Some((1, fo, u))
            } else {
                None
            });
        }
        Ok(hp)
    }
}

/// A model bound to a tape for one step.
pub struct Bound<'t, B: Backend> {
    pub arch: Arch,
    /// The leaves to differentiate with respect to: weights then biases, layer by layer
    /// (the order of [`Model::params`]).
    pub leaves: Vec<Var<'t, B>>,
    /// Effective weights (W/σ for spectrally normalised layers).
    weights: Vec<Var<'t, B>>,
    biases: Vec<Var<'t, B>>,
}

impl<B: Backend> Model<B> {
    /// Put host parameters on a device.
    pub fn from_host(
        arch: Arch,
        hp: &HostParams,
        upload: impl Fn(usize, usize, &[f32]) -> Result<B::Tensor>,
    ) -> Result<Model<B>> {
        arch.validate()?;
        let shapes = arch.layer_shapes();
        if hp.weights.len() != shapes.len() {
            return Err(Error::Shape(format!(
                "{} weight tensors for a {}-layer model",
                hp.weights.len(),
                shapes.len()
            )));
        }
        let up = |(r, c, d): &(usize, usize, Vec<f32>)| upload(*r, *c, d);
        Ok(Model {
            arch,
            weights: hp.weights.iter().map(up).collect::<Result<_>>()?,
            biases: hp.biases.iter().map(up).collect::<Result<_>>()?,
            sn_u: hp
                .sn_u
                .iter()
                .map(|u| u.as_ref().map(up).transpose())
                .collect::<Result<_>>()?,
        })
    }

    /// Parameter tensors in the canonical order: W₀, b₀, W₁, b₁, …
    pub fn params(&self) -> Vec<B::Tensor> {
        self.weights
            .iter()
            .zip(&self.biases)
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    /// Canonical parameter names, matching [`Model::params`] (used in checkpoints).
    pub fn param_names(&self) -> Vec<String> {
        (0..self.weights.len())
            .flat_map(|l| [format!("layers.{l}.weight"), format!("layers.{l}.bias")])
            .collect()
    }

    /// Bind to a tape. With `power_iterate`, each spectrally normalised layer does one power
    /// iteration (SPEC §7) and its u is replaced; otherwise the stored u is used as is.
    pub fn bind<'t>(&mut self, tape: &'t Tape<B>, power_iterate: bool) -> Result<Bound<'t, B>> {
        let mut leaves = Vec::new();
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for l in 0..self.weights.len() {
            let w = tape.leaf(self.weights[l].clone());
            let b = tape.leaf(self.biases[l].clone());
            leaves.push(w);
            leaves.push(b);
            biases.push(b);
            let Some(u0) = self.sn_u[l].clone() else {
                weights.push(w);
                continue;
            };
            // v = normalize(W u), u = normalize(Wᵀ v) with W held constant; σ = vᵀ W u with
            // u, v constants, so the gradient flows through σ into W only.
            let wc = w.detach();
            let u = tape.leaf(u0);
            let (u, v) = if power_iterate {
                let v = normalize_row(u.matmul_t(wc, false, true)?)?;
                let u = normalize_row(v.matmul(wc)?)?;
                self.sn_u[l] = Some(u.value());
                (u, v)
            } else {
                (u, normalize_row(u.matmul_t(wc, false, true)?)?)
            };
            let sigma = v.detach().matmul(w)?.rowdot(u.detach())?;
            weights.push(w.div(sigma)?);
        }
        Ok(Bound {
            arch: self.arch.clone(),
            leaves,
            weights,
            biases,
        })
    }
}

/// x / ‖x‖ for a (1, n) row (constant: used only inside the power iteration).
fn normalize_row<B: Backend>(x: Var<'_, B>) -> Result<Var<'_, B>> {
    let n = x.square()?.sum(Axis::All)?.affine(1.0, 1e-24)?.sqrt()?;
    Ok(x.div(n)?.detach())
}

impl<'t, B: Backend> Bound<'t, B> {
    /// ψ(x): the MLP.
    pub fn mlp(&self, x: Var<'t, B>) -> Result<Var<'t, B>> {
        let mut h = x;
        let last = self.weights.len() - 1;
        for (l, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            h = h.matmul(*w)?.add(*b)?;
            if l < last {
                h = h.map(self.arch.act, 0)?;
            }
        }
        Ok(h)
    }

    /// Per-sample energies, (rows, 1).
    pub fn energy(&self, x: Var<'t, B>) -> Result<Var<'t, B>> {
        let (_, c) = x.shape();
        if c != self.arch.dim {
            return Err(Error::Shape(format!(
                "the model takes {} columns, the data has {c}",
                self.arch.dim
            )));
        }
        match self.arch.kind {
            EnergyKind::ScoreNet => x.rowdot(self.mlp(x)?),
            EnergyKind::Scalar => self.mlp(x),
            EnergyKind::Conditional { dz } => x.slice_cols(0, dz)?.rowdot(self.mlp(x)?),
            EnergyKind::Net { .. } => Err(Error::Invalid(
                "this model is a plain network, not an energy".into(),
            )),
        }
    }
}

impl<'t, B: Backend> crate::objective::Energy<'t, B> for Bound<'t, B> {
    fn energy(&self, x: Var<'t, B>) -> Result<Var<'t, B>> {
        Bound::energy(self, x)
    }
}

/// Checkpoint metadata keys for the architecture.
const META_KIND: &str = "energy";
const META_DIM: &str = "input_dim";
const META_HIDDEN: &str = "hidden";
const META_ACT: &str = "activation";
const META_SN: &str = "spectral_norm";
const META_DZ: &str = "conditional_dz";
const META_OUT: &str = "output_dim";

impl Arch {
    /// The architecture as checkpoint metadata.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let kind = match self.kind {
            EnergyKind::ScoreNet => "scorenet",
            EnergyKind::Scalar => "scalar",
            EnergyKind::Conditional { .. } => "conditional",
            EnergyKind::Net { .. } => "net",
        };
        let hidden: Vec<String> = self.hidden.iter().map(|h| h.to_string()).collect();
        let mut m = vec![
            (META_KIND.to_string(), kind.to_string()),
            (META_DIM.to_string(), self.dim.to_string()),
            (META_HIDDEN.to_string(), hidden.join(",")),
            (META_ACT.to_string(), act_name(self.act).to_string()),
            (META_SN.to_string(), self.spectral_norm.to_string()),
        ];
        match self.kind {
            EnergyKind::Conditional { dz } => m.push((META_DZ.to_string(), dz.to_string())),
            EnergyKind::Net { out } => m.push((META_OUT.to_string(), out.to_string())),
            _ => {}
        }
        m
    }

    /// Rebuild the architecture from checkpoint metadata.
    pub fn from_checkpoint(ck: &crate::checkpoint::Checkpoint) -> Result<Arch> {
        let kind = match ck.meta(META_KIND)? {
            "scorenet" => EnergyKind::ScoreNet,
            "scalar" => EnergyKind::Scalar,
            "conditional" => EnergyKind::Conditional {
                dz: ck.meta_parse(META_DZ)?,
            },
            "net" => EnergyKind::Net {
                out: ck.meta_parse(META_OUT)?,
            },
            other => {
                return Err(Error::Invalid(format!(
                    "checkpoint: unknown energy kind {other:?}"
                )))
            }
        };
        let hidden = ck.meta(META_HIDDEN)?;
        let hidden = if hidden.is_empty() {
            vec![]
        } else {
            hidden
                .split(',')
                .map(|h| {
                    h.trim().parse().map_err(|_| {
                        Error::Invalid(format!(
                            "checkpoint: hidden widths {hidden:?} are not numbers"
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        let arch = Arch {
            kind,
            dim: ck.meta_parse(META_DIM)?,
            hidden,
            act: act_from_name(ck.meta(META_ACT)?)?,
            spectral_norm: ck.meta_parse(META_SN)?,
        };
        arch.validate()?;
        Ok(arch)
    }
}

impl HostParams {
    /// Tensors in checkpoint form: `layers.{l}.weight` (fan_in × fan_out), `layers.{l}.bias`
    /// (1 × fan_out) and, for spectrally normalised layers, `layers.{l}.sn_u` (1 × fan_out).
    pub fn to_named(&self) -> Result<Vec<crate::checkpoint::NamedTensor>> {
        use crate::checkpoint::NamedTensor;
        let mut out = Vec::new();
        for (l, ((w, b), u)) in self
            .weights
            .iter()
            .zip(&self.biases)
            .zip(&self.sn_u)
            .enumerate()
        {
            out.push(NamedTensor::new(
                format!("layers.{l}.weight"),
                w.0,
                w.1,
                w.2.clone(),
            )?);
            out.push(NamedTensor::new(
                format!("layers.{l}.bias"),
                b.0,
                b.1,
                b.2.clone(),
            )?);
            if let Some(u) = u {
                out.push(NamedTensor::new(
                    format!("layers.{l}.sn_u"),
                    u.0,
                    u.1,
                    u.2.clone(),
                )?);
            }
        }
        Ok(out)
    }

    /// Parameters from a checkpoint, every shape checked against `arch`.
    pub fn from_checkpoint(ck: &crate::checkpoint::Checkpoint, arch: &Arch) -> Result<HostParams> {
        let shapes = arch.layer_shapes();
        let last = shapes.len() - 1;
        let mut hp = HostParams::empty();
        for (l, &(fi, fo)) in shapes.iter().enumerate() {
            let w = ck.expect_shape(&format!("layers.{l}.weight"), fi, fo)?;
            let b = ck.expect_shape(&format!("layers.{l}.bias"), 1, fo)?;
            hp.weights.push((fi, fo, w.data.clone()));
            hp.biases.push((1, fo, b.data.clone()));
            hp.sn_u.push(if arch.spectral_norm && l < last {
                let u = ck.expect_shape(&format!("layers.{l}.sn_u"), 1, fo)?;
                Some((1, fo, u.data.clone()))
            } else {
                None
            });
        }
        Ok(hp)
    }
}

impl<B: Backend> Model<B> {
    /// Copy the parameters to the host (e.g. for a checkpoint).
    pub fn to_host(&self, read: impl Fn(&B::Tensor) -> Result<Vec<f32>>) -> Result<HostParams> {
        let shapes = self.arch.layer_shapes();
        let mut hp = HostParams::empty();
        for (l, &(fi, fo)) in shapes.iter().enumerate() {
            hp.weights.push((fi, fo, read(&self.weights[l])?));
            hp.biases.push((1, fo, read(&self.biases[l])?));
            hp.sn_u.push(match &self.sn_u[l] {
                Some(u) => Some((1, fo, read(u)?)),
                None => None,
            });
        }
        Ok(hp)
    }
}
