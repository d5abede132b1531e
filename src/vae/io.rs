//! A VAE in one checkpoint file: the networks' tensors under `encoder.`, `decoder.` and
//! `energy.`, both optimisers' state and the step, so that an interrupted run resumes exactly
//! (every random draw depends on (seed, step) only).

use std::path::Path;

use super::{Latent, Posterior, Vae, VaeConfig};
use crate::checkpoint::{Checkpoint, NamedTensor};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{HostParams, Model};
use crate::optim::Optimizer;

const NETS: [&str; 3] = ["encoder", "decoder", "energy"];

pub(crate) fn put_model(
    ck: &mut Checkpoint,
    gpu: &Gpu,
    prefix: &str,
    m: &Model<&Gpu>,
) -> Result<()> {
    for mut t in m.to_host(|t| gpu.read(t))?.to_named()? {
        t.name = format!("{prefix}.{}", t.name);
        ck.tensors.push(t);
    }
    Ok(())
}

pub(crate) fn put_opt(ck: &mut Checkpoint, gpu: &Gpu, prefix: &str, o: &Optimizer) -> Result<()> {
    let (s1, s2) = o.state_host(gpu)?;
    let n = s1.len();
    ck.tensors
        .push(NamedTensor::new(format!("{prefix}.opt_s1"), 1, n, s1)?);
    ck.tensors
        .push(NamedTensor::new(format!("{prefix}.opt_s2"), 1, n, s2)?);
    ck.metadata
        .insert(format!("{prefix}.opt_t"), o.t.to_string());
    Ok(())
}

/// The checkpoint restricted to one network's tensors, names without the prefix.
fn sub(ck: &Checkpoint, prefix: &str) -> Checkpoint {
    let mut out = Checkpoint::new();
    let p = format!("{prefix}.");
    out.tensors = ck
        .tensors
        .iter()
        .filter_map(|t| {
            t.name.strip_prefix(&p).map(|n| NamedTensor {
                name: n.to_string(),
                ..t.clone()
            })
        })
        .collect();
    out
}

pub(crate) fn load_params(
    gpu: &Gpu,
    ck: &Checkpoint,
    prefix: &str,
    m: &mut Model<&Gpu>,
) -> Result<()> {
    let hp = HostParams::from_checkpoint(&sub(ck, prefix), &m.arch)?;
    for (dst, (_, _, v)) in m.weights.iter().zip(&hp.weights) {
        gpu.copy_into(&gpu.upload(dst.shape().0, dst.shape().1, v)?, dst)?;
    }
    for (dst, (_, _, v)) in m.biases.iter().zip(&hp.biases) {
        gpu.copy_into(&gpu.upload(dst.shape().0, dst.shape().1, v)?, dst)?;
    }
    Ok(())
}

pub(crate) fn load_opt(gpu: &Gpu, ck: &Checkpoint, prefix: &str, o: &mut Optimizer) -> Result<()> {
    let s1 = &ck.get(&format!("{prefix}.opt_s1"))?.data;
    let s2 = &ck.get(&format!("{prefix}.opt_s2"))?.data;
    o.load_state(gpu, ck.meta_parse(&format!("{prefix}.opt_t"))?, s1, s2)
}

/// Hidden widths as checkpoint metadata ("256,256").
pub(crate) fn join_widths(h: &[usize]) -> String {
    h.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Hidden widths from checkpoint metadata written by [`join_widths`].
pub(crate) fn meta_widths(ck: &Checkpoint, key: &str) -> Result<Vec<usize>> {
    ck.meta(key)?
        .split(',')
        .map(|h| {
            h.parse()
                .map_err(|_| Error::Invalid(format!("{key}: {h:?} is not a width")))
        })
        .collect()
}

/// A latent space from checkpoint metadata written with [`Latent::name`].
pub(crate) fn meta_latent(ck: &Checkpoint, key: &str) -> Result<Latent> {
    match ck.meta(key)? {
        "sphere" => Ok(Latent::Sphere),
        "euclidean" => Ok(Latent::Euclidean),
        o => Err(Error::Invalid(format!("unknown latent space {o:?}"))),
    }
}

/// Puts the checkpoint's path in front of the messages of errors about its contents.
pub(crate) fn in_file(path: &Path) -> impl Fn(Error) -> Error + Copy + '_ {
    move |e| match e {
        Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
        Error::Shape(m) => Error::Shape(format!("{}: {m}", path.display())),
        other => other,
    }
}

impl Vae<'_> {
    /// Writes the VAE, its optimisers and step atomically to `path`, with `extra` metadata.
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        let gpu = self.gpu;
        let mut ck = Checkpoint::new();
        put_model(&mut ck, gpu, NETS[0], &self.encoder)?;
        put_model(&mut ck, gpu, NETS[1], &self.decoder)?;
        put_opt(&mut ck, gpu, "autoencoder", &self.opt)?;
        if let (Some(e), Some(o)) = (&self.energy, &self.opt_energy) {
            put_model(&mut ck, gpu, NETS[2], e)?;
            put_opt(&mut ck, gpu, NETS[2], o)?;
        }
        let c = &self.cfg;
        for (k, v) in [
            ("vae.nz", c.nz.to_string()),
            ("vae.latent", c.latent.name().to_string()),
            ("vae.posterior", c.posterior.name().to_string()),
            ("vae.pixels", c.pixels.to_string()),
            ("vae.hidden", join_widths(&c.hidden)),
            ("vae.energy_hidden", join_widths(&c.energy_hidden)),
            ("vae.lr", format!("{:?}", c.lr)),
            ("vae.batch", c.batch.to_string()),
            ("vae.energy_reg", format!("{:?}", c.energy_reg)),
            ("vae.eps", format!("{:?}", c.eps)),
            ("vae.seed", c.seed.to_string()),
            ("vae.step", self.steps_done.to_string()),
            ("vae.rng_stream", self.rng.stream.to_string()),
        ] {
            ck.metadata.insert(k.to_string(), v);
        }
        for (k, v) in extra {
            ck.metadata.insert(k.to_string(), v.clone());
        }
        ck.save(path)
    }

    /// A VAE saved by [`Vae::save`], with its optimisers and step; and the checkpoint (for
    /// the caller's metadata).
    pub fn load<'g>(gpu: &'g Gpu, path: &Path) -> Result<(Vae<'g>, Checkpoint)> {
        let ck = Checkpoint::load(path)?;
        let at = in_file(path);
        let cfg = (|| -> Result<VaeConfig> {
            Ok(VaeConfig {
                nz: ck.meta_parse("vae.nz")?,
                latent: meta_latent(&ck, "vae.latent")?,
                posterior: match ck.meta("vae.posterior")? {
                    "implicit" => Posterior::Implicit,
                    "explicit" => Posterior::Explicit,
                    o => return Err(Error::Invalid(format!("unknown posterior {o:?}"))),
                },
                pixels: ck.meta_parse("vae.pixels")?,
                hidden: meta_widths(&ck, "vae.hidden")?,
                energy_hidden: meta_widths(&ck, "vae.energy_hidden")?,
                lr: ck.meta_parse("vae.lr")?,
                batch: ck.meta_parse("vae.batch")?,
                energy_reg: ck.meta_parse("vae.energy_reg")?,
                eps: ck.meta_parse("vae.eps")?,
                seed: ck.meta_parse("vae.seed")?,
                path: crate::fused::Path::Auto,
            })
        })()
        .map_err(at)?;
        let mut vae = Vae::new(gpu, cfg).map_err(at)?;
        (|| -> Result<()> {
            load_params(gpu, &ck, NETS[0], &mut vae.encoder)?;
            load_params(gpu, &ck, NETS[1], &mut vae.decoder)?;
            load_opt(gpu, &ck, "autoencoder", &mut vae.opt)?;
            if let (Some(e), Some(o)) = (vae.energy.as_mut(), vae.opt_energy.as_mut()) {
                load_params(gpu, &ck, NETS[2], e)?;
                load_opt(gpu, &ck, NETS[2], o)?;
            }
            vae.steps_done = ck.meta_parse("vae.step")?;
            vae.rng.stream = ck.meta_parse("vae.rng_stream")?;
            Ok(())
        })()
        .map_err(at)?;
        Ok((vae, ck))
    }
}
