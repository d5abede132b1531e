//! Glue shared by the CLI and the examples: saving and loading models, measuring a model
//! against a known density, and drawing learned-vs-true figures.

use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::data::{Matrix, Toy};
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

/// Cells along the longer side of a data figure's grid.
const DATA_CELLS: usize = 100;

/// The plotting window for 2-D data: per axis, the 0.5 % and 99.5 % quantiles widened by
/// 12.5 % of their distance on each side (so stray points do not squash the plot). Cells
/// are square when the two ranges are within a factor 2 of each other, otherwise the
/// shorter side gets half the cells. Errors as [`data_figure`].
pub fn data_grid(data: &Matrix) -> Result<Grid> {
    check_2d(data)?;
    let mut range = [(0.0, 0.0); 2];
    for (axis, r) in range.iter_mut().enumerate() {
        let mut v: Vec<f64> = data
            .data
            .iter()
            .skip(axis)
            .step_by(2)
            .map(|&v| v as f64)
            .collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        let (lo, hi) = (q(0.005), q(0.995));
        // Identical values still need a window around them.
        let width = (hi - lo).max(1e-3 * lo.abs().max(hi.abs()).max(1.0)) * 1.25;
        let mid = 0.5 * (lo + hi);
        *r = (mid - 0.5 * width, mid + 0.5 * width);
    }
    let (wx, wy) = (range[0].1 - range[0].0, range[1].1 - range[1].0);
    let ratio = (wy / wx).clamp(0.5, 2.0);
    let (nx, ny) = if ratio <= 1.0 {
        (DATA_CELLS, (DATA_CELLS as f64 * ratio).round() as usize)
    } else {
        ((DATA_CELLS as f64 / ratio).round() as usize, DATA_CELLS)
    };
    Grid::new(range[0].0, range[0].1, range[1].0, range[1].1, nx, ny)
}

fn check_2d(data: &Matrix) -> Result<()> {
    if data.cols != 2 {
        return Err(Error::Invalid(format!(
            "--plot draws 2-D data, but the data have {} columns; plot a 2-column data set \
             or leave out --plot",
            data.cols
        )));
    }
    if data.rows == 0 || data.data.len() != 2 * data.rows {
        return Err(Error::Invalid(
            "no data points to plot; give a data set with at least one row".into(),
        ));
    }
    if let Some(i) = data.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "data row {} has a non-finite value; remove it before plotting",
            i / 2 + 1
        )));
    }
    Ok(())
}

/// The two panels of [`data_figure`] on [`data_grid`]: the data as a 2-D histogram (points
/// per cell; points outside the window are left out) and the model's exp(−E).
pub fn data_panels<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    data: &Matrix,
) -> Result<(Grid, Vec<Heatmap>)> {
    let grid = data_grid(data)?;
    let dx = (grid.xmax - grid.xmin) / grid.nx as f64;
    let dy = (grid.ymax - grid.ymin) / grid.ny as f64;
    let mut counts = vec![0.0; grid.cells()];
    for p in data.data.chunks(2) {
        // Row 0 is the top (highest y), as the grid lays cells out.
        let c = ((p[0] as f64 - grid.xmin) / dx).floor();
        let r = ((grid.ymax - p[1] as f64) / dy).floor();
        if (0.0..grid.nx as f64).contains(&c) && (0.0..grid.ny as f64).contains(&r) {
            counts[r as usize * grid.nx + c as usize] += 1.0;
        }
    }
    let pts = grid.points();
    let x = gpu.upload(pts.len(), 2, &crate::data::to_f32(&pts))?;
    let (e, _) = energy_and_score(gpu, model, &x, 4096)?;
    let logq: Vec<f64> = e.iter().map(|&v| -(v as f64)).collect();
    let panels = vec![
        Heatmap::on_grid(format!("data ({} points)", data.rows), &grid, counts),
        Heatmap::on_grid("learned exp(-E)", &grid, log_density_to_density(&logq)),
    ];
    Ok((grid, panels))
}

/// A PNG of 2-D data as a histogram next to the model's exp(−E), on a window chosen from the
/// data ([`data_grid`]). Errors: [`Error::Invalid`] for data that are not 2-D, empty or not
/// finite, or a model whose energy is not finite on the window; [`Error::Io`] when the file
/// cannot be written.
pub fn data_figure<'g>(
    gpu: &'g Gpu,
    model: &mut Model<&'g Gpu>,
    data: &Matrix,
    caption: &str,
    path: &Path,
) -> Result<()> {
    let (grid, panels) = data_panels(gpu, model, data)?;
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
