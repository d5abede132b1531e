//! What the paper-figure examples share: option parsing, the Riemannian MVL training run on a
//! directional data set, and the Riemannian Fisher divergence to its true density.
#![allow(dead_code)]

use std::time::Instant;

use wmvl::directional::Directional;
use wmvl::gpu::Gpu;
use wmvl::manifold::Manifold;
use wmvl::model::{Arch, EnergyKind, HostParams, Init, Model};
use wmvl::objective::Config;
use wmvl::ops::Fun;
use wmvl::train::{energy_and_score, Event, TrainConfig, Trainer};

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `--name value` from the command line, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value")),
        None => Ok(default),
    }
}

/// Refuses options the example does not know — a mistyped one would otherwise be ignored —
/// and answers `--help`/`-h` with `usage`. `valued` lists the options that take a value.
pub fn check_options(args: &[String], usage: &str, valued: &[&str]) -> Res<()> {
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--help" | "-h" => {
                println!("{usage}");
                std::process::exit(0);
            }
            "--quick" => i += 1,
            a if valued.contains(&a) => i += 2,
            a => return Err(format!("unknown option {a:?}; usage:\n{usage}").into()),
        }
    }
    Ok(())
}

/// Runs an example's body; an error becomes a message and exit status 1.
pub fn main_of(name: &str, run: fn() -> Res<()>) -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The sizes of a sphere figure's training run: `full` is the paper's setting (SPEC §9: 50 000
/// samples in full batch, ε₀ = 1e-5, RMSProp lr 5e-4, 3 000 iterations), `quick` the CI one;
/// `--n`, `--batch`, `--steps`, `--eps` and `--lr` override either. The options of a sphere
/// figure `example` are checked here too (with `--seed` and `--out-dir`), so that both
/// figures list and refuse the same ones.
#[derive(Clone, Copy, Debug)]
pub struct SphereRun {
    pub n: usize,
    pub batch: usize,
    pub steps: usize,
    pub eps: f32,
    pub lr: f32,
}

impl SphereRun {
    pub fn from_args(example: &str, args: &[String], quick: SphereRun) -> Res<SphereRun> {
        check_options(
            args,
            &format!(
                "cargo run --release --example {example} -- [--quick] [--seed 0] [--out-dir DIR]\n    [--n 50000] [--batch 50000] [--steps 3000] [--eps 1e-5] [--lr 5e-4]"
            ),
            &["--seed", "--out-dir", "--n", "--batch", "--steps", "--eps", "--lr"],
        )?;
        let full = SphereRun {
            n: 50_000,
            batch: 50_000,
            steps: 3_000,
            eps: 1e-5,
            lr: 5e-4,
        };
        let d = if args.iter().any(|a| a == "--quick") {
            quick
        } else {
            full
        };
        let n = arg(args, "--n", d.n)?;
        let run = SphereRun {
            n,
            batch: arg(args, "--batch", d.batch.min(n))?,
            steps: arg(args, "--steps", d.steps)?,
            eps: arg(args, "--eps", d.eps)?,
            lr: arg(args, "--lr", d.lr)?,
        };
        if run.batch == 0 || run.batch > run.n || run.steps == 0 {
            return Err(format!(
                "need 0 < --batch ≤ --n and --steps > 0 (got batch {}, n {}, steps {})",
                run.batch, run.n, run.steps
            )
            .into());
        }
        Ok(run)
    }
}

/// Riemannian MVL (SPEC §5) on `run.n` samples of `truth` (a sphere data set): the paper's
/// sphere model (score-net, 2 × 100 tanh, no spectral norm), with progress lines (rate and
/// time left). Returns the model and the training time in seconds.
pub fn train_on_sphere<'g>(
    gpu: &'g Gpu,
    truth: &Directional,
    run: SphereRun,
    seed: u64,
) -> Res<(Model<&'g Gpu>, f64)> {
    let SphereRun {
        n,
        batch,
        steps,
        eps,
        lr,
    } = run;
    let data = truth.sample_matrix(n, seed);
    let d = data.cols;
    let mut form = Vec::with_capacity(n * d);
    for i in 0..n {
        let y: Vec<f64> = data.row(i).iter().map(|&v| v as f64).collect();
        form.extend(Manifold::Sphere.to_chart(&y)?.into_iter().map(|v| v as f32));
    }
    let x = gpu.upload(n, d, &form)?;
    let arch = Arch {
        kind: EnergyKind::ScoreNet,
        dim: d,
        hidden: vec![100, 100],
        act: Fun::Tanh,
        spectral_norm: false,
    };
    let hp = HostParams::init(&arch, Init::Glorot, seed)?;
    let model = Model::from_host(arch, &hp, |r, c, v| gpu.upload(r, c, v))?;
    let cfg = TrainConfig {
        steps,
        batch,
        lr,
        seed,
        log_every: (steps / 50).max(1),
        obj: Config {
            eps,
            manifold: Manifold::Sphere,
            ..Config::default()
        },
        ..Default::default()
    };
    let mut tr = Trainer::new(gpu, model, x, None, cfg)?;
    println!(
        "Riemannian MVL on {}: {n} samples, batch {batch}, ε₀ = {eps:e}, lr {lr:e}, {steps} steps ({})",
        truth.name(),
        if tr.is_fused() { "fused" } else { "tape" }
    );
    let t = Instant::now();
    tr.run_with(
        &mut |ev, _| {
            if let Event::Log { progress, .. } = ev {
                println!("  {}", progress.line());
            }
            Ok(())
        },
        None,
    )?;
    Ok((tr.model, t.elapsed().as_secs_f64()))
}

/// ½E_p‖grad log p − grad log q‖² on the sphere, on `n` fresh samples of `truth`.
pub fn riemannian_fisher<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    truth: &Directional,
    n: usize,
    seed: u64,
) -> Res<f64> {
    let fresh = truth.sample_matrix(n, seed);
    let d = fresh.cols;
    let (_, sq) = energy_and_score(gpu, model, &gpu.upload(n, d, &fresh.data)?, 4096)?;
    let mut fisher = 0.0;
    for i in 0..n {
        let y: Vec<f64> = fresh.row(i).iter().map(|&v| v as f64).collect();
        let s: Vec<f64> = sq[d * i..d * (i + 1)].iter().map(|&v| v as f64).collect();
        let gq = Manifold::Sphere.riemannian_score(&y, &s);
        let gp = truth.riemannian_score(&y)?;
        fisher += 0.5
            * gp.iter()
                .zip(&gq)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>();
    }
    Ok(fisher / n as f64)
}

/// What [`train_cell`] asks of a cell's model.
pub enum Cell {
    /// Take training steps `done + 1 ..= done + count` (a cell may submit them together);
    /// when `log`, return the progress line's detail (losses after the last).
    Steps {
        done: usize,
        count: usize,
        log: bool,
    },
    /// Write the checkpoint.
    Save,
}

/// Steps [`train_cell`] asks for at most at once: enough to keep the device busy between
/// the host's checks, few enough that `--train-seconds` stops on time.
pub const STEPS_PER_CALL: usize = 20;

/// Trains one table cell from step `start` up to `target` through `model` (see [`Cell`]),
/// saving every 1 000 steps, at the end, and when `seconds` of training have run out — a
/// rerun then continues from that checkpoint. Prints progress with the time left; returns the
/// steps reached and the seconds spent.
pub fn train_cell(
    name: &str,
    start: usize,
    target: usize,
    seconds: f64,
    mut model: impl FnMut(Cell) -> Res<String>,
) -> Res<(usize, f64)> {
    let t = Instant::now();
    let log_every = (target / 10).clamp(1, 1000);
    let mut done = start;
    while done < target {
        if t.elapsed().as_secs_f64() >= seconds {
            model(Cell::Save)?;
            println!("  {name}: --train-seconds {seconds} reached at step {done} of {target}; checkpointed");
            break;
        }
        // Up to the next progress line, checkpoint or the end.
        let next = |every: usize| (done / every + 1) * every;
        let end = (done + STEPS_PER_CALL)
            .min(next(log_every))
            .min(next(1000))
            .min(target);
        let log = end.is_multiple_of(log_every) || end == target;
        let detail = model(Cell::Steps {
            done,
            count: end - done,
            log,
        })?;
        done = end;
        if log {
            let p = wmvl::progress::Progress {
                what: "train",
                done: done - start,
                total: target - start,
                unit: "steps",
                elapsed: t.elapsed(),
                detail: format!("{name} step {done}: {detail}"),
            };
            println!("  {}", p.line());
        }
        if done.is_multiple_of(1000) || done == target {
            model(Cell::Save)?;
        }
    }
    Ok((done, t.elapsed().as_secs_f64()))
}

/// A table's training runs grouped by cell, in order of first appearance.
pub struct CellRuns<'a, R> {
    pub name: String,
    pub runs: Vec<&'a R>,
}

impl<R> CellRuns<'_, R> {
    /// The mean of `f` over the runs.
    pub fn mean(&self, f: impl Fn(&R) -> f64) -> f64 {
        self.runs.iter().map(|r| f(r)).sum::<f64>() / self.runs.len() as f64
    }

    /// The sample standard deviation of `f` over the runs (`None` for a single run).
    pub fn sd(&self, f: impl Fn(&R) -> f64) -> Option<f64> {
        let k = self.runs.len();
        let m = self.mean(&f);
        (k > 1).then(|| {
            (self.runs.iter().map(|r| (f(r) - m).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt()
        })
    }
}

/// `rows` grouped by `name`.
pub fn by_cell<'a, R>(rows: &'a [R], name: impl Fn(&R) -> &str) -> Vec<CellRuns<'a, R>> {
    let mut out: Vec<CellRuns<'a, R>> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|c| c.name == name(r)) {
            Some(c) => c.runs.push(r),
            None => out.push(CellRuns {
                name: name(r).to_string(),
                runs: vec![r],
            }),
        }
    }
    out
}

/// A reference value by name from a table of (name, value), NaN when absent.
pub fn lookup(table: &[(&str, f64)], name: &str) -> f64 {
    table.iter().find(|p| p.0 == name).map_or(f64::NAN, |p| p.1)
}
