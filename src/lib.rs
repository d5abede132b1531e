//! # wmvl — Wasserstein minimum velocity learning on the GPU
//!
//! A small numeric engine for energy-based models: hand-written WGSL kernels run through
//! wgpu ([`gpu`]), an f64 CPU reference of every kernel ([`cpu`]), and a reverse-mode tape
//! whose gradients can be differentiated again ([`tape`]), as the MVL objective requires.
//!
//! ```no_run
//! use wmvl::{gpu::Gpu, tape::Tape};
//! # fn main() -> wmvl::Result<()> {
//! let gpu = Gpu::new()?;
//! let tape = Tape::new(&gpu);
//! let x = tape.leaf(gpu.upload(2, 1, &[1.0, 2.0])?);
//! let y = x.square()?.sum_all()?;                 // y = Σ x²
//! let g = tape.grad(y, &[x], true)?[0];            // ∇y = 2x, still on the tape
//! let h = tape.grad(g.sum_all()?, &[x], false)?[0]; // ∇(Σ 2x) = 2
//! assert_eq!(gpu.read(&h.value())?, vec![2.0, 2.0]);
//! # Ok(()) }
//! ```

pub mod ais;
pub mod app;
pub mod backend;
pub mod checkpoint;
pub mod conv;
pub mod cpu;
pub mod data;
pub mod diagnose;
pub mod directional;
pub mod error;
pub mod fid;
pub mod fsutil;
pub mod fused;
pub mod gpu;
pub mod langevin;
pub mod lenet;
pub mod manifold;
pub mod mnist;
pub mod model;
pub mod objective;
pub mod ops;
pub mod optim;
pub mod particles;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod sample;
pub mod saved_run;
pub mod selfcheck;
pub mod tape;
pub mod train;
pub mod vae;
pub mod vmf;
pub mod wae;

pub use error::{Error, Result};
