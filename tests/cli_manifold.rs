//! The command line on manifolds: `train --manifold` (and directional --dataset), `eval`,
//! `score` (Riemannian scores) and `sample` (Riemannian Langevin / MALA) take the manifold
//! from the checkpoint; data off the manifold are refused by row.

mod common;

use std::fs;

use common::*;
use wmvl::checkpoint::Checkpoint;
use wmvl::data::{load_npy, save_npy};

#[test]
fn sphere_train_sample_score_eval() {
    let t = TempDir::new("sphere");
    let run = wmvl(
        &t.0,
        &[
            "train",
            "--dataset",
            "s2mix",
            "--n",
            "600",
            "--hidden",
            "16,16",
            "--act",
            "tanh",
            "--no-sn",
            "--batch",
            "100",
            "--steps",
            "20",
            "--log-every",
            "10",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    assert!(
        run.stderr.contains("fused kernels"),
        "Riemannian MVL on the sphere runs fused: {run:#?}"
    );
    let ck = Checkpoint::load(t.path("m.safetensors")).unwrap();
    assert_eq!(ck.metadata["manifold"], "sphere");
    // The sampler takes the checkpoint's manifold: samples stay on S².
    wmvl(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            "m.safetensors",
            "--n",
            "200",
            "--steps",
            "20",
            "--sampler",
            "mala",
            "--step-size",
            "0.05",
            "--out",
            "s.npy",
        ],
    )
    .ok();
    let s = load_npy(t.path("s.npy")).unwrap();
    assert_eq!((s.rows, s.cols), (200, 3));
    for r in 0..s.rows {
        let n: f32 = s.row(r).iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "row {r} off the sphere: {n}");
    }
    // Riemannian scores are tangent.
    wmvl(
        &t.0,
        &[
            "score",
            "--checkpoint",
            "m.safetensors",
            "--points",
            "s.npy",
            "--out",
            "sc.npy",
        ],
    )
    .ok();
    let sc = load_npy(t.path("sc.npy")).unwrap();
    for r in 0..sc.rows {
        let dot: f32 = (0..3).map(|c| s.row(r)[c] * sc.row(r)[c + 1]).sum();
        assert!(dot.abs() < 1e-4, "row {r}: score not tangent ({dot})");
    }
    // eval on the sphere (manifold from the checkpoint) prints the MVL value.
    let run = wmvl(
        &t.0,
        &["eval", "--checkpoint", "m.safetensors", "--data", "s.npy"],
    )
    .ok();
    assert!(run.stdout.contains("mvl = "), "{run:#?}");
    // Points off the sphere are refused, by row.
    let mut bad = s.data.clone();
    bad[3 * 7] *= 2.0;
    save_npy(t.path("bad.npy"), s.rows, 3, &bad).unwrap();
    let run = wmvl(
        &t.0,
        &["eval", "--checkpoint", "m.safetensors", "--data", "bad.npy"],
    );
    assert_fails(&run, &["row 8", "unit sphere"], &[]);
}

#[test]
fn hyperbolic_train_and_sample_in_the_ball() {
    let t = TempDir::new("ball");
    let m = wmvl::directional::WrappedNormal::new(2, 0.5)
        .unwrap()
        .sample_matrix(500, 3);
    save_npy(t.path("h.npy"), m.rows, m.cols, &m.data).unwrap();
    wmvl(
        &t.0,
        &[
            "train",
            "--data",
            "h.npy",
            "--manifold",
            "hyperbolic",
            "--hidden",
            "16",
            "--energy",
            "scalar",
            "--batch",
            "100",
            "--steps",
            "20",
            "--log-every",
            "10",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let ck = Checkpoint::load(t.path("m.safetensors")).unwrap();
    assert_eq!(ck.metadata["manifold"], "hyperbolic");
    assert_eq!(
        ck.metadata["input_dim"], "3",
        "the model sees the hyperboloid point"
    );
    wmvl(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            "m.safetensors",
            "--n",
            "100",
            "--steps",
            "10",
            "--step-size",
            "0.01",
            "--out",
            "s.npy",
        ],
    )
    .ok();
    let s = load_npy(t.path("s.npy")).unwrap();
    assert_eq!((s.rows, s.cols), (100, 2));
    assert!((0..s.rows).all(|r| s.row(r).iter().map(|v| v * v).sum::<f32>() < 1.0));
    wmvl(
        &t.0,
        &[
            "score",
            "--checkpoint",
            "m.safetensors",
            "--points",
            "s.npy",
            "--out",
            "sc.npy",
        ],
    )
    .ok();
    assert_eq!(load_npy(t.path("sc.npy")).unwrap().cols, 3);
    // A point outside the ball is refused before training.
    let mut bad = m.data.clone();
    bad[0] = 1.5;
    save_npy(t.path("bad.npy"), m.rows, 2, &bad).unwrap();
    let run = wmvl(
        &t.0,
        &[
            "train",
            "--data",
            "bad.npy",
            "--manifold",
            "hyperbolic",
            "--steps",
            "5",
            "--out",
            "b.safetensors",
        ],
    );
    assert_fails(&run, &["row 1", "Poincaré ball"], &[]);
    assert!(!fs::exists(t.path("b.safetensors")).unwrap());
}
