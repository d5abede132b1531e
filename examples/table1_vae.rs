//! The paper's Table 1 (SPEC §9): VAEs on MNIST with explicit or implicit encoders and
//! Euclidean or hyperspherical latents of n_z = 8 and 32, test NLL by annealed importance
//! sampling. The implicit encoders' entropy gradient comes from a conditional energy trained
//! by (Riemannian) MVL (paper §4.2, eq. 19; src/vae).
//!
//! cargo run --release --example table1_vae -- [--quick] [--seed 0] [--out-dir wmvl-out/table1]
//!     [--data data/mnist10k] [--steps N] [--ais-steps T] [--leapfrog L] [--chains K]
//!     [--test N] [--cells implicit-sphere-32,…] [--seeds K] [--train-seconds S]
//!
//! Full mode: the paper's settings — 100 000 steps of batch 128 per cell, AIS with 1 000
//! intermediate distributions (HMC with 10 leapfrog steps for Euclidean latents, Riemannian
//! Langevin with a Metropolis correction for spherical ones), 16 chains on each of the 1 000
//! test digits; a GPU job. Each cell is checkpointed every 1 000 steps to
//! OUT/CELL.safetensors and a rerun continues from there (a finished cell is not retrained).
//! `--train-seconds S` stops a cell's training after S seconds (checkpointed), evaluates it
//! and reports the steps it reached: a time-boxed GPU lease gives a table, and a later run
//! with the same --out-dir goes on from the checkpoints.
//! Writes table1.csv (one row per training run), and per run CELL-samples.png,
//! CELL-reconstructions.png and CELL-nll.csv (each test digit's NLL estimate, for paired
//! comparisons between cells). `--seeds K` trains every cell with seeds --seed … --seed + K − 1
//! (files CELL-seedS…) and the printed table gives the mean NLL ± its spread over the runs,
//! as the paper's ± over 10 runs; with one run, ± is the AIS estimate's SE over test digits.
//! `--quick` (CI): 60 steps per cell, AIS with 100 distributions (2 leapfrog steps) and 2
//! chains on 32 digits;
//! it fails unless every cell's loss on held-out digits improved and every NLL is finite and
//! below 400 nats (an untrained decoder gives 543 = 784·ln 2).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use common::{arg, Cell, Res};

use wmvl::ais::{ais, log_marginal, AisConfig, LatentPrior};
use wmvl::gpu::Gpu;
use wmvl::mnist::{binarize, load_dir, DeviceImages};
use wmvl::plot::images::image_grid;
use wmvl::progress::Progress;
use wmvl::rng::HostRng;
use wmvl::vae::{Latent, Posterior, Vae, VaeConfig, VaeLikelihood};

/// The paper's Table 1 (NLL in nats, lower is better), for comparison.
const PAPER: [(&str, f64); 8] = [
    ("explicit-euclidean-8", 96.45),
    ("explicit-sphere-8", 95.47),
    ("explicit-euclidean-32", 90.28),
    ("explicit-sphere-32", 91.32),
    ("implicit-euclidean-8", 95.84),
    ("implicit-sphere-8", 94.72),
    ("implicit-euclidean-32", 90.33),
    ("implicit-sphere-32", 88.81),
];

struct Opts {
    quick: bool,
    out_dir: PathBuf,
    steps: usize,
    ais_steps: usize,
    leapfrog: usize,
    chains: usize,
    test_n: usize,
    /// Training runs per cell (seeds --seed, --seed + 1, …): the spread the paper reports.
    seeds: usize,
    /// One entry per cell and seed.
    cells: Vec<VaeConfig>,
    /// Training time per cell and run, in seconds (the rest waits for a rerun).
    train_seconds: f64,
}

fn options(args: &[String]) -> Res<Opts> {
    let quick = args.iter().any(|a| a == "--quick");
    let seed = arg(args, "--seed", 0u64)?;
    let seeds = arg(args, "--seeds", 1usize)?;
    let mut cells = Vec::new();
    for posterior in [Posterior::Explicit, Posterior::Implicit] {
        for nz in [8, 32] {
            for latent in [Latent::Euclidean, Latent::Sphere] {
                for s in 0..seeds as u64 {
                    let mut c = VaeConfig::paper(nz, latent, posterior);
                    c.seed = seed + s;
                    cells.push(c);
                }
            }
        }
    }
    let wanted: String = arg(args, "--cells", String::new())?;
    if !wanted.is_empty() {
        let names: Vec<&str> = wanted.split(',').collect();
        if let Some(bad) = names
            .iter()
            .find(|n| !cells.iter().any(|c| c.name() == **n))
        {
            let mut all: Vec<String> = cells.iter().map(|c| c.name()).collect();
            all.dedup();
            return Err(format!("unknown cell {bad:?}; the cells are {}", all.join(", ")).into());
        }
        cells.retain(|c| names.contains(&c.name().as_str()));
    }
    let (steps, ais_steps, leapfrog, chains, test_n) = if quick {
        (60, 100, 2, 2, 32)
    } else {
        (100_000, 1_000, 10, 16, 1_000)
    };
    let o = Opts {
        quick,
        out_dir: arg(args, "--out-dir", PathBuf::from("wmvl-out/table1"))?,
        steps: arg(args, "--steps", steps)?,
        ais_steps: arg(args, "--ais-steps", ais_steps)?,
        leapfrog: arg(args, "--leapfrog", leapfrog)?,
        chains: arg(args, "--chains", chains)?,
        test_n: arg(args, "--test", test_n)?,
        cells,
        seeds,
        train_seconds: arg(args, "--train-seconds", f64::INFINITY)?,
    };
    if o.train_seconds.is_nan() || o.train_seconds < 0.0 {
        return Err("--train-seconds must be zero or more".into());
    }
    if seeds == 0 {
        return Err("--seeds must be at least 1".into());
    }
    if o.steps == 0 || o.ais_steps == 0 || o.leapfrog == 0 || o.chains == 0 || o.test_n == 0 {
        return Err(
            "--steps, --ais-steps, --leapfrog, --chains and --test must be positive".into(),
        );
    }
    Ok(o)
}

struct Row {
    name: String,
    seed: u64,
    steps: usize,
    train_s: f64,
    before: f64,
    after: f64,
    nll: f64,
    se: f64,
    ais_s: f64,
}

fn run_cell(gpu: &Gpu, o: &Opts, cfg: &VaeConfig, train: &DeviceImages, test: &[f32]) -> Res<Row> {
    // Files of one training run: the cell's name, and its seed when there are several.
    let name = if o.seeds > 1 {
        format!("{}-seed{}", cfg.name(), cfg.seed)
    } else {
        cfg.name()
    };
    let ck = o.out_dir.join(format!("{name}.safetensors"));
    let mut vae = if ck.exists() {
        let (v, _) = Vae::load(gpu, &ck)?;
        if v.cfg.nz != cfg.nz || v.cfg.seed != cfg.seed {
            return Err(format!(
                "{} is from another run (seed or n_z); move it away",
                ck.display()
            )
            .into());
        }
        println!(
            "{name}: continuing from {} at step {}",
            ck.display(),
            v.steps_done
        );
        v
    } else {
        Vae::new(gpu, cfg.clone())?
    };
    let n_test = o.test_n;
    let xt = gpu.upload(n_test, cfg.pixels, test)?;
    // Held-out loss: −ELBO for explicit encoders; reconstruction − log p(z) for implicit ones
    // (the entropy has no estimate, only a gradient).
    let held_out = |v: &mut Vae| -> Res<f64> {
        let s = v.evaluate(&xt)?;
        Ok(s.reconstruction + s.kl_or_prior)
    };
    let before = held_out(&mut vae)?;
    let explicit = cfg.posterior == Posterior::Explicit;
    let (b, seed) = (cfg.batch, cfg.seed ^ 0xba7c);
    let recorded = match vae.record_steps(|gpu| train.batch(gpu, b, seed, 0, true)) {
        Ok(r) => Some(r),
        Err(wmvl::Error::Invalid(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let (_, train_s) =
        common::train_cell(&name, vae.steps_done, o.steps, o.train_seconds, |cell| {
            let (done, count, log) = match cell {
                Cell::Save => return Ok(vae.save(&ck, &[]).map(|_| String::new())?),
                Cell::Steps { done, count, log } => (done, count, log),
            };
            // Minibatches of training digits drawn and binarised afresh on the device.
            // Cells whose step records (the explicit Gaussian ones) replay it, batches and
            // noise from the step number; the others build each step, on batches from (seed,
            // step). Both only from the step, so that a resumed run sees the same batches.
            let stats = match &recorded {
                Some(r) => vae.replay(r, count as u32)?,
                None => {
                    let mut stats = None;
                    for step in done..done + count {
                        let x =
                            train.batch(gpu, cfg.batch, cfg.seed ^ 0xba7c, step as u64, true)?;
                        stats = Some(vae.record_step(&x)?);
                    }
                    stats.ok_or("train_cell asked for no steps")?
                }
            };
            if !log {
                return Ok(String::new());
            }
            let s = vae.read_stats(&stats)?;
            if !(s.reconstruction.is_finite() && s.energy_loss.is_finite()) {
                return Err(format!(
                    "{name}: training diverged at step {} ({s:?}); the last checkpoint is {}",
                    done + 1,
                    ck.display()
                )
                .into());
            }
            Ok(if explicit {
                format!(
                    "reconstruction {:.1}, KL {:.2}",
                    s.reconstruction, s.kl_or_prior
                )
            } else {
                format!(
                    "reconstruction {:.1}, −log p(z) {:.2}, energy loss {:.3}",
                    s.reconstruction, s.kl_or_prior, s.energy_loss
                )
            })
        })?;
    let after = held_out(&mut vae)?;

    // Test NLL by AIS: rows are (chain, digit) pairs.
    let t = Instant::now();
    let like = VaeLikelihood::new(&mut vae, test, n_test, o.chains)?;
    let prior = match cfg.latent {
        Latent::Euclidean => LatentPrior::StandardNormal,
        Latent::Sphere => LatentPrior::UniformSphere,
    };
    let ais_cfg = AisConfig {
        steps: o.ais_steps,
        leapfrog: o.leapfrog,
        seed: cfg.seed ^ 0xa15,
        ..AisConfig::default()
    };
    let mut last = Instant::now();
    let mut report = |k: usize, total: usize| {
        if last.elapsed().as_secs_f64() > 10.0 || k == total {
            last = Instant::now();
            let p = Progress {
                what: "AIS",
                done: k,
                total,
                unit: "distributions",
                elapsed: t.elapsed(),
                detail: name.clone(),
            };
            println!("  {}", p.line());
        }
    };
    let out = ais(
        gpu,
        &like,
        n_test * o.chains,
        cfg.nz,
        prior,
        &ais_cfg,
        Some(&mut report),
    )?;
    let lp = log_marginal(&out.log_w, n_test, o.chains)?;
    let nll: Vec<f64> = lp.iter().map(|v| -v).collect();
    let mean = nll.iter().sum::<f64>() / n_test as f64;
    let var = nll.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n_test.max(2) - 1) as f64;
    let ais_s = t.elapsed().as_secs_f64();
    // Per-digit estimates: cells evaluated on the same digits compare pairwise (the SE of a
    // difference between two cells is far below either cell's SE over digits).
    let mut per_digit = String::from("digit,nll\n");
    for (i, v) in nll.iter().enumerate() {
        per_digit.push_str(&format!("{i},{v:.4}\n"));
    }
    wmvl::fsutil::write_atomic(
        &o.out_dir.join(format!("{name}-nll.csv")),
        per_digit.as_bytes(),
    )?;

    // Figures: 64 decoded prior samples; 16 test digits above their reconstructions.
    let z = vae.prior_samples(64)?;
    let samples = vae.decode_means(&z)?;
    image_grid(
        o.out_dir.join(format!("{name}-samples.png")),
        &samples,
        64,
        (28, 28),
        8,
        &format!("{name}: decoded prior samples (Bernoulli means)"),
    )?;
    let k = n_test.min(16);
    let rec = vae.reconstruct(&gpu.upload(k, cfg.pixels, &test[..k * cfg.pixels])?)?;
    let mut both = test[..k * cfg.pixels].to_vec();
    both.extend(rec);
    image_grid(
        o.out_dir.join(format!("{name}-reconstructions.png")),
        &both,
        2 * k,
        (28, 28),
        k,
        &format!("{name}: test digits (top) and reconstructions (bottom)"),
    )?;
    Ok(Row {
        name: cfg.name(),
        seed: cfg.seed,
        steps: vae.steps_done,
        train_s,
        before,
        after,
        nll: mean,
        se: (var / n_test as f64).sqrt(),
        ais_s,
    })
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    common::check_options(
        &args,
        "cargo run --release --example table1_vae -- [--quick] [--seed 0] [--out-dir wmvl-out/table1]\n    [--data data/mnist10k] [--steps 100000] [--ais-steps 1000] [--leapfrog 10] [--chains 16]\n    [--test 1000] [--cells implicit-sphere-32,...] [--seeds 1] [--train-seconds S]",
        &["--seed", "--seeds", "--out-dir", "--data", "--steps", "--ais-steps", "--leapfrog", "--chains", "--test", "--cells", "--train-seconds"],
    )?;
    let o = options(&args)?;
    // Everything that can be refused is refused before any work.
    let data: PathBuf = arg(&args, "--data", PathBuf::from("data/mnist10k"))?;
    let mnist = load_dir(&data)?;
    if o.test_n > mnist.test.rows {
        return Err(format!(
            "--test {} but the data has {} test digits",
            o.test_n, mnist.test.rows
        )
        .into());
    }
    std::fs::create_dir_all(&o.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", o.out_dir.display()))?;
    let csv_path = o.out_dir.join("table1.csv");
    // Writable? A temporary file beside it, dropped unused: an existing table stays as it is.
    drop(wmvl::fsutil::TempFile::create(&csv_path)?);

    let gpu = Gpu::new()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    println!(
        "MNIST from {}: {} training and {} test digits; {} steps per cell, AIS with {} distributions × {} chains on {} test digits",
        data.display(),
        mnist.train.rows,
        mnist.test.rows,
        o.steps,
        o.ais_steps,
        o.chains,
        o.test_n
    );
    // The test digits binarised once with a fixed seed, the same for every cell.
    let p = mnist.test.pixels;
    let test = binarize(&mnist.test.data[..o.test_n * p], &mut HostRng::new(0x7e57));

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
        rows.push(run_cell(&gpu, &o, cfg, &train, &test)?);
    }
    let mut csv = String::from(
        "cell,seed,steps,nll,se,paper_nll,held_out_before,held_out_after,train_s,ais_s\n",
    );
    for row in &rows {
        let paper = common::lookup(&PAPER, &row.name);
        csv.push_str(&format!(
            "{},{},{},{:.4},{:.4},{},{:.4},{:.4},{:.1},{:.1}\n",
            row.name,
            row.seed,
            row.steps,
            row.nll,
            row.se,
            paper,
            row.before,
            row.after,
            row.train_s,
            row.ais_s
        ));
    }
    // One line per cell: with several seeds, the mean NLL ± the spread over runs (the
    // paper's ±); with one, the AIS estimate ± its standard error over test digits.
    let spread = if o.seeds > 1 { "sd over runs" } else { "SE" };
    println!(
        "\n{:<24} {:>6} {:>8} {:>24} {:>8} {:>22}",
        "cell",
        "runs",
        "steps",
        format!("NLL (nats) ± {spread}"),
        "paper",
        "held-out loss before→after"
    );
    for cell in common::by_cell(&rows, |r| &r.name) {
        let nll = cell.mean(|r| r.nll);
        let pm = cell.sd(|r| r.nll).unwrap_or(cell.runs[0].se);
        println!(
            "{:<24} {:>6} {:>8.0} {:>15.2} ± {:<6.2} {:>8.2} {:>12.1} → {:.1}",
            cell.name,
            cell.runs.len(),
            cell.mean(|r| r.steps as f64),
            nll,
            pm,
            common::lookup(&PAPER, &cell.name),
            cell.mean(|r| r.before),
            cell.mean(|r| r.after)
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
            if !row.after.is_finite() || row.after >= row.before {
                return Err(format!(
                    "--quick check failed: {} held-out loss did not improve ({:.1} → {:.1})",
                    row.name, row.before, row.after
                )
                .into());
            }
            if !(row.nll.is_finite() && row.nll < 400.0) {
                return Err(format!(
                    "--quick check failed: {} NLL {:.1} is not finite and below 400",
                    row.name, row.nll
                )
                .into());
            }
        }
        println!("quick check passed: every cell improved on held-out digits, every NLL finite and below 400 nats");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    common::main_of("table1_vae", run)
}
