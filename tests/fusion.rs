//! Elementwise chains fused at flush time (`src/gpu/fuse.rs`): the same values as one kernel
//! per op and as the f64 reference, intermediates kept where something still reads them,
//! chains cut where they must be (a write over an input, the binding limit), and fewer
//! dispatches on the device.

use std::sync::OnceLock;

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

use wmvl::backend::Backend;
use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::{Gpu, Tensor};
use wmvl::ops::{Axis, BinOp, Fun};

fn fused() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| Gpu::new().expect("a GPU adapter"))
}

fn unfused() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| Gpu::new().expect("a GPU adapter").without_fusion())
}

fn data(r: &mut Pcg64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (r.next_u32() as f64 / u32::MAX as f64 * 4.0 - 2.0) as f32)
        .collect()
}

/// Largest |a − b| / max(|b|, 1).
fn err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// The formula under test, on any backend: returns (kept intermediate, result, product of
/// a dropped intermediate). Written as a tape-free chain of ops so that each op is one
/// recorded dispatch: tanh(x + row) · g, an affine map, minus x, a column factor, σ′, and a
/// product that reads one of the chain's values after the chain.
fn formula<B: Backend>(
    be: &B,
    x: &B::Tensor,
    row: &B::Tensor,
    col: &B::Tensor,
    g: &B::Tensor,
    w: &B::Tensor,
) -> (B::Tensor, B::Tensor, B::Tensor) {
    let t = be
        .map(Fun::Tanh, 0, &be.binary(BinOp::Add, x, row).unwrap())
        .unwrap();
    let u = be.binary(BinOp::Mul, &t, g).unwrap();
    let v = be.affine(&u, 0.5, -1.0).unwrap();
    let d = be.binary(BinOp::Sub, &v, x).unwrap();
    let e = be.binary(BinOp::Div, &d, col).unwrap();
    let out = be.map(Fun::Sigmoid, 1, &e).unwrap();
    // v is read again by a product after the chain, then dropped before anything waits.
    let prod = be.matmul(&v, w, false, true).unwrap();
    drop(v);
    (t, out, prod)
}

#[test]
fn fused_chains_match_unfused_and_f64() {
    let mut r = Pcg64::seed_from_u64(1);
    // (12, 8): the vec4 chain; (7, 5): the scalar one.
    for &(rows, cols) in &[(12usize, 8usize), (7, 5)] {
        let xs = data(&mut r, rows * cols);
        let rs = data(&mut r, cols);
        let cs: Vec<f32> = (0..rows).map(|i| 1.5 + i as f32 * 0.1).collect();
        let gs = data(&mut r, rows * cols);
        let ws = data(&mut r, 3 * cols);
        let mut results: Vec<[Vec<f32>; 3]> = Vec::new();
        for gpu in [fused(), unfused()] {
            let up = |r, c, d: &[f32]| gpu.upload(r, c, d).unwrap();
            let (t, out, prod) = formula(
                gpu,
                &up(rows, cols, &xs),
                &up(1, cols, &rs),
                &up(rows, 1, &cs),
                &up(rows, cols, &gs),
                &up(3, cols, &ws),
            );
            results.push([t, out, prod].map(|x: Tensor| gpu.read(&x).unwrap()));
        }
        let m = |r, c, d: &[f32]| Mat::from_f32(r, c, d).unwrap();
        let (t, out, prod) = formula(
            &Cpu,
            &m(rows, cols, &xs),
            &m(1, cols, &rs),
            &m(rows, 1, &cs),
            &m(rows, cols, &gs),
            &m(3, cols, &ws),
        );
        let want = [t, out, prod].map(|x| x.data);
        for (k, name) in ["kept tanh", "result", "product of a dropped value"]
            .iter()
            .enumerate()
        {
            let e64 = err(&results[0][k], &want[k]);
            assert!(e64 < 1e-5, "{rows}x{cols} {name}: fused vs f64 {e64:.2e}");
            let e = err(
                &results[0][k],
                &results[1][k].iter().map(|&v| v as f64).collect::<Vec<_>>(),
            );
            assert!(e < 1e-6, "{rows}x{cols} {name}: fused vs unfused {e:.2e}");
        }
    }
}

/// The chain of `formula` runs as fewer dispatches when fused (the profile names them).
#[test]
fn fusion_reduces_the_dispatches() {
    let mut r = Pcg64::seed_from_u64(2);
    let mut counts = Vec::new();
    // Devices of its own: the other tests of this file run beside it and would add to a
    // shared device's count.
    let own = [Gpu::new().unwrap(), Gpu::new().unwrap().without_fusion()];
    for gpu in &own {
        gpu.sync().unwrap();
        let up = |rr, c, d: &[f32]| gpu.upload(rr, c, d).unwrap();
        let x = up(12, 8, &data(&mut r, 96));
        let row = up(1, 8, &data(&mut r, 8));
        let col = up(12, 1, &[2.0; 12]);
        let g = up(12, 8, &data(&mut r, 96));
        let w = up(3, 8, &data(&mut r, 24));
        gpu.sync().unwrap();
        let before = gpu.dispatches_submitted();
        let _keep = formula(gpu, &x, &row, &col, &g, &w);
        gpu.sync().unwrap();
        counts.push(gpu.dispatches_submitted() - before);
        if gpu.fuses() && gpu.has_timestamps() {
            let _keep = formula(gpu, &x, &row, &col, &g, &w);
            let names: Vec<String> = gpu
                .flush_profiled()
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(names.len(), 2, "{names:?}");
            let members: Vec<&str> = names[0].trim_start_matches("fused ").split('+').collect();
            assert_eq!(members.len(), 7, "{names:?}");
        }
    }
    // Unfused: 8 ops. Fused: the chain of 7 elementwise ops is one kernel, plus the product.
    assert_eq!(counts, vec![2, 8]);
}

/// A chain stops before an op that writes over one of its inputs (copy_into), and before it
/// would bind more buffers than the adapter allows; the values are those of one op at a time.
#[test]
fn chains_are_cut_where_they_must_be() {
    let mut r = Pcg64::seed_from_u64(3);
    let gpu = fused();
    let xs = data(&mut r, 96);
    let x = gpu.upload(12, 8, &xs).unwrap();
    let a = gpu.affine(&x, 2.0, 0.0).unwrap();
    gpu.copy_into(&a, &x).unwrap(); // x ← 2x
    let b = gpu.binary(BinOp::Add, &x, &a).unwrap(); // 4x
    let got = gpu.read(&b).unwrap();
    for (g, v) in got.iter().zip(&xs) {
        assert_eq!(*g, 4.0 * v);
    }
    // A sum of 12 tensors: 11 chained additions with 12 outside inputs.
    let parts: Vec<Vec<f32>> = (0..12).map(|_| data(&mut r, 96)).collect();
    let ts: Vec<Tensor> = parts
        .iter()
        .map(|p| gpu.upload(12, 8, p).unwrap())
        .collect();
    let mut acc = ts[0].clone();
    for t in &ts[1..] {
        acc = gpu.binary(BinOp::Add, &acc, t).unwrap();
    }
    let got = gpu.read(&acc).unwrap();
    for (i, g) in got.iter().enumerate() {
        let want: f32 = parts.iter().map(|p| p[i]).sum(); // same order: left to right
        assert_eq!(*g, want, "element {i}");
    }
    // Sums stay as they were: a reduction is never part of a chain.
    let s = gpu.read(&gpu.sum(&acc, Axis::All).unwrap()).unwrap()[0] as f64;
    let want: f64 = got.iter().map(|&v| v as f64).sum();
    assert!((s - want).abs() < 1e-4 * want.abs().max(1.0));
}

/// A chain reaches past dispatches that do not touch what its next member reads or writes
/// (that member then runs before them), and not past one that does: here a copy over an
/// input of the next op, whose result must see the copy.
#[test]
fn chains_reach_past_independent_dispatches_only() {
    let mut r = Pcg64::seed_from_u64(4);
    let gpu = &Gpu::new().unwrap(); // its own: it counts dispatches
    let (xs, zs, ws) = (data(&mut r, 96), data(&mut r, 96), data(&mut r, 24));
    let x = gpu.upload(12, 8, &xs).unwrap();
    let z = gpu.upload(12, 8, &zs).unwrap();
    let w = gpu.upload(3, 8, &ws).unwrap();
    gpu.sync().unwrap();
    let before = gpu.dispatches_submitted();
    // t, then a product reading t, then u = 3t: u joins t's chain past the product.
    let t = gpu.affine(&x, 2.0, 0.0).unwrap();
    let p = gpu.matmul(&t, &w, false, true).unwrap();
    let u = gpu.affine(&t, 3.0, 0.0).unwrap();
    // a = 2x; x ← z (a copy: no chain input); b = a + x must add z, not the old x.
    let a = gpu.affine(&x, 2.0, 0.0).unwrap();
    gpu.copy_into(&z, &x).unwrap();
    let b = gpu.binary(BinOp::Add, &a, &x).unwrap();
    let (pv, uv, bv) = (
        gpu.read(&p).unwrap(),
        gpu.read(&u).unwrap(),
        gpu.read(&b).unwrap(),
    );
    let ran = gpu.dispatches_submitted() - before;
    for i in 0..96 {
        assert_eq!(uv[i], 3.0 * (2.0 * xs[i]), "u[{i}]");
        assert_eq!(bv[i], 2.0 * xs[i] + zs[i], "b[{i}]");
    }
    for (i, &v) in pv.iter().enumerate() {
        let (row, col) = (i / 3, i % 3);
        let want: f64 = (0..8)
            .map(|k| 2.0 * xs[row * 8 + k] as f64 * ws[col * 8 + k] as f64)
            .sum();
        assert!(
            (v as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
            "p[{i}]"
        );
    }
    // 6 recorded; t and u fused past the product, a, the copy and b apart: 5 ran.
    assert_eq!(ran, 5);
}
