//! Which shape a fused step takes on an adapter (see [`Shape`]): chosen from the adapter's
//! kind and limits and the configuration, reported by `wmvl info`/`mvl_step`, and
//! overridable (`--shape`, `WMVL_FUSED_SHAPE`, or the fields of [`ShapeChoice`]).

use super::plan::{LayersShape, Shape, TileShape};
use crate::error::{Error, Result};

/// A shape by name, or `Auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShapeChoice {
    #[default]
    Auto,
    /// The tile shape sized for a GPU: small tiles, as many workgroups as the partial sums
    /// allow.
    TileGpu,
    /// The tile shape sized for a CPU driver: one long workgroup per core.
    TileCpu,
    /// One kernel per stage (matrix-product shaped).
    Layers,
}

impl ShapeChoice {
    pub const NAMES: [&'static str; 4] = ["auto", "tile-gpu", "tile-cpu", "layers"];

    pub fn name(self) -> &'static str {
        match self {
            ShapeChoice::Auto => "auto",
            ShapeChoice::TileGpu => "tile-gpu",
            ShapeChoice::TileCpu => "tile-cpu",
            ShapeChoice::Layers => "layers",
        }
    }

    pub fn from_name(s: &str) -> Result<ShapeChoice> {
        match s {
            "auto" => Ok(ShapeChoice::Auto),
            "tile-gpu" => Ok(ShapeChoice::TileGpu),
            "tile-cpu" => Ok(ShapeChoice::TileCpu),
            "layers" => Ok(ShapeChoice::Layers),
            _ => Err(Error::Invalid(format!(
                "unknown fused shape {s:?}; use {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    /// `WMVL_FUSED_SHAPE` (unset or empty: `Auto`).
    pub fn from_env() -> Result<ShapeChoice> {
        match std::env::var("WMVL_FUSED_SHAPE") {
            Err(_) => Ok(ShapeChoice::Auto),
            Ok(s) if s.is_empty() => Ok(ShapeChoice::Auto),
            Ok(s) => ShapeChoice::from_name(&s)
                .map_err(|e| Error::Invalid(format!("WMVL_FUSED_SHAPE: {e}"))),
        }
    }
}

/// What the choice depends on: the adapter and the step.
#[derive(Clone, Debug)]
pub struct Context {
    /// A CPU implementation (lavapipe): few long workgroups, every memory access a loop.
    pub cpu: bool,
    /// Threads that run workgroups at once on a CPU driver (its cores).
    pub cpu_threads: usize,
    /// Workgroup memory per workgroup (bytes) and invocations per workgroup, at most.
    pub workgroup_bytes: usize,
    pub max_invocations: usize,
    /// Rows of a launch (the minibatch or an evaluation chunk), the network's widths, and
    /// the packed parameters' length.
    pub batch: usize,
    pub widths: Vec<usize>,
    pub theta_len: usize,
}

/// Partial gradient sums the GPU tile shape may write per step (bytes): the update reads
/// them all, so they bound the workgroups (and thus set the tile size).
const GPU_PARTIAL_BYTES: usize = 4 << 20;
/// Widest hidden layer the CPU-driver tile shape takes by default.
const CPU_TILE_MAX_WIDTH: usize = 128;
/// Multiply–adds of one hidden × hidden sweep over the batch past which the layers shape
/// (matrix-product kernels over the whole batch) takes over on a GPU.
const TILE_MAX_SWEEP: usize = 1 << 27;

/// The shape for `choice` in `ctx`, with `WMVL_TILE=rows,groups,size` (any of them empty to
/// keep the choice's) overriding a tile shape's sizes, for measuring others on an adapter.
pub fn choose(choice: ShapeChoice, ctx: &Context) -> Shape {
    let shape = choose_default(choice, ctx);
    let Ok(spec) = std::env::var("WMVL_TILE") else {
        return shape;
    };
    let Shape::Tile(mut t) = shape else {
        return shape;
    };
    let parts: Vec<Option<usize>> = spec.split(',').map(|p| p.trim().parse().ok()).collect();
    if let Some(Some(r)) = parts.first() {
        t.rows = (*r).max(1);
    }
    if let Some(Some(g)) = parts.get(1) {
        t.groups = (*g).max(1);
    }
    if let Some(Some(z)) = parts.get(2) {
        t.size = (*z).max(1).next_power_of_two();
    }
    Shape::Tile(t)
}

fn choose_default(choice: ShapeChoice, ctx: &Context) -> Shape {
    let widest = ctx.widths.iter().copied().max().unwrap_or(1);
    let choice = match choice {
        // Measured on lavapipe (BENCHMARKS.md): the tile shape is ahead for the paper's
        // 100-wide layers, the layers shape for 256-wide ones.
        ShapeChoice::Auto if ctx.cpu && widest > CPU_TILE_MAX_WIDTH => ShapeChoice::Layers,
        ShapeChoice::Auto if ctx.cpu => ShapeChoice::TileCpu,
        ShapeChoice::Auto if ctx.batch * widest * widest > TILE_MAX_SWEEP => ShapeChoice::Layers,
        ShapeChoice::Auto => ShapeChoice::TileGpu,
        c => c,
    };
    match choice {
        ShapeChoice::Layers | ShapeChoice::Auto => Shape::Layers(LayersShape {
            size: if ctx.cpu { 64 } else { 256 },
        }),
        ShapeChoice::TileCpu => {
            // One workgroup per core, its rows a multiple of the subgroup core's 16, at most
            // 512 rows in flight per workgroup (the workspace of wide layers must fit).
            let groups = ctx.cpu_threads.clamp(1, 8);
            let rows = ctx
                .batch
                .div_ceil(groups)
                .next_multiple_of(16)
                .clamp(16, 512);
            Shape::Tile(TileShape {
                cpu: true,
                rows,
                groups,
                size: 64,
                block: (8, 8),
                workgroup_weights: false,
                transposed_weights: false,
            })
        }
        ShapeChoice::TileGpu => {
            let size = 256.min(ctx.max_invocations.next_power_of_two() / 2).max(64);
            let by_bytes = (GPU_PARTIAL_BYTES / (4 * ctx.theta_len.max(1))).max(1);
            let groups = by_bytes.min(ctx.batch).min(256);
            let rows = ctx.batch.div_ceil(groups).max(1);
            let groups = ctx.batch.div_ceil(rows);
            // Blocks of about one per invocation for a hidden layer's sweep of the tile.
            let outputs = rows * widest;
            let block = if outputs >= 4 * size { (2, 2) } else { (1, 1) };
            // The weights in workgroup memory where they fit beside the reductions.
            let need = 4 * (ctx.theta_len + size + 2 * widest + 64);
            let workgroup_weights = need <= ctx.workgroup_bytes;
            Shape::Tile(TileShape {
                cpu: false,
                rows,
                groups,
                size,
                block,
                workgroup_weights,
                transposed_weights: !workgroup_weights,
            })
        }
    }
}
