//! One full MVL training step (SPEC §10) — minibatch gather on the GPU, MVL loss (Langevin,
//! control variate, per-sample rescaling), its parameter gradient (double backward), the
//! spectral-norm power iteration and RMSProp — timed in chunks of 10 steps with one wait per
//! chunk, as the peers in `shared/bench` do, on the fused kernels and/or the tape.
//!
//! cargo run --release --example mvl_step -- --config paper|small|large|all
//!     [--path fused|tape|both] [--shape auto|tile-gpu|tile-cpu|layers|all]
//!     [--steps 200] [--warmup 20] [--chunk 10] [--profile]
//!
//! Prints, per configuration, path and shape, the SPEC §10 line
//!     wmvl <device> <mode> d=<d> h=<h> B=<B> step_us=<median µs per step> loss=<last loss>
//! (mode: `fused` or `tape` with the default chunk of 10 steps per wait, as the peers' jit
//! loops, and after `tape` `tape-replay`, the tape's step recorded once and replayed; `fused-k<K>` with `--chunk K`; `fused-<shape>` with a forced shape), then the shape,
//! the dispatches per step, the steps per submission and the GPU memory the configuration
//! holds; with `--profile` (and an adapter with timestamp queries) a per-kernel table of one
//! step: µs, GFLOP/s of the layer kernels.

use std::time::Instant;

use wmvl::data::Toy;
use wmvl::fused::{Path, ShapeChoice};
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

struct Run {
    d: usize,
    h: usize,
    b: usize,
    steps: usize,
    warmup: usize,
    chunk: usize,
    profile: bool,
}

fn run_config(gpu: &Gpu, r: &Run, path: Path, shape: Option<ShapeChoice>) -> wmvl::Result<()> {
    let (d, h, b) = (r.d, r.h, r.b);
    let n = (b * 8).max(4096);
    let data = if d == 2 {
        Toy::Banana.sample_matrix(n, 0).data
    } else {
        let x = wmvl::backend::RandomFill::random(gpu, n, d, Dist::STANDARD_NORMAL, 0, 1)?;
        gpu.read(&x)?
    };
    let held_before = gpu.in_use_bytes();
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
        path,
        shape: shape.unwrap_or_default(),
        ..Default::default()
    };
    let mut tr = Trainer::new(gpu, model, x, None, cfg)?;
    let mut loss = None;
    for _ in 0..r.warmup {
        loss = Some(tr.record_step()?);
    }
    gpu.sync()?;
    // Steps per submission: one wait per chunk, as the peers' loops (JAX scan×K: K steps).
    let chunk = r.chunk;
    let mut times = Vec::new();
    for _ in 0..(r.steps / chunk).max(3) {
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
    let mut mode = if tr.is_fused() { "fused" } else { "tape" }.to_string();
    if let (true, Some(s)) = (tr.is_fused(), shape) {
        mode = format!("fused-{}", s.name());
    }
    if chunk != 10 {
        mode = format!("{mode}-k{chunk}");
    }
    println!(
        "wmvl {dev} {mode} d={d} h={h} B={b} step_us={:.1} loss={last:.4}",
        med * 1e6
    );
    // The tape's step recorded once and replayed `chunk` times per submission (what
    // `Trainer::run` does on the tape path).
    if let Some(rec) = tr.record_steps()? {
        let mut times = Vec::new();
        let mut loss = None;
        for _ in 0..(r.steps / chunk).max(3) {
            let t = Instant::now();
            loss = Some(tr.replay(&rec, chunk)?);
            gpu.sync()?;
            times.push(t.elapsed().as_secs_f64() / chunk as f64);
        }
        times.sort_by(f64::total_cmp);
        let last = match loss {
            Some(l) => gpu.read(&l)?[0],
            None => f32::NAN,
        };
        let k = if chunk != 10 {
            format!("-k{chunk}")
        } else {
            String::new()
        };
        println!(
            "wmvl {dev} tape-replay{k} d={d} h={h} B={b} step_us={:.1} loss={last:.4}",
            times[times.len() / 2] * 1e6
        );
        println!(
            "    tape-replay: {} dispatches per step, recorded once",
            rec.dispatches()
        );
    }
    let launches = match tr.fused_launches_per_step() {
        Some(k) => k,
        None => {
            // What the device runs: the recorded dispatches after elementwise fusion.
            gpu.sync()?;
            let before = gpu.dispatches_submitted();
            tr.record_step()?;
            gpu.sync()?;
            (gpu.dispatches_submitted() - before) as usize
        }
    };
    let shape_name = tr.fused_step().map_or("tape".to_string(), |f| {
        let p = f.plan();
        match f.shape() {
            wmvl::fused::Shape::Tile(t) => format!(
                "{} shape: {} workgroups of {} invocations, tiles of {} rows{}",
                f.shape().name(),
                p.groups,
                t.size,
                t.rows,
                if t.workgroup_weights {
                    ", weights in workgroup memory"
                } else {
                    ""
                }
            ),
            wmvl::fused::Shape::Layers(_) => format!(
                "layers shape: sub-batches of {} rows, gradient sums in {} chunks",
                p.b, p.chunks
            ),
        }
    });
    println!(
        "    {shape_name}; {launches} dispatches per step, {chunk} steps per submission; GPU memory held: {:.1} MiB (data, model, optimiser, workspace)",
        gpu.in_use_bytes().saturating_sub(held_before) as f64 / (1 << 20) as f64
    );
    if r.profile {
        profile(gpu, &mut tr, d, h, b)?;
    }
    Ok(())
}

/// Per-kernel GPU time of one step (each kernel in its own timed pass), averaged over 5 steps.
fn profile(gpu: &Gpu, tr: &mut Trainer<'_>, d: usize, h: usize, b: usize) -> wmvl::Result<()> {
    let mut rows: Vec<(String, f64)> = Vec::new();
    let reps = 5;
    for _ in 0..reps {
        tr.record_step()?;
        let Some(p) = gpu.flush_profiled()? else {
            println!("    (no timestamp queries on this adapter: no profile)");
            return Ok(());
        };
        if rows.is_empty() {
            rows = p.iter().map(|(l, _)| (l.clone(), 0.0)).collect();
        }
        for (row, (_, s)) in rows.iter_mut().zip(&p) {
            row.1 += s / reps as f64;
        }
    }
    let total: f64 = rows.iter().map(|r| r.1).sum();
    println!("    profile of one step (GPU time, each kernel in its own pass):");
    for (label, s) in &rows {
        println!(
            "    {label:<18} {:>9.1} µs  {}",
            s * 1e6,
            throughput(label, *s, d, h, b)
        );
    }
    println!("    {:<18} {:>9.1} µs", "total", total * 1e6);
    Ok(())
}

/// GFLOP/s of a fused layer kernel (its matmul), from its label and the configuration.
fn throughput(label: &str, s: f64, d: usize, h: usize, b: usize) -> String {
    let mut parts = label.split(' ');
    let (Some(kind), Some(l)) = (
        parts.next(),
        parts.next().and_then(|l| l.parse::<usize>().ok()),
    ) else {
        return String::new();
    };
    // Layer l maps width n_{l−1} to n_l: n₀ = d, hidden = h, n₃ = d.
    let width = |i: usize| if i == 0 || i == 3 { d } else { h };
    let (fi, fo) = (width(l - 1), width(l));
    let flops = match kind {
        "grad" => 2.0 * (3 * b) as f64 * (fi + 1) as f64 * fo as f64,
        _ => 2.0 * b as f64 * fi as f64 * fo as f64,
    };
    format!("{:>7.2} GFLOP/s", flops / s / 1e9)
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
    let profile = args.iter().any(|a| a == "--profile");
    let chunk: usize = arg(&args, "--chunk")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let shapes: Vec<Option<ShapeChoice>> = match arg(&args, "--shape").as_deref() {
        None | Some("auto") => vec![None],
        Some("all") => vec![
            Some(ShapeChoice::TileGpu),
            Some(ShapeChoice::TileCpu),
            Some(ShapeChoice::Layers),
        ],
        Some(s) => match ShapeChoice::from_name(s) {
            Ok(c) => vec![Some(c)],
            Err(e) => {
                eprintln!("mvl_step: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let paths = match arg(&args, "--path").as_deref().unwrap_or("both") {
        "fused" => vec![Path::Fused],
        "tape" => vec![Path::Tape],
        "both" => vec![Path::Fused, Path::Tape],
        other => {
            eprintln!("mvl_step: unknown --path {other:?}; use fused, tape or both");
            return std::process::ExitCode::from(2);
        }
    };
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
        configs.iter().try_for_each(|&(d, h, b)| {
            let r = Run {
                d,
                h,
                b,
                steps,
                warmup,
                chunk,
                profile,
            };
            paths.iter().try_for_each(|&p| match p {
                Path::Fused => shapes.iter().try_for_each(|&s| run_config(&gpu, &r, p, s)),
                _ => run_config(&gpu, &r, p, None),
            })
        })
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mvl_step: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
