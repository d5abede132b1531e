//! Output files, checked before any work: a run must not discover after an hour of training
//! that it cannot write its result, and must never turn a device or a symlink into a file.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use wmvl::Error;

/// Where an output given as `path` will really be written, refusing what cannot be written:
/// a wrong extension, a folder, a device/pipe/socket, a missing or unwritable folder. A
/// symlink is written through to its target (said on stderr), which must be a regular file
/// or not exist yet.
pub fn prepare(path: &Path, ext: &str, what: &str) -> Result<PathBuf, Error> {
    if path.extension().and_then(|e| e.to_str()) != Some(ext) {
        return Err(Error::Invalid(format!(
            "{what} {}: must be a .{ext} file",
            path.display()
        )));
    }
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let link = fs::read_link(path)
                .map_err(|e| Error::Io(format!("{what} {}: {e}", path.display())))?;
            let target = match path.parent() {
                Some(dir) if link.is_relative() => dir.join(&link),
                _ => link,
            };
            eprintln!(
                "wmvl: {what} {} is a symlink; writing to its target {}",
                path.display(),
                target.display()
            );
            return prepare_real(&target, what);
        }
        _ => path.to_path_buf(),
    };
    prepare_real(&target, what)
}

fn prepare_real(path: &Path, what: &str) -> Result<PathBuf, Error> {
    let p = path.display();
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err(Error::Io(format!("{what} {p} is a folder"))),
        Ok(m) if !m.is_file() => {
            return Err(Error::Io(format!(
                "{what} {p} is not a regular file (a device, pipe or socket); wmvl writes regular files only: choose another path"
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(format!("{what} {p}: {e}"))),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::Io(format!(
            "{what} {p}: the folder {} does not exist",
            dir.display()
        )));
    }
    // The only reliable test of writability (read-only mounts, /proc, permissions, quotas):
    // create a file there, as the atomic write will, and remove it.
    let probe = dir.join(format!(".wmvl-probe-{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(Error::Io(format!(
                "{what} {p}: cannot write in the folder {}: {e}",
                dir.display()
            )))
        }
    }
    Ok(path.to_path_buf())
}

/// Refuse an output that is also an input, or two outputs that are the same file.
pub fn distinct(outputs: &[&Path], inputs: &[&Path]) -> Result<(), Error> {
    let canon = |p: &Path| -> PathBuf {
        // The output may not exist yet: compare its canonical folder plus its name.
        match (p.parent(), p.file_name()) {
            (Some(d), Some(n)) => fs::canonicalize(if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            })
            .map(|d| d.join(n))
            .unwrap_or_else(|_| p.to_path_buf()),
            _ => p.to_path_buf(),
        }
    };
    for (i, o) in outputs.iter().enumerate() {
        let co = canon(o);
        for inp in inputs {
            if fs::canonicalize(inp).ok().as_ref() == Some(&co) {
                return Err(Error::Invalid(format!(
                    "{} is both an input and an output; write the output elsewhere",
                    o.display()
                )));
            }
        }
        for o2 in &outputs[i + 1..] {
            if canon(o2) == co {
                return Err(Error::Invalid(format!(
                    "{} is given for two outputs; use different paths",
                    o.display()
                )));
            }
        }
    }
    Ok(())
}

/// Refuse an output of `bytes` bytes where its file system has less room (Unix; elsewhere
/// not checked): better than failing hours into a run, when the disk fills up.
pub fn check_space(path: &Path, bytes: u64, what: &str) -> Result<(), Error> {
    let Some(free) = free_bytes(path) else {
        return Ok(());
    };
    if bytes > free {
        return Err(Error::Io(format!(
            "{what} {} would take {:.1} GiB; its file system has {:.1} GiB free: write it elsewhere or ask for less",
            path.display(),
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_: &Path) -> Option<u64> {
    None
}
