//! The exact Fréchet distance between Gaussians (`wmvl::fid`) against closed forms, the
//! Jacobi eigensolver and PSD square root against their defining identities, the Gaussian fit
//! against a known distribution, and FID on samples against its derived expected value.
//!
//! Tolerances: closed forms and identities to 1e-10 – 1e-12 relative (round-off of O(d³)
//! f64 work is ~d·ε ≈ 1e-14); statistical checks at 5 standard errors (or a factor band for
//! FID, whose spread is derived below). All seeds are fixed, so every test is deterministic.

use std::time::Instant;

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

use wmvl::fid::{fid, frechet_distance, sqrtm_psd, sym_eigen, Gaussian};
use wmvl::Error;

fn rng(seed: u64) -> Pcg64 {
    Pcg64::seed_from_u64(seed)
}

/// Uniform on [lo, hi), 53 random bits.
fn uniform(r: &mut Pcg64, lo: f64, hi: f64) -> f64 {
    let u = (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    lo + (hi - lo) * u
}

/// Standard normal by Box–Muller (one of the pair; speed does not matter here).
fn normal(r: &mut Pcg64) -> f64 {
    let u1 = 1.0 - uniform(r, 0.0, 1.0);
    let u2 = uniform(r, 0.0, 1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn random_vec(r: &mut Pcg64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| uniform(r, lo, hi)).collect()
}

/// C = A·B, row-major: A is m × k, B is k × n.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for l in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + l] * b[l * n + j];
            }
        }
    }
    c
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

fn identity(d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        m[i * d + i] = 1.0;
    }
    m
}

fn frob(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// ‖a − b‖_F / ‖b‖_F.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    frob(&diff) / frob(b)
}

fn trace(a: &[f64], d: usize) -> f64 {
    (0..d).map(|i| a[i * d + i]).sum()
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// A random orthogonal d × d matrix: modified Gram–Schmidt (run twice, which makes the
/// columns orthonormal to round-off) on the columns of a Gaussian matrix.
fn random_orthogonal(r: &mut Pcg64, d: usize) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = (0..d)
        .map(|_| (0..d).map(|_| normal(r)).collect())
        .collect();
    for k in 0..d {
        for _ in 0..2 {
            for j in 0..k {
                let dot: f64 = cols[k].iter().zip(&cols[j]).map(|(x, y)| x * y).sum();
                let cj = cols[j].clone();
                for (x, y) in cols[k].iter_mut().zip(&cj) {
                    *x -= dot * y;
                }
            }
        }
        let norm = frob(&cols[k]);
        for x in &mut cols[k] {
            *x /= norm;
        }
    }
    let mut q = vec![0.0; d * d];
    for (j, col) in cols.iter().enumerate() {
        for i in 0..d {
            q[i * d + j] = col[i];
        }
    }
    q
}

/// Q diag(λ) Qᵀ.
fn rotate_diag(q: &[f64], lambda: &[f64]) -> Vec<f64> {
    let d = lambda.len();
    let mut scaled = q.to_vec();
    for i in 0..d {
        for j in 0..d {
            scaled[i * d + j] *= lambda[j];
        }
    }
    symmetrise(matmul(&scaled, &transpose(q, d, d), d, d, d), d)
}

/// (A + Aᵀ)/2: random test matrices built by products are symmetric only to round-off.
fn symmetrise(mut a: Vec<f64>, d: usize) -> Vec<f64> {
    for i in 0..d {
        for j in i + 1..d {
            let s = 0.5 * (a[i * d + j] + a[j * d + i]);
            a[i * d + j] = s;
            a[j * d + i] = s;
        }
    }
    a
}

/// B Bᵀ / k for a Gaussian d × k matrix B: PSD of rank min(d, k), a generic (non-commuting)
/// covariance.
fn random_psd(r: &mut Pcg64, d: usize, k: usize) -> Vec<f64> {
    let b: Vec<f64> = (0..d * k).map(|_| normal(r)).collect();
    let mut c = symmetrise(matmul(&b, &transpose(&b, d, k), d, k, d), d);
    for v in &mut c {
        *v /= k as f64;
    }
    c
}

fn gaussian(mean: Vec<f64>, cov: Vec<f64>) -> Gaussian {
    Gaussian::new(mean, cov).expect("valid Gaussian")
}

/// `n` samples of N(mean, L Lᵀ), row-major: x = mean + L z.
fn sample(r: &mut Pcg64, mean: &[f64], l: &[f64], n: usize) -> Vec<f64> {
    let d = mean.len();
    let mut out = Vec::with_capacity(n * d);
    let mut z = vec![0.0; d];
    for _ in 0..n {
        for zi in &mut z {
            *zi = normal(r);
        }
        for i in 0..d {
            out.push(mean[i] + (0..d).map(|k| l[i * d + k] * z[k]).sum::<f64>());
        }
    }
    out
}

fn diag(v: &[f64]) -> Vec<f64> {
    let d = v.len();
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        m[i * d + i] = v[i];
    }
    m
}

// ---------------------------------------------------------------------------------------
// Closed forms

#[test]
fn identical_gaussians_are_at_distance_zero() {
    let mut r = rng(1);
    for d in [1, 5, 20] {
        let cov = random_psd(&mut r, d, 2 * d + 3);
        let mean = random_vec(&mut r, d, -3.0, 3.0);
        let a = gaussian(mean.clone(), cov.clone());
        let b = gaussian(mean, cov.clone());
        let fd = frechet_distance(&a, &b).unwrap();
        let scale = 2.0 * trace(&cov, d);
        println!("d = {d}: FD(a, a) = {fd:e} (scale {scale:.3})");
        assert!(
            fd >= 0.0 && fd <= 1e-10 * scale,
            "d = {d}: FD(a, a) = {fd:e}"
        );
    }
}

#[test]
fn equal_covariances_leave_the_mean_term() {
    let mut r = rng(2);
    let d = 20;
    let cov = random_psd(&mut r, d, 40);
    let (m1, m2) = (
        random_vec(&mut r, d, -2.0, 2.0),
        random_vec(&mut r, d, -2.0, 2.0),
    );
    let want = sq_dist(&m1, &m2);
    let fd = frechet_distance(&gaussian(m1, cov.clone()), &gaussian(m2, cov.clone())).unwrap();
    let err = (fd - want).abs() / (want + 2.0 * trace(&cov, d));
    println!("FD = {fd}, ‖Δμ‖² = {want}, relative error {err:e}");
    assert!(err <= 1e-12, "FD {fd} vs ‖Δμ‖² {want}");
}

#[test]
fn one_dimensional_closed_form() {
    // FD(N(μ₁, σ₁²), N(μ₂, σ₂²)) = (μ₁ − μ₂)² + (σ₁ − σ₂)², including a point mass (σ = 0).
    let cases = [
        (0.0, 1.0, 0.0, 1.0),
        (1.5, 0.3, -2.0, 4.0),
        (0.0, 0.0, 1.0, 2.0),
        (3.0, 1e-3, 3.0, 1e3),
        (-1.0, 2.0, 0.5, 2.0),
    ];
    for (m1, s1, m2, s2) in cases {
        let fd = frechet_distance(
            &gaussian(vec![m1], vec![s1 * s1]),
            &gaussian(vec![m2], vec![s2 * s2]),
        )
        .unwrap();
        let want: f64 = (m1 - m2).powi(2) + (s1 - s2).powi(2);
        assert!(
            (fd - want).abs() <= 1e-13 * (want + s1 * s1 + s2 * s2),
            "N({m1}, {s1}²) vs N({m2}, {s2}²): FD {fd}, want {want}"
        );
    }
}

/// ‖Δμ‖² + Σᵢ (√aᵢ − √bᵢ)²: the distance for commuting (simultaneously diagonal) covariances.
fn diagonal_answer(m1: &[f64], m2: &[f64], a: &[f64], b: &[f64]) -> f64 {
    sq_dist(m1, m2)
        + a.iter()
            .zip(b)
            .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
            .sum::<f64>()
}

#[test]
fn diagonal_covariances_closed_form() {
    let mut r = rng(3);
    let d = 30;
    let (m1, m2) = (
        random_vec(&mut r, d, -1.0, 1.0),
        random_vec(&mut r, d, -1.0, 1.0),
    );
    let mut a = random_vec(&mut r, d, 0.1, 5.0);
    let b = random_vec(&mut r, d, 0.1, 5.0);
    a[7] = 0.0; // a degenerate direction
    let want = diagonal_answer(&m1, &m2, &a, &b);
    let fd = frechet_distance(&gaussian(m1, diag(&a)), &gaussian(m2, diag(&b))).unwrap();
    println!("diagonal: FD = {fd}, closed form {want}");
    assert!((fd - want).abs() <= 1e-12 * want, "FD {fd}, want {want}");
}

#[test]
fn common_rotation_keeps_the_diagonal_answer() {
    // Σ₁ = Q A Qᵀ, Σ₂ = Q B Qᵀ commute but are full matrices: FD is rotation invariant.
    let mut r = rng(4);
    let d = 30;
    let (m1, m2) = (
        random_vec(&mut r, d, -1.0, 1.0),
        random_vec(&mut r, d, -1.0, 1.0),
    );
    let a = random_vec(&mut r, d, 0.1, 5.0);
    let b = random_vec(&mut r, d, 0.1, 5.0);
    let q = random_orthogonal(&mut r, d);
    let qtq = matmul(&transpose(&q, d, d), &q, d, d, d);
    assert!(rel_diff(&qtq, &identity(d)) < 1e-14, "Q is not orthogonal");
    let want = diagonal_answer(&m1, &m2, &a, &b);
    let fd = frechet_distance(
        &gaussian(m1, rotate_diag(&q, &a)),
        &gaussian(m2, rotate_diag(&q, &b)),
    )
    .unwrap();
    let err = (fd - want).abs() / want;
    println!("rotated: FD = {fd}, closed form {want}, relative error {err:e}");
    assert!(err <= 1e-10, "FD {fd}, want {want}");
}

/// √M of a 2 × 2 PSD matrix in closed form: (M + sI)/t, s = √det M, t = √(tr M + 2s).
fn sqrt_2x2(m: &[f64]) -> Vec<f64> {
    let s = (m[0] * m[3] - m[1] * m[2]).sqrt();
    let t = (m[0] + m[3] + 2.0 * s).sqrt();
    vec![(m[0] + s) / t, m[1] / t, m[2] / t, (m[3] + s) / t]
}

#[test]
fn non_commuting_2x2_closed_form() {
    let mut r = rng(5);
    for case in 0..20 {
        let c1 = random_psd(&mut r, 2, 3);
        let c2 = random_psd(&mut r, 2, 3);
        let (m1, m2) = (
            random_vec(&mut r, 2, -1.0, 1.0),
            random_vec(&mut r, 2, -1.0, 1.0),
        );
        let commutator: Vec<f64> = matmul(&c1, &c2, 2, 2, 2)
            .iter()
            .zip(matmul(&c2, &c1, 2, 2, 2))
            .map(|(x, y)| x - y)
            .collect();
        assert!(
            frob(&commutator) > 1e-3 * frob(&c1) * frob(&c2),
            "case {case} commutes"
        );

        let s1 = sqrt_2x2(&c1);
        assert!(
            rel_diff(&sqrtm_psd(&c1, 2).unwrap(), &s1) < 1e-13,
            "case {case}: √Σ₁"
        );
        let m = matmul(&matmul(&s1, &c2, 2, 2, 2), &s1, 2, 2, 2);
        let tr_sqrt = trace(&sqrt_2x2(&m), 2);
        let scale = sq_dist(&m1, &m2) + trace(&c1, 2) + trace(&c2, 2);
        let want = scale - 2.0 * tr_sqrt;
        let fd = frechet_distance(&gaussian(m1, c1.clone()), &gaussian(m2, c2.clone())).unwrap();
        assert!(
            (fd - want).abs() <= 1e-12 * scale,
            "case {case}: FD {fd}, closed form {want}"
        );
    }
}

#[test]
fn distance_is_symmetric_and_nonnegative() {
    let mut r = rng(6);
    let d = 20;
    for seed_case in 0..5 {
        let c1 = random_psd(&mut r, d, 25);
        let c2 = random_psd(&mut r, d, 60);
        let (m1, m2) = (
            random_vec(&mut r, d, -0.3, 0.3),
            random_vec(&mut r, d, -0.3, 0.3),
        );
        let a = gaussian(m1, c1);
        let b = gaussian(m2, c2);
        let ab = frechet_distance(&a, &b).unwrap();
        let ba = frechet_distance(&b, &a).unwrap();
        println!("case {seed_case}: FD(a, b) = {ab}, FD(b, a) = {ba}");
        assert!(ab > 0.0 && ba > 0.0, "case {seed_case}: FD {ab}, {ba}");
        assert!(
            (ab - ba).abs() <= 1e-10 * ab,
            "case {seed_case}: FD(a,b) {ab} ≠ FD(b,a) {ba}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Eigen-decomposition and square root

/// (‖A − VΛVᵀ‖/‖A‖, max|VᵀV − I|) of sym_eigen on `a`, checking the ascending order.
fn eigen_errors(a: &[f64], d: usize) -> (f64, f64) {
    let (values, vectors) = sym_eigen(a, d).unwrap();
    assert_eq!((values.len(), vectors.len()), (d, d * d));
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "not ascending");
    let back = matmul(
        &matmul(&vectors, &diag(&values), d, d, d),
        &transpose(&vectors, d, d),
        d,
        d,
        d,
    );
    let vtv = matmul(&transpose(&vectors, d, d), &vectors, d, d, d);
    let ortho = vtv
        .iter()
        .zip(identity(d))
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    (rel_diff(&back, a), ortho)
}

fn random_symmetric(r: &mut Pcg64, d: usize) -> Vec<f64> {
    symmetrise(random_vec(r, d * d, -1.0, 1.0), d)
}

#[test]
fn sym_eigen_reconstructs_with_orthonormal_vectors() {
    let mut r = rng(7);
    for d in [1, 2, 50] {
        for _ in 0..3 {
            let a = random_symmetric(&mut r, d);
            let (recon, ortho) = eigen_errors(&a, d);
            println!("d = {d}: ‖A − VΛVᵀ‖/‖A‖ = {recon:e}, max|VᵀV − I| = {ortho:e}");
            assert!(
                recon <= 1e-12 && ortho <= 1e-12,
                "d = {d}: {recon:e}, {ortho:e}"
            );
        }
    }
}

#[test]
fn sym_eigen_finds_a_known_spectrum() {
    // Eigenvalues over six decades with a repeated pair, hidden by a random rotation.
    let mut r = rng(8);
    let d = 40;
    let mut lambda: Vec<f64> = (0..d)
        .map(|i| 10f64.powf(-3.0 + 6.0 * i as f64 / (d - 1) as f64))
        .collect();
    lambda[10] = -2.5;
    lambda[11] = 0.75;
    lambda[12] = 0.75;
    let a = rotate_diag(&random_orthogonal(&mut r, d), &lambda);
    let (values, _) = sym_eigen(&a, d).unwrap();
    lambda.sort_by(f64::total_cmp);
    let err = values
        .iter()
        .zip(&lambda)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    println!("known spectrum: max |λ − λ_true| = {err:e} (max λ = 1e3)");
    assert!(err <= 1e-12 * 1e3, "eigenvalue error {err:e}");
}

#[test]
fn sym_eigen_at_d256_is_accurate_and_fast() {
    let mut r = rng(9);
    let d = 256;
    let a = random_symmetric(&mut r, d);
    let start = Instant::now();
    let (values, _) = sym_eigen(&a, d).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (recon, ortho) = eigen_errors(&a, d);
    // Tr A = Σλ is a cheap independent check of the eigenvalues.
    let trace_err = (values.iter().sum::<f64>() - trace(&a, d)).abs() / frob(&a);
    println!(
        "d = 256: {secs:.3} s, ‖A − VΛVᵀ‖/‖A‖ = {recon:e}, max|VᵀV − I| = {ortho:e}, \
         |Σλ − Tr A|/‖A‖ = {trace_err:e}"
    );
    assert!(recon <= 1e-12 && ortho <= 1e-12 && trace_err <= 1e-12);
}

#[test]
fn sqrtm_psd_squares_back() {
    let mut r = rng(10);
    for d in [1, 5, 40] {
        let a = random_psd(&mut r, d, d + 5);
        let s = sqrtm_psd(&a, d).unwrap();
        assert_eq!(s, transpose(&s, d, d), "d = {d}: √A not symmetric");
        let err = rel_diff(&matmul(&s, &s, d, d, d), &a);
        let (values, _) = sym_eigen(&s, d).unwrap();
        println!(
            "d = {d}: ‖S² − A‖/‖A‖ = {err:e}, min λ(S) = {:e}",
            values[0]
        );
        assert!(err <= 1e-12, "d = {d}: ‖S² − A‖/‖A‖ = {err:e}");
        assert!(values[0] > 0.0, "d = {d}: √A of a PD matrix is not PD");
    }
}

#[test]
fn rank_deficient_psd_matrices_work() {
    // A = B Bᵀ with B 10 × 3: rank 3, seven eigenvalues that are 0 in exact arithmetic.
    let mut r = rng(11);
    let (d, k) = (10, 3);
    let b: Vec<f64> = (0..d * k).map(|_| normal(&mut r)).collect();
    let a = symmetrise(matmul(&b, &transpose(&b, d, k), d, k, d), d);
    let (values, _) = sym_eigen(&a, d).unwrap();
    let top = values[d - 1];
    assert!(
        values[..d - k].iter().all(|v| v.abs() <= 1e-14 * top),
        "{values:?}"
    );

    let s = sqrtm_psd(&a, d).unwrap();
    let err = rel_diff(&matmul(&s, &s, d, d, d), &a);
    // Tr √A = Σ √λ over the nonzero eigenvalues, which BᵀB (3 × 3, full rank) shares. The
    // clipped round-off eigenvalues each add up to √(d·ε·‖A‖) to Tr √A: the √ε floor.
    let (gram_values, _) = sym_eigen(&matmul(&transpose(&b, d, k), &b, k, d, k), k).unwrap();
    let want: f64 = gram_values.iter().map(|v| v.sqrt()).sum();
    let tr_err = (trace(&s, d) - want).abs() / want;
    println!("rank 3 of 10: ‖S² − A‖/‖A‖ = {err:e}, Tr √A relative error {tr_err:e}");
    assert!(err <= 1e-12, "‖S² − A‖/‖A‖ = {err:e}");
    assert!(tr_err <= 1e-6, "Tr √A relative error {tr_err:e}");

    // The distance of a rank-deficient Gaussian to itself and to a full-rank one.
    let mean = random_vec(&mut r, d, -1.0, 1.0);
    let g = gaussian(mean.clone(), a.clone());
    let self_fd = frechet_distance(&g, &g).unwrap();
    let full = gaussian(mean, random_psd(&mut r, d, 20));
    let (ab, ba) = (
        frechet_distance(&g, &full).unwrap(),
        frechet_distance(&full, &g).unwrap(),
    );
    println!("rank 3: FD(a, a) = {self_fd:e}, FD(a, b) = {ab}, FD(b, a) = {ba}");
    assert!(self_fd <= 1e-6 * trace(&a, d), "FD(a, a) = {self_fd:e}");
    assert!(ab > 0.0 && (ab - ba).abs() <= 1e-6 * ab, "{ab} vs {ba}");
}

#[test]
fn eigen_and_sqrt_refuse_bad_matrices() {
    let msg = |e: Error| e.to_string();
    let e = sym_eigen(&[1.0, 2.0, 3.0], 2).unwrap_err();
    assert!(matches!(e, Error::Shape(_)) && msg(e).contains("2×2"));
    let e = sym_eigen(&[1.0, 2.0, 0.0, 1.0], 2).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && msg(e).contains("not symmetric"));
    let e = sym_eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2).unwrap_err();
    assert!(msg(e).contains("NaN"));
    // Eigenvalues 3 and −1: indefinite, far beyond round-off.
    let e = sqrtm_psd(&[1.0, 2.0, 2.0, 1.0], 2).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && msg(e.clone()).contains("positive semi-definite"));
    // A round-off-sized negative eigenvalue is clipped, not refused.
    let s = sqrtm_psd(&[1.0, 0.0, 0.0, -1e-17], 2).unwrap();
    assert_eq!(s, vec![1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn frechet_distance_refuses_mismatches() {
    let a = gaussian(vec![0.0; 2], identity(2));
    let b = gaussian(vec![0.0; 3], identity(3));
    let e = frechet_distance(&a, &b).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
    assert!(e.to_string().contains("dimensions 2 and 3"), "{e}");
    let e = Gaussian::new(vec![0.0; 2], identity(3)).unwrap_err();
    assert!(e.to_string().contains("covariance has 9 entries"), "{e}");
    let bent = Gaussian {
        mean: vec![0.0; 2],
        cov: vec![1.0, 0.0, 0.0, -1.0],
        dim: 2,
        n: 0,
    };
    let e = frechet_distance(&a, &bent).unwrap_err();
    assert!(e.to_string().contains("covariance 2"), "{e}");
    let e = frechet_distance(&bent, &a).unwrap_err();
    assert!(e.to_string().contains("covariance 1"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Gaussian::fit

#[test]
fn fit_recovers_a_known_gaussian() {
    let mut r = rng(12);
    let (d, n) = (3, 200_000);
    let mean = [1.0, -2.0, 0.5];
    let l = [1.0, 0.0, 0.0, 0.6, 0.8, 0.0, -0.5, 0.3, 2.0];
    let cov = matmul(&l, &transpose(&l, d, d), d, d, d);
    let x = sample(&mut r, &mean, &l, n);
    let g = Gaussian::fit(&x, n, d).unwrap();
    assert_eq!((g.dim, g.n), (d, n));
    // Standard errors: mean_i ± √(Σ_ii/n); Σ̂_ij ± √((Σ_ij² + Σ_ii Σ_jj)/(n − 1)) for
    // Gaussian data. 5 SE over 12 numbers: a fresh seed fails with probability ~1e-5.
    for i in 0..d {
        let se = (cov[i * d + i] / n as f64).sqrt();
        let z = (g.mean[i] - mean[i]) / se;
        assert!(z.abs() < 5.0, "mean[{i}] = {} off by {z:.1} SE", g.mean[i]);
        for j in 0..d {
            let (cij, cii, cjj) = (cov[i * d + j], cov[i * d + i], cov[j * d + j]);
            let se = ((cij * cij + cii * cjj) / (n - 1) as f64).sqrt();
            let z = (g.cov[i * d + j] - cij) / se;
            assert!(
                z.abs() < 5.0,
                "cov[{i}][{j}] = {} off by {z:.1} SE",
                g.cov[i * d + j]
            );
        }
    }
}

#[test]
fn fit_is_unbiased_and_exact_on_a_small_case() {
    // Rows (0, 1), (2, 1), (4, 7): mean (2, 3); centred (−2, −2), (0, −2), (2, 4);
    // cross products summed (8, 12; 12, 24), divided by n − 1 = 2.
    let g = Gaussian::fit(&[0.0, 1.0, 2.0, 1.0, 4.0, 7.0], 3, 2).unwrap();
    assert_eq!(g.mean, vec![2.0, 3.0]);
    assert_eq!(g.cov, vec![4.0, 6.0, 6.0, 12.0]);
}

#[test]
fn fit_is_stable_under_a_large_offset() {
    // Centring first keeps the covariance of data at 10⁶ ± 1 as accurate as at 0 ± 1; the
    // one-pass E[xxᵀ] − E[x]E[x]ᵀ (computed here too, to show the test can tell) does not.
    let mut r = rng(13);
    let (d, n) = (2, 50_000);
    let l = [1.0, 0.0, 0.5, 0.7];
    let x = sample(&mut r, &[0.0, 0.0], &l, n);
    let offset = 1e6;
    let shifted: Vec<f64> = x.iter().map(|v| v + offset).collect();
    let g0 = Gaussian::fit(&x, n, d).unwrap();
    let g1 = Gaussian::fit(&shifted, n, d).unwrap();
    let err = rel_diff(&g1.cov, &g0.cov);

    let nf = n as f64;
    let (mut s, mut ss) = (0.0, 0.0);
    for row in shifted.chunks_exact(d) {
        s += row[0];
        ss += row[0] * row[0];
    }
    let naive = (ss - s * s / nf) / (nf - 1.0);
    let naive_err = (naive - g0.cov[0]).abs() / g0.cov[0];
    println!("offset 1e6: two-pass covariance error {err:e}, one-pass {naive_err:e}");
    assert!(err <= 1e-8, "two-pass covariance error {err:e}");
    assert!(
        naive_err > 1e3 * err,
        "the one-pass formula should fail here"
    );
}

#[test]
fn fit_mean_keeps_f64_accuracy_on_long_columns() {
    // 2²² copies of 0.1: a running sum drifts by up to n·ε relative, the blocked pairwise sum
    // by at most (block + log₂ n)·ε, and the systematic rounding of 0.1 + 0.1 + … reaches a
    // good part of that in the leaf blocks (measured: 10.6ε for pairwise, 2.8e5ε running).
    let n = 1 << 22;
    let x = vec![0.1; n];
    let g = Gaussian::fit(&x, n, 1).unwrap();
    let err = (g.mean[0] - 0.1).abs() / 0.1;
    let naive = x.iter().sum::<f64>() / n as f64;
    let naive_err = (naive - 0.1).abs() / 0.1;
    println!("mean of 2²² × 0.1: pairwise error {err:e}, running sum {naive_err:e}");
    assert!(err <= 32.0 * f64::EPSILON, "mean error {err:e}");
    assert!(
        naive_err > 100.0 * f64::EPSILON,
        "the running sum should drift here"
    );
    assert!(g.cov[0].abs() <= 1e-30, "variance {}", g.cov[0]);
}

#[test]
fn fit_refuses_bad_inputs() {
    let cases: [(&[f64], usize, usize, &str); 5] = [
        (&[1.0, 2.0], 1, 2, "at least 2 rows, got 1"),
        (
            &[1.0, 2.0, 3.0],
            2,
            2,
            "3 feature values are not 2 rows × 2 columns",
        ),
        (&[], 0, 0, "dimension is 0"),
        (&[1.0, 2.0, f64::NAN, 4.0], 2, 2, "NaN at row 1, column 0"),
        (
            &[1.0, f64::INFINITY, 3.0, 4.0],
            2,
            2,
            "inf at row 0, column 1",
        ),
    ];
    for (x, rows, dim, want) in cases {
        let e = Gaussian::fit(x, rows, dim).unwrap_err();
        assert!(
            matches!(e, Error::Shape(_) | Error::Invalid(_)),
            "{rows}×{dim}: {e:?}"
        );
        assert!(
            e.to_string().contains(want),
            "{rows}×{dim}: '{e}' lacks '{want}'"
        );
    }
    let e = fid(&[0.0; 4], 2, &[0.0; 6], 2, 2).unwrap_err();
    assert!(e.to_string().contains("6 feature values"), "{e}");
}

// ---------------------------------------------------------------------------------------
// FID on samples

/// Expected FID of two independent n-sample sets from N(μ, diag(s)), to leading order in 1/n.
///
/// Mean term: m̂₁ − m̂₂ ~ N(0, 2Σ/n), so E‖m̂₁ − m̂₂‖² = 2 Tr Σ / n.
/// Covariance term: Tr(A + B − 2(AB)^{1/2}) is the squared Bures distance, whose second-order
/// expansion at Σ = diag(s) is ½ Σᵢⱼ Xᵢⱼ² / (sᵢ + sⱼ) for B − A = X (in 1-D:
/// (√s − √(s+x))² ≈ x²/(4s)). With X = Σ̂₁ − Σ̂₂, E Xᵢⱼ² = 2 Var Σ̂ᵢⱼ = 2(sᵢsⱼ + δᵢⱼsᵢ²)/(n − 1),
/// so E = Σᵢⱼ (sᵢsⱼ + δᵢⱼsᵢ²) / ((n − 1)(sᵢ + sⱼ)); for Σ = σ²I that is σ² d(d+1)/(2(n−1)).
/// Altogether O(d²/n): the bias that makes FID depend on the sample size.
fn expected_same_distribution_fid(s: &[f64], n: usize) -> f64 {
    let mean_term = 2.0 * s.iter().sum::<f64>() / n as f64;
    let mut cov_term = 0.0;
    for (i, si) in s.iter().enumerate() {
        for (j, sj) in s.iter().enumerate() {
            let diag = if i == j { si * si } else { 0.0 };
            cov_term += (si * sj + diag) / (si + sj);
        }
    }
    mean_term + cov_term / (n - 1) as f64
}

#[test]
fn fid_of_one_distribution_is_small_and_shrinks_with_n() {
    // d = 8: FID is a weighted sum of ~d + d(d+1)/2 = 44 squared Gaussians, so one draw
    // spreads by ~√(2/44) ≈ 21 % of its mean and an average of 4 by ~11 %; the band
    // [0.6, 1.5] × expected is ~4 such spreads either side.
    let d = 8;
    let s: Vec<f64> = (0..d).map(|i| 0.5 + 0.25 * i as f64).collect();
    let l = diag(&s.iter().map(|v| v.sqrt()).collect::<Vec<_>>());
    let mean = vec![0.3; d];
    let mut r = rng(14);
    let mut last = f64::INFINITY;
    for n in [500, 2000, 8000, 32000] {
        let reps = 4;
        let mut total = 0.0;
        for _ in 0..reps {
            let a = sample(&mut r, &mean, &l, n);
            let b = sample(&mut r, &mean, &l, n);
            total += fid(&a, n, &b, n, d).unwrap();
        }
        let avg = total / reps as f64;
        let want = expected_same_distribution_fid(&s, n);
        println!(
            "n = {n}: mean FID {avg:.3e}, expected {want:.3e} (ratio {:.2})",
            avg / want
        );
        assert!(
            avg <= 1.5 * want,
            "n = {n}: FID {avg:e} above 1.5 × {want:e}"
        );
        assert!(
            avg >= 0.6 * want,
            "n = {n}: FID {avg:e} below 0.6 × {want:e}"
        );
        assert!(
            avg < last,
            "n = {n}: FID {avg:e} did not shrink from {last:e}"
        );
        last = avg;
    }
}

#[test]
fn fid_grows_monotonically_with_a_mean_shift() {
    // Shifting one sample set by δu (‖u‖ = 1) leaves its covariance unchanged, so
    // FID(δ) − FID(0) = δ² + 2δ⟨m̂₁ − m̂₂, u⟩, where ⟨m̂₁ − m̂₂, u⟩ ~ N(0, 2uᵀΣu/n).
    let (d, n) = (8, 5000);
    let mut r = rng(15);
    let s: Vec<f64> = (0..d).map(|i| 1.0 + 0.1 * i as f64).collect();
    let l = diag(&s.iter().map(|v| v.sqrt()).collect::<Vec<_>>());
    let a = sample(&mut r, &vec![0.0; d], &l, n);
    let b = sample(&mut r, &vec![0.0; d], &l, n);
    let u: Vec<f64> = (0..d).map(|_| 1.0 / (d as f64).sqrt()).collect();
    let se = (2.0 * u.iter().zip(&s).map(|(ui, si)| ui * ui * si).sum::<f64>() / n as f64).sqrt();
    let base = fid(&a, n, &b, n, d).unwrap();
    let mut last = base;
    for delta in [0.5, 1.0, 2.0] {
        let shifted: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(k, v)| v + delta * u[k % d])
            .collect();
        let f = fid(&a, n, &shifted, n, d).unwrap();
        let excess = f - base - delta * delta;
        println!("δ = {delta}: FID {f:.5} (FID(0) = {base:.5}, δ² excess {excess:+.2e})");
        assert!(f > last, "δ = {delta}: FID {f} not above {last}");
        assert!(
            excess.abs() <= 2.0 * delta * 5.0 * se,
            "δ = {delta}: excess {excess:e}"
        );
        last = f;
    }
}
