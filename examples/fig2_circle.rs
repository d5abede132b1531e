//! The paper's Fig. 2 (SPEC §9): Riemannian MVL on the S¹ mixture of SPEC §8 — learned vs true
//! density around the circle (a polar plot and log densities against the angle), the L2 error
//! of the centred log density and the Riemannian Fisher divergence.
//!
//! cargo run --release --example fig2_circle -- [--quick] [--seed 0] [--out-dir wmvl-out/fig2]
//!     [--n 50000] [--batch 50000] [--steps 3000] [--eps 1e-5] [--lr 5e-4]
//!
//! Full mode: 50 000 samples in full batch at ε₀ = 1e-5 (the paper's setting, on the fused
//! step), 2 × 100 tanh. `--quick` (CI): 2 000 samples, batches of 500, 600 steps; it fails
//! unless the L2 error of the centred log density is below 0.3 (the claim: the learned density
//! matches the truth up to a constant).

mod common;

use std::path::PathBuf;

use common::{arg, Res};

use wmvl::directional::Directional;
use wmvl::gpu::Gpu;
use wmvl::plot::lines::{line_panels, LinePanel, Scale, Series};
use wmvl::train::energy_and_score;

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // First: options are checked before anything is created.
    let run = common::SphereRun::from_args(
        "fig2_circle",
        &args,
        common::SphereRun {
            n: 2_000,
            batch: 500,
            steps: 600,
            eps: 1e-3,
            lr: 3e-3,
        },
    )?;
    let quick = args.iter().any(|a| a == "--quick");
    let seed: u64 = arg(&args, "--seed", 0)?;
    let out_dir: PathBuf = arg(&args, "--out-dir", PathBuf::from("wmvl-out/fig2"))?;
    std::fs::create_dir_all(&out_dir)?;
    let (n, eps) = (run.n, run.eps);

    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let truth = Directional::from_name("s1mix")?;
    let (mut model, train_s) = common::train_on_sphere(&gpu, &truth, run, seed)?;

    // The learned and true log densities on 720 angles, normalised on the circle.
    let k = 720;
    let angles: Vec<f64> = (0..k)
        .map(|i| std::f64::consts::TAU * (i as f64 + 0.5) / k as f64)
        .collect();
    let pts: Vec<f32> = angles
        .iter()
        .flat_map(|t| [t.cos() as f32, t.sin() as f32])
        .collect();
    let (e, _) = energy_and_score(&gpu, &mut model, &gpu.upload(k, 2, &pts)?, 4096)?;
    let dtheta = std::f64::consts::TAU / k as f64;
    let normalise = |l: Vec<f64>| {
        let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z = m + (l.iter().map(|v| (v - m).exp()).sum::<f64>() * dtheta).ln();
        l.into_iter().map(|v| v - z).collect::<Vec<f64>>()
    };
    let logq = normalise(e.iter().map(|&v| -(v as f64)).collect());
    let logp: Vec<f64> = angles
        .iter()
        .map(|t| truth.log_density(&[t.cos(), t.sin()]))
        .collect::<Result<_, _>>()?;
    let c: f64 = logq.iter().zip(&logp).map(|(a, b)| a - b).sum::<f64>() / k as f64;
    let l2 = (logq
        .iter()
        .zip(&logp)
        .map(|(a, b)| (a - b - c).powi(2))
        .sum::<f64>()
        / k as f64)
        .sqrt();

    let fisher = common::riemannian_fisher(&gpu, &mut model, &truth, 5_000, seed + 1)?;

    // Polar panel: radius 1 + density·scale; and log densities against the angle.
    let pmax = logp
        .iter()
        .chain(&logq)
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .exp();
    let polar = |l: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let mut xs = vec![];
        let mut ys = vec![];
        for (t, v) in angles
            .iter()
            .chain([&angles[0]])
            .zip(l.iter().chain([&l[0]]))
        {
            let r = 1.0 + 0.8 * v.exp() / pmax;
            xs.push(r * t.cos());
            ys.push(r * t.sin());
        }
        (xs, ys)
    };
    let (tx, ty) = polar(&logp);
    let (qx, qy) = polar(&logq);
    let circle = polar(&vec![f64::NEG_INFINITY; k]);
    let deg: Vec<f64> = angles.iter().map(|t| t.to_degrees()).collect();
    let panels = [
        LinePanel {
            title: "density around the circle".into(),
            x_label: "y1".into(),
            y_label: "y2".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            equal_aspect: true,
            series: vec![
                Series {
                    label: "true".into(),
                    x: tx,
                    y: ty,
                    band: None,
                },
                Series {
                    label: "learned (MVL)".into(),
                    x: qx,
                    y: qy,
                    band: None,
                },
                Series {
                    label: "unit circle".into(),
                    x: circle.0,
                    y: circle.1,
                    band: None,
                },
            ],
        },
        LinePanel {
            title: "log density".into(),
            x_label: "angle (degrees)".into(),
            y_label: "log p".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            equal_aspect: false,
            series: vec![
                Series {
                    label: "true".into(),
                    x: deg.clone(),
                    y: logp.clone(),
                    band: None,
                },
                Series {
                    label: "learned (shifted)".into(),
                    x: deg,
                    y: logq.iter().map(|v| v - c).collect(),
                    band: None,
                },
            ],
        },
    ];
    let fig = out_dir.join("fig2_circle.png");
    let caption = format!(
        "Riemannian MVL on the S1 mixture of SPEC 8 ({n} samples, eps0 = {eps:e}): L2 error of the centred log density {l2:.3}, Fisher divergence {fisher:.4}; {}",
        r.name
    );
    line_panels(&fig, &panels, &caption)?;
    println!(
        "L2 error of the centred log density: {l2:.4}\nRiemannian Fisher divergence to the truth: {fisher:.4}\ntraining: {train_s:.1} s on {}\nwrote {}",
        r.name,
        fig.display()
    );
    if quick && l2 >= 0.3 {
        return Err(format!("--quick check failed: L2 error {l2:.3} ≥ 0.3").into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main_of("fig2_circle", run)
}
