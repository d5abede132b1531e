//! What a VAE is: its latent space, its kind of encoder, its sizes and training settings.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::manifold::Manifold;
use crate::model::{Arch, EnergyKind};
use crate::ops::Fun;
use crate::tape::Var;

/// Where the latents live (and the prior there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latent {
    /// R^n_z with the prior N(0, I).
    Euclidean,
    /// S^(n_z−1) ⊂ R^n_z with the uniform prior.
    Sphere,
}

/// How q(z|x) is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posterior {
    /// Gaussian (Euclidean) or von Mises–Fisher (sphere), with a closed-form KL.
    Explicit,
    /// z = f([x, ε]), entropy gradient through a conditional energy trained by MVL.
    Implicit,
}

impl Latent {
    pub fn name(self) -> &'static str {
        match self {
            Latent::Euclidean => "euclidean",
            Latent::Sphere => "sphere",
        }
    }

    pub fn manifold(self) -> Manifold {
        match self {
            Latent::Sphere => Manifold::Sphere,
            Latent::Euclidean => Manifold::Euclidean,
        }
    }

    /// z̃ = √n_z·z on the sphere (SPEC §7), so that the networks reading latents — energies,
    /// and, our choice, decoders and discriminators — see inputs of order one, as Euclidean
    /// latents are; unscaled unit vectors made the spherical decoders learn several times
    /// slower.
    pub fn scale(self, nz: usize) -> f32 {
        match self {
            Latent::Sphere => (nz as f32).sqrt(),
            Latent::Euclidean => 1.0,
        }
    }

    /// An encoder's output (or normal draws) put on the latent space: rows normalised on the
    /// sphere, unchanged in R^n.
    pub fn project<'t, B: Backend>(self, z: Var<'t, B>) -> Result<Var<'t, B>> {
        match self {
            Latent::Sphere => super::normalize_rows(z),
            Latent::Euclidean => Ok(z),
        }
    }
}

impl Posterior {
    pub fn name(self) -> &'static str {
        match self {
            Posterior::Explicit => "explicit",
            Posterior::Implicit => "implicit",
        }
    }
}

/// A VAE's architecture and training settings; the defaults are the paper's (appendix E.2).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub nz: usize,
    pub latent: Latent,
    pub posterior: Posterior,
    /// Image size (784 for MNIST).
    pub pixels: usize,
    /// Hidden widths of encoder and decoder (2 × 256 tanh, as Song et al. 2019).
    pub hidden: Vec<usize>,
    /// Hidden widths of the conditional energy (2 × 256 tanh, no spectral norm).
    pub energy_hidden: Vec<usize>,
    /// RMSProp (TF-style) learning rate of every network.
    pub lr: f32,
    pub batch: usize,
    /// The energy-scale regulariser of the conditional energy's MVL loss.
    pub energy_reg: f32,
    /// MVL's step size ε₀ for the conditional energy.
    pub eps: f32,
    pub seed: u64,
    /// The conditional energy's MVL step on the fused kernels (`Auto`: wherever they apply)
    /// or the tape. Not part of the model: a checkpoint does not record it.
    pub path: crate::fused::Path,
}

impl VaeConfig {
    pub fn paper(nz: usize, latent: Latent, posterior: Posterior) -> VaeConfig {
        VaeConfig {
            nz,
            latent,
            posterior,
            pixels: 784,
            hidden: vec![256, 256],
            energy_hidden: vec![256, 256],
            lr: 1e-3,
            batch: 128,
            energy_reg: 1e-4,
            eps: 1e-3,
            seed: 0,
            path: crate::fused::Path::Auto,
        }
    }

    /// "implicit-sphere-8" and the like: names checkpoints and table rows.
    pub fn name(&self) -> String {
        format!(
            "{}-{}-{}",
            self.posterior.name(),
            self.latent.name(),
            self.nz
        )
    }

    pub fn validate(&self) -> Result<()> {
        let min_nz = if self.latent == Latent::Sphere { 2 } else { 1 };
        if self.nz < min_nz || self.pixels == 0 || self.batch == 0 {
            return Err(Error::Invalid(format!(
                "VAE: need n_z ≥ {min_nz}, pixels > 0 and batch > 0 (got n_z {}, pixels {}, batch {})",
                self.nz, self.pixels, self.batch
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::Invalid(format!(
                "VAE: learning rate and ε₀ must be positive (got {} and {})",
                self.lr, self.eps
            )));
        }
        Ok(())
    }

    /// Encoder output width: [μ, log σ²] (Gaussian), [μ, κ̃] (vMF) or z (implicit).
    pub(super) fn encoder_out(&self) -> usize {
        match (self.posterior, self.latent) {
            (Posterior::Explicit, Latent::Euclidean) => 2 * self.nz,
            (Posterior::Explicit, Latent::Sphere) => self.nz + 1,
            (Posterior::Implicit, _) => self.nz,
        }
    }

    /// Encoder input width: x, and for the implicit encoder also n_z noise columns.
    pub(super) fn encoder_in(&self) -> usize {
        match self.posterior {
            Posterior::Explicit => self.pixels,
            Posterior::Implicit => self.pixels + self.nz,
        }
    }

    pub(super) fn net(&self, dim: usize, out: usize, hidden: &[usize]) -> Arch {
        Arch {
            kind: EnergyKind::Net { out },
            dim,
            hidden: hidden.to_vec(),
            act: Fun::Tanh,
            spectral_norm: false,
        }
    }

    /// The conditional energy E(z | x) = ⟨z̃, ψ([z̃, x])⟩ (SPEC §7).
    pub(super) fn energy_arch(&self) -> Arch {
        Arch {
            kind: EnergyKind::Conditional { dz: self.nz },
            dim: self.nz + self.pixels,
            hidden: self.energy_hidden.clone(),
            act: Fun::Tanh,
            spectral_norm: false,
        }
    }

    pub(super) fn latent_scale(&self) -> f32 {
        self.latent.scale(self.nz)
    }

    pub(super) fn manifold(&self) -> Manifold {
        self.latent.manifold()
    }
}
