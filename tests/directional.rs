//! Tests of `wmvl::directional`: log I_ν against mpmath values, the von Mises–Fisher sampler's
//! moments (Wood 1994), normalisation of every density by quadrature (S¹, S², H¹, H², H³),
//! Riemannian scores against finite differences, the wrapped normal on the Poincaré ball,
//! the named data sets and the argument checks.
//!
//! Statistical checks use fixed seeds and a tolerance of 4 standard errors (SE), each SE
//! stated where it is used.

use std::f64::consts::{PI, TAU};
use wmvl::directional::{
    log_bessel_i, log_sphere_area, mean_resultant_length, poincare_conformal_factor,
    poincare_dist0, poincare_exp0, poincare_log0, Directional, Uniform, Vmf, VmfMixture,
    WrappedNormal, BALL_MAX_RADIUS,
};
use wmvl::rng::HostRng;
use wmvl::Error;

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Sample mean and its standard error (sample sd / √n).
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// Asserts |mean(v) − expected| < 4 SE (SE = sample sd/√n).
fn check_mean(what: &str, v: &[f64], expected: f64) {
    let (m, se) = mean_se(v);
    let z = (m - expected) / se;
    println!("{what}: mean {m:.6} expected {expected:.6} se {se:.2e} z {z:+.2}");
    assert!(
        z.abs() < 4.0,
        "{what}: sample mean {m} vs expected {expected}, {z:.2} standard errors"
    );
}

/// A fixed unit vector in R^p that is not along an axis.
fn tilted_unit(p: usize) -> Vec<f64> {
    let v: Vec<f64> = (0..p)
        .map(|i| 0.3 + 0.7 * i as f64 - 0.1 * (i * i) as f64)
        .collect();
    let r = norm(&v);
    v.iter().map(|x| x / r).collect()
}

/// Uniform unit vectors (test-side, independent of the library's sampler).
fn random_units(p: usize, n: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = HostRng::new(seed);
    (0..n)
        .map(|_| {
            let g: Vec<f64> = (0..p).map(|_| rng.normal()).collect();
            let r = norm(&g);
            g.iter().map(|x| x / r).collect()
        })
        .collect()
}

/// ∫_{S¹} exp(logp) dσ by the trapezoid rule in the angle (periodic: spectrally accurate).
fn integrate_s1(f: impl Fn(&[f64]) -> f64, n: usize) -> f64 {
    let h = TAU / n as f64;
    (0..n)
        .map(|i| {
            let t = i as f64 * h;
            f(&[t.cos(), t.sin()])
        })
        .sum::<f64>()
        * h
}

/// ∫_{S²} f dσ on a θ–φ grid, dσ = sin θ dθ dφ: composite Simpson in θ ∈ [0, π]
/// (`nt` intervals, even), trapezoid (periodic) in φ (`np` points).
fn integrate_s2(f: impl Fn(&[f64]) -> f64, nt: usize, np: usize) -> f64 {
    assert!(nt.is_multiple_of(2));
    let ht = PI / nt as f64;
    let hp = TAU / np as f64;
    let mut total = 0.0;
    for i in 0..=nt {
        let th = i as f64 * ht;
        let w = if i == 0 || i == nt {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let (st, ct) = th.sin_cos();
        let ring: f64 = (0..np)
            .map(|j| {
                let (sp, cp) = (j as f64 * hp).sin_cos();
                f(&[st * cp, st * sp, ct])
            })
            .sum::<f64>()
            * hp;
        total += w * ring * st;
    }
    total * ht / 3.0
}

/// Checks a Riemannian score on the sphere at `points`: it is tangent (|y·s| ≤ 1e-12(1 + ‖s‖))
/// and, along the geodesic γ(h) = cos h·y + sin h·t for t the normalised tangent projections
/// of the coordinate axes (which span T_yS^n), the central difference
/// [logp(γ(h)) − logp(γ(−h))]/(2h), h = 1e-5, equals s·t to 1e-6(1 + ‖s‖) (truncation
/// ~h²·|third derivative| ≲ 1e-8, rounding ~1e-16·|logp|/h ≲ 1e-10).
fn check_sphere_score(
    what: &str,
    logp: impl Fn(&[f64]) -> f64,
    score: impl Fn(&[f64]) -> Vec<f64>,
    points: &[Vec<f64>],
) {
    let h: f64 = 1e-5;
    let mut worst = 0.0f64;
    for y in points {
        let p = y.len();
        let s = score(y);
        let sn = norm(&s);
        assert!(
            dot(y, &s).abs() <= 1e-12 * (1.0 + sn),
            "{what}: score not tangent at {y:?}: y·s = {}",
            dot(y, &s)
        );
        for i in 0..p {
            let mut t: Vec<f64> = y.iter().map(|v| -y[i] * v).collect();
            t[i] += 1.0;
            let tn = norm(&t);
            if tn < 0.1 {
                continue;
            }
            t.iter_mut().for_each(|v| *v /= tn);
            let plus: Vec<f64> = y
                .iter()
                .zip(&t)
                .map(|(a, b)| h.cos() * a + h.sin() * b)
                .collect();
            let minus: Vec<f64> = y
                .iter()
                .zip(&t)
                .map(|(a, b)| h.cos() * a - h.sin() * b)
                .collect();
            let fd = (logp(&plus) - logp(&minus)) / (2.0 * h);
            let err = (fd - dot(&s, &t)).abs() / (1.0 + sn);
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "{what}: at {y:?} along {t:?}: finite difference {fd} vs score·t {}",
                dot(&s, &t)
            );
        }
    }
    println!("{what}: worst relative score error {worst:.2e}");
}

// ---------------------------------------------------------------------------------
// Bessel functions and the mean resultant length
// ---------------------------------------------------------------------------------

#[test]
fn log_bessel_i_matches_known_values() {
    // (ν, x, ln I_ν(x)) from mpmath (30 digits, `mp.log(mp.besseli(nu, x))`). The table
    // crosses the switch from the series to Hankel's expansion at x = 30 and covers
    // half-integer orders (odd p), integer orders (even p) and large κ.
    let table: [(f64, f64, f64); 21] = [
        (0.0, 1.0, 0.235_914_358_507_178_65),
        (1.0, 1.0, -0.570_647_987_490_831_3),
        (0.0, 50.0, 47.127_575_501_871_8),
        (0.0, 700.0, 695.805_699_998_443_4),
        (0.5, 1.0, -0.064_351_991_073_531_8),
        (1.5, 3.0, 1.131_235_470_744_604_5),
        (1.5, 0.5, -2.339_213_042_392_324),
        (2.0, 10.0, 7.732_596_714_041_425),
        (0.5, 700.0, 695.805_521_299_273_6),
        (1.5, 1e4, 9_994.475_791_275_807),
        (0.0, 1e4, 9_994.475_903_781_432),
        (2.5, 30.0, 27.278_799_122_187_75),
        (4.0, 0.1, -15.160_482_945_395_259),
        (0.0, 1e-5, 2.499_999_999_984_375_4e-11),
        (10.0, 25.0, 20.463_586_497_362_027),
        (49.0, 100.0, 84.944_980_103_953_9),
        (3.5, 40.0, 37.084_799_077_141_58),
        (1.0, 40.0, 37.227_126_902_520_49),
        (0.0, 29.9, 27.286_385_310_555_094),
        (0.0, 30.1, 27.483_023_208_951_183),
        (9.5, 31.0, 26.900_401_125_406_154),
    ];
    for (nu, x, want) in table {
        let got = log_bessel_i(nu, x).unwrap();
        // 1e-14 relative error in I_ν is 1e-14 absolute in ln I_ν; allow 1e-15·|ln I| more
        // for the rounding of large logarithms.
        let tol = 2e-14 + 1e-15 * want.abs();
        println!(
            "ln I_{nu}({x}) = {got:.17e} (want {want:.17e}, diff {:.1e})",
            got - want
        );
        assert!(
            (got - want).abs() < tol,
            "ln I_{nu}({x}) = {got}, want {want}"
        );
    }
    // The values in the brief, directly.
    let i0 = log_bessel_i(0.0, 1.0).unwrap().exp();
    assert!(
        (i0 - 1.266_065_877_752_008_2).abs() < 1e-15 * 1.27,
        "I_0(1) = {i0}"
    );
    let i1 = log_bessel_i(1.0, 1.0).unwrap().exp();
    assert!(
        (i1 - 0.565_159_103_992_485_1).abs() < 1e-15,
        "I_1(1) = {i1}"
    );
    // Exponentially scaled: e^(−50) I_0(50) = 0.0565616266474541925 (mpmath).
    let s = (log_bessel_i(0.0, 50.0).unwrap() - 50.0).exp();
    assert!(
        (s - 0.056_561_626_647_454_19).abs() < 1e-15,
        "e^-50 I_0(50) = {s}"
    );
    // Closed form I_½(x) = √(2/(πx)) sinh x at small x, and x = 0.
    let x: f64 = 0.01;
    let want = (2.0 / (PI * x)).sqrt() * x.sinh();
    assert!((log_bessel_i(0.5, x).unwrap() - want.ln()).abs() < 1e-15);
    assert_eq!(log_bessel_i(0.0, 0.0).unwrap(), 0.0);
    assert_eq!(log_bessel_i(1.5, 0.0).unwrap(), f64::NEG_INFINITY);
    // Huge κ: finite, no overflow (I_0(1e6) ≈ e^(1e6)/√(2π·1e6)).
    let big = log_bessel_i(0.0, 1e6).unwrap();
    let approx = 1e6 - 0.5 * (TAU * 1e6f64).ln();
    assert!((big - approx).abs() < 1e-6, "ln I_0(1e6) = {big}");
    // Bad arguments are errors.
    for (nu, x) in [
        (-1.0, 1.0),
        (f64::NAN, 1.0),
        (0.0, -1.0),
        (0.0, f64::INFINITY),
    ] {
        assert!(
            matches!(log_bessel_i(nu, x), Err(Error::Invalid(_))),
            "({nu}, {x})"
        );
    }
}

#[test]
fn mean_resultant_length_matches_known_values() {
    // A_p(κ) = I_(p/2)(κ)/I_(p/2−1)(κ) from mpmath.
    let table: [(usize, f64, f64); 9] = [
        (2, 0.5, 0.242_499_612_580_801_95),
        (2, 3.0, 0.809_985_293_956_504_5),
        (2, 50.0, 0.989_948_967_378_497_8),
        (3, 0.5, 0.163_953_413_738_652_85),
        (3, 3.0, 0.671_636_489_980_355_8),
        (3, 50.0, 0.98),
        (5, 0.5, 0.099_293_556_607_689_76),
        (5, 3.0, 0.488_900_640_328_890_1),
        (5, 50.0, 0.960_408_163_265_306_1),
    ];
    for (p, k, want) in table {
        let got = mean_resultant_length(p, k).unwrap();
        assert!(
            (got - want).abs() < 1e-13,
            "A_{p}({k}) = {got}, want {want}"
        );
    }
    // S²: A_3(κ) = coth κ − 1/κ, also at tiny and large κ.
    for k in [1e-6, 0.5, 3.0, 50.0, 700.0, 1e4] {
        let want = 1.0 / f64::tanh(k) - 1.0 / k;
        let want = if k < 1e-3 { k / 3.0 } else { want };
        let got = mean_resultant_length(3, k).unwrap();
        assert!(
            (got - want).abs() < 1e-12 * want.max(1e-3),
            "A_3({k}) = {got}, coth − 1/κ = {want}"
        );
    }
    // κ = 0 and large κ: A → 1 − (p−1)/(2κ) + O(κ⁻²).
    assert_eq!(mean_resultant_length(4, 0.0).unwrap(), 0.0);
    for p in [2, 3, 5, 10] {
        let k = 1e5;
        let got = mean_resultant_length(p, k).unwrap();
        let want = 1.0 - (p - 1) as f64 / (2.0 * k);
        assert!((got - want).abs() < 1e-9, "A_{p}(1e5) = {got}");
    }
    assert!(mean_resultant_length(1, 1.0).is_err());
    assert!(mean_resultant_length(3, -1.0).is_err());
}

#[test]
fn sphere_area() {
    assert!((log_sphere_area(2) - TAU.ln()).abs() < 1e-15);
    assert!((log_sphere_area(3) - (4.0 * PI).ln()).abs() < 1e-15);
    assert!((log_sphere_area(5) - (8.0 * PI * PI / 3.0).ln()).abs() < 1e-14);
}

// ---------------------------------------------------------------------------------
// von Mises–Fisher sampling
// ---------------------------------------------------------------------------------

#[test]
fn vmf_samples_have_unit_norm_and_the_right_moments() {
    let n = 20_000;
    for p in [2, 3, 5] {
        for kappa in [0.5, 3.0, 50.0] {
            let mu = tilted_unit(p);
            let vmf = Vmf::new(mu.clone(), kappa).unwrap();
            let a = mean_resultant_length(p, kappa).unwrap();
            let mut rng = HostRng::new(1000 + p as u64 * 10 + kappa as u64);
            let ys = vmf.sample(n, &mut rng);
            for y in &ys {
                assert_eq!(y.len(), p);
                assert!((norm(y) - 1.0).abs() < 1e-14, "norm {}", norm(y));
            }
            let w: Vec<f64> = ys.iter().map(|y| dot(y, &mu)).collect();
            let tag = format!("p={p} κ={kappa}");
            // E[w] = A_p(κ); SE = sample sd of w / √n.
            check_mean(&format!("{tag} E[μ·y]"), &w, a);
            // E[w²] = 1 − (p−1)A/κ (Var w = A′(κ) = 1 − A² − (p−1)A/κ, Mardia & Jupp 2000 §9.3.2);
            // SE = sample sd of w² / √n.
            let w2: Vec<f64> = w.iter().map(|w| w * w).collect();
            check_mean(
                &format!("{tag} E[(μ·y)²]"),
                &w2,
                1.0 - (p - 1) as f64 * a / kappa,
            );
            // ‖ȳ‖ ≈ A: along μ the SE is √(Var w/n); orthogonal to μ each of the p − 1
            // coordinates has variance A/κ, adding at most √((p−1)A/(κn)). The sum of the
            // two is used as the SE.
            let mut ybar = vec![0.0; p];
            for y in &ys {
                ybar.iter_mut().zip(y).for_each(|(m, v)| *m += v / n as f64);
            }
            let var_w = 1.0 - a * a - (p - 1) as f64 * a / kappa;
            let se = (var_w / n as f64).sqrt() + ((p - 1) as f64 * a / kappa / n as f64).sqrt();
            let r = norm(&ybar);
            println!("{tag}: ‖ȳ‖ = {r:.5}, A = {a:.5}, se {se:.1e}");
            assert!((r - a).abs() < 4.0 * se, "{tag}: ‖ȳ‖ = {r}, A = {a}");
        }
    }
}

#[test]
fn vmf_kappa_zero_and_uniform_are_uniform() {
    let n = 20_000;
    for p in [2, 3, 5] {
        let vmf = Vmf::new(tilted_unit(p), 0.0).unwrap();
        let uni = Uniform::on_sphere(p - 1).unwrap();
        assert_eq!(uni.dim(), p);
        let mut rng = HostRng::new(7 + p as u64);
        let from_vmf = vmf.sample(n, &mut rng);
        let from_uni = uni.sample(n, &mut rng);
        for (what, ys) in [("vMF κ=0", &from_vmf), ("uniform", &from_uni)] {
            for i in 0..p {
                // Uniform on S^(p−1): E[y_i] = 0, E[y_i²] = 1/p; SE = sample sd/√n.
                let c: Vec<f64> = ys.iter().map(|y| y[i]).collect();
                check_mean(&format!("{what} p={p} E[y_{i}]"), &c, 0.0);
                let c2: Vec<f64> = c.iter().map(|v| v * v).collect();
                check_mean(&format!("{what} p={p} E[y_{i}²]"), &c2, 1.0 / p as f64);
            }
        }
        // Both densities are 1/|S^(p−1)|, and the scores vanish.
        let y = &from_uni[0];
        let want = -log_sphere_area(p);
        assert!((vmf.log_density(y).unwrap() - want).abs() < 1e-14);
        assert!((uni.log_density(y).unwrap() - want).abs() < 1e-14);
        assert!(vmf.riemannian_score(y).unwrap().iter().all(|&s| s == 0.0));
        assert!(uni.riemannian_score(y).unwrap().iter().all(|&s| s == 0.0));
        assert_eq!(vmf.mean_resultant_length(), 0.0);
    }
}

#[test]
fn vmf_large_kappa_does_not_overflow() {
    let n = 20_000;
    let kappa = 1e4;
    for p in [2, 3, 5] {
        let mu = tilted_unit(p);
        let vmf = Vmf::new(mu.clone(), kappa).unwrap();
        assert!(vmf.log_normalizer().is_finite());
        // At the mode ln p(μ) = ln C + κ ≈ ((p−1)/2) ln(κ/2π) (Laplace approximation).
        let at_mode = vmf.log_density(&mu).unwrap();
        let laplace = 0.5 * (p - 1) as f64 * (kappa / TAU).ln();
        assert!(
            (at_mode - laplace).abs() < 1e-3,
            "p={p}: {at_mode} vs {laplace}"
        );
        let mut rng = HostRng::new(99 + p as u64);
        let ys = vmf.sample(n, &mut rng);
        assert!(ys.iter().all(|y| y.iter().all(|v| v.is_finite())));
        // E[1 − μ·y] = 1 − A_p(κ) ≈ (p−1)/(2κ); SE = sample sd/√n.
        let omw: Vec<f64> = ys.iter().map(|y| 1.0 - dot(y, &mu)).collect();
        let a = vmf.mean_resultant_length();
        check_mean(&format!("p={p} κ=1e4 E[1 − μ·y]"), &omw, 1.0 - a);
    }
    // Absurdly large κ still samples (a point mass at μ to f64 precision) and terminates.
    for kappa in [1e300, f64::MAX] {
        let mu = tilted_unit(3);
        let v = Vmf::new(mu.clone(), kappa).unwrap();
        assert!(v.log_normalizer().is_finite(), "κ={kappa}");
        assert!(v.log_density(&mu).unwrap().is_finite(), "κ={kappa}");
        let y = v.sample_one(&mut HostRng::new(1));
        assert!(dot(&y, &mu) > 1.0 - 1e-12, "κ={kappa}: {y:?}");
    }
}

// ---------------------------------------------------------------------------------
// Normalisation by quadrature
// ---------------------------------------------------------------------------------

#[test]
fn sphere_densities_integrate_to_one_on_s1() {
    let mu = vec![0.3f64.cos(), 0.3f64.sin()];
    for kappa in [0.0, 0.5, 3.0, 50.0, 700.0] {
        let v = Vmf::new(mu.clone(), kappa).unwrap();
        let z = integrate_s1(|y| v.log_density(y).unwrap().exp(), 20_000);
        println!("S¹ vMF κ={kappa}: ∫p = {z:.15}");
        assert!((z - 1.0).abs() < 1e-10, "κ={kappa}: ∫p = {z}");
    }
    for d in [Directional::S1Mix, Directional::uniform(1).unwrap()] {
        let z = integrate_s1(|y| d.log_density(y).unwrap().exp(), 20_000);
        println!("{d}: ∫p = {z:.15}");
        assert!((z - 1.0).abs() < 1e-10, "{d}: ∫p = {z}");
    }
}

#[test]
fn sphere_densities_integrate_to_one_on_s2() {
    // Simpson in θ (1000 intervals) and the periodic trapezoid in φ (800 points): the
    // quadrature error is below 1e-9 for these widths (≥ 1/√50 rad).
    let mu = tilted_unit(3);
    for kappa in [0.0, 1.0, 10.0, 50.0] {
        let v = Vmf::new(mu.clone(), kappa).unwrap();
        let z = integrate_s2(|y| v.log_density(y).unwrap().exp(), 1000, 800);
        println!("S² vMF κ={kappa}: ∫p = {z:.12}");
        assert!((z - 1.0).abs() < 1e-8, "κ={kappa}: ∫p = {z}");
    }
    for d in [Directional::S2Mix, Directional::uniform(2).unwrap()] {
        let z = integrate_s2(|y| d.log_density(y).unwrap().exp(), 1000, 800);
        println!("{d}: ∫p = {z:.12}");
        assert!((z - 1.0).abs() < 1e-8, "{d}: ∫p = {z}");
    }
}

#[test]
fn mixture_samples_match_the_mixture_density() {
    // E[y] under the density by quadrature vs the sample mean of 40 000 draws; SE = sample
    // sd/√n per coordinate. This ties the mixture sampler (component choice by weight, then
    // Wood) to the log density.
    let n = 40_000;
    let s1 = Directional::S1Mix;
    let ys = s1.sample(n, 5);
    for i in 0..2 {
        let want = integrate_s1(|y| y[i] * s1.log_density(y).unwrap().exp(), 20_000);
        let c: Vec<f64> = ys.iter().map(|y| y[i]).collect();
        check_mean(&format!("s1mix E[y_{i}]"), &c, want);
    }
    let s2 = Directional::S2Mix;
    let ys = s2.sample(n, 6);
    for i in 0..3 {
        let want = integrate_s2(|y| y[i] * s2.log_density(y).unwrap().exp(), 400, 400);
        let c: Vec<f64> = ys.iter().map(|y| y[i]).collect();
        check_mean(&format!("s2mix E[y_{i}]"), &c, want);
    }
}

// ---------------------------------------------------------------------------------
// Riemannian scores on spheres
// ---------------------------------------------------------------------------------

#[test]
fn sphere_scores_match_finite_differences() {
    for d in [
        Directional::S1Mix,
        Directional::S2Mix,
        Directional::uniform(4).unwrap(),
    ] {
        let mut points = d.sample(40, 11);
        points.extend(random_units(d.dim(), 40, 12));
        check_sphere_score(
            &d.name(),
            |y| d.log_density(y).unwrap(),
            |y| d.riemannian_score(y).unwrap(),
            &points,
        );
    }
    // Single vMFs on S¹, S², S⁴, and a 3-component mixture on S⁴.
    for (p, kappa) in [(2, 3.0), (3, 50.0), (5, 0.5), (5, 20.0)] {
        let v = Vmf::new(tilted_unit(p), kappa).unwrap();
        let mut rng = HostRng::new(13);
        let mut points = v.sample(30, &mut rng);
        points.extend(random_units(p, 30, 14));
        check_sphere_score(
            &format!("vMF p={p} κ={kappa}"),
            |y| v.log_density(y).unwrap(),
            |y| v.riemannian_score(y).unwrap(),
            &points,
        );
        // One vMF: κ(μ − (μ·y)y) exactly.
        let y = &points[0];
        let mu = v.mean();
        let s = v.riemannian_score(y).unwrap();
        for i in 0..p {
            assert!((s[i] - kappa * (mu[i] - dot(mu, y) * y[i])).abs() < 1e-12 * kappa);
        }
    }
    let mix = VmfMixture::new(vec![
        (1.0, Vmf::new(vec![1.0, 0.0, 0.0, 0.0, 0.0], 4.0).unwrap()),
        (2.0, Vmf::new(vec![0.0, -1.0, 1.0, 0.0, 0.0], 8.0).unwrap()),
        (1.0, Vmf::new(vec![0.0, 0.0, 0.0, 1.0, 1.0], 1.0).unwrap()),
    ])
    .unwrap();
    let w: f64 = mix.components().iter().map(|c| c.0).sum();
    assert!((w - 1.0).abs() < 1e-15);
    let mut rng = HostRng::new(15);
    let mut points = mix.sample(30, &mut rng);
    points.extend(random_units(5, 30, 16));
    check_sphere_score(
        "3-component mixture on S⁴",
        |y| mix.log_density(y).unwrap(),
        |y| mix.riemannian_score(y).unwrap(),
        &points,
    );
}

// ---------------------------------------------------------------------------------
// Hyperbolic space: the wrapped normal on the Poincaré ball
// ---------------------------------------------------------------------------------

#[test]
fn poincare_maps() {
    let v = [0.3, -1.2, 0.5];
    let x = poincare_exp0(&v);
    assert!((poincare_dist0(&x) - norm(&v)).abs() < 1e-14);
    let back = poincare_log0(&x);
    for i in 0..3 {
        assert!((back[i] - v[i]).abs() < 1e-14);
    }
    // exp₀ along a ray: r = tanh(‖v‖/2).
    assert!((norm(&x) - (0.5 * norm(&v)).tanh()).abs() < 1e-15);
    assert!((poincare_conformal_factor(&[0.0, 0.0]) - 2.0).abs() < 1e-15);
    assert!((poincare_conformal_factor(&[0.6, 0.0]) - 2.0 / 0.64).abs() < 1e-15);
    // Far points are clipped inside the ball.
    let far = poincare_exp0(&[100.0, 0.0]);
    assert!(norm(&far) <= BALL_MAX_RADIUS && norm(&far) > BALL_MAX_RADIUS - 1e-15);
    assert_eq!(poincare_exp0(&[0.0, 0.0]), vec![0.0, 0.0]);
    assert_eq!(poincare_dist0(&[1.0, 0.0]), f64::INFINITY);
}

#[test]
fn wrapped_normal_samples_stay_inside_the_ball() {
    for (n, sigma) in [(1, 0.5), (2, 1.0), (3, 3.0), (2, 10.0)] {
        let wn = WrappedNormal::new(n, sigma).unwrap();
        let mut rng = HostRng::new(21);
        let xs = wn.sample(5_000, &mut rng);
        for x in &xs {
            assert_eq!(x.len(), n);
            let r = norm(x);
            assert!(r <= BALL_MAX_RADIUS, "radius {r}");
            assert!(wn.log_density(x).unwrap().is_finite());
            assert!(wn
                .riemannian_score(x)
                .unwrap()
                .iter()
                .all(|v| v.is_finite()));
        }
        // f32 rows: strictly inside, also after rounding.
        let m = wn.sample_matrix(5_000, 22);
        assert_eq!((m.rows, m.cols), (5_000, n));
        for i in 0..m.rows {
            let r = m
                .row(i)
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(r < 1.0, "f32 row {i} has radius {r}");
        }
        assert_eq!(m, wn.sample_matrix(5_000, 22));
    }
}

#[test]
fn wrapped_normal_radial_distribution() {
    // x = exp₀(v), v ~ N(0, σ²I_n) in orthonormal coordinates, so d(0, x) = ‖v‖ exactly and
    // E[d²] = nσ² (exact for the wrapped normal; no clipping at these σ). SE = sample sd/√n.
    // The direction is uniform: E[x_i] = 0, SE = sample sd/√n.
    let count = 40_000;
    for (n, sigma) in [(2, 0.5), (2, 1.5), (3, 1.0), (5, 0.7)] {
        let wn = WrappedNormal::new(n, sigma).unwrap();
        let mut rng = HostRng::new(31 + n as u64);
        let xs = wn.sample(count, &mut rng);
        let d2: Vec<f64> = xs.iter().map(|x| poincare_dist0(x).powi(2)).collect();
        check_mean(
            &format!("H^{n} σ={sigma} E[d²]"),
            &d2,
            n as f64 * sigma * sigma,
        );
        for i in 0..n {
            let c: Vec<f64> = xs.iter().map(|x| x[i]).collect();
            check_mean(&format!("H^{n} σ={sigma} E[x_{i}]"), &c, 0.0);
        }
    }
}

#[test]
fn wrapped_normal_integrates_to_one() {
    // ∫ p dvol with dvol = λ(x)^n dx, λ = 2/(1 − r²): midpoint rule in r on (0, 1)
    // (radially only for H¹ and H³, where the angular integral is 2 and 4π r²; on H² also
    // over a θ grid, polar coordinates dx = r dr dθ). The integrand vanishes
    // super-exponentially at r → 1 for these σ (d ≳ 10 carries < e^(−40) of the mass).
    let nr = 20_000;
    let hr = 1.0 / nr as f64;
    for sigma in [0.25, 0.5, 1.0] {
        // H²: grid in polar coordinates, λ² r dr dθ.
        let wn = WrappedNormal::new(2, sigma).unwrap();
        let nt = 64;
        let ht = TAU / nt as f64;
        let mut z = 0.0;
        for i in 0..nr {
            let r = (i as f64 + 0.5) * hr;
            let lam = 2.0 / (1.0 - r * r);
            for j in 0..nt {
                let (s, c) = (j as f64 * ht).sin_cos();
                let p = wn.log_density(&[r * c, r * s]).unwrap().exp();
                z += p * lam * lam * r * hr * ht;
            }
        }
        println!("H² σ={sigma}: ∫p dvol = {z:.12}");
        assert!((z - 1.0).abs() < 1e-7, "H² σ={sigma}: {z}");
        // H¹: ∫ p λ dx over (−1, 1); H³: ∫ p λ³ 4πr² dr.
        let h1 = WrappedNormal::new(1, sigma).unwrap();
        let h3 = WrappedNormal::new(3, sigma).unwrap();
        let (mut z1, mut z3) = (0.0, 0.0);
        for i in 0..nr {
            let r = (i as f64 + 0.5) * hr;
            let lam = 2.0 / (1.0 - r * r);
            z1 += 2.0 * h1.log_density(&[r]).unwrap().exp() * lam * hr;
            z3 +=
                h3.log_density(&[r, 0.0, 0.0]).unwrap().exp() * lam.powi(3) * 4.0 * PI * r * r * hr;
        }
        println!("H¹ σ={sigma}: {z1:.12}, H³: {z3:.12}");
        assert!((z1 - 1.0).abs() < 1e-7, "H¹ σ={sigma}: {z1}");
        assert!((z3 - 1.0).abs() < 1e-7, "H³ σ={sigma}: {z3}");
    }
}

#[test]
fn wrapped_normal_score_matches_finite_differences() {
    // The Riemannian gradient is λ⁻²∇ₓ ln p, so λ²·score must equal the chart gradient,
    // checked by central differences with h = 1e-4(1 − r) (ln p varies on the scale 1 − r
    // near the boundary); relative tolerance 1e-6.
    let mut rng = HostRng::new(41);
    for n in [1, 2, 3, 5] {
        for sigma in [0.5, 2.0] {
            let wn = WrappedNormal::new(n, sigma).unwrap();
            for r in [1e-3, 0.3, 0.7, 0.95, 0.999] {
                let g: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
                let x: Vec<f64> = g.iter().map(|v| r * v / norm(&g)).collect();
                let s = wn.riemannian_score(&x).unwrap();
                let lam2 = poincare_conformal_factor(&x).powi(2);
                let h = 1e-4 * (1.0 - r);
                for i in 0..n {
                    let mut xp = x.clone();
                    let mut xm = x.clone();
                    xp[i] += h;
                    xm[i] -= h;
                    let fd =
                        (wn.log_density(&xp).unwrap() - wn.log_density(&xm).unwrap()) / (2.0 * h);
                    let want = lam2 * s[i];
                    assert!(
                        (fd - want).abs() < 1e-6 * want.abs().max(1.0),
                        "H^{n} σ={sigma} r={r} i={i}: finite difference {fd}, λ²·score {want}"
                    );
                }
            }
        }
        // At the origin the score is 0 (the mode).
        let wn = WrappedNormal::new(n, 1.0).unwrap();
        assert!(wn
            .riemannian_score(&vec![0.0; n])
            .unwrap()
            .iter()
            .all(|&v| v == 0.0));
    }
}

// ---------------------------------------------------------------------------------
// Named data sets and argument checks
// ---------------------------------------------------------------------------------

#[test]
fn named_data_sets() {
    for name in Directional::NAMES {
        let d = Directional::from_name(name).unwrap();
        assert_eq!(d.name(), name);
        assert_eq!(name.parse::<Directional>().unwrap(), d);
    }
    assert_eq!(
        Directional::from_name(" S2Mix ").unwrap(),
        Directional::S2Mix
    );
    assert_eq!(Directional::S1Mix.dim(), 2);
    assert_eq!(Directional::S2Mix.dim(), 3);
    let u = Directional::from_name("uniform-s3").unwrap();
    assert_eq!(u, Directional::uniform(3).unwrap());
    assert_eq!((u.dim(), u.name()), (4, "uniform-s3".to_string()));
    for bad in ["", "s3mix", "uniform-s0", "uniform-s", "uniform-sx"] {
        assert!(
            matches!(Directional::from_name(bad), Err(Error::Invalid(_))),
            "{bad}"
        );
    }
    assert!(Directional::uniform(0).is_err());

    // The S² table: means normalised, weights as listed (they sum to 1).
    let mix = Directional::S2Mix.mixture().unwrap();
    let c = mix.components();
    assert_eq!(c.len(), 4);
    assert!((c[2].0 - 0.5370).abs() < 1e-12 && (c[2].1.kappa() - 6.612).abs() < 1e-15);
    for (_, v) in c {
        assert!((norm(v.mean()) - 1.0).abs() < 1e-15);
    }
    let s1 = Directional::S1Mix.mixture().unwrap();
    assert_eq!(s1.components()[0].1.mean(), &[0.0, 1.0]);
    assert!((s1.components()[1].1.mean()[1] + 0.5f64.sqrt()).abs() < 1e-16);
    assert!(Directional::uniform(2).unwrap().mixture().is_none());

    // Sample matrices: shape, unit rows to f32 precision, determined by the seed.
    for d in [Directional::S1Mix, Directional::S2Mix, u] {
        let m = d.sample_matrix(1000, 3);
        assert_eq!(
            (m.rows, m.cols, m.data.len()),
            (1000, d.dim(), 1000 * d.dim())
        );
        for i in 0..m.rows {
            let r = m
                .row(i)
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((r - 1.0).abs() < 1e-6, "{d}: row {i} has norm {r}");
        }
        assert_eq!(m, d.sample_matrix(1000, 3));
        assert_ne!(m, d.sample_matrix(1000, 4));
        // The f64 samples are the matrix before rounding.
        let s = d.sample(1000, 3);
        assert_eq!(s[7][0] as f32, m.row(7)[0]);
    }
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        Vmf::new(vec![0.0, 0.0], 1.0),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(Vmf::new(vec![1.0], 1.0), Err(Error::Invalid(_))));
    assert!(matches!(
        Vmf::new(vec![1.0, f64::NAN], 1.0),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        Vmf::new(vec![1.0, 0.0], -1.0),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        Vmf::new(vec![1.0, 0.0], f64::INFINITY),
        Err(Error::Invalid(_))
    ));
    let v = Vmf::new(vec![3.0, 4.0], 2.0).unwrap();
    assert_eq!(v.mean(), &[0.6, 0.8]);
    assert!(matches!(
        v.log_density(&[1.0, 0.0, 0.0]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(v.riemannian_score(&[1.0]), Err(Error::Shape(_))));
    assert!(matches!(
        v.log_density(&[f64::NAN, 0.0]),
        Err(Error::Invalid(_))
    ));

    assert!(VmfMixture::new(vec![]).is_err());
    let w = Vmf::new(vec![0.0, 0.0, 1.0], 2.0).unwrap();
    assert!(matches!(
        VmfMixture::new(vec![(0.5, v.clone()), (0.5, w)]),
        Err(Error::Shape(_))
    ));
    assert!(VmfMixture::new(vec![(-0.5, v.clone())]).is_err());
    assert!(VmfMixture::new(vec![(0.0, v.clone())]).is_err());
    assert!(VmfMixture::new(vec![(f64::NAN, v.clone())]).is_err());

    assert!(Uniform::on_sphere(0).is_err());
    assert!(matches!(
        Directional::S2Mix.log_density(&[1.0, 0.0]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Directional::S1Mix.riemannian_score(&[1.0, 0.0, 0.0]),
        Err(Error::Shape(_))
    ));

    assert!(WrappedNormal::new(0, 1.0).is_err());
    assert!(WrappedNormal::new(2, 0.0).is_err());
    assert!(WrappedNormal::new(2, f64::NAN).is_err());
    let wn = WrappedNormal::new(2, 1.0).unwrap();
    assert_eq!((wn.dim(), wn.sigma()), (2, 1.0));
    assert!(matches!(
        wn.log_density(&[1.0, 0.0]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        wn.riemannian_score(&[0.8, 0.8]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(wn.log_density(&[0.1]), Err(Error::Shape(_))));
}
