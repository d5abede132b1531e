//! Philox4x32-10 against the Random123 known-answer vectors; the GPU streams against the
//! CPU reference (`rng::reference_draw`); reproducibility; and the statistics of large GPU
//! draws (mean, variance, Kolmogorov–Smirnov) with tolerances derived from standard errors.
//!
//! All seeds are fixed, so each statistical test is deterministic: it was checked to pass
//! once and keeps passing unless the generator changes. With 4-SE bounds and KS at α = 1%,
//! a correct generator with a fresh seed would fail a given check with probability ≲ 1%.

use std::sync::OnceLock;

use wmvl::backend::{Backend, RandomFill};
use wmvl::gpu::Gpu;
use wmvl::rng::{philox4x32, reference_draw, to_unit, Dist, Rng};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// `n` numbers of draw (seed, stream) made on the GPU, read back as f64.
fn gpu_draw(n: usize, dist: Dist, seed: u64, stream: u64) -> Vec<f64> {
    let t = gpu().random(1, n, dist, seed, stream).expect("random fill");
    assert_eq!(gpu().shape(&t), (1, n));
    gpu()
        .read(&t)
        .expect("read")
        .into_iter()
        .map(f64::from)
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------
// Philox known answers (Random123 kat_vectors, philox4x32 with 10 rounds)

#[test]
fn philox_known_answer_vectors() {
    let kats: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0; 4],
            [0; 2],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [0xffffffff; 4],
            [0xffffffff; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (ctr, key, want) in kats {
        assert_eq!(
            philox4x32(ctr, key),
            want,
            "philox4x32({ctr:08x?}, {key:08x?})"
        );
    }
}

/// The GPU's Philox: draw (seed 0, stream 0) block 0 is counter 0 / key 0, the first
/// known-answer vector; its uniforms are the top 24 bits of those words.
#[test]
fn gpu_philox_matches_known_answer() {
    let got = gpu_draw(4, Dist::UNIT, 0, 0);
    let want: Vec<f64> = [0x6627e8d5u32, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        .map(|w| to_unit(w) as f64)
        .to_vec();
    assert_eq!(got, want);
}

#[test]
fn to_unit_maps_24_bits_into_the_open_interval() {
    assert_eq!(to_unit(0), 2f32.powi(-25)); // bin centre of the lowest 24-bit value
    assert_eq!(to_unit(0xff), to_unit(0)); // the low 8 bits are dropped
    assert_eq!(to_unit(0x100), 3.0 * 2f32.powi(-25));
    assert_eq!(to_unit(0x8000_0000), 0.5 + 2f32.powi(-25));
    // The top bin's centre 1 − 2⁻²⁵ is not an f32 (it would round to 1.0): clamped to
    // the largest f32 below 1.
    assert_eq!(to_unit(0xffff_fe00), 1.0 - 3.0 * 2f32.powi(-25));
    assert_eq!(to_unit(u32::MAX), 1.0 - 2f32.powi(-24));
    assert_eq!(to_unit(0xffff_ff00), 1.0 - 2f32.powi(-24));
}

/// Draw (seed 1, stream 349317) is the first stream of seed 1 whose block 0 has a word in
/// the top 24-bit bin (found by search): the GPU must not return 1.0 there either.
#[test]
fn gpu_uniform_never_returns_one() {
    let r = philox4x32([0, 349_317, 0, 0], [1, 0]);
    assert_eq!(
        r[3] >> 8,
        0xff_ffff,
        "the chosen draw no longer hits the top bin"
    );
    let g = gpu_draw(4, Dist::UNIT, 1, 349_317);
    assert_eq!(g, reference_draw(4, Dist::UNIT, 1, 349_317));
    assert!(
        g.iter().all(|&u| u > 0.0 && u < 1.0),
        "uniforms {g:?} leave (0, 1)"
    );
}

// ---------------------------------------------------------------------------------------
// GPU stream = CPU reference

/// The documented layout, computed here from `philox4x32` directly (independently of
/// `reference_draw`): block t of draw (seed, stream) is
/// philox((t, stream lo, stream hi, 0), (seed lo, seed hi)).
fn uniform_from_layout(n: usize, seed: u64, stream: u64) -> Vec<f64> {
    let mut out = Vec::new();
    for t in 0..n.div_ceil(4) {
        let ctr = [t as u32, stream as u32, (stream >> 32) as u32, 0];
        let r = philox4x32(ctr, [seed as u32, (seed >> 32) as u32]);
        out.extend(r.map(|x| to_unit(x) as f64));
    }
    out.truncate(n);
    out
}

#[test]
fn gpu_uniform_stream_equals_reference() {
    // Lengths that are not multiples of 4 (the block size) or of 256 (the workgroup),
    // and seeds/streams with both 32-bit halves in use.
    let draws = [
        (1, 7, 0),
        (3, 7, 1),
        (5, 0xdead_beef_0000_0001, 2),
        (1023, 42, 1 << 32),
        (4097, u64::MAX, u64::MAX - 5),
    ];
    for (n, seed, stream) in draws {
        let g = gpu_draw(n, Dist::UNIT, seed, stream);
        let reference = reference_draw(n, Dist::UNIT, seed, stream);
        assert_eq!(
            reference,
            uniform_from_layout(n, seed, stream),
            "reference_draw layout, n={n}"
        );
        // Both sides compute the same f32 value from the same 24 bits: identical (< 1e-7).
        let d = max_abs_diff(&g, &reference);
        assert!(
            d < 1e-7,
            "uniform n={n} seed={seed:#x} stream={stream:#x}: max |gpu - ref| = {d:e}"
        );
        assert!(g.iter().all(|&u| u > 0.0 && u < 1.0));
    }
    // A scaled uniform: the GPU computes u·(hi − lo) + lo in f32, the reference in f64, so
    // they differ by f32 rounding of values of magnitude ≤ 3 (ulp 2.4e-7).
    let dist = Dist::Uniform { lo: -2.0, hi: 3.0 };
    let (g, reference) = (
        gpu_draw(999, dist, 11, 12),
        reference_draw(999, dist, 11, 12),
    );
    let d = max_abs_diff(&g, &reference);
    assert!(d < 1e-6, "uniform(-2, 3): max |gpu - ref| = {d:e}");
    assert!(g.iter().all(|&u| (-2.0..=3.0).contains(&u)));
}

/// Box–Muller in f32 on the GPU vs f64 in the reference: sin/cos/log rounding times a
/// radius ≤ √(−2 ln 2⁻²⁵) ≈ 5.9 stays below 1e-5 absolute, over a whole 2¹⁸ draw.
#[test]
fn gpu_normal_stream_matches_reference() {
    for (n, dist, seed, stream) in [
        (1, Dist::STANDARD_NORMAL, 3, 0),
        (6, Dist::STANDARD_NORMAL, 3, 1),
        (1 << 18, Dist::STANDARD_NORMAL, 2024, 7),
        (
            1001,
            Dist::Normal {
                mean: 1.5,
                std: 0.5,
            },
            5,
            9,
        ),
    ] {
        let g = gpu_draw(n, dist, seed, stream);
        let reference = reference_draw(n, dist, seed, stream);
        let d = max_abs_diff(&g, &reference);
        assert!(d < 1e-5, "normal n={n} {dist:?}: max |gpu - ref| = {d:e}");
    }
}

#[test]
fn draws_are_reproducible_and_streams_differ() {
    for dist in [Dist::UNIT, Dist::STANDARD_NORMAL] {
        let a = gpu_draw(1000, dist, 77, 5);
        assert_eq!(
            a,
            gpu_draw(1000, dist, 77, 5),
            "{dist:?}: same (seed, stream) twice"
        );
        // Another stream, another seed, and the high 32 bits of each must all change the
        // numbers (a packing bug that dropped a half would make some of these equal).
        for (seed, stream) in [(77, 6), (78, 5), (77 + (1 << 32), 5), (77, 5 + (1 << 32))] {
            let b = gpu_draw(1000, dist, seed, stream);
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            assert!(
                same < 10,
                "{dist:?}: (77, 5) and ({seed:#x}, {stream:#x}) share {same} of 1000 values"
            );
        }
    }
}

#[test]
fn rng_hands_out_successive_streams() {
    let mut r = Rng::new(9);
    assert_eq!(r.next_draw(), (9, 1));
    assert_eq!(r.next_draw(), (9, 2));
    assert_eq!(r.next_draw(), (9, 3));
}

// ---------------------------------------------------------------------------------------
// Statistics of large GPU draws

const N: usize = 1 << 18;

/// erf(z) = (2/√π)·e^{−z²}·Σₙ 2ⁿ z^{2n+1} / (1·3·…·(2n+1))  (Abramowitz–Stegun 7.1.6).
/// Every term is positive, so there is no cancellation: ~1e-15 relative for |z| ≤ 6,
/// and 1 − erf(6) ≈ 2e-17 beyond.
fn erf(z: f64) -> f64 {
    if z < 0.0 {
        return -erf(-z);
    }
    if z > 6.0 {
        return 1.0;
    }
    let (mut term, mut sum, mut n) = (z, z, 0.0);
    while term > 1e-17 * sum {
        n += 1.0;
        term *= 2.0 * z * z / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-z * z).exp() * sum
}

/// Standard normal CDF.
fn phi(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn normal_cdf_is_accurate() {
    // Reference values (to 16 digits) of Φ.
    for (x, want) in [
        (0.0, 0.5),
        (1.0, 0.841_344_746_068_542_9),
        (-1.96, 0.024_997_895_148_220_43),
        (2.5, 0.993_790_334_674_223_8),
        (-3.0, 0.001_349_898_031_630_094_6),
        (-5.0, 2.866_515_718_791_939e-7),
        (7.0, 0.999_999_999_998_720_2),
    ] {
        let got = phi(x);
        assert!((got - want).abs() < 1e-13, "Φ({x}) = {got}, want {want}");
    }
}

fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// Kolmogorov–Smirnov statistic D = sup |Fₙ − F|.
fn ks_statistic(x: &[f64], cdf: impl Fn(f64) -> f64) -> f64 {
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.iter()
        .enumerate()
        .map(|(i, &v)| {
            let f = cdf(v);
            ((i + 1) as f64 / n - f).max(f - i as f64 / n)
        })
        .fold(0.0, f64::max)
}

/// Asymptotic KS critical value at α = 1%: P(√n·D > 1.63) ≈ 0.01.
fn ks_critical(n: usize) -> f64 {
    1.63 / (n as f64).sqrt()
}

#[test]
fn gpu_normal_draw_statistics() {
    let x = gpu_draw(N, Dist::STANDARD_NORMAL, 12345, 1);
    let n = N as f64;
    let (mean, var) = mean_var(&x);
    // Sample mean of n standard normals: SE = 1/√n ≈ 0.00195; allow 4 SE.
    let mean_tol = 4.0 / n.sqrt();
    assert!(
        mean.abs() < mean_tol,
        "mean {mean:.5} not within {mean_tol:.5} of 0"
    );
    // Sample variance: Var(s²) = (μ₄ − σ⁴)/n = (3 − 1)/n, SE = √(2/n) ≈ 0.00276; 4 SE.
    let var_tol = 4.0 * (2.0 / n).sqrt();
    assert!(
        (var - 1.0).abs() < var_tol,
        "variance {var:.5} not within {var_tol:.5} of 1"
    );
    let d = ks_statistic(&x, phi);
    assert!(
        d < ks_critical(N),
        "KS statistic {d:.5} ≥ {:.5} against N(0, 1)",
        ks_critical(N)
    );
}

#[test]
fn gpu_uniform_draw_statistics() {
    let x = gpu_draw(N, Dist::UNIT, 54321, 3);
    let n = N as f64;
    let (mean, var) = mean_var(&x);
    // U(0,1) has variance 1/12: SE of the mean = √(1/12n) ≈ 0.00056; 4 SE.
    let mean_tol = 4.0 * (1.0 / (12.0 * n)).sqrt();
    assert!(
        (mean - 0.5).abs() < mean_tol,
        "mean {mean:.5} not within {mean_tol:.5} of 1/2"
    );
    // μ₄ = 1/80, σ⁴ = 1/144: SE of s² = √((1/80 − 1/144)/n) = √(1/180n) ≈ 0.00015; 4 SE.
    let var_tol = 4.0 * (1.0 / (180.0 * n)).sqrt();
    assert!(
        (var - 1.0 / 12.0).abs() < var_tol,
        "variance {var:.6} not within {var_tol:.6} of 1/12"
    );
    let d = ks_statistic(&x, |u| u.clamp(0.0, 1.0));
    assert!(
        d < ks_critical(N),
        "KS statistic {d:.5} ≥ {:.5} against U(0, 1)",
        ks_critical(N)
    );
}

/// The checks above can fail: a 3% too wide normal and a uniform sample tested as a
/// normal are rejected by the same tolerances.
#[test]
fn statistical_checks_reject_wrong_distributions() {
    let n = N as f64;
    let wide = gpu_draw(
        N,
        Dist::Normal {
            mean: 0.0,
            std: 1.03,
        },
        12345,
        1,
    );
    let (_, var) = mean_var(&wide);
    assert!(
        (var - 1.0).abs() > 4.0 * (2.0 / n).sqrt(),
        "variance {var} of N(0, 1.03²) passed as 1"
    );
    // sup |Φ(x/1.03) − Φ(x)| ≈ 0.03·φ(1) ≈ 0.007, twice the critical value.
    assert!(ks_statistic(&wide, phi) > ks_critical(N));
    let uniform = gpu_draw(N, Dist::UNIT, 54321, 3);
    assert!(ks_statistic(&uniform, phi) > ks_critical(N));
    // A shift of 0.02 ≈ 10 SE: rejected whatever the sample mean of the unshifted draw.
    let shifted = gpu_draw(
        N,
        Dist::Normal {
            mean: 0.02,
            std: 1.0,
        },
        12345,
        1,
    );
    let (mean, _) = mean_var(&shifted);
    assert!(
        mean.abs() > 4.0 / n.sqrt(),
        "mean {mean} of N(0.02, 1) passed as 0"
    );
}

#[test]
fn gpu_row_indices_equal_reference_and_are_uniform() {
    let g = gpu();
    // Odd lengths and bounds, both halves of seed and stream in use.
    for &(len, bound, seed, stream) in &[
        (1usize, 1u32, 3u64, 1u64),
        (7, 5, 9, 2),
        (1001, 200, 0xdead_beef_0000_0001, 0x1_0000_0003),
        (4096, 4_000_000, 42, 77),
    ] {
        let idx = g.random_index(len, bound as usize, seed, stream).unwrap();
        assert_eq!(idx.bound(), bound);
        let got = g.read_index(&idx).unwrap();
        assert_eq!(
            got,
            wmvl::rng::reference_index(len, bound, seed, stream),
            "len {len} bound {bound}"
        );
        assert!(got.iter().all(|&i| i < bound));
    }
    // Uniform over the rows: chi-square over 16 rows of 2^16 draws. With 15 degrees of freedom
    // the 99.9% quantile is 37.7; a biased mapping (e.g. a modulo of a small range) fails.
    let (n, rows) = (1usize << 16, 16u32);
    let got = g
        .read_index(&g.random_index(n, rows as usize, 5, 5).unwrap())
        .unwrap();
    let mut counts = vec![0f64; rows as usize];
    for i in got {
        counts[i as usize] += 1.0;
    }
    let expect = n as f64 / rows as f64;
    let chi2: f64 = counts.iter().map(|c| (c - expect).powi(2) / expect).sum();
    assert!(chi2 < 37.7, "chi-square {chi2:.1} over {rows} rows");
    // A bound of zero has no valid index.
    assert!(g.random_index(4, 0, 1, 1).is_err());
}
