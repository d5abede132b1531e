//! A quick end-to-end check of a device: forward and double backward of a small score-net
//! energy (the model of `crate::model`) on the device, against the f64 CPU reference.
//! Used by `wmvl info`.

use crate::backend::Backend;
use crate::cpu::{Cpu, Mat};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Arch, HostParams, Init, Model};
use crate::ops::{Axis, Fun};
use crate::rng::{reference_draw, Dist};
use crate::tape::Tape;

/// L(θ) = mean ‖∇ₓE‖² + mean E(x − 0.1∇ₓE + n) for a 1 × 10 score-net with activation `f`,
/// returning L and ∂L/∂θ (weights and biases, layer by layer) read back as f64.
fn double_backward<B: Backend>(
    backend: B,
    upload: impl Fn(&B, usize, usize, &[f32]) -> Result<B::Tensor>,
    read: impl Fn(&B, &B::Tensor) -> Result<Vec<f64>>,
    f: Fun,
) -> Result<(f64, Vec<Vec<f64>>)> {
    let (n, d) = (7, 3);
    let arch = Arch {
        hidden: vec![10],
        act: f,
        spectral_norm: false,
        ..Arch::paper(d)
    };
    let hp = HostParams::init(&arch, Init::Torch, 42)?;
    let draw = |stream, scale: f64| -> Vec<f32> {
        reference_draw(n * d, Dist::STANDARD_NORMAL, 42, stream)
            .iter()
            .map(|&v| (v * scale) as f32)
            .collect()
    };
    let mut model = Model::from_host(arch, &hp, |r, c, v| upload(&backend, r, c, v))?;
    let tape = Tape::new(&backend);
    let x = tape.leaf(upload(&backend, n, d, &draw(1, 1.5))?);
    let noise = tape.leaf(upload(&backend, n, d, &draw(2, 0.1))?);
    let bound = model.bind(&tape, false)?;
    let e = bound.energy(x)?;
    let g = tape.grad(e.sum_all()?, &[x], true)?[0];
    let e1 = bound.energy(x.sub(g.scale(0.1)?)?.add(noise)?)?;
    let loss = g
        .square()?
        .sum(Axis::Cols)?
        .mean_all()?
        .add(e1.mean_all()?)?;
    let grads = tape.grad(loss, &bound.leaves, false)?;
    let l = read(&backend, &loss.value())?[0];
    let gs = grads
        .iter()
        .map(|v| read(&backend, &v.value()))
        .collect::<Result<_>>()?;
    Ok((l, gs))
}

/// Largest relative error ‖gpu − cpu‖/‖cpu‖ over the loss and each parameter gradient, for
/// Swish and tanh networks.
pub fn run(gpu: &Gpu) -> Result<f64> {
    let mut worst: f64 = 0.0;
    for f in [Fun::Swish, Fun::Tanh] {
        let (lg, gg) = double_backward(
            gpu,
            |g, r, c, v| g.upload(r, c, v),
            |g, t| Ok(g.read(t)?.into_iter().map(|v| v as f64).collect()),
            f,
        )?;
        let (lc, gc) = double_backward(
            Cpu,
            |_, r, c, v| Mat::from_f32(r, c, v),
            |_, t: &Mat| Ok(t.data.clone()),
            f,
        )?;
        worst = worst.max(rel_err(&[lg], &[lc]));
        for (a, b) in gg.iter().zip(&gc) {
            worst = worst.max(rel_err(a, b));
        }
    }
    if !worst.is_finite() {
        return Err(Error::Gpu("self-check produced a non-finite result".into()));
    }
    Ok(worst)
}

/// ‖a − b‖ / ‖b‖ (or ‖a − b‖ when b = 0).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den > 0.0 {
        num / den
    } else {
        num
    }
}
