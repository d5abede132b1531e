//! Training loop behaviour (divergence fallback, early stopping, learning-rate decay), model
//! checkpoints, and the energy variants. GPU tests run on lavapipe in CI: keep models tiny.

use std::sync::OnceLock;

use wmvl::checkpoint::Checkpoint;
use wmvl::cpu::{Cpu, Mat};
use wmvl::data::Toy;
use wmvl::error::Error;
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, EnergyKind, HostParams, Init, Model};
use wmvl::objective::Objective;
use wmvl::ops::Fun;
use wmvl::tape::Tape;
use wmvl::train::{TrainConfig, Trainer};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

fn tiny_arch() -> Arch {
    Arch {
        hidden: vec![12, 12],
        ..Arch::paper(2)
    }
}

fn model_on_gpu(arch: &Arch, seed: u64) -> Model<&'static Gpu> {
    let g = gpu();
    let hp = HostParams::init(arch, Init::Glorot, seed).unwrap();
    Model::from_host(arch.clone(), &hp, |r, c, d| g.upload(r, c, d)).unwrap()
}

fn banana(n: usize, seed: u64, shift: f32) -> wmvl::gpu::Tensor {
    let mut m = Toy::Banana.sample_matrix(n, seed);
    for r in 0..m.rows {
        m.data[r * 2 + 1] += shift;
    }
    gpu().upload(m.rows, m.cols, &m.data).unwrap()
}

fn read_all(m: &Model<&Gpu>) -> Vec<f32> {
    m.params()
        .iter()
        .flat_map(|t| gpu().read(t).unwrap())
        .collect()
}

#[test]
fn divergence_is_reported_with_its_step_and_the_last_good_parameters_are_kept() {
    let g = gpu();
    let cfg = TrainConfig {
        objective: Objective::Mvl,
        steps: 200,
        batch: 32,
        lr: 1e4, // absurd on purpose: RMSProp steps of ~lr per parameter blow the energy up
        log_every: 2,
        // The tape's E(x₁) − E(x₀) overflows to inf − inf = NaN here; the fused path's
        // propagated difference stays finite (loss ~1e30), which is divergence without a NaN.
        path: wmvl::fused::Path::Tape,
        ..Default::default()
    };
    // Without spectral norm nothing bounds the weights, and the energies overflow f32.
    let arch = Arch {
        spectral_norm: false,
        ..tiny_arch()
    };
    let mut tr = Trainer::new(g, model_on_gpu(&arch, 1), banana(256, 1, 0.0), None, cfg).unwrap();
    let err = tr.run().expect_err("a learning rate of 1e4 must diverge");
    let Error::Diverged(msg) = &err else {
        panic!("expected Diverged, got {err:?}")
    };
    assert!(msg.contains("by step"), "the message names the step: {msg}");
    // The parameters went back to the last finite reading: all finite, and the loss there is finite.
    let params = read_all(&tr.model);
    assert!(
        params.iter().all(|v| v.is_finite()),
        "restored parameters must be finite"
    );
    let value = tr.steps_done;
    assert!(
        value < 200,
        "training stopped at the divergence, not at the end"
    );
}

#[test]
fn early_stopping_keeps_the_best_heldout_parameters() {
    let g = gpu();
    // Held-out data from a shifted density: fitting the training data makes it worse, so the
    // held-out objective stops improving and the run must stop early.
    let cfg = TrainConfig {
        objective: Objective::SsmVr,
        steps: 400,
        batch: 64,
        lr: 1e-2,
        log_every: 10,
        eval_every: 10,
        patience: 2,
        ..Default::default()
    };
    let mut tr = Trainer::new(
        g,
        model_on_gpu(&tiny_arch(), 2),
        banana(512, 3, 0.0),
        Some(banana(256, 4, 6.0)),
        cfg,
    )
    .unwrap();
    let s = tr.run().unwrap();
    assert!(
        s.stopped_early,
        "expected an early stop; history {:?}",
        s.history
    );
    assert!(s.steps_done < 400);
    let (best_step, best) = s.best_heldout.expect("held-out values were computed");
    let now = tr.heldout_value().unwrap().unwrap();
    // Same parameters and the same fixed noise stream: the same number up to f32 rounding.
    assert!(
        (now - best).abs() <= 1e-4 * best.abs().max(1.0),
        "after the early stop the model is the best one (step {best_step}): {now} vs {best}"
    );
    let later: Vec<f64> = s.history.iter().filter_map(|p| p.heldout).collect();
    assert!(
        later.iter().all(|&h| h >= best),
        "best is the minimum of the history"
    );
}

#[test]
fn learning_rate_decays_linearly_to_its_final_value() {
    // With lr_final = lr the run is identical to a constant rate; with lr_final ≠ lr it is not.
    let g = gpu();
    let run = |lr_final: Option<f32>| {
        let cfg = TrainConfig {
            objective: Objective::Mvl,
            steps: 6,
            batch: 32,
            lr: 1e-2,
            lr_final,
            log_every: 6,
            ..Default::default()
        };
        let mut tr = Trainer::new(
            g,
            model_on_gpu(&tiny_arch(), 5),
            banana(128, 5, 0.0),
            None,
            cfg,
        )
        .unwrap();
        tr.run().unwrap();
        read_all(&tr.model)
    };
    let constant = run(None);
    assert_eq!(constant, run(Some(1e-2)));
    assert_ne!(constant, run(Some(1e-4)));
}

#[test]
fn model_checkpoint_round_trip_rebuilds_the_same_energy() {
    let g = gpu();
    let arch = Arch {
        hidden: vec![7, 5],
        act: Fun::Tanh,
        ..Arch::paper(3)
    };
    let mut model = model_on_gpu(&arch, 9);
    // One power iteration so that u is not the initial one.
    {
        let tape = Tape::new(g);
        model.bind(&tape, true).unwrap();
    }
    let path = std::env::temp_dir().join(format!(
        "wmvl-train-test-{}.safetensors",
        std::process::id()
    ));
    wmvl::app::save_model(g, &model, &[("note", "test".into())], &path).unwrap();
    let (mut back, ck) = wmvl::app::load_model(g, &path).unwrap();
    assert_eq!(back.arch, arch);
    assert_eq!(ck.meta("note").unwrap(), "test");
    assert_eq!(read_all(&back), read_all(&model));
    for (a, b) in back.sn_u.iter().zip(&model.sn_u) {
        match (a, b) {
            (Some(a), Some(b)) => assert_eq!(g.read(a).unwrap(), g.read(b).unwrap()),
            (None, None) => {}
            _ => panic!("spectral-norm vectors differ in presence"),
        }
    }
    let x = g
        .upload(
            4,
            3,
            &[
                0.3, -1.0, 2.0, 0.1, 0.5, -0.7, 1.5, 1.1, -0.2, -2.0, 0.4, 0.9,
            ],
        )
        .unwrap();
    let (e1, _) = wmvl::train::energy_and_score(g, &mut model, &x, 16).unwrap();
    let (e2, _) = wmvl::train::energy_and_score(g, &mut back, &x, 16).unwrap();
    assert_eq!(e1, e2);

    // A checkpoint whose tensor does not fit its recorded architecture is refused.
    let mut bad = Checkpoint::load(&path).unwrap();
    bad.metadata.insert("hidden".into(), "8,5".into());
    bad.save(&path).unwrap();
    let err = wmvl::app::load_model(g, &path)
        .err()
        .expect("shape mismatch must be an error");
    assert!(matches!(err, Error::Shape(_)), "{err:?}");
    assert!(err.to_string().contains("layers.0.weight"), "{err}");
    std::fs::remove_file(&path).ok();
}

/// Model parameters on the f64 CPU reference.
fn cpu_model(arch: &Arch, seed: u64) -> Model<Cpu> {
    let hp = HostParams::init(arch, Init::Torch, seed).unwrap();
    Model::from_host(arch.clone(), &hp, Mat::from_f32).unwrap()
}

#[test]
fn energy_kinds_compute_their_definitions() {
    let x = Mat::new(
        3,
        4,
        vec![
            0.2, -1.1, 0.7, 1.3, -0.4, 0.9, 2.0, -0.6, 1.2, 0.3, -1.5, 0.8,
        ],
    )
    .unwrap();
    for kind in [
        EnergyKind::ScoreNet,
        EnergyKind::Scalar,
        EnergyKind::Conditional { dz: 3 },
    ] {
        let arch = Arch {
            kind,
            dim: 4,
            hidden: vec![6],
            act: Fun::Softplus,
            spectral_norm: false,
        };
        let mut m = cpu_model(&arch, 3);
        let tape = Tape::new(Cpu);
        let b = m.bind(&tape, false).unwrap();
        let xv = tape.leaf(x.clone());
        let e = b.energy(xv).unwrap().value();
        let psi = b.mlp(xv).unwrap().value();
        assert_eq!((e.rows, e.cols), (3, 1));
        for r in 0..3 {
            let want = match kind {
                EnergyKind::ScoreNet => (0..4).map(|c| x.at(r, c) * psi.at(r, c)).sum::<f64>(),
                EnergyKind::Scalar => psi.at(r, 0),
                EnergyKind::Conditional { dz } => {
                    (0..dz).map(|c| x.at(r, c) * psi.at(r, c)).sum::<f64>()
                }
                EnergyKind::Net { .. } => unreachable!("not in the list"),
            };
            assert!(
                (e.at(r, 0) - want).abs() < 1e-12,
                "{kind:?} row {r}: {} vs {want}",
                e.at(r, 0)
            );
        }
        // The MLP output width follows the kind.
        assert_eq!(psi.cols, arch.out_dim());
    }
    // A plain network (encoders, decoders) has the MLP's output and refuses to be an energy.
    let net = Arch {
        kind: EnergyKind::Net { out: 5 },
        dim: 4,
        hidden: vec![6],
        act: Fun::Tanh,
        spectral_norm: false,
    };
    let mut m = cpu_model(&net, 3);
    let tape = Tape::new(Cpu);
    let b = m.bind(&tape, false).unwrap();
    let xv = tape.leaf(x.clone());
    assert_eq!(b.mlp(xv).unwrap().shape(), (3, 5));
    assert!(b.energy(xv).is_err());
    assert!(Arch {
        kind: EnergyKind::Net { out: 0 },
        ..net.clone()
    }
    .validate()
    .is_err());
    // A conditional energy with dz outside 1..dim is refused.
    let bad = Arch {
        kind: EnergyKind::Conditional { dz: 4 },
        dim: 4,
        hidden: vec![6],
        act: Fun::Tanh,
        spectral_norm: false,
    };
    assert!(HostParams::init(&bad, Init::Glorot, 0).is_err());
}

#[test]
fn initialisations_follow_their_frameworks() {
    let arch = Arch {
        hidden: vec![300],
        ..Arch::paper(200)
    };
    let glorot = HostParams::init(&arch, Init::Glorot, 1).unwrap();
    let torch = HostParams::init(&arch, Init::Torch, 1).unwrap();
    // Glorot-uniform: U(±√(6/(fan_in+fan_out))), zero bias. Torch: U(±1/√fan_in) for both.
    let (fi, fo, w) = &glorot.weights[0];
    let lim = (6.0 / (fi + fo) as f64).sqrt();
    let max = w.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    assert!(
        max <= lim && max > 0.98 * lim,
        "glorot max {max} vs limit {lim}"
    );
    // Variance of U(±a) is a²/3: 60 000 draws give a relative SE of about 0.6 %; allow 4 SE.
    let var = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w.len() as f64;
    assert!(
        (var / (lim * lim / 3.0) - 1.0).abs() < 0.025,
        "glorot variance {var}"
    );
    assert!(glorot.biases[0].2.iter().all(|&b| b == 0.0));
    let (fi, _, w) = &torch.weights[0];
    let lim = 1.0 / (*fi as f64).sqrt();
    let max = w.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    assert!(
        max <= lim && max > 0.98 * lim,
        "torch max {max} vs limit {lim}"
    );
    assert!(torch.biases[0].2.iter().any(|&b| b != 0.0));
    // Seeded: the same seed gives the same parameters, another seed others.
    assert_eq!(
        HostParams::init(&arch, Init::Torch, 1).unwrap().weights[0].2,
        torch.weights[0].2
    );
    assert_ne!(
        HostParams::init(&arch, Init::Torch, 2).unwrap().weights[0].2,
        torch.weights[0].2
    );
}

#[test]
fn training_steps_reuse_gpu_memory() {
    // A Gpu of its own, so that other tests' tensors do not move the count.
    let g: &'static Gpu = Box::leak(Box::new(Gpu::new().unwrap()));
    let arch = tiny_arch();
    let hp = HostParams::init(&arch, Init::Glorot, 4).unwrap();
    let model = Model::from_host(arch, &hp, |r, c, d| g.upload(r, c, d)).unwrap();
    let m = Toy::Banana.sample_matrix(256, 4);
    let x = g.upload(m.rows, m.cols, &m.data).unwrap();
    let cfg = TrainConfig {
        steps: 3,
        batch: 32,
        log_every: 3,
        ..Default::default()
    };
    let mut tr = Trainer::new(g, model, x, None, cfg).unwrap();
    tr.run().unwrap();
    let after_warmup = g.allocated_bytes();
    tr.cfg.steps = 15;
    tr.run().unwrap();
    // Every step's intermediates come back to the pool when its tape is dropped: twelve more
    // steps allocate nothing new.
    assert_eq!(
        g.allocated_bytes(),
        after_warmup,
        "training steps allocated new GPU memory"
    );
}
