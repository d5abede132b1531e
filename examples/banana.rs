//! The main job: fit a score-net energy to the banana density with MVL (SPEC §2, §9 Fig. 1
//! setting: 2 × 100 Swish with spectral norm, batch 200, lr 4e-3, RMSProp), compare the
//! Fisher divergence to the true density with exact score matching given the same wall-clock
//! budget, and write a figure and a checkpoint.
//!
//! cargo run --release --example banana -- [--steps 400] [--seed 0] [--out-dir wmvl-out/banana]

mod common;

use std::path::PathBuf;

use common::arg;
use std::time::Instant;

use wmvl::app::{density_figure, fisher_to_truth, save_model};
use wmvl::data::Toy;
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, HostParams, Init, Model};
use wmvl::objective::Objective;
use wmvl::train::{TrainConfig, Trainer};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = arg(&args, "--steps", 400)?;
    let seed: u64 = arg(&args, "--seed", 0)?;
    let out_dir: PathBuf = arg(&args, "--out-dir", PathBuf::from("wmvl-out/banana"))?;
    std::fs::create_dir_all(&out_dir)?;

    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);

    let toy = Toy::Banana;
    let n_train = 10_000;
    let data = toy.sample_matrix(n_train, seed);
    let x = gpu.upload(data.rows, data.cols, &data.data)?;
    let arch = Arch::paper(2);
    // Both methods start from the same initial parameters.
    let init = HostParams::init(&arch, Init::Glorot, seed)?;
    let cfg = TrainConfig {
        steps,
        batch: 200,
        lr: 4e-3,
        seed,
        log_every: 50,
        ..Default::default()
    };

    println!(
        "\n[1/2] MVL (Langevin, control variate, eps0 = {}), {steps} steps",
        cfg.obj.eps
    );
    let model = Model::from_host(arch.clone(), &init, |r, c, d| gpu.upload(r, c, d))?;
    let mut mvl = Trainer::new(
        &gpu,
        model,
        x.clone(),
        None,
        TrainConfig {
            objective: Objective::Mvl,
            ..cfg.clone()
        },
    )?;
    let t = Instant::now();
    let s_mvl = mvl.run()?;
    let budget = t.elapsed();

    println!(
        "\n[2/2] exact score matching, same wall-clock budget ({:.1} s)",
        budget.as_secs_f64()
    );
    let model = Model::from_host(arch.clone(), &init, |r, c, d| gpu.upload(r, c, d))?;
    let mut exact = Trainer::new(
        &gpu,
        model,
        x.clone(),
        None,
        TrainConfig {
            objective: Objective::ExactSm,
            log_every: 10,
            ..cfg.clone()
        },
    )?;
    let t = Instant::now();
    while t.elapsed() < budget && exact.steps_done < steps {
        exact.cfg.steps = (exact.steps_done + 10).min(steps);
        exact.run()?;
    }
    println!(
        "exact SM: {} steps in {:.1} s",
        exact.steps_done,
        t.elapsed().as_secs_f64()
    );

    let (f_mvl, se_mvl) = fisher_to_truth(&gpu, &mut mvl.model, toy, 5000, seed + 1)?;
    let (f_ex, se_ex) = fisher_to_truth(&gpu, &mut exact.model, toy, 5000, seed + 1)?;
    println!("\nFisher divergence to the true banana density (5000 fresh samples):");
    println!(
        "  MVL       {f_mvl:.4} ± {se_mvl:.4}   ({} steps, {:.1} ms/step)",
        s_mvl.steps_done,
        1e3 * s_mvl.seconds / s_mvl.steps_done as f64
    );
    println!(
        "  exact SM  {f_ex:.4} ± {se_ex:.4}   ({} steps, same wall clock)",
        exact.steps_done
    );

    let ck = out_dir.join("banana_mvl.safetensors");
    let meta = [
        ("dataset", "banana".to_string()),
        ("objective", "mvl".to_string()),
        ("eps", cfg.obj.eps.to_string()),
        ("step", s_mvl.steps_done.to_string()),
        ("seed", seed.to_string()),
    ];
    save_model(&gpu, &mvl.model, &meta, &ck)?;
    let fig = out_dir.join("banana.png");
    let caption = format!(
        "Fisher divergence to the truth: MVL {f_mvl:.3}, exact SM {f_ex:.3} (same wall-clock budget); {}",
        r.name
    );
    density_figure(
        &gpu,
        toy,
        &mut [("MVL", &mut mvl.model), ("exact SM", &mut exact.model)],
        &caption,
        &fig,
    )?;
    println!("\nwrote {} and {}", fig.display(), ck.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banana: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
