//! The paper's Table 2 (SPEC §9): Wasserstein auto-encoders on MNIST with n_z = 8, the
//! divergence D(q̃, p) by a latent discriminator (WAE-GAN) or by KL with the entropy gradient
//! from an energy trained by MVL, Euclidean (N(0, I)) or spherical (uniform) latents; scored
//! by FID of decoded prior samples against the held-out digits, with features of the shipped
//! LeNet-style classifier (src/lenet.rs, data/lenet-mnist10k.safetensors).
//!
//! cargo run --release --example table2_wae -- [--quick] [--seed 0] [--seeds K]
//!     [--out-dir wmvl-out/table2] [--data data/mnist10k] [--classifier FILE] [--steps N]
//!     [--fid-samples N] [--cells mvl-sphere,…] [--train-seconds S]
//!
//! Full mode: the paper's 200 000 steps of batch 128 per cell (RMSProp lr 1e-3, λ = 10), FID
//! on as many decoded prior samples as there are held-out digits (1 000 in data/mnist10k); a
//! GPU job. Each cell is checkpointed every 1 000 steps to OUT/CELL.safetensors and a rerun
//! continues from there; `--train-seconds S` stops a cell's training after S seconds
//! (checkpointed) and scores it. Writes table2.csv (one row per training run) and per run
//! CELL-samples.png and CELL-reconstructions.png. `--seeds K` trains every cell K times and
//! the table gives the mean FID ± its spread over runs, as the paper's ± over runs.
//! The FID of training digits against the held-out ones is printed as the floor a perfect
//! generator would reach with this many samples.
//! `--quick` (CI): 60 steps per cell, FID on 500 samples; fails unless every cell's held-out
//! cross-entropy and FID improved on the untrained model's and every FID is finite.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use common::{arg, Cell, Res};

use wmvl::fid::{frechet_distance, Gaussian};
use wmvl::gpu::Gpu;
use wmvl::lenet::{LeNet, FEATURES};
use wmvl::mnist::{load_dir, DeviceImages};
use wmvl::plot::images::image_grid;
use wmvl::vae::Latent;
use wmvl::wae::{Divergence, Wae, WaeConfig};

/// The paper's Table 2 (FID, lower is better), for comparison.
const PAPER: [(&str, f64); 4] = [
    ("gan-euclidean", 24.59),
    ("gan-sphere", 19.81),
    ("mvl-euclidean", 23.80),
    ("mvl-sphere", 18.36),
];

/// The latent stream every model's FID samples are decoded from (the same for all cells).
const FID_STREAM: u64 = 0xf1d;

struct Opts {
    quick: bool,
    out_dir: PathBuf,
    steps: usize,
    fid_samples: usize,
    seeds: usize,
    train_seconds: f64,
    cells: Vec<WaeConfig>,
}

fn options(args: &[String]) -> Res<Opts> {
    let quick = args.iter().any(|a| a == "--quick");
    let seed = arg(args, "--seed", 0u64)?;
    let seeds = arg(args, "--seeds", 1usize)?;
    let mut cells = Vec::new();
    for divergence in [Divergence::Gan, Divergence::Mvl] {
        for latent in [Latent::Euclidean, Latent::Sphere] {
            for s in 0..seeds as u64 {
                let mut c = WaeConfig::paper(latent, divergence);
                c.seed = seed + s;
                cells.push(c);
            }
        }
    }
    let wanted: String = arg(args, "--cells", String::new())?;
    if !wanted.is_empty() {
        let names: Vec<&str> = wanted.split(',').collect();
        if let Some(bad) = names.iter().find(|n| !PAPER.iter().any(|p| p.0 == **n)) {
            let all: Vec<&str> = PAPER.iter().map(|p| p.0).collect();
            return Err(format!("unknown cell {bad:?}; the cells are {}", all.join(", ")).into());
        }
        cells.retain(|c| names.contains(&c.name().as_str()));
    }
    let (steps, fid_samples) = if quick { (60, 500) } else { (200_000, 1_000) };
    let o = Opts {
        quick,
        out_dir: arg(args, "--out-dir", PathBuf::from("wmvl-out/table2"))?,
        steps: arg(args, "--steps", steps)?,
        fid_samples: arg(args, "--fid-samples", fid_samples)?,
        seeds,
        train_seconds: arg(args, "--train-seconds", f64::INFINITY)?,
        cells,
    };
    if seeds == 0 || o.steps == 0 || o.fid_samples < 2 {
        return Err("--seeds and --steps must be positive, --fid-samples at least 2".into());
    }
    if o.train_seconds.is_nan() || o.train_seconds < 0.0 {
        return Err("--train-seconds must be zero or more".into());
    }
    Ok(o)
}

/// What FID compares against: the held-out digits' feature statistics, once.
struct Scorer<'g> {
    lenet: LeNet<'g>,
    held_out: Gaussian,
}

impl Scorer<'_> {
    fn fid(&self, images: &[f32], rows: usize) -> Res<f64> {
        let f = self.lenet.features(images, rows)?;
        let g = Gaussian::fit(&f, rows, self.held_out.dim)?;
        Ok(frechet_distance(&g, &self.held_out)?)
    }
}

struct Row {
    name: String,
    seed: u64,
    steps: usize,
    train_s: f64,
    rec_before: f64,
    rec_after: f64,
    fid_before: f64,
    fid: f64,
}

fn run_cell(
    gpu: &Gpu,
    o: &Opts,
    cfg: &WaeConfig,
    train: &DeviceImages,
    test: &[f32],
    scorer: &Scorer,
) -> Res<Row> {
    let name = if o.seeds > 1 {
        format!("{}-seed{}", cfg.name(), cfg.seed)
    } else {
        cfg.name()
    };
    let ck = o.out_dir.join(format!("{name}.safetensors"));
    let mut wae = if ck.exists() {
        let w = Wae::load(gpu, &ck)?;
        if w.cfg.seed != cfg.seed || w.cfg.divergence != cfg.divergence {
            return Err(format!("{} is from another run; move it away", ck.display()).into());
        }
        println!(
            "{name}: continuing from {} at step {}",
            ck.display(),
            w.steps_done
        );
        w
    } else {
        Wae::new(gpu, cfg.clone())?
    };
    let n = o.fid_samples;
    let held = gpu.upload(test.len() / cfg.pixels, cfg.pixels, test)?;
    let rec_before = wae.reconstruction(&held)?;
    let fid_before = scorer.fid(&wae.samples(n, FID_STREAM)?, n)?;
    let (b, seed) = (cfg.batch, cfg.seed ^ 0xbad9e);
    let recorded = match wae.record_steps(|gpu| train.batch(gpu, b, seed, 0, false)) {
        Ok(r) => Some(r),
        Err(wmvl::Error::Invalid(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let (steps, train_s) =
        common::train_cell(&name, wae.steps_done, o.steps, o.train_seconds, |cell| {
            let (done, count, log) = match cell {
                Cell::Save => return Ok(wae.save(&ck).map(|_| String::new())?),
                Cell::Steps { done, count, log } => (done, count, log),
            };
            // Minibatches of training digits (grey levels) drawn on the device, from
            // (seed, step) only so that a resumed run sees the same batches.
            // Cells whose step records (GAN cells; MVL cells on the tape) replay it, with
            // batches from the step number; the others build each step.
            let stats = match &recorded {
                Some(r) => wae.replay(r, count as u32)?,
                None => {
                    let mut stats = None;
                    for step in done..done + count {
                        let x =
                            train.batch(gpu, cfg.batch, cfg.seed ^ 0xbad9e, step as u64, false)?;
                        stats = Some(wae.record_step(&x)?);
                    }
                    stats.ok_or("train_cell asked for no steps")?
                }
            };
            if !log {
                return Ok(String::new());
            }
            let s = wae.read_stats(&stats)?;
            if !(s.reconstruction.is_finite() && s.critic_loss.is_finite()) {
                return Err(format!(
                    "{name}: training diverged at step {} ({s:?}); the last checkpoint is {}",
                    done + 1,
                    ck.display()
                )
                .into());
            }
            let div = match cfg.divergence {
                Divergence::Mvl => "−log p(z)",
                Divergence::Gan => "−log D(z)",
            };
            Ok(format!(
                "cross-entropy {:.1}, {div} {:.3}, critic loss {:.3}",
                s.reconstruction, s.divergence, s.critic_loss
            ))
        })?;
    let rec_after = wae.reconstruction(&held)?;
    let samples = wae.samples(n, FID_STREAM)?;
    let fid = scorer.fid(&samples, n)?;
    println!("  {name}: FID {fid:.2} after {steps} steps (untrained {fid_before:.1})");

    image_grid(
        o.out_dir.join(format!("{name}-samples.png")),
        &samples[..64.min(n) * cfg.pixels],
        64.min(n),
        (28, 28),
        8,
        &format!("{name}: decoded prior samples after {steps} steps"),
    )?;
    let k = 16.min(test.len() / cfg.pixels);
    let rec = wae.reconstruct(&gpu.upload(k, cfg.pixels, &test[..k * cfg.pixels])?)?;
    let mut both = test[..k * cfg.pixels].to_vec();
    both.extend(rec);
    image_grid(
        o.out_dir.join(format!("{name}-reconstructions.png")),
        &both,
        2 * k,
        (28, 28),
        k,
        &format!("{name}: held-out digits (top) and reconstructions (bottom)"),
    )?;
    Ok(Row {
        name: cfg.name(),
        seed: cfg.seed,
        steps,
        train_s,
        rec_before,
        rec_after,
        fid_before,
        fid,
    })
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    common::check_options(
        &args,
        "cargo run --release --example table2_wae -- [--quick] [--seed 0] [--seeds 1] [--out-dir wmvl-out/table2]\n    [--data data/mnist10k] [--classifier data/lenet-mnist10k.safetensors] [--steps 200000]\n    [--fid-samples 1000] [--cells mvl-sphere,...] [--train-seconds S]",
        &["--seed", "--seeds", "--out-dir", "--data", "--classifier", "--steps", "--fid-samples", "--cells", "--train-seconds"],
    )?;
    let o = options(&args)?;
    // Everything that can be refused is refused before any work.
    let data: PathBuf = arg(&args, "--data", PathBuf::from("data/mnist10k"))?;
    let mnist = load_dir(&data)?;
    let classifier: PathBuf = arg(
        &args,
        "--classifier",
        PathBuf::from("data/lenet-mnist10k.safetensors"),
    )?;
    if !classifier.is_file() {
        return Err(format!(
            "no classifier at {} (train one: cargo run --release --example train_lenet)",
            classifier.display()
        )
        .into());
    }
    let n_test = mnist.test.rows;
    if o.fid_samples > mnist.train.rows {
        return Err(format!(
            "--fid-samples {} but only {} training digits for the reference FID",
            o.fid_samples, mnist.train.rows
        )
        .into());
    }
    std::fs::create_dir_all(&o.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", o.out_dir.display()))?;
    let csv_path = o.out_dir.join("table2.csv");
    drop(wmvl::fsutil::TempFile::create(&csv_path)?);

    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let lenet = LeNet::load(&gpu, &classifier)?;
    let test = &mnist.test.data;
    let held_out = Gaussian::fit(&lenet.features(test, n_test)?, n_test, FEATURES)?;
    let scorer = Scorer { lenet, held_out };
    // The floor: real training digits against the held-out ones, as many as the samples.
    let floor = scorer.fid(
        &mnist.train.data[..o.fid_samples * mnist.train.pixels],
        o.fid_samples,
    )?;
    println!(
        "MNIST from {}: {} training and {n_test} held-out digits; {} steps per cell; FID on {} samples (training digits score {floor:.2})",
        data.display(),
        mnist.train.rows,
        o.steps,
        o.fid_samples
    );

    // The training digits on the device once: each step draws its batch there.
    let train = DeviceImages::upload(&gpu, &mnist.train)?;
    let t = Instant::now();
    let mut rows = Vec::new();
    for (k, cfg) in o.cells.iter().enumerate() {
        println!(
            "run {}/{}: {} seed {} ({:.0} s so far)",
            k + 1,
            o.cells.len(),
            cfg.name(),
            cfg.seed,
            t.elapsed().as_secs_f64()
        );
        rows.push(run_cell(&gpu, &o, cfg, &train, test, &scorer)?);
    }
    let mut csv = String::from(
        "cell,seed,steps,fid,paper_fid,fid_untrained,fid_training_digits,cross_entropy_before,cross_entropy_after,train_s\n",
    );
    for row in &rows {
        csv.push_str(&format!(
            "{},{},{},{:.4},{},{:.4},{:.4},{:.4},{:.4},{:.1}\n",
            row.name,
            row.seed,
            row.steps,
            row.fid,
            common::lookup(&PAPER, &row.name),
            row.fid_before,
            floor,
            row.rec_before,
            row.rec_after,
            row.train_s
        ));
    }
    println!(
        "\n{:<16} {:>5} {:>8} {:>20} {:>8} {:>26}",
        "cell", "runs", "steps", "FID ± sd over runs", "paper", "held-out cross-entropy"
    );
    for cell in common::by_cell(&rows, |r| &r.name) {
        let sd = cell
            .sd(|r| r.fid)
            .map_or("–".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<16} {:>5} {:>8.0} {:>12.2} ± {:<5} {:>8.2} {:>14.1} → {:.1}",
            cell.name,
            cell.runs.len(),
            cell.mean(|r| r.steps as f64),
            cell.mean(|r| r.fid),
            sd,
            common::lookup(&PAPER, &cell.name),
            cell.mean(|r| r.rec_before),
            cell.mean(|r| r.rec_after)
        );
    }
    wmvl::fsutil::write_atomic(&csv_path, csv.as_bytes())?;
    println!(
        "took {:.0} s on {}; wrote {} and the figures beside it",
        t.elapsed().as_secs_f64(),
        r.name,
        csv_path.display()
    );
    std::io::stdout().flush().ok();
    if o.quick {
        for row in &rows {
            if row.rec_after.is_nan() || row.rec_after >= row.rec_before {
                return Err(format!(
                    "--quick check failed: {} held-out cross-entropy did not improve ({:.1} → {:.1})",
                    row.name, row.rec_before, row.rec_after
                )
                .into());
            }
            if !(row.fid.is_finite() && row.fid < row.fid_before) {
                return Err(format!(
                    "--quick check failed: {} FID {:.1} is not finite and below the untrained model's {:.1}",
                    row.name, row.fid, row.fid_before
                )
                .into());
            }
        }
        println!("quick check passed: every cell improved its held-out cross-entropy and its FID, every FID finite");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main_of("table2_wae", run)
}
