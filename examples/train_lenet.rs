//! Trains the LeNet-style MNIST classifier of `wmvl::lenet` on the 9 000 training digits of
//! data/mnist10k, reports its accuracy on the 1 000 held-out test digits and writes its
//! weights (the feature extractor of FID-style scores of generated digits).
//!
//! cargo run --release --example train_lenet -- [--steps 4000] [--batch 64] [--lr 1e-3]
//!     [--shift 2] [--seed 0] [--data data/mnist10k] [--out data/lenet-mnist10k.safetensors]
//!
//! Adam on minibatches drawn epoch by epoch from a seeded shuffle, the learning rate falling
//! linearly to 0, every digit shifted by up to `--shift` pixels each time it is used (9 000
//! digits are few: without it the network learns them by heart, 100 % training accuracy,
//! and generalises worse). The progress lines give the mean minibatch loss since the
//! previous line.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{arg, check_options, main_of, Res};

use wmvl::gpu::Gpu;
use wmvl::lenet::{LeNet, TrainOptions};
use wmvl::mnist::load_dir;

const USAGE: &str = "cargo run --release --example train_lenet -- [--steps 4000] [--batch 64] \
[--lr 1e-3] [--shift 2] [--seed 0] [--data data/mnist10k] [--out data/lenet-mnist10k.safetensors]";

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    check_options(
        &args,
        USAGE,
        &[
            "--steps", "--batch", "--lr", "--shift", "--seed", "--data", "--out",
        ],
    )?;
    let defaults = TrainOptions::default();
    let opts = TrainOptions {
        steps: arg(&args, "--steps", defaults.steps)?,
        batch: arg(&args, "--batch", defaults.batch)?,
        lr: arg(&args, "--lr", defaults.lr)?,
        decay: defaults.decay,
        shift: arg(&args, "--shift", defaults.shift)?,
        seed: arg(&args, "--seed", defaults.seed)?,
        report_every: defaults.report_every,
    };
    let data: PathBuf = arg(&args, "--data", PathBuf::from("data/mnist10k"))?;
    let out: PathBuf = arg(
        &args,
        "--out",
        PathBuf::from("data/lenet-mnist10k.safetensors"),
    )?;

    let gpu = Gpu::new()?;
    let mnist = load_dir(&data)?;
    println!(
        "LeNet on {} training digits ({} test), {} steps of {} (Adam, lr {} decaying to 0, \
         shifts up to {} px), seed {}, on {}",
        mnist.train.rows,
        mnist.test.rows,
        opts.steps,
        opts.batch,
        opts.lr,
        opts.shift,
        opts.seed,
        gpu.report().name
    );
    let mut net = LeNet::new(&gpu, opts.seed)?;
    let start = Instant::now();
    net.train(&mnist.train, &opts, &mut |p| {
        println!(
            "step {:>6}/{}  epoch {:>5.2}  loss {:.4}  {:>6.1} s",
            p.step,
            p.steps,
            p.epochs,
            p.loss,
            start.elapsed().as_secs_f64()
        );
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let test = net.accuracy(&mnist.test)?;
    let train = net.accuracy(&mnist.train)?;
    let test_loss = net.mean_loss(&mnist.test)?;
    println!(
        "trained in {seconds:.1} s: test accuracy {:.2} % ({} digits, loss {test_loss:.4}), \
         training accuracy {:.2} %",
        100.0 * test,
        mnist.test.rows,
        100.0 * train
    );
    net.save(
        &out,
        &[
            ("lenet.steps", opts.steps.to_string()),
            ("lenet.batch", opts.batch.to_string()),
            ("lenet.lr", format!("{:?}", opts.lr)),
            ("lenet.lr_decay", "linear to 0".to_string()),
            ("lenet.shift", opts.shift.to_string()),
            ("lenet.seed", opts.seed.to_string()),
            ("lenet.data", data.display().to_string()),
            ("lenet.test_accuracy", format!("{test:.4}")),
            ("lenet.train_accuracy", format!("{train:.4}")),
        ],
    )?;
    println!("wrote {}", out.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    main_of("train_lenet", run)
}
