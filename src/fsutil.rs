//! Writing files so that a failure never destroys what was there: one place for checkpoints,
//! arrays and figures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a fresh temporary file next to `path` (same filesystem), syncs it and
/// renames it over `path`. On any failure the temporary file is removed and an existing
/// `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::Io(format!("{what} {}: {e}", path.display()));
    let file_name = path.file_name().ok_or_else(|| {
        Error::Io(format!(
            "cannot write {}: the path does not name a file",
            path.display()
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A name no other writer uses: process id plus a per-process counter; create_new makes
    // a stale file from an earlier process with the same id an error, not a clobber.
    let tmp = loop {
        let candidate = dir.join(format!(
            ".{}.{}.{}.tmp",
            file_name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(f) => break (candidate, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("cannot create a temporary file for", e)),
        }
    };
    let (tmp, mut f) = tmp;
    let result = (|| {
        f.write_all(bytes).map_err(|e| io("cannot write", e))?;
        f.sync_all().map_err(|e| io("cannot flush", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io("cannot move the temporary file onto", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Best effort: persist the rename itself (directories can be opened on Unix only).
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
