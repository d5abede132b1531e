//! Optimisers (SPEC §7) on the GPU against the f64 reference `Optimizer::reference_step`, step
//! by step, plus the first-step closed forms that pin the conventions (TF-style RMSProp starts
//! its accumulator at 1, PyTorch-style at 0, Adam's bias correction makes the first step
//! ≈ lr·sign(g)) and input validation.
//!
//! Tolerances. The GPU works in f32; the reference gets the same f32 inputs (initial
//! parameters and each step's gradient, rounded to f32) and runs in f64. After each of the 20
//! steps we compare
//! - the parameters θ_t and the optimiser state (s1, s2), entry by entry, to 1e-5 relative.
//!   "Relative" is to the entry's magnitude scale: the same reference run on |g| instead of
//!   g (same accumulators, all terms of one sign). Signed sums (θ, momentum, Adam's first
//!   moment) can cancel to almost nothing while each term was rounded to f32 at its own size;
//!   the |g| run is the sum of those sizes. f32 rounds each operation to ≤ 6e-8 relative;
//!   over 20 steps of these contractions the bound is ~2e-6, and in practice ~1e-7;
//! - θ starts at 0, so θ_t is the accumulated update itself: with θ₀ ≠ 0, f32 rounding of θ
//!   (ulp(|θ₀|) per step) would swamp updates ≪ |θ₀| and say little about the update rule.

use std::sync::OnceLock;

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

use wmvl::gpu::{Gpu, Tensor};
use wmvl::optim::{Optimizer, Rule};
use wmvl::{Error, Result};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// Approximately N(0, 1) entries times a per-entry scale spanning 1e-3 … 1e2 (so that ε's
/// placement and the squared-gradient accumulators are exercised at all magnitudes), in f32.
fn gradient(r: &mut Pcg64, n: usize) -> Vec<f32> {
    let mut u = || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (0..n)
        .map(|_| {
            let z = (0..4).map(|_| u()).sum::<f64>() - 2.0;
            let scale = 10f64.powf(-3.0 + 5.0 * u());
            (z * 1.7 * scale) as f32
        })
        .collect()
}

fn read(t: &Tensor) -> Vec<f64> {
    read_on(gpu(), t)
}

fn read_on(gpu: &Gpu, t: &Tensor) -> Vec<f64> {
    gpu.read(t)
        .expect("read")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// max over entries of |got − want| / max(scale, 1e-30), where `scale` is the same quantity
/// accumulated from |g| instead of g (see the module docs).
fn rel_err(got: &[f64], want: &[f64], scale: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((g, w), s)| (g - w).abs() / s.abs().max(1e-30))
        .fold(0.0, f64::max)
}

/// Run `steps` GPU steps of `rule` on three parameter tensors of awkward shapes with fresh
/// random gradients, checking parameters and state against the f64 reference after each.
fn check_rule(rule: Rule, lr: f32, steps: u32, seed: u64) -> Result<f64> {
    check_rule_on(gpu(), &[(7, 5), (1, 300), (33, 1)], rule, lr, steps, seed)
}

/// `check_rule` on a given device and parameter shapes.
fn check_rule_on(
    gpu: &Gpu,
    shapes: &[(usize, usize)],
    rule: Rule,
    lr: f32,
    steps: u32,
    seed: u64,
) -> Result<f64> {
    let read = |t: &Tensor| read_on(gpu, t);
    let mut r = Pcg64::seed_from_u64(seed);
    // θ₀ = 0: no rule's update depends on θ, and starting at 0 makes θ_t the displacement
    // itself, so f32 rounds it relative to its own size (not to an offset |θ₀| ≫ lr).
    let init: Vec<Vec<f32>> = shapes.iter().map(|&(a, b)| vec![0.0; a * b]).collect();
    let params: Vec<Tensor> = shapes
        .iter()
        .zip(&init)
        .map(|(&(a, b), v)| gpu.upload(a, b, v))
        .collect::<Result<_>>()?;
    let mut opt = Optimizer::new(gpu, rule, lr, &params)?;
    let (s1_0, s2_0) = Optimizer::initial_state(rule);
    let mut p_ref: Vec<Vec<f64>> = init
        .iter()
        .map(|v| v.iter().map(|&x| x as f64).collect())
        .collect();
    let mut s1: Vec<Vec<f64>> = init.iter().map(|v| vec![s1_0; v.len()]).collect();
    let mut s2: Vec<Vec<f64>> = init.iter().map(|v| vec![s2_0; v.len()]).collect();
    // The shadow run on |g|: per-entry magnitudes of θ, s1, s2 (the rounding scale).
    let (mut pa, mut s1a, mut s2a) = (p_ref.clone(), s1.clone(), s2.clone());
    // The GPU state starts where the reference says.
    for (k, (a, b)) in opt.state().iter().enumerate() {
        assert!(read(a).iter().all(|&v| v == s1[k][0]), "{rule:?}: s1 init");
        assert!(read(b).iter().all(|&v| v == s2[k][0]), "{rule:?}: s2 init");
    }
    let mut worst = 0.0f64;
    for t in 1..=steps {
        let grads_host: Vec<Vec<f32>> = init.iter().map(|v| gradient(&mut r, v.len())).collect();
        let grads: Vec<Tensor> = shapes
            .iter()
            .zip(&grads_host)
            .map(|(&(a, b), g)| gpu.upload(a, b, g))
            .collect::<Result<_>>()?;
        opt.step(gpu, &params, &grads)?;
        assert_eq!(opt.t, t);
        for k in 0..params.len() {
            let g: Vec<f64> = grads_host[k].iter().map(|&x| x as f64).collect();
            Optimizer::reference_step(
                rule,
                lr as f64,
                t,
                &mut p_ref[k],
                &g,
                &mut s1[k],
                &mut s2[k],
            );
            let ga: Vec<f64> = g.iter().map(|v| v.abs()).collect();
            Optimizer::reference_step(
                rule,
                lr as f64,
                t,
                &mut pa[k],
                &ga,
                &mut s1a[k],
                &mut s2a[k],
            );
            let (st1, st2) = &opt.state()[k];
            let errs = [
                rel_err(&read(&params[k]), &p_ref[k], &pa[k]),
                rel_err(&read(st1), &s1[k], &s1a[k]),
                rel_err(&read(st2), &s2[k], &s2a[k]),
            ];
            for (what, e) in ["θ", "s1", "s2"].iter().zip(errs) {
                assert!(
                    e < 1e-5,
                    "{rule:?}: step {t}, tensor {k} {:?}: {what} relative error {e:e}",
                    shapes[k]
                );
                worst = worst.max(e);
            }
        }
    }
    Ok(worst)
}

#[test]
fn every_rule_matches_the_f64_reference_step_by_step() -> Result<()> {
    let rules = [
        ("rmsprop-tf", Rule::RMSPROP_TF),
        ("rmsprop-torch", Rule::RMSPROP_TORCH),
        ("adam", Rule::ADAM),
        (
            "rmsprop-tf momentum 0.9",
            Rule::RmsPropTf {
                decay: 0.9,
                momentum: 0.9,
                eps: 1e-10,
            },
        ),
        (
            "rmsprop-torch momentum 0.5",
            Rule::RmsPropTorch {
                alpha: 0.99,
                momentum: 0.5,
                eps: 1e-8,
            },
        ),
    ];
    for (i, (name, rule)) in rules.iter().enumerate() {
        let worst = check_rule(*rule, 0.05, 20, 1000 + i as u64)?;
        println!("{name:28} worst relative error over 20 steps: {worst:.2e}");
    }
    Ok(())
}

/// One GPU step from θ = 0 with gradient g; returns the step θ₀ − θ₁.
fn first_step(rule: Rule, lr: f32, g: &[f32]) -> Result<Vec<f64>> {
    let gpu = gpu();
    let p = gpu.upload(1, g.len(), &vec![0.0; g.len()])?;
    let grad = gpu.upload(1, g.len(), g)?;
    let mut opt = Optimizer::new(gpu, rule, lr, std::slice::from_ref(&p))?;
    opt.step(gpu, std::slice::from_ref(&p), &[grad])?;
    Ok(read(&p).into_iter().map(|v| -v).collect())
}

/// Gradients spanning many magnitudes, both signs.
const G: [f32; 8] = [1e-3, -0.02, 0.3, -1.0, 2.5, -10.0, 100.0, -1e3];

#[test]
fn rmsprop_tf_accumulator_starts_at_one() -> Result<()> {
    let lr = 0.01f32;
    let step = first_step(Rule::RMSPROP_TF, lr, &G)?;
    for (&g, &s) in G.iter().zip(&step) {
        let g = g as f64;
        let want = lr as f64 * g / (0.9 + 0.1 * g * g + 1e-10).sqrt();
        assert!(
            (s - want).abs() <= 1e-6 * want.abs(),
            "g = {g}: step {s}, want lr·g/√(0.9 + 0.1g² + 1e-10) = {want}"
        );
    }
    // A zero-initialised accumulator would give lr·g/√(0.1g²) = √10·lr·sign(g) instead: the
    // small-|g| entries tell the two apart by orders of magnitude.
    assert!(step[0] < 1e-4, "TF-style first step for g = 1e-3 is ~lr·g");
    Ok(())
}

#[test]
fn rmsprop_torch_accumulator_starts_at_zero() -> Result<()> {
    let lr = 0.01f32;
    let step = first_step(Rule::RMSPROP_TORCH, lr, &G)?;
    for (&g, &s) in G.iter().zip(&step) {
        let g = g as f64;
        // v = 0.01 g², step = lr·g/(√v + 1e-8) = lr·g/(0.1|g| + 1e-8) ≈ 10·lr·sign(g).
        let want = lr as f64 * g / ((0.01 * g * g).sqrt() + 1e-8);
        assert!(
            (s - want).abs() <= 1e-6 * want.abs(),
            "g = {g}: step {s}, want {want}"
        );
        // ≈ 10·lr·sign(g), up to the ε: relative 1e-8/(0.1|g|), plus f32 rounding.
        let tol = 10.0 * lr as f64 * (1e-7 / g.abs() + 1e-6);
        assert!(
            (s - 10.0 * lr as f64 * g.signum()).abs() < tol,
            "g = {g}: step {s}"
        );
    }
    Ok(())
}

#[test]
fn adam_first_step_is_lr_times_sign() -> Result<()> {
    let lr = 0.01f32;
    let step = first_step(Rule::ADAM, lr, &G)?;
    for (&g, &s) in G.iter().zip(&step) {
        let g = g as f64;
        // m̂ = g, v̂ = g² after bias correction: step = lr·g/(|g| + 1e-8).
        let want = lr as f64 * g / (g.abs() + 1e-8);
        assert!(
            (s - want).abs() <= 1e-6 * want.abs(),
            "g = {g}: step {s}, want {want}"
        );
        // ≈ lr·sign(g), up to the ε: relative 1e-8/|g|, plus f32 rounding.
        let tol = lr as f64 * (1.01e-8 / g.abs() + 1e-6);
        assert!(
            (s - lr as f64 * g.signum()).abs() < tol,
            "g = {g}: step {s}"
        );
    }
    Ok(())
}

#[test]
fn bad_input_is_an_error() -> Result<()> {
    let gpu = gpu();
    let p = vec![gpu.upload(2, 3, &[0.0; 6])?, gpu.upload(1, 4, &[0.0; 4])?];
    for lr in [0.0, -1e-3, f32::NAN, f32::INFINITY] {
        assert!(
            matches!(
                Optimizer::new(gpu, Rule::ADAM, lr, &p),
                Err(Error::Invalid(_))
            ),
            "lr = {lr} accepted"
        );
    }
    let mut opt = Optimizer::new(gpu, Rule::RMSPROP_TF, 1e-3, &p)?;
    let g = vec![gpu.upload(2, 3, &[1.0; 6])?, gpu.upload(1, 4, &[1.0; 4])?];
    // Fewer gradients than parameters, fewer parameters than the optimiser holds.
    assert!(opt.step(gpu, &p, &g[..1]).is_err());
    assert!(opt.step(gpu, &p[..1], &g[..1]).is_err());
    // A gradient whose shape differs from its parameter's.
    let bad = vec![gpu.upload(3, 2, &[1.0; 6])?, g[1].clone()];
    assert!(opt.step(gpu, &p, &bad).is_err());
    // ... also when only a later tensor is wrong: the earlier ones must not have moved.
    let bad = vec![g[0].clone(), gpu.upload(4, 1, &[1.0; 4])?];
    assert!(matches!(opt.step(gpu, &p, &bad), Err(Error::Shape(_))));
    // Rejected steps change nothing (Adam's bias correction depends on t).
    assert_eq!(opt.t, 0, "a rejected step advanced the step counter");
    assert!(
        read(&p[0]).iter().all(|&x| x == 0.0),
        "a rejected step moved a parameter"
    );
    // The valid step still works, and the parameters moved by −lr·g/√(0.9 + 0.1 + 1e-10).
    opt.step(gpu, &p, &g)?;
    let v = read(&p[1]);
    let want = -1e-3 / (1.0f64 + 1e-10).sqrt();
    assert!(v.iter().all(|&x| (x - want).abs() < 1e-9), "{v:?}");

    assert!(matches!(Rule::from_name("sgd"), Err(Error::Invalid(_))));
    assert!(Rule::from_name("").is_err());
    assert_eq!(Rule::from_name("rmsprop")?, Rule::RMSPROP_TF);
    assert_eq!(Rule::from_name("rmsprop-tf")?, Rule::RMSPROP_TF);
    assert_eq!(Rule::from_name("rmsprop-torch")?, Rule::RMSPROP_TORCH);
    assert_eq!(Rule::from_name("adam")?, Rule::ADAM);
    Ok(())
}

/// On the GPU kernel family one dispatch updates every tensor (`src/gpu/optim_all.rs`;
/// lavapipe runs it here through `Gpu::with_barrier_free(false)`), with the values of the f64
/// reference for every rule, on tensors of whole vec4s and on awkward ones.
#[test]
fn one_dispatch_updates_every_tensor_on_the_gpu_family() -> Result<()> {
    let gpu = Gpu::with_barrier_free(false)?;
    let rules = [
        Rule::RMSPROP_TF,
        Rule::RMSPROP_TORCH,
        Rule::ADAM,
        Rule::RmsPropTf {
            decay: 0.9,
            momentum: 0.9,
            eps: 1e-10,
        },
    ];
    let vec4: &[(usize, usize)] = &[(4, 8), (1, 12), (16, 16)];
    let awkward: &[(usize, usize)] = &[(7, 5), (1, 300), (33, 1)];
    for (i, rule) in rules.iter().enumerate() {
        for shapes in [vec4, awkward] {
            check_rule_on(&gpu, shapes, *rule, 0.05, 5, 2000 + i as u64)?;
        }
    }
    // One step of four tensors: one dispatch.
    let params: Vec<Tensor> = [(4, 8), (1, 12), (16, 16), (7, 5)]
        .iter()
        .map(|&(a, b)| gpu.upload(a, b, &vec![0.5; a * b]))
        .collect::<Result<_>>()?;
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| gpu.upload(p.shape().0, p.shape().1, &vec![0.25; p.len()]))
        .collect::<Result<_>>()?;
    let mut opt = Optimizer::new(&gpu, Rule::ADAM, 0.01, &params)?;
    gpu.sync()?;
    let before = gpu.dispatches_submitted();
    opt.step(&gpu, &params, &grads)?;
    gpu.sync()?;
    assert_eq!(gpu.dispatches_submitted() - before, 1);
    Ok(())
}
