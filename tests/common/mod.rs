//! Helpers shared by the command-line tests: a fresh folder per test, running the binary,
//! and asserting clean failures that leave existing outputs untouched.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use wmvl::rng::HostRng;

/// A fresh, empty directory under the system temp dir; removed on drop unless the test failed
/// (then it is kept for inspection and its path is printed).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wmvl-cli-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub args: String,
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "wmvl {} failed\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }
}

/// `temp_dir/{prefix}{pid}`, created fresh. Statics are never dropped, so these per-process
/// folders outlive the test binary; on Linux the ones left by finished runs (whose process
/// no longer exists) are removed here.
pub fn process_dir(prefix: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    #[cfg(target_os = "linux")]
    if let Ok(entries) = fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(prefix) {
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory for `XDG_RUNTIME_DIR` when the environment has none (lavapipe complains
/// about a missing one on every start otherwise).
pub fn runtime_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = process_dir("wmvl-cli-xdg-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        }
        dir
    })
}

/// Runs `wmvl args…` in `dir` with the extra environment `env`.
pub fn wmvl_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmvl"));
    cmd.args(args).current_dir(dir);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", runtime_dir());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot start the wmvl binary");
    Run {
        args: args.join(" "),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn wmvl(dir: &Path, args: &[&str]) -> Run {
    wmvl_env(dir, args, &[])
}

/// Bytes put into an output file before a run that must fail: they must still be there after.
pub const KEEP: &[u8] = b"existing output: must survive a failed run\n";

/// Asserts that `run` failed cleanly: a non-zero exit code (not a panic's 101, not a signal),
/// no panic message, an error line on stderr containing every one of `needles`, and every
/// `guarded` file still holding [`KEEP`].
pub fn assert_fails(run: &Run, needles: &[&str], guarded: &[&Path]) {
    let ctx = format!(
        "wmvl {}\nexit code {:?}\nstdout:\n{}\nstderr:\n{}",
        run.args, run.code, run.stdout, run.stderr
    );
    match run.code {
        Some(0) => panic!("expected a failure\n{ctx}"),
        Some(101) | None => panic!("expected a clean error exit, not a panic or a signal\n{ctx}"),
        Some(_) => {}
    }
    assert!(!run.stderr.contains("panicked"), "panic message\n{ctx}");
    let err = run
        .stderr
        .lines()
        .find(|l| l.starts_with("wmvl: ") && !l.contains("llvmpipe"))
        .or_else(|| run.stderr.lines().next())
        .unwrap_or_default();
    println!("wmvl {} → {:?}: {err}", run.args, run.code);
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "the error does not mention {n:?}: {err:?}\n{ctx}"
        );
    }
    for g in guarded {
        assert_eq!(
            fs::read(g).ok().as_deref(),
            Some(KEEP),
            "{} was changed by a failed run\n{ctx}",
            g.display()
        );
    }
}

/// Writes `data` as a v1.0 `<f4` `.npy` file by hand (no checks, so NaN and Inf go in as they
/// are), dropping the last `cut` bytes.
pub fn write_raw_npy(path: &Path, rows: usize, cols: usize, data: &[f32], cut: usize) {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    header.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.truncate(bytes.len() - cut);
    fs::write(path, bytes).unwrap();
}

/// `rows × cols` standard-normal draws (row-major f32).
pub fn normals(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = HostRng::new(seed);
    (0..rows * cols).map(|_| rng.normal() as f32).collect()
}

/// The value in `eval`'s result line `"{objective} = VALUE ± SE (…)"`, as printed.
pub fn printed_value<'a>(run: &'a Run, objective: &str) -> &'a str {
    let prefix = format!("{objective} = ");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no '{prefix}…' line in the output of {run:#?}"))
}

/// A score-net energy with no hidden layer, E(x) = xᵀ(a·I)x + b·x (for a = ½: the Gaussian
/// at −b with unit covariance): a model whose density is known exactly.
pub fn quadratic_model(
    g: &'static wmvl::gpu::Gpu,
    a: f32,
    b: [f32; 2],
) -> wmvl::model::Model<&'static wmvl::gpu::Gpu> {
    use wmvl::model::{Arch, EnergyKind, HostParams, Model};
    let arch = Arch {
        kind: EnergyKind::ScoreNet,
        dim: 2,
        hidden: vec![],
        act: wmvl::ops::Fun::Tanh,
        spectral_norm: false,
    };
    let hp = HostParams {
        weights: vec![(2, 2, vec![a, 0.0, 0.0, a])],
        biases: vec![(1, 2, b.to_vec())],
        sn_u: vec![None],
    };
    Model::from_host(arch, &hp, |r, c, d| g.upload(r, c, d)).unwrap()
}
