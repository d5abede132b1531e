//! Nothing lost: a resumed run takes exactly the steps an uninterrupted one takes, the stop
//! flag ends a run at a checked step, divergence without NaN is caught, and the training loop
//! reports progress through its callback. Tiny models: lavapipe runs these in CI.

use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use wmvl::checkpoint::Checkpoint;
use wmvl::data::Toy;
use wmvl::error::Error;
use wmvl::fused::{Path as KernelPath, ShapeChoice};
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, HostParams, Init, Model};
use wmvl::saved_run::{load_state, partial_path, run_checkpoint};
use wmvl::train::{Event, TrainConfig, Trainer};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

fn arch() -> Arch {
    Arch {
        hidden: vec![12, 12],
        ..Arch::paper(2)
    }
}

fn trainer(cfg: TrainConfig, hp: &HostParams, heldout: bool) -> Trainer<'static> {
    let g = gpu();
    let model = Model::from_host(arch(), hp, |r, c, d| g.upload(r, c, d)).unwrap();
    let m = Toy::Banana.sample_matrix(300, 1);
    let x = g.upload(m.rows, m.cols, &m.data).unwrap();
    let h = heldout.then(|| {
        let m = Toy::Banana.sample_matrix(64, 2);
        g.upload(m.rows, m.cols, &m.data).unwrap()
    });
    Trainer::new(g, model, x, h, cfg).unwrap()
}

fn params(tr: &Trainer) -> Vec<f32> {
    tr.model
        .params()
        .iter()
        .flat_map(|t| gpu().read(t).unwrap())
        .collect()
}

fn resumed_equals_uninterrupted(path: KernelPath, shape: ShapeChoice) {
    let cfg = TrainConfig {
        shape,
        steps: 12,
        batch: 32,
        log_every: 4,
        eval_every: 4,
        rule: wmvl::optim::Rule::ADAM,
        lr_final: Some(1e-3),
        path,
        ..Default::default()
    };
    let hp = HostParams::init(&arch(), Init::Glorot, 7).unwrap();
    let mut straight = trainer(cfg.clone(), &hp, true);
    straight.run().unwrap();

    // Half the run, saved as the CLI saves it, reloaded from the file into a fresh trainer.
    let mut first = trainer(
        TrainConfig {
            steps: 6,
            ..cfg.clone()
        },
        &hp,
        true,
    );
    // The schedule of the whole run: the first half must decay the rate as the straight run.
    first.cfg.steps = 12;
    // With the stop flag up (what Ctrl-C raises) each call takes one checked step and stops.
    let flag = AtomicBool::new(true);
    for k in 1..=6 {
        let s = first.run_with(&mut |_, _| Ok(()), Some(&flag)).unwrap();
        assert!(s.interrupted, "the stop flag ends the run");
        assert_eq!((s.steps_done, first.steps_done), (1, k));
    }
    assert_eq!(first.steps_done, 6);
    let dir = std::env::temp_dir().join(format!(
        "wmvl-resume-{}-{path:?}-{shape:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.safetensors");
    run_checkpoint(gpu(), &first, &[("note".into(), "test".into())])
        .unwrap()
        .save(&file)
        .unwrap();
    let ck = Checkpoint::load(&file).unwrap();
    let st = load_state(&ck, &arch())
        .unwrap()
        .expect("a saved run has a state");
    assert_eq!(st.step, 6);
    let hp2 = HostParams::from_checkpoint(&ck, &arch()).unwrap();
    let mut second = trainer(cfg.clone(), &hp2, true);
    second.set_state(&st).unwrap();
    second.run().unwrap();
    assert_eq!(second.steps_done, 12);
    let (a, b) = (params(&straight), params(&second));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-3))
        .fold(0.0f32, f32::max);
    // The fused step draws from the device counter and computes its learning rate and
    // Adam's corrections there, from the same values: bit for bit. The tape's host-side rate
    // schedule rounds differently after a restart.
    let tolerance = if path == KernelPath::Fused { 0.0 } else { 1e-5 };
    assert!(
        worst <= tolerance,
        "{path:?} ({shape:?}): resumed run differs from the uninterrupted one by {worst:e} (relative)"
    );
    assert_eq!(
        straight.best_heldout().map(|b| b.0),
        second.best_heldout().map(|b| b.0)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_continues_exactly_fused() {
    for shape in [
        ShapeChoice::TileCpu,
        ShapeChoice::TileGpu,
        ShapeChoice::Layers,
    ] {
        resumed_equals_uninterrupted(KernelPath::Fused, shape);
    }
}

#[test]
fn a_resumed_run_continues_exactly_tape() {
    resumed_equals_uninterrupted(KernelPath::Tape, ShapeChoice::Auto);
}

#[test]
fn a_plain_model_checkpoint_has_no_state_to_resume() {
    let hp = HostParams::init(&arch(), Init::Glorot, 1).unwrap();
    let mut ck = Checkpoint::new();
    ck.tensors = hp.to_named().unwrap();
    for (k, v) in arch().to_metadata() {
        ck.metadata.insert(k, v);
    }
    assert!(load_state(&ck, &arch()).unwrap().is_none());
}

#[test]
fn divergence_without_nan_is_divergence() {
    // The fused step's propagated energy difference stays finite where the tape's gives
    // inf − inf: lr 1e4 without spectral norm sends the loss to ~1e30, not NaN.
    let cfg = TrainConfig {
        steps: 200,
        batch: 32,
        lr: 1e4,
        log_every: 5,
        path: KernelPath::Fused,
        ..Default::default()
    };
    let a = Arch {
        spectral_norm: false,
        ..arch()
    };
    let g = gpu();
    let hp = HostParams::init(&a, Init::Glorot, 3).unwrap();
    let model = Model::from_host(a, &hp, |r, c, d| g.upload(r, c, d)).unwrap();
    let m = Toy::Banana.sample_matrix(256, 1);
    let x = g.upload(m.rows, m.cols, &m.data).unwrap();
    let mut tr = Trainer::new(g, model, x, None, cfg.clone()).unwrap();
    let mut losses = vec![];
    let err = tr
        .run_with(
            &mut |ev, _| {
                if let Event::Log { point, .. } = ev {
                    losses.push(point.loss);
                }
                Ok(())
            },
            None,
        )
        .expect_err("a loss far beyond its initial scale is divergence");
    let Error::Diverged(msg) = &err else {
        panic!("expected Diverged, got {err:?}")
    };
    assert!(msg.contains("rose") || msg.contains("beyond"), "{msg}");
    assert!(
        losses.iter().all(|l| l.is_finite()),
        "no NaN was involved: {losses:?}"
    );
    assert!(params(&tr).iter().all(|v| v.is_finite()));

    // With the rule off, the same run goes on past that point (the rule is what caught it).
    let mut off = Trainer::new(
        g,
        Model::from_host(
            Arch {
                spectral_norm: false,
                ..arch()
            },
            &hp,
            |r, c, d| g.upload(r, c, d),
        )
        .unwrap(),
        g.upload(m.rows, m.cols, &m.data).unwrap(),
        None,
        TrainConfig {
            diverge_factor: 0.0,
            steps: tr.steps_done + 10,
            ..cfg
        },
    )
    .unwrap();
    match off.run() {
        Ok(_) => {}
        Err(Error::Diverged(m)) => assert!(!m.contains("rose") && !m.contains("beyond"), "{m}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn progress_and_checkpoint_events_arrive_on_schedule() {
    let cfg = TrainConfig {
        steps: 12,
        batch: 32,
        log_every: 4,
        checkpoint_every: 6,
        ..Default::default()
    };
    let hp = HostParams::init(&arch(), Init::Glorot, 5).unwrap();
    let mut tr = trainer(cfg, &hp, false);
    let (mut logs, mut checkpoints) = (vec![], vec![]);
    tr.run_with(
        &mut |ev, t| {
            match ev {
                Event::Log { point, progress } => {
                    assert_eq!(progress.done, point.step);
                    assert_eq!(progress.total, 12);
                    logs.push(point.step);
                }
                Event::Checkpoint => checkpoints.push(t.steps_done),
                Event::EarlyStop { .. } => panic!("no held-out set"),
            }
            Ok(())
        },
        None,
    )
    .unwrap();
    assert_eq!(logs, vec![4, 8, 12]);
    assert_eq!(checkpoints, vec![6, 12]);
}

#[test]
fn the_partial_checkpoint_sits_beside_the_output() {
    let p = partial_path(std::path::Path::new("runs/m.safetensors")).unwrap();
    assert_eq!(p, std::path::Path::new("runs/m.partial.safetensors"));
}

#[test]
fn a_loss_that_rises_far_above_its_start_is_divergence_and_everything_is_reset() {
    // Spectral norm bounds the weights, so lr 100 does not overflow anything: the loss climbs
    // from ~0 to thousands and stays there (the run the tour found exiting 0).
    let cfg = TrainConfig {
        steps: 300,
        batch: 32,
        lr: 100.0,
        log_every: 1, // every step a reading, so the test sees each good one
        ..Default::default()
    };
    let hp = HostParams::init(&arch(), Init::Glorot, 4).unwrap();
    let mut tr = trainer(cfg, &hp, false);
    let mut last_good = (0, vec![]);
    let err = tr
        .run_with(
            &mut |ev, t| {
                if let Event::Log { point, .. } = ev {
                    last_good = (point.step, params(t));
                }
                Ok(())
            },
            None,
        )
        .expect_err("must diverge");
    let Error::Diverged(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(msg.contains("rose"), "{msg}");
    // Parameters and step are those of the last good reading (the optimiser state too: the
    // state that `saved_run` writes is consistent with them).
    assert_eq!(tr.steps_done, last_good.0, "{msg}");
    assert_eq!(params(&tr), last_good.1);
    assert_eq!(tr.state().unwrap().step, last_good.0);
}
