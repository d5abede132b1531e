//! `wmvl train`: everything checked before the first step, progress with time left, and
//! nothing lost: `--out` is replaced only by a finished run; a failed or interrupted run
//! saves its last good state to OUT.partial.safetensors, from which `--resume` continues.

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Command, TrainArgs};
use crate::{chart_form, manifold_of, objective_config, open_gpu, outputs, stop_flag};
use wmvl::app::{density_figure, fisher_to_truth};
use wmvl::checkpoint::Checkpoint;
use wmvl::checkpoint::NamedTensor;
use wmvl::data::{load_data, Matrix, Toy};
use wmvl::directional::Directional;
use wmvl::gpu::Gpu;
use wmvl::manifold::Manifold;
use wmvl::model::{act_from_name, Arch, EnergyKind, HostParams, Init, Model};
use wmvl::optim::Rule;
use wmvl::saved_run::{load_state, partial_path, run_checkpoint};
use wmvl::train::{Event, LogPoint, TrainConfig, Trainer};
use wmvl::Error;

/// Metadata key holding the run's options (one `--key=value` per line), for `--resume`.
const RUN_ARGS: &str = "run.args";
/// Options that belong to one invocation, not to the run (not replayed by `--resume`).
const PER_INVOCATION: [&str; 5] = ["out", "resume", "init_from", "plot", "log"];

/// The train arguments as given, or — with `--resume` — the saved run's options overridden
/// by those given now; with the run's options as `--key=value` lines for the metadata.
fn resolve(argv: &[OsString]) -> Result<(TrainArgs, Vec<String>, Option<Checkpoint>), Error> {
    let parse = |argv: &[OsString]| -> Result<(TrainArgs, Vec<String>), Error> {
        let m = Cli::command()
            .try_get_matches_from(argv)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let cli = Cli::from_arg_matches(&m).map_err(|e| Error::Invalid(e.to_string()))?;
        let Command::Train(a) = cli.command else {
            return Err(Error::Invalid("not a train command".into()));
        };
        let (_, sub) = m.subcommand().expect("train was parsed");
        let mut cmd = Cli::command();
        let train_cmd = cmd.find_subcommand_mut("train").expect("train exists");
        let mut run_args = Vec::new();
        for arg in train_cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if PER_INVOCATION.contains(&id) || sub.value_source(id).is_none() {
                continue;
            }
            let long = arg.get_long().unwrap_or(id);
            if arg.get_action().takes_values() {
                for v in sub.get_raw(id).into_iter().flatten() {
                    run_args.push(format!("--{long}={}", v.to_string_lossy()));
                }
            } else if sub.get_flag(id) {
                run_args.push(format!("--{long}"));
            }
        }
        Ok((*a, run_args))
    };
    let (a, run_args) = parse(argv)?;
    let Some(resume) = &a.resume else {
        return Ok((a, run_args, None));
    };
    let ck = Checkpoint::load(resume)?;
    let saved = ck.metadata.get(RUN_ARGS).ok_or_else(|| {
        Error::Invalid(format!(
            "{} holds a model but no saved run (options, optimiser state); use --init-from to start a new run from its parameters",
            resume.display()
        ))
    })?;
    // The saved options first, then the ones given now: later ones win.
    let mut merged: Vec<OsString> = argv[..2].to_vec();
    merged.extend(saved.lines().map(OsString::from));
    merged.extend(argv[2..].iter().cloned());
    let (a, run_args) = parse(&merged)?;
    Ok((a, run_args, Some(ck)))
}

/// Split rows into (train, held-out) by a seeded shuffle.
fn split(m: &Matrix, frac: f64, seed: u64) -> (Matrix, Option<Matrix>) {
    let n_held = ((m.rows as f64) * frac).round() as usize;
    if n_held == 0 || n_held >= m.rows {
        return (m.clone(), None);
    }
    let mut order: Vec<usize> = (0..m.rows).collect();
    let mut rng = wmvl::rng::HostRng::new(seed ^ 0x5711);
    for i in (1..order.len()).rev() {
        let j = (rng.uniform() * (i + 1) as f64) as usize;
        order.swap(i, j.min(i));
    }
    let take = |idx: &[usize]| Matrix {
        rows: idx.len(),
        cols: m.cols,
        data: idx.iter().flat_map(|&r| m.row(r).to_vec()).collect(),
    };
    (take(&order[n_held..]), Some(take(&order[..n_held])))
}

fn arch_from_args(a: &TrainArgs, dim: usize) -> Result<Arch, Error> {
    Ok(Arch {
        kind: match a.energy.as_str() {
            "scalar" => EnergyKind::Scalar,
            _ => EnergyKind::ScoreNet,
        },
        dim,
        hidden: a.hidden.clone(),
        act: act_from_name(&a.act)?,
        spectral_norm: !a.no_sn,
    })
}

/// Refuse a model (or minibatch) the adapter cannot hold, before anything is allocated:
/// each layer's weights, and the activations of `rows` samples, must fit one binding.
fn check_fits(gpu: &Gpu, arch: &Arch, rows: usize) -> Result<(), Error> {
    let limit = gpu.report().limits.max_storage_buffer_binding_size as u128;
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    for (l, (fi, fo)) in arch.layer_shapes().into_iter().enumerate() {
        let bytes = fi as u128 * fo as u128 * 4;
        if bytes > limit {
            return Err(Error::OutOfMemory(format!(
                "layer {l}'s weights ({fi} × {fo}, {:.1} GiB) exceed what this adapter binds in one buffer ({} MiB); use narrower --hidden",
                gib(bytes),
                limit >> 20
            )));
        }
    }
    let widest = arch.hidden.iter().copied().max().unwrap_or(0).max(arch.dim) as u128;
    let bytes = rows as u128 * widest * 4;
    if bytes > limit {
        return Err(Error::OutOfMemory(format!(
            "the activations of {rows} rows × {widest} units ({:.2} GiB) exceed what this adapter binds in one buffer ({} MiB); use a smaller --batch or narrower --hidden",
            gib(bytes),
            limit >> 20
        )));
    }
    Ok(())
}

/// The CSV loss log.
fn csv(history: &[LogPoint], seconds: &[f64]) -> String {
    let mut s = String::from("step,loss,heldout,seconds\n");
    for (p, t) in history.iter().zip(seconds) {
        let h = p.heldout.map(|h| h.to_string()).unwrap_or_default();
        s.push_str(&format!("{},{},{h},{t:.3}\n", p.step, p.loss));
    }
    s
}

/// Checkpoint tensor holding a seeded subset of the training rows.
const DATA_ROWS: &str = "data.rows";

fn data_subset(data: &Matrix, k: usize, seed: u64) -> Result<NamedTensor, Error> {
    let k = k.min(data.rows);
    let mut rng = wmvl::rng::HostRng::new(seed ^ 0xda7a);
    let mut rows = Vec::with_capacity(k * data.cols);
    for _ in 0..k {
        let r = ((rng.uniform() * data.rows as f64) as usize).min(data.rows - 1);
        rows.extend_from_slice(data.row(r));
    }
    NamedTensor::new(DATA_ROWS, k, data.cols, rows)
}

/// Warn when the model's energy is lower far from the data than on it (exp(−E) may not be
/// normalisable: samples run away), against the training rows saved with the model.
pub fn warn_tails<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    ck: &Checkpoint,
    seed: u64,
) -> Result<(), Error> {
    let Ok(t) = ck.get(DATA_ROWS) else {
        return Ok(()); // a checkpoint from elsewhere: nothing to compare with
    };
    let data = Matrix::new(t.rows, t.cols, t.data.clone())?;
    if let Some(w) = wmvl::diagnose::tail_check(gpu, model, &data, seed)? {
        eprintln!("wmvl: warning: {w}");
    }
    Ok(())
}

pub fn run(argv: &[OsString]) -> Result<(), Error> {
    let (a, run_args, resumed) = resolve(argv)?;
    // Directional data sets live on the sphere; --manifold (replayed on resume) or R^d else.
    let directional = a
        .dataset
        .as_deref()
        .filter(|n| Directional::NAMES.contains(n))
        .map(Directional::from_name)
        .transpose()?;
    let manifold = match (a.objective.manifold.as_deref(), &directional) {
        (None, Some(_)) => Manifold::Sphere,
        (given, _) => manifold_of(given, None)?,
    };
    if directional.is_some() && manifold != Manifold::Sphere {
        return Err(Error::Invalid(format!(
            "--dataset {} lives on the sphere, not in {}",
            a.dataset.as_deref().unwrap_or_default(),
            manifold.name()
        )));
    }
    let (objective, obj) = objective_config(&a.objective, manifold)?;
    let seed = a.seed as u64;

    // Every output is checked before any work.
    let out = outputs::prepare(&a.out, "safetensors", "--out")?;
    let partial = outputs::prepare(
        &partial_path(&out)?,
        "safetensors",
        "the partial checkpoint",
    )?;
    let plot = a
        .plot
        .as_deref()
        .map(|p| outputs::prepare(p, "png", "--plot"))
        .transpose()?;
    let log = a
        .log
        .as_deref()
        .map(|p| outputs::prepare(p, "csv", "--log"))
        .transpose()?;
    let mut outs: Vec<&Path> = vec![&out];
    outs.extend(plot.as_deref());
    outs.extend(log.as_deref());
    let mut inputs: Vec<&Path> = vec![];
    inputs.extend(a.data.as_deref());
    inputs.extend(a.init_from.as_deref());
    inputs.extend(a.resume.as_deref());
    outputs::distinct(&outs, &inputs)?;
    let log_partial = log.as_deref().map(partial_path).transpose()?;

    if !(0.0..1.0).contains(&a.heldout) {
        return Err(Error::Invalid("--heldout must be in [0, 1)".into()));
    }
    if a.batch == 0 || a.log_every == 0 || a.steps_per_submit == 0 {
        return Err(Error::Invalid(
            "--batch, --log-every and --steps-per-submit must be positive".into(),
        ));
    }
    if !(a.lr.is_finite() && a.lr > 0.0) || a.lr_final.is_some_and(|l| !(l.is_finite() && l >= 0.0))
    {
        return Err(Error::Invalid(
            "--lr must be positive and --lr-final ≥ 0".into(),
        ));
    }
    let (toy, data, heldout) = match (&a.dataset, &a.data) {
        (Some(_), None) if directional.is_some() => {
            let dir = directional.as_ref().expect("checked");
            if a.n < 2 {
                return Err(Error::Invalid("--n must be at least 2".into()));
            }
            let held = ((a.n as f64) * a.heldout).round() as usize;
            let held = (held > 0).then(|| dir.sample_matrix(held, seed ^ 0xbeef));
            (None, dir.sample_matrix(a.n, seed), held)
        }
        (Some(name), None) => {
            let toy = Toy::from_name(name)?;
            if a.n < 2 {
                return Err(Error::Invalid("--n must be at least 2".into()));
            }
            let held = ((a.n as f64) * a.heldout).round() as usize;
            let held = (held > 0).then(|| toy.sample_matrix(held, seed ^ 0xbeef));
            (Some(toy), toy.sample_matrix(a.n, seed), held)
        }
        (None, Some(file)) => {
            let m = load_data(file)?;
            // Off-manifold rows refused by their row in the file (before the shuffle).
            chart_form(manifold, &m, &file.display().to_string())?;
            let (train, held) = split(&m, a.heldout, seed);
            (None, train, held)
        }
        _ => {
            return Err(Error::Invalid(
                "give exactly one of --dataset NAME or --data FILE".into(),
            ))
        }
    };
    if plot.is_some() && manifold != Manifold::Euclidean {
        return Err(Error::Invalid(format!(
            "--plot draws densities in the plane; figures on the {} are not drawn yet",
            manifold.name()
        )));
    }
    // The trainer sees the manifold's chart form (sphere: chart point and sign).
    let data_name = a
        .dataset
        .clone()
        .or(a.data.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_default();
    let embedded = data.clone();
    let data = chart_form(manifold, &data, &data_name)?;
    let heldout = heldout
        .map(|h| chart_form(manifold, &h, &format!("{data_name} (held out)")))
        .transpose()?;
    if plot.is_some() && toy.is_none() && data.cols != 2 {
        return Err(Error::Invalid(format!(
            "--plot draws 2-D data; the data have {} columns",
            data.cols
        )));
    }
    if a.batch > data.rows {
        return Err(Error::Invalid(format!(
            "--batch {} is larger than the {} training rows; use --batch {} or less",
            a.batch, data.rows, data.rows
        )));
    }

    // The model: from the saved run, from a warm start, or new.
    let source = resumed
        .as_ref()
        .map(|ck| (ck, a.resume.as_deref().unwrap()));
    let warm = a
        .init_from
        .as_deref()
        .map(|p| Ok::<_, Error>((Checkpoint::load(p)?, p)))
        .transpose()?;
    let given = arch_from_args(&a, manifold.model_dim(data.cols))?;
    let (arch, hp) = match source.or(warm.as_ref().map(|(c, p)| (c, *p))) {
        Some((ck, path)) => {
            let arch = Arch::from_checkpoint(ck)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            let explicit = resumed.is_some() || arch_given_explicitly(argv);
            if explicit
                && (arch.dim, &arch.hidden, arch.act, arch.spectral_norm)
                    != (given.dim, &given.hidden, given.act, given.spectral_norm)
            {
                return Err(Error::Invalid(format!(
                    "{} holds a model of input width {} and hidden widths {:?}; the options or data given ask for width {} and {:?} (the architecture comes from the checkpoint: drop --hidden/--act/--no-sn/--energy, or give matching data)",
                    path.display(),
                    arch.dim,
                    arch.hidden,
                    given.dim,
                    given.hidden
                )));
            }
            if arch.dim != manifold.model_dim(data.cols) {
                return Err(Error::Shape(format!(
                    "{} holds a model of input width {}, the data have {} columns",
                    path.display(),
                    arch.dim,
                    data.cols
                )));
            }
            let hp = HostParams::from_checkpoint(ck, &arch)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            (arch, Some(hp))
        }
        None => (given, None),
    };
    let resume_state = match &resumed {
        Some(ck) => {
            let st = load_state(ck, &arch)?.ok_or_else(|| {
                Error::Invalid("the checkpoint has no optimiser state; use --init-from".into())
            })?;
            if st.step >= a.steps {
                return Err(Error::Invalid(format!(
                    "{} has already done {} steps; give --steps larger than that to train on",
                    a.resume.as_deref().unwrap().display(),
                    st.step
                )));
            }
            Some(st)
        }
        None => None,
    };

    let gpu = open_gpu()?;
    // The fused step runs big batches in sub-batches (of 64 rows at least); the tape cannot.
    let fused =
        wmvl::fused::Path::from_name(&a.objective.path)?.use_fused(&arch, objective, &obj)?;
    check_fits(&gpu, &arch, if fused { a.batch.min(64) } else { a.batch })?;
    let init = match a.init.as_str() {
        "torch" => Init::Torch,
        _ => Init::Glorot,
    };
    let hp = match hp {
        Some(hp) => hp,
        None => HostParams::init(&arch, init, seed)?,
    };
    let model = Model::from_host(arch, &hp, |r, c, d| gpu.upload(r, c, d))?;
    let x = gpu.upload(data.rows, data.cols, &data.data)?;
    let h = heldout
        .as_ref()
        .map(|m| gpu.upload(m.rows, m.cols, &m.data))
        .transpose()?;
    let cfg = TrainConfig {
        objective,
        obj,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        lr_final: a.lr_final,
        rule: Rule::from_name(&a.optimizer)?,
        seed,
        log_every: a.log_every,
        eval_every: if heldout.is_some() {
            a.eval_every.unwrap_or(2 * a.log_every)
        } else {
            0
        },
        patience: a.patience,
        checkpoint_every: a.checkpoint_every,
        diverge_factor: a.diverge_factor,
        path: wmvl::fused::Path::from_name(&a.objective.path)?,
        steps_per_submit: a.steps_per_submit,
        shape: wmvl::fused::ShapeChoice::from_name(&a.objective.shape)?,
    };
    let mut trainer = Trainer::new(&gpu, model, x, h, cfg.clone())?;
    if let Some(st) = &resume_state {
        trainer.set_state(st)?;
        eprintln!(
            "wmvl: resuming {} at step {} of {}",
            a.resume.as_deref().unwrap().display(),
            st.step,
            a.steps
        );
    }
    eprintln!(
        "wmvl: training {} on {} rows x {} columns{}",
        objective.name(),
        data.rows,
        data.cols,
        heldout
            .as_ref()
            .map(|m| format!(", {} held out", m.rows))
            .unwrap_or_default()
    );
    match (trainer.fused_launches_per_step(), trainer.path_note()) {
        (Some(k), _) => eprintln!(
            "wmvl: fused kernels ({} shape), {k} launches per step",
            trainer.fused_step().map_or("?", |f| f.shape().name())
        ),
        (None, Some(note)) => eprintln!("wmvl: {note}"),
        (None, None) => eprintln!("wmvl: tape path"),
    }

    let source_name = data_name;
    let meta = |status: &str, step: usize| -> Vec<(String, String)> {
        vec![
            (RUN_ARGS.to_string(), run_args.join("\n")),
            ("status".to_string(), status.to_string()),
            ("step".to_string(), step.to_string()),
            ("objective".to_string(), objective.name().to_string()),
            ("eps".to_string(), obj.eps.to_string()),
            (
                "control_variate".to_string(),
                obj.control_variate.to_string(),
            ),
            ("rescale".to_string(), obj.rescale.to_string()),
            ("steps_planned".to_string(), cfg.steps.to_string()),
            ("batch".to_string(), cfg.batch.to_string()),
            ("lr".to_string(), cfg.lr.to_string()),
            ("seed".to_string(), seed.to_string()),
            ("dataset".to_string(), source_name.clone()),
            ("manifold".to_string(), manifold.name().to_string()),
        ]
    };
    // A seeded subset of the training rows travels with the model, so that `sample` can
    // check the learned density's tails against where the data were.
    let data_rows = data_subset(&embedded, 256, seed)?;
    let save = |tr: &Trainer, status: &str, step: usize, path: &Path| -> Result<(), Error> {
        let mut ck = run_checkpoint(&gpu, tr, &meta(status, step))?;
        ck.tensors.push(data_rows.clone());
        ck.save(path)
    };

    let first_step = trainer.steps_done;
    let stop = stop_flag();
    let mut history: Vec<LogPoint> = Vec::new();
    let mut times: Vec<f64> = Vec::new();
    let mut wrote_partial = false;
    let start = std::time::Instant::now();
    let result = trainer.run_with(
        &mut |ev, tr| {
            match ev {
                Event::Log { point, progress } => {
                    let left = progress
                        .remaining()
                        .map(|d| format!(", {} left", wmvl::progress::human(d)))
                        .unwrap_or_default();
                    println!("{}  ({:.1} steps/s{left})", progress.detail, progress.rate());
                    history.push((*point).clone());
                    times.push(start.elapsed().as_secs_f64());
                }
                Event::Checkpoint => {
                    save(tr, "in progress", tr.steps_done, &partial)?;
                    if let Some(lp) = &log_partial {
                        wmvl::fsutil::write_atomic(lp, csv(&history, &times).as_bytes())?;
                    }
                    wrote_partial = true;
                }
                Event::EarlyStop { best_step } => println!(
                    "early stop: no held-out improvement in {} evaluations; keeping step {best_step}",
                    a.patience
                ),
            }
            Ok(())
        },
        Some(&stop),
    );

    // Whatever ended the run, its last good state goes to the partial checkpoint, never to --out.
    let save_partial = |trainer: &Trainer, status: &str| -> String {
        if trainer.steps_done == first_step {
            return format!("; no step was completed; {} untouched", out.display());
        }
        let saved = save(trainer, status, trainer.steps_done, &partial);
        if let Some(lp) = &log_partial {
            let _ = wmvl::fsutil::write_atomic(lp, csv(&history, &times).as_bytes());
        }
        match saved {
            Ok(()) => format!(
                "; saved step {} with the optimiser state to {} ({} untouched); continue with: wmvl train --resume {} --out {}{}",
                trainer.steps_done,
                partial.display(),
                out.display(),
                partial.display(),
                out.display(),
                if status == "diverged" { " --lr LOWER" } else { "" }
            ),
            Err(e) => format!("; the last state could not be saved either ({e}); {} untouched", out.display()),
        }
    };
    let summary = match result {
        Ok(s) if s.interrupted => {
            let note = save_partial(&trainer, "interrupted");
            return Err(Error::Interrupted(format!(
                "stopped at step {}{note}",
                trainer.steps_done
            )));
        }
        Ok(s) => s,
        Err(Error::Diverged(m)) => {
            let note = save_partial(&trainer, "diverged");
            return Err(Error::Diverged(format!("{m}{note}")));
        }
        Err(e) => {
            let note = save_partial(&trainer, "failed");
            return Err(match e {
                Error::DeviceLost(m) => Error::DeviceLost(format!("{m}{note}")),
                Error::OutOfMemory(m) => Error::OutOfMemory(format!("{m}{note}")),
                Error::Io(m) => Error::Io(format!("{m}{note}")),
                other => other,
            });
        }
    };

    // What --out gets, said exactly.
    let mut saved_step = summary.params_step;
    let mut what = if summary.stopped_early {
        "the best held-out evaluation (early stop)".to_string()
    } else {
        "the last step".to_string()
    };
    if a.keep == "best" && !summary.stopped_early {
        match trainer.restore_best()? {
            Some(s) => {
                saved_step = s;
                what = "the best held-out evaluation (--keep best)".into();
            }
            None => what = "the last step (no held-out evaluation for --keep best)".into(),
        }
    }
    save(&trainer, "finished", saved_step, &out)?;
    if let Some(l) = &log {
        wmvl::fsutil::write_atomic(l, csv(&history, &times).as_bytes())?;
    }
    if wrote_partial {
        let _ = std::fs::remove_file(&partial);
        if let Some(lp) = &log_partial {
            let _ = std::fs::remove_file(lp);
        }
    }
    println!(
        "trained {} steps in {:.1} s ({:.1} ms/step){}",
        summary.steps_done,
        summary.seconds,
        1e3 * summary.seconds / summary.steps_done.max(1) as f64,
        summary
            .best_heldout
            .map(|(s, v)| format!("; best held-out {v:.4} at step {s}"))
            .unwrap_or_default()
    );
    println!(
        "wrote {}: the parameters after step {saved_step} ({what})",
        out.display()
    );
    if let Some(l) = &log {
        println!("wrote the loss log to {}", l.display());
    }
    // Shells beyond the data: a question for R^d (the sphere is compact; on the ball the
    // shells would leave the manifold).
    let tails = match manifold {
        Manifold::Euclidean => wmvl::diagnose::tail_check(&gpu, &mut trainer.model, &data, seed)?,
        _ => None,
    };
    if let Some(w) = tails {
        eprintln!("wmvl: warning: {w}");
    }
    if let Some(toy) = toy {
        let (f, se) = fisher_to_truth(&gpu, &mut trainer.model, toy, 5000, seed + 1)?;
        println!(
            "Fisher divergence to the true {} density: {f:.4} ± {se:.4}",
            toy.name()
        );
        if let Some(p) = &plot {
            let caption = format!(
                "{} on {}, Fisher divergence {f:.3}",
                objective.name(),
                toy.name()
            );
            density_figure(
                &gpu,
                toy,
                &mut [(objective.name(), &mut trainer.model)],
                &caption,
                p,
            )?;
            println!("wrote {}", p.display());
        }
    } else if let Some(p) = &plot {
        let caption = format!("{} on {}", objective.name(), source_name);
        wmvl::app::data_figure(&gpu, &mut trainer.model, &data, &caption, p)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// Whether the command line itself names an architecture option (for `--init-from`).
fn arch_given_explicitly(argv: &[OsString]) -> bool {
    argv.iter().any(|a| {
        let a = a.to_string_lossy();
        ["--hidden", "--act", "--no-sn", "--energy"]
            .iter()
            .any(|o| a == *o || a.starts_with(&format!("{o}=")))
    })
}
