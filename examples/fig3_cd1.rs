//! The paper's Fig. 3 (SPEC §9): on the cosine density, the score-matching loss (SSM-VR on the
//! training set) of models trained by CD-1 with and without its control variate over a range
//! of step sizes, beside models trained by MVL and by SSM; averaged over runs.
//!
//! cargo run --release --example fig3_cd1 -- [--quick] [--seed 0] [--out-dir wmvl-out/fig3]
//!
//! Full mode: 3 runs, 2 000 steps, ε from 1e-1 to 1e-4. `--quick` (CI): 1 run, 300 steps,
//! ε ∈ {1e-2, 1e-3}; it fails unless CD-1 with the control variate at ε = 1e-3 ends within 10 %
//! of the SSM-trained model's loss.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{arg, Res};

use wmvl::data::Toy;
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, HostParams, Init, Model};
use wmvl::objective::{Config, Objective};
use wmvl::plot::lines::{line_panels, LinePanel, Scale, Series};
use wmvl::progress::Progress;
use wmvl::train::{evaluate, TrainConfig, Trainer};

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    common::check_options(
        &args,
        "cargo run --release --example fig3_cd1 -- [--quick] [--seed 0] [--out-dir wmvl-out/fig3]",
        &["--seed", "--out-dir"],
    )?;
    let quick = args.iter().any(|a| a == "--quick");
    let seed: u64 = arg(&args, "--seed", 0)?;
    let out_dir: PathBuf = arg(&args, "--out-dir", PathBuf::from("wmvl-out/fig3"))?;
    std::fs::create_dir_all(&out_dir)?;
    let (runs, steps, grid): (u64, usize, Vec<f64>) = if quick {
        (1, 300, vec![1e-2, 1e-3])
    } else {
        (3, 2_000, vec![1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4])
    };
    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let toy = Toy::Cosine;
    let arch = Arch::paper(2);

    // Progress over all trainings, with the time left at the rate so far.
    let total = runs as usize * (2 + 2 * grid.len());
    let done = std::cell::Cell::new(0usize);
    let t0 = Instant::now();
    let tick = |what: String| {
        done.set(done.get() + 1);
        let p = Progress {
            what: "train",
            done: done.get(),
            total,
            unit: "trainings",
            elapsed: t0.elapsed(),
            detail: what,
        };
        println!("  {}", p.line());
    };
    // The SSM-VR loss on the training set after training with `objective` at step `eps`,
    // averaged over the runs (each run: its own data, initial parameters and noise).
    let loss_after =
        |objective: Objective, eps: f64, cv: bool| -> Result<f64, Box<dyn std::error::Error>> {
            let mut sum = 0.0;
            for run in 0..runs {
                let s = seed + 1000 * run;
                let data = toy.sample_matrix(2_000, s);
                let x = gpu.upload(data.rows, 2, &data.data)?;
                let hp = HostParams::init(&arch, Init::Glorot, s)?;
                let model = Model::from_host(arch.clone(), &hp, |r, c, d| gpu.upload(r, c, d))?;
                let cfg = TrainConfig {
                    objective,
                    steps,
                    seed: s,
                    log_every: steps,
                    obj: Config {
                        eps: eps as f32,
                        control_variate: cv,
                        ..Config::default()
                    },
                    ..Default::default()
                };
                let mut tr = Trainer::new(&gpu, model, x.clone(), None, cfg)?;
                tr.run()?;
                let mut m = tr.model;
                let (j, _) = evaluate(
                    &gpu,
                    &mut m,
                    &x,
                    Objective::SsmVr,
                    &Config::default(),
                    2_000,
                    s ^ 0x55,
                )?;
                sum += j;
                tick(format!(
                    "{} at ε = {eps:e}{}, run {}",
                    objective.name(),
                    if cv { "" } else { " without control variate" },
                    run + 1
                ));
            }
            Ok(sum / runs as f64)
        };

    let ssm = loss_after(Objective::SsmVr, 1e-3, true)?;
    let mvl = loss_after(Objective::Mvl, 1e-3, true)?;
    println!("trained by SSM: {ssm:.4}; by MVL (ε₀ = 1e-3): {mvl:.4}");
    let (mut with_cv, mut without_cv) = (vec![], vec![]);
    for &eps in &grid {
        let a = loss_after(Objective::Cd1, eps, true)?;
        let b = loss_after(Objective::Cd1, eps, false)?;
        println!("CD-1 at ε = {eps:e}: with control variate {a:.4}, without {b:.4}");
        with_cv.push(a);
        without_cv.push(b);
    }
    let flat = |v: f64| vec![v; grid.len()];
    let panel = LinePanel {
        title: "score-matching loss after training".into(),
        x_label: "step size eps".into(),
        y_label: "SSM loss".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Linear,
        equal_aspect: false,
        series: vec![
            Series {
                label: "CD-1 with control variate".into(),
                x: grid.clone(),
                y: with_cv.clone(),
                band: None,
            },
            Series {
                label: "CD-1 without".into(),
                x: grid.clone(),
                y: without_cv.clone(),
                band: None,
            },
            Series {
                label: "MVL (eps0 = 1e-3)".into(),
                x: grid.clone(),
                y: flat(mvl),
                band: None,
            },
            Series {
                label: "SSM".into(),
                x: grid.clone(),
                y: flat(ssm),
                band: None,
            },
        ],
    };
    let fig = out_dir.join("fig3_cd1.png");
    line_panels(
        &fig,
        &[panel],
        &format!("Cosine, 2 000 points, {steps} steps, {runs} run(s); loss by SSM-VR on the training set; {}", r.name),
    )?;
    println!(
        "took {:.0} s on {}; wrote {}",
        t0.elapsed().as_secs_f64(),
        r.name,
        fig.display()
    );
    if quick {
        let at = grid
            .iter()
            .position(|&e| e == 1e-3)
            .expect("1e-3 in the grid");
        let rel = (with_cv[at] - ssm).abs() / ssm.abs();
        println!(
            "check: CD-1 with control variate at 1e-3 is {:.1} % from SSM",
            100.0 * rel
        );
        if rel > 0.1 {
            return Err(format!("--quick check failed: {:.1} % > 10 %", 100.0 * rel).into());
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main_of("fig3_cd1", run)
}
