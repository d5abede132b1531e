//! Manifolds and the Riemannian Langevin step (SPEC §5): chart round trips on both
//! hemispheres and near the poles, the flip keeping chart points in the closed unit ball,
//! the embedding on the tape against the host's, the step's noise covariance 2εG⁻¹ on the
//! sphere and near the boundary of the Poincaré ball, and the Metropolis–Hastings diagnostic
//! tending to 1 as the step shrinks.

use std::sync::OnceLock;

use wmvl::backend::Backend;
use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::Gpu;
use wmvl::langevin::step;
use wmvl::manifold::{embed, split, Manifold};
use wmvl::objective::EnergyFn;
use wmvl::rng::{Dist, HostRng};
use wmvl::tape::{Tape, Var};
use wmvl::Result;

/// E(y) = 0: the step is drift and noise only.
fn flat<'t, B: Backend>() -> EnergyFn<impl Fn(Var<'t, B>) -> Result<Var<'t, B>>> {
    EnergyFn(|y: Var<'t, B>| y.rowdot(y)?.scale(0.0))
}

/// E(y) = y·w: on the sphere with w = −κμ, the vMF(μ, κ) energy.
fn linear<'t, B: Backend>(w: Var<'t, B>) -> EnergyFn<impl Fn(Var<'t, B>) -> Result<Var<'t, B>>> {
    EnergyFn(move |y: Var<'t, B>| y.matmul(w))
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

fn unit(v: Vec<f64>) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// Random unit vectors in R^p plus the awkward ones: both poles, near-poles, the equator.
fn sphere_points(p: usize, k: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = HostRng::new(seed);
    let mut pts: Vec<Vec<f64>> = (0..k)
        .map(|_| unit((0..p).map(|_| rng.normal()).collect()))
        .collect();
    for last in [1.0, -1.0] {
        let mut pole = vec![0.0; p];
        pole[p - 1] = last;
        pts.push(pole.clone());
        pole[0] = 1e-9;
        pts.push(unit(pole));
    }
    let mut eq = vec![0.0; p];
    eq[0] = 1.0;
    pts.push(eq);
    pts
}

#[test]
fn sphere_charts_round_trip_and_stay_in_the_closed_unit_ball() {
    for p in [2, 3, 5] {
        for y in sphere_points(p, 200, p as u64) {
            let x = Manifold::Sphere.to_chart(&y).unwrap();
            assert_eq!(x.len(), p);
            let sign = x[p - 1];
            assert!(sign == 1.0 || sign == -1.0);
            let r: f64 = x[..p - 1].iter().map(|v| v * v).sum();
            assert!(
                r <= 1.0 + 1e-12,
                "chart point outside the unit ball: r = {r} for {y:?}"
            );
            let back = Manifold::Sphere.from_chart(&x);
            let err = back
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "round trip off by {err} at {y:?}");
        }
    }
    // Off the sphere: refused, with the norm.
    let e = Manifold::Sphere.to_chart(&[0.5, 0.5, 0.0]).unwrap_err();
    assert!(e.to_string().contains("not on the unit sphere"), "{e}");
    // The ball refuses its boundary.
    assert!(Manifold::Hyperbolic.to_chart(&[0.6, 0.8]).is_err());
    assert_eq!(
        Manifold::Hyperbolic.to_chart(&[0.3, -0.4]).unwrap(),
        vec![0.3, -0.4]
    );
}

#[test]
fn the_tape_embedding_is_the_hosts() {
    let pts = sphere_points(3, 50, 9);
    let form: Vec<f64> = pts
        .iter()
        .flat_map(|y| Manifold::Sphere.to_chart(y).unwrap())
        .collect();
    let tape = Tape::new(Cpu);
    let f = tape.leaf(Mat::new(pts.len(), 3, form).unwrap());
    let (x, sign) = split(Manifold::Sphere, f).unwrap();
    let y = embed(Manifold::Sphere, x, sign).unwrap().value();
    for (i, p) in pts.iter().enumerate() {
        for c in 0..3 {
            assert!(
                (y.at(i, c) - p[c]).abs() < 1e-12,
                "row {i}: {:?} vs {p:?}",
                &y.data[i * 3..i * 3 + 3]
            );
        }
    }
}

/// Sample variance of ξⱼ/√(2εν(x₀)) over many copies of one chart point, for each coordinate:
/// must be 1 within sampling error (SE of a variance estimate of N normals: √(2/N)).
fn noise_variance_is_2_eps_g_inv(m: Manifold, form_row: Vec<f32>, nu: f64) {
    let g = gpu();
    let rows = 20_000;
    let cols = form_row.len();
    let data: Vec<f32> = (0..rows).flat_map(|_| form_row.clone()).collect();
    let tape = Tape::new(g);
    let form = tape.leaf(g.upload(rows, cols, &data).unwrap());
    let z = tape
        .random(rows, cols, Dist::STANDARD_NORMAL, 3, 1)
        .unwrap();
    let eps = 1e-3f32;
    let flat = flat();
    let st = step(m, &flat, form, z, 0.5, eps, false).unwrap();
    let xi = g.read(&st.xi.value()).unwrap();
    let n = st.xi.shape().1;
    let se = (2.0 / rows as f64).sqrt();
    for c in 0..n {
        let v: Vec<f64> = (0..rows).map(|r| xi[r * n + c] as f64).collect();
        let mean = v.iter().sum::<f64>() / rows as f64;
        let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / (rows - 1) as f64;
        let ratio = var / (2.0 * eps as f64 * nu);
        assert!(
            (ratio - 1.0).abs() < 4.0 * se,
            "{m:?} coordinate {c}: Var ξ / 2εg⁻¹ = {ratio} (±{se})"
        );
    }
}

#[test]
fn the_step_noise_has_the_metrics_covariance() {
    // Sphere S²: a chart point with r = 0.5 → g⁻¹ = (1 + r)²/4.
    let x = [0.5f32, 0.5];
    let r = 0.5f64;
    noise_variance_is_2_eps_g_inv(
        Manifold::Sphere,
        vec![x[0], x[1], -1.0],
        (1.0 + r).powi(2) / 4.0,
    );
    // Poincaré ball H², near its boundary: r = 0.95² → g⁻¹ = (1 − r)²/4 (tiny steps there).
    let x = [0.95f32 * 0.6, 0.95 * 0.8];
    let r = (x[0] as f64).powi(2) + (x[1] as f64).powi(2);
    noise_variance_is_2_eps_g_inv(Manifold::Hyperbolic, x.to_vec(), (1.0 - r).powi(2) / 4.0);
    // R^d: 2ε.
    noise_variance_is_2_eps_g_inv(Manifold::Euclidean, vec![0.3, -0.2], 1.0);
}

/// The MH acceptance of one row written out independently in f64: E(y) = w·y on the sphere
/// chart with sign σ, ∇ₓ(E∘y) by central differences, the proposal N(x + ε·drift(x), 2εν(x)).
fn mh_reference(form: &[f64], z: &[f64], w: &[f64], eps: f64) -> f64 {
    let n = form.len() - 1;
    let sign = form[n];
    let energy = |x: &[f64]| -> f64 {
        let mut f = x.to_vec();
        f.push(sign);
        let y = Manifold::Sphere.from_chart(&f);
        y.iter().zip(w).map(|(a, b)| a * b).sum()
    };
    let grad = |x: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|j| {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[j] += 1e-6;
                b[j] -= 1e-6;
                (energy(&a) - energy(&b)) / 2e-6
            })
            .collect()
    };
    let nu = |x: &[f64]| (1.0 + x.iter().map(|v| v * v).sum::<f64>()).powi(2) / 4.0;
    // drift = −ν(∇E − ∇½Σlog g) + ∂ν, with ∇½Σlog g = −2n·x/(1+r) and ∂ν = (1+r)·x.
    let drift = |x: &[f64]| -> Vec<f64> {
        let r: f64 = x.iter().map(|v| v * v).sum();
        let g = grad(x);
        (0..n)
            .map(|j| -nu(x) * (g[j] + 2.0 * n as f64 * x[j] / (1.0 + r)) + (1.0 + r) * x[j])
            .collect()
    };
    let x0 = &form[..n];
    let d0 = drift(x0);
    let xi: Vec<f64> = (0..n).map(|j| z[j] * (2.0 * eps * nu(x0)).sqrt()).collect();
    let xp: Vec<f64> = (0..n).map(|j| x0[j] + eps * d0[j] + xi[j]).collect();
    let dp = drift(&xp);
    let back2: f64 = (0..n).map(|j| (x0[j] - xp[j] - eps * dp[j]).powi(2)).sum();
    let xi2: f64 = xi.iter().map(|v| v * v).sum();
    let chart_e = |x: &[f64]| energy(x) + 0.5 * n as f64 * nu(x).ln();
    let log_q = |res2: f64, at: &[f64]| -res2 / (4.0 * eps * nu(at)) - 0.5 * n as f64 * nu(at).ln();
    let log_a = chart_e(x0) - chart_e(&xp) + log_q(back2, &xp) - log_q(xi2, x0);
    log_a.min(0.0).exp()
}

#[test]
fn metropolis_hastings_acceptance_matches_an_independent_computation() {
    // E(y) = −κ μ·y on S² (a vMF energy), points spread over both hemispheres.
    let pts = sphere_points(3, 300, 4);
    let form: Vec<f64> = pts
        .iter()
        .flat_map(|y| Manifold::Sphere.to_chart(y).unwrap())
        .collect();
    let rows = pts.len();
    let mut rng = HostRng::new(5);
    let z: Vec<f64> = (0..rows * 3).map(|_| rng.normal()).collect();
    let w = vec![-4.0 * 0.6, 0.0, -4.0 * 0.8];
    let mut accept = vec![];
    for eps in [1e-1f32, 1e-3, 1e-5] {
        let tape = Tape::new(Cpu);
        let f = tape.leaf(Mat::new(rows, 3, form.clone()).unwrap());
        let zt = tape.leaf(Mat::new(rows, 3, z.clone()).unwrap());
        let vmf = linear(tape.leaf(Mat::new(3, 1, w.clone()).unwrap()));
        let st = step(Manifold::Sphere, &vmf, f, zt, 0.5, eps, false).unwrap();
        let got = st.mh_acceptance().unwrap().value().data[0];
        let want = (0..rows)
            .map(|r| {
                mh_reference(
                    &form[r * 3..r * 3 + 3],
                    &z[r * 3..r * 3 + 3],
                    &w,
                    eps as f64,
                )
            })
            .sum::<f64>()
            / rows as f64;
        assert!((got - want).abs() < 1e-6, "ε = {eps}: {got} vs {want}");
        accept.push(got);
    }
    // With a position-dependent metric the Euler–Maruyama proposal's log α fluctuates at
    // O(√ε) (its mean cancels), so 1 − α shrinks like √ε, not ε^{3/2} as in R^d.
    let (r1, r2) = (
        (1.0 - accept[1]) / (1.0 - accept[0]),
        (1.0 - accept[2]) / (1.0 - accept[1]),
    );
    assert!(
        accept[2] > 0.99 && r1 < 0.3 && r2 < 0.3,
        "acceptance {accept:?}"
    );
}

/// Per-sample Riemannian MVL values (SPEC §5) of the vMF energy E(y) = −κ′μ·y on data drawn
/// from vMF(μ, κ) on S², in f64 on the CPU reference (so that ε₀ = 1e-5 is not lost to f32).
fn riemannian_mvl(kappa_model: f64, data: &[Vec<f64>], eps: f32, cv: bool, seed: u64) -> Vec<f64> {
    use wmvl::objective::{estimate, Config, Objective};
    let mu = [0.0, 0.6, 0.8];
    let rows = data.len();
    let form: Vec<f64> = data
        .iter()
        .flat_map(|y| Manifold::Sphere.to_chart(y).unwrap())
        .collect();
    let mut rng = HostRng::new(seed);
    let z: Vec<f64> = (0..rows * 3).map(|_| rng.normal()).collect();
    let tape = Tape::new(Cpu);
    let x0 = tape.leaf(Mat::new(rows, 3, form).unwrap());
    let zt = tape.leaf(Mat::new(rows, 3, z).unwrap());
    let w = tape.leaf(Mat::new(3, 1, mu.iter().map(|m| -kappa_model * m).collect()).unwrap());
    let energy = linear(w);
    let cfg = Config {
        eps,
        control_variate: cv,
        manifold: Manifold::Sphere,
        ..Config::default()
    };
    let est = estimate(Objective::Mvl, &cfg, &energy, x0, Some(zt)).unwrap();
    est.per_sample.value().data
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0),
    )
}

#[test]
fn riemannian_mvl_estimates_riemannian_score_matching_for_a_vmf() {
    // For E(y) = −κ′μ·y on S^n and data vMF(μ, κ) with t = μ·y: ‖grad E‖² = κ′²(1 − t²) and
    // Δ_S E = nκ′t, so J = E[½‖grad E‖² − Δ_S E] = ½κ′²(1 − E t²) − nκ′ E t, where on S²
    // (n = 2, p = 3) E t = A₃(κ) and E t² = 1 − 2A₃(κ)/κ.
    use wmvl::directional::{mean_resultant_length, Vmf};
    let kappa = 4.0;
    let vmf = Vmf::new(vec![0.0, 0.6, 0.8], kappa).unwrap();
    let data = vmf.sample(4000, &mut HostRng::new(21));
    let a = mean_resultant_length(3, kappa).unwrap();
    for kappa_model in [kappa, 1.5] {
        let j = 0.5 * kappa_model * kappa_model * (2.0 * a / kappa) - 2.0 * kappa_model * a;
        let v = riemannian_mvl(kappa_model, &data, 1e-5, true, 1);
        let (m, var) = mean_var(&v);
        let se = (var / v.len() as f64).sqrt();
        // The data's own sampling error of E[…] is part of SE: the closed form is exact.
        assert!(
            (m - j).abs() < 3.0 * se,
            "κ′ = {kappa_model}: MVL {m} ± {se}, Riemannian SM objective {j}"
        );
    }
    // The control variate keeps the variance flat as ε₀ shrinks; without it it grows ~1/ε₀.
    let (_, v3) = mean_var(&riemannian_mvl(kappa, &data, 1e-3, true, 2));
    let (_, v5) = mean_var(&riemannian_mvl(kappa, &data, 1e-5, true, 2));
    assert!(
        (v5 / v3 - 1.0).abs() < 0.5,
        "with CV: Var at 1e-3 {v3}, at 1e-5 {v5}"
    );
    let (_, n3) = mean_var(&riemannian_mvl(kappa, &data, 1e-3, false, 2));
    let (_, n5) = mean_var(&riemannian_mvl(kappa, &data, 1e-5, false, 2));
    assert!(n5 / n3 > 30.0, "without CV: Var at 1e-3 {n3}, at 1e-5 {n5}");
}

#[test]
fn chart_gradients_on_the_tape_match_the_hosts() {
    // ∇ₓ(E∘y) for E(y) = w·y: the tape (ChartEnergy, used by MVL) against the host's Jᵀw (used
    // by the samplers), on the sphere (both charts) and in the ball (hyperboloid embedding).
    use wmvl::langevin::ChartEnergy;
    use wmvl::objective::Energy;
    let w = [0.3, -1.2, 0.7];
    let mut rng = HostRng::new(13);
    for m in [Manifold::Sphere, Manifold::Hyperbolic] {
        let pts: Vec<Vec<f64>> = match m {
            Manifold::Sphere => sphere_points(3, 40, 2),
            _ => (0..40)
                .map(|_| {
                    let v = [rng.normal(), rng.normal()];
                    let s = 0.99 * rng.uniform() / (v[0] * v[0] + v[1] * v[1]).sqrt();
                    vec![v[0] * s, v[1] * s]
                })
                .collect(),
        };
        let form: Vec<f64> = pts.iter().flat_map(|p| m.to_chart(p).unwrap()).collect();
        let cols = pts[0].len();
        let tape = Tape::new(Cpu);
        let f = tape.leaf(Mat::new(pts.len(), cols, form.clone()).unwrap());
        let (x, sign) = split(m, f).unwrap();
        let lin = linear(tape.leaf(Mat::new(3, 1, w.to_vec()).unwrap()));
        let ce = ChartEnergy {
            model: &lin,
            manifold: m,
            sign,
        };
        let (_, g) = ce.energy_and_grad(x, false).unwrap();
        let g = g.value();
        let n = g.cols;
        for (i, p) in pts.iter().enumerate() {
            let sg = m.sign_of(p);
            let host = m.chart_grad(&m.chart_in(p, sg), sg, &w);
            for (j, &b) in host.iter().enumerate().take(n) {
                let a = g.at(i, j);
                assert!(
                    (a - b).abs() < 1e-9 * (1.0 + b.abs()),
                    "{m:?} row {i}: {a} vs {b}"
                );
            }
        }
    }
}
