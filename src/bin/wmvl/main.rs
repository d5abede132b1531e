//! The wmvl command line: info, train, eval, score, sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wmvl::app::{density_figure, fisher_to_truth, load_model, save_model};
use wmvl::checkpoint::Checkpoint;
use wmvl::data::{load_data, save_npy, Matrix, Toy};
use wmvl::gpu::Gpu;
use wmvl::model::{act_from_name, Arch, EnergyKind, HostParams, Init, Model};
use wmvl::objective::{self, estimate, Objective};
use wmvl::optim::Rule;
use wmvl::rng::Dist;
use wmvl::sample::{sample, Normal, Sampler};
use wmvl::tape::Tape;
use wmvl::train::{mean_se, TrainConfig, Trainer};
use wmvl::Error;

const USAGE: &str = "usage: wmvl <command> [options]

commands:
  info     print the GPU adapter, backend, limits and features, and run a self-check
           (forward and double backward of a small MLP energy on the GPU vs the f64 CPU reference)
  train    fit an energy model:
             wmvl train (--dataset banana|cosine|funnel|ring|multiring | --data FILE.npy|.csv)
                        --out CHECKPOINT [--objective mvl|dsm|vr-dsm|cd1|ssm|ssm-vr|exact-sm]
                        [--eps 1e-3] [--steps 1000] [--batch 200] [--lr 4e-3] [--lr-final LR] [--seed 0]
                        [--no-cv] [--no-rescale] [--energy-reg C] [--optimizer rmsprop|rmsprop-torch|adam]
                        [--hidden 100,100] [--act swish|tanh|elu|softplus] [--no-sn] [--energy scorenet|scalar]
                        [--init glorot|torch] [--n 10000] [--heldout 0.1] [--eval-every 100] [--patience 0]
                        [--log-every 50] [--plot FIG.png] [--path auto|tape|fused]
  eval     print an objective on data:
             wmvl eval --checkpoint CK --data FILE --objective O [--eps 1e-3] [--noise Z.npy]
                       [--grad-out G.safetensors] [--seed 0] [--no-cv] [--no-rescale] [--energy-reg C]
                       [--path auto|tape|fused]
           --noise: the standard-normal draws the objective needs (one row per sample, the data's width)
           --path: fused kernels (mvl on score-net energies with swish, tanh, sigmoid or softplus) or
                   the tape (everything); auto takes the fused path wherever it applies
  score    energy and score (−∇E) at given points, written as columns [E, score_1..score_d]:
             wmvl score --checkpoint CK --points FILE --out OUT.npy
  sample   draw samples from a model:
             wmvl sample --checkpoint CK --n N --out OUT.npy [--sampler langevin|mala] [--steps 1000]
                         [--step-size 1e-2] [--seed 0] [--init-std 1]

environment:
  WGPU_BACKEND       restrict backends (vulkan, metal, dx12, gl)
  WGPU_ADAPTER_NAME  pick the adapter whose name contains this text";

/// `--key value` options and `--switch`es, checked against what each command accepts.
struct Opts {
    values: BTreeMap<String, String>,
    switches: Vec<String>,
}

fn usage_err(msg: String) -> Error {
    Error::Invalid(format!("{msg} (see wmvl --help)"))
}

impl Opts {
    fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Opts, Error> {
        let mut o = Opts {
            values: BTreeMap::new(),
            switches: vec![],
        };
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| usage_err(format!("unexpected argument {a:?}")))?;
            if switches.contains(&name) {
                o.switches.push(name.to_string());
            } else if with_value.contains(&name) {
                let v = args
                    .get(i + 1)
                    .ok_or_else(|| usage_err(format!("--{name} needs a value")))?;
                if o.values.insert(name.to_string(), v.clone()).is_some() {
                    return Err(usage_err(format!("--{name} given twice")));
                }
                i += 1;
            } else {
                return Err(usage_err(format!("unknown option --{name}")));
            }
            i += 1;
        }
        Ok(o)
    }
    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
    fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
    fn need(&self, name: &str) -> Result<&str, Error> {
        self.str(name)
            .ok_or_else(|| usage_err(format!("--{name} is required")))
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Error> {
        match self.str(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| usage_err(format!("--{name} {v:?} is not a valid number"))),
        }
    }
}

/// Refuse an output path that names one of the command's inputs.
fn not_an_input(out: &Path, inputs: &[Option<&str>]) -> Result<(), Error> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(o) = canon(out) {
        for i in inputs.iter().flatten() {
            if canon(Path::new(i)).as_ref() == Some(&o) {
                return Err(Error::Invalid(format!(
                    "{} is both an input and the output; write the output elsewhere",
                    out.display()
                )));
            }
        }
    }
    Ok(())
}

/// Refuse early (before any work) if an output could not be written.
fn check_output(path: &Path, ext: Option<&str>) -> Result<(), Error> {
    if let Some(ext) = ext {
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            return Err(Error::Invalid(format!(
                "{}: the output must be a .{ext} file",
                path.display()
            )));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::Io(format!(
            "{}: the folder {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(Error::Io(format!("{} is a folder", path.display())));
    }
    Ok(())
}

fn open_gpu() -> Result<Gpu, Error> {
    let gpu = Gpu::new()?;
    let r = gpu.report();
    eprintln!("wmvl: {} ({}, {})", r.name, r.backend, r.device_type);
    Ok(gpu)
}

fn info() -> Result<(), Error> {
    let gpu = Gpu::new()?;
    println!("{}", gpu.report());
    println!(
        "kernels:  {}",
        if gpu.barrier_free() {
            "barrier-free (CPU driver)"
        } else {
            "tiled (GPU)"
        }
    );
    let t = std::time::Instant::now();
    let err = wmvl::selfcheck::run(&gpu)?;
    let ok = err < 1e-3;
    println!(
        "self-check: double backward of a score-net MLP energy (swish, tanh) vs f64 CPU: max relative error {err:.2e} [{}] ({:.0} ms)",
        if ok { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64() * 1e3
    );
    if ok {
        Ok(())
    } else {
        Err(Error::Gpu(format!(
            "self-check error {err:.2e} exceeds 1e-3: this adapter computes wrong results"
        )))
    }
}

fn objective_config(o: &Opts) -> Result<objective::Config, Error> {
    let d = objective::Config::default();
    let cfg = objective::Config {
        eps: o.num("eps", d.eps)?,
        control_variate: !o.has("no-cv"),
        rescale: !o.has("no-rescale"),
        energy_reg: o.num("energy-reg", 0.0)?,
        mh_diagnostic: false,
    };
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
        return Err(usage_err(format!(
            "--eps must be positive, got {}",
            cfg.eps
        )));
    }
    if !(cfg.energy_reg.is_finite() && cfg.energy_reg >= 0.0) {
        return Err(usage_err("--energy-reg must be ≥ 0".into()));
    }
    Ok(cfg)
}

/// Split rows into (train, held-out) by a seeded shuffle.
fn split(m: &Matrix, frac: f64, seed: u64) -> (Matrix, Option<Matrix>) {
    let n_held = ((m.rows as f64) * frac).round() as usize;
    if n_held == 0 || n_held >= m.rows {
        return (m.clone(), None);
    }
    let mut order: Vec<usize> = (0..m.rows).collect();
    let mut rng = Normal::new(seed ^ 0x5711);
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

fn train(args: &[String]) -> Result<(), Error> {
    let o = Opts::parse(
        args,
        &[
            "dataset",
            "data",
            "out",
            "objective",
            "eps",
            "steps",
            "batch",
            "lr",
            "seed",
            "energy-reg",
            "optimizer",
            "hidden",
            "act",
            "energy",
            "init",
            "n",
            "heldout",
            "eval-every",
            "patience",
            "log-every",
            "plot",
            "path",
        ],
        &["no-cv", "no-rescale", "no-sn"],
    )?;
    let out = PathBuf::from(o.need("out")?);
    check_output(&out, None)?;
    not_an_input(&out, &[o.str("data")])?;
    if let Some(p) = o.str("plot") {
        check_output(Path::new(p), Some("png"))?;
    }
    let seed: u64 = o.num("seed", 0)?;
    let objective = Objective::from_name(o.str("objective").unwrap_or("mvl"))?;
    let obj = objective_config(&o)?;
    let heldout_frac: f64 = o.num("heldout", 0.1)?;
    if !(0.0..1.0).contains(&heldout_frac) {
        return Err(usage_err("--heldout must be in [0, 1)".into()));
    }
    let (toy, data, heldout) = match (o.str("dataset"), o.str("data")) {
        (Some(name), None) => {
            let toy = Toy::from_name(name)?;
            let n: usize = o.num("n", 10_000)?;
            if n < 2 {
                return Err(usage_err("--n must be at least 2".into()));
            }
            let held = ((n as f64) * heldout_frac).round() as usize;
            let held = (held > 0).then(|| toy.sample_matrix(held, seed ^ 0xbeef));
            (Some(toy), toy.sample_matrix(n, seed), held)
        }
        (None, Some(file)) => {
            let m = load_data(file)?;
            let (train, held) = split(&m, heldout_frac, seed);
            (None, train, held)
        }
        _ => {
            return Err(usage_err(
                "give exactly one of --dataset NAME or --data FILE".into(),
            ))
        }
    };
    let hidden: Vec<usize> = o
        .str("hidden")
        .unwrap_or("100,100")
        .split(',')
        .map(|h| {
            h.trim()
                .parse()
                .map_err(|_| usage_err(format!("--hidden {h:?} is not a list of widths")))
        })
        .collect::<Result<_, _>>()?;
    let kind = match o.str("energy").unwrap_or("scorenet") {
        "scorenet" => EnergyKind::ScoreNet,
        "scalar" => EnergyKind::Scalar,
        other => {
            return Err(usage_err(format!(
                "--energy {other:?}: use scorenet or scalar"
            )))
        }
    };
    let arch = Arch {
        kind,
        dim: data.cols,
        hidden,
        act: act_from_name(o.str("act").unwrap_or("swish"))?,
        spectral_norm: !o.has("no-sn"),
    };
    let init = match o.str("init").unwrap_or("glorot") {
        "glorot" => Init::Glorot,
        "torch" => Init::Torch,
        other => return Err(usage_err(format!("--init {other:?}: use glorot or torch"))),
    };
    let log_every: usize = o.num("log-every", 50)?;
    let cfg = TrainConfig {
        objective,
        obj,
        steps: o.num("steps", 1000)?,
        batch: o.num("batch", 200)?,
        lr: o.num("lr", 4e-3)?,
        lr_final: o
            .str("lr-final")
            .map(|_| o.num("lr-final", 0.0))
            .transpose()?,
        rule: Rule::from_name(o.str("optimizer").unwrap_or("rmsprop"))?,
        seed,
        log_every,
        eval_every: if heldout.is_some() {
            o.num("eval-every", 2 * log_every)?
        } else {
            0
        },
        patience: o.num("patience", 0)?,
        verbose: true,
        path: wmvl::fused::Path::from_name(o.str("path").unwrap_or("auto"))?,
    };
    if cfg.batch == 0 || cfg.log_every == 0 {
        return Err(usage_err("--batch and --log-every must be positive".into()));
    }

    let gpu = open_gpu()?;
    let hp = HostParams::init(&arch, init, seed)?;
    let model = Model::from_host(arch, &hp, |r, c, d| gpu.upload(r, c, d))?;
    let x = gpu.upload(data.rows, data.cols, &data.data)?;
    let h = heldout
        .as_ref()
        .map(|m| gpu.upload(m.rows, m.cols, &m.data))
        .transpose()?;
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
    let mut trainer = Trainer::new(&gpu, model, x, h, cfg.clone())?;
    match (trainer.fused_launches_per_step(), trainer.path_note()) {
        (Some(k), _) => eprintln!("wmvl: fused kernels, {k} launches per step"),
        (None, Some(note)) => eprintln!("wmvl: {note}"),
        (None, None) => eprintln!("wmvl: tape path"),
    }
    let result = trainer.run();
    let meta = [
        ("objective", objective.name().to_string()),
        ("eps", obj.eps.to_string()),
        ("control_variate", obj.control_variate.to_string()),
        ("rescale", obj.rescale.to_string()),
        ("steps", trainer.steps_done.to_string()),
        ("batch", cfg.batch.to_string()),
        ("lr", cfg.lr.to_string()),
        ("seed", seed.to_string()),
        (
            "dataset",
            o.str("dataset").or(o.str("data")).unwrap_or("").to_string(),
        ),
    ];
    // On divergence the trainer has reset the parameters to the last good step: keep those.
    save_model(&gpu, &trainer.model, &meta, &out)?;
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wmvl: wrote the last good parameters to {}", out.display());
            return Err(e);
        }
    };
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
    if let Some(toy) = toy {
        let (f, se) = fisher_to_truth(&gpu, &mut trainer.model, toy, 5000, seed + 1)?;
        println!(
            "Fisher divergence to the true {} density: {f:.4} ± {se:.4}",
            toy.name()
        );
        if let Some(p) = o.str("plot") {
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
                Path::new(p),
            )?;
            println!("wrote {p}");
        }
    } else if o.str("plot").is_some() {
        eprintln!("wmvl: --plot is only drawn for --dataset (2-D densities with a known truth)");
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn check_width(m: &Matrix, arch: &Arch, file: &str, ck: &str) -> Result<(), Error> {
    if m.cols != arch.dim {
        return Err(Error::Shape(format!(
            "{file} has {} columns but the model in {ck} takes {}",
            m.cols, arch.dim
        )));
    }
    Ok(())
}

fn eval(args: &[String]) -> Result<(), Error> {
    let o = Opts::parse(
        args,
        &[
            "checkpoint",
            "data",
            "objective",
            "eps",
            "noise",
            "grad-out",
            "seed",
            "energy-reg",
            "path",
        ],
        &["no-cv", "no-rescale"],
    )?;
    let ck_path = o.need("checkpoint")?;
    let data_path = o.need("data")?;
    let objective = Objective::from_name(o.need("objective")?)?;
    let cfg = objective_config(&o)?;
    let seed: u64 = o.num("seed", 0)?;
    if let Some(g) = o.str("grad-out") {
        check_output(Path::new(g), Some("safetensors"))?;
        not_an_input(
            Path::new(g),
            &[Some(ck_path), Some(data_path), o.str("noise")],
        )?;
    }
    let data = load_data(data_path)?;
    let noise = o.str("noise").map(load_data).transpose()?;
    if let Some(z) = &noise {
        if (z.rows, z.cols) != (data.rows, data.cols) {
            return Err(Error::Shape(format!(
                "{}: the noise has {} rows x {} columns, the data {} x {} (one row per sample, the data's width)",
                o.need("noise")?,
                z.rows,
                z.cols,
                data.rows,
                data.cols
            )));
        }
    }
    let gpu = open_gpu()?;
    let (mut model, _) = load_model(&gpu, Path::new(ck_path))?;
    check_width(&data, &model.arch, data_path, ck_path)?;

    let path = wmvl::fused::Path::from_name(o.str("path").unwrap_or("auto"))?;
    let mut fused = path.use_fused(&model.arch, objective, &cfg)?;

    // Chunks of rows, each its own tape (or launch of the fused step); the loss is the mean
    // over all rows, so each chunk's loss (a mean over its rows) is weighted by rows/n.
    let n = data.rows;
    let d = data.cols;
    let mut chunk = 4096.min(n);
    if fused {
        // The fused step evaluates chunks whose workspace the adapter can bind.
        match wmvl::fused::FusedMvl::largest_batch(&gpu, &model.arch, chunk) {
            Some(c) => chunk = c,
            None if path == wmvl::fused::Path::Auto => fused = false,
            None => {
                return Err(Error::OutOfMemory(
                    "the fused step cannot bind the workspace of even 64 rows of this model on this adapter (or use --path tape)".into(),
                ))
            }
        }
    }
    let names = model.param_names();
    let mut grads: Vec<Vec<f64>> = model.params().iter().map(|p| vec![0.0; p.len()]).collect();
    let mut per_sample = Vec::with_capacity(n);
    let mut loss = 0.0;
    let fused = if fused {
        let step = wmvl::fused::FusedMvl::new(&gpu, &mut model, &cfg, chunk, None)?;
        let x = gpu.upload(n, d, &data.data)?;
        let z = noise
            .as_ref()
            .map(|z| gpu.upload(n, d, &z.data))
            .transpose()?;
        let bound = step.bind(&x, z.as_ref())?;
        Some((step, bound))
    } else {
        None
    };
    for (c, start) in (0..n).step_by(chunk).enumerate() {
        let rows = chunk.min(n - start);
        let w = rows as f64 / n as f64;
        if let Some((step, bound)) = &fused {
            step.record_eval(bound, &mut model, start, rows, (seed, c as u64 + 1))?;
            loss += w * gpu.read(&step.loss()?)?[0] as f64;
            per_sample.extend(gpu.read(&step.per_sample(rows)?)?.iter().map(|&v| v as f64));
            if o.str("grad-out").is_some() {
                for (acc, gv) in grads.iter_mut().zip(step.grads()?) {
                    for (a, v) in acc.iter_mut().zip(gpu.read(&gv)?) {
                        *a += w * v as f64;
                    }
                }
            }
            continue;
        }
        let tape = Tape::new(&gpu);
        let xb = tape.leaf(gpu.upload(rows, d, &data.data[start * d..(start + rows) * d])?);
        let z = match &noise {
            Some(z) => tape.leaf(gpu.upload(rows, d, &z.data[start * d..(start + rows) * d])?),
            None => tape.random(rows, d, Dist::STANDARD_NORMAL, seed, c as u64 + 1)?,
        };
        let bound = model.bind(&tape, false)?;
        let est = estimate(objective, &cfg, &bound, xb, Some(z))?;
        loss += w * gpu.read(&est.loss.value())?[0] as f64;
        per_sample.extend(gpu.read(&est.per_sample.value())?.iter().map(|&v| v as f64));
        if o.str("grad-out").is_some() {
            let g = tape.grad(est.loss, &bound.leaves, false)?;
            for (acc, gv) in grads.iter_mut().zip(&g) {
                for (a, v) in acc.iter_mut().zip(gpu.read(&gv.value())?) {
                    *a += w * v as f64;
                }
            }
        }
    }
    let (_, se) = mean_se(&per_sample);
    let label = if objective.is_loss() {
        ""
    } else {
        " (CD-1 surrogate: its gradient is the CD-1 estimate; it is not a loss)"
    };
    println!(
        "{} = {loss:.8} ± {se:.2e} (standard error over {n} rows, eps = {}){label}",
        objective.name(),
        cfg.eps
    );
    if let Some(g) = o.str("grad-out") {
        let mut ck = Checkpoint::new();
        for ((name, p), gv) in names.iter().zip(model.params()).zip(&grads) {
            let (r, c) = p.shape();
            let data: Vec<f32> = gv.iter().map(|&v| v as f32).collect();
            ck.tensors.push(wmvl::checkpoint::NamedTensor::new(
                name.clone(),
                r,
                c,
                data,
            )?);
        }
        ck.metadata
            .insert("gradient_of".into(), objective.name().into());
        ck.metadata.insert("eps".into(), cfg.eps.to_string());
        ck.metadata.insert("checkpoint".into(), ck_path.into());
        ck.save(g)?;
        println!("wrote the parameter gradient to {g}");
    }
    Ok(())
}

fn score(args: &[String]) -> Result<(), Error> {
    let o = Opts::parse(args, &["checkpoint", "points", "out"], &[])?;
    let (ck_path, pts_path) = (o.need("checkpoint")?, o.need("points")?);
    let out = o.need("out")?;
    check_output(Path::new(out), Some("npy"))?;
    not_an_input(Path::new(out), &[Some(pts_path)])?;
    let pts = load_data(pts_path)?;
    let gpu = open_gpu()?;
    let (mut model, _) = load_model(&gpu, Path::new(ck_path))?;
    check_width(&pts, &model.arch, pts_path, ck_path)?;
    let x = gpu.upload(pts.rows, pts.cols, &pts.data)?;
    let (e, s) = wmvl::train::energy_and_score(&gpu, &mut model, &x, 4096)?;
    let d = pts.cols;
    let mut table = Vec::with_capacity(pts.rows * (d + 1));
    for r in 0..pts.rows {
        table.push(e[r]);
        table.extend_from_slice(&s[r * d..(r + 1) * d]);
    }
    if let Some(i) = table.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "the energy or score at row {} is not finite",
            i / (d + 1) + 1
        )));
    }
    save_npy(out, pts.rows, d + 1, &table)?;
    println!("wrote {} rows [E, score_1..score_{d}] to {out}", pts.rows);
    Ok(())
}

fn sample_cmd(args: &[String]) -> Result<(), Error> {
    let o = Opts::parse(
        args,
        &[
            "checkpoint",
            "n",
            "sampler",
            "steps",
            "step-size",
            "out",
            "seed",
            "init-std",
        ],
        &[],
    )?;
    let ck_path = o.need("checkpoint")?;
    let out = o.need("out")?;
    check_output(Path::new(out), Some("npy"))?;
    not_an_input(Path::new(out), &[Some(ck_path)])?;
    let n: usize = o.num("n", 0)?;
    if n == 0 {
        return Err(usage_err("--n must be a positive number of samples".into()));
    }
    let sampler = Sampler::from_name(o.str("sampler").unwrap_or("langevin"))?;
    let steps: usize = o.num("steps", 1000)?;
    let h: f64 = o.num("step-size", 1e-2)?;
    let seed: u64 = o.num("seed", 0)?;
    let init_std: f64 = o.num("init-std", 1.0)?;
    if !(init_std.is_finite() && init_std >= 0.0) {
        return Err(usage_err(format!(
            "--init-std must be a finite number ≥ 0, got {init_std}"
        )));
    }
    if !(h.is_finite() && h > 0.0) {
        return Err(usage_err(format!("--step-size must be positive, got {h}")));
    }
    let gpu = open_gpu()?;
    let (mut model, _) = load_model(&gpu, Path::new(ck_path))?;
    let d = model.arch.dim;
    let mut rng = Normal::new(seed ^ 0x1a17);
    let init: Vec<f32> = (0..n * d)
        .map(|_| (rng.sample() * init_std) as f32)
        .collect();
    let s = sample(&gpu, &mut model, init, sampler, steps, h, seed, true)?;
    save_npy(out, n, d, &s.points)?;
    if sampler == Sampler::Mala {
        println!("MALA acceptance rate {:.3}", s.acceptance);
    }
    println!("wrote {n} samples to {out}");
    Ok(())
}

fn main() -> ExitCode {
    // std::env::args() panics on an argument that is not UTF-8: refuse it instead.
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect()
    {
        Ok(args) => args,
        Err(bad) => {
            eprintln!(
                "wmvl: {}",
                Error::Invalid(format!(
                    "the argument {bad:?} is not valid UTF-8; use UTF-8 file names"
                ))
            );
            return ExitCode::FAILURE;
        }
    };
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("info") => info(),
        Some("train") => train(rest),
        Some("eval") => eval(rest),
        Some("score") => score(rest),
        Some("sample") => sample_cmd(rest),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("wmvl: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wmvl: {e}");
            ExitCode::FAILURE
        }
    }
}
