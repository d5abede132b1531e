//! Kernel throughput: matmul GFLOP/s and elementwise GB/s at a few sizes, plus the cost of
//! one tiny dispatch — independent ones, and a chain in which each reads what the previous
//! one wrote (the real cost between the dependent kernels of a step: the barrier between
//! them), unfused and fused at flush. GPU time from timestamp queries where the adapter has
//! them (the wall clock of flush + wait otherwise, which also counts the submit).
//!
//! cargo bench --bench kernels [-- --quick]

use std::time::Instant;

use wmvl::backend::{Backend, RandomFill};
use wmvl::gpu::{Gpu, Tensor};
use wmvl::ops::{Axis, BinOp};
use wmvl::rng::Dist;

/// Run `record` (which records `reps` launches) once to warm up, then `trials` times;
/// returns the median seconds per launch, GPU-timed when possible, and the clock used.
fn time(
    gpu: &Gpu,
    reps: usize,
    trials: usize,
    record: &dyn Fn() -> wmvl::Result<Vec<Tensor>>,
) -> wmvl::Result<(f64, &'static str)> {
    record()?;
    gpu.sync()?;
    let mut samples = Vec::new();
    let mut clock = "wall";
    for _ in 0..trials {
        let t = Instant::now();
        let keep = record()?;
        let gpu_s = gpu.flush_timed()?;
        gpu.sync()?;
        let wall = t.elapsed().as_secs_f64();
        drop(keep);
        samples.push(match gpu_s {
            Some(s) if s > 0.0 => {
                clock = "gpu";
                s
            }
            _ => wall,
        });
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2] / reps as f64, clock))
}

fn main() -> wmvl::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let trials = if quick { 3 } else { 7 };

    let big = r.device_type != "Cpu";
    let sizes: &[usize] = if big {
        &[256, 1024, 2048, 4096]
    } else if quick {
        &[128, 256]
    } else {
        &[128, 256, 512]
    };
    for &n in sizes {
        let a = gpu.random(n, n, Dist::STANDARD_NORMAL, 1, 1)?;
        let b = gpu.random(n, n, Dist::STANDARD_NORMAL, 1, 2)?;
        let reps =
            (if big { 2e10 } else { 2e8 } / (2.0 * (n as f64).powi(3))).clamp(1.0, 64.0) as usize;
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            let (s, clock) = time(&gpu, reps, trials, &|| {
                (0..reps).map(|_| gpu.matmul(&a, &b, ta, tb)).collect()
            })?;
            println!(
                "matmul      n={n:<5} ta={ta:<5} tb={tb:<5} {:>9.2} GFLOP/s  ({:.3} ms/launch, {clock} clock)",
                2.0 * (n as f64).powi(3) / s / 1e9,
                s * 1e3
            );
        }
    }

    let lens: &[usize] = if big {
        &[1 << 16, 1 << 20, 1 << 24]
    } else {
        &[1 << 12, 1 << 16, 1 << 20]
    };
    for &len in lens {
        let a = gpu.random(len, 1, Dist::STANDARD_NORMAL, 2, 1)?;
        let b = gpu.random(len, 1, Dist::STANDARD_NORMAL, 2, 2)?;
        let reps = (if big { 1e9 } else { 2e7 } / (12.0 * len as f64)).clamp(1.0, 256.0) as usize;
        let (s, clock) = time(&gpu, reps, trials, &|| {
            (0..reps).map(|_| gpu.binary(BinOp::Mul, &a, &b)).collect()
        })?;
        println!(
            "binary mul  n={len:<9} {:>9.2} GB/s     ({:.3} ms/launch, {clock} clock)",
            12.0 * len as f64 / s / 1e9,
            s * 1e3
        );
        let (s, clock) = time(&gpu, reps, trials, &|| {
            (0..reps).map(|_| gpu.sum(&a, Axis::All)).collect()
        })?;
        println!(
            "sum all     n={len:<9} {:>9.2} GB/s     ({:.3} ms/launch, {clock} clock)",
            4.0 * len as f64 / s / 1e9,
            s * 1e3
        );
    }

    // Launch overhead: many 1-element dispatches in one pass.
    let x = gpu.full(1, 1, 1.0)?;
    let reps = 1000;
    let (s, clock) = time(&gpu, reps, trials, &|| {
        (0..reps).map(|_| gpu.affine(&x, 2.0, 1.0)).collect()
    })?;
    println!(
        "tiny dispatch               {:>9.2} µs/launch ({clock} clock)",
        s * 1e6
    );
    // Dependent dispatches: each reads the previous one's output (a barrier between them),
    // on a device that runs each op as its own kernel; then the same chain fused at flush
    // (`src/gpu/fuse.rs`: up to 14 affine maps per kernel, the parameter block's limit).
    let plain = Gpu::new()?.without_fusion();
    for (dev, what) in [(&plain, "dependent chain"), (&gpu, "fused chain    ")] {
        for len in [1usize, 4096] {
            let x = dev.full(len, 1, 1.0)?;
            let (s, clock) = time(dev, reps, trials, &|| {
                let mut y = x.clone();
                for _ in 0..reps {
                    y = dev.affine(&y, 0.5, 1.0)?;
                }
                Ok(vec![y])
            })?;
            println!(
                "{what} n={len:<5}     {:>9.2} µs/op     ({clock} clock)",
                s * 1e6
            );
        }
    }
    let t = Instant::now();
    let n = 50;
    for _ in 0..n {
        gpu.affine(&x, 2.0, 1.0)?;
        gpu.sync()?;
    }
    println!(
        "submit + wait               {:>9.2} µs       (wall clock)",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    Ok(())
}
