//! Tests of `wmvl::vmf`, the hyperspherical VAE's posterior (Davidson et al. 2018): the
//! reparameterised vMF sample on the tape (unit norm, mean A_m(κ)μ, gradients in κ and μ,
//! finite differences, GPU against the CPU reference) and KL(vMF ‖ uniform) (mpmath values,
//! Monte Carlo, finite differences, limits, the tape gradient).
//!
//! Statistical checks use fixed seeds and 4 standard errors (SE = sample sd/√n unless said).

use std::f64::consts::PI;
use std::sync::OnceLock;

use wmvl::backend::Backend;
use wmvl::cpu::Cpu;
use wmvl::directional::{log_sphere_area, mean_resultant_length, Vmf};
use wmvl::gpu::Gpu;
use wmvl::rng::HostRng;
use wmvl::tape::{Tape, Var};
use wmvl::vmf::{kl_to_uniform, kl_to_uniform_host, sample};
use wmvl::Error;

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

/// One GPU for the whole test binary (opening a device on lavapipe costs ~0.1 s).
fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::new()
            .unwrap_or_else(|e| panic!("these tests need a GPU adapter (lavapipe is fine): {e}"))
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// A random unit vector in R^m (test-side: normalised normals), with |μ₁| ≥ 0.1 so that it
/// is away from the switch between the two reflections in `vmf::sample`.
fn random_unit(m: usize, rng: &mut HostRng) -> Vec<f64> {
    loop {
        let g: Vec<f64> = (0..m).map(|_| rng.normal()).collect();
        let r = norm(&g);
        if r > 0.0 && (g[0] / r).abs() >= 0.1 {
            return g.iter().map(|x| x / r).collect();
        }
    }
}

/// Sample mean and its standard error (sample sd / √n).
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// A′_m(κ) = 1 − A² − (m − 1)A/κ, the derivative of the mean resultant length.
fn a_prime(m: usize, kappa: f64) -> f64 {
    let a = mean_resultant_length(m, kappa).unwrap();
    1.0 - a * a - (m - 1) as f64 * a / kappa
}

/// `rows` copies of the row `mu` and of κ, as tape leaves.
fn leaves<'t, B: Backend>(
    tape: &'t Tape<B>,
    mu: &[f64],
    kappa: f64,
    rows: usize,
) -> (Var<'t, B>, Var<'t, B>) {
    let m = mu.len();
    let mus: Vec<f64> = (0..rows).flat_map(|_| mu.iter().copied()).collect();
    let dev = tape.backend();
    let mu = tape.leaf(dev.upload_host(rows, m, &mus).unwrap());
    let kappa = tape.leaf(dev.upload_host(rows, 1, &vec![kappa; rows]).unwrap());
    (mu, kappa)
}

// ---------------------------------------------------------------------------------
// sample
// ---------------------------------------------------------------------------------

#[test]
fn samples_are_unit_vectors_with_mean_a_mu() {
    let g = gpu();
    let n = 4000;
    let mut mrng = HostRng::new(7);
    for m in [3, 8, 32] {
        let mu = random_unit(m, &mut mrng);
        for kappa in [1.0, 10.0, 100.0] {
            let tape = Tape::new(g);
            let (mu_v, k_v) = leaves(&tape, &mu, kappa, n);
            let mut rng = HostRng::new(100 + m as u64 + kappa as u64);
            let z = sample(mu_v, k_v, &mut rng).unwrap();
            assert_eq!(z.shape(), (n, m));
            let z = g.to_host(&z.value()).unwrap();
            let mut worst = 0.0f64;
            for row in z.chunks_exact(m) {
                worst = worst.max((norm(row) - 1.0).abs());
            }
            assert!(worst < 1e-5, "m={m} κ={kappa}: ‖z‖ off by {worst}");
            // E z = A_m(κ)μ, coordinate by coordinate; SE from the sample sd of each.
            let a = mean_resultant_length(m, kappa).unwrap();
            let mut zmax = 0.0f64;
            for j in 0..m {
                let col: Vec<f64> = z.chunks_exact(m).map(|r| r[j]).collect();
                let (mean, se) = mean_se(&col);
                let zs = (mean - a * mu[j]) / se;
                zmax = zmax.max(zs.abs());
                assert!(
                    zs.abs() < 4.0,
                    "m={m} κ={kappa} coordinate {j}: mean {mean} vs A·μ = {}, {zs:.2} SE",
                    a * mu[j]
                );
            }
            println!("m={m} κ={kappa}: max |‖z‖−1| {worst:.1e}, worst coordinate {zmax:.2} SE");
        }
    }
}

/// Draws for rows of μ (rows, m) and κ (rows, 1) with `HostRng::new(seed)`, on `dev`.
fn draw<B: Backend>(dev: B, mus: &[f64], kappas: &[f64], seed: u64) -> Vec<f64> {
    let rows = kappas.len();
    let m = mus.len() / rows;
    let tape = Tape::new(dev);
    let b = tape.backend();
    let mu = tape.leaf(b.upload_host(rows, m, mus).unwrap());
    let k = tape.leaf(b.upload_host(rows, 1, kappas).unwrap());
    let z = sample(mu, k, &mut HostRng::new(seed)).unwrap();
    b.to_host(&z.value()).unwrap()
}

#[test]
fn gpu_and_cpu_give_the_same_draws() {
    // Same seed, κ exactly representable in f32: the host draws the same ε and v, so the
    // devices differ only by f32 rounding. Both signs of μ₁ (both reflections), κ = 0 too.
    let mut mrng = HostRng::new(11);
    for m in [2, 3, 8] {
        let mu = random_unit(m, &mut mrng);
        for sign in [1.0, -1.0] {
            let rows = 64;
            let mus: Vec<f64> = (0..rows)
                .flat_map(|_| mu.iter().map(|x| sign * x))
                .collect();
            let kappas: Vec<f64> = (0..rows).map(|r| [0.0, 0.5, 4.0, 300.0][r % 4]).collect();
            let on_cpu = draw(Cpu, &mus, &kappas, 5);
            let on_gpu = draw(gpu(), &mus, &kappas, 5);
            let diff = on_cpu
                .iter()
                .zip(&on_gpu)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                diff < 1e-5,
                "m={m} sign {sign}: GPU and CPU draws differ by {diff}"
            );
            for row in on_cpu.chunks_exact(m) {
                assert!((norm(row) - 1.0).abs() < 1e-12);
            }
        }
    }
}

/// Per-row gradients of Σᵣ cᵣ·zᵣ with respect to μ (rows, m) and κ (rows, 1), on the CPU.
fn row_gradients(
    mu: &[f64],
    kappa: f64,
    c: &[f64],
    rows: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let m = mu.len();
    let tape = Tape::new(Cpu);
    let (mu_v, k_v) = leaves(&tape, mu, kappa, rows);
    let z = sample(mu_v, k_v, &mut HostRng::new(seed)).unwrap();
    let cs: Vec<f64> = (0..rows).flat_map(|_| c.iter().copied()).collect();
    let c_v = tape.leaf(Cpu.upload_host(rows, m, &cs).unwrap());
    let f = z.rowdot(c_v).unwrap().sum_all().unwrap();
    let gr = tape.grad(f, &[mu_v, k_v], false).unwrap();
    (
        Cpu.to_host(&z.value()).unwrap(),
        Cpu.to_host(&gr[0].value()).unwrap(),
        Cpu.to_host(&gr[1].value()).unwrap(),
    )
}

/// ∂/∂κ ln π(ε | κ) at fixed ε, where π(ε | κ) = f(h(ε, κ) | κ)·|∂h/∂ε| is the density of
/// Wood's *accepted* ε (f the density of w = μ·z, ∝ C_m(κ) e^(κw) (1 − w²)^((m−3)/2)), by
/// a central difference in f64 (d ln C_m/dκ = −A_m(κ) is added exactly). Davidson's g_cor
/// is E[f(z)·this].
fn accepted_eps_score(m: usize, kappa: f64, eps: f64) -> f64 {
    let m1 = (m - 1) as f64;
    // κh + (m−3)/2·ln(1 − h²) + ln|∂h/∂ε|, with 1 − h = 2bε/den, 1 + h = 2(1 − ε)/den and
    // |∂h/∂ε| = 2b/den², den = 1 − (1 − b)ε.
    let g = |k: f64| {
        let b = m1 / (2.0 * k + (4.0 * k * k + m1 * m1).sqrt());
        let den = 1.0 - (1.0 - b) * eps;
        let h = 1.0 - 2.0 * b * eps / den;
        let ln_1mh2 = (4.0 * b * eps * (1.0 - eps)).ln() - 2.0 * den.ln();
        k * h + 0.5 * (m as f64 - 3.0) * ln_1mh2 + (2.0 * b).ln() - 2.0 * den.ln()
    };
    let step = 1e-5 * kappa;
    (g(kappa + step) - g(kappa - step)) / (2.0 * step) - mean_resultant_length(m, kappa).unwrap()
}

#[test]
fn kappa_gradient_estimates_a_prime() {
    // Q maps e₁ to μ, so μ·z = w = h(ε, κ) and the per-row tape gradient is ∂h/∂κ at fixed ε:
    // Davidson's reparameterisation term g_rep. d/dκ E[μ·z] = A′_m(κ) = E[g_rep] + g_cor,
    // and `vmf::sample` drops g_cor (as Davidson's code does). Two checks, n = 20 000:
    // 1. g_rep + g_cor (the correction computed here on the host from ε = h⁻¹(w), with the
    //    control variate (w − A)·score, E[score] = 0) is within 4 SE of A′ for every κ: the
    //    tape's gradient is exactly the pathwise term of the right estimator.
    // 2. The gap E[g_rep] − A′ alone (the bias of dropping g_cor). Measured (seed 21), as a
    //    fraction of A′, with its size in SE:
    //      m = 3:  κ=1 −20% (71), κ=3 −30% (91), κ=10 −11% (20), κ=30 −4.1% (6.2),
    //              κ=100 −1.4% (2.0), κ≥300 −0.6% (0.9, noise)
    //      m = 8:  κ=1 −1.6% (12), κ=3 −7.9% (49), κ=10 −9.0% (34), κ=30 −3.2% (9.5),
    //              κ=100 −1.0% (2.8), κ≥300 ≤ 0.45% (≤ 1.2)
    //      m = 32: κ=1 −0.04% (1.3), κ=3 −0.2% (5.8), κ=10 −1.6% (23), κ=30 −2.2% (18),
    //              κ=100 −1.1% (7.0), κ≥300 ≤ 0.5% (≤ 2.8)
    //    i.e. about −(1 to 1.5)/κ relative once κ ≳ 10 (small at κ ≲ 3 for large m only
    //    because A′ ≈ 1/m is then mostly the tangent spread). The corrected sum stays within
    //    2.2 SE everywhere. Asserted for κ ≥ 100: |gap| < 4 SE + 2A′/κ.
    let n = 20_000;
    let mut mrng = HostRng::new(13);
    for m in [3, 8, 32] {
        let mu = random_unit(m, &mut mrng);
        let m1 = (m - 1) as f64;
        for kappa in [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 1e4] {
            let (z, _, g_rep) = row_gradients(&mu, kappa, &mu, n, 21);
            let a = mean_resultant_length(m, kappa).unwrap();
            let b = m1 / (2.0 * kappa + (4.0 * kappa * kappa + m1 * m1).sqrt());
            let total: Vec<f64> = z
                .chunks_exact(m)
                .zip(&g_rep)
                .map(|(z, g)| {
                    let w = dot(z, &mu);
                    let eps = (1.0 - w) / ((1.0 + b) - (1.0 - b) * w);
                    g + (w - a) * accepted_eps_score(m, kappa, eps)
                })
                .collect();
            let want = a_prime(m, kappa);
            let (rep, rep_se) = mean_se(&g_rep);
            let (tot, tot_se) = mean_se(&total);
            let (z_rep, z_tot) = ((rep - want) / rep_se, (tot - want) / tot_se);
            println!(
                "m={m} κ={kappa}: A′ {want:.4e}; g_rep gap {:+.2}% ({z_rep:+.1} SE); \
                 g_rep + g_cor gap {:+.2}% ({z_tot:+.1} SE)",
                100.0 * (rep - want) / want,
                100.0 * (tot - want) / want,
            );
            assert!(
                z_tot.abs() < 4.0,
                "m={m} κ={kappa}: g_rep + g_cor is {z_tot:.2} SE from A′"
            );
            if kappa >= 100.0 {
                assert!(
                    (rep - want).abs() < 4.0 * rep_se + 2.0 * want / kappa,
                    "m={m} κ={kappa}: g_rep {rep} vs A′ {want}"
                );
            }
        }
    }
}

#[test]
fn mu_gradient_is_a_times_the_tangent_projection() {
    // E[c·z] = A_m(κ) c·μ on the sphere, so the tangent part of ∇_μ is A(I − μμᵀ)c; the
    // radial part depends on how the formula extends off the sphere and is not checked. The
    // pathwise gradient in μ needs no rejection correction (ε does not depend on μ). SE per
    // coordinate from the per-row tangent gradients. Both reflections (signs of μ₁).
    let n = 10_000;
    let mut mrng = HostRng::new(17);
    for m in [3, 8] {
        let mu0 = random_unit(m, &mut mrng);
        let c = random_unit(m, &mut mrng);
        for sign in [1.0, -1.0] {
            let mu: Vec<f64> = mu0.iter().map(|x| sign * x).collect();
            for kappa in [2.0, 20.0] {
                let (_, gmu, _) = row_gradients(&mu, kappa, &c, n, 23);
                let a = mean_resultant_length(m, kappa).unwrap();
                let mc = dot(&mu, &c);
                let tangent: Vec<Vec<f64>> = gmu
                    .chunks_exact(m)
                    .map(|g| {
                        let gm = dot(g, &mu);
                        g.iter().zip(&mu).map(|(g, u)| g - gm * u).collect()
                    })
                    .collect();
                for j in 0..m {
                    let col: Vec<f64> = tangent.iter().map(|t| t[j]).collect();
                    let (mean, se) = mean_se(&col);
                    let want = a * (c[j] - mc * mu[j]);
                    let zs = (mean - want) / se;
                    assert!(
                        zs.abs() < 4.0,
                        "m={m} μ₁ sign {sign} κ={kappa} coordinate {j}: {mean} vs {want} ({zs:.2} SE)"
                    );
                }
            }
        }
    }
}

#[test]
fn tape_gradients_match_finite_differences() {
    // f(μ, κ) = Σᵣ cᵣ·zᵣ with the draws fixed by reseeding; central differences on the f64
    // CPU tape. A κ step could flip one of Wood's accept decisions (then f jumps): with
    // steps of 1e-6·κ that has probability ~1e-6 per proposal, and this seed has none.
    let mut mrng = HostRng::new(19);
    for m in [2, 3, 5] {
        let rows = 4;
        let mus: Vec<f64> = (0..rows).flat_map(|_| random_unit(m, &mut mrng)).collect();
        let kappas = vec![0.5, 3.0, 30.0, 300.0];
        let c: Vec<f64> = (0..rows * m).map(|_| mrng.normal()).collect();
        let f = |mus: &[f64], ks: &[f64]| -> f64 {
            let tape = Tape::new(Cpu);
            let mu = tape.leaf(Cpu.upload_host(rows, m, mus).unwrap());
            let k = tape.leaf(Cpu.upload_host(rows, 1, ks).unwrap());
            let z = sample(mu, k, &mut HostRng::new(29)).unwrap();
            dot(&Cpu.to_host(&z.value()).unwrap(), &c)
        };
        let tape = Tape::new(Cpu);
        let mu = tape.leaf(Cpu.upload_host(rows, m, &mus).unwrap());
        let k = tape.leaf(Cpu.upload_host(rows, 1, &kappas).unwrap());
        let z = sample(mu, k, &mut HostRng::new(29)).unwrap();
        let cv = tape.leaf(Cpu.upload_host(rows, m, &c).unwrap());
        let y = z.rowdot(cv).unwrap().sum_all().unwrap();
        let gr = tape.grad(y, &[mu, k], false).unwrap();
        let (gmu, gk) = (
            Cpu.to_host(&gr[0].value()).unwrap(),
            Cpu.to_host(&gr[1].value()).unwrap(),
        );
        let mut worst = 0.0f64;
        let scale = gmu.iter().chain(&gk).fold(0.0f64, |s, g| s.max(g.abs()));
        let mut check = |what: String, got: f64, fd: f64| {
            // Relative error with a floor of 1e-3 of the largest gradient (an entry that is
            // tiny because of cancellation is still checked to 1e-9 absolute).
            let err = (got - fd).abs() / fd.abs().max(1e-3 * scale);
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "m={m} {what}: tape {got} vs central difference {fd}"
            );
        };
        for i in 0..rows * m {
            let h = 1e-6;
            let (mut p, mut q) = (mus.clone(), mus.clone());
            p[i] += h;
            q[i] -= h;
            let fd = (f(&p, &kappas) - f(&q, &kappas)) / (2.0 * h);
            check(format!("∂μ[{i}]"), gmu[i], fd);
        }
        for r in 0..rows {
            let h = 1e-6 * kappas[r];
            let (mut p, mut q) = (kappas.clone(), kappas.clone());
            p[r] += h;
            q[r] -= h;
            let fd = (f(&mus, &p) - f(&mus, &q)) / (2.0 * h);
            check(format!("∂κ[{r}]"), gk[r], fd);
        }
        println!("m={m}: worst relative error {worst:.1e}");
    }
}

// ---------------------------------------------------------------------------------
// KL
// ---------------------------------------------------------------------------------

/// (m, κ, KL, dKL/dκ) from mpmath at 60 digits: KL = κA + ln C_m(κ) + ln|S^(m−1)| with
/// besseli, loggamma; dKL/dκ = κ(1 − A² − (m−1)A/κ).
const KL_REFERENCE: [(usize, f64, f64, f64); 21] = [
    (3, 1e-3, 1.6666665000000177e-7, 0.00033333326666667724),
    (3, 0.1, 0.0016650017618185006, 0.0332667723388165),
    (3, 1.0, 0.15159592392813567, 0.27593833903368953),
    (3, 10.0, 1.995732316838217, 0.09999991755385476),
    (3, 100.0, 4.298317366548036, 0.01),
    (3, 1e3, 6.600902459542082, 0.001),
    (3, 1e4, 8.903487552536127, 0.0001),
    (8, 1e-3, 6.249999882812503e-8, 0.00012499999531250016),
    (8, 0.1, 0.0006248828396201256, 0.01249531412707536),
    (8, 1.0, 0.06135460647493844, 0.12047012946110862),
    (8, 10.0, 2.5395193232562616, 0.2521993551751633),
    (8, 100.0, 9.753985091207412, 0.03411200825011434),
    (8, 1e3, 17.733637557192328, 0.0034912368871573875),
    (8, 1e4, 25.784803889834407, 0.00034991248687620436),
    (32, 1e-3, 1.562499997845818e-8, 3.124999991383272e-5),
    (32, 0.1, 0.00015624784585956824, 0.003124913835213782),
    (32, 1.0, 0.0156034996440337, 0.031164081323227098),
    (32, 10.0, 1.38125870741728, 0.24563789471402572),
    (32, 100.0, 20.758528079311954, 0.13244211082455734),
    (32, 1e3, 54.41757660328092, 0.015274937577858144),
    (32, 1e4, 89.90521188402332, 0.0015477521653344452),
];

#[test]
fn kl_matches_mpmath() {
    let (mut worst_v, mut worst_d) = (0.0f64, 0.0f64);
    for (m, kappa, kl, dkl) in KL_REFERENCE {
        let (v, d) = kl_to_uniform_host(m, kappa).unwrap();
        let (ev, ed) = (((v - kl) / kl).abs(), ((d - dkl) / dkl).abs());
        println!("m={m} κ={kappa:e}: KL {v:.16e} (rel err {ev:.1e}), dKL/dκ {d:.16e} ({ed:.1e})");
        worst_v = worst_v.max(ev);
        worst_d = worst_d.max(ed);
    }
    println!("worst relative error: KL {worst_v:.1e}, dKL/dκ {worst_d:.1e}");
    assert!(worst_v < 1e-11 && worst_d < 1e-9);
}

#[test]
fn kl_derivative_matches_finite_differences() {
    // Central differences with step 1e-3·κ: truncation ~ h²·KL‴/6, below 1e-7 relative on
    // this grid; rounding ~ 1e-16·KL/h, far below.
    for m in [2, 3, 8, 32] {
        for kappa in [
            1e-3, 0.01, 0.1, 0.5, 0.9995, 1.0, 2.0, 10.0, 30.0, 100.0, 1e3, 1e4,
        ] {
            let (_, d) = kl_to_uniform_host(m, kappa).unwrap();
            let h = 1e-3 * kappa;
            let fd = (kl_to_uniform_host(m, kappa + h).unwrap().0
                - kl_to_uniform_host(m, kappa - h).unwrap().0)
                / (2.0 * h);
            let err = ((d - fd) / d).abs();
            assert!(
                err < 1e-6,
                "m={m} κ={kappa}: dKL/dκ {d} vs central difference {fd}"
            );
        }
    }
}

#[test]
fn kl_limits() {
    for m in [2, 3, 8, 32] {
        let mf = m as f64;
        assert_eq!(kl_to_uniform_host(m, 0.0).unwrap(), (0.0, 0.0));
        // Small κ: KL = κ²/(2m) − 3κ⁴/(4m²(m+2)) + O(κ⁶), dKL/dκ = κ/m + O(κ³).
        for kappa in [1e-8, 1e-3] {
            let (v, d) = kl_to_uniform_host(m, kappa).unwrap();
            let k2 = kappa * kappa;
            let want = k2 / (2.0 * mf) - 3.0 * k2 * k2 / (4.0 * mf * mf * (mf + 2.0));
            assert!(
                ((v - want) / want).abs() < 1e-9,
                "m={m} κ={kappa}: {v} vs {want}"
            );
            assert!(((d - kappa / mf) / d).abs() < 1e-5, "m={m} κ={kappa}: {d}");
        }
        // Large κ: KL = (m−1)/2·(ln(κ/2π) − 1) + ln|S^(m−1)| + (m−1)(m−3)/(4κ) + O(κ⁻²)
        // (the leading terms of Hankel's expansion; the coefficient checked with mpmath:
        // κ·remainder = 224.77 at m = 32, κ = 1e4, exactly 0 for m = 3).
        let kappa = 1e4;
        let asym = 0.5 * (mf - 1.0) * ((kappa / (2.0 * PI)).ln() - 1.0) + log_sphere_area(m);
        let rest = kappa * (kl_to_uniform_host(m, kappa).unwrap().0 - asym);
        let want = (mf - 1.0) * (mf - 3.0) / 4.0;
        assert!(
            (rest - want).abs() < 1e-3 * want.abs().max(1.0),
            "m={m}: κ·remainder {rest} vs {want}"
        );
        // Monotone increasing (dKL/dκ > 0).
        let mut prev = 0.0;
        for e in -30..=40 {
            let kappa = 10f64.powf(e as f64 / 10.0);
            let (v, d) = kl_to_uniform_host(m, kappa).unwrap();
            assert!(
                v.is_finite() && d.is_finite() && d > 0.0 && v > prev,
                "m={m} κ={kappa}"
            );
            prev = v;
        }
    }
}

#[test]
fn kl_matches_monte_carlo() {
    // KL = E_q[ln q(z)] − ln(1/|S^(m−1)|) with Wood samples and directional's vMF log
    // density (an independent path: unscaled log I_ν); SE = sd(ln q)/√n.
    let n = 20_000;
    let mut mrng = HostRng::new(31);
    for m in [3, 8, 32] {
        let mu = random_unit(m, &mut mrng);
        for kappa in [0.5, 5.0, 50.0] {
            let vmf = Vmf::new(mu.clone(), kappa).unwrap();
            let mut rng = HostRng::new(37 + m as u64);
            let lq: Vec<f64> = vmf
                .sample(n, &mut rng)
                .iter()
                .map(|z| vmf.log_density(z).unwrap() + log_sphere_area(m))
                .collect();
            let (mean, se) = mean_se(&lq);
            let (kl, _) = kl_to_uniform_host(m, kappa).unwrap();
            let zs = (mean - kl) / se;
            println!("m={m} κ={kappa}: KL {kl:.5}, Monte Carlo {mean:.5} ± {se:.1e} ({zs:+.2} SE)");
            assert!(zs.abs() < 4.0, "m={m} κ={kappa}: {zs:.2} SE");
        }
    }
}

#[test]
fn kl_on_the_tape_has_the_host_value_and_gradient() {
    let m = 8;
    let kappas = [1e-3, 0.7, 3.0, 40.0, 2500.0];
    let rows = kappas.len();
    let host: Vec<(f64, f64)> = kappas
        .iter()
        .map(|&k| kl_to_uniform_host(m, k).unwrap())
        .collect();
    fn run<B: Backend>(dev: B, m: usize, kappas: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let tape = Tape::new(dev);
        let k = tape.leaf(tape.backend().upload_host(kappas.len(), 1, kappas).unwrap());
        let kl = kl_to_uniform(m, k).unwrap();
        let total = kl.sum_all().unwrap();
        let g = tape.grad(total, &[k], true).unwrap()[0];
        // First-order only: the gradient does not depend on κ on the tape.
        let gg = tape.grad(g.sum_all().unwrap(), &[k], false).unwrap()[0];
        let b = tape.backend();
        (
            b.to_host(&kl.value()).unwrap(),
            b.to_host(&g.value()).unwrap(),
            b.to_host(&gg.value()).unwrap(),
        )
    }
    for (name, (v, g, gg), tol) in [
        ("cpu", run(Cpu, m, &kappas), 1e-15),
        ("gpu", run(gpu(), m, &kappas), 1e-6),
    ] {
        assert_eq!(v.len(), rows);
        for r in 0..rows {
            let (hv, hd) = host[r];
            assert!(
                ((v[r] - hv) / hv).abs() < tol,
                "{name} row {r}: {} vs {hv}",
                v[r]
            );
            assert!(
                ((g[r] - hd) / hd).abs() < tol,
                "{name} row {r}: {} vs {hd}",
                g[r]
            );
            assert_eq!(gg[r], 0.0, "{name}: first-order only");
        }
    }
}

// ---------------------------------------------------------------------------------
// argument checks
// ---------------------------------------------------------------------------------

#[test]
fn bad_arguments_are_errors() {
    assert!(is_invalid(kl_to_uniform_host(1, 1.0)));
    assert!(is_invalid(kl_to_uniform_host(3, -1.0)));
    assert!(is_invalid(kl_to_uniform_host(3, f64::NAN)));
    assert!(is_invalid(kl_to_uniform_host(3, f64::INFINITY)));

    let tape = Tape::new(Cpu);
    let up = |r, c, d: &[f64]| tape.leaf(Cpu.upload_host(r, c, d).unwrap());
    let mut rng = HostRng::new(1);
    let mu = up(2, 3, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let k = up(2, 1, &[1.0, 2.0]);
    assert!(sample(mu, k, &mut rng).is_ok());
    assert!(is_shape(sample(mu, up(1, 1, &[1.0]), &mut rng)));
    assert!(is_shape(sample(mu, up(2, 2, &[1.0; 4]), &mut rng)));
    assert!(is_shape(sample(up(2, 1, &[1.0, 1.0]), k, &mut rng)));
    assert!(is_invalid(sample(mu, up(2, 1, &[1.0, -1.0]), &mut rng)));
    assert!(is_invalid(sample(mu, up(2, 1, &[f64::NAN, 1.0]), &mut rng)));
    let not_unit = up(2, 3, &[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
    assert!(is_invalid(sample(not_unit, k, &mut rng)));
    let nan = up(2, 3, &[f64::NAN, 0.0, 0.0, 0.0, 1.0, 0.0]);
    assert!(is_invalid(sample(nan, k, &mut rng)));
    assert!(is_shape(kl_to_uniform(3, mu)));
    assert!(is_invalid(kl_to_uniform(3, up(1, 1, &[-1.0]))));
    assert!(is_invalid(kl_to_uniform(1, k)));
}

fn is_shape<T>(r: wmvl::Result<T>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

fn is_invalid<T>(r: wmvl::Result<T>) -> bool {
    matches!(r, Err(Error::Invalid(_)))
}
