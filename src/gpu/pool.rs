//! GPU memory: pooled buffers and the tensors that view them.
//!
//! Buffers come in power-of-two size classes (capped at the adapter's largest binding, which
//! need not be a power of two: 2047 MiB on an H100) and go back to the pool when the last tensor
//! using them is dropped, so a training loop allocates nothing after its first step. A
//! tensor is a (rows, cols) window at some offset of a buffer: usually a buffer of its own,
//! but several tensors can share one (see [`super::Gpu::packed_layout`]), which is how model
//! parameters live in one buffer that fused kernels bind once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

use super::Gpu;

/// A GPU buffer that goes back to its pool when the last tensor using it is dropped (or, for
/// an exactly sized one, to the device).
pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
    /// In a size class (reused through the pool) or exactly sized (freed on drop).
    pooled: bool,
    /// Unique for the life of the process: the key of cached bind groups.
    pub(crate) id: u64,
    pool: Arc<Mutex<Pool>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl PooledBuffer {
    pub(crate) fn new(buffer: wgpu::Buffer, size: u64, pool: Arc<Mutex<Pool>>) -> PooledBuffer {
        PooledBuffer {
            buffer: Some(buffer),
            size,
            pooled: true,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pool,
        }
    }

    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(b), Ok(mut pool)) = (self.buffer.take(), self.pool.lock()) {
            if self.pooled {
                pool.free.entry(self.size).or_default().insert(self.id, b);
            } else {
                pool.allocated_bytes -= self.size;
            }
        }
    }
}

/// Free buffers by size class (powers of two bytes). Reusing a buffer is safe even while
/// earlier work that used it is still queued: the GPU runs dispatches in order and wgpu
/// places the barriers between them.
///
/// The free buffer with the smallest id is handed out first: which buffers are free at each
/// allocation then depends only on the program, not on the order things were dropped, so a
/// training step that makes the same tensors in the same order gets the same buffers every
/// time — and the same cached bind groups.
#[derive(Default)]
pub(crate) struct Pool {
    /// Free buffers by the id they had (kept, so that cached bind groups stay valid).
    free: HashMap<u64, std::collections::BTreeMap<u64, wgpu::Buffer>>,
    pub(crate) allocated_bytes: u64,
}

/// An f32 (rows, cols) row-major tensor in GPU memory.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) buf: Arc<PooledBuffer>,
    /// Byte offset of element (0, 0) in the buffer.
    pub(crate) offset: u64,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl Tensor {
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether both tensors are windows of the same GPU buffer.
    pub fn shares_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
    /// Position of element (0, 0) in its buffer, in f32 elements.
    pub fn offset_elems(&self) -> usize {
        (self.offset / 4) as usize
    }
    /// The same window with another shape of the same length (a reshape, no copy).
    pub fn reshaped(&self, rows: usize, cols: usize) -> Result<Tensor> {
        if rows.checked_mul(cols) != Some(self.len()) {
            return Err(Error::Shape(format!(
                "cannot view a {}x{} tensor as {rows}x{cols}: the element counts differ",
                self.rows, self.cols
            )));
        }
        Ok(Tensor {
            rows,
            cols,
            ..self.clone()
        })
    }
    /// A (rows, cols) window of the same buffer starting `offset` elements after this one's
    /// start. Bind it only at offsets [`Gpu::packed_layout`] returns (binding alignment).
    pub(crate) fn view(&self, offset: usize, rows: usize, cols: usize) -> Result<Tensor> {
        let start = self.offset + 4 * offset as u64;
        if start + 4 * (rows * cols) as u64 > self.buf.size {
            return Err(Error::Shape(format!(
                "a {rows}x{cols} view at element {offset} runs past its buffer"
            )));
        }
        Ok(Tensor {
            buf: self.buf.clone(),
            offset: start,
            rows,
            cols,
        })
    }

    /// Size of the binding: whole f32 words, at least one.
    pub(crate) fn binding_size(&self) -> u64 {
        4 * self.len().max(1) as u64
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gpu::Tensor({}x{})", self.rows, self.cols)
    }
}

/// A vector of u32 row indices in GPU memory; every value is < `bound`.
#[derive(Clone)]
pub struct Index {
    pub(crate) buf: Arc<PooledBuffer>,
    pub(crate) len: usize,
    pub(crate) bound: u32,
}

impl Index {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Every index is smaller than this.
    pub fn bound(&self) -> u32 {
        self.bound
    }
}

/// The pool's size class for a request of `bytes` under an adapter whose largest storage
/// buffer is `limit` bytes: the next power of two, capped at the limit (rounded down to 4
/// bytes), so that every request up to the limit is served; `None` above it.
pub fn size_class(bytes: u64, limit: u64) -> Option<u64> {
    let limit = limit & !3;
    (bytes <= limit).then(|| bytes.max(16).next_power_of_two().min(limit))
}

impl Gpu {
    /// The largest tensor, in bytes, this adapter binds at once (what [`Gpu::alloc`] serves).
    pub fn max_tensor_bytes(&self) -> u64 {
        let limits = &self.report.limits;
        limits
            .max_buffer_size
            .min(limits.max_storage_buffer_binding_size)
            & !3
    }

    /// A buffer of at least `bytes` from the pool, or a new one.
    pub(crate) fn alloc(&self, bytes: u64) -> Result<Arc<PooledBuffer>> {
        let limit = self.max_tensor_bytes();
        let Some(size) = size_class(bytes, limit) else {
            return Err(Error::OutOfMemory(format!(
                "a tensor of {bytes} bytes exceeds this adapter's largest storage buffer ({limit} bytes)"
            )));
        };
        let mut pool = self
            .pool
            .lock()
            .map_err(|_| Error::Gpu("pool poisoned".into()))?;
        if let Some((id, b)) = pool.free.get_mut(&size).and_then(|v| v.pop_first()) {
            return Ok(Arc::new(PooledBuffer {
                buffer: Some(b),
                size,
                pooled: true,
                id,
                pool: self.pool.clone(),
            }));
        }
        let buffer = self.create_buffer(&mut pool, size)?;
        Ok(Arc::new(PooledBuffer::new(buffer, size, self.pool.clone())))
    }

    /// A new buffer of `size` bytes, counted in the pool's total; when the device is out of
    /// memory, the pool's free buffers are given back and it is tried once more.
    fn create_buffer(&self, pool: &mut Pool, size: u64) -> Result<wgpu::Buffer> {
        let create = || {
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wmvl tensor"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            match pollster::block_on(scope.pop()) {
                Some(e) => Err(e),
                None => Ok(buffer),
            }
        };
        let buffer = match create() {
            Ok(b) => b,
            Err(_) => {
                // Out of memory: give back the pooled buffers of other sizes (and the bind
                // groups that keep them alive) and try once more.
                let freed: u64 = pool.free.iter().map(|(s, v)| s * v.len() as u64).sum();
                pool.free.clear();
                pool.allocated_bytes -= freed;
                self.clear_bind_group_cache();
                create().map_err(|e| {
                    Error::OutOfMemory(format!(
                        "allocating {size} bytes ({} MiB already held): {e}",
                        pool.allocated_bytes >> 20
                    ))
                })?
            }
        };
        pool.allocated_bytes += size;
        Ok(buffer)
    }

    pub(crate) fn empty(&self, rows: usize, cols: usize) -> Result<Tensor> {
        Ok(Tensor {
            buf: self.alloc(4 * (rows * cols) as u64)?,
            offset: 0,
            rows,
            cols,
        })
    }

    /// An uninitialised (rows, cols) tensor in a buffer of its own sized to it (to 256 bytes),
    /// not a power-of-two size class, and freed when dropped: for a long-lived workspace that
    /// a kernel writes before reading (the pool's rounding would hold up to twice its size).
    pub fn scratch(&self, rows: usize, cols: usize) -> Result<Tensor> {
        let bytes = 4 * (rows * cols) as u64;
        let limit = self.max_tensor_bytes();
        if bytes > limit {
            return Err(Error::OutOfMemory(format!(
                "a tensor of {bytes} bytes exceeds this adapter's largest storage buffer ({limit} bytes)"
            )));
        }
        let size = bytes.max(16).next_multiple_of(256).min(limit);
        let mut pool = self
            .pool
            .lock()
            .map_err(|_| Error::Gpu("pool poisoned".into()))?;
        let buffer = self.create_buffer(&mut pool, size)?;
        let mut buf = PooledBuffer::new(buffer, size, self.pool.clone());
        buf.pooled = false;
        Ok(Tensor {
            buf: Arc::new(buf),
            offset: 0,
            rows,
            cols,
        })
    }

    /// Bytes of GPU memory held by tensors and the pool.
    pub fn allocated_bytes(&self) -> u64 {
        self.pool.lock().map(|p| p.allocated_bytes).unwrap_or(0)
    }

    /// Bytes of GPU memory held by live tensors (the pool's free buffers not counted).
    pub fn in_use_bytes(&self) -> u64 {
        self.pool
            .lock()
            .map(|p| {
                let free: u64 = p.free.iter().map(|(s, v)| s * v.len() as u64).sum();
                p.allocated_bytes - free
            })
            .unwrap_or(0)
    }

    /// Element offsets of `shapes` packed into one buffer, each aligned so that it can be
    /// bound on its own; returns the offsets and the total length (in f32 elements).
    pub fn packed_layout(&self, shapes: &[(usize, usize)]) -> (Vec<usize>, usize) {
        let align = (self.report.limits.min_storage_buffer_offset_alignment as usize / 4).max(4);
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut at = 0;
        for &(r, c) in shapes {
            offsets.push(at);
            at = (at + r * c).next_multiple_of(align);
        }
        (offsets, at)
    }

    /// Copy host data into a new tensor. Rejects NaN/Inf and wrong lengths.
    pub fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Tensor> {
        check_host(rows, cols, data)?;
        let t = self.empty(rows, cols)?;
        self.write(&t.buf, 0, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Copy row indices to the GPU; each must be < `bound` (the rows of what they index).
    pub fn upload_index(&self, idx: &[u32], bound: u32) -> Result<Index> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= bound) {
            return Err(Error::Invalid(format!(
                "row index {bad} out of range (rows: {bound})"
            )));
        }
        let buf = self.alloc(4 * idx.len() as u64)?;
        self.write(&buf, 0, bytemuck::cast_slice(idx))?;
        Ok(Index {
            buf,
            len: idx.len(),
            bound,
        })
    }

    /// Overwrite a tensor's contents in stream order (after all work recorded so far).
    pub fn overwrite(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.len() {
            return Err(Error::Shape(format!(
                "{} values given to overwrite a {}x{} tensor",
                data.len(),
                t.rows,
                t.cols
            )));
        }
        self.write(&t.buf, t.offset, bytemuck::cast_slice(data))
    }

    pub(crate) fn write(&self, buf: &PooledBuffer, offset: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // queue.write_buffer lands before the *next* submit: submit what is pending first so
        // that the write is ordered after it (a pooled buffer may have been in use).
        self.flush()?;
        // Always whole f32/u32 words, as wgpu requires (a multiple of 4 bytes).
        self.queue.write_buffer(buf.raw(), offset, bytes);
        self.check()
    }
}

/// Shape and finiteness of host data bound for the GPU.
fn check_host(rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    if data.len() != rows * cols {
        return Err(Error::Shape(format!(
            "{} values given for a {rows}x{cols} tensor",
            data.len()
        )));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "value {} at row {}, column {} is not finite",
            data[i],
            i / cols.max(1),
            i % cols.max(1)
        )));
    }
    Ok(())
}
