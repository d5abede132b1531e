//! Every GPU kernel against the f64 CPU reference (`wmvl::cpu::Cpu`), through the `Backend`
//! trait, on fresh random inputs of awkward shapes; plus the derivative formulas of `Fun`
//! against finite differences, input validation, allocation limits and the buffer pool.
//!
//! Tolerances: ‖gpu − ref‖/‖ref‖ < 1e-5 for elementwise ops (f32 rounds each result to
//! 2⁻²⁴ ≈ 6e-8 relative; transcendental functions on the GPU add a few ulp), < 1e-4 for
//! matmul and reductions (f32 accumulation over up to ~10⁵ terms). Data movement (gather,
//! scatter of exactly representable values, fill) must match exactly.
//!
//! One `Gpu` serves the whole binary (tests run in parallel threads on it; `Gpu` is Sync),
//! except the pool test, which needs an allocation counter no other test touches.

use std::sync::OnceLock;

use proptest::prelude::*;
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

use wmvl::backend::Backend;
use wmvl::conv::{conv2d, Geometry};
use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::{Gpu, Tensor};
use wmvl::ops::{broadcast_shape, Axis, BinOp, Fun, MAX_ORDER};
use wmvl::tape::Tape;
use wmvl::Error;

const ELEMENTWISE_TOL: f64 = 1e-5;
const MATMUL_TOL: f64 = 1e-4;
const REDUCE_TOL: f64 = 1e-4;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

fn rng(seed: u64) -> Pcg64 {
    Pcg64::seed_from_u64(seed)
}

/// Uniform on [lo, hi).
fn uniform(r: &mut Pcg64, lo: f64, hi: f64) -> f32 {
    let u = (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (lo + (hi - lo) * u) as f32
}

fn random_vec(r: &mut Pcg64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| uniform(r, lo, hi)).collect()
}

/// The same f32 data on both devices.
fn pair(rows: usize, cols: usize, data: &[f32]) -> (Tensor, Mat) {
    let g = gpu().upload(rows, cols, data).expect("upload");
    (g, Mat::from_f32(rows, cols, data).expect("cpu matrix"))
}

/// A fresh random (rows, cols) operand with entries uniform in [lo, hi).
fn random_pair(r: &mut Pcg64, rows: usize, cols: usize, lo: f64, hi: f64) -> (Tensor, Mat) {
    pair(rows, cols, &random_vec(r, rows * cols, lo, hi))
}

/// ‖a − b‖ / ‖b‖ (‖a − b‖ when b = 0).
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den > 0.0 {
        num / den
    } else {
        num
    }
}

/// Read `g` back, check its shape against the reference and return ‖g − c‖/‖c‖.
fn compare(what: &str, g: &Tensor, c: &Mat) -> f64 {
    assert_eq!(gpu().shape(g), Cpu.shape(c), "{what}: shape");
    let v = gpu()
        .read(g)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert_eq!(v.len(), c.data.len(), "{what}: length");
    assert!(
        v.iter().all(|x| x.is_finite()),
        "{what}: non-finite GPU output"
    );
    rel_err(&v, &c.data)
}

fn assert_close(what: &str, g: &Tensor, c: &Mat, tol: f64) {
    let e = compare(what, g, c);
    assert!(e < tol, "{what}: relative error {e:.3e} ≥ {tol:.0e}");
}

fn assert_exact(what: &str, g: &Tensor, c: &Mat) {
    assert_eq!(gpu().shape(g), Cpu.shape(c), "{what}: shape");
    let v = gpu()
        .read(g)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    let want: Vec<f32> = c.to_f32();
    assert_eq!(v, want, "{what}: GPU and CPU differ");
}

// ---------------------------------------------------------------------------------------
// full, affine

#[test]
fn full_matches_cpu() {
    for (i, &(r, c)) in [(1, 1), (1, 300), (300, 1), (17, 29), (300, 130), (12, 8)]
        .iter()
        .enumerate()
    {
        let value = [3.25f32, -0.7, 1e-3, 12345.5, -2.0, 0.125][i];
        let g = gpu().full(r, c, value).unwrap();
        let m = Cpu.full(r, c, value).unwrap();
        assert_exact(&format!("full {r}x{c} = {value}"), &g, &m);
    }
}

#[test]
fn affine_matches_cpu() {
    let mut r = rng(1);
    let cases = [
        (1, 1, 2.5, -4.0),
        (1, 257, -1.7, 0.3),
        (257, 1, 0.5, 1.0),
        (300, 130, -3.0, 0.25),
        (12, 8, 1.5, -0.5),
    ];
    for &(rows, cols, a, b) in &cases {
        let (g, c) = random_pair(&mut r, rows, cols, -3.0, 3.0);
        let gy = gpu().affine(&g, a, b).unwrap();
        let cy = Cpu.affine(&c, a, b).unwrap();
        assert_close(
            &format!("affine {rows}x{cols} a={a} b={b}"),
            &gy,
            &cy,
            ELEMENTWISE_TOL,
        );
    }
}

// ---------------------------------------------------------------------------------------
// matmul

/// Stored shapes of A and B such that op(A) is m×k and op(B) is k×n.
fn matmul_operands(
    r: &mut Pcg64,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> [(Tensor, Mat); 2] {
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    [
        random_pair(r, ar, ac, -1.0, 1.0),
        random_pair(r, br, bc, -1.0, 1.0),
    ]
}

fn check_matmul(r: &mut Pcg64, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> f64 {
    let [(ga, ca), (gb, cb)] = matmul_operands(r, m, k, n, ta, tb);
    let g = gpu().matmul(&ga, &gb, ta, tb).unwrap();
    let c = Cpu.matmul(&ca, &cb, ta, tb).unwrap();
    assert_eq!(Cpu.shape(&c), (m, n));
    compare(&format!("matmul m={m} k={k} n={n} ta={ta} tb={tb}"), &g, &c)
}

#[test]
fn matmul_awkward_shapes_all_transposes() {
    let mut r = rng(2);
    // (m, k, n): 1x1x1, single rows/columns, K = 1, K below / at / just above the K step 16,
    // exact 64x64 tiles, one past the tile, and a larger non-multiple.
    let shapes = [
        (1, 1, 1),
        (1, 37, 1),
        (1, 5, 130),
        (130, 5, 1),
        (3, 1, 5),
        (7, 16, 9),
        (64, 16, 64),
        (65, 17, 63),
        (129, 33, 66),
        (300, 130, 70),
        // The vec4 subgroup products (K, n and, transposed, m multiples of 4): a single vec4,
        // blocks cut by the edge in both directions, m not a multiple of 4.
        (4, 4, 4),
        (36, 8, 36),
        (33, 12, 40),
    ];
    for &(m, k, n) in &shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let e = check_matmul(&mut r, m, k, n, ta, tb);
            assert!(
                e < MATMUL_TOL,
                "matmul m={m} k={k} n={n} ta={ta} tb={tb}: relative error {e:.3e}"
            );
        }
    }
}

#[test]
fn matmul_inner_size_zero_gives_zeros() {
    let a = gpu().upload(3, 0, &[]).unwrap();
    let b = gpu().upload(0, 4, &[]).unwrap();
    let g = gpu().matmul(&a, &b, false, false).unwrap();
    assert_eq!(g.shape(), (3, 4));
    assert_eq!(gpu().read(&g).unwrap(), vec![0.0; 12]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn matmul_random_shapes(m in 1usize..150, k in 1usize..100, n in 1usize..150,
                            ta: bool, tb: bool, seed: u64) {
        let e = check_matmul(&mut rng(seed), m, k, n, ta, tb);
        prop_assert!(e < MATMUL_TOL, "relative error {:.3e}", e);
    }

    #[test]
    fn binary_random_shapes(rows in 1usize..90, cols in 1usize..90, pa in 0usize..4,
                            pb in 0usize..4, op in 0usize..4, seed: u64) {
        let op = OPS[op];
        let e = check_binary(&mut rng(seed), op, pattern(rows, cols, pa), pattern(rows, cols, pb));
        prop_assert!(e < ELEMENTWISE_TOL, "{:?}: relative error {:.3e}", op, e);
    }
}

// ---------------------------------------------------------------------------------------
// binary ops with broadcasting

const OPS: [BinOp; 4] = [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div];

/// Full (r, c), a row (1, c), a column (r, 1) or a scalar (1, 1).
fn pattern(rows: usize, cols: usize, p: usize) -> (usize, usize) {
    [(rows, cols), (1, cols), (rows, 1), (1, 1)][p]
}

/// Operands in ±[0.5, 2] (so that denominators stay away from 0), random signs.
fn signed_away_from_zero(r: &mut Pcg64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = uniform(r, 0.5, 2.0);
            if r.next_u32() & 1 == 0 {
                v
            } else {
                -v
            }
        })
        .collect()
}

fn check_binary(r: &mut Pcg64, op: BinOp, sa: (usize, usize), sb: (usize, usize)) -> f64 {
    let (ga, ca) = pair(sa.0, sa.1, &signed_away_from_zero(r, sa.0 * sa.1));
    let (gb, cb) = pair(sb.0, sb.1, &signed_away_from_zero(r, sb.0 * sb.1));
    let g = gpu().binary(op, &ga, &gb).unwrap();
    let c = Cpu.binary(op, &ca, &cb).unwrap();
    assert_eq!(Some(Cpu.shape(&c)), broadcast_shape(sa, sb));
    compare(&format!("{op:?} {sa:?} with {sb:?}"), &g, &c)
}

#[test]
fn binary_every_broadcast_pattern() {
    let mut r = rng(3);
    // (4, 4) and (12, 8): the vec4 kernels (whole vec4s in every operand and row).
    for &(rows, cols) in &[
        (1, 1),
        (1, 7),
        (7, 1),
        (5, 3),
        (17, 257),
        (300, 130),
        (4, 4),
        (12, 8),
    ] {
        let full = (rows, cols);
        for op in OPS {
            // Broadcast operand on the right, then on the left.
            for p in 0..4 {
                let small = pattern(rows, cols, p);
                for (sa, sb) in [(full, small), (small, full)] {
                    let e = check_binary(&mut r, op, sa, sb);
                    assert!(
                        e < ELEMENTWISE_TOL,
                        "{op:?} {sa:?} with {sb:?}: relative error {e:.3e}"
                    );
                }
            }
            // Outer broadcast: a column against a row.
            let e = check_binary(&mut r, op, (rows, 1), (1, cols));
            assert!(
                e < ELEMENTWISE_TOL,
                "{op:?} outer {rows}x{cols}: relative error {e:.3e}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// map: every function, every derivative order

/// Random arguments on which `f` is defined and well conditioned.
fn map_inputs(r: &mut Pcg64, f: Fun, n: usize) -> Vec<f32> {
    if f.needs_positive() {
        random_vec(r, n, 0.2, 5.0)
    } else {
        // Both branches of Elu (x > 0 and x ≤ 0), both signs everywhere else.
        random_vec(r, n, -4.0, 4.0)
    }
}

#[test]
fn map_every_fun_and_order() {
    let mut r = rng(4);
    for f in Fun::ALL {
        for &(rows, cols) in &[(1, 1), (1, 257), (257, 1), (37, 29), (12, 8)] {
            let (g, c) = pair(rows, cols, &map_inputs(&mut r, f, rows * cols));
            for order in 0..=MAX_ORDER {
                let gy = gpu().map(f, order, &g).unwrap();
                let cy = Cpu.map(f, order, &c).unwrap();
                assert_close(
                    &format!("{f:?}^({order}) on {rows}x{cols}"),
                    &gy,
                    &cy,
                    ELEMENTWISE_TOL,
                );
            }
        }
    }
}

/// Sigmoid-type functions over a wide range (±30): all orders, norm-wise accuracy.
#[test]
fn map_wide_range() {
    let mut r = rng(5);
    for f in [Fun::Swish, Fun::Sigmoid, Fun::Softplus, Fun::Tanh, Fun::Elu] {
        let (g, c) = random_pair(&mut r, 41, 23, -30.0, 30.0);
        for order in 0..=MAX_ORDER {
            let gy = gpu().map(f, order, &g).unwrap();
            let cy = Cpu.map(f, order, &c).unwrap();
            assert_close(
                &format!("{f:?}^({order}) on [-30, 30]"),
                &gy,
                &cy,
                ELEMENTWISE_TOL,
            );
        }
    }
}

/// Overflow-prone arguments: every value finite and within 1e-5 of the reference,
/// absolutely for small results and relatively for large ones. A naive σ(x) = 1/(1 + e⁻ˣ)
/// or log(1 + eˣ) in f32 overflows to inf/NaN at |x| ≳ 89.
#[test]
fn map_extreme_arguments_stay_finite_and_accurate() {
    let xs: Vec<f32> = vec![
        -100.0, -88.5, -30.0, -17.5, -10.0, -0.001, 0.001, 10.0, 17.5, 30.0, 88.5, 100.0,
    ];
    let (g, c) = pair(1, xs.len(), &xs);
    for f in [Fun::Swish, Fun::Sigmoid, Fun::Softplus, Fun::Tanh, Fun::Elu] {
        for order in 0..=MAX_ORDER {
            let gy = gpu().read(&gpu().map(f, order, &g).unwrap()).unwrap();
            let cy = Cpu.map(f, order, &c).unwrap();
            for ((&x, &got), &want) in xs.iter().zip(&gy).zip(&cy.data) {
                assert!(got.is_finite(), "{f:?}^({order})({x}) = {got}");
                let err = (got as f64 - want).abs();
                assert!(
                    err <= 1e-5 * want.abs().max(1.0),
                    "{f:?}^({order})({x}) = {got}, reference {want}"
                );
            }
        }
    }
}

/// Order 0 of `Fun::eval` against textbook definitions written independently here.
#[test]
fn fun_eval_order0_matches_definitions() {
    let def = |f: Fun, x: f64| -> f64 {
        match f {
            Fun::Swish => x / (1.0 + (-x).exp()),
            Fun::Tanh => (x.exp() - (-x).exp()) / (x.exp() + (-x).exp()),
            Fun::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Fun::Softplus => (1.0 + x.exp()).ln(),
            Fun::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp() - 1.0
                }
            }
            Fun::Exp => x.exp(),
            Fun::Log => x.ln(),
            Fun::Square => x * x,
            Fun::Sqrt => x.sqrt(),
            Fun::Recip => 1.0 / x,
        }
    };
    for f in Fun::ALL {
        for x in [-3.1, -0.6, 0.05, 0.7, 2.3, 4.4] {
            let x: f64 = if f.needs_positive() { f64::abs(x) } else { x };
            let (got, want) = (f.eval(0, x), def(f, x));
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{f:?}({x}) = {got}, want {want}"
            );
        }
    }
}

/// f⁽ᵏ⁺¹⁾(x) ≈ (f⁽ᵏ⁾(x + h) − f⁽ᵏ⁾(x − h)) / 2h in f64. Truncation error h²/6·|f⁽ᵏ⁺³⁾|
/// ≲ 1e-10·|f⁽ᵏ⁺³⁾| and rounding error ~ε|f⁽ᵏ⁾|/h ≈ 1e-11·|f⁽ᵏ⁾| with h = 1e-5 are far
/// below the tolerance 1e-6·max(1, |f⁽ᵏ⁺¹⁾|); a wrong formula misses by O(1).
#[test]
fn fun_eval_derivatives_match_finite_differences() {
    let h = 1e-5;
    for f in Fun::ALL {
        // Away from Elu's kink at 0; positive arguments well inside the domain.
        let points: &[f64] = if f.needs_positive() {
            &[0.3, 0.8, 1.7, 3.2, 7.5]
        } else {
            &[-6.0, -2.3, -0.7, -0.1, 0.4, 1.1, 2.9, 6.0]
        };
        for k in 0..MAX_ORDER {
            for &x in points {
                let fd = (f.eval(k, x + h) - f.eval(k, x - h)) / (2.0 * h);
                let exact = f.eval(k + 1, x);
                assert!(
                    (fd - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                    "{f:?}: order {} at {x} is {exact}, finite difference of order {k} gives {fd}",
                    k + 1
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// reductions

#[test]
fn sum_short_and_long_reductions() {
    let mut r = rng(6);
    // Reduced lengths ≤ 64 take the thread-per-output kernel, longer ones the workgroup
    // tree: (64, 3) and (3, 64) sit at the boundary, (65, 3) / (8, 9) just past it,
    // (1000, 1) and (1, 1000) are a long single column / row, (513, 257) is long both ways.
    let shapes = [
        (1, 1),
        (5, 7),
        (64, 3),
        (3, 64),
        (8, 8),
        (65, 3),
        (3, 65),
        (8, 9),
        (1000, 1),
        (1, 1000),
        (300, 130),
        (513, 257),
        // The vec4 sums: whole rows of vec4s; chunked ones whose chunk is rounded up to a
        // multiple of 4 (1030 rows: 5 chunks of 208; 1032 columns: 4 chunks of 260).
        (12, 8),
        (1030, 4),
        (4, 1032),
    ];
    for &(rows, cols) in &shapes {
        let (g, c) = random_pair(&mut r, rows, cols, -1.0, 1.0);
        for axis in [Axis::Rows, Axis::Cols, Axis::All] {
            let gy = gpu().sum(&g, axis).unwrap();
            let cy = Cpu.sum(&c, axis).unwrap();
            assert_close(
                &format!("sum {axis:?} of {rows}x{cols}"),
                &gy,
                &cy,
                REDUCE_TOL,
            );
        }
    }
}

#[test]
fn rowdot_matches_cpu() {
    let mut r = rng(7);
    for &(rows, cols) in &[
        (1, 1),
        (5, 64),
        (7, 65),
        (300, 130),
        (1, 1000),
        (1000, 1),
        (12, 8),
        (3, 1032),
    ] {
        let (ga, ca) = random_pair(&mut r, rows, cols, -1.0, 1.0);
        let (gb, cb) = random_pair(&mut r, rows, cols, -1.0, 1.0);
        let g = gpu().rowdot(&ga, &gb).unwrap();
        let c = Cpu.rowdot(&ca, &cb).unwrap();
        assert_close(&format!("rowdot {rows}x{cols}"), &g, &c, REDUCE_TOL);
    }
}

/// More elements than 256 × the workgroups per grid dimension (65535 × 256 ≈ 16.8M):
/// the 1-D kernels switch to a 2-D grid (`linear_id` in `shaders/common.wgsl`). About 3 s
/// on lavapipe, which pays ~17 µs per workgroup.
#[test]
fn elementwise_on_two_dimensional_grid() {
    let mut r = rng(8);
    let max = gpu().report().limits.max_compute_workgroups_per_dimension as usize;
    let n = max * 256 + 1001;
    let (g, c) = random_pair(&mut r, 1, n, -1.0, 1.0);
    let gy = gpu().affine(&g, -1.5, 0.5).unwrap();
    assert_close(
        "affine on a 2-D grid",
        &gy,
        &Cpu.affine(&c, -1.5, 0.5).unwrap(),
        ELEMENTWISE_TOL,
    );
}

/// A long reduction with more outputs than workgroups per grid dimension: one workgroup
/// per output on a 2-D grid. Ignored by default: ~8 s on lavapipe (65 600 workgroups with
/// barriers); run with `cargo test --release --test kernels -- --ignored` on a real GPU.
#[test]
#[ignore = "slow on lavapipe; run with --ignored on a GPU"]
fn reduction_on_two_dimensional_grid() {
    let mut r = rng(15);
    let max = gpu().report().limits.max_compute_workgroups_per_dimension as usize;
    let (g, c) = random_pair(&mut r, max + 65, 66, -1.0, 1.0);
    let gy = gpu().sum(&g, Axis::Cols).unwrap();
    assert_close(
        "sum Cols on a 2-D grid",
        &gy,
        &Cpu.sum(&c, Axis::Cols).unwrap(),
        REDUCE_TOL,
    );
    let (gb, cb) = random_pair(&mut r, max + 65, 66, -1.0, 1.0);
    let gd = gpu().rowdot(&g, &gb).unwrap();
    assert_close(
        "rowdot on a 2-D grid",
        &gd,
        &Cpu.rowdot(&c, &cb).unwrap(),
        REDUCE_TOL,
    );
}

// ---------------------------------------------------------------------------------------
// broadcasting and data movement

#[test]
fn expand_matches_cpu() {
    let mut r = rng(9);
    for &(rows, cols) in &[
        (1, 1),
        (7, 300),
        (300, 7),
        (1, 257),
        (257, 1),
        (17, 29),
        (12, 8),
    ] {
        for src in [(1, cols), (rows, 1), (1, 1)] {
            let (g, c) = random_pair(&mut r, src.0, src.1, -2.0, 2.0);
            let gy = gpu().expand(&g, rows, cols).unwrap();
            let cy = Cpu.expand(&c, rows, cols).unwrap();
            assert_exact(&format!("expand {src:?} to {rows}x{cols}"), &gy, &cy);
        }
    }
}

#[test]
fn concat_slice_pad_match_cpu() {
    let mut r = rng(10);
    for &(rows, ca, cb) in &[
        (1, 1, 1),
        (1, 256, 3),
        (257, 1, 1),
        (300, 130, 7),
        (17, 0, 5),
        (4, 3, 0),
    ] {
        let (ga, ma) = random_pair(&mut r, rows, ca, -2.0, 2.0);
        let (gb, mb) = random_pair(&mut r, rows, cb, -2.0, 2.0);
        let g = gpu().concat_cols(&ga, &gb).unwrap();
        let c = Cpu.concat_cols(&ma, &mb).unwrap();
        assert_exact(&format!("concat {rows}x{ca} | {rows}x{cb}"), &g, &c);
    }
    for &(rows, cols, start, end) in &[
        (1, 1, 0, 1),
        (1, 257, 0, 257),
        (257, 1, 0, 1),
        (17, 29, 28, 29),
        (300, 130, 7, 100),
        (5, 9, 4, 4),
    ] {
        let (g, c) = random_pair(&mut r, rows, cols, -2.0, 2.0);
        let gy = gpu().slice_cols(&g, start, end).unwrap();
        let cy = Cpu.slice_cols(&c, start, end).unwrap();
        assert_exact(&format!("slice {rows}x{cols} [{start}..{end})"), &gy, &cy);
    }
    for &(rows, cols, start, total) in &[
        (1, 1, 0, 1),
        (257, 1, 3, 5),
        (17, 29, 0, 29),
        (300, 93, 7, 130),
        (1, 3, 254, 257),
    ] {
        let (g, c) = random_pair(&mut r, rows, cols, -2.0, 2.0);
        let gy = gpu().pad_cols(&g, start, total).unwrap();
        let cy = Cpu.pad_cols(&c, start, total).unwrap();
        assert_exact(
            &format!("pad {rows}x{cols} at {start} of {total}"),
            &gy,
            &cy,
        );
    }
}

fn random_indices(r: &mut Pcg64, len: usize, bound: usize) -> Vec<u32> {
    (0..len)
        .map(|_| (r.next_u64() % bound as u64) as u32)
        .collect()
}

fn has_repeat(idx: &[u32]) -> bool {
    idx.iter().enumerate().any(|(i, a)| idx[..i].contains(a))
}

#[test]
fn gather_rows_with_repeats() {
    let mut r = rng(11);
    let cases: Vec<(usize, usize, Vec<u32>)> = vec![
        (1, 1, vec![0, 0, 0]),
        (5, 3, vec![4, 4, 0, 2, 4]),
        (257, 1, random_indices(&mut r, 300, 257)),
        (300, 130, random_indices(&mut r, 500, 300)),
    ];
    for (rows, cols, idx) in cases {
        assert!(has_repeat(&idx), "test indices {idx:?} should repeat");
        let (g, c) = random_pair(&mut r, rows, cols, -2.0, 2.0);
        let gi = gpu().upload_index(&idx, rows as u32).unwrap();
        assert_eq!(gpu().read_index(&gi).unwrap(), idx);
        let gy = gpu().gather_rows(&g, &gi).unwrap();
        let cy = Cpu.gather_rows(&c, &idx).unwrap();
        assert_exact(
            &format!("gather {} rows of {rows}x{cols}", idx.len()),
            &gy,
            &cy,
        );
    }
}

/// Values are multiples of 1/8 in [−16, 16): every partial sum is exact in f32, so the
/// GPU's sums (in index order) equal the f64 reference exactly.
#[test]
fn scatter_add_rows_with_repeats_is_exact() {
    let mut r = rng(12);
    let cases: Vec<(usize, usize, Vec<u32>)> = vec![
        (1, 1, vec![0, 0, 0]),
        (4, 1, vec![2]),
        (6, 5, vec![5, 0, 5, 5, 1, 0, 3]),
        (300, 130, random_indices(&mut r, 500, 300)),
        (7, 257, random_indices(&mut r, 40, 7)),
    ];
    for (n, cols, idx) in cases {
        assert!(
            idx.len() < 2 || has_repeat(&idx),
            "test indices {idx:?} should repeat"
        );
        let data: Vec<f32> = (0..idx.len() * cols)
            .map(|_| (r.next_u32() % 256) as f32 / 8.0 - 16.0)
            .collect();
        let (g, c) = pair(idx.len(), cols, &data);
        let gi = gpu().upload_index(&idx, n as u32).unwrap();
        let gy = gpu().scatter_add_rows(&g, &gi, n).unwrap();
        let cy = Cpu.scatter_add_rows(&c, &idx, n).unwrap();
        assert_exact(
            &format!("scatter {} rows into {n}x{cols}", idx.len()),
            &gy,
            &cy,
        );
    }
}

// ---------------------------------------------------------------------------------------
// unfold (im2col), fold (col2im), reshape, conv2d

/// (batch, H, W, C, k, stride, pad): stride 1, 2 and 3, pad 0, 1 and 2, C = 1, 2 and 3,
/// non-square images, odd and even kernels, a kernel as large as the padded image, 1×1.
const CONV_CASES: [(usize, usize, usize, usize, usize, usize, usize); 9] = [
    (2, 5, 7, 1, 3, 1, 0),
    (3, 6, 5, 3, 3, 2, 2),
    (1, 7, 4, 3, 5, 1, 2),
    (2, 8, 9, 1, 5, 2, 2),
    (2, 4, 3, 2, 2, 2, 0),
    (1, 1, 1, 1, 1, 1, 0),
    (2, 9, 6, 3, 4, 3, 1),
    (1, 3, 2, 2, 4, 1, 1),
    (4, 28, 28, 1, 5, 2, 2),
];

fn geometry(case: (usize, usize, usize, usize, usize, usize, usize)) -> (usize, Geometry) {
    let (b, h, w, c, k, stride, pad) = case;
    (
        b,
        Geometry::new(h, w, c, k, stride, pad).expect("valid test geometry"),
    )
}

/// Multiples of 1/8 in [−16, 16): sums of up to a few hundred of them are exact in f32, so
/// the GPU's gather order and the reference's scatter order give identical results.
fn eighths(r: &mut Pcg64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (r.next_u32() % 256) as f32 / 8.0 - 16.0)
        .collect()
}

/// GPU unfold and fold against the f64 reference: exact (pure data movement, and sums of
/// exactly representable values whose every partial sum is exact).
fn check_unfold_fold(r: &mut Pcg64, b: usize, g: &Geometry) {
    let what = format!("{b} images, {g:?}");
    let (gx, cx) = random_pair(r, b, g.pixels(), -2.0, 2.0);
    let gu = gpu().unfold(&gx, g).unwrap();
    let cu = Cpu.unfold(&cx, g).unwrap();
    assert_eq!(Cpu.shape(&cu), (b * g.positions(), g.patch()), "{what}");
    assert_exact(&format!("unfold {what}"), &gu, &cu);
    let (gp, cp) = pair(b * g.positions(), g.patch(), &eighths(r, cu.data.len()));
    let gf = gpu().fold(&gp, g).unwrap();
    let cf = Cpu.fold(&cp, g).unwrap();
    assert_eq!(Cpu.shape(&cf), (b, g.pixels()), "{what}");
    assert_exact(&format!("fold {what}"), &gf, &cf);
}

#[test]
fn unfold_and_fold_match_cpu_on_several_geometries() {
    let mut r = rng(51);
    for case in CONV_CASES {
        let (b, g) = geometry(case);
        check_unfold_fold(&mut r, b, &g);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn unfold_and_fold_random_geometries(b in 1usize..4, k in 1usize..6, stride in 1usize..4,
                                         pad_frac in 0.0f64..1.0, c in 1usize..4,
                                         dh in 0usize..8, dw in 0usize..8, seed: u64) {
        let pad = ((k as f64 * pad_frac) as usize).min(k - 1);
        // The smallest image a k×k kernel fits in once padded, plus a random margin.
        let min = k.saturating_sub(2 * pad).max(1);
        let g = Geometry::new(min + dh, min + dw, c, k, stride, pad).expect("valid");
        check_unfold_fold(&mut rng(seed), b, &g);
    }
}

/// ⟨unfold(x), y⟩ = ⟨x, fold(y)⟩: in f64 on the CPU (to rounding), and on the GPU in f32.
#[test]
fn fold_is_the_adjoint_of_unfold() {
    let mut r = rng(52);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for case in CONV_CASES {
        let (b, g) = geometry(case);
        let x = random_vec(&mut r, b * g.pixels(), -1.0, 1.0);
        let y = random_vec(&mut r, b * g.positions() * g.patch(), -1.0, 1.0);
        let cx = Mat::from_f32(b, g.pixels(), &x).unwrap();
        let cy = Mat::from_f32(b * g.positions(), g.patch(), &y).unwrap();
        let lhs = dot(&Cpu.unfold(&cx, &g).unwrap().data, &cy.data);
        let rhs = dot(&cx.data, &Cpu.fold(&cy, &g).unwrap().data);
        // Both sides sum the same products in another order: relative to Σ|terms|.
        let scale = dot(
            &Cpu.unfold(&cx, &g)
                .unwrap()
                .data
                .iter()
                .map(|v| v.abs())
                .collect::<Vec<_>>(),
            &cy.data.iter().map(|v| v.abs()).collect::<Vec<_>>(),
        );
        assert!(scale > 0.0, "{g:?}: degenerate test");
        assert!(
            (lhs - rhs).abs() <= 1e-13 * scale,
            "{g:?}: ⟨unfold x, y⟩ = {lhs} but ⟨x, fold y⟩ = {rhs}"
        );
        let gx = gpu().upload(b, g.pixels(), &x).unwrap();
        let gy = gpu().upload(b * g.positions(), g.patch(), &y).unwrap();
        let gu: Vec<f64> = gpu().to_host(&gpu().unfold(&gx, &g).unwrap()).unwrap();
        let gf: Vec<f64> = gpu().to_host(&gpu().fold(&gy, &g).unwrap()).unwrap();
        let (gl, gr) = (dot(&gu, &cy.data), dot(&cx.data, &gf));
        assert!(
            (gl - lhs).abs() <= 1e-6 * scale && (gr - rhs).abs() <= 1e-6 * scale,
            "{g:?} on the GPU: ⟨unfold x, y⟩ = {gl}, ⟨x, fold y⟩ = {gr}, f64: {lhs}"
        );
    }
}

/// The layout pinned down by hand, on both devices: pixel (y, x, c) = 100y + 10x + c + 1.
#[test]
fn unfold_layout_by_hand() {
    let p = |y: usize, x: usize, c: usize| (100 * y + 10 * x + c + 1) as f32;
    // 2×3 image, 2 channels, 2×2 kernel, stride 1, no padding: Ho = 1, Wo = 2.
    let g = Geometry::new(2, 3, 2, 2, 1, 0).unwrap();
    let img: Vec<f32> = (0..2)
        .flat_map(|y| (0..3).flat_map(move |x| (0..2).map(move |c| p(y, x, c))))
        .collect();
    let want = vec![
        1., 2., 11., 12., 101., 102., 111., 112., // window at x = 0
        11., 12., 21., 22., 111., 112., 121., 122., // window at x = 1
    ];
    // 2×2 image, 1 channel, 3×3 kernel, stride 2, padding 1: one window, centred on (0, 0).
    let g2 = Geometry::new(2, 2, 1, 3, 2, 1).unwrap();
    let img2 = vec![p(0, 0, 0), p(0, 1, 0), p(1, 0, 0), p(1, 1, 0)];
    let want2 = vec![0., 0., 0., 0., 1., 11., 0., 101., 111.];
    for (g, img, want) in [(g, img, want), (g2, img2, want2)] {
        let cpu = Cpu
            .unfold(&Mat::from_f32(1, img.len(), &img).unwrap(), &g)
            .unwrap();
        assert_eq!(cpu.to_f32(), want, "CPU unfold {g:?}");
        let gu = gpu()
            .unfold(&gpu().upload(1, img.len(), &img).unwrap(), &g)
            .unwrap();
        assert_eq!(gpu().read(&gu).unwrap(), want, "GPU unfold {g:?}");
    }
    // Fold of all-ones patches counts how many windows see each pixel: 3×3 image, 2×2
    // kernel, stride 1 gives the corners 1, edges 2, centre 4.
    let g = Geometry::new(3, 3, 1, 2, 1, 0).unwrap();
    let ones = gpu().full(g.positions(), g.patch(), 1.0).unwrap();
    assert_eq!(
        gpu().read(&gpu().fold(&ones, &g).unwrap()).unwrap(),
        vec![1., 2., 1., 2., 4., 2., 1., 2., 1.]
    );
}

/// out[b, oy, ox, f] = bias[f] + Σ W[(ky·k + kx)·C + c, f] · in[b, oy·s + ky − pad, ox·s + kx − pad, c],
/// the definition written as plain loops.
fn direct_conv(x: &Mat, w: &Mat, bias: &Mat, g: &Geometry) -> Vec<f64> {
    let f = w.cols;
    let (ho, wo) = (g.out_h(), g.out_w());
    let mut out = vec![];
    for b in 0..x.rows {
        for oy in 0..ho {
            for ox in 0..wo {
                for o in 0..f {
                    let mut s = bias.data[o];
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let y = (oy * g.stride + ky) as isize - g.pad as isize;
                            let xx = (ox * g.stride + kx) as isize - g.pad as isize;
                            if y < 0 || xx < 0 || y >= g.h as isize || xx >= g.w as isize {
                                continue;
                            }
                            for c in 0..g.c {
                                let pix = x.at(b, ((y as usize) * g.w + xx as usize) * g.c + c);
                                s += w.at((ky * g.k + kx) * g.c + c, o) * pix;
                            }
                        }
                    }
                    out.push(s);
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_matches_direct_convolution() {
    let mut r = rng(53);
    for (i, case) in CONV_CASES.into_iter().enumerate() {
        let (b, g) = geometry(case);
        let f = 1 + i % 4;
        let (gx, cx) = random_pair(&mut r, b, g.pixels(), -1.0, 1.0);
        let (gw, cw) = random_pair(&mut r, g.patch(), f, -1.0, 1.0);
        let (gb, cb) = random_pair(&mut r, 1, f, -1.0, 1.0);
        let want = direct_conv(&cx, &cw, &cb, &g);
        let ct = Tape::new(Cpu);
        let cy = conv2d(ct.leaf(cx), ct.leaf(cw), ct.leaf(cb), &g).unwrap();
        assert_eq!(cy.shape(), (b, g.positions() * f), "{g:?}");
        let e = rel_err(&cy.value().to_f32(), &want);
        assert!(e < 1e-7, "CPU conv2d {g:?}: relative error {e:.3e}");
        let gt = Tape::new(gpu());
        let gy = conv2d(gt.leaf(gx), gt.leaf(gw), gt.leaf(gb), &g).unwrap();
        assert_eq!(gy.shape(), (b, g.positions() * f), "{g:?}");
        let e = rel_err(&gpu().read(&gy.value()).unwrap(), &want);
        assert!(e < MATMUL_TOL, "GPU conv2d {g:?}: relative error {e:.3e}");
    }
}

#[test]
fn reshape_is_a_free_view_with_the_same_values() {
    let mut r = rng(54);
    let (gx, cx) = random_pair(&mut r, 6, 10, -1.0, 1.0);
    let gy = gpu().reshape(&gx, 15, 4).unwrap();
    assert!(gy.shares_buffer(&gx), "the GPU reshape copied");
    assert_exact(
        "reshape 6x10 → 15x4",
        &gy,
        &Cpu.reshape(&cx, 15, 4).unwrap(),
    );
    assert_eq!(Cpu.reshape(&cx, 15, 4).unwrap().data, cx.data);
    let tape = Tape::new(gpu());
    let y = tape.leaf(gx).reshape(3, 20).unwrap();
    assert_eq!(y.shape(), (3, 20));
    assert_eq!(gpu().read(&y.value()).unwrap(), cx.to_f32());
}

/// Shapes that do not fit, and geometries that make no sense: errors naming the problem,
/// from the tape and from both backends directly (never a panic).
#[test]
fn conv_shape_errors_are_errors() {
    let g = Geometry::new(5, 4, 2, 3, 2, 1).unwrap(); // Ho = 3, Wo = 2, patch 18
    assert_eq!(
        (g.out_h(), g.out_w(), g.positions(), g.patch()),
        (3, 2, 6, 18)
    );
    // Invalid geometries.
    for (h, w, c, k, s, pad, needle) in [
        (0, 4, 2, 3, 1, 0, "positive"),
        (5, 4, 0, 3, 1, 0, "positive"),
        (5, 4, 2, 0, 1, 0, "positive"),
        (5, 4, 2, 3, 0, 0, "positive"),
        (5, 4, 2, 3, 1, 3, "padding 3"),
        (5, 2, 2, 5, 1, 1, "does not fit"),
        (1 << 20, 1 << 20, 1 << 20, 3, 1, 0, "2³²"),
    ] {
        match Geometry::new(h, w, c, k, s, pad) {
            Err(Error::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("geometry {h} {w} {c} {k} {s} {pad}: got {other:?}"),
        }
    }
    let bad_geometry = Geometry { k: 0, ..g };
    let tape = Tape::new(gpu());
    let leaf = |rows: usize, cols: usize| tape.leaf(gpu().full(rows, cols, 0.5).unwrap());
    let shape_err = |r: wmvl::Result<_>, needle: &str| match r {
        Err(Error::Shape(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        Err(e) => panic!("expected a shape error naming {needle:?}, got {e:?}"),
        Ok(_) => panic!("expected a shape error naming {needle:?}, got a value"),
    };
    shape_err(leaf(2, 39).unfold(&g).map(|_| ()), "H·W·C = 40");
    shape_err(leaf(13, 18).fold(&g).map(|_| ()), "13 rows");
    shape_err(leaf(12, 17).fold(&g).map(|_| ()), "k·k·C = 18");
    shape_err(leaf(6, 10).reshape(7, 9).map(|_| ()), "60 elements");
    assert!(matches!(
        leaf(2, 40).unfold(&bad_geometry),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        leaf(6, 18).fold(&bad_geometry),
        Err(Error::Invalid(_))
    ));
    let x = leaf(2, 40);
    shape_err(
        conv2d(x, leaf(17, 3), leaf(1, 3), &g).map(|_| ()),
        "k·k·C = 18",
    );
    shape_err(
        conv2d(x, leaf(18, 3), leaf(1, 4), &g).map(|_| ()),
        "1×3 bias",
    );
    shape_err(
        conv2d(x, leaf(18, 3), leaf(3, 1), &g).map(|_| ()),
        "1×3 bias",
    );
    assert_eq!(
        conv2d(x, leaf(18, 3), leaf(1, 3), &g).unwrap().shape(),
        (2, 18)
    );
    // The backends refuse on their own too.
    let m = |rows: usize, cols: usize| Mat::zeros(rows, cols);
    assert!(matches!(Cpu.unfold(&m(2, 39), &g), Err(Error::Shape(_))));
    assert!(matches!(Cpu.fold(&m(7, 18), &g), Err(Error::Shape(_))));
    assert!(matches!(Cpu.reshape(&m(6, 10), 7, 9), Err(Error::Shape(_))));
    assert!(matches!(
        Cpu.unfold(&m(2, 40), &bad_geometry),
        Err(Error::Invalid(_))
    ));
    let t = |rows: usize, cols: usize| gpu().full(rows, cols, 1.0).unwrap();
    assert!(matches!(gpu().unfold(&t(2, 39), &g), Err(Error::Shape(_))));
    assert!(matches!(gpu().fold(&t(6, 17), &g), Err(Error::Shape(_))));
    assert!(matches!(
        gpu().reshape(&t(6, 10), 7, 9),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        gpu().fold(&t(6, 18), &bad_geometry),
        Err(Error::Invalid(_))
    ));
}

// ---------------------------------------------------------------------------------------
// validation and errors

#[test]
fn upload_rejects_non_finite_values_naming_row_and_column() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut data = vec![0.5f32; 12];
        data[9] = bad; // row 1, column 3 of a 2x6 tensor
        match gpu().upload(2, 6, &data) {
            Err(Error::Invalid(m)) => {
                assert!(
                    m.contains("row 1") && m.contains("column 3"),
                    "message {m:?} does not name row 1, column 3"
                )
            }
            other => panic!("upload of {bad}: expected Err(Invalid), got {other:?}"),
        }
    }
}

#[test]
fn upload_rejects_wrong_length() {
    assert!(matches!(
        gpu().upload(3, 4, &[1.0; 11]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        gpu().upload(3, 4, &[1.0; 13]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(gpu().upload(0, 4, &[1.0]), Err(Error::Shape(_))));
}

#[test]
fn upload_index_rejects_out_of_range() {
    assert!(matches!(
        gpu().upload_index(&[0, 4, 5, 1], 5),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        gpu().upload_index(&[0], 0),
        Err(Error::Invalid(_))
    ));
    let ok = gpu().upload_index(&[0, 4, 4, 1], 5).unwrap();
    assert_eq!((ok.len(), ok.bound()), (4, 5));
}

#[test]
fn tape_shape_errors_are_errors() {
    let mut r = rng(13);
    let tape = Tape::new(gpu());
    let leaf = |rows: usize, cols: usize, r: &mut Pcg64| {
        tape.leaf(
            gpu()
                .upload(rows, cols, &random_vec(r, rows * cols, -1.0, 1.0))
                .unwrap(),
        )
    };
    let a = leaf(2, 3, &mut r);
    let b = leaf(4, 5, &mut r);
    let c = leaf(3, 2, &mut r);
    assert!(matches!(a.matmul(b), Err(Error::Shape(_))));
    assert!(matches!(a.matmul_t(c, true, false), Err(Error::Shape(_))));
    assert!(matches!(a.add(c), Err(Error::Shape(_))));
    assert!(matches!(a.div(b), Err(Error::Shape(_))));
    assert!(matches!(a.rowdot(c), Err(Error::Shape(_))));
    assert!(matches!(a.concat_cols(b), Err(Error::Shape(_))));
    assert!(matches!(a.slice_cols(2, 4), Err(Error::Shape(_))));
    assert!(matches!(a.pad_cols(1, 3), Err(Error::Shape(_))));
    assert!(matches!(a.expand(4, 3), Err(Error::Shape(_))));
    assert!(matches!(tape.grad(a, &[a], false), Err(Error::Shape(_))));
    let i = tape.index(gpu().upload_index(&[0, 3], 4).unwrap());
    assert!(matches!(a.gather_rows(i), Err(Error::Invalid(_))));
    // The well-shaped versions work, and match the CPU.
    let y = a.matmul(c).unwrap();
    let ac = Mat::from_f32(2, 3, &gpu().read(&a.value()).unwrap()).unwrap();
    let cc = Mat::from_f32(3, 2, &gpu().read(&c.value()).unwrap()).unwrap();
    assert_close(
        "tape matmul",
        &y.value(),
        &Cpu.matmul(&ac, &cc, false, false).unwrap(),
        MATMUL_TOL,
    );
}

#[test]
fn oversized_allocation_is_out_of_memory() {
    let g = gpu();
    let limit = g.report().limits.max_storage_buffer_binding_size as usize;
    let cols = 1024;
    let rows = limit / (4 * cols) + 1; // one row more than the largest storage binding
    match g.full(rows, cols, 1.0) {
        Err(Error::OutOfMemory(_)) => {}
        other => panic!("{rows}x{cols} fill: expected Err(OutOfMemory), got {other:?}"),
    }
    // A matmul whose output is too large, through the tape.
    let tape = Tape::new(g);
    let a = tape.leaf(g.upload(rows, 1, &vec![0.5; rows]).unwrap());
    let b = tape.leaf(g.upload(1, cols, &vec![0.25; cols]).unwrap());
    assert!(matches!(a.matmul(b), Err(Error::OutOfMemory(_))));
    // The device is still usable afterwards.
    let t = g.full(2, 2, 7.0).unwrap();
    assert_eq!(g.read(&t).unwrap(), vec![7.0; 4]);
}

/// The pool rounds requests up to powers of two, but an adapter's largest binding need not be
/// one (2047 MiB on an H100): a request just under such a limit used to round past it and be
/// refused, which sent the fused step's largest sub-batch to the tape there.
#[test]
fn every_request_up_to_the_binding_limit_is_served() {
    use wmvl::gpu::pool::size_class;
    let mut r = rng(41);
    for limit in [2047u64 << 20, 128 << 20, 1000, 4096, (1 << 31) - 4] {
        for bytes in [1, 16, 17, limit / 2 + 1, limit - 4, limit]
            .into_iter()
            .chain((0..200).map(|_| r.next_u64() % limit + 1))
        {
            let c =
                size_class(bytes, limit).unwrap_or_else(|| panic!("{bytes} of {limit} refused"));
            assert!(c >= bytes && c <= limit, "{bytes} of {limit}: class {c}");
            assert!(
                c.is_power_of_two() || c == limit,
                "{bytes} of {limit}: class {c}"
            );
            assert_eq!(c % 4, 0);
        }
        assert_eq!(size_class(limit + 1, limit), None);
    }
    // On this adapter: a tensor of exactly the largest binding is served.
    let g = gpu();
    let cols = 1024;
    let rows = (g.max_tensor_bytes() / (4 * cols as u64)) as usize;
    let t = g.full(rows, cols, 0.5).unwrap();
    let v = g.read(&t).unwrap();
    assert_eq!((v.len(), v[0], v[rows * cols - 1]), (rows * cols, 0.5, 0.5));
}

/// Its own `Gpu`: `allocated_bytes` counts the whole device, and the other tests
/// allocate concurrently on the shared one.
#[test]
fn buffer_pool_reuses_memory() {
    let g = Gpu::new().expect("gpu");
    let mut r = rng(14);
    let data = random_vec(&mut r, 100 * 37, -1.0, 1.0);
    let first = g.upload(100, 37, &data).unwrap();
    let y = g.affine(&first, 2.0, 1.0).unwrap();
    assert!(g
        .read(&y)
        .unwrap()
        .iter()
        .zip(&data)
        .all(|(a, b)| (a - (2.0 * b + 1.0)).abs() < 1e-6));
    let held = g.allocated_bytes();
    assert!(
        held >= 2 * 4 * 100 * 37,
        "{held} bytes held for two 100x37 tensors"
    );
    drop((first, y));
    for round in 0..3 {
        let x = g.upload(100, 37, &data).unwrap();
        let y = g.affine(&x, -1.0, 0.0).unwrap();
        let v = g.read(&y).unwrap();
        assert_eq!(v[5], -data[5]);
        assert_eq!(
            g.allocated_bytes(),
            held,
            "round {round}: the pool did not reuse freed buffers"
        );
    }
}

/// A workspace (`scratch`) is sized to its tensor, not to a power-of-two class, usable like
/// any tensor, and given back to the device (not kept in the pool) when dropped.
#[test]
fn scratch_workspaces_are_exactly_sized_and_freed() {
    use wmvl::gpu::pool::size_class;
    let g = Gpu::new().expect("gpu");
    let before = g.allocated_bytes();
    let (rows, cols) = (3, 100_000); // 1.2 MB: its size class would be 2 MiB
    let ws = g.scratch(rows, cols).unwrap();
    let held = g.allocated_bytes() - before;
    assert!(
        held >= 4 * (rows * cols) as u64 && held < 4 * (rows * cols) as u64 + 256,
        "{held} bytes held for a workspace of {} bytes",
        4 * rows * cols
    );
    let mut r = rng(15);
    let data = random_vec(&mut r, rows * cols, -1.0, 1.0);
    let x = g.upload(rows, cols, &data).unwrap();
    g.copy_into(&x, &ws).unwrap();
    let v = g.read(&ws).unwrap();
    assert_eq!((v[0], v[rows * cols - 1]), (data[0], data[rows * cols - 1]));
    drop((x, ws, v));
    let pooled = size_class(4 * (rows * cols) as u64, g.max_tensor_bytes()).unwrap();
    assert_eq!(
        g.allocated_bytes() - before,
        pooled,
        "after the drop only the uploaded tensor's pooled buffer stays"
    );
}

/// Several threads sharing one `Gpu` (it is Sync): each must get its own results.
#[test]
fn concurrent_use_from_threads() {
    let g = gpu();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let mut r = rng(100 + t);
                for it in 0..60 {
                    let data = random_vec(&mut r, 300, -1.0, 1.0);
                    let x = g.upload(3, 100, &data).unwrap();
                    let (a, b) = (t as f32 + 1.0, it as f32);
                    let y = g.affine(&g.affine(&x, a, 0.5).unwrap(), 1.0, b).unwrap();
                    let v = g.read(&y).unwrap();
                    for (got, d) in v.iter().zip(&data) {
                        let want = a * d + 0.5 + b;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "thread {t} iteration {it}: {got} ≠ {want}"
                        );
                    }
                }
            });
        }
    });
}

/// Threads recording long chains at once: the push that reaches the automatic flush limit
/// (8 192 pending dispatches) and that flush are not atomic, so another thread's dispatches
/// can slip in between; the flush used to take them all and overrun its parameter buffer
/// (a validation error, found by two WAE tests running side by side). Its own `Gpu`, so that
/// the other tests' dispatches do not change the timing.
#[test]
fn concurrent_recording_past_the_flush_limit() {
    let g = Gpu::new().unwrap();
    let g = &g;
    std::thread::scope(|s| {
        for t in 0..8u32 {
            s.spawn(move || {
                let x = g.upload(1, 4, &[1.0; 4]).unwrap();
                let mut y = x.clone();
                for _ in 0..12_000 {
                    y = g.affine(&y, 1.0, 1.0).unwrap();
                }
                let v = g.read(&y).unwrap();
                assert_eq!(v, vec![12_001.0; 4], "thread {t}");
            });
        }
    });
}

/// op(A)·op(B) of random (m × k)·(k × n) operands on `g`, for every transpose, against f64.
fn check_matmul_all_transposes(g: &Gpu, r: &mut Pcg64, m: usize, k: usize, n: usize, what: &str) {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let da = random_vec(r, ar * ac, -1.0, 1.0);
        let db = random_vec(r, br * bc, -1.0, 1.0);
        let ga = g.upload(ar, ac, &da).unwrap();
        let gb = g.upload(br, bc, &db).unwrap();
        let got = g.read(&g.matmul(&ga, &gb, ta, tb).unwrap()).unwrap();
        let want = Cpu
            .matmul(
                &Mat::from_f32(ar, ac, &da).unwrap(),
                &Mat::from_f32(br, bc, &db).unwrap(),
                ta,
                tb,
            )
            .unwrap();
        let e = rel_err(&got, &want.data);
        assert!(
            e < MATMUL_TOL,
            "{what} matmul {m}x{k}x{n} ta={ta} tb={tb}: {e:.3e}"
        );
    }
}

/// The kernel family the default device does *not* use (tiled with workgroup barriers on
/// GPUs, barrier-free on CPU drivers), so that both code paths are tested on every machine.
fn other_gpu() -> &'static Gpu {
    static OTHER: OnceLock<Gpu> = OnceLock::new();
    OTHER.get_or_init(|| {
        Gpu::with_barrier_free(!gpu().barrier_free())
            .unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}"))
    })
}

/// Where the default device uses the subgroup products (lavapipe), the 4 × 8 direct product
/// that CPU drivers without fixed 8-lane subgroups use still matches f64; and the shapes the
/// vec4 products take do run them (the profile names each dispatch's kernel).
#[test]
fn direct_and_subgroup_products_match_cpu() {
    if gpu().subgroup_core().is_none() || !gpu().barrier_free() {
        return; // only one CPU family on this adapter: the other tests cover it
    }
    let direct = Gpu::new().unwrap().without_subgroup_core();
    let mut r = rng(79);
    for &(m, k, n) in &[(1, 37, 1), (36, 8, 36), (65, 17, 63)] {
        check_matmul_all_transposes(&direct, &mut r, m, k, n, "direct");
    }
    let g = gpu();
    g.sync().unwrap();
    let [(a, _), (b, _)] = matmul_operands(&mut r, 36, 8, 36, true, false);
    let [(c, _), (d, _)] = matmul_operands(&mut r, 36, 7, 36, false, false);
    let [(e, _), (f, _)] = matmul_operands(&mut r, 2, 20, 36, true, false);
    let [(h, _), (i, _)] = matmul_operands(&mut r, 36, 20, 2, false, true);
    let _keep = (
        g.matmul(&a, &b, true, false).unwrap(),
        g.matmul(&c, &d, false, false).unwrap(),
        g.matmul(&e, &f, true, false).unwrap(),
        g.matmul(&h, &i, false, true).unwrap(),
    );
    if let Some(profile) = g.flush_profiled().unwrap() {
        let names: Vec<&str> = profile.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"matmul_v4_tn"), "{names:?}");
        assert!(names.contains(&"matmul_sub"), "{names:?}");
        // Outputs at most 8 rows or columns wide take the 8-row / 8-column blocks.
        assert!(names.contains(&"matmul_sub_8x32"), "{names:?}");
        assert!(names.contains(&"matmul_sub_32x8"), "{names:?}");
    }
}

/// Tensors of whole vec4s take the vec4 kernels (the tests above check their values on
/// such shapes); the profile names each dispatch's kernel (on a device that does not fuse
/// them into chains).
#[test]
fn vec4_kernels_run_where_shapes_allow() {
    if !gpu().has_timestamps() {
        return; // no profile to read the kernels from
    }
    let g = &Gpu::new().unwrap().without_fusion();
    let mut r = rng(80);
    let mut up = |rows, cols| {
        g.upload(rows, cols, &random_vec(&mut r, rows * cols, -1.0, 1.0))
            .unwrap()
    };
    let (x, row, col) = (up(12, 8), up(1, 8), up(12, 1));
    let _keep = [
        g.binary(BinOp::Sub, &x, &x).unwrap(),
        g.binary(BinOp::Mul, &row, &x).unwrap(),
        g.binary(BinOp::Div, &x, &col).unwrap(),
        g.map(Fun::Tanh, 1, &x).unwrap(),
        g.affine(&x, 2.0, 1.0).unwrap(),
        g.expand(&row, 12, 8).unwrap(),
        g.expand(&col, 12, 8).unwrap(),
        g.sum(&x, Axis::Rows).unwrap(),
        g.sum(&x, Axis::Cols).unwrap(),
    ];
    let profile = g.flush_profiled().unwrap().unwrap();
    let names: Vec<&str> = profile.iter().map(|(n, _)| n.as_str()).collect();
    let want = [
        "binary_same4",
        "binary_row4",
        "binary_col4",
        "map4",
        "affine4",
        "expand_row4",
        "expand_col4",
        "reduce_rows4",
        "reduce_cols4",
    ];
    assert_eq!(names, want);
}

#[test]
fn other_kernel_family_matches_cpu() {
    let g2 = other_gpu();
    assert_ne!(g2.barrier_free(), gpu().barrier_free());
    let mut r = rng(77);
    for &(m, k, n) in &[
        (1, 1, 1),
        (1, 37, 1),
        (130, 5, 1),
        (7, 16, 9),
        (65, 17, 63),
        (129, 33, 66),
    ] {
        check_matmul_all_transposes(g2, &mut r, m, k, n, "other family");
    }
    // Reductions take the workgroup-tree path only on the GPU family: long, few outputs.
    for &(rows, cols) in &[(1000, 3), (3, 1000), (300, 130), (70, 1)] {
        let d = random_vec(&mut r, rows * cols, -1.0, 1.0);
        let gt = g2.upload(rows, cols, &d).unwrap();
        let ct = Mat::from_f32(rows, cols, &d).unwrap();
        for axis in [Axis::Rows, Axis::Cols, Axis::All] {
            let got = g2.read(&g2.sum(&gt, axis).unwrap()).unwrap();
            let e = rel_err(&got, &Cpu.sum(&ct, axis).unwrap().data);
            assert!(
                e < REDUCE_TOL,
                "other family sum {rows}x{cols} {axis:?}: {e:.3e}"
            );
        }
        let got = g2.read(&g2.rowdot(&gt, &gt).unwrap()).unwrap();
        let e = rel_err(&got, &Cpu.rowdot(&ct, &ct).unwrap().data);
        assert!(e < REDUCE_TOL, "other family rowdot {rows}x{cols}: {e:.3e}");
    }
}

#[test]
fn copy_into_overwrites_in_stream_order() {
    let g = gpu();
    let mut r = rng(91);
    let a = random_vec(&mut r, 37 * 5, -2.0, 2.0);
    let b = random_vec(&mut r, 37 * 5, -2.0, 2.0);
    let src = g.upload(37, 5, &a).unwrap();
    let dst = g.upload(37, 5, &b).unwrap();
    // Work recorded before the copy sees the old contents, work after it the new ones.
    let before = g.affine(&dst, 1.0, 0.0).unwrap();
    g.copy_into(&src, &dst).unwrap();
    let after = g.affine(&dst, 1.0, 0.0).unwrap();
    assert_eq!(g.read(&before).unwrap(), b);
    assert_eq!(g.read(&after).unwrap(), a);
    assert_eq!(g.read(&dst).unwrap(), a);
    let wrong = g.upload(5, 37, &a).unwrap();
    assert!(matches!(
        g.copy_into(&wrong, &dst),
        Err(wmvl::Error::Shape(_))
    ));
}

/// Long sums and long matrix products are added in blocks (SPEC standards: "long sums are
/// blocked or pairwise"), on both kernel families. A sum of 2²⁰ copies of 0.1 added one
/// term at a time in f32 is off by about 10 % (the accumulator's ulp grows past the term);
/// in blocks of at most 16384 terms (then the block sums) it is within 1e-5. The same for a
/// product with K = 100 000 (chunks of K), against the exact value in f64.
#[test]
fn long_sums_and_products_are_blocked() {
    let n = 1 << 20;
    let tenth = 0.1f32;
    let exact = tenth as f64 * n as f64;
    // What sequential f32 accumulation gives: the test must be able to tell the difference.
    let naive = (0..n).fold(0.0f32, |s, _| s + tenth) as f64;
    assert!(
        (naive - exact).abs() / exact > 1e-3,
        "sequential f32 was accurate: {naive}"
    );
    for g in [gpu(), other_gpu()] {
        let family = if g.barrier_free() {
            "barrier-free"
        } else {
            "tiled"
        };
        let x = g.full(1, n, tenth).unwrap();
        for (axis, t) in [
            (Axis::All, x.clone()),
            (Axis::Rows, g.full(n, 1, tenth).unwrap()),
        ] {
            let got = g.read(&g.sum(&t, axis).unwrap()).unwrap()[0] as f64;
            let e = (got - exact).abs() / exact;
            assert!(
                e < 1e-5,
                "{family} sum of 2^20 terms ({axis:?}): {got} vs {exact} ({e:.1e})"
            );
        }
        let k = 100_000;
        let a = g.full(3, k, tenth).unwrap();
        let b = g.full(k, 5, 1.0).unwrap();
        let p = g.read(&g.matmul(&a, &b, false, false).unwrap()).unwrap();
        let want = tenth as f64 * k as f64;
        for v in p {
            let e = (v as f64 - want).abs() / want;
            assert!(
                e < 1e-5,
                "{family} product over K = {k}: {v} vs {want} ({e:.1e})"
            );
        }
    }
}

/// Products longer than one chunk of K (split, then the partial products added) match the
/// f64 reference for every transpose, on both kernel families.
#[test]
fn chunked_matmul_matches_cpu() {
    let mut r = rng(78);
    for g in [gpu(), other_gpu()] {
        // (100, 1028, 12): three chunks of 344 (rounded up to a multiple of 4 for the vec4
        // products) and a shorter last one.
        for &(m, k, n) in &[(3, 1300, 7), (66, 1025, 65), (100, 1028, 12)] {
            check_matmul_all_transposes(g, &mut r, m, k, n, "chunked");
        }
    }
}
