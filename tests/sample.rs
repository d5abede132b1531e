//! The sampler: chunked runs give the same samples whatever the chunk size, chains that run
//! away are reported as a sampling problem (naming the step), progress reaches its total.
//! GPU tests run on lavapipe: tiny models, few chains.

mod common;

use std::sync::OnceLock;

use wmvl::error::Error;
use wmvl::gpu::Gpu;
use wmvl::progress::Progress;
use wmvl::sample::{sample, sample_chunked_by, sample_points, Options, Sampler};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

fn run_chunked(opts: &Options, chunk: usize, n: usize) -> (Vec<Vec<f32>>, f64) {
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let mut chunks = Vec::new();
    let stats = sample_chunked_by(
        gpu(),
        &mut model,
        n,
        opts,
        chunk,
        &mut |c| {
            chunks.push(c.to_vec());
            Ok(())
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((stats.chains, stats.dim), (n, 2));
    (chunks, stats.acceptance)
}

#[test]
fn chunk_size_does_not_change_the_samples() {
    for sampler in [Sampler::Langevin, Sampler::Mala] {
        let opts = Options {
            sampler,
            steps: 6,
            step_size: 0.3,
            seed: 17,
            init_std: 2.0,
        };
        let (small, acc_small) = run_chunked(&opts, 3, 10);
        let (big, acc_big) = run_chunked(&opts, 1000, 10);
        assert_eq!(
            small.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![6, 6, 6, 2],
            "chunks of 3 chains"
        );
        assert_eq!(big.len(), 1);
        assert_eq!(small.concat(), big[0], "{sampler:?}");
        assert_eq!(acc_small, acc_big);
        if sampler == Sampler::Mala {
            assert!(acc_big > 0.0 && acc_big < 1.0, "acceptance {acc_big}");
        } else {
            assert_eq!(acc_big, 1.0);
        }
        // Another seed gives other samples.
        let (other, _) = run_chunked(&Options { seed: 18, ..opts }, 1000, 10);
        assert_ne!(other[0], big[0]);
    }
}

#[test]
fn runaway_chains_are_a_sampling_error_naming_the_step() {
    // h = 1000 on E = ‖x‖²/2: x ← x − 1000x + noise grows a thousandfold a step and leaves
    // f32 after about 13 steps.
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let cfg = Options {
        steps: 100,
        step_size: 1000.0,
        ..Options::default()
    };
    let err = sample_points(gpu(), &mut model, 10, &cfg, &mut |_| {})
        .err()
        .expect("sampling should fail");
    let text = err.to_string();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(!text.contains("training"), "{text}");
    assert!(
        text.contains("sampling left the finite numbers at step "),
        "{text}"
    );
    assert!(text.contains("--step-size"), "{text}");
    let step: usize = text
        .split("at step ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step number in {text}"));
    assert!((5..=30).contains(&step), "{text}");

    // MALA rejects the wild proposals only once they are finite: the same message.
    let err = sample_points(
        gpu(),
        &mut model,
        3,
        &Options {
            sampler: Sampler::Mala,
            step_size: 1e30,
            ..cfg
        },
        &mut |_| {},
    )
    .err()
    .expect("sampling should fail");
    assert!(
        err.to_string()
            .contains("sampling left the finite numbers at step 1 "),
        "{err}"
    );
}

#[test]
fn progress_ends_at_its_total_and_never_goes_back() {
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let mut seen: Vec<Progress> = Vec::new();
    let cfg = Options {
        steps: 5,
        step_size: 0.1,
        ..Options::default()
    };
    let mut count = 0;
    sample_chunked_by(
        gpu(),
        &mut model,
        10,
        &cfg,
        4,
        &mut |c| {
            count += c.len();
            Ok(())
        },
        &mut |p| seen.push(p.clone()),
    )
    .unwrap();
    assert_eq!(count, 20);
    let last = seen.last().expect("no progress reported");
    assert_eq!((last.done, last.total), (50, 50));
    assert_eq!((last.what, last.unit), ("sample", "chain steps"));
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));

    // Zero steps: the starting points, progress counted in chains.
    let mut seen: Vec<Progress> = Vec::new();
    let cfg = Options { steps: 0, ..cfg };
    let s = sample_points(gpu(), &mut model, 10, &cfg, &mut |p| seen.push(p.clone())).unwrap();
    assert_eq!(s.points.len(), 20);
    let last = seen.last().expect("no progress reported");
    assert_eq!((last.done, last.total), (10, 10));
}

#[test]
fn a_failing_consumer_stops_sampling() {
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let cfg = Options {
        steps: 2,
        ..Options::default()
    };
    let mut calls = 0;
    let err = sample_chunked_by(
        gpu(),
        &mut model,
        10,
        &cfg,
        2,
        &mut |_| {
            calls += 1;
            Err(Error::Io("disk full".into()))
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err, Error::Io("disk full".into()));
    assert_eq!(calls, 1);
}

#[test]
fn bad_arguments_are_refused() {
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let ok = Options {
        steps: 1,
        ..Options::default()
    };
    let cases = [
        (ok.clone(), 0, 1, "no chains"),
        (
            Options {
                step_size: 0.0,
                ..ok.clone()
            },
            1,
            1,
            "step size",
        ),
        (
            Options {
                step_size: f64::NAN,
                ..ok.clone()
            },
            1,
            1,
            "step size",
        ),
        (ok.clone(), 1, 0, "chunk"),
        (
            Options {
                init_std: -1.0,
                ..ok.clone()
            },
            1,
            1,
            "initial spread",
        ),
    ];
    for (opts, n, chunk, what) in cases {
        let err = sample_chunked_by(
            gpu(),
            &mut model,
            n,
            &opts,
            chunk,
            &mut |_| Ok(()),
            &mut |_| {},
        )
        .err()
        .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            matches!(&err, Error::Invalid(m) if m.contains(what)),
            "{err:?}"
        );
    }
}

#[test]
fn mala_on_a_standard_normal_has_its_moments() {
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let cfg = Options {
        sampler: Sampler::Mala,
        steps: 60,
        step_size: 0.5,
        seed: 3,
        init_std: 3.0,
    };
    let s = sample_points(gpu(), &mut model, 600, &cfg, &mut |_| {}).unwrap();
    assert!(s.acceptance > 0.5, "acceptance {}", s.acceptance);
    for k in 0..2 {
        let v: Vec<f64> = s
            .points
            .iter()
            .skip(k)
            .step_by(2)
            .map(|&v| v as f64)
            .collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
        // Standard errors with 600 chains: 0.04 for the mean, 0.06 for the variance.
        assert!(m.abs() < 0.2, "mean {m}");
        assert!((var - 1.0).abs() < 0.3, "variance {var}");
    }
}

#[test]
fn the_former_interface_still_runs_from_given_points() {
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let init = vec![0.5f32, -0.5, 1.0, 2.0, -3.0, 0.0];
    let s = sample(
        gpu(),
        &mut model,
        init.clone(),
        Sampler::Langevin,
        0,
        0.1,
        1,
        false,
    )
    .unwrap();
    assert_eq!(s.points, init, "zero steps keep the starting points");
    let s = sample(gpu(), &mut model, init, Sampler::Mala, 3, 0.1, 1, false).unwrap();
    assert_eq!((s.points.len(), s.dim), (6, 2));
    let err = sample(
        gpu(),
        &mut model,
        vec![1.0; 3],
        Sampler::Langevin,
        1,
        0.1,
        1,
        false,
    );
    assert!(matches!(err, Err(Error::Shape(_))));
}
