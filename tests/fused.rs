//! The fused MVL step (`wmvl::fused`) against the tape path and the f64 reference.

use std::sync::OnceLock;

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

use wmvl::backend::Backend;
use wmvl::cpu::{Cpu, Mat};
use wmvl::fused::FusedMvl;
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, EnergyKind, HostParams, Init, Model};
use wmvl::objective::{estimate, Config, Objective};
use wmvl::ops::Fun;
use wmvl::tape::Tape;
use wmvl::Result;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// A random problem: model parameters, data rows and a standard-normal noise draw.
struct Problem {
    arch: Arch,
    hp: HostParams,
    x: Vec<f32>,
    z: Vec<f32>,
    n: usize,
}

fn normal(r: &mut Pcg64) -> f64 {
    let u1 = ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn problem(
    seed: u64,
    d: usize,
    hidden: &[usize],
    act: Fun,
    sn: bool,
    n: usize,
    scale: f64,
) -> Problem {
    let arch = Arch {
        kind: EnergyKind::ScoreNet,
        dim: d,
        hidden: hidden.to_vec(),
        act,
        spectral_norm: sn,
    };
    let mut hp = HostParams::init(&arch, Init::Torch, seed).unwrap();
    // Non-zero biases everywhere and weights of either scale, so every term matters.
    let mut r = Pcg64::seed_from_u64(seed ^ 0xabc);
    for (_, _, w) in hp.weights.iter_mut() {
        for v in w.iter_mut() {
            *v = (*v as f64 * scale) as f32;
        }
    }
    for (_, _, b) in hp.biases.iter_mut() {
        for v in b.iter_mut() {
            *v = (0.3 * normal(&mut r)) as f32;
        }
    }
    let x = (0..n * d).map(|_| (1.5 * normal(&mut r)) as f32).collect();
    let z = (0..n * d).map(|_| normal(&mut r) as f32).collect();
    Problem { arch, hp, x, z, n }
}

/// (loss, per-sample values, flattened gradient) of MVL on the whole problem in one batch.
struct Out {
    loss: f64,
    per_sample: Vec<f64>,
    grad: Vec<f64>,
}

fn tape_on<B: Backend + wmvl::backend::RandomFill + Copy>(
    dev: B,
    p: &Problem,
    cfg: &Config,
    put: impl Fn(usize, usize, &[f32]) -> Result<B::Tensor>,
    get: impl Fn(&B::Tensor) -> Result<Vec<f64>>,
) -> Result<Out> {
    let mut model = Model::<B>::from_host(p.arch.clone(), &p.hp, &put)?;
    let tape = Tape::new(dev);
    let bound = model.bind(&tape, false)?;
    let d = p.arch.dim;
    let x0 = tape.leaf(put(p.n, d, &p.x)?);
    let z = tape.leaf(put(p.n, d, &p.z)?);
    let est = estimate(Objective::Mvl, cfg, &bound, x0, Some(z))?;
    let grads = tape.grad(est.loss, &bound.leaves, false)?;
    let mut grad = Vec::new();
    for g in grads {
        grad.extend(get(&g.value())?);
    }
    Ok(Out {
        loss: get(&est.loss.value())?[0],
        per_sample: get(&est.per_sample.value())?,
        grad,
    })
}

fn reference(p: &Problem, cfg: &Config) -> Out {
    tape_on(Cpu, p, cfg, Mat::from_f32, |m: &Mat| Ok(m.data.clone())).unwrap()
}

fn tape_gpu(p: &Problem, cfg: &Config) -> Out {
    let g = gpu();
    tape_on(
        g,
        p,
        cfg,
        |r, c, d| g.upload(r, c, d),
        |t| Ok(g.read(t)?.into_iter().map(f64::from).collect()),
    )
    .unwrap()
}

fn fused(p: &Problem, cfg: &Config, chunk: usize) -> Out {
    let g = gpu();
    let mut model =
        Model::<&Gpu>::from_host(p.arch.clone(), &p.hp, |r, c, d| g.upload(r, c, d)).unwrap();
    let d = p.arch.dim;
    let x = g.upload(p.n, d, &p.x).unwrap();
    let z = g.upload(p.n, d, &p.z).unwrap();
    assert!(chunk >= p.n, "one chunk");
    let f = FusedMvl::for_evaluation(g, &mut model, cfg, chunk, &x, Some(&z)).unwrap();
    f.record_eval(&mut model, 0, p.n, (0, 0)).unwrap();
    let read = |t: &wmvl::gpu::Tensor| -> Vec<f64> {
        g.read(t).unwrap().into_iter().map(f64::from).collect()
    };
    let mut grad = Vec::new();
    for t in f.grads().unwrap() {
        grad.extend(read(&t));
    }
    Out {
        loss: read(&f.loss().unwrap())[0],
        per_sample: read(&f.per_sample(p.n).unwrap()),
        grad,
    }
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

#[test]
fn fused_matches_reference_smoke() {
    for (act, sn) in [(Fun::Swish, true), (Fun::Tanh, false)] {
        let p = problem(1, 2, &[16, 12], act, sn, 37, 1.0);
        let cfg = Config {
            eps: 1e-2,
            ..Config::default()
        };
        let r = reference(&p, &cfg);
        let t = tape_gpu(&p, &cfg);
        let f = fused(&p, &cfg, 40);
        println!(
            "{act:?} sn={sn}: loss ref {:.6} tape {:.6} fused {:.6}; per-sample tape {:.2e} fused {:.2e}; grad tape {:.2e} fused {:.2e}",
            r.loss,
            t.loss,
            f.loss,
            rel(&t.per_sample, &r.per_sample),
            rel(&f.per_sample, &r.per_sample),
            rel(&t.grad, &r.grad),
            rel(&f.grad, &r.grad)
        );
        assert!(rel(&f.grad, &r.grad) < 1e-3);
    }
}
