//! End-to-end tests of the `wmvl` binary: `info`, `train`, `eval`, `score` and `sample` run as
//! child processes, each test in its own fresh temporary directory.
//!
//! - `eval` with `--noise` is deterministic, and its `--grad-out` gradient (under the
//!   checkpoint's tensor names) agrees with central finite differences of the loss it prints
//!   (MVL and SSM-VR).
//! - Every bad input (NaN/Inf, wrong width, empty, unreadable or truncated files, unknown names
//!   and options, corrupt or mismatched checkpoints, badly shaped noise, unwritable outputs)
//!   exits non-zero with a message naming the file (and row), never panics, and leaves an
//!   existing output file byte-for-byte unchanged.
//! - `train --data FILE.csv` → `score` and `sample --sampler mala` work on the result.
//! - `info` passes its self-check, and fails cleanly (with the install hint) without an adapter.
//!
//! One tiny model (2 → 16 → 16 → 2 score-net, spectral norm, 20 steps) is trained once, from a
//! CSV file, and shared by all tests (see [`fixture`]).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use wmvl::checkpoint::Checkpoint;
use wmvl::data::{load_npy, save_npy, Toy};
use wmvl::rng::HostRng;

// ---------------------------------------------------------------------------------
// the shared model
// ---------------------------------------------------------------------------------

/// Rows in the evaluation data (and noise) of the finite-difference checks.
const EVAL_ROWS: usize = 1000;

struct Fixture {
    /// Holds the files below (see [`process_dir`]).
    dir: PathBuf,
    /// A 2-D score-net (16, 16 swish, spectral norm) trained for 20 MVL steps on `train.csv`.
    checkpoint: PathBuf,
    /// 500 banana draws with an `x1,x2` header, the training data.
    train_csv: PathBuf,
    /// `EVAL_ROWS` fresh banana draws (`.npy`), and standard-normal noise of the same shape.
    data: PathBuf,
    noise: PathBuf,
}

/// Trains the shared model once (from a `.csv` file, so this is also the success path of
/// `train --data FILE.csv`).
fn fixture() -> &'static Fixture {
    static FIX: OnceLock<Fixture> = OnceLock::new();
    FIX.get_or_init(|| {
        let dir = process_dir("wmvl-cli-fixture-");

        let train = Toy::Banana.sample_matrix(500, 11);
        let mut csv = String::from("x1,x2\n");
        for r in 0..train.rows {
            let p = train.row(r);
            csv.push_str(&format!("{},{}\n", p[0], p[1]));
        }
        let train_csv = dir.join("train.csv");
        fs::write(&train_csv, csv).unwrap();

        let data = dir.join("data.npy");
        let x = Toy::Banana.sample_matrix(EVAL_ROWS, 12);
        save_npy(&data, x.rows, x.cols, &x.data).unwrap();
        let noise = dir.join("noise.npy");
        save_npy(&noise, EVAL_ROWS, 2, &normals(EVAL_ROWS, 2, 13)).unwrap();

        let run = wmvl(
            &dir,
            &[
                "train",
                "--data",
                "train.csv",
                "--out",
                "model.safetensors",
                "--hidden",
                "16,16",
                "--steps",
                "20",
                "--batch",
                "50",
                "--log-every",
                "10",
            ],
        )
        .ok();
        assert!(run.stdout.contains("wrote model.safetensors"), "{run:#?}");
        let checkpoint = dir.join("model.safetensors");
        Fixture {
            dir,
            checkpoint,
            train_csv,
            data,
            noise,
        }
    })
}

/// A fresh test directory holding a copy of the shared model as `model.safetensors`, the
/// evaluation data as `data.npy` and the noise as `noise.npy`.
fn workdir(tag: &str) -> TempDir {
    let f = fixture();
    let t = TempDir::new(tag);
    fs::copy(&f.checkpoint, t.path("model.safetensors")).unwrap();
    fs::copy(&f.data, t.path("data.npy")).unwrap();
    fs::copy(&f.noise, t.path("noise.npy")).unwrap();
    t
}

// ---------------------------------------------------------------------------------
// info
// ---------------------------------------------------------------------------------

#[test]
fn info_runs_the_self_check() {
    let t = TempDir::new("info");
    let run = wmvl(&t.0, &["info"]).ok();
    assert!(run.stdout.contains("self-check"), "{run:#?}");
    assert!(run.stdout.contains("[ok]"), "{run:#?}");
}

#[test]
fn info_without_an_adapter_fails_with_the_install_hint() {
    let t = TempDir::new("noadapter");
    let missing = "/nonexistent.json";
    let run = wmvl_env(
        &t.0,
        &["info"],
        &[
            ("WGPU_BACKEND", "vulkan"),
            ("VK_ICD_FILENAMES", missing),
            ("VK_DRIVER_FILES", missing),
        ],
    );
    assert_fails(
        &run,
        &["adapter", "apt-get install libvulkan1 mesa-vulkan-drivers"],
        &[],
    );
}

// ---------------------------------------------------------------------------------
// eval: determinism and gradients
// ---------------------------------------------------------------------------------

#[test]
fn eval_with_noise_is_deterministic() {
    let t = workdir("determinism");
    let args = [
        "eval",
        "--checkpoint",
        "model.safetensors",
        "--data",
        "data.npy",
        "--objective",
        "mvl",
        "--eps",
        "1e-3",
        "--noise",
        "noise.npy",
    ];
    let first = wmvl(&t.0, &args).ok();
    let second = wmvl(&t.0, &args).ok();
    let (a, b) = (printed_value(&first, "mvl"), printed_value(&second, "mvl"));
    assert_eq!(a, b, "two evaluations with the same noise differ");
    let v: f64 = a.parse().unwrap();
    assert!(v.is_finite());
    // The 8 printed decimals.
    assert_eq!(a.split('.').nth(1).map(str::len), Some(8), "{a}");

    // The gradient is reproducible too, and the loss printed alongside is the same.
    let mut grads = vec![];
    for out in ["g1.safetensors", "g2.safetensors"] {
        let mut a = args.to_vec();
        a.extend(["--grad-out", out]);
        let run = wmvl(&t.0, &a).ok();
        assert_eq!(printed_value(&run, "mvl"), printed_value(&first, "mvl"));
        grads.push(Checkpoint::load(t.path(out)).unwrap().tensors);
    }
    assert_eq!(
        grads[0], grads[1],
        "two gradients with the same noise differ"
    );
}

/// `eval --objective OBJ --eps 1e-3 --noise Z … --grad-out G` against central finite
/// differences of the loss `eval` prints, on six parameter entries (the largest gradient entry
/// of each of the six tensors): returns (entry, gradient, finite difference) and asserts
/// |FD − gradient| ≤ max(`abs_tol`, `rel_tol`·|gradient|).
///
/// Why the tape gradient is the derivative of the printed loss:
/// - The noise is fixed (`--noise`), so the loss is a deterministic function of θ.
/// - Spectral norm (the default, hidden layers): eval binds the model without power
///   iteration, so u is the constant stored in the checkpoint, v = normalize(W u) and
///   σ = vᵀ W u = ‖W u‖. The tape holds v constant, giving ∂σ/∂W = v uᵀ, which is exactly
///   ∂‖W u‖/∂W = (W u) uᵀ/‖W u‖: v's own dependence on W contributes nothing (the derivative
///   of a normalised vector is orthogonal to it). So the FD of the loss of W/σ(W), with σ
///   recomputed from the perturbed W, matches the tape.
/// - MVL's per-sample step εᵢ = ε/max(1, ‖∇E(xᵢ)‖²) (the default rescaling) is detached on the
///   tape: a preconditioner whose θ-dependence the gradient deliberately ignores. It enters
///   the per-sample term −(E(x₁) − E(x₀) − ∇E·ξ)/εᵢ only beyond leading order (the leading
///   terms ½‖∇E‖² − zᵀ∇²E z do not depend on εᵢ; the O(√εᵢ) rest is odd in z and averages out
///   over rows), so the gap is far below the tolerance: the gradients with and without
///   `--no-rescale` differ by ≤ 2e-5 on this model. Both variants are checked.
///
/// Tolerances, from f32 precision. Each loss is printed with 8 decimals (±5e-9, i.e. ±1.3e-7
/// after dividing by 2h = 0.04: negligible). MVL with ε = 1e-3 divides a difference of
/// energies of size ~1–10, each rounded to f32 (~1e-6), by ε: ~1e-3 of rounding per sample,
/// ~3e-5 in the mean over 1000 rows, independent between θ + h and θ − h (every value moves),
/// so up to ~1e-3 in the FD quotient at h = 2e-2 (measured: |FD − gradient| ≤ 4e-4, and it
/// does not shrink at h = 1e-2, so it is this noise, not truncation). Truncation,
/// h²/6·∂³L ≈ 7e-5·∂³L, is the relative part. Hence MVL: max(2e-3, 5%). SSM-VR has no 1/ε
/// cancellation: its rounding is ~1e-6 in the loss, ~1e-4 at most in the FD quotient
/// (measured ≤ 2e-5); hence SSM-VR: max(2e-4, 1%).
fn check_gradient_by_finite_differences(
    objective: &str,
    extra: &[&str],
    abs_tol: f64,
    rel_tol: f64,
) -> Vec<(String, f64, f64)> {
    let t = workdir(&format!("fd-{objective}"));
    let h = 2e-2f32;
    let eval = |ck: &str, grad_out: Option<&str>| -> f64 {
        let mut args = vec![
            "eval",
            "--checkpoint",
            ck,
            "--data",
            "data.npy",
            "--objective",
            objective,
            "--eps",
            "1e-3",
            "--noise",
            "noise.npy",
        ];
        args.extend(extra);
        if let Some(g) = grad_out {
            args.extend(["--grad-out", g]);
        }
        let run = wmvl(&t.0, &args).ok();
        printed_value(&run, objective).parse().unwrap()
    };
    eval("model.safetensors", Some("grad.safetensors"));

    let ck = Checkpoint::load(t.path("model.safetensors")).unwrap();
    let grad = Checkpoint::load(t.path("grad.safetensors")).unwrap();
    // The gradient has exactly the checkpoint's parameter tensors (not the sn_u vectors), with
    // their names and shapes.
    let layers = ck
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("layers.") && t.name.ends_with(".weight"))
        .count();
    assert_eq!(layers, 3, "{:?}", ck.names());
    let mut expected: Vec<String> = (0..layers)
        .flat_map(|l| [format!("layers.{l}.bias"), format!("layers.{l}.weight")])
        .collect();
    expected.sort();
    assert_eq!(grad.names(), expected);
    for g in &grad.tensors {
        let p = ck.get(&g.name).unwrap();
        assert_eq!((g.rows, g.cols), (p.rows, p.cols), "{}", g.name);
        assert!(g.data.iter().all(|v| v.is_finite()), "{}", g.name);
    }
    assert_eq!(
        grad.metadata.get("gradient_of").map(String::as_str),
        Some(objective)
    );

    let mut results = vec![];
    for g in &grad.tensors {
        let (i, &gi) = g
            .data
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let mut losses = [0.0; 2];
        let mut theta = [0.0f32; 2];
        for (k, sign) in [1.0f32, -1.0].into_iter().enumerate() {
            let mut p = ck.clone();
            let tensor = p.tensors.iter_mut().find(|x| x.name == g.name).unwrap();
            tensor.data[i] += sign * h;
            theta[k] = tensor.data[i];
            let file = format!("perturbed-{}-{k}.safetensors", g.name);
            p.save(t.path(&file)).unwrap();
            losses[k] = eval(&file, None);
        }
        // The step actually taken, after rounding θ ± h to f32.
        let fd = (losses[0] - losses[1]) / (theta[0] as f64 - theta[1] as f64);
        let what = format!("{}[{i}]", g.name);
        println!(
            "{objective} {what:>18}: gradient {gi:+.6e}  central FD {fd:+.6e}  diff {:+.2e}",
            fd - gi as f64
        );
        results.push((what, gi as f64, fd));
    }
    for (what, g, fd) in &results {
        let tol = f64::max(abs_tol, rel_tol * g.abs());
        assert!(
            (fd - g).abs() <= tol,
            "{objective}: ∂L/∂{what}: gradient {g:e}, finite differences {fd:e} (tolerance {tol:e})"
        );
    }
    results
}

#[test]
fn mvl_gradient_matches_finite_differences() {
    // Exactly the command of the acceptance criterion (default rescaling).
    let with = check_gradient_by_finite_differences("mvl", &[], 2e-3, 0.05);
    // Without rescaling the tape gradient is the exact derivative (see above); the two
    // gradients differ only by the detached dependence of εᵢ on θ.
    let without = check_gradient_by_finite_differences("mvl", &["--no-rescale"], 2e-3, 0.05);
    for ((what, g1, _), (_, g0, _)) in with.iter().zip(&without) {
        println!(
            "mvl {what:>18}: gradient with rescaling − without {:+.2e}",
            g1 - g0
        );
        assert!((g1 - g0).abs() <= 2e-3, "{what}: {g1} vs {g0}");
    }
}

#[test]
fn ssm_vr_gradient_matches_finite_differences() {
    check_gradient_by_finite_differences("ssm-vr", &[], 2e-4, 0.01);
}

// ---------------------------------------------------------------------------------
// bad inputs
// ---------------------------------------------------------------------------------

/// Bad data files, for `eval` (with a pre-existing `--grad-out` file), `score` (pre-existing
/// `--out`) and `train --data` (pre-existing `--out`).
#[test]
fn bad_data_files_are_refused_by_name() {
    let t = workdir("baddata");
    let d = &t.0;
    let good = normals(4, 2, 1);
    let mut nan = good.clone();
    nan[5] = f32::NAN; // row 3, column 2
    let mut inf = good.clone();
    inf[2] = f32::INFINITY; // row 2, column 1
    write_raw_npy(&t.path("nan.npy"), 4, 2, &nan, 0);
    write_raw_npy(&t.path("inf.npy"), 4, 2, &inf, 0);
    write_raw_npy(&t.path("truncated.npy"), 4, 2, &good, 3);
    save_npy(t.path("wide.npy"), 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    fs::write(t.path("nan.csv"), "x1,x2\n1,2\n3,NaN\n").unwrap();
    fs::write(t.path("inf.csv"), "1,2\n3,4\n-inf,5\n").unwrap();
    fs::write(t.path("wide.csv"), "1,2,3\n4,5,6\n").unwrap();
    fs::write(t.path("empty.csv"), "").unwrap();
    fs::write(t.path("empty.npy"), "").unwrap();
    fs::create_dir(t.path("folder.csv")).unwrap();
    fs::create_dir(t.path("folder.npy")).unwrap();

    // (file, words the error must contain besides the file name)
    let cases: &[(&str, &[&str])] = &[
        ("nan.npy", &["row 3", "column 2", "NaN"]),
        ("inf.npy", &["row 2", "column 1", "inf"]),
        ("nan.csv", &["line 3", "column 2", "NaN"]),
        ("inf.csv", &["line 3", "column 1", "inf"]),
        ("truncated.npy", &["truncated"]),
        ("empty.csv", &["empty"]),
        ("empty.npy", &[]),
        ("missing.csv", &["No such file"]),
        ("missing.npy", &["No such file"]),
        ("folder.csv", &[]),
        ("folder.npy", &[]),
        // Three columns for a model of two: both widths are named.
        ("wide.npy", &["3 columns", "takes 2"]),
        ("wide.csv", &["3 columns", "takes 2"]),
    ];
    let grad = t.path("grad.safetensors");
    let out = t.path("out.npy");
    let ck = t.path("trained.safetensors");
    for (file, words) in cases {
        let mut needles = vec![*file];
        needles.extend(*words);
        for p in [&grad, &out, &ck] {
            fs::write(p, KEEP).unwrap();
        }
        let run = wmvl(
            d,
            &[
                "eval",
                "--checkpoint",
                "model.safetensors",
                "--data",
                file,
                "--objective",
                "mvl",
                "--grad-out",
                "grad.safetensors",
            ],
        );
        assert_fails(&run, &needles, &[&grad]);
        // The same file as noise (a valid data file): named just the same.
        if !file.starts_with("wide") {
            let run = wmvl(
                d,
                &[
                    "eval",
                    "--checkpoint",
                    "model.safetensors",
                    "--data",
                    "data.npy",
                    "--objective",
                    "mvl",
                    "--noise",
                    file,
                    "--grad-out",
                    "grad.safetensors",
                ],
            );
            assert_fails(&run, &needles, &[&grad]);
        }
        let run = wmvl(
            d,
            &[
                "score",
                "--checkpoint",
                "model.safetensors",
                "--points",
                file,
                "--out",
                "out.npy",
            ],
        );
        assert_fails(&run, &needles, &[&out]);
    }
    // train loads its data before building a model: everything but the width problem.
    for (file, words) in cases.iter().filter(|c| !c.0.starts_with("wide")) {
        let mut needles = vec![*file];
        needles.extend(*words);
        let run = wmvl(
            d,
            &[
                "train",
                "--data",
                file,
                "--out",
                "trained.safetensors",
                "--hidden",
                "4",
                "--steps",
                "2",
                "--batch",
                "4",
            ],
        );
        assert_fails(&run, &needles, &[&ck]);
    }
}

#[test]
fn unknown_names_and_options_are_refused() {
    let t = workdir("names");
    let d = &t.0;
    let ck = t.path("trained.safetensors");
    let out = t.path("out.npy");
    let grad = t.path("grad.safetensors");
    for p in [&ck, &out, &grad] {
        fs::write(p, KEEP).unwrap();
    }
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--out",
            "trained.safetensors",
            "--hidden",
            "4",
            "--steps",
            "2",
            "--batch",
            "4",
            "--n",
            "20",
        ];
        a.extend(extra);
        wmvl(d, &a)
    };
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--checkpoint",
            "model.safetensors",
            "--data",
            "data.npy",
            "--grad-out",
            "grad.safetensors",
        ];
        a.extend(extra);
        wmvl(d, &a)
    };
    let sample = |extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--checkpoint",
            "model.safetensors",
            "--n",
            "10",
            "--steps",
            "2",
            "--out",
            "out.npy",
        ];
        a.extend(extra);
        wmvl(d, &a)
    };
    let all: &[&Path] = &[&ck, &out, &grad];

    assert_fails(&eval(&["--objective", "nope"]), &["objective", "nope"], all);
    assert_fails(
        &train(&["--dataset", "banana", "--objective", "nope"]),
        &["objective", "nope"],
        all,
    );
    assert_fails(
        &train(&["--dataset", "nope"]),
        &["--dataset", "nope", "banana"],
        all,
    );
    assert_fails(
        &train(&["--dataset", "banana", "--optimizer", "nope"]),
        &["--optimizer", "nope"],
        all,
    );
    assert_fails(&sample(&["--sampler", "nope"]), &["sampler", "nope"], all);
    assert_fails(
        &eval(&["--objective", "mvl", "--bogus"]),
        &["unexpected argument '--bogus'"],
        all,
    );
    assert_fails(
        &train(&["--dataset", "banana", "--bogus", "1"]),
        &["unexpected argument '--bogus'"],
        all,
    );
    assert_fails(
        &sample(&["--bogus"]),
        &["unexpected argument '--bogus'"],
        all,
    );
    assert_fails(
        &wmvl(
            d,
            &[
                "score",
                "--checkpoint",
                "model.safetensors",
                "--points",
                "data.npy",
                "--out",
                "out.npy",
                "--bogus",
            ],
        ),
        &["unexpected argument '--bogus'"],
        all,
    );
    assert_fails(
        &train(&["--dataset", "banana", "--act", "nope"]),
        &["nope"],
        all,
    );
    assert_fails(
        &sample(&["--step-size", "ten"]),
        &["--step-size", "ten"],
        all,
    );
    assert_fails(&wmvl(d, &["frobnicate"]), &["unrecognized subcommand"], all);
    assert_fails(&wmvl(d, &[]), &["Usage"], all);
}

/// A file name that is not UTF-8 (possible on Unix) works like any other.
#[cfg(unix)]
#[test]
fn non_utf8_file_names_work() {
    // Linux file names are bytes: a name that is not UTF-8 is read and written like any other.
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let t = workdir("nonutf8");
    let name = OsStr::from_bytes(b"\xffpoints.npy");
    fs::copy(t.path("data.npy"), t.0.join(name)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmvl"));
    cmd.current_dir(&t.0).args([
        OsStr::new("score"),
        OsStr::new("--checkpoint"),
        OsStr::new("model.safetensors"),
        OsStr::new("--points"),
        name,
        OsStr::new("--out"),
        OsStr::from_bytes(b"\xfeout.npy"),
    ]);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", runtime_dir());
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let scored = load_npy(t.0.join(OsStr::from_bytes(b"\xfeout.npy"))).unwrap();
    assert_eq!((scored.rows, scored.cols), (EVAL_ROWS, 3));
}

#[test]
fn bad_checkpoints_are_refused_by_name() {
    let t = workdir("badckpt");
    let d = &t.0;
    let good = fs::read(t.path("model.safetensors")).unwrap();
    // Random bytes (deterministic), and a good file cut short.
    let mut rng = HostRng::new(99);
    let noise: Vec<u8> = (0..1000).map(|_| (rng.uniform() * 256.0) as u8).collect();
    fs::write(t.path("random.safetensors"), noise).unwrap();
    fs::write(t.path("truncated.safetensors"), &good[..good.len() * 2 / 3]).unwrap();
    fs::write(t.path("header-only.safetensors"), &good[..4]).unwrap();
    fs::create_dir(t.path("folder.safetensors")).unwrap();
    // Valid files that do not describe a model of their metadata: a tensor missing, and one
    // with the wrong shape.
    let ck = Checkpoint::load(t.path("model.safetensors")).unwrap();
    let mut missing = ck.clone();
    missing.tensors.retain(|t| t.name != "layers.1.weight");
    missing.save(t.path("no-layer.safetensors")).unwrap();
    let mut reshaped = ck.clone();
    let w = reshaped
        .tensors
        .iter_mut()
        .find(|t| t.name == "layers.2.bias")
        .unwrap();
    (w.rows, w.cols) = (w.cols, w.rows);
    reshaped.save(t.path("reshaped.safetensors")).unwrap();
    // A checkpoint for 3-D data.
    save_npy(t.path("x3.npy"), 30, 3, &normals(30, 3, 5)).unwrap();
    let run = wmvl(
        d,
        &[
            "train",
            "--data",
            "x3.npy",
            "--out",
            "model3.safetensors",
            "--hidden",
            "4",
            "--steps",
            "2",
            "--batch",
            "10",
            "--log-every",
            "1",
        ],
    );
    run.ok();

    let grad = t.path("grad.safetensors");
    let out = t.path("out.npy");
    let cases: &[(&str, &[&str])] = &[
        ("random.safetensors", &[]),
        ("truncated.safetensors", &[]),
        ("header-only.safetensors", &[]),
        ("missing.safetensors", &["No such file"]),
        ("folder.safetensors", &[]),
        ("no-layer.safetensors", &["layers.1.weight"]),
        ("reshaped.safetensors", &["layers.2.bias"]),
        // Does not match the 2-D data: both widths named.
        ("model3.safetensors", &["data.npy", "2 columns", "takes 3"]),
    ];
    for (file, words) in cases {
        let mut needles = vec![*file];
        needles.extend(*words);
        fs::write(&grad, KEEP).unwrap();
        fs::write(&out, KEEP).unwrap();
        let run = wmvl(
            d,
            &[
                "eval",
                "--checkpoint",
                file,
                "--data",
                "data.npy",
                "--objective",
                "mvl",
                "--grad-out",
                "grad.safetensors",
            ],
        );
        assert_fails(&run, &needles, &[&grad]);
        let run = wmvl(
            d,
            &[
                "score",
                "--checkpoint",
                file,
                "--points",
                "data.npy",
                "--out",
                "out.npy",
            ],
        );
        assert_fails(&run, &needles, &[&out]);
        if *file != "model3.safetensors" {
            let run = wmvl(
                d,
                &[
                    "sample",
                    "--checkpoint",
                    file,
                    "--n",
                    "10",
                    "--steps",
                    "2",
                    "--out",
                    "out.npy",
                ],
            );
            assert_fails(&run, &[file], &[&out]);
        }
    }
}

#[test]
fn noise_of_the_wrong_shape_is_refused() {
    let t = workdir("noiseshape");
    let n = EVAL_ROWS;
    save_npy(t.path("short.npy"), n - 1, 2, &normals(n - 1, 2, 1)).unwrap();
    save_npy(t.path("wide.npy"), n, 3, &normals(n, 3, 2)).unwrap();
    let grad = t.path("grad.safetensors");
    for (file, shape) in [
        ("short.npy", format!("{} rows", n - 1)),
        ("wide.npy", "3 columns".into()),
    ] {
        fs::write(&grad, KEEP).unwrap();
        let run = wmvl(
            &t.0,
            &[
                "eval",
                "--checkpoint",
                "model.safetensors",
                "--data",
                "data.npy",
                "--objective",
                "mvl",
                "--noise",
                file,
                "--grad-out",
                "grad.safetensors",
            ],
        );
        assert_fails(&run, &[file, &shape, &format!("{n} x 2")], &[&grad]);
    }
}

#[test]
fn unwritable_outputs_are_refused_before_any_work() {
    let t = workdir("outputs");
    let d = &t.0;
    // Into a missing folder, with the default (slow: 1000 steps of 2 × 100) training: it must
    // fail before training starts.
    let start = std::time::Instant::now();
    let run = wmvl(
        d,
        &[
            "train",
            "--dataset",
            "banana",
            "--out",
            "no/such/dir/model.safetensors",
        ],
    );
    assert_fails(
        &run,
        &["no/such/dir/model.safetensors", "does not exist"],
        &[],
    );
    assert!(
        !run.stderr.contains("training") && !run.stdout.contains("step"),
        "trained before refusing the output: {run:#?}"
    );
    assert!(start.elapsed().as_secs() < 30, "{:?}", start.elapsed());
    assert!(!t.path("no").exists());
    // Onto a folder.
    fs::create_dir(t.path("folder.safetensors")).unwrap();
    let run = wmvl(
        d,
        &[
            "train",
            "--dataset",
            "banana",
            "--out",
            "folder.safetensors",
        ],
    );
    assert_fails(&run, &["folder.safetensors"], &[]);
    assert!(!run.stderr.contains("training"), "{run:#?}");

    // score and sample write .npy only; eval's gradient goes to .safetensors only.
    let guarded = t.path("out.txt");
    fs::write(&guarded, KEEP).unwrap();
    let run = wmvl(
        d,
        &[
            "score",
            "--checkpoint",
            "model.safetensors",
            "--points",
            "data.npy",
            "--out",
            "out.txt",
        ],
    );
    assert_fails(&run, &["out.txt", ".npy"], &[&guarded]);
    let run = wmvl(
        d,
        &[
            "sample",
            "--checkpoint",
            "model.safetensors",
            "--n",
            "10",
            "--out",
            "out.txt",
        ],
    );
    assert_fails(&run, &["out.txt", ".npy"], &[&guarded]);
    let run = wmvl(
        d,
        &[
            "eval",
            "--checkpoint",
            "model.safetensors",
            "--data",
            "data.npy",
            "--objective",
            "mvl",
            "--grad-out",
            "out.txt",
        ],
    );
    assert_fails(&run, &["out.txt", ".safetensors"], &[&guarded]);
    let run = wmvl(
        d,
        &[
            "score",
            "--checkpoint",
            "model.safetensors",
            "--points",
            "data.npy",
            "--out",
            "no/such/dir/out.npy",
        ],
    );
    assert_fails(&run, &["no/such/dir/out.npy"], &[]);
}

// ---------------------------------------------------------------------------------
// success paths
// ---------------------------------------------------------------------------------

/// `train --data FILE.csv` (the fixture) writes a checkpoint that `score` uses: one row per
/// point, columns [E, score_1, score_2], and the score is −∇E (central differences of the
/// printed energies).
#[test]
fn train_on_csv_then_score() {
    let f = fixture();
    let t = TempDir::new("score");
    let ck = Checkpoint::load(&f.checkpoint).unwrap();
    assert_eq!(
        ck.metadata.get("dataset").map(String::as_str),
        Some("train.csv")
    );
    assert!(f.train_csv.exists() && f.dir.exists());

    // Points x, then x ± h e_j.
    let h = 2e-2f32;
    let base = normals(20, 2, 21);
    let mut pts = base.clone();
    for j in 0..2 {
        for s in [1.0, -1.0] {
            for r in 0..20 {
                let mut p = [base[2 * r], base[2 * r + 1]];
                p[j] += s * h;
                pts.extend(p);
            }
        }
    }
    let rows = pts.len() / 2;
    save_npy(t.path("points.npy"), rows, 2, &pts).unwrap();
    let ckp = f.checkpoint.to_str().unwrap();
    let run = wmvl(
        &t.0,
        &[
            "score",
            "--checkpoint",
            ckp,
            "--points",
            "points.npy",
            "--out",
            "s.npy",
        ],
    )
    .ok();
    assert!(run.stdout.contains("s.npy"), "{run:#?}");
    let m = load_npy(t.path("s.npy")).unwrap();
    assert_eq!((m.rows, m.cols), (rows, 3));
    assert!(m.data.iter().all(|v| v.is_finite()));
    let e = |r: usize| m.data[3 * r] as f64;
    for r in 0..20 {
        for j in 0..2 {
            let (plus, minus) = (20 + 40 * j + r, 40 + 40 * j + r);
            let fd = (e(plus) - e(minus)) / (2.0 * h as f64);
            let score = m.data[3 * r + 1 + j] as f64;
            assert!(
                (fd + score).abs() <= 1e-3 + 1e-2 * score.abs(),
                "row {r}: score_{} = {score}, −∂E/∂x by differences = {}",
                j + 1,
                -fd
            );
        }
    }
}

#[test]
fn sample_with_mala() {
    let f = fixture();
    let t = TempDir::new("mala");
    let ckp = f.checkpoint.to_str().unwrap();
    let run = wmvl(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            ckp,
            "--n",
            "64",
            "--sampler",
            "mala",
            "--steps",
            "50",
            "--out",
            "s.npy",
        ],
    )
    .ok();
    let rate: f64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("MALA acceptance rate "))
        .unwrap_or_else(|| panic!("no acceptance rate in {run:#?}"))
        .trim()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&rate), "acceptance rate {rate}");
    let m = load_npy(t.path("s.npy")).unwrap();
    assert_eq!((m.rows, m.cols), (64, 2));
    assert!(m.data.iter().all(|v| v.is_finite()));
}

#[test]
fn an_output_may_not_overwrite_an_input() {
    let t = workdir("same-path");
    let d = &t.0;
    let before = fs::read(t.path("model.safetensors")).unwrap();
    let run = wmvl(
        d,
        &[
            "eval",
            "--checkpoint",
            "model.safetensors",
            "--data",
            "data.npy",
            "--objective",
            "mvl",
            "--grad-out",
            "model.safetensors",
        ],
    );
    assert_fails(
        &run,
        &["model.safetensors", "both an input and an output"],
        &[],
    );
    assert_eq!(
        fs::read(t.path("model.safetensors")).unwrap(),
        before,
        "the checkpoint was changed"
    );
    let before = fs::read(t.path("data.npy")).unwrap();
    let run = wmvl(
        d,
        &[
            "score",
            "--checkpoint",
            "model.safetensors",
            "--points",
            "data.npy",
            "--out",
            "data.npy",
        ],
    );
    assert_fails(&run, &["data.npy", "both an input and an output"], &[]);
    assert_eq!(
        fs::read(t.path("data.npy")).unwrap(),
        before,
        "the data were changed"
    );
}

#[test]
fn sampler_settings_are_checked() {
    let t = workdir("sampler-settings");
    let d = &t.0;
    for (flag, value) in [
        ("--init-std", "nan"),
        ("--init-std", "-1"),
        ("--step-size", "0"),
        ("--step-size", "inf"),
    ] {
        let run = wmvl(
            d,
            &[
                "sample",
                "--checkpoint",
                "model.safetensors",
                "--n",
                "8",
                "--out",
                "s.npy",
                flag,
                value,
            ],
        );
        assert_fails(&run, &[flag], &[]);
        assert!(
            !t.path("s.npy").exists(),
            "{flag} {value}: an output was written"
        );
    }
}

/// `--path fused` and `--path tape` print the same loss and write the same gradient (at
/// ε₀ = 1e-2, where the tape's own f32 error is ~1e-5); `--path fused` for what the fused step
/// does not implement, and an unknown path, are refused before anything is written.
#[test]
fn eval_and_train_paths() {
    let t = workdir("paths");
    let eval = |path: &str, grad: &str| {
        wmvl(
            &t.0,
            &[
                "eval",
                "--checkpoint",
                "model.safetensors",
                "--data",
                "data.npy",
                "--noise",
                "noise.npy",
                "--objective",
                "mvl",
                "--eps",
                "1e-2",
                "--grad-out",
                grad,
                "--path",
                path,
            ],
        )
        .ok()
    };
    let fused = eval("fused", "gf.safetensors");
    let tape = eval("tape", "gt.safetensors");
    let (a, b): (f64, f64) = (
        printed_value(&fused, "mvl").parse().unwrap(),
        printed_value(&tape, "mvl").parse().unwrap(),
    );
    assert!((a - b).abs() <= 1e-4 * b.abs(), "fused {a} vs tape {b}");
    let flat = |f: &str| -> Vec<f64> {
        Checkpoint::load(t.path(f))
            .unwrap()
            .tensors
            .iter()
            .flat_map(|t| t.data.iter().map(|&v| v as f64).collect::<Vec<_>>())
            .collect()
    };
    let (gf, gt) = (flat("gf.safetensors"), flat("gt.safetensors"));
    let num: f64 = gf
        .iter()
        .zip(&gt)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den: f64 = gt.iter().map(|y| y * y).sum::<f64>().sqrt();
    assert!(num / den < 1e-4, "gradients differ by {:.1e}", num / den);

    // Refusals, before any output is touched.
    fs::write(t.path("kept.safetensors"), KEEP).unwrap();
    let kept = t.path("kept.safetensors");
    let guarded = [kept.as_path()];
    let run = wmvl(
        &t.0,
        &[
            "eval",
            "--checkpoint",
            "model.safetensors",
            "--data",
            "data.npy",
            "--objective",
            "dsm",
            "--grad-out",
            "kept.safetensors",
            "--path",
            "fused",
        ],
    );
    assert_fails(&run, &["mvl objective", "--path tape"], &guarded);
    let run = wmvl(
        &t.0,
        &[
            "train",
            "--dataset",
            "banana",
            "--act",
            "elu",
            "--steps",
            "5",
            "--out",
            "kept.safetensors",
            "--path",
            "fused",
        ],
    );
    assert_fails(&run, &["elu", "--path tape"], &guarded);
    let run = wmvl(
        &t.0,
        &[
            "train",
            "--dataset",
            "banana",
            "--steps",
            "5",
            "--out",
            "kept.safetensors",
            "--path",
            "gpu",
        ],
    );
    assert_fails(&run, &["--path", "auto, tape, fused"], &guarded);
}
