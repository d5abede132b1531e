//! A training run in a checkpoint: the model, the trainer's state (step, random stream,
//! optimiser state, early-stopping record) and the run's options, so that `--resume`
//! continues it exactly where it stopped — the same steps an uninterrupted run would take.
//!
//! Tensors besides the model's: `train.opt_s1`, `train.opt_s2` (the optimiser state, packed
//! in the parameters' layout) and, when a held-out set was evaluated, `best.layers.*` (the
//! parameters of the best evaluation). Metadata: `train.*` entries for the counters, the
//! caller's entries (options) and the architecture.

use std::path::Path;

use crate::checkpoint::{Checkpoint, NamedTensor};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Arch, HostParams};
use crate::train::{TrainState, Trainer};

const STEP: &str = "train.step";
const RNG: &str = "train.rng_stream";
const OPT_T: &str = "train.opt_t";
const SINCE_BEST: &str = "train.since_best";
const FIRST_LOSS: &str = "train.first_loss";
const BEST_STEP: &str = "train.best_step";
const BEST_VALUE: &str = "train.best_value";
const S1: &str = "train.opt_s1";
const S2: &str = "train.opt_s2";
const BEST_PREFIX: &str = "best.";

/// The trainer's model and state, with `meta` (the run's options) and the architecture, as a
/// checkpoint (nothing written yet).
pub fn run_checkpoint(
    gpu: &Gpu,
    trainer: &Trainer,
    meta: &[(String, String)],
) -> Result<Checkpoint> {
    let hp = trainer.model.to_host(|t| gpu.read(t))?;
    let st = trainer.state()?;
    let mut ck = Checkpoint::new();
    ck.tensors = hp.to_named()?;
    let n = st.opt_s1.len();
    ck.tensors.push(NamedTensor::new(S1, 1, n, st.opt_s1)?);
    ck.tensors.push(NamedTensor::new(S2, 1, n, st.opt_s2)?);
    let mut put = |k: &str, v: String| {
        ck.metadata.insert(k.to_string(), v);
    };
    put(STEP, st.step.to_string());
    put(RNG, st.rng_stream.to_string());
    put(OPT_T, st.opt_t.to_string());
    put(SINCE_BEST, st.since_best.to_string());
    if let Some(f) = st.first_loss {
        // `{:?}` prints the shortest text that parses back to the same f64.
        put(FIRST_LOSS, format!("{f:?}"));
    }
    if let Some((step, value, best)) = &st.best {
        put(BEST_STEP, step.to_string());
        put(BEST_VALUE, format!("{value:?}"));
        for mut t in best.to_named()? {
            t.name = format!("{BEST_PREFIX}{}", t.name);
            ck.tensors.push(t);
        }
    }
    for (k, v) in trainer
        .model
        .arch
        .to_metadata()
        .into_iter()
        .chain(meta.iter().cloned())
    {
        ck.metadata.insert(k, v);
    }
    Ok(ck)
}

/// Write [`run_checkpoint`] to `path` atomically.
pub fn save_run(
    gpu: &Gpu,
    trainer: &Trainer,
    meta: &[(String, String)],
    path: &Path,
) -> Result<()> {
    run_checkpoint(gpu, trainer, meta)?.save(path)
}

/// The trainer state saved in `ck` for a model of `arch`, or None when `ck` holds a model
/// only (it can warm-start a run, not resume one).
pub fn load_state(ck: &Checkpoint, arch: &Arch) -> Result<Option<TrainState>> {
    if !ck.metadata.contains_key(STEP) {
        return Ok(None);
    }
    let opt = |name: &str| -> Result<Vec<f32>> { Ok(ck.get(name)?.data.clone()) };
    let best = match ck.metadata.get(BEST_STEP) {
        Some(_) => {
            // The best parameters are stored like the model's, under a prefix.
            let mut sub = Checkpoint::new();
            sub.tensors = ck
                .tensors
                .iter()
                .filter_map(|t| {
                    t.name.strip_prefix(BEST_PREFIX).map(|n| NamedTensor {
                        name: n.to_string(),
                        ..t.clone()
                    })
                })
                .collect();
            let hp = HostParams::from_checkpoint(&sub, arch)?;
            Some((ck.meta_parse(BEST_STEP)?, ck.meta_parse(BEST_VALUE)?, hp))
        }
        None => None,
    };
    Ok(Some(TrainState {
        step: ck.meta_parse(STEP)?,
        rng_stream: ck.meta_parse(RNG)?,
        opt_t: ck.meta_parse(OPT_T)?,
        opt_s1: opt(S1)?,
        opt_s2: opt(S2)?,
        best,
        since_best: ck.meta_parse(SINCE_BEST)?,
        first_loss: match ck.metadata.get(FIRST_LOSS) {
            Some(_) => Some(ck.meta_parse(FIRST_LOSS)?),
            None => None,
        },
    }))
}

/// `--out m.safetensors` → `m.partial.safetensors`: where an unfinished run (interrupted,
/// failed, or between periodic checkpoints) keeps its state, so that `--out` is only ever
/// replaced by a finished run.
pub fn partial_path(out: &Path) -> Result<std::path::PathBuf> {
    let stem = out.file_stem().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: the output does not name a file",
            out.display()
        ))
    })?;
    let mut name = stem.to_os_string();
    name.push(".partial");
    if let Some(ext) = out.extension() {
        name.push(".");
        name.push(ext);
    }
    Ok(out.with_file_name(name))
}
