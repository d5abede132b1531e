//! The paper's Fig. 4 (SPEC §9): Riemannian MVL on the S² mixture of SPEC §8 — Mollweide maps
//! of the true and learned densities side by side, with the L2 error of the centred log density
//! (area-weighted over the sphere) and the Riemannian Fisher divergence.
//!
//! cargo run --release --example fig4_sphere -- [--quick] [--seed 0] [--out-dir wmvl-out/fig4]
//!     [--n 50000] [--batch 50000] [--steps 3000] [--eps 1e-5] [--lr 5e-4]
//!
//! Full mode: 50 000 samples in full batch at ε₀ = 1e-5 on the fused step, 2 × 100 tanh.
//! `--quick` (CI): 3 000 samples, batches of 500, 800 steps; it fails unless the L2 error of
//! the centred log density is below 0.5 (the claim: the learned density matches the truth up
//! to a constant).

mod common;

use std::f64::consts::{PI, SQRT_2};
use std::path::PathBuf;

use common::{arg, Res};

use wmvl::directional::Directional;
use wmvl::gpu::Gpu;
use wmvl::plot::{density_panels, Grid, Heatmap};
use wmvl::train::energy_and_score;

/// The point of S² at Mollweide map coordinates (x, y) ∈ [−2√2, 2√2] × [−√2, √2], or None
/// outside the map's ellipse (inverse Mollweide projection).
fn mollweide_inverse(x: f64, y: f64) -> Option<[f64; 3]> {
    if (x / (2.0 * SQRT_2)).powi(2) + (y / SQRT_2).powi(2) > 1.0 {
        return None;
    }
    let theta = (y / SQRT_2).clamp(-1.0, 1.0).asin();
    let lat = ((2.0 * theta + (2.0 * theta).sin()) / PI)
        .clamp(-1.0, 1.0)
        .asin();
    let lon = PI * x / (2.0 * SQRT_2 * theta.cos().max(1e-12));
    if lon.abs() > PI {
        return None;
    }
    Some([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()])
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // First: options are checked before anything is created.
    let run = common::SphereRun::from_args(
        "fig4_sphere",
        &args,
        common::SphereRun {
            n: 3_000,
            batch: 500,
            steps: 800,
            eps: 1e-3,
            lr: 3e-3,
        },
    )?;
    let quick = args.iter().any(|a| a == "--quick");
    let seed: u64 = arg(&args, "--seed", 0)?;
    let out_dir: PathBuf = arg(&args, "--out-dir", PathBuf::from("wmvl-out/fig4"))?;
    std::fs::create_dir_all(&out_dir)?;
    let (n, eps) = (run.n, run.eps);

    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let truth = Directional::from_name("s2mix")?;
    let (mut model, train_s) = common::train_on_sphere(&gpu, &truth, run, seed)?;

    // The map: a Mollweide grid; cells outside the ellipse show the panel's minimum.
    let grid = Grid::new(-2.0 * SQRT_2, 2.0 * SQRT_2, -SQRT_2, SQRT_2, 240, 120)?;
    let cells: Vec<Option<[f64; 3]>> = grid
        .points()
        .iter()
        .map(|p| mollweide_inverse(p[0], p[1]))
        .collect();
    let inside: Vec<[f64; 3]> = cells.iter().flatten().copied().collect();
    let pts: Vec<f32> = inside.iter().flat_map(|y| y.map(|v| v as f32)).collect();
    let (e, _) = energy_and_score(&gpu, &mut model, &gpu.upload(inside.len(), 3, &pts)?, 4096)?;
    let logq: Vec<f64> = e.iter().map(|&v| -(v as f64)).collect();
    let logp: Vec<f64> = inside
        .iter()
        .map(|y| truth.log_density(y))
        .collect::<Result<_, _>>()?;
    // Mollweide is equal-area: every inside cell has the same area, so plain means are
    // area-weighted averages over the sphere.
    let m = inside.len() as f64;
    let c = logq.iter().zip(&logp).map(|(a, b)| a - b).sum::<f64>() / m;
    let l2 = (logq
        .iter()
        .zip(&logp)
        .map(|(a, b)| (a - b - c).powi(2))
        .sum::<f64>()
        / m)
        .sqrt();

    let fisher = common::riemannian_fisher(&gpu, &mut model, &truth, 5_000, seed + 1)?;

    let fill = |vals: &[f64]| -> Vec<f64> {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let mut it = vals.iter();
        cells
            .iter()
            .map(|c| match c {
                Some(_) => *it.next().expect("one value per inside cell"),
                None => lo,
            })
            .collect()
    };
    let panels = [
        Heatmap::on_grid("true log density", &grid, fill(&logp)),
        Heatmap::on_grid("learned log density (MVL)", &grid, fill(&logq)),
    ];
    let fig = out_dir.join("fig4_sphere.png");
    let caption = format!(
        "Mollweide maps of the S2 mixture of SPEC 8 ({n} samples, eps0 = {eps:e}); axes are map coordinates. L2 error of the centred log density {l2:.3}, Fisher divergence {fisher:.3}; {}",
        r.name
    );
    density_panels(&fig, &grid, &panels, &caption)?;
    println!(
        "L2 error of the centred log density: {l2:.4}\nRiemannian Fisher divergence to the truth: {fisher:.4}\ntraining: {train_s:.1} s on {}\nwrote {}",
        r.name,
        fig.display()
    );
    if quick && l2 >= 0.5 {
        return Err(format!("--quick check failed: L2 error {l2:.3} ≥ 0.5").into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main_of("fig4_sphere", run)
}
