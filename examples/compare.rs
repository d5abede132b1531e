//! Train the same score-net energy on a 2-D density with several objectives (same data, seeds
//! and initial parameters) and print each one's Fisher divergence to the true density.
//!
//! cargo run --release --example compare -- [--dataset banana] [--steps 600] [--hidden 32,32]
//!     [--objectives mvl,vr-dsm,ssm,exact-sm] [--eps 1e-3] [--seed 0]

use wmvl::app::compare_objectives;
use wmvl::data::Toy;
use wmvl::gpu::Gpu;
use wmvl::model::Arch;
use wmvl::objective::Objective;
use wmvl::train::TrainConfig;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let toy = Toy::from_name(&arg(&args, "--dataset", "banana"))?;
    let steps: usize = arg(&args, "--steps", "600").parse()?;
    let seed: u64 = arg(&args, "--seed", "0").parse()?;
    let eps: f32 = arg(&args, "--eps", "1e-3").parse()?;
    let hidden: Vec<usize> = arg(&args, "--hidden", "32,32")
        .split(',')
        .map(|h| h.parse())
        .collect::<Result<_, _>>()?;
    let objectives: Vec<Objective> = arg(&args, "--objectives", "mvl,vr-dsm,ssm,exact-sm")
        .split(',')
        .map(Objective::from_name)
        .collect::<Result<_, _>>()?;
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.report().name);
    let arch = Arch {
        hidden,
        ..Arch::paper(2)
    };
    let lr: f32 = arg(&args, "--lr", "4e-3").parse()?;
    let lr_final: f32 = arg(&args, "--lr-final", "4e-4").parse()?;
    let mut cfg = TrainConfig {
        steps,
        seed,
        lr,
        lr_final: Some(lr_final),
        log_every: steps,
        ..Default::default()
    };
    cfg.obj.eps = eps;
    let t = std::time::Instant::now();
    let rows = compare_objectives(&gpu, toy, &arch, &objectives, &cfg, 10_000, 20_000)?;
    println!(
        "{} ({} steps, batch {}, hidden {:?}, eps {eps}): Fisher divergence to the truth",
        toy.name(),
        steps,
        cfg.batch,
        arch.hidden
    );
    for (o, f, se) in rows {
        println!("  {:<9} {f:.4} ± {se:.4}", o.name());
    }
    println!("({:.0} s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
