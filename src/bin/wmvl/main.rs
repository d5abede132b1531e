//! The wmvl command line: info, train, eval, score, sample. Options are defined once in
//! `args.rs`; output checks in `outputs.rs`; the training command in `train.rs`.

mod args;
mod outputs;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;

use args::{Cli, Command, EvalArgs, ObjectiveArgs, SampleArgs, ScoreArgs};
use wmvl::app::load_model;
use wmvl::checkpoint::Checkpoint;
use wmvl::data::{load_data, Matrix, NpyWriter};
use wmvl::gpu::Gpu;
use wmvl::manifold::Manifold;
use wmvl::model::Arch;
use wmvl::objective::{self, estimate, Objective};
use wmvl::progress::{Progress, Reporter};
use wmvl::rng::Dist;
use wmvl::sample::Sampler;
use wmvl::tape::Tape;
use wmvl::train::mean_se;
use wmvl::Error;

/// Rows handed to the GPU at a time by eval and score: bounded memory for any file size.
const CHUNK_ROWS: usize = 65_536;

pub fn open_gpu() -> Result<Gpu, Error> {
    let gpu = Gpu::new()?;
    let r = gpu.report();
    eprintln!("wmvl: {} ({}, {})", r.name, r.backend, r.device_type);
    Ok(gpu)
}

/// Progress lines on stderr (a line every few seconds; the library decides when).
pub fn print_progress(p: &Progress) {
    eprintln!("{}", p.line());
}

/// Raised by Ctrl-C (or SIGTERM); long loops poll it.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // A second Ctrl-C ends the process at once (nothing is saved then).
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nwmvl: stopping after the current step (Ctrl-C again to quit at once)");
        });
        flag
    })
    .clone()
}

fn interrupted() -> Result<(), Error> {
    if stop_flag().load(Ordering::Relaxed) {
        return Err(Error::Interrupted(
            "nothing was written (an existing output is untouched)".into(),
        ));
    }
    Ok(())
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
    // The fused MVL step's shape for the SPEC §10 configurations on this adapter.
    for (name, d, h, b) in [
        ("paper", 2, 100, 200),
        ("small", 8, 256, 128),
        ("large", 32, 512, 4096),
    ] {
        let arch = wmvl::model::Arch {
            hidden: vec![h, h],
            ..wmvl::model::Arch::paper(d)
        };
        let shape = wmvl::fused::FusedMvl::shape_for(&gpu, &arch, b)?;
        println!("fused:    {name} (d {d}, h {h}, B {b}): {shape}");
    }
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

/// The objective and its settings; the manifold is `manifold` (see [`manifold_of`]).
pub fn objective_config(
    o: &ObjectiveArgs,
    manifold: Manifold,
) -> Result<(Objective, objective::Config), Error> {
    let cfg = objective::Config {
        eps: o.eps,
        control_variate: !o.no_cv,
        rescale: !o.no_rescale,
        energy_reg: o.energy_reg,
        mh_diagnostic: false,
        alpha: o.alpha,
        kernel_bandwidth: o.kernel_bandwidth,
        kde_bandwidth: o.kde_bandwidth,
        manifold,
    };
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
        return Err(Error::Invalid(format!(
            "--eps must be positive, got {}",
            cfg.eps
        )));
    }
    if !(cfg.energy_reg.is_finite() && cfg.energy_reg >= 0.0) {
        return Err(Error::Invalid("--energy-reg must be ≥ 0".into()));
    }
    Ok((Objective::from_name(&o.objective)?, cfg))
}

/// The manifold: as given, else the checkpoint's `manifold` entry, else R^d.
pub fn manifold_of(given: Option<&str>, ck: Option<&Checkpoint>) -> Result<Manifold, Error> {
    match (given, ck.and_then(|c| c.metadata.get("manifold"))) {
        (Some(g), _) => Manifold::from_name(g),
        (None, Some(saved)) => Manifold::from_name(saved),
        (None, None) => Ok(Manifold::Euclidean),
    }
}

/// Data in embedded coordinates → the manifold's chart form (see `wmvl::manifold`), refusing
/// rows off the manifold by number.
pub fn chart_form(m: Manifold, data: &Matrix, file: &str) -> Result<Matrix, Error> {
    if m == Manifold::Euclidean {
        return Ok(data.clone());
    }
    let mut out = Vec::with_capacity(data.data.len());
    for r in 0..data.rows {
        let y: Vec<f64> = data.row(r).iter().map(|&v| v as f64).collect();
        let x = m.to_chart(&y).map_err(|e| {
            let why = match e {
                Error::Invalid(w) | Error::Shape(w) => w,
                other => other.to_string(),
            };
            Error::Invalid(format!(
                "{file}, row {}: {why} (--manifold {})",
                r + 1,
                m.name()
            ))
        })?;
        out.extend(x.iter().map(|&v| v as f32));
    }
    Matrix::new(data.rows, data.cols, out)
}

pub fn check_width(
    m: &Matrix,
    arch: &Arch,
    manifold: Manifold,
    file: &Path,
    ck: &Path,
) -> Result<(), Error> {
    if manifold.model_dim(m.cols) != arch.dim {
        return Err(Error::Shape(format!(
            "{} has {} columns but the model in {} takes {}",
            file.display(),
            m.cols,
            ck.display(),
            arch.dim
        )));
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<(), Error> {
    // Checked now; the manifold (maybe the checkpoint's) is set once the model is loaded.
    let (_, mut cfg) = objective_config(&a.objective, Manifold::Euclidean)?;
    let seed = a.seed as u64;
    let grad_out = a
        .grad_out
        .as_deref()
        .map(|g| outputs::prepare(g, "safetensors", "--grad-out"))
        .transpose()?;
    if let Some(g) = &grad_out {
        let mut inputs = vec![a.checkpoint.as_path(), a.data.as_path()];
        inputs.extend(a.noise.as_deref());
        outputs::distinct(&[g], &inputs)?;
    }
    let data = load_data(&a.data)?;
    let noise = a.noise.as_deref().map(load_data).transpose()?;
    if let (Some(z), Some(zp)) = (&noise, &a.noise) {
        if (z.rows, z.cols) != (data.rows, data.cols) {
            return Err(Error::Shape(format!(
                "{}: the noise has {} rows x {} columns, the data {} x {} (one row per sample, the data's width)",
                zp.display(),
                z.rows,
                z.cols,
                data.rows,
                data.cols
            )));
        }
    }
    let gpu = open_gpu()?;
    let (mut model, ck) = load_model(&gpu, &a.checkpoint)?;
    cfg.manifold = manifold_of(a.objective.manifold.as_deref(), Some(&ck))?;
    check_width(&data, &model.arch, cfg.manifold, &a.data, &a.checkpoint)?;
    let (objective, cfg) = objective_config(&a.objective, cfg.manifold)?;
    let data = chart_form(cfg.manifold, &data, &a.data.display().to_string())?;

    let path = wmvl::fused::Path::from_name(&a.objective.path)?;
    let mut fused = path.use_fused(&model.arch, objective, &cfg)?;

    // Chunks of rows, each its own tape (or launch of the fused step); the loss is the mean
    // over all rows, so each chunk's loss (a mean over its rows) is weighted by rows/n.
    let (n, d) = (data.rows, data.cols);
    let mut chunk = 4096.min(n);
    if fused {
        // The fused step evaluates chunks whose workspace the adapter can bind.
        match wmvl::fused::FusedMvl::largest_chunk(&gpu, &model.arch, chunk)? {
            Some(c) => chunk = c,
            None if path == wmvl::fused::Path::Auto => fused = false,
            None => {
                return Err(Error::OutOfMemory(
                    "the fused step cannot bind the workspace of even 64 rows of this model on this adapter (or use --path tape)".into(),
                ))
            }
        }
    }
    let want_grad = grad_out.is_some();
    let names = model.param_names();
    let mut grads: Vec<Vec<f64>> = model.params().iter().map(|p| vec![0.0; p.len()]).collect();
    let mut per_sample = Vec::with_capacity(n);
    let mut loss = 0.0;
    let step = if fused {
        Some(wmvl::fused::FusedMvl::new(
            &gpu, &mut model, &cfg, chunk, None,
        )?)
    } else {
        None
    };
    let mut progress = print_progress;
    let mut report = Reporter::new("eval", "rows", n, &mut progress);
    // The data go to the GPU a block of rows at a time (any file size); each block is
    // evaluated in chunks, numbered across blocks so that the noise does not depend on blocks.
    let block_rows = (CHUNK_ROWS / chunk).max(1) * chunk;
    let mut c = 0u64;
    for block in (0..n).step_by(block_rows) {
        interrupted()?;
        let brows = block_rows.min(n - block);
        let xs = &data.data[block * d..(block + brows) * d];
        let zs = noise
            .as_ref()
            .map(|z| &z.data[block * d..(block + brows) * d]);
        let bound = match &step {
            Some(step) => {
                let x = gpu.upload(brows, d, xs)?;
                let z = zs.map(|z| gpu.upload(brows, d, z)).transpose()?;
                Some(step.bind(&x, z.as_ref())?)
            }
            None => None,
        };
        for start in (0..brows).step_by(chunk) {
            let rows = chunk.min(brows - start);
            let w = rows as f64 / n as f64;
            c += 1;
            if let (Some(step), Some(bound)) = (&step, &bound) {
                step.record_eval(bound, &mut model, start, rows, (seed, c))?;
                loss += w * gpu.read(&step.loss()?)?[0] as f64;
                per_sample.extend(gpu.read(&step.per_sample(rows)?)?.iter().map(|&v| v as f64));
                if want_grad {
                    for (acc, gv) in grads.iter_mut().zip(step.grads()?) {
                        for (a, v) in acc.iter_mut().zip(gpu.read(&gv)?) {
                            *a += w * v as f64;
                        }
                    }
                }
            } else {
                let tape = Tape::new(&gpu);
                let xb = tape.leaf(gpu.upload(rows, d, &xs[start * d..(start + rows) * d])?);
                let z = match zs {
                    Some(z) => tape.leaf(gpu.upload(rows, d, &z[start * d..(start + rows) * d])?),
                    None => tape.random(rows, d, Dist::STANDARD_NORMAL, seed, c)?,
                };
                let bound = model.bind(&tape, false)?;
                let est = estimate(objective, &cfg, &bound, xb, Some(z))?;
                loss += w * gpu.read(&est.loss.value())?[0] as f64;
                per_sample.extend(gpu.read(&est.per_sample.value())?.iter().map(|&v| v as f64));
                if want_grad {
                    let g = tape.grad(est.loss, &bound.leaves, false)?;
                    for (acc, gv) in grads.iter_mut().zip(&g) {
                        for (a, v) in acc.iter_mut().zip(gpu.read(&gv.value())?) {
                            *a += w * v as f64;
                        }
                    }
                }
            }
            report.update(block + start + rows, String::new);
        }
    }
    if !loss.is_finite() {
        return Err(Error::Invalid(format!(
            "{} is {loss} on {}: the model's energy or its gradient overflows there",
            objective.name(),
            a.data.display()
        )));
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
    if let Some(g) = grad_out {
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
        ck.metadata
            .insert("checkpoint".into(), a.checkpoint.display().to_string());
        ck.save(&g)?;
        println!("wrote the parameter gradient to {}", g.display());
    }
    Ok(())
}

fn score(a: ScoreArgs) -> Result<(), Error> {
    let out = outputs::prepare(&a.out, "npy", "--out")?;
    outputs::distinct(&[&out], &[&a.points, &a.checkpoint])?;
    let pts = load_data(&a.points)?;
    let gpu = open_gpu()?;
    let (mut model, ck) = load_model(&gpu, &a.checkpoint)?;
    let manifold = manifold_of(a.manifold.as_deref(), Some(&ck))?;
    check_width(&pts, &model.arch, manifold, &a.points, &a.checkpoint)?;
    // Refuse points off the manifold (by row) before any work.
    chart_form(manifold, &pts, &a.points.display().to_string())?;
    let (n, d) = (pts.rows, pts.cols);
    // Streamed to a temporary file beside the output, renamed over it only when complete.
    outputs::check_space(&out, (n * (d + 1) * 4) as u64, "--out")?;
    let mut writer = NpyWriter::create(&out, n, d + 1)?;
    let mut progress = print_progress;
    let mut report = Reporter::new("score", "rows", n, &mut progress);
    for start in (0..n).step_by(CHUNK_ROWS) {
        interrupted()?;
        let rows = CHUNK_ROWS.min(n - start);
        // The model's inputs: the points, or their embedding (the ball's hyperboloid point).
        let md = model.arch.dim;
        let input: Vec<f32> = pts.data[start * d..(start + rows) * d]
            .chunks(d)
            .flat_map(|p| {
                let p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
                manifold.model_input(&p).into_iter().map(|v| v as f32)
            })
            .collect();
        let x = gpu.upload(rows, md, &input)?;
        let (e, s) = wmvl::train::energy_and_score(&gpu, &mut model, &x, 4096)?;
        let mut table = Vec::with_capacity(rows * (d + 1));
        for r in 0..rows {
            if !e[r].is_finite() || s[r * md..(r + 1) * md].iter().any(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!(
                    "the energy or score at row {} of {} is not finite: the model overflows there; nothing was written",
                    start + r + 1,
                    a.points.display()
                )));
            }
            table.push(e[r]);
            let y: Vec<f64> = pts.row(start + r).iter().map(|&v| v as f64).collect();
            let sy: Vec<f64> = s[r * md..(r + 1) * md].iter().map(|&v| v as f64).collect();
            table.extend(manifold.riemannian_score(&y, &sy).iter().map(|&v| v as f32));
        }
        writer.push(&table)?;
        report.update(start + rows, String::new);
    }
    writer.finish()?;
    println!(
        "wrote {n} rows [E, score_1..score_{d}] to {}",
        out.display()
    );
    Ok(())
}

fn sample_cmd(a: SampleArgs) -> Result<(), Error> {
    let out = outputs::prepare(&a.out, "npy", "--out")?;
    outputs::distinct(&[&out], &[&a.checkpoint])?;
    if a.n == 0 {
        return Err(Error::Invalid(
            "--n must be a positive number of samples".into(),
        ));
    }
    if !(a.init_std.is_finite() && a.init_std >= 0.0) {
        return Err(Error::Invalid(format!(
            "--init-std must be a finite number ≥ 0, got {}",
            a.init_std
        )));
    }
    if !(a.step_size.is_finite() && a.step_size > 0.0) {
        return Err(Error::Invalid(format!(
            "--step-size must be positive, got {}",
            a.step_size
        )));
    }
    let sampler = Sampler::from_name(&a.sampler)?;
    let gpu = open_gpu()?;
    let (mut model, ck) = load_model(&gpu, &a.checkpoint)?;
    let manifold = manifold_of(a.manifold.as_deref(), Some(&ck))?;
    // Samples are data points: the ball's have one coordinate fewer than the model's input.
    let d = match manifold {
        Manifold::Hyperbolic => model.arch.dim - 1,
        _ => model.arch.dim,
    };
    let bytes = (a.n as u128 * d as u128 * 4).min(u64::MAX as u128) as u64;
    outputs::check_space(&out, bytes, "--out")?;
    if manifold == Manifold::Euclidean {
        train::warn_tails(&gpu, &mut model, &ck, a.seed as u64)?;
    }
    let mut writer = NpyWriter::create(&out, a.n, d)?;
    let mut progress = print_progress;
    let stop = stop_flag();
    let opts = wmvl::sample::Options {
        sampler,
        steps: a.steps,
        step_size: a.step_size,
        seed: a.seed as u64,
        init_std: a.init_std,
        manifold,
    };
    let stats = wmvl::sample::sample_chunked(
        &gpu,
        &mut model,
        a.n,
        &opts,
        &mut |points: &[f32]| {
            interrupted()?;
            writer.push(points)
        },
        &mut progress,
    )?;
    let _ = stop;
    writer.finish()?;
    if sampler == Sampler::Mala {
        println!("MALA acceptance rate {:.3}", stats.acceptance);
    }
    println!("wrote {} samples to {}", a.n, out.display());
    Ok(())
}

/// Mesa prints "XDG_RUNTIME_DIR is invalid or not set" on every start without one: give
/// the process a private one (removed at exit) when it has none.
struct RuntimeDir(Option<PathBuf>);

impl RuntimeDir {
    fn ensure() -> RuntimeDir {
        let ok = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).is_dir());
        if ok {
            return RuntimeDir(None);
        }
        let dir = std::env::temp_dir().join(format!("wmvl-runtime-{}", std::process::id()));
        let made = {
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().mode(0o700).create(&dir)
            }
            #[cfg(not(unix))]
            {
                std::fs::create_dir(&dir)
            }
        };
        match made {
            Ok(()) => {
                // Single-threaded here: nothing else reads the environment yet.
                std::env::set_var("XDG_RUNTIME_DIR", &dir);
                RuntimeDir(Some(dir))
            }
            Err(_) => RuntimeDir(None),
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn main() -> ExitCode {
    let _runtime = RuntimeDir::ensure();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let result = match cli.command {
        Command::Info => info(),
        Command::Train(_) => train::run(&argv),
        Command::Eval(a) => eval(a),
        Command::Score(a) => score(a),
        Command::Sample(a) => sample_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Interrupted(_)) => {
            eprintln!("wmvl: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("wmvl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_listed_name_parses_in_the_library() {
        super::args::check_names().unwrap();
    }

    #[test]
    fn counts_accept_exponents_and_refuse_fractions() {
        use super::args::count;
        assert_eq!(count("1e3"), Ok(1000));
        assert_eq!(count("10_000"), Ok(10000));
        assert!(count("1.5").is_err());
        assert!(count("-1").is_err());
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        super::args::Cli::command().debug_assert();
    }
}
