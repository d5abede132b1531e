//! Writing files so that a failure never destroys what was there: one place for checkpoints,
//! arrays and figures.
//!
//! Everything is written to a fresh temporary file beside the target (same directory, so
//! the same filesystem), synced, and renamed over the target only once complete. The
//! temporary file is named `.<file name>.<process id>.<counter>.tmp`; it is removed on any
//! failure, and when a [`TempFile`] is dropped before [`TempFile::commit`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a fresh temporary file next to `path` (same filesystem), syncs it and
/// renames it over `path`. On any failure the temporary file is removed and an existing
/// `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::create(path)?;
    tmp.write_all(bytes)?;
    tmp.commit()
}

/// A temporary file beside a target path that replaces the target only on
/// [`TempFile::commit`]. Dropping it uncommitted removes the temporary file, so an
/// interrupted or failed write never touches the target.
pub struct TempFile {
    /// `None` once committed (or while committing).
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
}

impl TempFile {
    /// Creates the temporary file for `path`. Fails (and creates nothing) when `path` does
    /// not name a file or its directory is missing or not writable.
    pub fn create(path: &Path) -> Result<TempFile> {
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
        // A name no other writer uses: process id plus a per-process counter; create_new
        // makes a stale file from an earlier process with the same id an error, not a
        // clobber.
        loop {
            let tmp = dir.join(format!(
                ".{}.{}.{}.tmp",
                file_name.to_string_lossy(),
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(f) => {
                    return Ok(TempFile {
                        out: Some(BufWriter::with_capacity(1 << 16, f)),
                        tmp,
                        target: path.to_path_buf(),
                        dir,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::Io(format!(
                        "cannot create a temporary file for {}: {e}; check that the directory \
                         {} exists and is writable",
                        path.display(),
                        dir.display()
                    )))
                }
            }
        }
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::Io(format!("{what} {}: {e}", self.target.display()))
    }

    /// Appends `bytes` (buffered).
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        // `out` is only taken by commit, which consumes self.
        let r = match self.out.as_mut() {
            Some(out) => out.write_all(bytes),
            None => Ok(()),
        };
        r.map_err(|e| self.io("cannot write", e))
    }

    /// Flushes and syncs the temporary file and renames it over the target. On failure
    /// the temporary file is removed (by drop) and the target is left as it was.
    pub fn commit(mut self) -> Result<()> {
        if let Some(out) = self.out.take() {
            let file = out
                .into_inner()
                .map_err(|e| self.io("cannot write", e.into_error()))?;
            file.sync_all().map_err(|e| self.io("cannot flush", e))?;
        }
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|e| self.io("cannot move the temporary file onto", e))?;
        // Renamed: nothing left for drop to remove.
        self.tmp = PathBuf::new();
        // Best effort: persist the rename itself (directories can be opened on Unix only).
        #[cfg(unix)]
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Close before removing (Windows cannot remove an open file).
        drop(self.out.take());
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
