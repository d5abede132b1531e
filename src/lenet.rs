//! A small LeNet-style MNIST classifier built from [`crate::conv`], whose penultimate layer
//! serves as the feature map of a Fréchet distance (FID-style) between generated and real
//! digits.
//!
//! Architecture, on 28 × 28 × 1 channel-last images with grey levels in [0, 1] (one image per
//! row, as [`crate::mnist::Images`] stores them):
//!
//! | layer  | operation                                | output        |
//! |--------|------------------------------------------|---------------|
//! | conv1  | 5×5 convolution, stride 2, pad 2, + tanh | 14 × 14 × 16  |
//! | conv2  | 5×5 convolution, stride 2, pad 2, + tanh | 7 × 7 × 32    |
//! | fc1    | dense 1568 → 128, + tanh                 | 128: the **features** |
//! | fc2    | dense 128 → 10                           | class logits  |
//!
//! tanh rather than ReLU: the tape's elementwise functions are smooth ([`crate::ops::Fun`]).
//! The loss is the mean softmax cross-entropy, with a log-sum-exp written from existing tape
//! ops so that it never overflows (see [`log_sum_exp_cols`]).
//!
//! Weights are saved as a wmvl checkpoint ([`crate::checkpoint`], safetensors) with the
//! tensor names of [`PARAM_NAMES`]; `data/lenet-mnist10k.safetensors` holds a trained copy.

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, NamedTensor};
use crate::conv::{conv2d, Geometry};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::mnist::Images;
use crate::ops::BinOp;
use crate::optim::{Optimizer, Rule};
use crate::rng::HostRng;
use crate::tape::{Tape, Var};

/// Image side (28): inputs are `SIDE × SIDE` grey-level images.
pub const SIDE: usize = 28;
/// Values per input image (784).
pub const PIXELS: usize = SIDE * SIDE;
/// Width of the feature layer (fc1's output).
pub const FEATURES: usize = 128;
/// Number of classes (digits 0–9).
pub const CLASSES: usize = 10;
/// Channels after conv1 and conv2.
const CHANNELS: [usize; 2] = [16, 32];
/// Rows evaluated at once by [`LeNet::features`] and [`LeNet::logits`].
pub const EVAL_CHUNK: usize = 256;

/// Parameter names in checkpoints, in the order of [`LeNet::params`].
pub const PARAM_NAMES: [&str; 8] = [
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
];

/// Metadata key and value that mark a LeNet checkpoint.
const META_MODEL: (&str, &str) = ("model", "lenet");
/// Metadata describing the architecture (checked on load).
const META_ARCH: (&str, &str) = (
    "lenet.arch",
    "28x28x1 > conv5x5/2 pad2 16 tanh > conv5x5/2 pad2 32 tanh > dense 128 tanh > dense 10",
);

/// The geometries of conv1 (28×28×1 → 14×14×16) and conv2 (14×14×16 → 7×7×32).
pub fn geometries() -> Result<[Geometry; 2]> {
    let g1 = Geometry::new(SIDE, SIDE, 1, 5, 2, 2)?;
    let g2 = g1.next(CHANNELS[0], 5, 2, 2)?;
    Ok([g1, g2])
}

/// Shapes of the parameters, in the order of [`PARAM_NAMES`]: conv weights are
/// (k·k·C, F), dense weights (in, out), biases (1, out).
pub fn param_shapes() -> Result<[(usize, usize); 8]> {
    let [g1, g2] = geometries()?;
    let flat = g2.positions() * CHANNELS[1];
    Ok([
        (g1.patch(), CHANNELS[0]),
        (1, CHANNELS[0]),
        (g2.patch(), CHANNELS[1]),
        (1, CHANNELS[1]),
        (flat, FEATURES),
        (1, FEATURES),
        (FEATURES, CLASSES),
        (1, CLASSES),
    ])
}

/// What a forward pass gives: the features (rows, 128) and the logits (rows, 10).
#[derive(Clone, Copy, Debug)]
pub struct Forward<'t, B: Backend> {
    pub features: Var<'t, B>,
    pub logits: Var<'t, B>,
}

/// The network on any tape: `params` in the order of [`PARAM_NAMES`], `x` a batch of images
/// (rows, 784).
pub fn forward<'t, B: Backend>(params: &[Var<'t, B>], x: Var<'t, B>) -> Result<Forward<'t, B>> {
    if params.len() != PARAM_NAMES.len() {
        return Err(Error::Shape(format!(
            "LeNet takes {} parameter tensors, got {}",
            PARAM_NAMES.len(),
            params.len()
        )));
    }
    if x.shape().1 != PIXELS {
        return Err(Error::Shape(format!(
            "LeNet takes {SIDE}×{SIDE} images ({PIXELS} columns), got {} columns",
            x.shape().1
        )));
    }
    let [g1, g2] = geometries()?;
    let h1 = conv2d(x, params[0], params[1], &g1)?.tanh()?;
    let h2 = conv2d(h1, params[2], params[3], &g2)?.tanh()?;
    let features = h2.matmul(params[4])?.add(params[5])?.tanh()?;
    let logits = features.matmul(params[6])?.add(params[7])?;
    Ok(Forward { features, logits })
}

/// log Σⱼ exp(xᵢⱼ) of each row, (rows, cols) → (rows, 1), never overflowing.
///
/// There is no max op to subtract, so the sum is taken pairwise with
/// log(eᵃ + eᵇ) = a + softplus(b − a), exact and stable for any finite a, b (softplus is
/// evaluated stably, and its derivative is the sigmoid): the columns are halved until one
/// is left, in ⌈log₂ cols⌉ rounds of a few elementwise ops each.
pub fn log_sum_exp_cols<'t, B: Backend>(x: Var<'t, B>) -> Result<Var<'t, B>> {
    let mut x = x;
    loop {
        let c = x.shape().1;
        if c == 0 {
            return Err(Error::Shape("log-sum-exp over zero columns".into()));
        }
        if c == 1 {
            return Ok(x);
        }
        let h = c / 2;
        let a = x.slice_cols(0, h)?;
        let b = x.slice_cols(h, 2 * h)?;
        let mut s = a.add(b.sub(a)?.softplus()?)?;
        if c % 2 == 1 {
            s = s.concat_cols(x.slice_cols(2 * h, c)?)?;
        }
        x = s;
    }
}

/// Mean softmax cross-entropy of `logits` (rows, classes) against one-hot targets of the same
/// shape: mean over rows of log Σⱼ exp(lⱼ) − ⟨onehot, l⟩.
pub fn cross_entropy<'t, B: Backend>(logits: Var<'t, B>, onehot: Var<'t, B>) -> Result<Var<'t, B>> {
    if logits.shape() != onehot.shape() {
        return Err(Error::Shape(format!(
            "cross-entropy: logits {:?} and one-hot targets {:?} differ",
            logits.shape(),
            onehot.shape()
        )));
    }
    log_sum_exp_cols(logits)?
        .sub(onehot.rowdot(logits)?)?
        .mean_all()
}

/// One-hot rows (labels.len(), 10) for digit labels; refuses a label outside 0..10.
pub fn one_hot(labels: &[u8]) -> Result<Vec<f32>> {
    let mut out = vec![0.0; labels.len() * CLASSES];
    for (i, &l) in labels.iter().enumerate() {
        if l as usize >= CLASSES {
            return Err(Error::Invalid(format!(
                "label {l} of image {i} is not a digit 0..=9"
            )));
        }
        out[i * CLASSES + l as usize] = 1.0;
    }
    Ok(out)
}

/// Settings of [`LeNet::train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Optimiser steps (minibatches).
    pub steps: usize,
    /// Images per minibatch.
    pub batch: usize,
    /// Adam's learning rate (at the start, see `decay`).
    pub lr: f32,
    /// Let the learning rate fall linearly from `lr` to 0 over the run.
    pub decay: bool,
    /// Data augmentation: each training image is shifted by a random whole number of pixels
    /// in −shift..=shift along each axis (zero fill), drawn afresh every time it is used.
    pub shift: usize,
    /// Seeds the minibatch order (epochs of a shuffled training set).
    pub seed: u64,
    /// The progress callback is called every this many steps (and after the last).
    pub report_every: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 4000,
            batch: 64,
            lr: 1e-3,
            decay: true,
            shift: 2,
            seed: 0,
            report_every: 100,
        }
    }
}

/// What [`LeNet::train`] reports every `report_every` steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Steps done so far.
    pub step: usize,
    /// Steps asked for.
    pub steps: usize,
    /// Mean minibatch loss over the steps since the previous report.
    pub loss: f64,
    /// Passes over the training set so far.
    pub epochs: f64,
}

/// The classifier, its parameters on a GPU.
pub struct LeNet<'g> {
    gpu: &'g Gpu,
    params: Vec<Tensor>,
}

impl<'g> LeNet<'g> {
    /// A fresh network: Glorot-uniform weights (for a k×k convolution from C to F channels,
    /// fan-in k²C and fan-out k²F), zero biases; seeded, so the same seed gives the same
    /// network.
    pub fn new(gpu: &'g Gpu, seed: u64) -> Result<LeNet<'g>> {
        let mut rng = HostRng::for_stream(seed, 0x1e_4e7);
        let [g1, g2] = geometries()?;
        let fans = [
            (g1.patch(), g1.k * g1.k * CHANNELS[0]),
            (g2.patch(), g2.k * g2.k * CHANNELS[1]),
            (g2.positions() * CHANNELS[1], FEATURES),
            (FEATURES, CLASSES),
        ];
        let shapes = param_shapes()?;
        let mut host = Vec::with_capacity(shapes.len());
        for (l, &(fan_in, fan_out)) in fans.iter().enumerate() {
            let (r, c) = shapes[2 * l];
            let lim = (6.0 / (fan_in + fan_out) as f64).sqrt();
            host.push(
                (0..r * c)
                    .map(|_| ((2.0 * rng.uniform() - 1.0) * lim) as f32)
                    .collect::<Vec<f32>>(),
            );
            host.push(vec![0.0; shapes[2 * l + 1].1]);
        }
        LeNet::from_host(gpu, &host)
    }

    /// A network from host values, in the order and shapes of [`param_shapes`].
    pub fn from_host(gpu: &'g Gpu, values: &[Vec<f32>]) -> Result<LeNet<'g>> {
        let shapes = param_shapes()?;
        if values.len() != shapes.len() {
            return Err(Error::Shape(format!(
                "LeNet has {} parameter tensors, {} given",
                shapes.len(),
                values.len()
            )));
        }
        let params = shapes
            .iter()
            .zip(values)
            .zip(PARAM_NAMES)
            .map(|((&(r, c), v), name)| {
                if v.len() != r * c {
                    return Err(Error::Shape(format!(
                        "LeNet parameter {name} is {r}×{c}, {} values given",
                        v.len()
                    )));
                }
                gpu.upload(r, c, v)
            })
            .collect::<Result<_>>()?;
        Ok(LeNet { gpu, params })
    }

    /// The parameter tensors, in the order of [`PARAM_NAMES`].
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The parameters read to the host, in the order of [`PARAM_NAMES`].
    pub fn to_host(&self) -> Result<Vec<Vec<f32>>> {
        self.params.iter().map(|p| self.gpu.read(p)).collect()
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Trains on `data` (28×28 digits with labels) with Adam for `opts.steps` minibatches of
    /// `opts.batch` images, drawn epoch by epoch from a shuffle seeded by `opts.seed`, each
    /// image randomly shifted by up to `opts.shift` pixels (see [`TrainOptions`]).
    /// `progress` is called every `opts.report_every` steps and after the last one (each
    /// call waits for the device). Returns the mean loss of the last reporting period.
    pub fn train(
        &mut self,
        data: &Images,
        opts: &TrainOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<f64> {
        check_images(data)?;
        if opts.batch == 0 || opts.report_every == 0 {
            return Err(Error::Invalid(format!(
                "batch size ({}) and reporting interval ({}) must be positive",
                opts.batch, opts.report_every
            )));
        }
        if opts.shift >= SIDE {
            return Err(Error::Invalid(format!(
                "a shift of {} pixels would move {SIDE}×{SIDE} digits out of the image",
                opts.shift
            )));
        }
        let gpu = self.gpu;
        let onehot = one_hot(&data.labels)?;
        let mut opt = Optimizer::new(gpu, Rule::ADAM, opts.lr, &self.params)?;
        let mut rng = HostRng::for_stream(opts.seed, 0xba7c4);
        let mut order: Vec<usize> = (0..data.rows).collect();
        let mut at = data.rows; // start with a shuffle
        let mut x = vec![0.0f32; opts.batch * PIXELS];
        let mut y = vec![0.0f32; opts.batch * CLASSES];
        let mut acc: Option<Tensor> = None;
        let mut since = 0;
        let mut last = f64::NAN;
        for step in 1..=opts.steps {
            for i in 0..opts.batch {
                if at == data.rows {
                    shuffle(&mut order, &mut rng);
                    at = 0;
                }
                let j = order[at];
                at += 1;
                let mut draw = || {
                    let span = 2 * opts.shift + 1;
                    ((rng.uniform() * span as f64) as usize).min(span - 1) as isize
                        - opts.shift as isize
                };
                let (dy, dx) = (draw(), draw());
                shift_image(
                    &data.data[j * PIXELS..(j + 1) * PIXELS],
                    dy,
                    dx,
                    &mut x[i * PIXELS..(i + 1) * PIXELS],
                );
                y[i * CLASSES..(i + 1) * CLASSES]
                    .copy_from_slice(&onehot[j * CLASSES..(j + 1) * CLASSES]);
            }
            if opts.decay {
                opt.lr = opts.lr * (1.0 - (step - 1) as f32 / opts.steps as f32);
            }
            let loss = self.record_step(&mut opt, &x, &y, opts.batch)?;
            acc = Some(match acc {
                Some(a) => gpu.binary(BinOp::Add, &a, &loss)?,
                None => loss,
            });
            since += 1;
            if step % opts.report_every == 0 || step == opts.steps {
                let total = match acc.take() {
                    Some(a) => gpu.read(&a)?[0] as f64,
                    None => 0.0,
                };
                last = total / since as f64;
                if !last.is_finite() {
                    return Err(Error::Diverged(format!(
                        "LeNet training loss is {last} at step {step}; lower the learning rate \
                         ({})",
                        opts.lr
                    )));
                }
                progress(&Progress {
                    step,
                    steps: opts.steps,
                    loss: last,
                    epochs: (step * opts.batch) as f64 / data.rows as f64,
                });
                since = 0;
            }
        }
        Ok(last)
    }

    /// One Adam step on the minibatch (x, one-hot y); returns the loss as a device scalar.
    fn record_step(
        &mut self,
        opt: &mut Optimizer,
        x: &[f32],
        y: &[f32],
        rows: usize,
    ) -> Result<Tensor> {
        let gpu = self.gpu;
        let tape = Tape::new(gpu);
        let xv = tape.leaf(gpu.upload(rows, PIXELS, x)?);
        let yv = tape.leaf(gpu.upload(rows, CLASSES, y)?);
        let leaves: Vec<Var<'_, &Gpu>> = self.params.iter().map(|p| tape.leaf(p.clone())).collect();
        let out = forward(&leaves, xv)?;
        let loss = cross_entropy(out.logits, yv)?;
        opt.minimize(gpu, loss, &leaves, &self.params)?;
        Ok(loss.value())
    }

    /// Runs the network on `rows` images (row-major, 784 grey levels each) in chunks of
    /// `chunk` rows; returns the features or the logits, row-major.
    fn evaluate(
        &self,
        images: &[f32],
        rows: usize,
        chunk: usize,
        want_features: bool,
    ) -> Result<Vec<f64>> {
        if rows.checked_mul(PIXELS) != Some(images.len()) {
            return Err(Error::Shape(format!(
                "{} values given for {rows} images of {SIDE}×{SIDE} = {PIXELS} pixels",
                images.len()
            )));
        }
        if chunk == 0 {
            return Err(Error::Invalid("evaluation chunk of 0 rows".into()));
        }
        let width = if want_features { FEATURES } else { CLASSES };
        let mut out = Vec::with_capacity(rows * width);
        for start in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - start);
            let tape = Tape::new(self.gpu);
            let x = tape.leaf(self.gpu.upload(
                n,
                PIXELS,
                &images[start * PIXELS..(start + n) * PIXELS],
            )?);
            let leaves: Vec<Var<'_, &Gpu>> =
                self.params.iter().map(|p| tape.leaf(p.clone())).collect();
            let f = forward(&leaves, x)?;
            let v = if want_features { f.features } else { f.logits };
            out.extend(self.gpu.read(&v.value())?.into_iter().map(f64::from));
        }
        Ok(out)
    }

    /// The 128 penultimate-layer features (after tanh) of each of `rows` images given
    /// row-major, 784 grey levels in [0, 1] each: `rows × 128` values, row-major. Any number
    /// of rows: they are evaluated [`EVAL_CHUNK`] at a time.
    pub fn features(&self, images: &[f32], rows: usize) -> Result<Vec<f64>> {
        self.evaluate(images, rows, EVAL_CHUNK, true)
    }

    /// [`LeNet::features`] evaluated `chunk` rows at a time (the result does not depend on it).
    pub fn features_chunked(&self, images: &[f32], rows: usize, chunk: usize) -> Result<Vec<f64>> {
        self.evaluate(images, rows, chunk, true)
    }

    /// The class logits, `rows × 10` row-major.
    pub fn logits(&self, images: &[f32], rows: usize) -> Result<Vec<f64>> {
        self.evaluate(images, rows, EVAL_CHUNK, false)
    }

    /// The most likely digit of each image.
    pub fn predict(&self, images: &[f32], rows: usize) -> Result<Vec<u8>> {
        let logits = self.logits(images, rows)?;
        Ok(logits
            .chunks(CLASSES)
            .map(|l| (0..CLASSES).fold(0, |best, j| if l[j] > l[best] { j } else { best }) as u8)
            .collect())
    }

    /// The fraction of `data`'s images classified as their label.
    pub fn accuracy(&self, data: &Images) -> Result<f64> {
        check_images(data)?;
        let predicted = self.predict(&data.data, data.rows)?;
        let right = predicted
            .iter()
            .zip(&data.labels)
            .filter(|(p, l)| p == l)
            .count();
        Ok(right as f64 / data.rows as f64)
    }

    /// The mean cross-entropy on `data`, in f64 on the host from the device's logits.
    pub fn mean_loss(&self, data: &Images) -> Result<f64> {
        check_images(data)?;
        let logits = self.logits(&data.data, data.rows)?;
        let mut total = 0.0;
        for (l, &label) in logits.chunks(CLASSES).zip(&data.labels) {
            if label as usize >= CLASSES {
                return Err(Error::Invalid(format!(
                    "label {label} is not a digit 0..=9"
                )));
            }
            let m = l.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            total += lse - l[label as usize];
        }
        Ok(total / data.rows as f64)
    }

    /// Writes the weights atomically to `path` as a wmvl checkpoint, with `extra` metadata
    /// (e.g. how it was trained).
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        let shapes = param_shapes()?;
        let mut ck = Checkpoint {
            tensors: Vec::with_capacity(shapes.len()),
            metadata: BTreeMap::new(),
        };
        for ((name, &(r, c)), p) in PARAM_NAMES.iter().zip(&shapes).zip(&self.params) {
            ck.tensors
                .push(NamedTensor::new(*name, r, c, self.gpu.read(p)?)?);
        }
        for (k, v) in extra {
            ck.metadata.insert(k.to_string(), v.clone());
        }
        for (k, v) in [META_MODEL, META_ARCH] {
            ck.metadata.insert(k.to_string(), v.to_string());
        }
        ck.save(path)
    }

    /// A network saved by [`LeNet::save`]; refuses other checkpoints and wrong shapes.
    pub fn load(gpu: &'g Gpu, path: &Path) -> Result<LeNet<'g>> {
        let ck = Checkpoint::load(path)?;
        let at = |e: Error| match e {
            Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
            Error::Shape(m) => Error::Shape(format!("{}: {m}", path.display())),
            other => other,
        };
        for (k, v) in [META_MODEL, META_ARCH] {
            let got = ck.meta(k).map_err(at)?;
            if got != v {
                return Err(at(Error::Invalid(format!(
                    "metadata {k} is {got:?}, not {v:?}: not a LeNet of this architecture"
                ))));
            }
        }
        let shapes = param_shapes()?;
        let values = PARAM_NAMES
            .iter()
            .zip(&shapes)
            .map(|(name, &(r, c))| Ok(ck.expect_shape(name, r, c)?.data.clone()))
            .collect::<Result<Vec<_>>>()
            .map_err(at)?;
        LeNet::from_host(gpu, &values)
    }
}

/// Images of the right size, with one label each.
fn check_images(data: &Images) -> Result<()> {
    if data.pixels != PIXELS {
        return Err(Error::Shape(format!(
            "LeNet takes {SIDE}×{SIDE} images ({PIXELS} pixels), these have {}",
            data.pixels
        )));
    }
    if data.rows == 0 || data.labels.len() != data.rows || data.data.len() != data.rows * PIXELS {
        return Err(Error::Shape(format!(
            "{} images with {} labels and {} values: need at least one image, one label per \
             image and {PIXELS} values per image",
            data.rows,
            data.labels.len(),
            data.data.len()
        )));
    }
    Ok(())
}

/// `dst` = `src` (a SIDE × SIDE image) moved down by `dy` and right by `dx` pixels, zeros
/// where nothing moved in.
fn shift_image(src: &[f32], dy: isize, dx: isize, dst: &mut [f32]) {
    let side = SIDE as isize;
    for y in 0..side {
        for x in 0..side {
            let (sy, sx) = (y - dy, x - dx);
            dst[(y * side + x) as usize] = if (0..side).contains(&sy) && (0..side).contains(&sx) {
                src[(sy * side + sx) as usize]
            } else {
                0.0
            };
        }
    }
}

/// Fisher–Yates shuffle from the host stream.
fn shuffle(v: &mut [usize], rng: &mut HostRng) {
    for i in (1..v.len()).rev() {
        let j = ((rng.uniform() * (i + 1) as f64) as usize).min(i);
        v.swap(i, j);
    }
}
