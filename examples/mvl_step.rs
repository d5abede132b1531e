//! Baseline benchmark (SPEC §10): one full MVL training step through the tape — minibatch
//! gather on the GPU, MVL loss (Langevin, control variate, per-sample rescaling), its
//! parameter gradient (double backward), the spectral-norm power iteration and RMSProp —
//! timed in chunks of 10 steps with one wait per chunk, as the peers in `shared/bench` do.
//!
//! cargo run --release --example mvl_step -- --config paper|small|large|all [--steps 200] [--warmup 20]
//!
//! Prints: wmvl <device> tape d=<d> h=<h> B=<B> step_us=<median µs per step> loss=<last loss>

use std::time::Instant;

use wmvl::data::Toy;
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, HostParams, Init, Model};
use wmvl::optim::Rule;
use wmvl::rng::Dist;
use wmvl::train::{TrainConfig, Trainer};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run_config(
    gpu: &Gpu,
    d: usize,
    h: usize,
    b: usize,
    steps: usize,
    warmup: usize,
) -> wmvl::Result<()> {
    let n = (b * 8).max(4096);
    let data = if d == 2 {
        Toy::Banana.sample_matrix(n, 0).data
    } else {
        let x = wmvl::backend::RandomFill::random(gpu, n, d, Dist::STANDARD_NORMAL, 0, 1)?;
        gpu.read(&x)?
    };
    let x = gpu.upload(n, d, &data)?;
    let arch = Arch {
        hidden: vec![h, h],
        ..Arch::paper(d)
    };
    let hp = HostParams::init(&arch, Init::Torch, 0)?;
    let model = Model::from_host(arch, &hp, |r, c, v| gpu.upload(r, c, v))?;
    // The peers use PyTorch's RMSprop defaults with lr 4e-3 and eps0 = 1e-3.
    let cfg = TrainConfig {
        batch: b,
        lr: 4e-3,
        rule: Rule::RMSPROP_TORCH,
        verbose: false,
        ..Default::default()
    };
    let mut tr = Trainer::new(gpu, model, x, None, cfg)?;
    let mut loss = None;
    for _ in 0..warmup {
        loss = Some(tr.record_step()?);
    }
    gpu.sync()?;
    let chunk = 10;
    let mut times = Vec::new();
    for _ in 0..(steps / chunk).max(1) {
        let t = Instant::now();
        for _ in 0..chunk {
            loss = Some(tr.record_step()?);
        }
        gpu.sync()?;
        times.push(t.elapsed().as_secs_f64() / chunk as f64);
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let last = match loss {
        Some(l) => gpu.read(&l)?[0],
        None => f32::NAN,
    };
    let dev = gpu.report().name.replace(' ', "_");
    println!(
        "wmvl {dev} tape d={d} h={h} B={b} step_us={:.1} loss={last:.4}",
        med * 1e6
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = arg(&args, "--config").unwrap_or_else(|| "paper".into());
    let steps: usize = arg(&args, "--steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let warmup: usize = arg(&args, "--warmup")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let configs: Vec<(usize, usize, usize)> = match config.as_str() {
        "paper" => vec![(2, 100, 200)],
        "small" => vec![(8, 256, 128)],
        "large" => vec![(32, 512, 4096)],
        "all" => vec![(2, 100, 200), (8, 256, 128), (32, 512, 4096)],
        other => {
            eprintln!("mvl_step: unknown --config {other:?}; use paper, small, large or all");
            return std::process::ExitCode::from(2);
        }
    };
    let result = Gpu::new().and_then(|gpu| {
        configs
            .iter()
            .try_for_each(|&(d, h, b)| run_config(&gpu, d, h, b, steps, warmup))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mvl_step: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
