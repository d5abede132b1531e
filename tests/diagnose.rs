//! The tail check: models built by hand whose energy grows outward pass; models whose energy
//! is lower far away, or falls outward, are caught with a point far from the data.

mod common;

use std::sync::OnceLock;

use wmvl::data::Matrix;
use wmvl::diagnose::{tail_check, TailProblem};
use wmvl::error::Error;
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, EnergyKind, HostParams, Model};
use wmvl::ops::Fun;
use wmvl::rng::HostRng;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// A scalar tanh energy, per axis t: a well −2[tanh(t + 2) − tanh(t − 2)] over the data and a
/// wide ridge tanh(t/10 + 3) − tanh(t/10 − 3) around it. Beyond the ridge (|t| ≳ 30) the
/// energy falls back towards 0: above the data's energies, but decreasing outward.
fn well_and_ridge() -> Model<&'static Gpu> {
    let g = gpu();
    let arch = Arch {
        kind: EnergyKind::Scalar,
        dim: 2,
        hidden: vec![8],
        act: Fun::Tanh,
        spectral_norm: false,
    };
    // Layer 0 is (fan_in 2) × (fan_out 8), row-major: row i holds input x_i's weights.
    let mut w0 = vec![0.0f32; 16];
    let mut b0 = vec![0.0f32; 8];
    let mut w1 = vec![0.0f32; 8];
    for axis in 0..2 {
        let units = [
            (1.0, 2.0, -2.0),
            (1.0, -2.0, 2.0),
            (0.1, 3.0, 1.0),
            (0.1, -3.0, -1.0),
        ];
        for (k, &(scale, shift, out)) in units.iter().enumerate() {
            let j = axis * 4 + k;
            w0[axis * 8 + j] = scale;
            b0[j] = shift;
            w1[j] = out;
        }
    }
    let hp = HostParams {
        weights: vec![(2, 8, w0), (8, 1, w1)],
        biases: vec![(1, 8, b0), (1, 1, vec![0.0])],
        sn_u: vec![None, None],
    };
    Model::from_host(arch, &hp, |r, c, d| g.upload(r, c, d)).unwrap()
}

/// `n` standard normal points in 2-D, shifted by `shift`.
fn normal_data(n: usize, shift: [f32; 2]) -> Matrix {
    let mut rng = HostRng::new(5);
    let data = (0..2 * n)
        .map(|i| rng.normal() as f32 + shift[i % 2])
        .collect();
    Matrix::new(n, 2, data).unwrap()
}

fn max_distance(data: &Matrix, centre: &[f64]) -> f64 {
    data.data
        .chunks(2)
        .map(|p| ((p[0] as f64 - centre[0]).powi(2) + (p[1] as f64 - centre[1]).powi(2)).sqrt())
        .fold(0.0, f64::max)
}

#[test]
fn energy_growing_outward_passes() {
    let data = normal_data(500, [0.0, 0.0]);
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    assert_eq!(tail_check(gpu(), &mut model, &data, 1).unwrap(), None);
    // Off-centre data and a model centred on them (E = ‖x − m‖²/2 + const): the check
    // centres its shells on the data.
    let data = normal_data(500, [40.0, -25.0]);
    let mut centred = common::quadratic_model(gpu(), 0.5, [-40.0, 25.0]);
    assert_eq!(tail_check(gpu(), &mut centred, &data, 1).unwrap(), None);
    // The same data under a model centred at the origin, 47 away: the energy is lower on the
    // side toward the origin than on the data.
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let w = tail_check(gpu(), &mut model, &data, 1)
        .unwrap()
        .expect("a warning");
    assert_eq!(w.problem, TailProblem::BelowData);
    assert!(w.point[0] < 40.0 && w.point[1] > -25.0, "{w:?}");
}

#[test]
fn energy_falling_outward_is_caught_far_from_the_data() {
    let data = normal_data(500, [0.0, 0.0]);
    let mut model = common::quadratic_model(gpu(), -0.5, [0.0, 0.0]);
    let w = tail_check(gpu(), &mut model, &data, 1)
        .unwrap()
        .expect("E = -‖x‖²/2 must be flagged");
    assert_eq!(w.problem, TailProblem::BelowData);
    let far = max_distance(&data, &[0.0, 0.0]);
    let norm = (w.point[0].powi(2) + w.point[1].powi(2)).sqrt();
    assert!(
        norm > 2.0 * far,
        "worst point {:?} not far from the data",
        w.point
    );
    // `distance` is measured from the data's mean (the shells' centre), not the origin.
    let n = data.rows as f64;
    let mean: Vec<f64> = (0..2)
        .map(|c| data.data.chunks(2).map(|p| p[c] as f64).sum::<f64>() / n)
        .collect();
    let from_mean = ((w.point[0] - mean[0]).powi(2) + (w.point[1] - mean[1]).powi(2)).sqrt();
    assert!(
        (from_mean - w.distance).abs() < 1e-3 * norm,
        "{from_mean} vs {}",
        w.distance
    );
    // The energy reported is the model's at that point (E = −‖x‖²/2), below the reference.
    assert!(
        (w.energy + norm * norm / 2.0).abs() < 1e-3 * norm * norm,
        "{w:?}"
    );
    assert!(w.energy < w.reference);
    let text = w.to_string();
    for needed in [
        "not be normalisable",
        "lower than",
        "--energy-reg",
        "--step-size",
        "run away",
    ] {
        assert!(text.contains(needed), "{needed:?} missing from: {text}");
    }
    // Deterministic for a seed.
    let again = tail_check(gpu(), &mut model, &data, 1).unwrap();
    assert_eq!(again.as_ref(), Some(&w));
}

#[test]
fn energy_falling_outward_above_the_data_is_caught() {
    let data = normal_data(500, [0.0, 0.0]);
    let mut model = well_and_ridge();
    let w = tail_check(gpu(), &mut model, &data, 3)
        .unwrap()
        .expect("a ridge falling outward must be flagged");
    assert_eq!(w.problem, TailProblem::DecreasingOutward, "{w}");
    assert!(w.energy > w.reference, "{w:?}");
    assert!(w.distance > 10.0 * w.data_radius, "{w:?}");
    let mins: Vec<f64> = w.shells.iter().map(|s| s.1).collect();
    assert!(mins[4] < mins[3] && mins[3] < mins[2], "{mins:?}");
    assert!(w.to_string().contains("falls outward"), "{w}");
}

#[test]
fn bad_inputs_are_refused() {
    let mut model = common::quadratic_model(gpu(), 0.5, [0.0, 0.0]);
    let three = Matrix::new(2, 3, vec![0.0; 6]).unwrap();
    assert!(matches!(
        tail_check(gpu(), &mut model, &three, 0),
        Err(Error::Shape(_))
    ));
    let empty = Matrix {
        rows: 0,
        cols: 2,
        data: vec![],
    };
    assert!(matches!(
        tail_check(gpu(), &mut model, &empty, 0),
        Err(Error::Invalid(_))
    ));
    let nan = Matrix::new(2, 2, vec![0.0, 1.0, f32::NAN, 0.0]).unwrap();
    let err = tail_check(gpu(), &mut model, &nan, 0).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("row 2")),
        "{err:?}"
    );
}
