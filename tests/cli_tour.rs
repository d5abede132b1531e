//! The new user's tour of the command line (issue "Nothing lost, nothing surprising"): one
//! test per defect found there, each failing on the code before the fix. Tiny models and few
//! steps: these run on lavapipe in CI.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use wmvl::checkpoint::Checkpoint;

/// A tiny, quick training run on the banana density: the options every test starts from.
const TINY: &[&str] = &[
    "--dataset",
    "banana",
    "--n",
    "600",
    "--hidden",
    "16,16",
    "--batch",
    "50",
    "--log-every",
    "5",
];

fn train(dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["train"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    wmvl(dir, &args)
}

fn meta(path: &Path, key: &str) -> String {
    Checkpoint::load(path)
        .unwrap()
        .metadata
        .get(key)
        .cloned()
        .unwrap_or_else(|| panic!("{} has no {key:?}", path.display()))
}

fn params(path: &Path) -> Vec<(String, Vec<f32>)> {
    Checkpoint::load(path)
        .unwrap()
        .tensors
        .into_iter()
        .filter(|t| t.name.starts_with("layers."))
        .map(|t| (t.name, t.data))
        .collect()
}

// 1. A failed run destroys the user's checkpoint.
#[test]
fn a_failed_run_keeps_the_existing_checkpoint_and_saves_its_last_state_beside_it() {
    let t = TempDir::new("diverge");
    let out = t.path("m.safetensors");
    fs::write(&out, KEEP).unwrap();
    let run = train(
        &t.0,
        &[
            "--lr",
            "100",
            "--no-sn",
            "--steps",
            "200",
            "--out",
            "m.safetensors",
        ],
    );
    assert_fails(
        &run,
        &["diverged", "m.partial.safetensors", "--resume"],
        &[&out],
    );
    let partial = t.path("m.partial.safetensors");
    assert_eq!(meta(&partial, "status"), "diverged");
    let step: usize = meta(&partial, "step").parse().unwrap();
    assert!(
        step < 200,
        "the partial checkpoint holds the last good step, {step}"
    );
    // Out of memory is refused before any work, the file untouched.
    let run = train(&t.0, &["--hidden", "1000000", "--out", "m.safetensors"]);
    assert_fails(&run, &["narrower --hidden"], &[&out]);
    assert!(!run.stdout.contains("step "), "no training began: {run:#?}");
    // So are zero steps per submission, by the option's name.
    let run = train(&t.0, &["--steps-per-submit", "0", "--out", "m.safetensors"]);
    assert_fails(&run, &["--steps-per-submit must be positive"], &[&out]);
}

// 2. Unwritable outputs are found after training.
#[test]
fn unwritable_outputs_are_refused_before_training() {
    let t = TempDir::new("unwritable");
    let cases: [&[&str]; 3] = [
        &["--out", "/proc/x.safetensors"],
        &["--out", "m.safetensors", "--plot", "/proc/x.png"],
        &["--out", "m.safetensors", "--log", "/proc/x.csv"],
    ];
    for extra in cases {
        let mut args = vec!["--steps", "5"];
        args.extend_from_slice(extra);
        let run = train(&t.0, &args);
        assert_fails(&run, &["/proc"], &[]);
        assert!(
            !run.stdout.contains("step "),
            "refused before training: {run:#?}"
        );
    }
    assert!(!t.path("m.safetensors").exists());
}

// 3. Special files are replaced; symlinks become plain files.
#[cfg(unix)]
#[test]
fn special_files_are_refused_and_symlinks_written_through() {
    let t = TempDir::new("special");
    let fifo = t.path("pipe.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let run = train(&t.0, &["--steps", "5", "--out", "pipe.safetensors"]);
    assert_fails(&run, &["not a regular file"], &[]);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    fs::write(t.path("real.safetensors"), KEEP).unwrap();
    std::os::unix::fs::symlink("real.safetensors", t.path("link.safetensors")).unwrap();
    let run = train(&t.0, &["--steps", "5", "--out", "link.safetensors"]).ok();
    assert!(run.stderr.contains("symlink"), "{run:#?}");
    assert!(fs::symlink_metadata(t.path("link.safetensors"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(meta(&t.path("real.safetensors"), "status"), "finished");
}

// 4. Documented options are rejected; the help and the parser disagree.
#[test]
fn every_documented_option_is_accepted_and_bad_ones_are_refused() {
    let t = TempDir::new("options");
    let help = wmvl(&t.0, &["train", "--help"]).ok();
    for opt in [
        "--lr-final",
        "--act",
        "sigmoid",
        "--resume",
        "--keep",
        "--log",
        "--checkpoint-every",
    ] {
        assert!(
            help.stdout.contains(opt),
            "train --help lacks {opt}:\n{}",
            help.stdout
        );
    }
    // --lr-final, --key=value, 1e1 as a count and --act sigmoid, all in one run.
    let run = train(
        &t.0,
        &[
            "--steps=1e1",
            "--lr-final",
            "1e-3",
            "--act=sigmoid",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    assert!(run.stdout.contains("step 10/10"), "{run:#?}");
    // A value that is an option is not taken as a file name.
    let run = train(&t.0, &["--steps", "5", "--out", "--plot", "x.png"]);
    assert_fails(&run, &["--out"], &[]);
    assert!(!t.path("--plot").exists());
    let run = train(&t.0, &["--steps", "1.5", "--out", "m.safetensors"]);
    assert_fails(&run, &["whole number"], &[]);
}

// 5. Divergence without NaN counts as success.
#[test]
fn a_loss_beyond_all_scale_is_divergence() {
    let t = TempDir::new("blowup");
    let run = train(
        &t.0,
        &["--lr", "100", "--steps", "200", "--out", "m.safetensors"],
    );
    assert_fails(&run, &["diverged"], &[]);
    assert!(
        !t.path("m.safetensors").exists(),
        "a diverged run writes no --out"
    );
}

// 6. Unbounded memory; --batch larger than the data.
#[test]
fn batch_larger_than_the_data_is_refused() {
    let t = TempDir::new("batch");
    let run = train(&t.0, &["--batch", "100000", "--out", "m.safetensors"]);
    assert_fails(&run, &["--batch 100000", "training rows"], &[]);
}

/// Starts `wmvl args` in `dir`, waits until a line of its stderr (or stdout) contains `cue`,
/// sends SIGINT, and returns the finished run.
#[cfg(unix)]
fn interrupt_after(dir: &Path, args: &[&str], cue: &str, on_stdout: bool) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmvl"));
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", runtime_dir());
    }
    let mut child = cmd.spawn().unwrap();
    let (watched, other) = if on_stdout {
        (
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        )
    } else {
        (
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        )
    };
    let other = std::thread::spawn(move || std::io::read_to_string(other).unwrap_or_default());
    let mut seen = String::new();
    let mut lines = BufReader::new(watched).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(cue) {
            break;
        }
    }
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    let other = other.join().unwrap();
    let (stdout, stderr) = if on_stdout {
        (seen, other)
    } else {
        (other, seen)
    };
    Run {
        args: args.join(" "),
        code: status.code(),
        stdout,
        stderr,
    }
}

#[cfg(unix)]
#[test]
fn sampling_streams_with_progress_and_ctrl_c_leaves_no_file() {
    let t = TempDir::new("sample-int");
    train(&t.0, &["--steps", "10", "--out", "m.safetensors"]).ok();
    fs::write(t.path("s.npy"), KEEP).unwrap();
    // Ten million chains: the old sampler tried to hold them all (and printed nothing).
    let run = interrupt_after(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            "m.safetensors",
            "--n",
            "1e7",
            "--steps",
            "2",
            "--out",
            "s.npy",
        ],
        "left",
        false,
    );
    assert_eq!(run.code, Some(130), "{run:#?}");
    assert!(
        run.stderr.contains("samples/s") || run.stderr.contains("/s"),
        "{run:#?}"
    );
    assert_eq!(fs::read(t.path("s.npy")).unwrap(), KEEP);
    let leftovers: Vec<_> = fs::read_dir(&t.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

// Ctrl-C during training, then --resume: the same parameters as a run never interrupted.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_partial_run_that_resumes_exactly() {
    let t = TempDir::new("resume");
    let common = ["--steps", "400", "--log-every", "2", "--seed", "3"];
    let mut args = vec!["train"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--out", "m.safetensors"]);
    fs::write(t.path("m.safetensors"), KEEP).unwrap();
    let run = interrupt_after(&t.0, &args, "step 20/400", true);
    assert_eq!(run.code, Some(130), "{run:#?}");
    assert!(
        run.stderr.contains("--resume m.partial.safetensors"),
        "{run:#?}"
    );
    assert_eq!(
        fs::read(t.path("m.safetensors")).unwrap(),
        KEEP,
        "--out untouched"
    );
    let partial = t.path("m.partial.safetensors");
    assert_eq!(meta(&partial, "status"), "interrupted");
    let stopped: usize = meta(&partial, "step").parse().unwrap();
    assert!(stopped < 400);

    // Resume: the saved options are replayed (only --out is given again).
    wmvl(
        &t.0,
        &[
            "train",
            "--resume",
            "m.partial.safetensors",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    // The same run without interruption.
    let mut args = vec!["train"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--out", "straight.safetensors"]);
    wmvl(&t.0, &args).ok();
    let (a, b) = (
        params(&t.path("m.safetensors")),
        params(&t.path("straight.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for ((na, va), (_, vb)) in a.iter().zip(&b) {
        let worst = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs() / x.abs().max(1e-3))
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{na}: resumed differs from straight by {worst:e}"
        );
    }
}

// 7. What is saved is not what is printed.
#[test]
fn the_saved_step_is_the_printed_step() {
    let t = TempDir::new("saved-step");
    // Held-out data from the same density with patience 1: some evaluation fails to improve.
    let run = train(
        &t.0,
        &[
            "--steps",
            "60",
            "--eval-every",
            "5",
            "--patience",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let printed: usize = run
        .stdout
        .lines()
        .find_map(|l| l.split("the parameters after step ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no saved-step line: {run:#?}"));
    assert_eq!(meta(&t.path("m.safetensors"), "step"), printed.to_string());
    if run.stdout.contains("early stop") {
        let best = run
            .stdout
            .lines()
            .find_map(|l| l.split("keeping step ").nth(1))
            .unwrap();
        assert_eq!(best.trim(), printed.to_string());
    }
    // --keep best saves the best evaluation's step, and says so.
    let run = train(
        &t.0,
        &[
            "--steps",
            "30",
            "--eval-every",
            "5",
            "--keep",
            "best",
            "--out",
            "b.safetensors",
        ],
    )
    .ok();
    let best_line = run
        .stdout
        .lines()
        .find(|l| l.contains("best held-out"))
        .unwrap();
    let best_step = best_line.rsplit("at step ").next().unwrap().trim();
    assert_eq!(meta(&t.path("b.safetensors"), "step"), best_step);
}

// 8. Checkpoints are not byte-reproducible.
#[test]
fn identical_runs_write_identical_files() {
    let t = TempDir::new("bytes");
    train(
        &t.0,
        &["--steps", "10", "--out", "a.safetensors", "--log", "a.csv"],
    )
    .ok();
    train(&t.0, &["--steps", "10", "--out", "b.safetensors"]).ok();
    assert_eq!(
        fs::read(t.path("a.safetensors")).unwrap(),
        fs::read(t.path("b.safetensors")).unwrap()
    );
    let log = fs::read_to_string(t.path("a.csv")).unwrap();
    assert!(log.starts_with("step,loss,heldout,seconds\n"), "{log}");
    assert_eq!(log.lines().count(), 1 + 2, "{log}");
}

// 9. Noise: Mesa's complaint, internal names, silently ignored settings.
#[test]
fn environment_problems_are_said_plainly() {
    let t = TempDir::new("env");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmvl"));
    let out = cmd
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");

    let run = wmvl_env(&t.0, &["info"], &[("WGPU_BACKEND", "foo")]);
    assert_fails(&run, &["WGPU_BACKEND", "vulkan"], &[]);
    assert!(!run.stderr.contains("Backends("), "{run:#?}");
    let run = wmvl_env(&t.0, &["info"], &[("WMVL_KERNELS", "foo")]);
    assert_fails(&run, &["WMVL_KERNELS"], &[]);
}

#[test]
fn a_sampler_that_leaves_the_finite_numbers_does_not_say_training() {
    let t = TempDir::new("sampler-nan");
    train(&t.0, &["--steps", "5", "--out", "m.safetensors"]).ok();
    let run = wmvl(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            "m.safetensors",
            "--n",
            "10",
            "--steps",
            "50",
            "--step-size",
            "1e30",
            "--out",
            "s.npy",
        ],
    );
    assert_fails(&run, &["--step-size"], &[]);
    assert!(!run.stderr.contains("training"), "{run:#?}");
}

/// A scalar energy E(x) = sign · Σᵢ [softplus(xᵢ) + softplus(−xᵢ)] ≈ sign · ‖x‖₁ far out:
/// with sign −1 lower far from the data than on it, so exp(−E) cannot be normalised; with
/// +1 a proper density. Saved with standard-normal "training rows".
fn l1_model(path: &Path, sign: f32) {
    use wmvl::checkpoint::NamedTensor;
    use wmvl::model::{Arch, EnergyKind, HostParams};
    let arch = Arch {
        kind: EnergyKind::Scalar,
        dim: 2,
        hidden: vec![4],
        act: wmvl::model::act_from_name("softplus").unwrap(),
        spectral_norm: false,
    };
    let hp = HostParams {
        weights: vec![
            (2, 4, vec![1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0]),
            (4, 1, vec![sign; 4]),
        ],
        biases: vec![(1, 4, vec![0.0; 4]), (1, 1, vec![0.0])],
        sn_u: vec![None, None],
    };
    let mut ck = Checkpoint::new();
    ck.tensors = hp.to_named().unwrap();
    let mut rng = wmvl::rng::HostRng::new(1);
    let rows: Vec<f32> = (0..2 * 256).map(|_| rng.normal() as f32).collect();
    ck.tensors
        .push(NamedTensor::new("data.rows", 256, 2, rows).unwrap());
    for (k, v) in arch.to_metadata() {
        ck.metadata.insert(k, v);
    }
    ck.save(path).unwrap();
}

// 10. A learned density that cannot be normalised goes unnoticed.
#[test]
fn a_density_that_cannot_be_normalised_is_warned_about() {
    let t = TempDir::new("tails");
    l1_model(&t.path("bad.safetensors"), -1.0);
    l1_model(&t.path("ok.safetensors"), 1.0);
    let run = wmvl(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            "bad.safetensors",
            "--n",
            "10",
            "--steps",
            "1",
            "--out",
            "s.npy",
        ],
    )
    .ok();
    assert!(
        run.stderr.contains("warning") && run.stderr.contains("normalis"),
        "{run:#?}"
    );
    // Training that ends on such a model says so too (a warm start and one tiny step).
    let run = train(
        &t.0,
        &[
            "--init-from",
            "bad.safetensors",
            "--hidden",
            "4",
            "--act",
            "softplus",
            "--energy",
            "scalar",
            "--no-sn",
            "--steps",
            "1",
            "--lr",
            "1e-9",
            "--path",
            "tape",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    assert!(
        run.stderr.contains("warning") && run.stderr.contains("normalis"),
        "{run:#?}"
    );
    // A normalisable one passes quietly. (Score-net models trained briefly by MVL often do
    // not: their energy is only shaped where the data are.)
    let run = wmvl(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            "ok.safetensors",
            "--n",
            "10",
            "--steps",
            "1",
            "--out",
            "s2.npy",
        ],
    )
    .ok();
    assert!(!run.stderr.contains("warning"), "{run:#?}");
}

// Expected of such a tool: --plot for the user's own 2-D data; refused for other widths.
#[test]
fn plot_of_the_users_own_data() {
    let t = TempDir::new("plot-data");
    let m = wmvl::data::Toy::Ring.sample_matrix(400, 3);
    wmvl::data::save_npy(t.path("ring.npy"), m.rows, m.cols, &m.data).unwrap();
    let run = wmvl(
        &t.0,
        &[
            "train",
            "--data",
            "ring.npy",
            "--hidden",
            "16,16",
            "--batch",
            "50",
            "--steps",
            "5",
            "--out",
            "m.safetensors",
            "--plot",
            "fig.png",
        ],
    )
    .ok();
    assert!(run.stdout.contains("wrote fig.png"), "{run:#?}");
    assert_eq!(
        &fs::read(t.path("fig.png")).unwrap()[..8],
        b"\x89PNG\r\n\x1a\n"
    );
    let three: Vec<f32> = (0..300).map(|i| i as f32 / 300.0).collect();
    wmvl::data::save_npy(t.path("three.npy"), 100, 3, &three).unwrap();
    let run = wmvl(
        &t.0,
        &[
            "train",
            "--data",
            "three.npy",
            "--batch",
            "50",
            "--steps",
            "5",
            "--out",
            "m3.safetensors",
            "--plot",
            "fig3.png",
        ],
    );
    assert_fails(&run, &["--plot", "3 columns"], &[]);
    assert!(
        !run.stdout.contains("step "),
        "refused before training: {run:#?}"
    );
}

// 6. score on more rows than one GPU block: streamed in blocks, each row as if alone.
#[test]
fn score_streams_blocks_of_rows() {
    let t = TempDir::new("score-blocks");
    train(&t.0, &["--steps", "5", "--out", "m.safetensors"]).ok();
    let n = 70_000; // more than one block of 65 536 rows
    let mut rng = wmvl::rng::HostRng::new(2);
    let pts: Vec<f32> = (0..2 * n).map(|_| rng.normal() as f32).collect();
    wmvl::data::save_npy(t.path("p.npy"), n, 2, &pts).unwrap();
    let run = wmvl(
        &t.0,
        &[
            "score",
            "--checkpoint",
            "m.safetensors",
            "--points",
            "p.npy",
            "--out",
            "s.npy",
        ],
    )
    .ok();
    assert!(
        run.stderr.contains("rows/s"),
        "progress is reported: {run:#?}"
    );
    let all = wmvl::data::load_npy(t.path("s.npy")).unwrap();
    assert_eq!((all.rows, all.cols), (n, 3));
    let last = n - 1; // in the second block
    wmvl::data::save_npy(t.path("one.npy"), 1, 2, &pts[2 * last..]).unwrap();
    wmvl(
        &t.0,
        &[
            "score",
            "--checkpoint",
            "m.safetensors",
            "--points",
            "one.npy",
            "--out",
            "one_s.npy",
        ],
    )
    .ok();
    let one = wmvl::data::load_npy(t.path("one_s.npy")).unwrap();
    for c in 0..3 {
        let (a, b) = (all.row(last)[c], one.row(0)[c]);
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "column {c}: {a} vs {b}"
        );
    }
}

// 6. A sample file that cannot fit on the disk is refused before any sampling.
#[cfg(unix)]
#[test]
fn an_output_larger_than_the_free_disk_is_refused() {
    let t = TempDir::new("disk");
    train(&t.0, &["--steps", "5", "--out", "m.safetensors"]).ok();
    let run = wmvl(
        &t.0,
        &[
            "sample",
            "--checkpoint",
            "m.safetensors",
            "--n",
            "1e15",
            "--out",
            "s.npy",
        ],
    );
    assert_fails(&run, &["GiB free"], &[]);
    assert!(
        !run.stderr.contains("chain steps"),
        "no sampling began: {run:#?}"
    );
}
