//! The paper's Fig. 1 (SPEC §9): on banana, the squared bias of the MVL and VR-DSM estimators
//! against sliced score matching (SSM-VR, unbiased for J), and the per-sample variance of MVL
//! and DSM with and without their control variates, over a log grid of ε; a z-test of each
//! estimator's mean against SSM at ε = 6e-5. MVL runs on the fused step; the tape's MVL is shown
//! too, where f32 round-off takes over at small ε (SPEC §2, "Precision").
//!
//! cargo run --release --example fig1_bias_variance -- [--quick] [--seed 0] [--out-dir wmvl-out/fig1]
//!
//! Writes fig1_bias_variance.png and .csv. `--quick` (CI): 4 096 points, 4 values of ε; it
//! fails unless MVL's variance without the control variate grows at least 100× from the largest
//! to the smallest ε while staying within 2× with it, and the fused MVL mean at 6e-5 passes
//! the z-test (p > 0.05).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{arg, Res};

use wmvl::data::Toy;
use wmvl::fused::FusedMvl;
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, HostParams, Init, Model};
use wmvl::objective::{Config, Objective};
use wmvl::plot::lines::{line_panels, LinePanel, Scale, Series};
use wmvl::progress::Progress;
use wmvl::train::{evaluate, evaluate_fused, TrainConfig, Trainer};

/// Two-sided p-value of a standard normal z (Abramowitz–Stegun 7.1.26 for erfc).
fn p_value(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    (poly * (-x * x).exp()).clamp(0.0, 1.0)
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    common::check_options(
        &args,
        "cargo run --release --example fig1_bias_variance -- [--quick] [--seed 0] [--out-dir wmvl-out/fig1]",
        &["--seed", "--out-dir"],
    )?;
    let quick = args.iter().any(|a| a == "--quick");
    let seed: u64 = arg(&args, "--seed", 0)?;
    let out_dir: PathBuf = arg(&args, "--out-dir", PathBuf::from("wmvl-out/fig1"))?;
    std::fs::create_dir_all(&out_dir)?;
    let (n, train_steps, grid): (usize, usize, Vec<f64>) = if quick {
        (4_096, 200, vec![1e-1, 1e-3, 6e-5, 1e-5])
    } else {
        (
            50_000,
            2_000,
            vec![1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 6e-5, 3e-5, 1e-5],
        )
    };

    let t_all = Instant::now();
    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    // A model trained briefly by MVL on banana: the estimators are compared on it.
    let toy = Toy::Banana;
    let train = toy.sample_matrix(10_000, seed);
    let arch = Arch::paper(2);
    let hp = HostParams::init(&arch, Init::Glorot, seed)?;
    let model = Model::from_host(arch, &hp, |r, c, d| gpu.upload(r, c, d))?;
    let mut tr = Trainer::new(
        &gpu,
        model,
        gpu.upload(train.rows, 2, &train.data)?,
        None,
        TrainConfig {
            steps: train_steps,
            seed,
            log_every: train_steps,
            ..Default::default()
        },
    )?;
    tr.run()?;
    let mut model = tr.model;

    let data = toy.sample_matrix(n, seed + 7);
    let x = gpu.upload(n, 2, &data.data)?;
    let chunk = 4096.min(n);
    let eval_seed = seed ^ 0xf1;
    // The reference: SSM-VR over several independent projections (unbiased for J).
    let mut ssm = vec![];
    for k in 0..4 {
        ssm.push(evaluate(
            &gpu,
            &mut model,
            &x,
            Objective::SsmVr,
            &Config::default(),
            chunk,
            eval_seed + 100 + k,
        )?);
    }
    let j = ssm.iter().map(|s| s.0).sum::<f64>() / ssm.len() as f64;
    let j_se = (ssm.iter().map(|s| s.1 * s.1).sum::<f64>()).sqrt() / ssm.len() as f64;
    println!("SSM-VR reference J = {j:.5} ± {j_se:.5}");

    struct Row {
        eps: f64,
        est: &'static str,
        mean: f64,
        se: f64,
    }
    let mut rows = vec![];
    let t0 = Instant::now();
    for (k, &eps) in grid.iter().enumerate() {
        for (cv, est) in [(true, "mvl (fused)"), (false, "mvl no cv (fused)")] {
            let cfg = Config {
                eps: eps as f32,
                control_variate: cv,
                ..Config::default()
            };
            let step = FusedMvl::new(&gpu, &mut model, &cfg, chunk, None)?;
            let bound = step.bind(&x, None)?;
            let (mean, se) = evaluate_fused(&gpu, &step, &bound, &mut model, eval_seed)?;
            rows.push(Row { eps, est, mean, se });
        }
        let cfg = Config {
            eps: eps as f32,
            ..Config::default()
        };
        let (mean, se) = evaluate(&gpu, &mut model, &x, Objective::Mvl, &cfg, chunk, eval_seed)?;
        rows.push(Row {
            eps,
            est: "mvl (tape)",
            mean,
            se,
        });
        let (mean, se) = evaluate(
            &gpu,
            &mut model,
            &x,
            Objective::VrDsm,
            &cfg,
            chunk,
            eval_seed,
        )?;
        rows.push(Row {
            eps,
            est: "vr-dsm",
            mean,
            se,
        });
        // DSM reports J + d/2ε: the known constant is removed before comparing.
        let (mean, se) = evaluate(&gpu, &mut model, &x, Objective::Dsm, &cfg, chunk, eval_seed)?;
        rows.push(Row {
            eps,
            est: "dsm",
            mean: mean - 2.0 / (2.0 * eps),
            se,
        });
        let p = Progress {
            what: "estimators",
            done: k + 1,
            total: grid.len(),
            unit: "step sizes",
            elapsed: t0.elapsed(),
            detail: format!("ε = {eps:e} done"),
        };
        println!("  {}", p.line());
    }

    // Table, CSV and figure.
    let mut csv = String::from("eps,estimator,mean,se,variance,bias2,z,p\n");
    println!(
        "{:>8}  {:<20} {:>12} {:>10} {:>12} {:>10} {:>8}",
        "eps", "estimator", "mean", "se", "variance", "bias^2", "p"
    );
    for r in &rows {
        let var = r.se * r.se * n as f64;
        let z = (r.mean - j) / (r.se * r.se + j_se * j_se).sqrt();
        let p = p_value(z);
        println!(
            "{:>8.0e}  {:<20} {:>12.5} {:>10.2e} {:>12.4e} {:>10.2e} {:>8.3}",
            r.eps,
            r.est,
            r.mean,
            r.se,
            var,
            (r.mean - j).powi(2),
            p
        );
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            r.eps,
            r.est,
            r.mean,
            r.se,
            var,
            (r.mean - j).powi(2),
            z,
            p
        ));
    }
    wmvl::fsutil::write_atomic(&out_dir.join("fig1_bias_variance.csv"), csv.as_bytes())?;
    let series = |label: &str, est: &str, f: &dyn Fn(&Row) -> f64| -> Series {
        let sel: Vec<&Row> = rows.iter().filter(|r| r.est == est).collect();
        Series {
            label: label.to_string(),
            x: sel.iter().map(|r| r.eps).collect(),
            y: sel.iter().map(|r| f(r)).collect(),
            band: None,
        }
    };
    let floor = 1e-12;
    // Bias² = (mean − J)², beside what 2 SE of the comparison can resolve: below that curve a
    // bias is not distinguishable from zero.
    let bias = |r: &Row| (r.mean - j).powi(2).max(floor);
    let limit = |r: &Row| (4.0 * (r.se * r.se + j_se * j_se)).max(floor);
    let variance = |r: &Row| (r.se * r.se * n as f64).max(floor);
    let panels = [
        LinePanel {
            title: "squared bias against SSM".into(),
            x_label: "eps".into(),
            y_label: "bias^2".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            equal_aspect: false,
            // MVL on the fused step last, so that it is drawn over the curves it coincides with.
            series: vec![
                series("(2 SE)^2: resolution", "mvl (fused)", &limit),
                series("vr-dsm", "vr-dsm", &bias),
                series("mvl (tape)", "mvl (tape)", &bias),
                series("mvl (fused)", "mvl (fused)", &bias),
            ],
        },
        LinePanel {
            title: "per-sample variance".into(),
            x_label: "eps".into(),
            y_label: "variance".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            equal_aspect: false,
            series: vec![
                series("mvl no cv (fused)", "mvl no cv (fused)", &variance),
                series("dsm", "dsm", &variance),
                series("vr-dsm", "vr-dsm", &variance),
                series("mvl (tape)", "mvl (tape)", &variance),
                series("mvl (fused)", "mvl (fused)", &variance),
            ],
        },
    ];
    let fig = out_dir.join("fig1_bias_variance.png");
    line_panels(
        &fig,
        &panels,
        &format!("Banana, {n} points, model trained {train_steps} MVL steps; SSM-VR reference J = {j:.4}; {}", r.name),
    )?;
    println!(
        "took {:.0} s on {}; wrote {} and the .csv beside it",
        t_all.elapsed().as_secs_f64(),
        r.name,
        fig.display()
    );

    if quick {
        let var_of = |est: &str, eps: f64| {
            rows.iter()
                .find(|r| r.est == est && r.eps == eps)
                .map(|r| r.se * r.se * n as f64)
                .unwrap_or(f64::NAN)
        };
        let (big, small) = (grid[0], *grid.last().expect("a grid"));
        let grow = var_of("mvl no cv (fused)", small) / var_of("mvl no cv (fused)", big);
        let flat = var_of("mvl (fused)", small) / var_of("mvl (fused)", big);
        let at = rows
            .iter()
            .find(|r| r.est == "mvl (fused)" && r.eps == 6e-5)
            .expect("6e-5 in the grid");
        let p = p_value((at.mean - j) / (at.se * at.se + j_se * j_se).sqrt());
        println!("check: variance without cv ×{grow:.0}, with cv ×{flat:.2}; p at 6e-5 = {p:.3}");
        if !(grow >= 100.0 && (0.5..=2.0).contains(&flat) && p > 0.05) {
            return Err("--quick check failed (see the line above)".into());
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main_of("fig1_bias_variance", run)
}
