//! A quick end-to-end check of a device: forward and double backward of a small MLP score-net
//! energy on the device, against the f64 CPU reference. Used by `wmvl info`.

use crate::backend::Backend;
use crate::cpu::{Cpu, Mat};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::Fun;
use crate::tape::{Tape, Var};

/// E(x) = Σ_rows ⟨x, ψ(x)⟩ with ψ(x) = W₂ f(W₁x + b₁) + b₂: the score-net energy (SPEC §7).
pub fn scorenet_energy<'t, B: Backend>(
    x: Var<'t, B>,
    w1: Var<'t, B>,
    b1: Var<'t, B>,
    w2: Var<'t, B>,
    b2: Var<'t, B>,
    f: Fun,
) -> Result<Var<'t, B>> {
    let h = x.matmul(w1)?.add(b1)?.map(f, 0)?;
    let psi = h.matmul(w2)?.add(b2)?;
    x.rowdot(psi)
}

/// The double-backward test quantity: L(θ) = mean ‖∇ₓE‖² + mean E(x − ε∇ₓE + n),
/// returning L and ∂L/∂θ for θ = (W₁, b₁, W₂, b₂), each read back as f64.
pub fn double_backward<B: Backend>(
    backend: B,
    upload: impl Fn(&B, &Mat) -> Result<B::Tensor>,
    read: impl Fn(&B, &B::Tensor) -> Result<Vec<f64>>,
    inputs: &[Mat; 6],
    f: Fun,
    eps: f32,
) -> Result<(f64, Vec<Vec<f64>>)> {
    let tape = Tape::new(backend);
    let leaves: Vec<Var<'_, B>> = inputs
        .iter()
        .map(|m| Ok(tape.leaf(upload(tape.backend(), m)?)))
        .collect::<Result<_>>()?;
    let (x, noise, th) = (leaves[0], leaves[1], &leaves[2..]);
    let e = scorenet_energy(x, th[0], th[1], th[2], th[3], f)?;
    let g = tape.grad(e.sum_all()?, &[x], true)?[0];
    let x1 = x.sub(g.scale(eps)?)?.add(noise)?;
    let e1 = scorenet_energy(x1, th[0], th[1], th[2], th[3], f)?;
    let loss = g
        .square()?
        .sum(crate::ops::Axis::Cols)?
        .mean_all()?
        .add(e1.mean_all()?)?;
    let grads = tape.grad(loss, th, false)?;
    let l = read(tape.backend(), &loss.value())?[0];
    let gs = grads
        .iter()
        .map(|v| read(tape.backend(), &v.value()))
        .collect::<Result<_>>()?;
    Ok((l, gs))
}

/// Deterministic pseudo-random test inputs (x, noise, W₁, b₁, W₂, b₂) for d inputs, h hidden.
pub fn example_inputs(n: usize, d: usize, h: usize, seed: u64) -> [Mat; 6] {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let mut mat = |r: usize, c: usize, scale: f64| Mat {
        rows: r,
        cols: c,
        data: (0..r * c).map(|_| next() * scale).collect(),
    };
    [
        mat(n, d, 1.5),
        mat(n, d, 0.1),
        mat(d, h, 1.0 / (d as f64).sqrt()),
        mat(1, h, 0.3),
        mat(h, d, 1.0 / (h as f64).sqrt()),
        mat(1, d, 0.3),
    ]
}

/// Largest relative error ‖gpu − cpu‖/‖cpu‖ over the loss and each parameter gradient.
pub fn run(gpu: &Gpu) -> Result<f64> {
    let mut worst: f64 = 0.0;
    for f in [Fun::Swish, Fun::Tanh] {
        let inputs = example_inputs(7, 3, 10, 42);
        let up_gpu = |g: &&Gpu, m: &Mat| g.upload(m.rows, m.cols, &m.to_f32());
        let rd_gpu = |g: &&Gpu, t: &crate::gpu::Tensor| {
            Ok(g.read(t)?.into_iter().map(|v| v as f64).collect())
        };
        let (lg, gg) = double_backward(gpu, up_gpu, rd_gpu, &inputs, f, 0.1)?;
        let (lc, gc) = double_backward(
            Cpu,
            |_, m| Ok(m.clone()),
            |_, t: &Mat| Ok(t.data.clone()),
            &inputs,
            f,
            0.1,
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
