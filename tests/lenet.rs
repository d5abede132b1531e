//! The LeNet-style classifier (`wmvl::lenet`): the shipped weights classify the held-out
//! digits of data/mnist10k, its features do not depend on how rows are chunked, a few
//! training steps from scratch lower the loss, the cross-entropy is exact and stable, the GPU
//! network matches the f64 CPU reference, and checkpoints round-trip and refuse what is not
//! a LeNet.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::TempDir;
use wmvl::backend::Backend;
use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::Gpu;
use wmvl::lenet::{
    cross_entropy, forward, one_hot, param_shapes, LeNet, TrainOptions, CLASSES, FEATURES,
    PARAM_NAMES, PIXELS,
};
use wmvl::mnist::{load_dir, Images, Mnist};
use wmvl::tape::Tape;
use wmvl::Error;

/// The weights shipped with the project (written by `examples/train_lenet.rs`).
const SHIPPED: &str = "data/lenet-mnist10k.safetensors";
/// Their accuracy on the 1 000 test digits was measured at 98.0 % (see the example's output
/// in the checkpoint metadata, `lenet.test_accuracy`); a little under that, so that a change
/// of driver or rounding does not fail the test, while a broken network (or conv op) does.
const MIN_TEST_ACCURACY: f64 = 0.975;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

fn mnist() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| load_dir(Path::new("data/mnist10k")).expect("data/mnist10k"))
}

fn shipped() -> LeNet<'static> {
    LeNet::load(gpu(), Path::new(SHIPPED)).unwrap_or_else(|e| panic!("{SHIPPED}: {e}"))
}

/// The first `n` images of a set.
fn head(images: &Images, n: usize) -> Images {
    Images {
        rows: n,
        pixels: images.pixels,
        data: images.data[..n * images.pixels].to_vec(),
        labels: images.labels[..n].to_vec(),
    }
}

#[test]
fn shipped_weights_classify_the_test_digits() {
    let net = shipped();
    let test = &mnist().test;
    assert_eq!(test.rows, 1000);
    let acc = net.accuracy(test).unwrap();
    eprintln!("shipped LeNet: test accuracy {:.2} %", 100.0 * acc);
    assert!(
        acc >= MIN_TEST_ACCURACY,
        "test accuracy {acc:.4} < {MIN_TEST_ACCURACY}"
    );
    // Predictions agree with the logits' arg-max and with the labels' range.
    let p = net.predict(&test.data[..10 * PIXELS], 10).unwrap();
    assert!(p.iter().all(|&d| (d as usize) < CLASSES));
    let loss = net.mean_loss(test).unwrap();
    assert!(loss < 0.2, "mean test cross-entropy {loss}");
}

#[test]
fn features_do_not_depend_on_chunking() {
    let net = shipped();
    let n = 37;
    let x = &mnist().test.data[..n * PIXELS];
    let one = net.features_chunked(x, n, n).unwrap();
    assert_eq!(one.len(), n * FEATURES);
    for chunk in [1, 5, 16, 36, 1000] {
        assert_eq!(
            net.features_chunked(x, n, chunk).unwrap(),
            one,
            "chunks of {chunk} rows"
        );
    }
    assert_eq!(net.features(x, n).unwrap(), one);
    // tanh features: in [−1, 1] (f32 tanh rounds to ±1 when saturated), and different digits
    // give different features.
    assert!(one.iter().all(|v| v.abs() <= 1.0));
    assert_ne!(one[..FEATURES], one[FEATURES..2 * FEATURES]);
    // Any number of rows, including none; wrong lengths are errors.
    assert!(net.features(&[], 0).unwrap().is_empty());
    assert!(matches!(
        net.features(&x[..PIXELS - 1], 1),
        Err(Error::Shape(_))
    ));
    assert!(matches!(net.features(x, n + 1), Err(Error::Shape(_))));
    assert!(matches!(
        net.features_chunked(x, n, 0),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn a_few_training_steps_lower_the_loss() {
    let data = head(&mnist().train, 256);
    let mut net = LeNet::new(gpu(), 7).unwrap();
    let before = net.mean_loss(&data).unwrap();
    // An untrained network is close to chance: log 10 ≈ 2.30.
    assert!((before - 10f64.ln()).abs() < 0.5, "initial loss {before}");
    let opts = TrainOptions {
        steps: 12,
        batch: 32,
        lr: 2e-3,
        decay: true,
        shift: 1,
        seed: 3,
        report_every: 4,
    };
    let mut reports = vec![];
    let last = net.train(&data, &opts, &mut |p| reports.push(*p)).unwrap();
    let after = net.mean_loss(&data).unwrap();
    eprintln!("loss {before:.4} → {after:.4} (reported {reports:?})");
    assert_eq!(
        reports.iter().map(|p| p.step).collect::<Vec<_>>(),
        vec![4, 8, 12]
    );
    assert_eq!(reports[2].loss, last);
    assert!(after < 0.8 * before, "loss {before} → {after}");
    // Same seeds, same network.
    let mut again = LeNet::new(gpu(), 7).unwrap();
    again.train(&data, &opts, &mut |_| {}).unwrap();
    assert_eq!(again.to_host().unwrap(), net.to_host().unwrap());
    // Bad settings are errors.
    let bad = TrainOptions { batch: 0, ..opts };
    assert!(matches!(
        net.train(&data, &bad, &mut |_| {}),
        Err(Error::Invalid(_))
    ));
    let small = Images {
        rows: 1,
        pixels: 100,
        data: vec![0.0; 100],
        labels: vec![1],
    };
    assert!(matches!(
        net.train(&small, &opts, &mut |_| {}),
        Err(Error::Shape(_))
    ));
    assert!(matches!(net.accuracy(&small), Err(Error::Shape(_))));
}

/// Host reference: mean over rows of log Σ exp(l) − l[label], with the max subtracted.
fn reference_cross_entropy(logits: &[f64], labels: &[u8]) -> f64 {
    let mut total = 0.0;
    for (l, &y) in logits.chunks(CLASSES).zip(labels) {
        let m = l.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        total += m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - l[y as usize];
    }
    total / labels.len() as f64
}

/// Logits far beyond exp's range in f32 (±1000) and ordinary ones: the loss matches the
/// max-shifted f64 reference, and its gradient is (softmax − one-hot)/rows.
#[test]
fn cross_entropy_is_exact_and_stable() {
    let rows = 4;
    let logits: Vec<f32> = (0..rows * CLASSES)
        .map(|i| {
            let v = ((i * 37) % 23) as f32 / 7.0 - 1.5;
            if i / CLASSES == 1 {
                v * 1000.0
            } else if i / CLASSES == 2 {
                v - 500.0
            } else {
                v
            }
        })
        .collect();
    let labels = [3u8, 0, 9, 5];
    let l64: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let want = reference_cross_entropy(&l64, &labels);
    let mut want_grad = vec![];
    for (l, &y) in l64.chunks(CLASSES).zip(&labels) {
        let m = l.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let z: f64 = l.iter().map(|v| (v - m).exp()).sum();
        for (j, v) in l.iter().enumerate() {
            let p = (v - m).exp() / z;
            want_grad.push((p - if j == y as usize { 1.0 } else { 0.0 }) / rows as f64);
        }
    }
    let y = one_hot(&labels).unwrap();
    fn run<B: Backend>(b: B, logits: &[f32], y: &[f32], rows: usize) -> (Vec<f64>, Vec<f64>) {
        let tape = Tape::new(b);
        let up = |d: &[f32]| {
            let v: Vec<f64> = d.iter().map(|&v| v as f64).collect();
            tape.leaf(tape.backend().upload_host(rows, CLASSES, &v).unwrap())
        };
        let (l, t) = (up(logits), up(y));
        let loss = cross_entropy(l, t).unwrap();
        let g = tape.grad(loss, &[l], false).unwrap()[0];
        let b = tape.backend();
        (
            b.to_host(&loss.value()).unwrap(),
            b.to_host(&g.value()).unwrap(),
        )
    }
    for (dev, (loss, grad)) in [
        ("CPU", run(Cpu, &logits, &y, rows)),
        ("GPU", run(gpu(), &logits, &y, rows)),
    ] {
        let tol = if dev == "CPU" { 1e-12 } else { 1e-5 };
        assert!(
            (loss[0] - want).abs() <= tol * want.abs(),
            "{dev}: loss {} vs {want}",
            loss[0]
        );
        let e = grad
            .iter()
            .zip(&want_grad)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(e <= tol, "{dev}: gradient off by {e:.3e}");
    }
    assert!(matches!(one_hot(&[10]), Err(Error::Invalid(_))));
}

/// The whole network on the GPU (f32) against the f64 CPU tape, with the shipped weights.
#[test]
fn gpu_network_matches_the_cpu_reference() {
    let net = shipped();
    let n = 3;
    let x = &mnist().test.data[..n * PIXELS];
    let params = net.to_host().unwrap();
    let shapes = param_shapes().unwrap();
    let tape = Tape::new(Cpu);
    let leaves: Vec<_> = params
        .iter()
        .zip(&shapes)
        .map(|(v, &(r, c))| tape.leaf(Mat::from_f32(r, c, v).unwrap()))
        .collect();
    let out = forward(&leaves, tape.leaf(Mat::from_f32(n, PIXELS, x).unwrap())).unwrap();
    for (what, got, want) in [
        (
            "features",
            net.features(x, n).unwrap(),
            out.features.value().data,
        ),
        ("logits", net.logits(x, n).unwrap(), out.logits.value().data),
    ] {
        let num: f64 = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f64 = want.iter().map(|b| b * b).sum();
        let e = (num / den).sqrt();
        assert!(e < 1e-4, "{what}: GPU vs CPU relative error {e:.3e}");
    }
}

#[test]
fn checkpoints_round_trip_and_refuse_other_files() {
    let dir = TempDir::new("lenet");
    let net = LeNet::new(gpu(), 11).unwrap();
    let path = dir.path("net.safetensors");
    net.save(&path, &[("note", "test".to_string())]).unwrap();
    let back = LeNet::load(gpu(), &path).unwrap();
    assert_eq!(back.to_host().unwrap(), net.to_host().unwrap());
    let x = &mnist().test.data[..2 * PIXELS];
    assert_eq!(back.features(x, 2).unwrap(), net.features(x, 2).unwrap());
    // Another checkpoint (a LeNet tensor missing, or not a LeNet at all) is refused.
    let ck = wmvl::checkpoint::Checkpoint::load(&path).unwrap();
    let mut missing = ck.clone();
    missing.tensors.retain(|t| t.name != PARAM_NAMES[3]);
    missing.save(dir.path("missing.safetensors")).unwrap();
    match LeNet::load(gpu(), &dir.path("missing.safetensors")) {
        Err(Error::Invalid(m)) => assert!(m.contains(PARAM_NAMES[3]), "{m}"),
        other => panic!("missing tensor: {:?}", other.map(|_| ())),
    }
    let mut other = ck.clone();
    other.metadata.insert("model".into(), "mlp".into());
    other.save(dir.path("other.safetensors")).unwrap();
    assert!(matches!(
        LeNet::load(gpu(), &dir.path("other.safetensors")),
        Err(Error::Invalid(_))
    ));
    let mut wrong = ck;
    let t = &mut wrong.tensors[0];
    t.cols += 1;
    t.data.extend(vec![0.0; t.rows]);
    wrong.save(dir.path("wrong.safetensors")).unwrap();
    assert!(matches!(
        LeNet::load(gpu(), &dir.path("wrong.safetensors")),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        LeNet::load(gpu(), &dir.path("absent.safetensors")),
        Err(Error::Io(_))
    ));
}
