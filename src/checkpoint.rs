//! Model-agnostic checkpoints: named 2-D `f32` tensors plus string metadata, stored as a
//! [safetensors](https://github.com/huggingface/safetensors) file.
//!
//! A checkpoint is self-describing: its metadata (the safetensors `__metadata__` table,
//! string → string) carries the architecture, so a model can be rebuilt from the file alone.
//! Two entries are always written by [`Checkpoint::save`]:
//! `"format": "wmvl-checkpoint"` and `"format_version": "1"`; [`Checkpoint::load`] refuses
//! files without them.
//!
//! On disk every tensor is `F32`, little-endian, row-major, shape `[rows, cols]`.
//!
//! * **Saving is atomic.** The file is serialized into a fresh temporary file in the same
//!   directory, fsynced, then renamed over the target; on any error the temporary file is
//!   removed and an existing file at the target path is left untouched. Everything that can be
//!   checked (shapes, names, finiteness, reserved metadata) is checked before the disk is
//!   touched.
//! * **Saving is reproducible.** Equal checkpoints save to byte-identical files, whatever
//!   the order of their tensors or of the metadata's insertion: the tensors are stored sorted
//!   by name and the metadata sorted by key.
//! * **Loading validates everything** and never panics: unreadable, truncated or
//!   non-safetensors files, files that are not wmvl checkpoints, unsupported format versions,
//!   dtypes other than `F32`, ranks other than 1 or 2, and NaN/Inf values are all errors that
//!   name the file (and the tensor, where there is one).
//! * **Rank-1 tensors** (as other tools may write them) are read as a `1 × n` row; rank 0 and
//!   rank ≥ 3 are errors. Saving always writes rank 2, so such a tensor comes back as
//!   `[1, n]` after a save.
//! * **Order:** the safetensors format keys tensors by name, so [`Checkpoint::load`] returns
//!   them sorted by name (byte-wise), whatever order they were saved in. Look tensors up with
//!   [`Checkpoint::get`] / [`Checkpoint::expect_shape`] rather than by position.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use wmvl::checkpoint::{Checkpoint, NamedTensor};
//! # fn main() -> wmvl::Result<()> {
//! let mut metadata = BTreeMap::new();
//! metadata.insert("model".to_string(), "score-net".to_string());
//! metadata.insert("hidden".to_string(), "100".to_string());
//! let ckpt = Checkpoint {
//!     tensors: vec![NamedTensor::new("w1", 2, 100, vec![0.0; 200])?],
//!     metadata,
//! };
//! ckpt.save("model.safetensors")?;
//!
//! let back = Checkpoint::load("model.safetensors")?;
//! let hidden: usize = back.meta_parse("hidden")?;
//! let w1 = back.expect_shape("w1", 2, hidden)?;
//! # let _ = w1; Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::str::FromStr;

use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};

/// Metadata key naming the file format; its value is [`FORMAT`].
pub const FORMAT_KEY: &str = "format";
/// Value of [`FORMAT_KEY`] in every wmvl checkpoint.
pub const FORMAT: &str = "wmvl-checkpoint";
/// Metadata key holding the format version; its value is [`FORMAT_VERSION`].
pub const FORMAT_VERSION_KEY: &str = "format_version";
/// The checkpoint format version this build writes and reads.
pub const FORMAT_VERSION: &str = "1";

/// Tensor name the safetensors format reserves for its metadata table.
const RESERVED_NAME: &str = "__metadata__";

/// One named, row-major 2-D `f32` tensor: `data.len() == rows * cols`.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// A tensor, checking that `data` holds exactly `rows * cols` values.
    pub fn new(name: impl Into<String>, rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        let t = NamedTensor {
            name: name.into(),
            rows,
            cols,
            data,
        };
        t.check_len()?;
        Ok(t)
    }

    /// `rows * cols`, or an error if it overflows.
    fn numel(&self) -> Result<usize> {
        self.rows.checked_mul(self.cols).ok_or_else(|| {
            Error::Shape(format!(
                "tensor `{}`: shape {}×{} overflows",
                self.name, self.rows, self.cols
            ))
        })
    }

    fn check_len(&self) -> Result<()> {
        let n = self.numel()?;
        if self.data.len() != n {
            return Err(Error::Shape(format!(
                "tensor `{}`: data has {} values but its shape {}×{} needs {}",
                self.name,
                self.data.len(),
                self.rows,
                self.cols,
                n
            )));
        }
        Ok(())
    }

    fn check_finite(&self) -> Result<()> {
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "tensor `{}` holds a non-finite value ({}) at index {} (row {}, col {})",
                self.name,
                self.data[i],
                i,
                i / self.cols.max(1),
                i % self.cols.max(1)
            )));
        }
        Ok(())
    }
}

/// Named tensors plus string metadata (the architecture, hyper-parameters, step counters…).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checkpoint {
    pub tensors: Vec<NamedTensor>,
    pub metadata: BTreeMap<String, String>,
}

/// A tensor as the safetensors serializer sees it: `F32`, `[rows, cols]`, little-endian bytes.
struct F32View {
    shape: [usize; 2],
    bytes: Vec<u8>,
}

impl View for &F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tensor names, in the checkpoint's order.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// The tensor called `name`; the error lists the available names.
    pub fn get(&self, name: &str) -> Result<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| {
            Error::Invalid(format!(
                "checkpoint has no tensor `{name}`; available: [{}]",
                self.names().join(", ")
            ))
        })
    }

    /// The tensor called `name`, which must be `rows × cols`; the error gives both shapes.
    pub fn expect_shape(&self, name: &str, rows: usize, cols: usize) -> Result<&NamedTensor> {
        let t = self.get(name)?;
        if t.rows != rows || t.cols != cols {
            return Err(Error::Shape(format!(
                "checkpoint tensor `{name}`: expected {rows}×{cols}, found {}×{}",
                t.rows, t.cols
            )));
        }
        Ok(t)
    }

    /// The metadata value for `key`; the error lists the available keys.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| {
            Error::Invalid(format!(
                "checkpoint metadata has no key `{key}`; available: [{}]",
                self.metadata
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The metadata value for `key`, parsed as `T` (e.g. `usize`, `f32`, `bool`).
    pub fn meta_parse<T>(&self, key: &str) -> Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.meta(key)?;
        raw.parse::<T>().map_err(|e| {
            Error::Invalid(format!(
                "checkpoint metadata `{key}` = {raw:?} is not a valid {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Checks everything that does not need the disk and returns the bytes to write.
    fn serialize(&self) -> Result<Vec<u8>> {
        let mut seen = BTreeSet::new();
        let mut views = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if t.name.is_empty() {
                return Err(Error::Invalid(
                    "checkpoint tensor with an empty name".to_string(),
                ));
            }
            if t.name == RESERVED_NAME {
                return Err(Error::Invalid(format!(
                    "checkpoint tensor name `{RESERVED_NAME}` is reserved by the safetensors format"
                )));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(Error::Invalid(format!(
                    "checkpoint has two tensors named `{}`",
                    t.name
                )));
            }
            t.check_len()?;
            t.check_finite()?;
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            views.push((
                t.name.as_str(),
                F32View {
                    shape: [t.rows, t.cols],
                    bytes,
                },
            ));
        }

        let mut meta: HashMap<String, String> = HashMap::with_capacity(self.metadata.len() + 2);
        for (k, v) in &self.metadata {
            meta.insert(k.clone(), v.clone());
        }
        for (key, value) in [(FORMAT_KEY, FORMAT), (FORMAT_VERSION_KEY, FORMAT_VERSION)] {
            match meta.get(key) {
                Some(v) if v != value => {
                    return Err(Error::Invalid(format!(
                    "checkpoint metadata `{key}` is reserved: it must be {value:?} (or absent), \
                         not {v:?}"
                )))
                }
                Some(_) => {}
                None => {
                    meta.insert(key.to_string(), value.to_string());
                }
            }
        }

        let mut bytes = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(meta))
            .map_err(|e| Error::Invalid(format!("cannot serialize checkpoint: {e}")))?;
        sort_metadata(&mut bytes)?;
        Ok(bytes)
    }

    /// Writes the checkpoint to `path` atomically (temporary file in the same directory,
    /// fsync, rename). Validates first: a tensor whose data length is not `rows * cols`, a
    /// NaN/Inf value, an empty, duplicate or reserved tensor name, or a `format` /
    /// `format_version` entry that disagrees with this build is an error, and nothing is
    /// written. On any error an existing file at `path` is left as it was.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self
            .serialize()
            .map_err(|e| prefix(e, &format!("saving {}", path.display())))?;

        crate::fsutil::write_atomic(path, &bytes).map_err(|e| match e {
            Error::Io(m) => Error::Io(format!("saving checkpoint: {m}")),
            other => other,
        })
    }

    /// Reads and validates a checkpoint written by [`Checkpoint::save`] (or any safetensors
    /// file with 2-D — or 1-D, read as `1 × n` — `F32` tensors and the wmvl format entries).
    /// Tensors come back sorted by name; the metadata includes the `format` and
    /// `format_version` entries. Every error names the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let bytes = fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read checkpoint {}: {e}", path.display())))?;
        Self::from_bytes(&bytes).map_err(|e| prefix(e, &format!("checkpoint {}", path.display())))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        // The reference parser validates the header thoroughly, but a few of its offset sums
        // are unchecked (they overflow, and panic in debug builds, on hostile headers); turn
        // any such panic into an error rather than letting bad input take the program down.
        let (header_len, header) = match std::panic::catch_unwind(|| {
            SafeTensors::read_metadata(bytes)
        }) {
            Ok(Ok(parsed)) => parsed,
            Ok(Err(e)) => {
                return Err(Error::Invalid(format!(
                    "not a valid safetensors file (truncated or corrupt?): {e}"
                )))
            }
            Err(_) => {
                return Err(Error::Invalid(
                    "not a valid safetensors file: its header's data offsets overflow".to_string(),
                ))
            }
        };
        let corrupt = || Error::Invalid("corrupt safetensors file: bad data offsets".to_string());
        let payload = header_len
            .checked_add(8)
            .and_then(|start| bytes.get(start..))
            .ok_or_else(corrupt)?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();

        match metadata.get(FORMAT_KEY).map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "not a wmvl checkpoint: its metadata says {FORMAT_KEY:?} = {other:?}, \
                     expected {FORMAT:?}"
                )))
            }
            None => {
                return Err(Error::Invalid(format!(
                    "not a wmvl checkpoint: a safetensors file without the \
                     {FORMAT_KEY:?}: {FORMAT:?} metadata entry"
                )))
            }
        }
        match metadata.get(FORMAT_VERSION_KEY).map(String::as_str) {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "unsupported {FORMAT_VERSION_KEY} {other:?}: this build of wmvl reads \
                     version {FORMAT_VERSION:?} (written by a newer wmvl?)"
                )))
            }
            None => {
                return Err(Error::Invalid(format!(
                    "wmvl checkpoint without a {FORMAT_VERSION_KEY:?} metadata entry"
                )))
            }
        }

        let mut infos: Vec<_> = header.tensors().into_iter().collect();
        infos.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, info) in infos {
            if info.dtype != Dtype::F32 {
                return Err(Error::Invalid(format!(
                    "tensor `{name}` has dtype {}, but wmvl checkpoints hold F32 only",
                    info.dtype
                )));
            }
            let (rows, cols) = match *info.shape.as_slice() {
                [r, c] => (r, c),
                [n] => (1, n),
                ref s => {
                    return Err(Error::Shape(format!(
                        "tensor `{name}` has rank {} (shape {s:?}), but wmvl checkpoints hold \
                         2-D tensors (or 1-D, read as a row)",
                        s.len()
                    )))
                }
            };
            let (start, end) = info.data_offsets;
            let data: Vec<f32> = payload
                .get(start..end)
                .ok_or_else(corrupt)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let t = NamedTensor {
                name: name.to_string(),
                rows,
                cols,
                data,
            };
            // The parser checked the byte length against the shape; keep the invariant explicit.
            t.check_len()?;
            t.check_finite()?;
            tensors.push(t);
        }
        Ok(Checkpoint { tensors, metadata })
    }
}

/// Makes the serialized file reproducible: rewrites its `__metadata__` object with the keys
/// in sorted order.
///
/// safetensors 0.8 sorts the tensors (by dtype, then name) but writes the metadata in the
/// iteration order of its `HashMap`, which differs between runs (and between maps). It writes
/// the metadata first, as `{"__metadata__":{…},…`, with serde_json; the same entries in
/// sorted order, written by the same serde_json, are the same number of bytes, so they
/// overwrite the object in place and the header length, its 8-byte alignment padding and
/// the data offsets stay as they are.
fn sort_metadata(bytes: &mut [u8]) -> Result<()> {
    const LEAD: &[u8] = b"{\"__metadata__\":";
    let internal = |what: &str| {
        Error::Invalid(format!(
            "cannot serialize checkpoint: {what} (a wmvl bug: please report it)"
        ))
    };
    let start = 8 + LEAD.len();
    if bytes.get(8..start) != Some(LEAD) {
        return Err(internal(
            "the safetensors header does not start with its metadata",
        ));
    }
    // Parse the object as written (it ends where the JSON value starting there ends); a
    // BTreeMap serializes its entries in key order.
    let mut stream = serde_json::Deserializer::from_slice(&bytes[start..])
        .into_iter::<BTreeMap<String, String>>();
    let Some(Ok(sorted)) = stream.next() else {
        return Err(internal("unreadable metadata in the safetensors header"));
    };
    let end = start + stream.byte_offset();
    let text = serde_json::to_vec(&sorted)
        .map_err(|e| internal(&format!("cannot write the metadata: {e}")))?;
    // Same entries, same escaping: the same length. Check rather than trust it.
    if text.len() != end - start {
        return Err(internal("the sorted metadata does not fit in place"));
    }
    bytes[start..end].copy_from_slice(&text);
    Ok(())
}

/// Puts `context` in front of a shape/invalid/i-o error's message, keeping its kind.
fn prefix(e: Error, context: &str) -> Error {
    match e {
        Error::Shape(m) => Error::Shape(format!("{context}: {m}")),
        Error::Invalid(m) => Error::Invalid(format!("{context}: {m}")),
        Error::Io(m) => Error::Io(format!("{context}: {m}")),
        // Checkpoints raise no other kind.
        other => other,
    }
}
