//! Project tasks, run as `cargo xtask <command>` (see the alias in `.cargo/config.toml`).
//!
//! Standard library only, so that it builds in seconds on a fresh machine. Every command first
//! makes sure a GPU adapter can be reached (on Linux: a Vulkan loader and at least one Vulkan
//! driver; Mesa's lavapipe runs on the CPU when there is no GPU), installing Mesa's Vulkan
//! drivers when it is allowed to.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

/// The main job, as arguments to `cargo`. Change this line to change what `cargo xtask run` does;
/// extra arguments given after `run` are appended.
const MAIN_JOB: &[&str] = &["run", "--release", "--example", "banana", "--"];

/// The test suite, as arguments to `cargo`; extra arguments given after `test` are appended.
const TEST_JOB: &[&str] = &["test", "--release", "--workspace"];

/// Debian/Ubuntu packages giving the Vulkan loader and Mesa's Vulkan drivers (lavapipe included).
const APT_PACKAGES: &[&str] = &["libvulkan1", "mesa-vulkan-drivers"];

/// What a user who is not root has to run on Debian/Ubuntu.
const USER_INSTALL: &str = "sudo apt-get install libvulkan1 mesa-vulkan-drivers";

const HELP: &str = "usage: cargo xtask <command> [args...]

commands:
  run    make sure a GPU adapter is reachable, then build (release) and run the main job:
         cargo run --release --bin wmvl -- info   (extra args are appended)
  test   make sure a GPU adapter is reachable, then run the test suite:
         cargo test --release --workspace   (extra args are passed to cargo test)
  setup  only make sure a GPU adapter is reachable: on Linux, look for the Vulkan loader
         (libvulkan.so.1) and a Vulkan driver (ICD json); if they are missing, install
         libvulkan1 and mesa-vulkan-drivers when running as root on Debian/Ubuntu, or
         print the command to run otherwise. macOS and Windows need nothing (Metal/DX12).
  help   print this message

environment:
  WGPU_BACKEND       restrict wgpu's backends (vulkan, metal, dx12, gl); without vulkan in it,
                     the Vulkan check is skipped
  WGPU_ADAPTER_NAME  pick the adapter whose name contains this text
  VK_DRIVER_FILES, VK_ICD_FILENAMES
                     if set, the only Vulkan driver files the loader (and this check) uses
  XDG_RUNTIME_DIR    if unset, set to a private temporary directory for the commands run here";

/// Why a command failed: a message of ours (exit status 1) or a child's exit status.
enum Failure {
    Msg(String),
    Exit(u8),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Msg(m) => f.write_str(m),
            Failure::Exit(c) => write!(f, "exit status {c}"),
        }
    }
}

type Res = Result<(), Failure>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, extra) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => {
            eprintln!("{HELP}");
            return ExitCode::from(2);
        }
    };
    // Removed again when `_runtime` drops, after the last child has exited.
    let _runtime = RuntimeDir::ensure();
    let result = match cmd {
        "run" => ensure_gpu().and_then(|()| cargo(MAIN_JOB, extra)),
        "test" => ensure_gpu().and_then(|()| cargo(TEST_JOB, extra)),
        "setup" if extra.is_empty() => ensure_gpu(),
        "setup" => Err(Failure::Msg(format!(
            "setup takes no arguments (got {extra:?})"
        ))),
        "help" | "-h" | "--help" => {
            println!("{HELP}");
            Ok(())
        }
        other => {
            eprintln!("xtask: unknown command {other:?}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Exit(code)) => ExitCode::from(code),
        Err(Failure::Msg(m)) => {
            eprintln!("xtask: error: {m}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of the xtask package).
fn root() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

/// Run `cargo <args> <extra>` in the workspace root; its exit status becomes ours.
fn cargo(args: &[&str], extra: &[String]) -> Res {
    // Cargo tells the programs it runs which cargo it is; use the same one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(args).args(extra).current_dir(root());
    eprintln!("xtask: running: cargo {}", shell_words(args, extra));
    run_status(&mut cmd, "cargo")
}

fn shell_words(args: &[&str], extra: &[String]) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@%".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    args.iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_status(cmd: &mut Command, what: &str) -> Res {
    let status = cmd
        .status()
        .map_err(|e| Failure::Msg(format!("could not start {what}: {e}")))?;
    match exit_code(status) {
        0 => Ok(()),
        c => Err(Failure::Exit(c)),
    }
}

/// The status to exit with: the child's code, or 128 + signal like a shell; never 0 on failure.
fn exit_code(status: ExitStatus) -> u8 {
    if status.success() {
        return 0;
    }
    let code = status.code().or_else(|| signal(status).map(|s| 128 + s));
    match code {
        Some(c) if c & 0xff != 0 => (c & 0xff) as u8,
        _ => 1,
    }
}

#[cfg(unix)]
fn signal(status: ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal(_: ExitStatus) -> Option<i32> {
    None
}

// ---------------------------------------------------------------------------------------------
// XDG_RUNTIME_DIR: Mesa's lavapipe prints "XDG_RUNTIME_DIR is invalid or not set" without it.

/// A private temporary XDG_RUNTIME_DIR, created when the variable is unset or not a directory,
/// and removed on drop.
struct RuntimeDir(Option<PathBuf>);

impl RuntimeDir {
    fn ensure() -> RuntimeDir {
        if !cfg!(target_os = "linux") {
            return RuntimeDir(None);
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            if !d.is_empty() && Path::new(&d).is_dir() {
                return RuntimeDir(None);
            }
        }
        match make_private_dir() {
            Ok(dir) => {
                // Edition 2021: set_var is safe; we are single-threaded here.
                std::env::set_var("XDG_RUNTIME_DIR", &dir);
                RuntimeDir(Some(dir))
            }
            Err(e) => {
                eprintln!("xtask: warning: could not create a temporary XDG_RUNTIME_DIR: {e}");
                RuntimeDir(None)
            }
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn make_private_dir() -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("xtask-runtime-{}-{nanos:x}", std::process::id()));
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    // create (not create_all): fails if the path already exists, so nobody can pre-plant it.
    b.create(&dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// The GPU check.

fn ensure_gpu() -> Res {
    if !cfg!(target_os = "linux") {
        // macOS ships Metal and Windows DX12 with the OS; other systems: wgpu will say.
        return Ok(());
    }
    if let Ok(b) = std::env::var("WGPU_BACKEND") {
        if !backend_list_has_vulkan(&b) {
            eprintln!(
                "xtask: WGPU_BACKEND={b:?} excludes Vulkan; skipping the Vulkan driver check"
            );
            return Ok(());
        }
    }
    let probe = Probe::run();
    if probe.ok() {
        eprintln!("xtask: {}", probe.found());
        return Ok(());
    }
    if probe.loader.is_some() {
        if let Some(m) = probe.override_problem() {
            return Err(Failure::Msg(m));
        }
    }
    let missing = probe.missing();
    if !Path::new("/etc/debian_version").exists() {
        return Err(Failure::Msg(format!(
            "{missing}\ninstall your distribution's Vulkan loader and Mesa Vulkan drivers \
             (lavapipe runs on the CPU when there is no GPU), e.g.\n    \
             Fedora: sudo dnf install vulkan-loader mesa-vulkan-drivers\n    \
             Arch:   sudo pacman -S vulkan-icd-loader vulkan-swrast\nthen run this command again"
        )));
    }
    if !is_root() {
        eprintln!("xtask: {missing}");
        eprintln!(
            "xtask: install the Vulkan loader and Mesa's Vulkan drivers (lavapipe runs on the \
             CPU when there is no GPU) with this command, then run this one again:"
        );
        eprintln!("    {USER_INSTALL}");
        return Err(Failure::Exit(1));
    }
    eprintln!("xtask: {missing}");
    eprintln!("xtask: installing the Vulkan loader and Mesa's Vulkan drivers (lavapipe)");
    apt_install()?;
    let probe = Probe::run();
    if probe.ok() {
        eprintln!("xtask: {}", probe.found());
        return Ok(());
    }
    Err(Failure::Msg(probe.override_problem().unwrap_or_else(
        || {
            format!(
                "{} even after installing {}",
                probe.missing(),
                APT_PACKAGES.join(" ")
            )
        },
    )))
}

/// Does a `WGPU_BACKEND` value (comma-separated, as wgpu parses it) include Vulkan?
fn backend_list_has_vulkan(list: &str) -> bool {
    list.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .any(|s| s == "vulkan" || s == "vk")
}

fn is_root() -> bool {
    if let Ok(out) = Command::new("id").arg("-u").stderr(Stdio::null()).output() {
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim() == "0";
        }
    }
    // No `id`: ask the kernel.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `apt-get update` if the package lists do not know the packages (or the install fails on
/// stale lists), then `apt-get install -y`.
fn apt_install() -> Res {
    let known = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(APT_PACKAGES)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let mut updated = false;
    if !known {
        apt_update()?;
        updated = true;
    }
    match apt_get_install() {
        Err(_) if !updated => {
            eprintln!("xtask: install failed; refreshing the package lists and trying again");
            apt_update()?;
            apt_get_install()
        }
        r => r,
    }
}

fn apt_update() -> Res {
    eprintln!("xtask: running: apt-get update");
    run_status(Command::new("apt-get").arg("update"), "apt-get")
}

fn apt_get_install() -> Res {
    eprintln!(
        "xtask: running: DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
        APT_PACKAGES.join(" ")
    );
    run_status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(APT_PACKAGES),
        "apt-get",
    )
}

/// What the Vulkan loader would find.
struct Probe {
    /// Where libvulkan.so.1 is.
    loader: Option<PathBuf>,
    /// Driver manifests (ICD json files) the loader would read.
    icds: Vec<PathBuf>,
    /// `(variable, value)` when VK_DRIVER_FILES / VK_ICD_FILENAMES replace the search.
    icd_override: Option<(&'static str, String)>,
}

impl Probe {
    fn run() -> Probe {
        let (icds, icd_override) = find_icds();
        Probe {
            loader: find_loader(),
            icds,
            icd_override,
        }
    }

    fn ok(&self) -> bool {
        self.loader.is_some() && !self.icds.is_empty()
    }

    fn found(&self) -> String {
        let names: Vec<String> = self
            .icds
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or(p.as_os_str())
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        format!(
            "Vulkan loader {}, drivers: {}",
            self.loader.as_deref().unwrap_or(Path::new("?")).display(),
            names.join(", ")
        )
    }

    fn missing(&self) -> String {
        let mut what = Vec::new();
        if self.loader.is_none() {
            what.push("the Vulkan loader (libvulkan.so.1)".to_string());
        }
        if self.icds.is_empty() {
            what.push(match &self.icd_override {
                Some((var, val)) => format!("a Vulkan driver file named by {var}={val:?}"),
                None => {
                    "a Vulkan driver (ICD json in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d)"
                        .to_string()
                }
            });
        }
        format!("no GPU adapter reachable: missing {}", what.join(" and "))
    }

    /// The message when a driver-file variable names nothing: installing packages cannot help.
    fn override_problem(&self) -> Option<String> {
        match &self.icd_override {
            Some((var, val)) if self.icds.is_empty() => Some(format!(
                "{var}={val:?} names no existing Vulkan driver file (ICD json), and it replaces \
                 the loader's search of /usr/share/vulkan/icd.d and /etc/vulkan/icd.d; unset \
                 {var}, or point it at an existing *_icd.json"
            )),
            _ => None,
        }
    }
}

/// libvulkan.so.1 through the dynamic linker's cache, else in LD_LIBRARY_PATH and the usual
/// library directories.
fn find_loader() -> Option<PathBuf> {
    for ldconfig in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if let Ok(out) = Command::new(ldconfig)
            .arg("-p")
            .stderr(Stdio::null())
            .output()
        {
            if out.status.success() {
                if let Some(p) = parse_ldconfig(&String::from_utf8_lossy(&out.stdout)) {
                    return Some(p);
                }
                break;
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for base in ["/usr/lib", "/lib", "/usr/local/lib"] {
        dirs.push(PathBuf::from(base));
        if let Ok(rd) = std::fs::read_dir(base) {
            // Multiarch directories such as /usr/lib/x86_64-linux-gnu.
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains("-linux-"))
                    .map(|e| e.path()),
            );
        }
    }
    dirs.extend(["/usr/lib64", "/lib64"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("libvulkan.so.1"))
        .find(|p| p.exists())
}

/// The path of libvulkan.so.1 in `ldconfig -p` output.
fn parse_ldconfig(out: &str) -> Option<PathBuf> {
    out.lines().find_map(|l| {
        let (name, path) = l.split_once("=>")?;
        let lib = name.split_whitespace().next()?;
        (lib == "libvulkan.so.1").then(|| PathBuf::from(path.trim()))
    })
}

/// The driver manifests the loader would use: those named by VK_DRIVER_FILES (or the older
/// VK_ICD_FILENAMES) if set, else the json files in its search directories; plus those named
/// by VK_ADD_DRIVER_FILES.
fn find_icds() -> (Vec<PathBuf>, Option<(&'static str, String)>) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut icds = Vec::new();
    let icd_override = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]
        .into_iter()
        .find_map(|k| var(k).map(|v| (k, v)));
    match &icd_override {
        Some((_, list)) => icds.extend(listed_icds(list)),
        None => {
            for dir in icd_search_dirs() {
                icds.extend(json_files(&dir));
            }
        }
    }
    if let Some(list) = var("VK_ADD_DRIVER_FILES") {
        icds.extend(listed_icds(&list));
    }
    (icds, icd_override)
}

/// Files in a colon-separated list, directories standing for the json files in them.
fn listed_icds(list: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::env::split_paths(OsStr::new(list)) {
        if entry.is_file() {
            out.push(entry);
        } else if entry.is_dir() {
            out.extend(json_files(&entry));
        }
    }
    out
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension() == Some(OsStr::new("json")) && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The Vulkan loader's driver search path on Linux: XDG config dirs, /etc, XDG data dirs.
fn icd_search_dirs() -> Vec<PathBuf> {
    let env_paths = |k: &str, default: &str| -> Vec<PathBuf> {
        match std::env::var_os(k).filter(|v| !v.is_empty()) {
            Some(v) => std::env::split_paths(&v).collect(),
            None => std::env::split_paths(OsStr::new(default)).collect(),
        }
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut bases = Vec::new();
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(v) => bases.push(PathBuf::from(v)),
        None => bases.extend(home.as_ref().map(|h| h.join(".config"))),
    }
    bases.extend(env_paths("XDG_CONFIG_DIRS", "/etc/xdg"));
    bases.push(PathBuf::from("/etc"));
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(v) => bases.push(PathBuf::from(v)),
        None => bases.extend(home.as_ref().map(|h| h.join(".local/share"))),
    }
    bases.extend(env_paths("XDG_DATA_DIRS", "/usr/local/share:/usr/share"));
    bases.push(PathBuf::from("/usr/share"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for b in bases {
        let d = b.join("vulkan/icd.d");
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldconfig_output_is_parsed() {
        let out = "1234 libs found in cache `/etc/ld.so.cache'\n\
            \tlibvulkan_lvp.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libvulkan_lvp.so\n\
            \tlibvulkan.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libvulkan.so.1\n";
        assert_eq!(
            parse_ldconfig(out),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libvulkan.so.1"))
        );
        assert_eq!(
            parse_ldconfig("\tlibvulkan.so (libc6) => /x/libvulkan.so\n"),
            None
        );
    }

    #[test]
    fn backend_lists() {
        assert!(backend_list_has_vulkan("vulkan"));
        assert!(backend_list_has_vulkan("gl, Vulkan"));
        assert!(backend_list_has_vulkan("vk"));
        assert!(!backend_list_has_vulkan("gl"));
        assert!(!backend_list_has_vulkan("metal,dx12"));
    }

    #[test]
    fn missing_driver_files_are_not_found() {
        assert!(listed_icds("/nonexistent/a.json:/nonexistent/dir").is_empty());
        let p = Probe {
            loader: Some(PathBuf::from("/lib/libvulkan.so.1")),
            icds: vec![],
            icd_override: Some(("VK_ICD_FILENAMES", "/nonexistent.json".into())),
        };
        assert!(!p.ok());
        assert!(p
            .override_problem()
            .unwrap()
            .contains("unset VK_ICD_FILENAMES"));
    }

    #[test]
    fn quoting() {
        let extra = vec!["a b".to_string(), "it's".to_string()];
        assert_eq!(
            shell_words(&["test", "--release"], &extra),
            r"test --release 'a b' 'it'\''s'"
        );
    }

    #[cfg(unix)]
    #[test]
    fn exit_codes_propagate() {
        let st = |s: &str| Command::new("sh").args(["-c", s]).status().unwrap();
        assert_eq!(exit_code(st("exit 0")), 0);
        assert_eq!(exit_code(st("exit 3")), 3);
        assert_eq!(exit_code(st("exit 101")), 101);
        assert_eq!(exit_code(st("kill -9 $$")), 137);
    }
}
