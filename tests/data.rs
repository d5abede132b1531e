//! Tests of `wmvl::data`: the toy densities (moments of the samplers, normalisation of
//! the log densities, scores against finite differences, Fisher divergence) and the
//! `.npy` / `.csv` loaders and the `.npy` writer, good and bad inputs.

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;
use std::path::{Path, PathBuf};
use wmvl::data::{load_csv, load_data, load_npy, save_npy, to_f32, Matrix, NpyWriter, Toy};
use wmvl::Error;

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

/// Sample mean and its standard error (sample sd / √n).
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// Asserts that the mean of `v` is within 4 standard errors of `expected`.
fn check_mean(what: &str, v: &[f64], expected: f64) {
    let (m, se) = mean_se(v);
    let z = (m - expected) / se;
    println!("{what}: mean {m:.5} expected {expected:.5} se {se:.2e} z {z:+.2}");
    assert!(
        z.abs() < 4.0,
        "{what}: sample mean {m} vs expected {expected}, {z:.2} standard errors"
    );
}

const N: usize = 200_000;

/// Standard normal cdf via a numerically integrated density (test-only, accurate to ~1e-12).
fn normal_pdf(x: f64, var: f64) -> f64 {
    (-0.5 * x * x / var).exp() / (std::f64::consts::TAU * var).sqrt()
}

/// A fresh empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wmvl-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The complete bytes of an .npy file with the given version and header dict, padded
/// (spaces then '\n') so that the data starts at a multiple of 64.
fn npy_bytes(major: u8, dict: &str, body: &[u8]) -> Vec<u8> {
    let prefix = if major == 1 { 10 } else { 12 };
    let mut header = dict.to_string();
    let unpadded = prefix + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut b = b"\x93NUMPY".to_vec();
    b.push(major);
    b.push(0);
    if major == 1 {
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(body);
    b
}

fn f64_body(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_body(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Asserts `r` is an `Error::Invalid` whose message names the file and contains every
/// one of `needles`.
fn assert_invalid<T: std::fmt::Debug>(r: wmvl::Result<T>, path: &Path, needles: &[&str]) {
    match r {
        Err(Error::Invalid(m)) => {
            let file = path.file_name().unwrap().to_string_lossy();
            assert!(m.contains(&*file), "message does not name the file: {m}");
            for n in needles {
                assert!(m.contains(n), "message lacks '{n}': {m}");
            }
            println!("ok: {m}");
        }
        other => panic!(
            "expected Error::Invalid for {}, got {other:?}",
            path.display()
        ),
    }
}

// ---------------------------------------------------------------------------------
// toys: names
// ---------------------------------------------------------------------------------

#[test]
fn toy_names_round_trip() {
    for (t, n) in Toy::ALL.iter().zip(Toy::NAMES) {
        assert_eq!(t.name(), n);
        assert_eq!(Toy::from_name(n).unwrap(), *t);
        assert_eq!(n.parse::<Toy>().unwrap(), *t);
        assert_eq!(t.to_string(), n);
    }
    assert_eq!(Toy::from_name("MultiRing").unwrap(), Toy::MultiRing);
    match Toy::from_name("moons") {
        Err(Error::Invalid(m)) => {
            assert!(m.contains("moons"), "{m}");
            for n in Toy::NAMES {
                assert!(m.contains(n), "{m}");
            }
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// toys: sample moments (all within 4 standard errors, seed fixed)
// ---------------------------------------------------------------------------------

#[test]
fn sampling_is_deterministic() {
    for t in Toy::ALL {
        assert_eq!(t.sample(100, 7), t.sample(100, 7));
        assert_ne!(t.sample(100, 7), t.sample(100, 8));
        let m = t.sample_matrix(10, 3);
        assert_eq!((m.rows, m.cols), (10, 2));
        assert_eq!(m.data, to_f32(&t.sample(10, 3)));
    }
}

#[test]
fn banana_moments() {
    let s = Toy::Banana.sample(N, 1);
    let x1: Vec<f64> = s.iter().map(|p| p[0]).collect();
    let x2: Vec<f64> = s.iter().map(|p| p[1]).collect();
    check_mean("banana E x1", &x1, 0.0);
    check_mean(
        "banana E x1^2",
        &x1.iter().map(|x| x * x).collect::<Vec<_>>(),
        4.0,
    );
    // E x2 = 0.2(E x1² − 4) = 0; Var x2 = 0.04 Var(x1²) + 1 = 0.04·2·16 + 1 = 2.28.
    check_mean("banana E x2", &x2, 0.0);
    check_mean(
        "banana E x2^2",
        &x2.iter().map(|x| x * x).collect::<Vec<_>>(),
        2.28,
    );
    let res: Vec<f64> = s.iter().map(|p| p[1] - 0.2 * (p[0] * p[0] - 4.0)).collect();
    check_mean("banana residual mean", &res, 0.0);
    check_mean(
        "banana residual var",
        &res.iter().map(|r| r * r).collect::<Vec<_>>(),
        1.0,
    );
    check_mean(
        "banana E x1*res",
        &s.iter()
            .zip(&res)
            .map(|(p, r)| p[0] * r)
            .collect::<Vec<_>>(),
        0.0,
    );
}

#[test]
fn cosine_moments() {
    let s = Toy::Cosine.sample(N, 2);
    assert!(s.iter().all(|p| (-4.0..4.0).contains(&p[0])));
    let x1: Vec<f64> = s.iter().map(|p| p[0]).collect();
    check_mean("cosine E x1", &x1, 0.0);
    check_mean(
        "cosine E x1^2",
        &x1.iter().map(|x| x * x).collect::<Vec<_>>(),
        16.0 / 3.0,
    );
    // E x2 = 3 E cos(2x1) = 3 sin(8)/8.
    check_mean(
        "cosine E x2",
        &s.iter().map(|p| p[1]).collect::<Vec<_>>(),
        3.0 * 8f64.sin() / 8.0,
    );
    let res: Vec<f64> = s.iter().map(|p| p[1] - 3.0 * (2.0 * p[0]).cos()).collect();
    check_mean("cosine residual mean", &res, 0.0);
    check_mean(
        "cosine residual var",
        &res.iter().map(|r| r * r).collect::<Vec<_>>(),
        1.0,
    );
    // Quarter of the mass in each of [−4,−2), [−2,0), [0,2), [2,4).
    for q in 0..4 {
        let lo = -4.0 + 2.0 * q as f64;
        let ind: Vec<f64> = x1
            .iter()
            .map(|&x| ((lo..lo + 2.0).contains(&x)) as u8 as f64)
            .collect();
        check_mean(&format!("cosine P(x1 in [{lo},{}))", lo + 2.0), &ind, 0.25);
    }
}

#[test]
fn funnel_moments() {
    let s = Toy::Funnel.sample(N, 3);
    let x1: Vec<f64> = s.iter().map(|p| p[0]).collect();
    check_mean("funnel E x1", &x1, 0.0);
    check_mean(
        "funnel E x1^2",
        &x1.iter().map(|x| x * x).collect::<Vec<_>>(),
        4.0,
    );
    let v = |x1: f64| (-x1).exp().min(10.0);
    check_mean(
        "funnel E x2",
        &s.iter().map(|p| p[1]).collect::<Vec<_>>(),
        0.0,
    );
    let z2: Vec<f64> = s.iter().map(|p| p[1] * p[1] / v(p[0])).collect();
    check_mean("funnel E x2^2/v(x1)", &z2, 1.0);
    // E x2² = E v(x1) = ∫ min(e^(−x), 10) N(x; 0, 4) dx (midpoint rule; analytically
    // 10Φ(−ln10/2) + e²Φ(−(4 − ln 10)/2) ≈ 2.71).
    let h = 1e-4;
    let ev: f64 = (0..600_000)
        .map(|i| -30.0 + (i as f64 + 0.5) * h)
        .map(|x| v(x) * normal_pdf(x, 4.0) * h)
        .sum();
    assert!((ev - 2.71).abs() < 0.01, "E v = {ev}");
    check_mean(
        "funnel E x2^2",
        &s.iter().map(|p| p[1] * p[1]).collect::<Vec<_>>(),
        ev,
    );
    // P(x1 < −ln 10) = Φ(−ln10/2): the clipped part, checked against the integral.
    let c = -(10f64.ln());
    let pc: f64 = (0..300_000)
        .map(|i| -30.0 + (i as f64 + 0.5) * h)
        .filter(|&x| x < c)
        .map(|x| normal_pdf(x, 4.0) * h)
        .sum();
    let ind: Vec<f64> = x1.iter().map(|&x| (x < c) as u8 as f64).collect();
    check_mean("funnel P(clipped)", &ind, pc);
}

#[test]
fn ring_moments() {
    let s = Toy::Ring.sample(N, 4);
    let r: Vec<f64> = s.iter().map(|p| p[0].hypot(p[1])).collect();
    check_mean("ring E r", &r, 5.0);
    check_mean(
        "ring E (r-5)^2",
        &r.iter().map(|r| (r - 5.0) * (r - 5.0)).collect::<Vec<_>>(),
        0.04,
    );
    check_mean(
        "ring E x1",
        &s.iter().map(|p| p[0]).collect::<Vec<_>>(),
        0.0,
    );
    check_mean(
        "ring E x2",
        &s.iter().map(|p| p[1]).collect::<Vec<_>>(),
        0.0,
    );
    // Uniform angle: E cos θ = E sin θ = E cos 2θ = 0, P(θ in first quadrant) = ¼.
    check_mean(
        "ring E cos",
        &s.iter()
            .map(|p| p[0] / p[0].hypot(p[1]))
            .collect::<Vec<_>>(),
        0.0,
    );
    check_mean(
        "ring E cos 2θ",
        &s.iter()
            .map(|p| (p[0] * p[0] - p[1] * p[1]) / (p[0] * p[0] + p[1] * p[1]))
            .collect::<Vec<_>>(),
        0.0,
    );
    check_mean(
        "ring P(quadrant 1)",
        &s.iter()
            .map(|p| (p[0] > 0.0 && p[1] > 0.0) as u8 as f64)
            .collect::<Vec<_>>(),
        0.25,
    );
}

#[test]
fn multiring_moments() {
    let s = Toy::MultiRing.sample(N, 5);
    let r: Vec<f64> = s.iter().map(|p| p[0].hypot(p[1])).collect();
    // E r = Σ w R = (1 + 9 + 25)/9; E r² = Σ w (R² + 0.04) = 153/9 + 0.04.
    check_mean("multiring E r", &r, 35.0 / 9.0);
    check_mean(
        "multiring E r^2",
        &r.iter().map(|r| r * r).collect::<Vec<_>>(),
        17.04,
    );
    for (lo, hi, w, rad) in [
        (0.0, 2.0, 1.0 / 9.0, 1.0),
        (2.0, 4.0, 3.0 / 9.0, 3.0),
        (4.0, 9.0, 5.0 / 9.0, 5.0),
    ] {
        let ind: Vec<f64> = r
            .iter()
            .map(|&r| (lo <= r && r < hi) as u8 as f64)
            .collect();
        check_mean(&format!("multiring P({lo} <= r < {hi})"), &ind, w);
        let within: Vec<f64> = r.iter().copied().filter(|&r| lo <= r && r < hi).collect();
        check_mean(&format!("multiring E[r | ring {rad}]"), &within, rad);
        check_mean(
            &format!("multiring Var[r | ring {rad}]"),
            &within
                .iter()
                .map(|r| (r - rad) * (r - rad))
                .collect::<Vec<_>>(),
            0.04,
        );
    }
    check_mean(
        "multiring E x1",
        &s.iter().map(|p| p[0]).collect::<Vec<_>>(),
        0.0,
    );
    check_mean(
        "multiring E x2",
        &s.iter().map(|p| p[1]).collect::<Vec<_>>(),
        0.0,
    );
}

// ---------------------------------------------------------------------------------
// toys: normalisation (midpoint rule; for smooth densities that vanish at the edges of
// the box the midpoint rule converges faster than any power of h, so the error is the
// mass outside the box plus rounding, far below the tolerances used)
// ---------------------------------------------------------------------------------

/// ∫∫ exp(log p) over [a1,b1]×[a2,b2] by the 2-D midpoint rule with n1×n2 cells.
fn integrate(t: Toy, (a1, b1, n1): (f64, f64, usize), (a2, b2, n2): (f64, f64, usize)) -> f64 {
    let (h1, h2) = ((b1 - a1) / n1 as f64, (b2 - a2) / n2 as f64);
    let mut total = 0.0;
    for i in 0..n1 {
        let x1 = a1 + (i as f64 + 0.5) * h1;
        let mut row = 0.0;
        for j in 0..n2 {
            let x2 = a2 + (j as f64 + 0.5) * h2;
            row += t.log_density(&[x1, x2]).exp();
        }
        total += row * h2;
    }
    total * h1
}

#[test]
fn banana_integrates_to_one() {
    // x1 over ±8 sd; the conditional mean 0.2(x1² − 4) reaches 50.4 at |x1| = 16.
    let z = integrate(Toy::Banana, (-16.0, 16.0, 800), (-12.0, 60.0, 1800));
    println!("banana ∫p = {z:.12}");
    assert!((z - 1.0).abs() < 1e-6, "{z}");
}

#[test]
fn cosine_integrates_to_one() {
    // The support edges ±4 fall on cell edges (h = 0.05), outside it log p = −∞.
    let z = integrate(Toy::Cosine, (-6.0, 6.0, 240), (-12.0, 12.0, 480));
    println!("cosine ∫p = {z:.12}");
    assert!((z - 1.0).abs() < 1e-6, "{z}");
    assert_eq!(Toy::Cosine.log_density(&[4.5, 0.0]), f64::NEG_INFINITY);
    assert!(Toy::Cosine
        .log_density(&[4.0, 3.0 * 8f64.cos()])
        .is_finite());
}

#[test]
fn ring_integrates_to_one() {
    // Midpoint cells never hit the origin (where the folded density is +∞).
    let z = integrate(Toy::Ring, (-7.0, 7.0, 700), (-7.0, 7.0, 700));
    println!("ring ∫p = {z:.12}");
    assert!((z - 1.0).abs() < 1e-6, "{z}");
}

#[test]
fn multiring_integrates_to_one() {
    // The 1/r singularity at the origin carries mass ≈ p_ρ(0)·r, p_ρ(0) ≈ 1.7e-6: its
    // quadrature error is ~1e-8.
    let z = integrate(Toy::MultiRing, (-7.0, 7.0, 700), (-7.0, 7.0, 700));
    println!("multiring ∫p = {z:.12}");
    assert!((z - 1.0).abs() < 1e-6, "{z}");
}

#[test]
fn funnel_integrates_to_one() {
    // The conditional sd of x2 ranges from √10 down to e^(−x1/2) (0.0003 at x1 = 16), so a
    // fixed grid cannot resolve it: for each x1 integrate x2 over ±12 conditional sd with
    // 240 midpoint cells (the joint log density is what is evaluated), then x1 over ±10 sd.
    let (a, b, n1) = (-20.0, 20.0, 8000);
    let h1 = (b - a) / n1 as f64;
    let mut total = 0.0;
    for i in 0..n1 {
        let x1 = a + (i as f64 + 0.5) * h1;
        let sd = (-x1).exp().min(10.0).sqrt();
        let n2 = 240;
        let h2 = 24.0 * sd / n2 as f64;
        let row: f64 = (0..n2)
            .map(|j| {
                Toy::Funnel
                    .log_density(&[x1, -12.0 * sd + (j as f64 + 0.5) * h2])
                    .exp()
            })
            .sum();
        total += row * h2 * h1;
    }
    println!("funnel ∫p = {total:.12}");
    assert!((total - 1.0).abs() < 1e-6, "{total}");
}

#[test]
fn ring_density_at_the_origin_is_infinite_but_finite_elsewhere() {
    for t in [Toy::Ring, Toy::MultiRing] {
        assert_eq!(t.log_density(&[0.0, 0.0]), f64::INFINITY);
        assert_eq!(t.score(&[0.0, 0.0]), [0.0, 0.0]);
        assert!(t.log_density(&[1e-3, 0.0]).is_finite());
        assert!(
            t.log_density(&[40.0, 0.0]).is_finite()
                || t.log_density(&[40.0, 0.0]) == f64::NEG_INFINITY
        );
    }
    // Rotation invariance.
    let a = Toy::MultiRing.log_density(&[3.1, 0.0]);
    let b = Toy::MultiRing.log_density(&[3.1 / 2f64.sqrt(), -3.1 / 2f64.sqrt()]);
    assert!((a - b).abs() < 1e-12);
}

// ---------------------------------------------------------------------------------
// toys: score = ∇ log p (4-point central differences, h = 1e-4: truncation O(h⁴))
// ---------------------------------------------------------------------------------

fn fd_score(t: Toy, x: &[f64; 2]) -> [f64; 2] {
    let h = 1e-4;
    let mut g = [0.0; 2];
    for (k, gk) in g.iter_mut().enumerate() {
        let at = |d: f64| {
            let mut y = *x;
            y[k] += d;
            t.log_density(&y)
        };
        *gk = (at(-2.0 * h) - 8.0 * at(-h) + 8.0 * at(h) - at(2.0 * h)) / (12.0 * h);
    }
    g
}

#[test]
fn scores_match_finite_differences() {
    let mut rng = Pcg64::seed_from_u64(99);
    let mut unif =
        |lo: f64, hi: f64| lo + (hi - lo) * ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
    for t in Toy::ALL {
        let mut pts = t.sample(300, 11);
        for _ in 0..300 {
            pts.push(match t {
                Toy::Cosine => [unif(-3.99, 3.99), unif(-6.0, 6.0)],
                Toy::Funnel => [unif(-6.0, 6.0), unif(-3.0, 3.0)],
                Toy::Banana => [unif(-6.0, 6.0), unif(-4.0, 8.0)],
                _ => [unif(-6.0, 6.0), unif(-6.0, 6.0)],
            });
        }
        let mut worst = 0.0f64;
        for x in &pts {
            if t == Toy::Funnel && (x[0] + 10f64.ln()).abs() < 1e-3 {
                continue; // kink of the clipped variance
            }
            if t == Toy::Cosine && x[0].abs() > 4.0 - 1e-3 {
                continue; // outside the support the density is 0
            }
            let s = t.score(x);
            let f = fd_score(t, x);
            let err = ((s[0] - f[0]).powi(2) + (s[1] - f[1]).powi(2)).sqrt();
            let rel = err / (s[0].hypot(s[1])).max(1.0);
            worst = worst.max(rel);
            assert!(
                rel < 1e-6,
                "{t} at {x:?}: score {s:?}, finite differences {f:?}, rel err {rel:e}"
            );
        }
        println!(
            "{t}: worst relative score error {worst:.2e} over {} points",
            pts.len()
        );
    }
}

// ---------------------------------------------------------------------------------
// toys: Fisher divergence
// ---------------------------------------------------------------------------------

#[test]
fn fisher_divergence_known_values() {
    for t in Toy::ALL {
        let s = t.sample(10_000, 21);
        let (m, se) = t.fisher_divergence(|x| t.score(x), &s).unwrap();
        assert_eq!((m, se), (0.0, 0.0), "{t}");
        // Shifted score: every term is ½‖(1, 0)‖² = ½ (up to the rounding of g + 1).
        let (m, se) = t
            .fisher_divergence(
                |x| {
                    let g = t.score(x);
                    [g[0] + 1.0, g[1]]
                },
                &s,
            )
            .unwrap();
        assert!((m - 0.5).abs() < 1e-12 && se < 1e-12, "{t}: {m} ± {se}");
        let (m, _) = t
            .fisher_divergence(
                |x| {
                    let g = t.score(x);
                    [g[0] - 2.0, g[1] + 1.0]
                },
                &s,
            )
            .unwrap();
        assert!((m - 2.5).abs() < 1e-12, "{t}: {m}");
    }
    // Zero model score on banana: ½E‖∇log p‖² = ½(E[(−x1/4 + 0.4 x1 z)²] + E z²)
    // = ½(4/16 + 0.16·4 + 1) = 0.945.
    let s = Toy::Banana.sample(N, 22);
    let (m, se) = Toy::Banana.fisher_divergence(|_| [0.0, 0.0], &s).unwrap();
    println!("banana ½E‖∇log p‖² = {m:.5} ± {se:.5} (expected 0.945)");
    assert!(((m - 0.945) / se).abs() < 4.0, "{m} ± {se}");
    // Precomputed scores give the same result.
    let model: Vec<[f64; 2]> = s.iter().map(|_| [0.0, 0.0]).collect();
    assert_eq!(
        Toy::Banana.fisher_divergence_of_scores(&s, &model).unwrap(),
        (m, se)
    );
}

#[test]
fn fisher_divergence_bad_input() {
    let t = Toy::Ring;
    assert!(matches!(
        t.fisher_divergence(|x| t.score(x), &[]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        t.fisher_divergence(|x| t.score(x), &[[5.0, 0.0]]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        t.fisher_divergence(|x| t.score(x), &[[5.0, 0.0], [f64::NAN, 1.0]]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        t.fisher_divergence_of_scores(&[[5.0, 0.0], [0.0, 5.0]], &[[0.0, 0.0]]),
        Err(Error::Shape(_))
    ));
}

// ---------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------

#[test]
fn npy_round_trip_and_atomic_save() {
    let dir = temp_dir("npy-round-trip");
    let p = dir.join("a.npy");
    let data: Vec<f32> = vec![1.0, -2.5, 3.25, f32::MAX, f32::MIN_POSITIVE, -0.0];
    save_npy(&p, 3, 2, &data).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "data must start 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"));
    assert!(header.ends_with('\n'));
    assert_eq!(bytes.len(), 10 + hlen + 24);
    let m = load_npy(&p).unwrap();
    assert_eq!(
        m,
        Matrix {
            rows: 3,
            cols: 2,
            data: data.clone()
        }
    );
    assert_eq!(m.row(1), &[3.25, f32::MAX]);
    assert_eq!(load_data(&p).unwrap(), m);

    // Overwrite in place; no temporary files left behind.
    let toy = Toy::Banana.sample_matrix(1000, 5);
    save_npy(&p, toy.rows, toy.cols, &toy.data).unwrap();
    assert_eq!(load_npy(&p).unwrap(), toy);
    assert_eq!(load_npy(&p).unwrap().points2().unwrap().len(), 1000);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.npy")]);

    // Wrong length: Shape error, the existing file untouched.
    assert!(matches!(
        save_npy(&p, 2, 2, &[1.0; 3]),
        Err(Error::Shape(_))
    ));
    assert_eq!(load_npy(&p).unwrap(), toy);
    // Into a directory that does not exist: Io error, nothing written.
    let q = dir.join("missing").join("b.npy");
    assert!(matches!(save_npy(&q, 1, 1, &[1.0]), Err(Error::Io(_))));
    assert!(!q.exists());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_reads_hand_written_f64_and_f32() {
    let dir = temp_dir("npy-hand");
    let vals = [1.5, -2.0, 1e-3, 4.0e10, -7.25, 0.1];
    let want: Vec<f32> = vals.iter().map(|&v| v as f32).collect();
    for major in [1u8, 2, 3] {
        let p = write(
            &dir,
            &format!("f64-v{major}.npy"),
            &npy_bytes(
                major,
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
                &f64_body(&vals),
            ),
        );
        assert_eq!(
            load_npy(&p).unwrap(),
            Matrix {
                rows: 2,
                cols: 3,
                data: want.clone()
            },
            "v{major}"
        );
    }
    // Other key order, double quotes, no trailing comma, no padding alignment.
    let header = "{\"shape\": (3,2), \"fortran_order\": False, \"descr\": \"<f4\"}\n";
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&f32_body(&want));
    let p = write(&dir, "f32-odd.npy", &b);
    assert_eq!(
        load_npy(&p).unwrap(),
        Matrix {
            rows: 3,
            cols: 2,
            data: want.clone()
        }
    );
    // A column vector (n, 1) is 2-D and fine.
    let p = write(
        &dir,
        "col.npy",
        &npy_bytes(
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (6, 1), }",
            &f64_body(&vals),
        ),
    );
    assert_eq!(load_npy(&p).unwrap().cols, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_bad_inputs() {
    let dir = temp_dir("npy-bad");
    let d = |descr: &str, fortran: &str, shape: &str| {
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
    };
    let four = f64_body(&[1.0, 2.0, 3.0, 4.0]);
    let good = npy_bytes(1, &d("<f8", "False", "(2, 2)"), &four);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "magic.npy",
            {
                let mut b = good.clone();
                b[1] = b'X';
                b
            },
            vec!["magic"],
        ),
        ("short.npy", b"\x93NUM".to_vec(), vec!["magic"]),
        (
            "version.npy",
            {
                let mut b = good.clone();
                b[6] = 4;
                b
            },
            vec!["version 4.0"],
        ),
        (
            "one-d.npy",
            npy_bytes(1, &d("<f8", "False", "(4,)"), &four),
            vec!["1-D", "2-D", "reshape"],
        ),
        (
            "three-d.npy",
            npy_bytes(1, &d("<f8", "False", "(1, 2, 2)"), &four),
            vec!["3-D"],
        ),
        (
            "zero-d.npy",
            npy_bytes(1, &d("<f8", "False", "()"), &four[..8]),
            vec!["0-D"],
        ),
        (
            "empty.npy",
            npy_bytes(1, &d("<f8", "False", "(0, 2)"), &[]),
            vec!["empty"],
        ),
        (
            "empty-cols.npy",
            npy_bytes(1, &d("<f4", "False", "(3, 0)"), &[]),
            vec!["empty"],
        ),
        (
            "truncated.npy",
            npy_bytes(1, &d("<f8", "False", "(2, 2)"), &four[..31]),
            vec!["truncated data", "32", "31"],
        ),
        (
            "trailing.npy",
            npy_bytes(1, &d("<f8", "False", "(2, 2)"), &f64_body(&[1.0; 5])),
            vec!["trailing"],
        ),
        (
            "trunc-header.npy",
            good[..40].to_vec(),
            vec!["truncated header"],
        ),
        (
            "garbled-header.npy",
            npy_bytes(
                1,
                "{'descr': '<f8', 'fortran_order': Nope, 'shape': (2, 2), }",
                &four,
            ),
            vec!["True or False"],
        ),
        (
            "missing-key.npy",
            npy_bytes(1, "{'descr': '<f8', 'shape': (2, 2), }", &four),
            vec!["fortran_order"],
        ),
        (
            "nan.npy",
            npy_bytes(
                1,
                &d("<f8", "False", "(2, 2)"),
                &f64_body(&[1.0, 2.0, f64::NAN, 4.0]),
            ),
            vec!["row 2 column 1", "NaN", "finite"],
        ),
        (
            "inf.npy",
            npy_bytes(
                1,
                &d("<f4", "False", "(2, 2)"),
                &f32_body(&[1.0, f32::NEG_INFINITY, 3.0, 4.0]),
            ),
            vec!["row 1 column 2", "inf"],
        ),
        (
            "overflow.npy",
            npy_bytes(
                2,
                &d("<f8", "False", "(2, 2)"),
                &f64_body(&[1.0, 2.0, 3.0, -1e300]),
            ),
            vec!["row 2 column 2", "overflows f32"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let p = write(&dir, name, &bytes);
        assert_invalid(load_npy(&p), &p, &needles);
        assert_invalid(load_data(&p), &p, &needles);
    }
    match load_npy(dir.join("nope.npy")) {
        Err(Error::Io(m)) => assert!(m.contains("nope.npy"), "{m}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The elements of a 2 x 3 test matrix in each kind, and how to encode one element of
/// `size` bytes, little- (`big == false`) or big-endian.
fn encode(kind: char, size: usize, big: bool, v: f64) -> Vec<u8> {
    macro_rules! bytes {
        ($x:expr) => {
            if big {
                $x.to_be_bytes().to_vec()
            } else {
                $x.to_le_bytes().to_vec()
            }
        };
    }
    match (kind, size) {
        // binary16 bit patterns of the float test values, written out by hand.
        ('f', 2) => {
            let bits: u16 = match v {
                1.5 => 0x3E00,
                -2.0 => 0xC000,
                0.25 => 0x3400,
                100.0 => 0x5640,
                -0.5 => 0xB800,
                3.0 => 0x4200,
                _ => unreachable!("{v}"),
            };
            bytes!(bits)
        }
        ('f', 4) => bytes!(v as f32),
        ('f', 8) => bytes!(v),
        ('i', 1) => bytes!(v as i8),
        ('i', 2) => bytes!(v as i16),
        ('i', 4) => bytes!(v as i32),
        ('i', 8) => bytes!(v as i64),
        ('u', 1) | ('b', 1) => bytes!(v as u8),
        ('u', 2) => bytes!(v as u16),
        ('u', 4) => bytes!(v as u32),
        ('u', 8) => bytes!(v as u64),
        _ => unreachable!(),
    }
}

#[test]
fn npy_reads_every_real_dtype_byte_order_and_memory_order() {
    let dir = temp_dir("npy-dtypes");
    let floats = [1.5, -2.0, 0.25, 100.0, -0.5, 3.0];
    let signed = [1.0, -2.0, 3.0, 100.0, -128.0, 127.0];
    let unsigned = [0.0, 1.0, 2.0, 100.0, 200.0, 255.0];
    let bools = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let native_big = cfg!(target_endian = "big");
    let mut checked = 0;
    for (kind, sizes, vals) in [
        ('f', &[2usize, 4, 8][..], floats),
        ('i', &[1, 2, 4, 8][..], signed),
        ('u', &[1, 2, 4, 8][..], unsigned),
        ('b', &[1][..], bools),
    ] {
        // The 2 x 3 matrix, row-major.
        let want = Matrix {
            rows: 2,
            cols: 3,
            data: vals.iter().map(|&v| v as f32).collect(),
        };
        for &size in sizes {
            for order in ['<', '>', '=', '|'] {
                let big = match order {
                    '>' => true,
                    '<' => false,
                    _ => native_big,
                };
                for fortran in [false, true] {
                    // Fortran order stores the columns one after the other.
                    let file_order: Vec<f64> = if fortran {
                        (0..3)
                            .flat_map(|j| (0..2).map(move |i| vals[i * 3 + j]))
                            .collect()
                    } else {
                        vals.to_vec()
                    };
                    let body: Vec<u8> = file_order
                        .iter()
                        .flat_map(|&v| encode(kind, size, big, v))
                        .collect();
                    let descr = format!("{order}{kind}{size}");
                    let dict = format!(
                        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': (2, 3), }}",
                        if fortran { "True" } else { "False" }
                    );
                    let p = write(
                        &dir,
                        &format!("{descr}-{fortran}.npy"),
                        &npy_bytes(1, &dict, &body),
                    );
                    let got = load_npy(&p).unwrap_or_else(|e| panic!("{dict}: {e}"));
                    let bits = |m: &Matrix| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!((got.rows, got.cols), (2, 3), "{dict}");
                    assert_eq!(bits(&got), bits(&want), "{dict}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 12 * 4 * 2); // 12 dtypes, 4 byte orders, C and Fortran order
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_fortran_order_3x2_is_transposed_on_load() {
    let dir = temp_dir("npy-fortran");
    // [[1, 2], [3, 4], [5, 6]] stored column by column: 1, 3, 5, then 2, 4, 6.
    let p = write(
        &dir,
        "f.npy",
        &npy_bytes(
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 2), }",
            &f64_body(&[1.0, 3.0, 5.0, 2.0, 4.0, 6.0]),
        ),
    );
    let m = load_npy(&p).unwrap();
    assert_eq!((m.rows, m.cols), (3, 2));
    assert_eq!(m.row(0), &[1.0, 2.0]);
    assert_eq!(m.row(1), &[3.0, 4.0]);
    assert_eq!(m.row(2), &[5.0, 6.0]);
    // Positions in errors are (row, column) of the array, not of the file order: the
    // fourth stored value is row 1, column 2.
    let p = write(
        &dir,
        "f-nan.npy",
        &npy_bytes(
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 2), }",
            &f64_body(&[1.0, 3.0, 5.0, f64::NAN, 4.0, 6.0]),
        ),
    );
    assert_invalid(load_npy(&p), &p, &["row 1 column 2", "NaN"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_big_endian_f8_and_half_precision_known_bits() {
    let dir = temp_dir("npy-bits");
    // 1.5 = 0x3FF8000000000000 and -2.0 = 0xC000000000000000, most significant byte first.
    let mut body = vec![0x3F, 0xF8, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&[0xC0, 0, 0, 0, 0, 0, 0, 0]);
    let p = write(
        &dir,
        "be.npy",
        &npy_bytes(
            1,
            "{'descr': '>f8', 'fortran_order': False, 'shape': (1, 2), }",
            &body,
        ),
    );
    assert_eq!(load_npy(&p).unwrap().data, vec![1.5, -2.0]);

    // binary16, little-endian: 1.5 = 0x3E00, the smallest subnormal 0x0001 = 2^-24, the
    // largest finite 0x7BFF = 65504, -0.0 = 0x8000, -2^-14 = 0x8400 (smallest normal).
    let halves: [u16; 5] = [0x3E00, 0x0001, 0x7BFF, 0x8000, 0x8400];
    let body: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    let p = write(
        &dir,
        "half.npy",
        &npy_bytes(
            1,
            "{'descr': '<f2', 'fortran_order': False, 'shape': (5, 1), }",
            &body,
        ),
    );
    let m = load_npy(&p).unwrap();
    assert_eq!(m.data[0], 1.5);
    assert_eq!(m.data[1], 2f32.powi(-24));
    assert_eq!(m.data[2], 65504.0);
    assert_eq!(m.data[3].to_bits(), (-0.0f32).to_bits());
    assert_eq!(m.data[4], -(2f32.powi(-14)));

    // Infinity (0x7C00) and NaN (0x7E00) in half precision are refused like any other.
    for (bits, needle) in [(0x7C00u16, "inf"), (0xFE00, "NaN")] {
        let mut body: Vec<u8> = [0x3E00u16, 0x3E00, 0x3E00]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        body.extend_from_slice(&bits.to_le_bytes());
        let p = write(
            &dir,
            "half-bad.npy",
            &npy_bytes(
                1,
                "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }",
                &body,
            ),
        );
        assert_invalid(load_npy(&p), &p, &["row 2 column 2", needle, "finite"]);
    }

    // A bool byte other than 0 or 1 is True, as in NumPy.
    let p = write(
        &dir,
        "bool.npy",
        &npy_bytes(
            1,
            "{'descr': '|b1', 'fortran_order': False, 'shape': (1, 3), }",
            &[0, 1, 2],
        ),
    );
    assert_eq!(load_npy(&p).unwrap().data, vec![0.0, 1.0, 1.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_integers_beyond_2_pow_24_are_refused() {
    let dir = temp_dir("npy-ints");
    let d =
        |descr: &str| format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2, 2), }}");
    // ±2^24 itself is exact in f32 and accepted.
    let p = write(
        &dir,
        "edge.npy",
        &npy_bytes(
            1,
            &d("<i8"),
            &[0i64, 1 << 24, -(1 << 24), 7]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        ),
    );
    assert_eq!(
        load_npy(&p).unwrap().data,
        vec![0.0, 16777216.0, -16777216.0, 7.0]
    );
    let p = write(
        &dir,
        "edge-u.npy",
        &npy_bytes(
            1,
            &d(">u4"),
            &[1u32, 2, 3, 1 << 24]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect::<Vec<_>>(),
        ),
    );
    assert_eq!(load_npy(&p).unwrap().data, vec![1.0, 2.0, 3.0, 16777216.0]);

    let cases: Vec<(&str, String, Vec<u8>, Vec<&str>)> = vec![
        (
            "u8-max.npy",
            d("<u8"),
            [1u64, 2, u64::MAX, 4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            vec!["row 2 column 1", "18446744073709551615", "2^24", "astype"],
        ),
        (
            "u8-just-over.npy",
            d("<u8"),
            [1u64, (1 << 24) + 1, 3, 4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            vec!["row 1 column 2", "16777217"],
        ),
        (
            "i8-min.npy",
            d("<i8"),
            [1i64, 2, 3, i64::MIN]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            vec!["row 2 column 2", "-9223372036854775808"],
        ),
        (
            "i8-max.npy",
            d(">i8"),
            [i64::MAX, 2, 3, 4]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect(),
            vec!["row 1 column 1", "9223372036854775807"],
        ),
        (
            "i4-just-under.npy",
            d("<i4"),
            [1i32, 2, -(1 << 24) - 1, 4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            vec!["row 2 column 1", "-16777217"],
        ),
    ];
    for (name, dict, body, needles) in cases {
        let p = write(&dir, name, &npy_bytes(1, &dict, &body));
        assert_invalid(load_npy(&p), &p, &needles);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_non_real_dtypes_are_refused_naming_them() {
    let dir = temp_dir("npy-unsupported");
    let d =
        |descr: &str| format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2, 2), }}");
    let accepted = ["accepted", "'f2', 'f4', 'f8'", "'u8'", "'b1'"];
    for (name, descr, what) in [
        ("c8.npy", "'<c8'", "complex"),
        ("c16.npy", "'>c16'", "complex"),
        ("str.npy", "'<U5'", "string"),
        ("bytes.npy", "'|S3'", "string"),
        ("obj.npy", "'|O'", "object"),
        ("dt.npy", "'<M8[ns]'", "datetime"),
        ("td.npy", "'<m8[s]'", "timedelta"),
        ("void.npy", "'|V8'", "void"),
        ("f16.npy", "'<f16'", "16-byte floating point"),
        ("i3.npy", "'<i3'", "3-byte signed integer"),
        ("b2.npy", "'<b2'", "2-byte bool"),
        ("junk.npy", "'<z4'", "unknown"),
        ("struct.npy", "[('a', '<i4'), ('b', '<f4')]", "structured"),
    ] {
        let p = write(&dir, name, &npy_bytes(1, &d(descr), &[0u8; 64]));
        let mut needles = vec![descr, what];
        needles.extend(accepted);
        assert_invalid(load_npy(&p), &p, &needles);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------
// NpyWriter
// ---------------------------------------------------------------------------------

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn npy_writer_pushes_equal_save_npy() {
    let dir = temp_dir("npy-writer");
    let data: Vec<f32> = (0..18).map(|i| i as f32 * 0.75 - 4.0).collect();
    let whole = dir.join("whole.npy");
    save_npy(&whole, 6, 3, &data).unwrap();

    let streamed = dir.join("streamed.npy");
    let mut w = NpyWriter::create(&streamed, 6, 3).unwrap();
    // Nothing at the target until finish; the temporary file sits beside it.
    assert!(!streamed.exists());
    let names = dir_names(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with(".streamed.npy.") && names[0].ends_with(".tmp"),
        "{names:?}"
    );
    for (a, b) in [(0, 3), (3, 12), (12, 12), (12, 18)] {
        w.push(&data[a..b]).unwrap();
    }
    assert_eq!(w.rows_written(), 6);
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(&streamed).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    assert_eq!(
        load_npy(&streamed).unwrap(),
        Matrix::new(6, 3, data).unwrap()
    );
    assert_eq!(dir_names(&dir), vec!["streamed.npy", "whole.npy"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_writer_dropped_unfinished_leaves_the_target_alone() {
    let dir = temp_dir("npy-writer-drop");
    let p = dir.join("out.npy");
    save_npy(&p, 2, 2, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let before = std::fs::read(&p).unwrap();
    {
        let mut w = NpyWriter::create(&p, 1000, 2).unwrap();
        w.push(&[5.0; 200]).unwrap();
        assert_eq!(dir_names(&dir).len(), 2);
        // Dropped here, as by an error or an interrupted run.
    }
    assert_eq!(std::fs::read(&p).unwrap(), before);
    assert_eq!(dir_names(&dir), vec!["out.npy"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_writer_refuses_wrong_row_counts_and_bad_values() {
    let dir = temp_dir("npy-writer-bad");
    let p = dir.join("out.npy");
    save_npy(&p, 1, 3, &[7.0, 8.0, 9.0]).unwrap();
    let before = std::fs::read(&p).unwrap();
    let shape_err = |r: wmvl::Result<()>, needles: &[&str]| match r {
        Err(Error::Shape(m)) => {
            assert!(m.contains("out.npy"), "{m}");
            for n in needles {
                assert!(m.contains(n), "message lacks '{n}': {m}");
            }
        }
        other => panic!("expected a Shape error, got {other:?}"),
    };

    let mut w = NpyWriter::create(&p, 4, 3).unwrap();
    // Not whole rows.
    shape_err(w.push(&[1.0; 4]), &["4 values", "3 columns"]);
    w.push(&[1.0; 6]).unwrap();
    // More rows than announced: refused, nothing of it written.
    shape_err(w.push(&[1.0; 9]), &["5 rows", "announced with 4"]);
    assert_eq!(w.rows_written(), 2);
    // NaN / Inf: the row in the whole array (2 pushed before), counting from 1.
    let mut bad = [1.0f32; 6];
    bad[4] = f32::NAN;
    match w.push(&bad) {
        Err(Error::Invalid(m)) => {
            assert!(
                m.contains("out.npy") && m.contains("row 4 column 2") && m.contains("NaN"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    bad[4] = f32::INFINITY;
    assert!(matches!(w.push(&bad), Err(Error::Invalid(m)) if m.contains("row 4 column 2")));
    assert_eq!(w.rows_written(), 2);
    // Fewer rows than announced: finish refuses and the target stays as it was.
    w.push(&[2.0; 3]).unwrap();
    shape_err(w.finish(), &["3 of the announced 4"]);
    assert_eq!(std::fs::read(&p).unwrap(), before);
    assert_eq!(dir_names(&dir), vec!["out.npy"]);

    // save_npy goes through the same checks.
    match save_npy(&p, 1, 3, &[1.0, f32::NEG_INFINITY, 3.0]) {
        Err(Error::Invalid(m)) => assert!(m.contains("row 1 column 2"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&p).unwrap(), before);

    // No columns, or a directory that does not exist: refused before anything is written.
    assert!(matches!(NpyWriter::create(&p, 3, 0), Err(Error::Shape(_))));
    let q = dir.join("missing").join("b.npy");
    match NpyWriter::create(&q, 1, 1) {
        Err(Error::Io(m)) => assert!(m.contains("b.npy") && m.contains("missing"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(dir_names(&dir), vec!["out.npy"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------
// .csv and dispatch
// ---------------------------------------------------------------------------------

#[test]
fn csv_good_inputs() {
    let dir = temp_dir("csv-good");
    let p = write(
        &dir,
        "h.csv",
        "\u{feff}x1, x2\n1,2\n\n  \n3.5, -4e-1\r\n-0,1e3\n".as_bytes(),
    );
    assert_eq!(
        load_csv(&p).unwrap(),
        Matrix {
            rows: 3,
            cols: 2,
            data: vec![1.0, 2.0, 3.5, -0.4, -0.0, 1000.0]
        }
    );
    let p = write(&dir, "plain.CSV", b"1,2,3\n4,5,6");
    let m = load_data(&p).unwrap();
    assert_eq!((m.rows, m.cols), (2, 3));
    assert_eq!(m.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(matches!(m.points2(), Err(Error::Shape(_))));
    let p = write(&dir, "one.csv", b"\n\n7\n");
    assert_eq!(
        load_csv(&p).unwrap(),
        Matrix {
            rows: 1,
            cols: 1,
            data: vec![7.0]
        }
    );
    // Round trip of the toy data through text.
    let pts = Toy::Funnel.sample(500, 9);
    let text: String = pts
        .iter()
        .map(|p| format!("{},{}\n", p[0] as f32, p[1] as f32))
        .collect();
    let p = write(&dir, "funnel.csv", format!("a,b\n{text}").as_bytes());
    assert_eq!(load_csv(&p).unwrap().data, to_f32(&pts));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn csv_bad_inputs() {
    let dir = temp_dir("csv-bad");
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "ragged.csv",
            "x,y\n1,2\n3,4,5\n",
            vec!["line 3", "ragged", "3 columns", "expected 2"],
        ),
        (
            "ragged-short.csv",
            "1,2\n\n3\n",
            vec!["line 3", "1 columns"],
        ),
        (
            "word.csv",
            "x,y\n1,2\n3,abc\n",
            vec!["line 3", "column 2", "not a number", "abc"],
        ),
        (
            "mixed-header.csv",
            "x,2\n1,2\n",
            vec!["line 1", "column 1", "'x'"],
        ),
        (
            "empty-cell.csv",
            "1,2\n,4\n",
            vec!["line 2", "column 1", "empty cell"],
        ),
        (
            "nan.csv",
            "x,y\n1,2\n3,NaN\n",
            vec!["line 3", "data row 2", "column 2", "finite"],
        ),
        (
            "inf.csv",
            "1,2\n-inf,4\n",
            vec!["line 2", "data row 2", "column 1", "inf"],
        ),
        (
            "overflow.csv",
            "1,2\n3,1e40\n",
            vec!["line 2", "column 2", "overflows f32"],
        ),
        ("empty.csv", "", vec!["no data rows"]),
        ("blank.csv", "\n  \n\r\n", vec!["no data rows"]),
        ("header-only.csv", "x,y\n", vec!["no data rows", "header"]),
        (
            "header-width.csv",
            "x,y,z\n1,2\n",
            vec!["line 2", "header on line 1 names 3"],
        ),
    ];
    for (name, text, needles) in cases {
        let p = write(&dir, name, text.as_bytes());
        assert_invalid(load_csv(&p), &p, &needles);
        assert_invalid(load_data(&p), &p, &needles);
    }
    let p = write(&dir, "latin1.csv", b"1,2\n\xff,3\n");
    assert_invalid(load_csv(&p), &p, &["UTF-8"]);
    match load_csv(dir.join("nope.csv")) {
        Err(Error::Io(m)) => assert!(m.contains("nope.csv"), "{m}"),
        other => panic!("{other:?}"),
    }
    let p = write(&dir, "data.txt", b"1,2\n");
    assert_invalid(load_data(&p), &p, &[".npy", ".csv"]);
    let p = write(&dir, "noext", b"1,2\n");
    assert_invalid(load_data(&p), &p, &[".npy", ".csv"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
