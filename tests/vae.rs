//! The pieces of the implicit VAE that can be checked against closed forms: the tape's sphere
//! chart form against the host's, and the entropy-gradient estimator of eq. 19 on encoders
//! whose q(z|x) is known — a Gaussian in R^n (with the exact energy and with one fitted by
//! MVL) and a wrapped normal on S¹ (fitted by Riemannian MVL).

use std::sync::OnceLock;

use wmvl::backend::Backend;
use wmvl::gpu::Gpu;
use wmvl::manifold::{sphere_chart_form, Manifold};
use wmvl::model::{Arch, EnergyKind, HostParams, Init, Model};
use wmvl::objective::{Config, Energy, EnergyFn};
use wmvl::ops::Fun;
use wmvl::rng::HostRng;
use wmvl::tape::{Tape, Var};
use wmvl::train::{TrainConfig, Trainer};
use wmvl::vae::entropy_surrogate;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

#[test]
fn sphere_chart_form_on_the_tape_matches_the_host() {
    let g = gpu();
    let mut rng = HostRng::new(5);
    for m in [3, 8] {
        let rows = 64;
        let mut y = Vec::new();
        for _ in 0..rows {
            let v: Vec<f64> = (0..m).map(|_| rng.normal()).collect();
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            y.extend(v.iter().map(|a| a / n));
        }
        let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let tape = Tape::new(g);
        let form = sphere_chart_form(tape.leaf(g.upload(rows, m, &yf).unwrap())).unwrap();
        assert_eq!(form.shape(), (rows, m));
        let got = g.read(&form.value()).unwrap();
        let mut south = 0;
        for r in 0..rows {
            let want = Manifold::Sphere.to_chart(&y[r * m..(r + 1) * m]).unwrap();
            south += (want[m - 1] < 0.0) as usize;
            for c in 0..m {
                let d = (got[r * m + c] as f64 - want[c]).abs();
                assert!(
                    d < 1e-5,
                    "row {r} col {c}: {} vs {}",
                    got[r * m + c],
                    want[c]
                );
            }
        }
        assert!(south > 10 && south < rows - 10, "both hemispheres tested");
    }
}

/// Mean and standard error of each column of per-sample values (rows × cols).
fn mean_se(v: &[f64], rows: usize, cols: usize) -> Vec<(f64, f64)> {
    (0..cols)
        .map(|c| {
            let m = (0..rows).map(|r| v[r * cols + c]).sum::<f64>() / rows as f64;
            let var = (0..rows)
                .map(|r| (v[r * cols + c] - m).powi(2))
                .sum::<f64>()
                / (rows - 1) as f64;
            (m, (var / rows as f64).sqrt())
        })
        .collect()
}

/// Pins a closure energy's tape lifetime (closures do not infer it).
fn pinned<'t, F>(f: F) -> EnergyFn<F>
where
    F: Fn(Var<'t, &'static Gpu>) -> wmvl::error::Result<Var<'t, &'static Gpu>>,
{
    EnergyFn(f)
}

/// The Gaussian encoder z = μ + s∘ε (s a (1, n) parameter), whose ∂s H = 1/s, with the
/// energy `model` (None: the exact one, ½Σ((z − μ)/s)²). Per dimension: the estimator's
/// gradient in s, the mean of its per-sample contributions ∇E∘ε and their standard error.
fn gaussian_entropy_gradient(
    model: Option<&mut Model<&'static Gpu>>,
    mu: &[f32],
    s: &[f32],
    rows: usize,
    seed: u64,
) -> Vec<(f64, f64, f64)> {
    let g = gpu();
    let n = s.len();
    let mut rng = HostRng::new(seed);
    let eps: Vec<f32> = (0..rows * n).map(|_| rng.normal() as f32).collect();
    let tape = Tape::new(g);
    let sv = tape.leaf(g.upload(1, n, s).unwrap());
    let muv = tape.leaf(g.upload(1, n, mu).unwrap());
    let e = tape.leaf(g.upload(rows, n, &eps).unwrap());
    let z = e.mul(sv).unwrap().add(muv).unwrap();
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    let inv = tape.leaf(g.upload(1, n, &inv).unwrap());
    let exact = pinned(|x| {
        let u = x.sub(muv)?.mul(inv)?;
        u.rowdot(u)?.scale(0.5)
    });
    let bound = model.map(|m| m.bind(&tape, false).unwrap());
    let energy: &dyn Energy<'_, &'static Gpu> = match &bound {
        Some(b) => b,
        None => &exact,
    };
    let surrogate = entropy_surrogate(energy, z).unwrap();
    let grad = tape
        .grad(surrogate.mean_all().unwrap(), &[sv], false)
        .unwrap()[0];
    let grad = g.read(&grad.value()).unwrap();
    // The same estimate per sample, for its standard error: ∂s of ⟨∇E, z⟩ is ∇E∘ε.
    let (_, ge) = energy.energy_and_grad(z.detach(), false).unwrap();
    let ge = g.read(&ge.value()).unwrap();
    let per: Vec<f64> = ge.iter().zip(&eps).map(|(a, b)| (*a * *b) as f64).collect();
    mean_se(&per, rows, n)
        .into_iter()
        .zip(grad)
        .map(|((m, se), gr)| (gr as f64, m, se))
        .collect()
}

#[test]
fn entropy_gradient_of_a_gaussian_with_its_exact_energy() {
    // −∇E is the exact score, so the estimator is unbiased for ∂s H = 1/s.
    let mu = [1.0f32, -1.0, 0.5];
    let s = [0.5f32, 1.0, 2.0];
    for (j, (grad, mean, se)) in gaussian_entropy_gradient(None, &mu, &s, 20_000, 1)
        .into_iter()
        .enumerate()
    {
        let want = 1.0 / s[j] as f64;
        assert!(
            (grad - mean).abs() < 1e-3 * want,
            "tape {grad} vs per-sample mean {mean}"
        );
        assert!(
            (grad - want).abs() < 4.0 * se,
            "dim {j}: ∂s H estimated {grad:.4} ± {se:.4}, exact {want:.4}"
        );
    }
}

/// Trains a score-net energy (2 × 64 tanh) by (Riemannian) MVL on `rows` of data in chart
/// form, `dim` = the network's input width.
fn fit_energy(
    m: Manifold,
    dim: usize,
    form: &[f32],
    rows: usize,
    steps: usize,
) -> Model<&'static Gpu> {
    let g = gpu();
    let arch = Arch {
        kind: EnergyKind::ScoreNet,
        dim,
        hidden: vec![64, 64],
        act: Fun::Tanh,
        spectral_norm: false,
    };
    let hp = HostParams::init(&arch, Init::Glorot, 2).unwrap();
    let model = Model::from_host(arch, &hp, |r, c, d| g.upload(r, c, d)).unwrap();
    let x = g.upload(rows, form.len() / rows, form).unwrap();
    let cfg = TrainConfig {
        steps,
        batch: 500,
        lr: 3e-3,
        // Annealed, so that the fitted score is not the last step's noisy one.
        lr_final: Some(3e-4),
        log_every: steps,
        obj: Config {
            eps: 1e-3,
            manifold: m,
            ..Config::default()
        },
        ..Default::default()
    };
    let mut tr = Trainer::new(g, model, x, None, cfg).unwrap();
    tr.run().unwrap();
    tr.model
}

#[test]
fn entropy_gradient_of_a_gaussian_with_an_mvl_energy() {
    let mu = [1.0f32, -1.0];
    let s = [0.5f32, 1.5];
    let mut rng = HostRng::new(7);
    let rows = 10_000;
    let data: Vec<f32> = (0..rows)
        .flat_map(|_| [0, 1].map(|j| mu[j] + s[j] * rng.normal() as f32))
        .collect();
    let mut model = fit_energy(Manifold::Euclidean, 2, &data, rows, 2000);
    for (j, (grad, _, se)) in gaussian_entropy_gradient(Some(&mut model), &mu, &s, 20_000, 3)
        .into_iter()
        .enumerate()
    {
        let want = 1.0 / s[j] as f64;
        eprintln!("dim {j}: ∂s H by the MVL energy {grad:.4} ± {se:.4}, exact {want:.4}");
        assert!(
            (grad - want).abs() < 4.0 * se + 0.05 * want,
            "dim {j}: ∂s H estimated {grad:.4} ± {se:.4}, exact {want:.4}"
        );
    }
}

/// Entropy (w.r.t. arc length) of the wrapped normal WN(a, s²) on S¹, by quadrature in f64.
fn wrapped_normal_entropy(s: f64) -> f64 {
    let k = 20_000;
    let dt = std::f64::consts::TAU / k as f64;
    (0..k)
        .map(|i| {
            let t = -std::f64::consts::PI + (i as f64 + 0.5) * dt;
            let q: f64 = (-4..=4)
                .map(|w| {
                    let u = (t + std::f64::consts::TAU * w as f64) / s;
                    (-0.5 * u * u).exp() / (s * std::f64::consts::TAU.sqrt())
                })
                .sum();
            -q * q.ln() * dt
        })
        .sum()
}

#[test]
fn entropy_gradient_on_the_circle_with_a_riemannian_mvl_energy() {
    // z = (cos θ, sin θ), θ = a + s·ε: the entropy's derivative in s by quadrature, against
    // eq. 19 with the Riemannian score of an energy fitted by Riemannian MVL. The tape sees
    // z(s) linearised at s₀ — exact for the first derivative, which is all eq. 19 uses.
    let (a, s0) = (0.7f64, 0.6f64);
    let h = 1e-4;
    let want = (wrapped_normal_entropy(s0 + h) - wrapped_normal_entropy(s0 - h)) / (2.0 * h);
    let mut rng = HostRng::new(11);
    let rows = 10_000;
    let form: Vec<f32> = (0..rows)
        .flat_map(|_| {
            let t = a + s0 * rng.normal();
            Manifold::Sphere
                .to_chart(&[t.cos(), t.sin()])
                .unwrap()
                .into_iter()
                .map(|v| v as f32)
        })
        .collect();
    let mut model = fit_energy(Manifold::Sphere, 2, &form, rows, 2000);

    let g = gpu();
    let n = 20_000;
    let (mut z0, mut dz) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let e = rng.normal();
        let t = a + s0 * e;
        z0.extend([t.cos() as f32, t.sin() as f32]);
        dz.extend([(-t.sin() * e) as f32, (t.cos() * e) as f32]);
    }
    let tape = Tape::new(g);
    let sv = tape.leaf(g.upload(1, 1, &[s0 as f32]).unwrap());
    let z = tape
        .leaf(g.upload(n, 2, &dz).unwrap())
        .mul(sv.affine(1.0, -s0 as f32).unwrap())
        .unwrap()
        .add(tape.leaf(g.upload(n, 2, &z0).unwrap()))
        .unwrap();
    let bound = model.bind(&tape, false).unwrap();
    let surrogate = entropy_surrogate(&bound, z).unwrap();
    let grad = tape
        .grad(surrogate.mean_all().unwrap(), &[sv], false)
        .unwrap()[0];
    let grad = g.read(&grad.value()).unwrap()[0] as f64;
    let (_, ge) = bound.energy_and_grad(z.detach(), false).unwrap();
    let ge = g.read(&ge.value()).unwrap();
    let per: Vec<f64> = (0..n)
        .map(|i| (ge[2 * i] * dz[2 * i] + ge[2 * i + 1] * dz[2 * i + 1]) as f64)
        .collect();
    let (_, se) = mean_se(&per, n, 1)[0];
    eprintln!("S¹: ∂s H by the Riemannian MVL energy {grad:.4} ± {se:.4}, quadrature {want:.4}");
    assert!(
        (grad - want).abs() < 4.0 * se + 0.05 * want.abs(),
        "∂s H estimated {grad:.4} ± {se:.4}, exact {want:.4}"
    );
}

/// Every parameter of the encoder, decoder and (implicit encoders) energy, in order.
fn all_params(g: &Gpu, v: &wmvl::vae::Vae) -> Vec<f32> {
    let mut p = v.encoder.params();
    p.extend(v.decoder.params());
    if let Some(e) = &v.energy {
        p.extend(e.params());
    }
    p.iter().flat_map(|t| g.read(t).unwrap()).collect()
}

/// A small VAE on 16-pixel binary patterns (two prototypes with flipped pixels).
fn tiny(posterior: wmvl::vae::Posterior, latent: wmvl::vae::Latent) -> wmvl::vae::VaeConfig {
    let mut c = wmvl::vae::VaeConfig::paper(3, latent, posterior);
    c.pixels = 16;
    c.hidden = vec![32];
    c.energy_hidden = vec![32];
    c.batch = 64;
    c.lr = 3e-3;
    c
}

fn patterns(rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = HostRng::new(seed);
    (0..rows)
        .flat_map(|_| {
            let proto = (rng.uniform() < 0.5) as usize;
            (0..16)
                .map(|j| {
                    let on = (j % 2 == proto) as u8 as f64;
                    let flip = rng.uniform() < 0.1;
                    (if flip { 1.0 - on } else { on }) as f32
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_vae_variant_learns_and_resumes_exactly_from_its_checkpoint() {
    use wmvl::vae::{Latent, Posterior, Vae};
    let g = gpu();
    let dir = std::env::temp_dir().join(format!("wmvl-vae-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let held = g.upload(256, 16, &patterns(256, 99)).unwrap();
    for posterior in [Posterior::Explicit, Posterior::Implicit] {
        for latent in [Latent::Euclidean, Latent::Sphere] {
            let cfg = tiny(posterior, latent);
            let mut vae = Vae::new(g, cfg.clone()).unwrap();
            let score = |v: &mut Vae| {
                let s = v.evaluate(&held).unwrap();
                s.reconstruction + s.kl_or_prior
            };
            let before = score(&mut vae);
            let batches: Vec<_> = (0..62)
                .map(|k| g.upload(64, 16, &patterns(64, k)).unwrap())
                .collect();
            for b in &batches[..60] {
                vae.record_step(b).unwrap();
            }
            let after = score(&mut vae);
            assert!(
                after < before - 1.0,
                "{}: held-out loss {before:.2} → {after:.2}",
                cfg.name()
            );
            // Save, go on two steps, and compare with the reloaded copy going on the same way.
            let path = dir.join(format!("{}.safetensors", cfg.name()));
            vae.save(&path, &[]).unwrap();
            let (mut back, _) = Vae::load(g, &path).unwrap();
            assert_eq!(back.steps_done, 60);
            for b in &batches[60..] {
                vae.record_step(b).unwrap();
                back.record_step(b).unwrap();
            }
            let params = |v: &Vae| all_params(g, v);
            let (a, b) = (params(&vae), params(&back));
            assert_eq!(a.len(), b.len());
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                worst < 1e-6,
                "{}: resumed run differs by {worst}",
                cfg.name()
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bernoulli_likelihood_and_priors_match_their_formulas_in_f64() {
    use wmvl::cpu::Cpu;
    use wmvl::vae::{bernoulli_log_lik, log_prior, Latent};
    let mut rng = HostRng::new(21);
    let (rows, p) = (5, 7);
    let x: Vec<f64> = (0..rows * p)
        .map(|_| (rng.uniform() < 0.4) as u8 as f64)
        .collect();
    let l: Vec<f64> = (0..rows * p).map(|_| 4.0 * rng.normal()).collect();
    let tape = Tape::new(Cpu);
    let xv = tape.leaf(Cpu.upload_host(rows, p, &x).unwrap());
    let lv = tape.leaf(Cpu.upload_host(rows, p, &l).unwrap());
    let got = Cpu
        .to_host(&bernoulli_log_lik(xv, lv).unwrap().value())
        .unwrap();
    for r in 0..rows {
        // log σ(l) for x = 1, log(1 − σ(l)) for x = 0.
        let want: f64 = (0..p)
            .map(|j| {
                let (xi, li) = (x[r * p + j], l[r * p + j]);
                let s = 1.0 / (1.0 + (-li).exp());
                xi * s.ln() + (1.0 - xi) * (1.0 - s).ln()
            })
            .sum();
        assert!(
            (got[r] - want).abs() < 1e-9 * want.abs().max(1.0),
            "{} vs {want}",
            got[r]
        );
    }
    let z: Vec<f64> = (0..rows * 3).map(|_| rng.normal()).collect();
    let zv = tape.leaf(Cpu.upload_host(rows, 3, &z).unwrap());
    let lp = Cpu
        .to_host(&log_prior(Latent::Euclidean, zv).unwrap().value())
        .unwrap();
    for r in 0..rows {
        let sq: f64 = z[r * 3..r * 3 + 3].iter().map(|v| v * v).sum();
        let want = -0.5 * sq - 1.5 * std::f64::consts::TAU.ln();
        assert!((lp[r] - want).abs() < 1e-6, "{} vs {want}", lp[r]);
    }
    // Uniform on S²: 1/(4π).
    let ls = Cpu
        .to_host(&log_prior(Latent::Sphere, zv).unwrap().value())
        .unwrap();
    let want = -(4.0 * std::f64::consts::PI).ln();
    assert!(
        ls.iter().all(|v| (v - want).abs() < 1e-6),
        "{ls:?} vs {want}"
    );
}

#[test]
fn recorded_vae_steps_learn_replay_in_any_chunks_and_resume() {
    use wmvl::mnist::DeviceImages;
    use wmvl::vae::{Latent, Posterior, Vae};
    let g = gpu();
    let cfg = tiny(Posterior::Explicit, Latent::Euclidean);
    let pool = DeviceImages {
        images: g.upload(512, 16, &patterns(512, 5)).unwrap(),
        rows: 512,
        pixels: 16,
    };
    let held = g.upload(256, 16, &patterns(256, 99)).unwrap();
    let params = |v: &Vae| all_params(g, v);
    // Trains `chunks` steps by replay from a fresh model; returns it.
    let train = |chunks: &[u32]| {
        let mut vae = Vae::new(g, cfg.clone()).unwrap();
        let rec = vae
            .record_steps(|g| pool.batch(g, cfg.batch, 7, 0, false))
            .unwrap();
        assert_eq!(
            (vae.steps_done, params(&vae)),
            (0, params(&Vae::new(g, cfg.clone()).unwrap())),
            "recording runs nothing"
        );
        for &k in chunks {
            vae.replay(&rec, k).unwrap();
        }
        vae
    };
    let mut one = train(&[60]);
    let many = train(&[1, 9, 20, 30]);
    assert_eq!(one.steps_done, 60);
    assert_eq!(
        params(&one),
        params(&many),
        "the same steps whatever the chunks"
    );
    let before = {
        let mut fresh = Vae::new(g, cfg.clone()).unwrap();
        let s = fresh.evaluate(&held).unwrap();
        s.reconstruction + s.kl_or_prior
    };
    let s = one.evaluate(&held).unwrap();
    assert!(
        s.reconstruction + s.kl_or_prior < before - 1.0,
        "held-out loss {before:.2} → {:.2}",
        s.reconstruction + s.kl_or_prior
    );
    // Resumed from a checkpoint at step 60 and recorded again: the same steps 61.. as the
    // run that kept its recording.
    let dir = std::env::temp_dir().join(format!("wmvl-vae-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cell.safetensors");
    many.save(&path, &[]).unwrap();
    let (mut back, _) = Vae::load(g, &path).unwrap();
    let rec = back
        .record_steps(|g| pool.batch(g, cfg.batch, 7, 0, false))
        .unwrap();
    back.replay(&rec, 5).unwrap();
    let rec_one = one
        .record_steps(|g| pool.batch(g, cfg.batch, 7, 0, false))
        .unwrap();
    one.replay(&rec_one, 5).unwrap();
    assert_eq!(params(&back), params(&one), "resumed replay");
    std::fs::remove_dir_all(&dir).ok();
    // A step built outside the recording keeps step and optimiser t together: replaying
    // goes on from there. Cells that cannot be recorded are refused.
    one.record_step(&held).unwrap();
    one.replay(&rec_one, 2).unwrap();
    assert_eq!(one.steps_done, 68);
    for (posterior, latent) in [
        (Posterior::Explicit, Latent::Sphere),
        (Posterior::Implicit, Latent::Euclidean),
    ] {
        let mut v = Vae::new(g, tiny(posterior, latent)).unwrap();
        match v.record_steps(|g| pool.batch(g, 64, 7, 0, false)) {
            // The vMF sampler's read-back, the implicit cell's fused energy step.
            Err(wmvl::Error::Invalid(m)) => {
                assert!(
                    m.contains("needs the host") || m.contains("fused MVL step"),
                    "{m}"
                );
                assert_eq!(v.steps_done, 0);
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("recorded a {posterior:?} {latent:?} step"),
        }
    }
}
