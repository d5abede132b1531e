//! Glue shared by the CLI and the examples: saving and loading models, measuring a model
//! against a known density, and drawing learned-vs-true figures.

use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::data::Toy;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Arch, HostParams, Model};
use crate::plot::{density_panels, log_density_to_density, Grid, Heatmap};
use crate::train::energy_and_score;

/// Write `model` (architecture in the metadata, plus `extra` entries) atomically to `path`.
pub fn save_model(
    gpu: &Gpu,
    model: &Model<&Gpu>,
    extra: &[(&str, String)],
    path: &Path,
) -> Result<()> {
    let hp = model.to_host(|t| gpu.read(t))?;
    let mut ck = Checkpoint::new();
    ck.tensors = hp.to_named()?;
    for (k, v) in model.arch.to_metadata() {
        ck.metadata.insert(k, v);
    }
    for (k, v) in extra {
        ck.metadata.insert(k.to_string(), v.clone());
    }
    ck.save(path)
}

/// Rebuild a model from a checkpoint file alone.
pub fn load_model<'g>(gpu: &'g Gpu, path: &Path) -> Result<(Model<&'g Gpu>, Checkpoint)> {
    let ck = Checkpoint::load(path)?;
    let arch = Arch::from_checkpoint(&ck).map_err(|e| with_file(e, path))?;
    let hp = HostParams::from_checkpoint(&ck, &arch).map_err(|e| with_file(e, path))?;
    let model = Model::from_host(arch, &hp, |r, c, d| gpu.upload(r, c, d))
        .map_err(|e| with_file(e, path))?;
    Ok((model, ck))
}

fn with_file(e: Error, path: &Path) -> Error {
    let p = path.display();
    match e {
        Error::Shape(m) => Error::Shape(format!("{p}: {m}")),
        Error::Invalid(m) => Error::Invalid(format!("{p}: {m}")),
        other => other,
    }
}

/// Fisher divergence ½E_p‖∇log p − ∇log q‖² of the model to a toy density, on `n` fresh
/// samples: (estimate, standard error).
pub fn fisher_to_truth<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    toy: Toy,
    n: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let pts = toy.sample(n, seed);
    let x = gpu.upload(n, 2, &crate::data::to_f32(&pts))?;
    let (_, scores) = energy_and_score(gpu, model, &x, 4096)?;
    let scores: Vec<[f64; 2]> = scores
        .chunks(2)
        .map(|s| [s[0] as f64, s[1] as f64])
        .collect();
    toy.fisher_divergence_of_scores(&pts, &scores)
}

/// The plotting window for a toy density.
pub fn toy_grid(toy: Toy, cells: usize) -> Result<Grid> {
    let (x0, x1, y0, y1) = match toy {
        Toy::Banana => (-6.0, 6.0, -4.0, 8.0),
        Toy::Cosine => (-5.0, 5.0, -5.0, 5.0),
        Toy::Funnel => (-6.0, 6.0, -6.0, 6.0),
        Toy::Ring | Toy::MultiRing => (-7.0, 7.0, -7.0, 7.0),
    };
    Grid::new(x0, x1, y0, y1, cells, cells)
}

/// A PNG of the true density next to each model's exp(−E), on the toy's window.
pub fn density_figure<'g>(
    gpu: &'g Gpu,
    toy: Toy,
    models: &mut [(&str, &mut Model<&'g Gpu>)],
    caption: &str,
    path: &Path,
) -> Result<()> {
    let grid = toy_grid(toy, 100)?;
    let pts = grid.points();
    let truth: Vec<f64> = pts.iter().map(|p| toy.log_density(p)).collect();
    let mut panels = vec![Heatmap::on_grid(
        format!("true {}", toy.name()),
        &grid,
        log_density_to_density(&truth),
    )];
    let x = gpu.upload(pts.len(), 2, &crate::data::to_f32(&pts))?;
    for (name, model) in models.iter_mut() {
        let (e, _) = energy_and_score(gpu, model, &x, 4096)?;
        let logq: Vec<f64> = e.iter().map(|&v| -(v as f64)).collect();
        panels.push(Heatmap::on_grid(
            name.to_string(),
            &grid,
            log_density_to_density(&logq),
        ));
    }
    density_panels(path, &grid, &panels, caption)
}

/// Train one model per objective on `toy` from the same initial parameters, data and seeds,
/// and measure each one's Fisher divergence to the truth on the same `n_eval` fresh samples.
/// Returns (objective, Fisher divergence, its standard error).
pub fn compare_objectives(
    gpu: &Gpu,
    toy: Toy,
    arch: &Arch,
    objectives: &[crate::objective::Objective],
    cfg: &crate::train::TrainConfig,
    n_train: usize,
    n_eval: usize,
) -> Result<Vec<(crate::objective::Objective, f64, f64)>> {
    let data = toy.sample_matrix(n_train, cfg.seed);
    let x = gpu.upload(data.rows, data.cols, &data.data)?;
    let init = HostParams::init(arch, crate::model::Init::Glorot, cfg.seed)?;
    let mut out = Vec::new();
    for &objective in objectives {
        let model = Model::from_host(arch.clone(), &init, |r, c, d| gpu.upload(r, c, d))?;
        let c = crate::train::TrainConfig {
            objective,
            ..cfg.clone()
        };
        let mut tr = crate::train::Trainer::new(gpu, model, x.clone(), None, c)?;
        tr.run()?;
        let (f, se) = fisher_to_truth(gpu, &mut tr.model, toy, n_eval, cfg.seed + 1)?;
        out.push((objective, f, se));
    }
    Ok(out)
}
