//! MVL with other samplers (SPEC §6): SPOS with α = 0 is Langevin MVL; the SVGD objective is
//! the kernelized Stein discrepancy (against a direct computation of the Stein kernel's
//! V-statistic, within standard errors); the birth–death objective is Langevin MVL plus a
//! Fisher–Rao term that matches Cov(E, log p) + ½Var(E) on Gaussian data. All in f64 on the
//! CPU reference; a short GPU training run checks the f32 path end to end.

use std::sync::OnceLock;

use wmvl::backend::Backend;
use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, HostParams, Init, Model};
use wmvl::objective::{estimate, Config, EnergyFn, Objective};
use wmvl::rng::HostRng;
use wmvl::tape::{Tape, Var};
use wmvl::train::{TrainConfig, Trainer};
use wmvl::Result;

/// E(x) = ½a‖x‖²: the Gaussian N(0, I/a).
fn quadratic<'t, B: Backend>(a: f32) -> EnergyFn<impl Fn(Var<'t, B>) -> Result<Var<'t, B>>> {
    EnergyFn(move |x: Var<'t, B>| x.rowdot(x)?.scale(0.5 * a))
}

fn normals(rows: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut rng = HostRng::new(seed);
    (0..rows * d).map(|_| rng.normal()).collect()
}

/// Per-sample values of `objective` on the batch x with noise z, energy ½a‖x‖².
fn per_sample(
    objective: Objective,
    cfg: &Config,
    x: &[f64],
    z: &[f64],
    d: usize,
    a: f32,
) -> Vec<f64> {
    let rows = x.len() / d;
    let tape = Tape::new(Cpu);
    let x0 = tape.leaf(Mat::new(rows, d, x.to_vec()).unwrap());
    let zt = tape.leaf(Mat::new(rows, d, z.to_vec()).unwrap());
    let e = quadratic(a);
    estimate(objective, cfg, &e, x0, Some(zt))
        .unwrap()
        .per_sample
        .value()
        .data
}

#[test]
fn spos_with_alpha_zero_is_langevin_mvl() {
    let (rows, d) = (300, 3);
    let (x, z) = (normals(rows, d, 1), normals(rows, d, 2));
    let cfg = Config {
        alpha: 0.0,
        ..Config::default()
    };
    let mvl = per_sample(Objective::Mvl, &cfg, &x, &z, d, 1.7);
    let spos = per_sample(Objective::Spos, &cfg, &x, &z, d, 1.7);
    assert_eq!(mvl, spos);
    // α > 0 moves the particles along φ too: a different number.
    let half = per_sample(Objective::Spos, &Config::default(), &x, &z, d, 1.7);
    assert!(half.iter().zip(&mvl).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn the_svgd_objective_is_the_kernelized_stein_discrepancy() {
    // Data N(0, I₂) (score s_p = −x), model E = ½a‖x‖² (score s_q = −a·x), RBF kernel with
    // h = 1. In expectation 2·loss = KSD²(p, q) − E[s_p(x)·K(x, x′)·s_p(x′)] (paper B.2).
    let (b, d, a, h) = (1500, 2, 2.0f64, 1.0f64);
    let x = normals(b, d, 3);
    let z = normals(b, d, 4);
    let cfg = Config {
        eps: 1e-7,
        kernel_bandwidth: Some(h as f32),
        ..Config::default()
    };
    let loss: f64 = per_sample(Objective::Svgd, &cfg, &x, &z, d, a as f32)
        .iter()
        .sum::<f64>()
        / b as f64;
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(p, q)| p * q).sum::<f64>();
    let (mut mvl_v, mut ksd_v, mut w_rows) = (0.0, 0.0, vec![0.0; b]);
    for (i, w_row) in w_rows.iter_mut().enumerate() {
        for j in 0..b {
            let (xi, xj) = (row(i), row(j));
            let diff: Vec<f64> = xi.iter().zip(xj).map(|(p, q)| p - q).collect();
            let r2 = dot(&diff, &diff);
            let k = (-r2 / (2.0 * h)).exp();
            // The estimator's kernel: −∇E(xᵢ)·[K(−½∇E(xⱼ)) + ∇_{xⱼ}K(xⱼ, xᵢ)], ∇E = a·x.
            let m = 0.5 * k * a * a * dot(xi, xj) - k * a * dot(xi, &diff) / h;
            mvl_v += m;
            // Stein kernel of q: s_q·s_q′K + s_q·∇_{x′}K + ∇_xK·s_q′ + tr ∇_x∇_{x′}K.
            let u = k * a * a * dot(xi, xj) - a * k * dot(xi, &diff) / h
                + a * k * dot(&diff, xj) / h
                + k * (d as f64 / h - r2 / (h * h));
            let spks = k * dot(xi, xj);
            ksd_v += u / (b * b) as f64;
            *w_row += (2.0 * m + spks - u) / b as f64;
        }
    }
    mvl_v /= (b * b) as f64;
    // The implementation's matrix algebra against the pairwise sum (ε₀ = 1e-7: O(ε) apart).
    assert!(
        (loss - mvl_v).abs() < 1e-5 * mvl_v.abs().max(1.0),
        "{loss} vs {mvl_v}"
    );
    // 2·loss + V[s_p K s_p] − V[u_q] has mean 0 (Stein's identity); SE of a degree-2
    // V-statistic from its row means: 2·sd/√B.
    let mean = w_rows.iter().sum::<f64>() / b as f64;
    let sd = (w_rows.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (b - 1) as f64).sqrt();
    let se = 2.0 * sd / (b as f64).sqrt();
    assert!(
        mean.abs() < 4.0 * se,
        "2·loss + E[s_p K s_p] − KSD² = {mean} ± {se}"
    );
    // The KSD itself is far from 0 here (q ≠ p), so the check has something to miss.
    assert!(ksd_v > 10.0 * se, "KSD² = {ksd_v}, SE {se}");
}

#[test]
fn birth_death_is_langevin_mvl_plus_the_fisher_rao_velocity() {
    // Data N(0, I₂), model ½a‖x‖²: the extra term's mean must match Cov(E, log p_σ) + ½Var(E)
    // with p_σ = N(0, (1 + σ²)I), the expectation of the kernel estimate of bandwidth σ.
    let (b, d, a, sigma) = (3000, 2, 3.0f64, 0.3f64);
    let x = normals(b, d, 5);
    let z = normals(b, d, 6);
    let cfg = Config {
        kde_bandwidth: Some(sigma as f32),
        ..Config::default()
    };
    let mvl = per_sample(Objective::Mvl, &cfg, &x, &z, d, a as f32);
    let bd = per_sample(Objective::BirthDeath, &cfg, &x, &z, d, a as f32);
    let extra: Vec<f64> = bd.iter().zip(&mvl).map(|(p, q)| p - q).collect();
    // Direct: per-sample (Eᵢ − Ē)(log p_σ,ᵢ − mean) + ½(Eᵢ − Ē)² with the exact p_σ.
    let e: Vec<f64> = x
        .chunks(d)
        .map(|r| 0.5 * a * (r[0] * r[0] + r[1] * r[1]))
        .collect();
    let lp: Vec<f64> = x
        .chunks(d)
        .map(|r| -(r[0] * r[0] + r[1] * r[1]) / (2.0 * (1.0 + sigma * sigma)))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (eb, lb) = (mean(&e), mean(&lp));
    let direct: Vec<f64> = e
        .iter()
        .zip(&lp)
        .map(|(ei, li)| (ei - eb) * (li - lb) + 0.5 * (ei - eb).powi(2))
        .collect();
    let diff: Vec<f64> = extra.iter().zip(&direct).map(|(p, q)| p - q).collect();
    let dm = mean(&diff);
    let se =
        (diff.iter().map(|v| (v - dm).powi(2)).sum::<f64>() / (b - 1) as f64 / b as f64).sqrt();
    assert!(
        dm.abs() < 4.0 * se.max(1e-12),
        "extra {} vs direct {}: {dm} ± {se}",
        mean(&extra),
        mean(&direct)
    );
    assert!(
        mean(&direct).abs() > 10.0 * se,
        "the Fisher–Rao term is not negligible here: {} vs SE {se}",
        mean(&direct)
    );
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

#[test]
fn particle_objectives_train_on_the_gpu() {
    // The f32 path end to end, the median bandwidth and Scott's rule included.
    let g = gpu();
    let arch = Arch {
        hidden: vec![12, 12],
        ..Arch::paper(2)
    };
    let m = wmvl::data::Toy::Banana.sample_matrix(256, 1);
    for objective in [Objective::Spos, Objective::Svgd, Objective::BirthDeath] {
        let hp = HostParams::init(&arch, Init::Glorot, 2).unwrap();
        let model = Model::from_host(arch.clone(), &hp, |r, c, d| g.upload(r, c, d)).unwrap();
        let x = g.upload(m.rows, m.cols, &m.data).unwrap();
        let cfg = TrainConfig {
            objective,
            steps: 6,
            batch: 64,
            log_every: 3,
            ..Default::default()
        };
        let mut tr = Trainer::new(g, model, x, None, cfg).unwrap();
        let s = tr.run().unwrap_or_else(|e| panic!("{objective:?}: {e}"));
        assert!(
            s.history.iter().all(|p| p.loss.is_finite()),
            "{objective:?}: {:?}",
            s.history
        );
    }
}
