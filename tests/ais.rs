//! Annealed importance sampling against exact log marginals: a linear-Gaussian model in R²
//! (HMC transitions), p(x) = N(b, WWᵀ + σ²I); the "vMF likelihood" κμᵀz under the uniform
//! prior on S² and S⁷ (MALA transitions), p(x) = Γ(m/2)(2/κ)^(m/2−1) I_(m/2−1)(κ). The long
//! runs use the f64 CPU reference; short GPU runs must follow the CPU chains row by row.

use std::sync::OnceLock;
use std::time::Instant;

use wmvl::ais::{
    ais, log_marginal, sigmoid_schedule, AisConfig, AisOutput, LatentPrior, LogLikelihood,
};
use wmvl::backend::{Backend, RandomFill};
use wmvl::cpu::Cpu;
use wmvl::directional::log_bessel_i;
use wmvl::gpu::Gpu;
use wmvl::rng::HostRng;
use wmvl::tape::Var;
use wmvl::{Error, Result};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// Mean and standard error of the mean.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

// ----------------------------------------------------------------------------------------
// Linear-Gaussian model
// ----------------------------------------------------------------------------------------

const M: usize = 2; // latent dimension
const D: usize = 3; // data dimension
const SIGMA: f64 = 0.5;
const N_DATA: usize = 20;

/// W (D × M), b (D) and N_DATA points drawn from the model.
struct LinGaussData {
    w: Vec<f64>,
    b: Vec<f64>,
    x: Vec<Vec<f64>>,
}

fn lin_gauss_data() -> LinGaussData {
    let mut rng = HostRng::new(11);
    let w: Vec<f64> = (0..D * M).map(|_| rng.normal()).collect();
    let b: Vec<f64> = (0..D).map(|_| rng.normal()).collect();
    let x = (0..N_DATA)
        .map(|_| {
            let z: Vec<f64> = (0..M).map(|_| rng.normal()).collect();
            (0..D)
                .map(|i| {
                    let wz: f64 = (0..M).map(|j| w[i * M + j] * z[j]).sum();
                    wz + b[i] + SIGMA * rng.normal()
                })
                .collect()
        })
        .collect();
    LinGaussData { w, b, x }
}

/// log N(x; b, WWᵀ + σ²I) by Cholesky.
fn exact_lin_gauss(data: &LinGaussData, x: &[f64]) -> f64 {
    let w = &data.w;
    let mut c = [[0.0; D]; D];
    for i in 0..D {
        for k in 0..D {
            c[i][k] = (0..M).map(|j| w[i * M + j] * w[k * M + j]).sum::<f64>();
        }
        c[i][i] += SIGMA * SIGMA;
    }
    let mut l = [[0.0; D]; D];
    for i in 0..D {
        for k in 0..=i {
            let s: f64 = c[i][k] - (0..k).map(|j| l[i][j] * l[k][j]).sum::<f64>();
            l[i][k] = if i == k { s.sqrt() } else { s / l[k][k] };
        }
    }
    // Solve L y = x − b: then (x − b)ᵀC⁻¹(x − b) = ‖y‖², log det C = 2 Σ log L_ii.
    let mut y = [0.0; D];
    for i in 0..D {
        y[i] = (x[i] - data.b[i] - (0..i).map(|j| l[i][j] * y[j]).sum::<f64>()) / l[i][i];
    }
    let quad: f64 = y.iter().map(|v| v * v).sum();
    let log_det: f64 = (0..D).map(|i| 2.0 * l[i][i].ln()).sum();
    -0.5 * (quad + log_det + D as f64 * (2.0 * std::f64::consts::PI).ln())
}

/// log p(x_r|z_r) = −‖x_r − Wz_r − b‖²/(2σ²) − (D/2) log(2πσ²), x tiled over the chains.
struct LinGauss<B: Backend> {
    wt: B::Tensor,
    b: B::Tensor,
    x: B::Tensor,
}

impl<B: Backend> LinGauss<B> {
    fn new(backend: B, data: &LinGaussData, chains: usize) -> LinGauss<B> {
        let wt: Vec<f64> = (0..M)
            .flat_map(|j| (0..D).map(move |i| data.w[i * M + j]))
            .collect();
        let x: Vec<f64> = (0..chains).flat_map(|_| data.x.concat()).collect();
        LinGauss {
            wt: backend.upload_host(M, D, &wt).unwrap(),
            b: backend.upload_host(1, D, &data.b).unwrap(),
            x: backend.upload_host(chains * N_DATA, D, &x).unwrap(),
        }
    }
}

impl<B: Backend> LogLikelihood<B> for LinGauss<B> {
    fn log_lik<'t>(&self, z: Var<'t, B>) -> Result<Var<'t, B>> {
        let tape = z.tape();
        let mean = z
            .matmul(tape.leaf(self.wt.clone()))?
            .add(tape.leaf(self.b.clone()))?;
        let r = tape.leaf(self.x.clone()).sub(mean)?;
        let c = -0.5 * D as f64 * (2.0 * std::f64::consts::PI * SIGMA * SIGMA).ln();
        r.rowdot(r)?
            .scale((-0.5 / (SIGMA * SIGMA)) as f32)?
            .affine(1.0, c as f32)
    }
}

fn lin_gauss_run<B: RandomFill + Copy>(
    backend: B,
    data: &LinGaussData,
    chains: usize,
    cfg: &AisConfig,
) -> AisOutput {
    let model = LinGauss::new(backend, data, chains);
    ais(
        backend,
        &model,
        chains * N_DATA,
        M,
        LatentPrior::StandardNormal,
        cfg,
        None,
    )
    .unwrap()
}

/// Per-point errors log p̂(x_i) − log p(x_i).
fn errors(out: &AisOutput, exact: &[f64], chains: usize) -> Vec<f64> {
    let est = log_marginal(&out.log_w, N_DATA, chains).unwrap();
    est.iter().zip(exact).map(|(e, x)| e - x).collect()
}

/// Mean and SE over rows of log w − log p(x): the gap of AIS as a stochastic lower bound
/// (E log w ≤ log E w = log p(x)), which shrinks as the number of steps grows.
fn gap(out: &AisOutput, exact: &[f64]) -> (f64, f64) {
    let n = exact.len();
    let d: Vec<f64> = out
        .log_w
        .iter()
        .enumerate()
        .map(|(r, w)| w - exact[r % n])
        .collect();
    mean_se(&d)
}

#[test]
fn linear_gaussian_matches_the_exact_marginal_and_improves_with_more_steps() {
    let t0 = Instant::now();
    let data = lin_gauss_data();
    let exact: Vec<f64> = data.x.iter().map(|x| exact_lin_gauss(&data, x)).collect();
    let chains = 8;
    let mut results = vec![];
    for steps in [10, 1000] {
        let cfg = AisConfig {
            steps,
            seed: 3,
            ..AisConfig::default()
        };
        let out = lin_gauss_run(Cpu, &data, chains, &cfg);
        let (m, se) = mean_se(&errors(&out, &exact, chains));
        let (g, gse) = gap(&out, &exact);
        println!(
            "T = {steps}: log p̂ − log p {m:+.4} ± {se:.4}, log w − log p {g:+.4} ± {gse:.4}, \
             accept {:.3}, final step {:.3} (mean log p(x) {:.3})",
            out.mean_accept,
            out.step_size,
            exact.iter().sum::<f64>() / N_DATA as f64
        );
        results.push((m, se, g, gse, out));
    }
    let (_, _, g10, gse10, _) = results[0];
    let (m, se, g1k, gse1k, ref out) = results[1];
    assert!(
        m.abs() < 3.0 * se,
        "T = 1000: error {m} beyond 3 SE = {}",
        3.0 * se
    );
    assert!(
        g1k < 3.0 * gse1k,
        "T = 1000: E log w above log p(x) by {g1k} ± {gse1k}"
    );
    // T = 10 is a clearly looser bound than T = 1000.
    assert!(
        g10 + 5.0 * (gse10 * gse10 + gse1k * gse1k).sqrt() < g1k,
        "gap at T = 10 ({g10} ± {gse10}) not clearly below T = 1000 ({g1k} ± {gse1k})"
    );
    // The adaptation holds acceptance near 0.65 (the mean includes the warm-up from 0.05).
    assert!(
        out.mean_accept > 0.6 && out.mean_accept < 0.8,
        "mean acceptance {}",
        out.mean_accept
    );
    println!(
        "linear-Gaussian on the CPU: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Fraction of rows whose log weights agree within `tol`, and the largest difference there.
fn agreement(a: &[f64], b: &[f64], tol: f64) -> (f64, f64) {
    let close: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .filter(|d| *d < tol)
        .collect();
    let max = close.iter().cloned().fold(0.0, f64::max);
    (close.len() as f64 / a.len() as f64, max)
}

#[test]
fn gpu_chains_follow_the_cpu_chains() {
    // Same seed: the same start (host), the same Philox momenta/noise on both devices, so
    // the chains agree to f32 rounding until an accept decision falls within it (rare).
    let t0 = Instant::now();
    let data = lin_gauss_data();
    let cfg = AisConfig {
        steps: 60,
        leapfrog: 5,
        seed: 9,
        ..AisConfig::default()
    };
    let chains = 2;
    let cpu = lin_gauss_run(Cpu, &data, chains, &cfg);
    let gpu_out = lin_gauss_run(gpu(), &data, chains, &cfg);
    let (frac, max) = agreement(&cpu.log_w, &gpu_out.log_w, 1e-3);
    println!("HMC: {frac:.3} of rows agree, max |Δ log w| there {max:.2e}");
    assert!(
        frac >= 0.9,
        "only {frac} of the rows agree between CPU and GPU"
    );

    let lik = VmfLik::host(3, 10.0, 40);
    let cfg = AisConfig {
        steps: 60,
        seed: 9,
        step_size: 0.02,
        ..AisConfig::default()
    };
    let cpu = lik.run(Cpu, &cfg);
    let gpu_out = lik.run(gpu(), &cfg);
    let (frac, max) = agreement(&cpu.log_w, &gpu_out.log_w, 1e-3);
    println!("MALA: {frac:.3} of rows agree, max |Δ log w| there {max:.2e}");
    assert!(
        frac >= 0.9,
        "only {frac} of the rows agree between CPU and GPU"
    );
    for z in gpu_out.z.chunks(3) {
        let norm = z.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-9, "final z off the sphere: {norm}");
    }
    println!("GPU vs CPU: {:.1} s", t0.elapsed().as_secs_f64());
}

// ----------------------------------------------------------------------------------------
// Sphere
// ----------------------------------------------------------------------------------------

/// log p(x_r|z) = κ μ_rᵀz with a unit μ_r per row (row = chain·n + i).
struct VmfLik {
    dim: usize,
    kappa: f64,
    mu: Vec<f64>,
}

impl VmfLik {
    /// `n` data points (unit μ's) tiled over `rows / n` chains; here n = rows / 4.
    fn host(dim: usize, kappa: f64, rows: usize) -> VmfLik {
        let n = rows / 4;
        let mut rng = HostRng::new(dim as u64 + 100);
        let mus: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect();
        VmfLik {
            dim,
            kappa,
            mu: (0..rows / n).flat_map(|_| mus.concat()).collect(),
        }
    }

    fn run<B: RandomFill + Copy>(&self, backend: B, cfg: &AisConfig) -> AisOutput {
        let rows = self.mu.len() / self.dim;
        let model = VmfOn {
            mu: backend.upload_host(rows, self.dim, &self.mu).unwrap(),
            kappa: self.kappa as f32,
        };
        ais(
            backend,
            &model,
            rows,
            self.dim,
            LatentPrior::UniformSphere,
            cfg,
            None,
        )
        .unwrap()
    }

    /// log ∫ exp(κμᵀz) dU(z) = log Γ(m/2) + (m/2 − 1) log(2/κ) + log I_(m/2−1)(κ).
    fn exact(&self) -> f64 {
        let nu = self.dim as f64 / 2.0 - 1.0;
        ln_gamma_half(self.dim)
            + nu * (2.0 / self.kappa).ln()
            + log_bessel_i(nu, self.kappa).unwrap()
    }
}

struct VmfOn<B: Backend> {
    mu: B::Tensor,
    kappa: f32,
}

impl<B: Backend> LogLikelihood<B> for VmfOn<B> {
    fn log_lik<'t>(&self, z: Var<'t, B>) -> Result<Var<'t, B>> {
        z.rowdot(z.tape().leaf(self.mu.clone()))?.scale(self.kappa)
    }
}

/// log Γ(m/2) for integer m ≥ 1 by recursion from Γ(1) = 1, Γ(½) = √π.
fn ln_gamma_half(m: usize) -> f64 {
    let (mut x, mut acc) = if m.is_multiple_of(2) {
        (1.0, 0.0)
    } else {
        (0.5, 0.5 * std::f64::consts::PI.ln())
    };
    while x < m as f64 / 2.0 {
        acc += x.ln();
        x += 1.0;
    }
    acc
}

#[test]
fn sphere_marginal_formula_agrees_with_monte_carlo() {
    for (dim, kappa) in [(3, 10.0), (8, 10.0)] {
        let lik = VmfLik::host(dim, kappa, 4);
        let mut rng = HostRng::new(77);
        let n = 200_000;
        let vals: Vec<f64> = (0..n)
            .map(|_| {
                let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                (kappa * v[0] / norm).exp()
            })
            .collect();
        let (m, se) = mean_se(&vals);
        let (mc, mc_se) = (m.ln(), se / m);
        println!(
            "m = {dim}, κ = {kappa}: formula {:.4}, MC {mc:.4} ± {mc_se:.4}",
            lik.exact()
        );
        assert!((lik.exact() - mc).abs() < 4.0 * mc_se);
    }
}

#[test]
fn sphere_latents_match_the_exact_marginal() {
    let t0 = Instant::now();
    for (dim, kappa) in [(3, 10.0), (8, 10.0)] {
        let rows = 200; // 50 data points × 4 chains
        let lik = VmfLik::host(dim, kappa, rows);
        let cfg = AisConfig {
            steps: 1000,
            seed: 5,
            step_size: 0.02,
            ..AisConfig::default()
        };
        let out = lik.run(Cpu, &cfg);
        let exact = lik.exact();
        let est = log_marginal(&out.log_w, rows / 4, 4).unwrap();
        let err: Vec<f64> = est.iter().map(|e| e - exact).collect();
        let (m, se) = mean_se(&err);
        let (g, gse) = gap(&out, &[exact]);
        println!(
            "m = {dim}, κ = {kappa}: log p(x) = {exact:.4}, log p̂ − log p {m:+.4} ± {se:.4}, \
             log w − log p {g:+.4} ± {gse:.4}, accept {:.3}, final ε₀ {:.4}",
            out.mean_accept, out.step_size
        );
        assert!(
            m.abs() < 3.0 * se,
            "m = {dim}: error {m} beyond 3 SE = {}",
            3.0 * se
        );
        assert!(
            g < 3.0 * gse,
            "m = {dim}: E log w above log p(x) by {g} ± {gse}"
        );
        for z in out.z.chunks(dim) {
            let norm = z.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-9, "final z off the sphere: {norm}");
        }
        // The chains end near their posteriors vMF(μ, κ): E[μᵀz] = A_m(κ) ≈ 1 − (m−1)/(2κ).
        let mean_cos = out
            .z
            .chunks(dim)
            .zip(lik.mu.chunks(dim))
            .map(|(z, mu)| z.iter().zip(mu).map(|(a, b)| a * b).sum::<f64>())
            .sum::<f64>()
            / rows as f64;
        let want = wmvl::directional::mean_resultant_length(dim, kappa).unwrap();
        assert!(
            (mean_cos - want).abs() < 0.05,
            "E[μᵀz] = {mean_cos}, want {want}"
        );
    }
    println!("sphere on the CPU: {:.1} s", t0.elapsed().as_secs_f64());
}

// ----------------------------------------------------------------------------------------
// Errors and small pieces
// ----------------------------------------------------------------------------------------

/// log p(x|z) = log(0·‖z‖²) = −∞ everywhere.
struct Broken;
impl LogLikelihood<Cpu> for Broken {
    fn log_lik<'t>(&self, z: Var<'t, Cpu>) -> Result<Var<'t, Cpu>> {
        z.rowdot(z)?.scale(0.0)?.log()
    }
}

/// One column too many.
struct Wide;
impl LogLikelihood<Cpu> for Wide {
    fn log_lik<'t>(&self, z: Var<'t, Cpu>) -> Result<Var<'t, Cpu>> {
        z.concat_cols(z)
    }
}

fn invalid(r: Result<AisOutput>, needles: &[&str]) {
    match r {
        Err(Error::Invalid(m)) | Err(Error::Shape(m)) => {
            println!("{m}");
            for n in needles {
                assert!(m.contains(n), "{m:?} does not mention {n:?}");
            }
        }
        other => panic!("expected an error mentioning {needles:?}, got {other:?}"),
    }
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let cfg = AisConfig {
        steps: 5,
        ..AisConfig::default()
    };
    let normal = LatentPrior::StandardNormal;
    let sphere = LatentPrior::UniformSphere;
    let lin = VmfOn::<Cpu> {
        mu: Cpu.upload_host(4, 3, &[1.0; 12]).unwrap(),
        kappa: 1.0,
    };
    invalid(ais(Cpu, &lin, 0, 3, normal, &cfg, None), &["rows = 0"]);
    let zero_steps = AisConfig { steps: 0, ..cfg };
    invalid(
        ais(Cpu, &lin, 4, 3, normal, &zero_steps, None),
        &["steps = 0"],
    );
    let no_leapfrog = AisConfig { leapfrog: 0, ..cfg };
    invalid(
        ais(Cpu, &lin, 4, 3, normal, &no_leapfrog, None),
        &["leapfrog"],
    );
    invalid(ais(Cpu, &lin, 4, 1, sphere, &cfg, None), &["dim = 1"]);
    let bad_step = AisConfig {
        step_size: f64::NAN,
        ..cfg
    };
    invalid(
        ais(Cpu, &lin, 4, 3, normal, &bad_step, None),
        &["step size"],
    );
    let bad_target = AisConfig {
        target_accept: 1.0,
        ..cfg
    };
    invalid(
        ais(Cpu, &lin, 4, 3, normal, &bad_target, None),
        &["acceptance"],
    );
    for prior in [normal, sphere] {
        invalid(
            ais(Cpu, &Broken, 4, 3, prior, &cfg, None),
            &["row 0", "-inf", "step 1 of 5"],
        );
        invalid(ais(Cpu, &Wide, 4, 3, prior, &cfg, None), &["(4, 1)"]);
    }
    assert!(log_marginal(&[0.0; 5], 2, 2).is_err());
    assert!(log_marginal(&[], 0, 2).is_err());
}

/// log p(x|z) = log(400 − ‖z‖²): NaN beyond radius 20, where a too long first step sends
/// the leapfrog trajectories.
struct Walled;
impl LogLikelihood<Cpu> for Walled {
    fn log_lik<'t>(&self, z: Var<'t, Cpu>) -> Result<Var<'t, Cpu>> {
        z.rowdot(z)?.affine(-1.0, 400.0)?.log()
    }
}

#[test]
fn diverged_proposals_are_rejected() {
    let cfg = AisConfig {
        steps: 20,
        step_size: 5.0,
        ..AisConfig::default()
    };
    let out = ais(Cpu, &Walled, 16, 2, LatentPrior::StandardNormal, &cfg, None).unwrap();
    assert!(out.log_w.iter().all(|w| w.is_finite()), "{:?}", out.log_w);
    for z in out.z.chunks(2) {
        assert!(
            z[0] * z[0] + z[1] * z[1] < 400.0,
            "a rejected proposal was kept: {z:?}"
        );
    }
    assert!(
        out.mean_accept < 0.5,
        "the first steps should mostly reject"
    );
}

#[test]
fn progress_schedule_and_log_mean_exp() {
    let mut calls = vec![];
    let mut record = |t: usize, total: usize| calls.push((t, total));
    let lik = VmfOn::<Cpu> {
        mu: Cpu.upload_host(2, 2, &[1.0, 0.0, 0.0, 1.0]).unwrap(),
        kappa: 2.0,
    };
    let cfg = AisConfig {
        steps: 3,
        ..AisConfig::default()
    };
    let out = ais(
        Cpu,
        &lik,
        2,
        2,
        LatentPrior::UniformSphere,
        &cfg,
        Some(&mut record),
    )
    .unwrap();
    assert_eq!(calls, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!((out.log_w.len(), out.z.len()), (2, 4));

    let b = sigmoid_schedule(1000);
    assert_eq!((b.len(), b[0], b[1000]), (1001, 0.0, 1.0));
    assert!(b.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(sigmoid_schedule(1), vec![0.0, 1.0]);

    // Rows chain·n + i: point 0 has weights {0, ln 3}, point 1 {−1000, −1000}: no underflow.
    let lm = log_marginal(&[0.0, -1000.0, 3f64.ln(), -1000.0], 2, 2).unwrap();
    assert!(
        (lm[0] - 2f64.ln()).abs() < 1e-12 && (lm[1] + 1000.0).abs() < 1e-12,
        "{lm:?}"
    );
}
