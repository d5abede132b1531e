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
            ..Options::default()
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
        ..Options::default()
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

/// A scalar energy with no hidden layer, E(y) = y·w, w = −κμ: the vMF(μ, κ) on S².
fn vmf_model(kappa: f64, mu: [f64; 3]) -> wmvl::model::Model<&'static Gpu> {
    use wmvl::model::{Arch, EnergyKind, HostParams, Model};
    let arch = Arch {
        kind: EnergyKind::Scalar,
        dim: 3,
        hidden: vec![],
        act: wmvl::ops::Fun::Tanh,
        spectral_norm: false,
    };
    let hp = HostParams {
        weights: vec![(3, 1, mu.iter().map(|m| (-kappa * m) as f32).collect())],
        biases: vec![(1, 1, vec![0.0])],
        sn_u: vec![None],
    };
    Model::from_host(arch, &hp, |r, c, d| gpu().upload(r, c, d)).unwrap()
}

#[test]
fn riemannian_mala_on_the_sphere_reproduces_a_vmf() {
    let (kappa, mu) = (5.0, [0.0, 0.6, 0.8]);
    let mut model = vmf_model(kappa, mu);
    let cfg = Options {
        sampler: Sampler::Mala,
        steps: 150,
        step_size: 0.05,
        seed: 8,
        manifold: wmvl::manifold::Manifold::Sphere,
        ..Options::default()
    };
    let n = 2000;
    let s = sample_points(gpu(), &mut model, n, &cfg, &mut |_| {}).unwrap();
    assert!(s.acceptance > 0.7, "acceptance {}", s.acceptance);
    let pts: Vec<&[f32]> = s.points.chunks(3).collect();
    for p in &pts {
        let norm = p.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "a sample left the sphere: {p:?}");
    }
    // The mean resultant length A₃(κ) = coth κ − 1/κ along μ; SE from the sample spread.
    let t: Vec<f64> = pts
        .iter()
        .map(|p| p.iter().zip(mu).map(|(a, b)| *a as f64 * b).sum())
        .collect();
    let mean = t.iter().sum::<f64>() / n as f64;
    let var = t.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    let a = wmvl::directional::mean_resultant_length(3, kappa).unwrap();
    assert!(
        (mean - a).abs() < 4.0 * se,
        "E[μ·y] = {mean} ± {se}, A₃({kappa}) = {a}"
    );
}

#[test]
fn riemannian_mala_in_the_poincare_ball_targets_the_riemannian_density() {
    // The model sees the hyperboloid point y = (2x/(1−r), (1+r)/(1−r)); E(y) = a·y_last gives
    // the chart density exp(−a(1+r)/(1−r))·(2/(1−r))² on H² (r = ‖x‖²), a proper one;
    // E[r] by quadrature in ρ = ‖x‖ (volume element ρ dρ dθ).
    use wmvl::model::{Arch, EnergyKind, HostParams, Model};
    let a = 2.0f64;
    let arch = Arch {
        kind: EnergyKind::Scalar,
        dim: 3,
        hidden: vec![],
        act: wmvl::ops::Fun::Tanh,
        spectral_norm: false,
    };
    let hp = HostParams {
        weights: vec![(3, 1, vec![0.0, 0.0, a as f32])],
        biases: vec![(1, 1, vec![0.0])],
        sn_u: vec![None],
    };
    let mut model = Model::from_host(arch, &hp, |r, c, d| gpu().upload(r, c, d)).unwrap();
    let cfg = Options {
        sampler: Sampler::Mala,
        steps: 150,
        step_size: 0.1,
        seed: 9,
        init_std: 0.5,
        manifold: wmvl::manifold::Manifold::Hyperbolic,
    };
    let n = 2000;
    let s = sample_points(gpu(), &mut model, n, &cfg, &mut |_| {}).unwrap();
    assert_eq!(
        s.points.len(),
        2 * n,
        "ball points have the chart's 2 coordinates"
    );
    assert!(s.acceptance > 0.5, "acceptance {}", s.acceptance);
    let r: Vec<f64> = s
        .points
        .chunks(2)
        .map(|p| p.iter().map(|v| (*v as f64).powi(2)).sum())
        .collect();
    assert!(r.iter().all(|&v| v < 1.0), "a sample left the ball");
    let (mut num, mut den) = (0.0, 0.0);
    let k = 200_000;
    for i in 0..k {
        let rho = (i as f64 + 0.5) / k as f64;
        let rr = rho * rho;
        let w = (-a * (1.0 + rr) / (1.0 - rr)).exp() * (2.0 / (1.0 - rr)).powi(2) * rho;
        num += w * rr;
        den += w;
    }
    let want = num / den;
    let mean = r.iter().sum::<f64>() / n as f64;
    let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    assert!(
        (mean - want).abs() < 4.0 * se,
        "E[r] = {mean} ± {se}, quadrature {want}"
    );
}

#[test]
fn svgd_particles_settle_on_a_standard_normal() {
    // E = ½‖x‖²: SVGD spreads 500 particles started at N(0, 0.3²I) out to N(0, I) (the kernel's
    // repulsion against the score's pull): the mean and the
    // per-coordinate variance. (SVGD's finite-particle fixed point is not exactly the target;
    // in 2-D with 500 particles the variance is within 15 %, see Liu & Wang 2016.)
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let cfg = Options {
        sampler: Sampler::Svgd,
        steps: 600,
        step_size: 0.5,
        seed: 4,
        init_std: 0.3,
        ..Options::default()
    };
    let n = 500;
    let s = sample_points(gpu(), &mut model, n, &cfg, &mut |_| {}).unwrap();
    for c in 0..2 {
        let v: Vec<f64> = s.points.chunks(2).map(|p| p[c] as f64).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        assert!(mean.abs() < 0.1, "coordinate {c}: mean {mean}");
        assert!((var - 1.0).abs() < 0.15, "coordinate {c}: variance {var}");
    }
    // On a manifold it is refused with the reason.
    let cfg = Options {
        manifold: wmvl::manifold::Manifold::Sphere,
        ..cfg
    };
    let Err(e) = sample_points(gpu(), &mut model, 4, &cfg, &mut |_| {}) else {
        panic!("SVGD on the sphere must be refused")
    };
    assert!(e.to_string().contains("R^d"), "{e}");
}
