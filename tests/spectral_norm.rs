//! Spectral normalisation (SPEC §7): the persistent power iteration converges to the top
//! singular value of W, and the gradient flows through σ.
//!
//! The bound model keeps its effective weight W/σ private, so the tests read it through the
//! MLP: an ELU first layer whose bias is 2 (|W/σ|ᵢⱼ ≤ 1, so every pre-activation of the
//! identity input is ≥ 1 and ELU is the identity there) and an output layer [I | 0] with zero
//! bias, so that ψ(I)[:, :fan_out] − 2 = W/σ exactly (up to f32 rounding on the GPU,
//! ~ulp(2)/|entry| ≈ 1e-6 relative). The score-net arch is used because its output width
//! (= input width) is at least fan_out in both shapes tested.
//!
//! Reference σ: the largest eigenvalue of WᵀW by cyclic Jacobi in f64, square-rooted.

use std::sync::OnceLock;

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64;

use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::Gpu;
use wmvl::model::{Arch, EnergyKind, HostParams, Init, Model};
use wmvl::ops::Fun;
use wmvl::tape::Tape;
use wmvl::Result;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

/// First-layer bias: keeps ELU in its identity region for inputs e_i.
const BIAS: f64 = 2.0;

/// Standard-normal-ish f32 entries (sum of uniforms), seeded.
fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Pcg64::seed_from_u64(seed);
    let mut u = || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (0..rows * cols)
        .map(|_| ((0..4).map(|_| u()).sum::<f64>() - 2.0) as f32)
        .collect()
}

/// Largest singular value of the row-major (rows × cols) matrix w: √λ_max(WᵀW), Jacobi in f64.
fn top_singular_value(w: &[f64], rows: usize, cols: usize) -> (f64, f64) {
    let n = cols;
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..rows).map(|k| w[k * cols + i] * w[k * cols + j]).sum();
        }
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ A J with the rotation in the (p, q) plane.
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut eig: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    eig.sort_by(|x, y| y.total_cmp(x));
    (
        eig[0].sqrt(),
        eig.get(1).copied().unwrap_or(0.0).max(0.0).sqrt(),
    )
}

/// A score-net model (dim → fo → dim, ELU) whose first layer is `w` (dim × fo) with spectral
/// norm, bias 2, and output layer [I | 0] with zero bias. u starts at the seeded init.
fn host_params(dim: usize, fo: usize, w: &[f32]) -> Result<(Arch, HostParams)> {
    assert!(dim >= fo);
    let arch = Arch {
        kind: EnergyKind::ScoreNet,
        dim,
        hidden: vec![fo],
        act: Fun::Elu,
        spectral_norm: true,
    };
    let mut hp = HostParams::init(&arch, Init::Glorot, 3)?;
    hp.weights[0] = (dim, fo, w.to_vec());
    hp.biases[0] = (1, fo, vec![BIAS as f32; fo]);
    let mut w1 = vec![0.0f32; fo * dim];
    for i in 0..fo {
        w1[i * dim + i] = 1.0;
    }
    hp.weights[1] = (fo, dim, w1);
    hp.biases[1] = (1, dim, vec![0.0; dim]);
    assert!(hp.sn_u[0].is_some() && hp.sn_u[1].is_none());
    Ok((arch, hp))
}

fn identity(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    v
}

/// The effective first-layer weight W/σ of a GPU model (bound without power iteration).
fn effective_weight(model: &mut Model<&Gpu>, dim: usize, fo: usize) -> Result<Vec<f64>> {
    let gpu = gpu();
    let tape = Tape::new(gpu);
    let bound = model.bind(&tape, false)?;
    let x = tape.leaf(gpu.upload(dim, dim, &identity(dim))?);
    let out = gpu.read(&bound.mlp(x)?.slice_cols(0, fo)?.value())?;
    Ok(out.iter().map(|&v| v as f64 - BIAS).collect())
}

/// σ = ‖W‖_F / ‖W/σ‖_F.
fn sigma_from(w: &[f32], eff: &[f64]) -> f64 {
    let nw: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let ne: f64 = eff.iter().map(|v| v * v).sum::<f64>().sqrt();
    nw / ne
}

fn check_power_iteration(dim: usize, fo: usize, seed: u64) -> Result<()> {
    let gpu = gpu();
    let w = random_matrix(dim, fo, seed);
    let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let (s1, s2) = top_singular_value(&w64, dim, fo);
    let (arch, hp) = host_params(dim, fo, &w)?;
    let mut model = Model::<&Gpu>::from_host(arch, &hp, |r, c, d| gpu.upload(r, c, d))?;

    // The effective weight is W/σ: check entrywise that it is W divided by one scalar.
    let eff = effective_weight(&mut model, dim, fo)?;
    let sigma0 = sigma_from(&w, &eff);
    for (a, b) in w.iter().zip(&eff) {
        assert!(
            (*a as f64 / sigma0 - b).abs() < 1e-5,
            "effective weight is not W/σ"
        );
    }
    // Before power iteration σ = ‖W u₀‖ < σ_max: the comparison below has power.
    let mut sigmas = vec![sigma0];
    for _ in 0..200 {
        let tape = Tape::new(gpu);
        model.bind(&tape, true)?;
        if sigmas.len() <= 3 {
            sigmas.push(sigma_from(&w, &effective_weight(&mut model, dim, fo)?));
        }
    }
    let sigma = sigma_from(&w, &effective_weight(&mut model, dim, fo)?);
    let rel = (sigma - s1).abs() / s1;
    println!(
        "{dim}x{fo}: σ₁ = {s1:.6} (σ₂/σ₁ = {:.3}); σ after 0..3 iterations {:?}; after 200: {sigma:.6}, rel. error {rel:.2e}",
        s2 / s1,
        sigmas
            .iter()
            .map(|s| format!("{s:.5}"))
            .collect::<Vec<_>>()
    );
    assert!(
        (s1 - sigma0) / s1 > 1e-3,
        "the initial u is already a top singular vector: the test would prove nothing"
    );
    // Power iteration: σ_k = ‖W u_k‖ increases towards σ₁ and never exceeds it.
    for w2 in sigmas.windows(2) {
        assert!(w2[1] >= w2[0] * (1.0 - 1e-6), "σ decreased: {sigmas:?}");
    }
    assert!(sigma <= s1 * (1.0 + 1e-5));
    // 1e-3 relative (issue's tolerance); in practice f32 gives ~1e-6 after (σ₂/σ₁)^400 ≪ 1.
    assert!(rel < 1e-3, "σ = {sigma}, top singular value {s1}");
    // The persistent u was replaced by the iteration (it is the model's state).
    let u = gpu.read(model.sn_u[0].as_ref().expect("spectral norm layer"))?;
    let nu: f64 = u.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    assert!((nu - 1.0).abs() < 1e-5, "u is a unit vector, ‖u‖ = {nu}");
    Ok(())
}

#[test]
fn power_iteration_finds_top_singular_value_7x5() -> Result<()> {
    check_power_iteration(7, 5, 101)
}

#[test]
fn power_iteration_finds_top_singular_value_30x20() -> Result<()> {
    check_power_iteration(30, 20, 202)
}

/// Scalar f(W) = Σ C ⊙ (W/σ(W)) on the f64 CPU tape, with σ = vᵀWu, u the stored vector and
/// v = normalize(W u) recomputed from W (no power iteration), i.e. σ(W) = ‖Wu‖. Returns f and,
/// when asked, ∂f/∂W from the tape (u, v constants for differentiation, as SPEC §7 says).
fn f_and_grad(
    arch: &Arch,
    hp: &HostParams,
    w: &[f64],
    c: &[f64],
    want_grad: bool,
) -> Result<(f64, Vec<f64>)> {
    let (dim, fo) = (arch.dim, arch.hidden[0]);
    let mut model = Model::<Cpu>::from_host(arch.clone(), hp, Mat::from_f32)?;
    model.weights[0] = Mat::new(dim, fo, w.to_vec())?;
    let tape = Tape::new(Cpu);
    let bound = model.bind(&tape, false)?;
    let x = tape.leaf(Mat::from_f32(dim, dim, &identity(dim))?);
    let cm = tape.leaf(Mat::new(dim, fo, c.to_vec())?);
    let f = bound.mlp(x)?.slice_cols(0, fo)?.mul(cm)?.sum_all()?;
    let fv = f.value().data[0];
    if !want_grad {
        return Ok((fv, vec![]));
    }
    let g = tape.grad(f, &[bound.leaves[0]], false)?[0];
    Ok((fv, g.value().data))
}

/// d/dW of a scalar of W/σ(W) through σ agrees with central finite differences (f64), and
/// differs clearly from the gradient that ignores σ's dependence on W (C/σ).
#[test]
fn gradient_flows_through_sigma() -> Result<()> {
    let (dim, fo) = (7, 5);
    let w32 = random_matrix(dim, fo, 303);
    let (arch, hp) = host_params(dim, fo, &w32)?;
    let w: Vec<f64> = w32.iter().map(|&v| v as f64).collect();
    let c: Vec<f64> = random_matrix(dim, fo, 404)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let (f0, grad) = f_and_grad(&arch, &hp, &w, &c, true)?;

    let h = 1e-5;
    let mut fd = vec![0.0; w.len()];
    for (k, fdk) in fd.iter_mut().enumerate() {
        let mut wp = w.clone();
        wp[k] += h;
        let mut wm = w.clone();
        wm[k] -= h;
        *fdk = (f_and_grad(&arch, &hp, &wp, &c, false)?.0
            - f_and_grad(&arch, &hp, &wm, &c, false)?.0)
            / (2.0 * h);
    }
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = grad
        .iter()
        .zip(&fd)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    // Central differences in f64: truncation h²·f''' ~ 1e-10, rounding 1e-16·|f|/h ~ 1e-11.
    println!("f = {f0:.6}; max |tape − FD| = {err:.2e} (max |grad| {scale:.3})");
    assert!(
        err < 1e-7 * scale,
        "tape gradient through σ disagrees with FD: {err:e}"
    );

    // Treating σ as a constant would give C/σ: far from the true gradient.
    let sigma = {
        let u = &hp.sn_u[0].as_ref().expect("sn layer").2;
        let wu: Vec<f64> = (0..dim)
            .map(|i| (0..fo).map(|j| w[i * fo + j] * u[j] as f64).sum())
            .collect();
        wu.iter().map(|v| v * v).sum::<f64>().sqrt()
    };
    let err_detached = c
        .iter()
        .zip(&fd)
        .fold(0.0f64, |m, (ci, b)| m.max((ci / sigma - b).abs()));
    println!("σ = ‖Wu‖ = {sigma:.6}; max |C/σ − FD| = {err_detached:.3e}");
    assert!(
        err_detached > 1e-2 * scale,
        "the σ path contributes nothing here"
    );
    Ok(())
}
