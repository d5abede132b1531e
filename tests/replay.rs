//! Recorded steps (`src/gpu/replay.rs`): a step built once and replayed K times per
//! submission does what K steps built on the tape do — bit for bit where nothing depends on
//! the step number (RMSProp on a fixed batch), to f32 rounding where Adam's bias
//! corrections come from the device counter — without new bind groups; its draws are the
//! f64 reference's draws of their step and place; and what cannot be replayed (host work
//! inside the step) is refused before anything runs.

use std::sync::{Mutex, MutexGuard, OnceLock};

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

use wmvl::backend::RandomFill;
use wmvl::gpu::{Gpu, Tensor};
use wmvl::optim::{Optimizer, Rule};
use wmvl::rng::{reference_draw_of, reference_index_of, to_unit, Dist, DrawName};
use wmvl::tape::Tape;
use wmvl::{Error, Result};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// The tests of this file one at a time: they count the device's bind groups and dispatches.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn data(r: &mut Pcg64, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((r.next_u32() as f64 / u32::MAX as f64 * 2.0 - 1.0) * scale) as f32)
        .collect()
}

/// A small regression: tanh(x W₁ + b₁) W₂ against y on a fixed batch of 32 rows, with an
/// optional noise draw (seed, stream) added to the residual.
struct Problem {
    g: &'static Gpu,
    x: Tensor,
    y: Tensor,
    params: Vec<Tensor>,
}

impl Problem {
    fn new(seed: u64) -> Problem {
        Problem::on(gpu(), seed)
    }

    fn on(g: &'static Gpu, seed: u64) -> Problem {
        let mut r = Pcg64::seed_from_u64(seed);
        let up = |r: &mut Pcg64, rows, cols, s| g.upload(rows, cols, &data(r, rows * cols, s));
        Problem {
            g,
            x: up(&mut r, 32, 8, 1.0).unwrap(),
            y: up(&mut r, 32, 1, 1.0).unwrap(),
            params: vec![
                up(&mut r, 8, 16, 0.5).unwrap(),
                up(&mut r, 1, 16, 0.1).unwrap(),
                up(&mut r, 16, 1, 0.5).unwrap(),
            ],
        }
    }

    /// One step on the tape (records kernels): returns the loss tensor.
    fn step(&self, opt: &mut Optimizer, noise: Option<(u64, u64)>) -> Result<Tensor> {
        let g = self.g;
        let tape = Tape::new(g);
        let leaves: Vec<_> = self.params.iter().map(|p| tape.leaf(p.clone())).collect();
        let x = tape.leaf(self.x.clone());
        let y = tape.leaf(self.y.clone());
        let h = x.matmul(leaves[0])?.add(leaves[1])?.tanh()?;
        let mut res = h.matmul(leaves[2])?.sub(y)?;
        if let Some((seed, stream)) = noise {
            res = res.add(
                tape.random(32, 1, Dist::STANDARD_NORMAL, seed, stream)?
                    .scale(0.1)?,
            )?;
        }
        let loss = res.square()?.mean_all()?;
        opt.minimize(g, loss, &leaves, &self.params)?;
        Ok(loss.value())
    }

    fn read(&self) -> Vec<Vec<f32>> {
        self.params
            .iter()
            .map(|p| self.g.read(p).unwrap())
            .collect()
    }
}

#[test]
fn replayed_steps_equal_steps_built_on_the_tape() {
    let _one = serial();
    let n = replay_equals_built(gpu());
    assert!(
        n.iter().all(|&k| k == n[0]),
        "one kernel per tensor throughout: {n:?}"
    );
}

/// The GPU kernel family (tiled products, one optimiser dispatch for all tensors, which a
/// recording keeps for RMSProp), run here on lavapipe.
#[test]
fn replayed_steps_equal_built_ones_on_the_gpu_kernel_family() {
    static G: OnceLock<Gpu> = OnceLock::new();
    let g = G.get_or_init(|| Gpu::with_barrier_free(false).expect("a GPU adapter"));
    let _one = serial();
    let n = replay_equals_built(g);
    // RMSProp keeps the one optimiser dispatch for the three tensors; Adam (and a moving
    // rate) in a recording updates tensor by tensor, from the counter.
    assert_eq!(
        (n[1], n[2]),
        (n[0] + 2, n[0] + 2),
        "dispatches per step {n:?}"
    );
}

/// Checks the rules, returns the dispatches per replayed step of each.
fn replay_equals_built(g: &'static Gpu) -> Vec<usize> {
    let mut dispatches = Vec::new();
    let adam = Rule::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    // (rule, the learning rate's change per step): a decaying rate moves on the device too.
    for (rule, slope) in [
        (Rule::RMSPROP_TF, 0.0),
        (adam, 0.0),
        (Rule::RMSPROP_TF, -1e-3),
    ] {
        // Seven steps built on the tape, one submission each, the rate set before each.
        let built = Problem::on(g, 3);
        let mut opt = Optimizer::new(g, rule, 1e-2, &built.params).unwrap();
        for k in 0..7 {
            opt.lr = 1e-2 + slope * k as f32;
            built.step(&mut opt, None).unwrap();
        }
        let want = built.read();
        // The same from the same start: recorded once, replayed 3 + 4 times.
        let replayed = Problem::on(g, 3);
        let mut opt = Optimizer::new(g, rule, 1e-2, &replayed.params).unwrap();
        opt.lr_slope = slope;
        let rec = g.record_step(0, || replayed.step(&mut opt, None)).unwrap();
        assert_eq!(opt.t, 1, "the build is the first step");
        let (groups, submitted) = (g.bind_groups_created(), g.dispatches_submitted());
        rec.replay(g, 0, 3).unwrap();
        rec.replay(g, 3, 4).unwrap();
        let got = replayed.read();
        assert_eq!(
            g.bind_groups_created(),
            groups,
            "replays create no bind groups"
        );
        assert_eq!(
            g.dispatches_submitted() - submitted,
            7 * rec.dispatches() as u64
        );
        assert_eq!(rec.replayed(), 7);
        let moved = (0..3)
            .map(|k| {
                let start = Problem::on(g, 3).read();
                want[k]
                    .iter()
                    .zip(&start[k])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            })
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-3,
            "{rule:?}: the steps moved the parameters ({moved})"
        );
        for k in 0..3 {
            for (i, (a, b)) in got[k].iter().zip(&want[k]).enumerate() {
                match rule {
                    // Nothing in these steps depends on the step number: the same kernels
                    // on the same buffers give the same bits.
                    Rule::RmsPropTf { .. } if slope == 0.0 => {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{rule:?} (slope {slope}) tensor {k}[{i}]: {a} vs {b}"
                        )
                    }
                    // Adam's bias corrections on the device (f32, from t) against the
                    // host's (f64, rounded): a few ulps in the step size.
                    _ => assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1e-2),
                        "{rule:?} (slope {slope}) tensor {k}[{i}]: {a} vs {b}"
                    ),
                }
            }
        }
        // The loss the build returned holds the last replayed step's value: the loss at
        // the parameters before step 7, as the tape's seventh step computed it.
        let loss = g.read(&rec.value().clone()).unwrap()[0];
        assert!(loss.is_finite() && loss > 0.0);
        dispatches.push(rec.dispatches());
    }
    dispatches
}

#[test]
fn a_replayed_step_draws_the_reference_numbers_of_its_step() {
    let _one = serial();
    let g = gpu();
    let seed = 0x5eed_u64;
    let probs = g
        .upload(3, 10, &(0..30).map(|i| i as f32 / 29.0).collect::<Vec<_>>())
        .unwrap();
    let rec = g
        .record_step(41, || {
            let z = g.random(5, 7, Dist::STANDARD_NORMAL, seed, 11)?;
            let idx = g.random_index(9, 1000, seed, 12)?;
            let bits = g.bernoulli(&probs, seed, 13)?;
            // The same draw read twice is one draw (place 0 again).
            let again = g.random(5, 7, Dist::STANDARD_NORMAL, seed, 11)?;
            Ok((z, idx, bits, again))
        })
        .unwrap();
    let check = |step: u64| {
        let (z, idx, bits, again) = rec.value();
        let name = |place| DrawName::Replayed { seed, place, step };
        let want = reference_draw_of(35, Dist::STANDARD_NORMAL, name(0));
        let got = g.read(z).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (*a as f64 - b).abs() < 1e-5 * b.abs().max(1.0),
                "step {step}: {a} vs {b}"
            );
        }
        assert_eq!(g.read(again).unwrap(), got, "one draw, read twice");
        assert_eq!(
            g.read_index(idx).unwrap(),
            reference_index_of(9, 1000, name(1))
        );
        // Bernoulli draws 1{u < p} from the uniform bits of place 2.
        let u = reference_draw_of(30, Dist::UNIT, name(2));
        let p = g.read(&probs).unwrap();
        let want: Vec<f32> = u
            .iter()
            .zip(&p)
            .map(|(u, p)| ((*u as f32) < *p) as u8 as f32)
            .collect();
        assert_eq!(g.read(bits).unwrap(), want, "step {step}");
        got
    };
    rec.replay(g, 41, 1).unwrap();
    let at41 = check(41);
    // Two steps in one submission: the counter advanced on the device, across the 2³²
    // boundary of its low word.
    rec.replay(g, u32::MAX as u64, 2).unwrap();
    let at_2_32 = check(1 << 32);
    assert_ne!(at41, at_2_32);
    // Uniform bits are the reference's exactly (the same Philox words).
    let unit = reference_draw_of(
        4,
        Dist::UNIT,
        DrawName::Replayed {
            seed,
            place: 0,
            step: 41,
        },
    );
    assert!(unit.iter().all(|u| *u > 0.0 && *u < 1.0) && to_unit(0) > 0.0);
}

#[test]
fn draws_of_a_replayed_step_differ_between_steps_and_follow_the_step_number() {
    // The same training steps replayed in different chunks (one submission of 4, or 4 of 1)
    // see the same draws: the loss of step 3 with noise is the same bits either way.
    let _one = serial();
    let g = gpu();
    let run = |chunks: &[u32]| {
        let p = Problem::new(9);
        let mut opt = Optimizer::new(g, Rule::RMSPROP_TF, 1e-2, &p.params).unwrap();
        let rec = g
            .record_step(100, || p.step(&mut opt, Some((77, 1))))
            .unwrap();
        let mut step = 100;
        for &k in chunks {
            rec.replay(g, step, k).unwrap();
            step += k as u64;
        }
        (p.read(), g.read(rec.value()).unwrap()[0])
    };
    let (a, la) = run(&[4]);
    let (b, lb) = run(&[1, 1, 1, 1]);
    let (c, lc) = run(&[2, 2]);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(la.to_bits(), lb.to_bits());
    assert_eq!(la.to_bits(), lc.to_bits());
    // Starting at another step number is another noise sequence: other parameters.
    let p = Problem::new(9);
    let mut opt = Optimizer::new(g, Rule::RMSPROP_TF, 1e-2, &p.params).unwrap();
    let rec = g
        .record_step(100, || p.step(&mut opt, Some((77, 1))))
        .unwrap();
    rec.replay(g, 5000, 4).unwrap();
    assert_ne!(p.read(), a);
    // Steps before the recorded one are not its to replay.
    assert!(matches!(rec.replay(g, 99, 1), Err(Error::Invalid(_))));
}

fn invalid(r: Result<impl Sized>) -> String {
    match r {
        Err(Error::Invalid(m)) => m,
        Err(e) => panic!("expected Error::Invalid, got {e}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[test]
fn host_work_inside_a_recorded_step_is_refused_and_nothing_runs() {
    let _one = serial();
    let g = gpu();
    let x = g.upload(2, 4, &[1.0; 8]).unwrap();
    let target = g.upload(2, 4, &[5.0; 8]).unwrap();
    // A read inside the step (as the vMF sampler's κ readback would be).
    let m = invalid(g.record_step(0, || {
        g.copy_into(&x, &target)?;
        g.read(&target)
    }));
    assert!(m.contains("needs the host"), "{m}");
    // A write (host data every step) and a wait.
    let m = invalid(g.record_step(0, || g.overwrite(&target, &[2.0; 8])));
    assert!(m.contains("needs the host"), "{m}");
    let m = invalid(g.record_step(0, || g.sync()));
    assert!(m.contains("needs the host"), "{m}");
    // Nothing was run: the copy recorded before the read was dropped with the recording.
    assert_eq!(g.read(&target).unwrap(), vec![5.0; 8]);
    // A step with no kernels, and a recording inside a recording.
    assert!(invalid(g.record_step(0, || Ok(()))).contains("launched no kernels"));
    let m = invalid(g.record_step(0, || g.record_step(0, || g.copy_into(&x, &target))));
    assert!(m.contains("already recording"), "{m}");
    // A build that panics leaves the thread not recording.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.record_step(0, || -> Result<()> {
            g.copy_into(&target, &x)?;
            panic!("a build that panics")
        })
    }));
    assert!(caught.is_err());
    // The device works as before (and x was not overwritten: the copy above never ran).
    assert_eq!(g.read(&x).unwrap(), vec![1.0; 8]);
    g.copy_into(&x, &target).unwrap();
    assert_eq!(g.read(&target).unwrap(), vec![1.0; 8]);
}

#[test]
fn other_threads_work_as_usual_while_one_records() {
    let _one = serial();
    let g = gpu();
    let x = g.upload(2, 4, &[1.0; 8]).unwrap();
    let y = g.upload(2, 4, &[0.0; 8]).unwrap();
    let rec = std::thread::scope(|s| {
        g.record_step(0, || {
            // Inside this recording, another thread copies and reads: its work is its own,
            // runs now, and is not part of the recording.
            s.spawn(|| {
                g.copy_into(&x, &y).unwrap();
                assert_eq!(g.read(&y).unwrap(), vec![1.0; 8]);
            })
            .join()
            .unwrap();
            g.random(2, 4, Dist::STANDARD_NORMAL, 1, 1)
        })
        .unwrap()
    });
    assert_eq!(
        rec.dispatches(),
        2,
        "the draw and the counter's advance only"
    );
}
