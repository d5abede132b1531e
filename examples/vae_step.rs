//! One training step of Table 1's explicit Gaussian VAE on the tape (784–256–256 tanh encoder
//! and decoder, n_z latents, Bernoulli decoder, batch 128, RMSProp lr 1e-3) — the tape's
//! anchor against `shared/bench/peer_jax_vae.py` and `peer_torch_vae.py` (issue #18). Timed
//! in chunks of steps with one wait per chunk, as the peers' loops; the batch is one fixed
//! binary batch on the device (the timing does not depend on the digits).
//!
//! cargo run --release --example vae_step -- [--nz 8] [--steps 200] [--warmup 20]
//!     [--chunk 10] [--modes tape,replay] [--profile]
//!
//! Prints the peers' line format
//!     wmvl <device> <mode> vae nz=<n_z> B=128 step_us=<median µs per step> loss=<last −ELBO>
//! for mode `tape` (the step built on the tape every step, `chunk` steps per wait) and
//! `tape-replay` (the same step recorded once, `Vae::record_steps`, and replayed `chunk`
//! times per submission), then the dispatches per step and the GPU memory held; with
//! `--profile` (and an adapter with timestamp queries) one step's GPU time by kernel, largest
//! first.

use std::collections::BTreeMap;
use std::time::Instant;

use wmvl::gpu::Gpu;
use wmvl::rng::HostRng;
use wmvl::vae::{Latent, Posterior, Vae, VaeConfig};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(args: &[String]) -> wmvl::Result<()> {
    let nz: usize = arg(args, "--nz", 8);
    let steps: usize = arg(args, "--steps", 200);
    let warmup: usize = arg(args, "--warmup", 20);
    let chunk: usize = arg::<usize>(args, "--chunk", 10).max(1);
    let profile = args.iter().any(|a| a == "--profile");
    let modes_arg: String = arg(args, "--modes", "tape,replay".to_string());
    let modes: Vec<&str> = modes_arg.split(',').collect();
    if let Some(bad) = modes.iter().find(|m| !["tape", "replay"].contains(m)) {
        return Err(wmvl::Error::Invalid(format!(
            "--modes {bad:?}: use tape (built every step), replay (recorded once) or both, comma-separated"
        )));
    }
    let gpu = Gpu::new()?;
    let cfg = VaeConfig::paper(nz, Latent::Euclidean, Posterior::Explicit);
    let (b, pixels) = (cfg.batch, cfg.pixels);
    let mut rng = HostRng::new(0);
    let data: Vec<f32> = (0..b * pixels)
        .map(|_| if rng.uniform() < 0.13 { 1.0 } else { 0.0 })
        .collect();
    let x = gpu.upload(b, pixels, &data)?;
    let mut vae = Vae::new(&gpu, cfg)?;
    let mut last = None;
    for _ in 0..warmup {
        last = Some(vae.record_step(&x)?);
    }
    if let Some(t) = &last {
        vae.read_stats(t)?;
    }
    // Dispatches of one step: what the launch queue holds after recording it, and what the
    // device runs once its elementwise chains are fused.
    gpu.sync()?;
    let before = gpu.dispatches_submitted();
    vae.record_step(&x)?;
    let recorded = gpu.pending_dispatches();
    gpu.sync()?;
    let per_step = gpu.dispatches_submitted() - before;
    // Median seconds per step over chunks of `chunk` steps, one wait per chunk (reading the
    // last step's scalars waits for the whole chunk), and the last loss.
    let time =
        |vae: &mut Vae, step: &mut dyn FnMut(&mut Vae) -> wmvl::Result<[wmvl::gpu::Tensor; 3]>| {
            let mut times = Vec::new();
            let mut loss = f64::NAN;
            for _ in 0..(steps / chunk).max(3) {
                let t0 = Instant::now();
                let stats = step(vae)?;
                let s = vae.read_stats(&stats)?;
                loss = s.reconstruction + s.kl_or_prior;
                times.push(t0.elapsed().as_secs_f64() / chunk as f64);
            }
            times.sort_by(f64::total_cmp);
            wmvl::Result::Ok((times[times.len() / 2], loss))
        };
    let name = gpu.report().name.replace(' ', "_");
    if modes.contains(&"tape") {
        let (median, loss) = time(&mut vae, &mut |v| {
            let mut stats = None;
            for _ in 0..chunk {
                stats = Some(v.record_step(&x)?);
            }
            Ok(stats.expect("chunk ≥ 1"))
        })?;
        println!(
            "wmvl {name} tape vae nz={nz} B={b} step_us={:.1} loss={loss:.4}",
            median * 1e6
        );
        println!(
            "    {per_step} dispatches per step ({recorded} recorded), {chunk} steps per wait"
        );
    }
    if modes.contains(&"replay") {
        // The same step recorded once and replayed `chunk` times per submission.
        let rec = vae.record_steps(|_| Ok(x.clone()))?;
        let (median, loss) = time(&mut vae, &mut |v| v.replay(&rec, chunk as u32))?;
        println!(
            "wmvl {name} tape-replay vae nz={nz} B={b} step_us={:.1} loss={loss:.4}",
            median * 1e6
        );
        println!(
            "    {} dispatches per step, recorded once; {chunk} steps per submission and wait",
            rec.dispatches()
        );
    }
    println!(
        "    GPU memory held: {:.1} MiB (model, optimiser state, batch, pooled intermediates)",
        gpu.allocated_bytes() as f64 / (1 << 20) as f64
    );
    if profile {
        vae.record_step(&x)?;
        let Some(p) = gpu.flush_profiled()? else {
            println!("    (no timestamp queries on this adapter: no profile)");
            return Ok(());
        };
        // Kernels by label (a label repeats once per use in the step).
        let mut by: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for (label, s) in &p {
            let e = by.entry(label.clone()).or_default();
            e.0 += 1;
            e.1 += s;
        }
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total: f64 = rows.iter().map(|r| r.1 .1).sum();
        println!(
            "    profile of one step (GPU time, each kernel in its own pass; {} kernels):",
            p.len()
        );
        for (label, (n, s)) in rows.iter().take(20) {
            println!("    {label:<28} ×{n:<4} {:>9.1} µs", s * 1e6);
        }
        println!("    {:<34} {:>9.1} µs", "total", total * 1e6);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vae_step: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
