//! The GPU device: adapter selection, readback and synchronisation.
//!
//! How work flows: every op appends a dispatch to a pending list (nothing runs yet, see
//! [`launch`]); [`Gpu::flush`] encodes the whole list into one compute pass and submits it;
//! only [`Gpu::read`] waits for the GPU. A training loop therefore costs one submit per
//! flush, not one per op, and no host round trip unless it asks for a number.
//!
//! The rest of the device lives beside this file: [`pool`] (buffers and tensors),
//! [`launch`] (kernels, pipelines, bind groups and the dispatch queue) and `ops.rs` (the
//! [`Backend`](crate::backend::Backend) ops as kernel launches).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result, NO_ADAPTER_HINT};

mod fuse;
pub mod launch;
mod matmul_cpu;
mod ops;
mod optim_all;
pub mod pool;
mod replay;
pub(crate) use replay::fused_inside;

pub use launch::{CustomBindings, CustomKernel, CustomLayout};
pub use pool::{Index, Tensor};
pub use replay::Recording;

use launch::{Dispatch, Launcher};
use pool::{Pool, PooledBuffer};

/// A download under way ([`Gpu::read_async`]).
pub struct PendingRead {
    staging: wgpu::Buffer,
    index: wgpu::SubmissionIndex,
    done: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>,
    len: usize,
}

impl PendingRead {
    /// The values, once the copy's submission has run (later submissions keep running).
    pub fn wait(self, gpu: &Gpu) -> Result<Vec<f32>> {
        let start = std::time::Instant::now();
        let mapped = loop {
            gpu.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(self.index.clone()),
                    timeout: None,
                })
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
            gpu.check()?;
            if let Some(r) = self.done.lock().ok().and_then(|mut s| s.take()) {
                break r;
            }
            if start.elapsed() > std::time::Duration::from_secs(60) {
                return Err(Error::DeviceLost("readback never completed".into()));
            }
            std::thread::yield_now();
        };
        mapped.map_err(|e| Error::Gpu(format!("reading back a tensor: {e}")))?;
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(
            &self
                .staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?,
        );
        self.staging.unmap();
        Ok(data[..self.len].to_vec())
    }
}

/// What the adapter is and what we got from it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
}

impl std::fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.limits;
        writeln!(
            f,
            "adapter:  {} ({}, {})",
            self.name, self.backend, self.device_type
        )?;
        writeln!(f, "driver:   {}", self.driver)?;
        writeln!(
            f,
            "limits:   max_buffer_size={} MiB, max_storage_binding={} MiB, workgroup_storage={} KiB, invocations_per_workgroup={}, workgroups_per_dim={}",
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension
        )?;
        // The optional features wmvl asks for: GPU timestamps (benchmarks, profiles) and
        // subgroup operations (the fused kernels' subgroup matmul core).
        let mut have = Vec::new();
        if self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            have.push("timestamp queries (GPU-side timing)".to_string());
        }
        if self.features.contains(wgpu::Features::SUBGROUP) {
            have.push(format!(
                "subgroups of {}–{} invocations",
                self.subgroup_min_size, self.subgroup_max_size
            ));
        }
        if have.is_empty() {
            have.push("none of those requested (benchmarks fall back to wall-clock timing)".into());
        }
        write!(f, "features: {}", have.join(", "))
    }
}

/// Workgroup storage our kernels use (matmul: two 16×64 f32 tiles).
const NEEDED_WORKGROUP_STORAGE: u32 = 8 * 1024;

/// The GPU: device, queue, cached pipelines, buffer pool and the pending dispatch list.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) report: AdapterReport,
    pub(crate) launcher: Launcher,
    pub(crate) pool: Arc<Mutex<Pool>>,
    pub(crate) pending: Mutex<Vec<Dispatch>>,
    /// Held from taking the pending list to `queue.submit` (see `launch.rs`).
    pub(crate) submitting: Mutex<()>,
    pub(crate) dummy: Arc<PooledBuffer>,
    error: Arc<Mutex<Option<Error>>>,
    pub(crate) timestamps: bool,
    /// CPU implementations of Vulkan: avoid workgroup barriers (see `matmul_direct`).
    pub(crate) barrier_free: bool,
    /// Whether flushes fuse chains of elementwise dispatches (`fuse.rs`; `WMVL_FUSE=0` or
    /// [`Gpu::without_fusion`] turn it off).
    fuse: bool,
    /// Fused kernels may use the subgroup matmul core (see [`Gpu::subgroup_core`]).
    subgroup_core: bool,
    /// The threads recording a step ([`Gpu::record_step`]), one recorder each.
    pub(crate) recording: Mutex<Vec<replay::Recorder>>,
}

/// The backends `WGPU_BACKEND` names (comma-separated), or the primary ones when unset.
fn backends_from_env() -> Result<wgpu::Backends> {
    let Ok(list) = std::env::var("WGPU_BACKEND") else {
        return Ok(wgpu::Backends::PRIMARY);
    };
    let backends = wgpu::Backends::from_comma_list(&list);
    if backends.is_empty() {
        return Err(Error::Invalid(format!(
            "WGPU_BACKEND={list:?} names no backend; use vulkan, metal, dx12 or gl (comma-separated), or unset it"
        )));
    }
    Ok(backends)
}

/// `vulkan, gl` rather than wgpu's `Backends(VULKAN | GL)`.
fn backend_names(b: wgpu::Backends) -> String {
    let all = [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
        (wgpu::Backends::GL, "gl"),
        (wgpu::Backends::BROWSER_WEBGPU, "webgpu"),
    ];
    let names: Vec<&str> = all
        .iter()
        .filter(|(f, _)| b.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    names.join(", ")
}

/// `WMVL_KERNELS`: unset (or empty) chooses by adapter; `gpu` or `cpu` force a kernel family.
fn kernels_from_env() -> Result<Option<&'static str>> {
    match std::env::var("WMVL_KERNELS").as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok("gpu") => Ok(Some("gpu")),
        Ok("cpu") => Ok(Some("cpu")),
        Ok(other) => Err(Error::Invalid(format!(
            "WMVL_KERNELS={other:?}: use gpu (tiled kernels) or cpu (barrier-free kernels), or unset it to choose by adapter"
        ))),
    }
}

/// `WMVL_FUSE`: unset, empty or `1` fuses elementwise chains; `0` does not.
fn fusion_from_env() -> Result<bool> {
    match std::env::var("WMVL_FUSE").as_deref() {
        Err(_) | Ok("") | Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(other) => Err(Error::Invalid(format!(
            "WMVL_FUSE={other:?}: use 1 (fuse elementwise chains, the default) or 0 (one kernel per op)"
        ))),
    }
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl Gpu {
    /// Open the best adapter: `WGPU_ADAPTER_NAME` (substring, case-insensitive) if set,
    /// else a discrete GPU before an integrated one before a CPU implementation.
    /// `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`) restricts the backends.
    pub fn new() -> Result<Gpu> {
        pollster::block_on(Self::new_async(None))
    }

    /// As [`Gpu::new`], choosing the kernel family: `Some(true)` avoids workgroup barriers
    /// (the default on CPU drivers such as lavapipe), `Some(false)` uses the tiled GPU kernels.
    pub fn with_barrier_free(barrier_free: bool) -> Result<Gpu> {
        pollster::block_on(Self::new_async(Some(barrier_free)))
    }

    async fn new_async(barrier_free: Option<bool>) -> Result<Gpu> {
        let backends = backends_from_env()?;
        let kernels = kernels_from_env()?;
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let mut adapters = instance.enumerate_adapters(backends).await;
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "{NO_ADAPTER_HINT} (backends searched: {})",
                backend_names(backends)
            )));
        }
        adapters.sort_by_key(|a| type_rank(a.get_info().device_type));
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(want) => {
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                let want_l = want.to_lowercase();
                let pos = names
                    .iter()
                    .position(|n| n.to_lowercase().contains(&want_l));
                match pos {
                    Some(i) => adapters.swap_remove(i),
                    None => {
                        return Err(Error::NoAdapter(format!(
                            "no adapter name contains WGPU_ADAPTER_NAME={want:?}; available: {names:?}; unset it or pick one of these"
                        )))
                    }
                }
            }
            Err(_) => adapters.swap_remove(0),
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        if limits.max_compute_workgroup_storage_size < NEEDED_WORKGROUP_STORAGE
            || limits.max_compute_invocations_per_workgroup < 256
            || limits.max_storage_buffers_per_shader_stage < 3
        {
            return Err(Error::Device(format!(
                "adapter {} is too limited for wmvl's kernels (needs {} B workgroup storage, 256 invocations per workgroup, 3 storage buffers); pick another with WGPU_ADAPTER_NAME",
                info.name, NEEDED_WORKGROUP_STORAGE
            )));
        }
        let wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wmvl"),
                required_features: features,
                // Everything the adapter offers: wgpu's defaults are lower than most GPUs.
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device(format!("could not open {}: {e}", info.name)))?;

        let error: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match e {
                wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
                other => Error::Gpu(other.to_string()),
            };
            if let Ok(mut s) = slot.lock() {
                s.get_or_insert(err);
            }
        }));
        let slot = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(Error::DeviceLost(format!("{reason:?}: {msg}")));
                }
            }
        });

        let launcher = Launcher::new(&device, &limits);
        let pool = Arc::new(Mutex::new(Pool::default()));
        let dummy_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wmvl unused input"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy = Arc::new(PooledBuffer::new(dummy_buf, 16, pool.clone()));
        let report = AdapterReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info),
            limits,
            features,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
        };
        let gpu = Gpu {
            device,
            queue,
            report,
            launcher,
            pool,
            pending: Mutex::new(Vec::new()),
            submitting: Mutex::new(()),
            dummy,
            error,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_core: kernels.is_none(),
            barrier_free: barrier_free.unwrap_or(match kernels {
                Some(k) => k == "cpu",
                None => info.device_type == wgpu::DeviceType::Cpu,
            }),
            fuse: fusion_from_env()?,
            recording: Mutex::new(Vec::new()),
        };
        gpu.check()?;
        Ok(gpu)
    }

    /// Adapter, backend, limits and features in use.
    pub fn report(&self) -> &AdapterReport {
        &self.report
    }

    /// Whether the kernels avoid workgroup barriers (CPU drivers; `WMVL_KERNELS=gpu|cpu`
    /// overrides the choice, e.g. to test both code paths on one machine).
    pub fn barrier_free(&self) -> bool {
        self.barrier_free
    }

    /// The subgroup size for the subgroup matmul cores (the fused kernels' and the tape's
    /// products, `matmul_cpu.rs`): Some where the adapter has subgroup operations with one
    /// fixed size that the cores are tested at (8, lavapipe's SIMD width). `WMVL_KERNELS=gpu`
    /// or `cpu`, or [`Gpu::without_subgroup_core`], turn it off (the fused kernels then use
    /// their direct core, the tape the 4 × 8 direct product).
    pub fn subgroup_core(&self) -> Option<usize> {
        let r = &self.report;
        let fixed = r.features.contains(wgpu::Features::SUBGROUP)
            && r.subgroup_min_size == r.subgroup_max_size
            && r.subgroup_min_size == 8;
        (fixed && self.subgroup_core).then_some(8)
    }

    /// This device without fusing elementwise chains (e.g. to compare against).
    pub fn without_fusion(mut self) -> Gpu {
        self.fuse = false;
        self
    }

    /// Whether flushes fuse chains of elementwise dispatches into one kernel.
    pub fn fuses(&self) -> bool {
        self.fuse
    }

    /// This device with the subgroup cores off (e.g. to test the direct ones).
    pub fn without_subgroup_core(mut self) -> Gpu {
        self.subgroup_core = false;
        self
    }

    /// Whether [`Gpu::flush_timed`] can measure GPU time with timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// The first error wgpu reported since the last check, if any.
    pub(crate) fn check(&self) -> Result<()> {
        let mut slot = self
            .error
            .lock()
            .map_err(|_| Error::Gpu("error slot poisoned".into()))?;
        match slot.as_ref() {
            // A lost device stays lost: report it on every later call.
            Some(Error::DeviceLost(m)) => Err(Error::DeviceLost(m.clone())),
            Some(_) => Err(slot.take().expect("checked Some")),
            None => Ok(()),
        }
    }

    /// Wait until the GPU has finished everything recorded so far.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check()
    }

    /// Copy `bytes` of a buffer from byte `offset` to the host (flushes and waits).
    pub(crate) fn map_read(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        self.flush()?;
        let size = bytes.next_multiple_of(4).max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wmvl readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(src, offset, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let done: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>> =
            Arc::new(Mutex::new(None));
        let d = done.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut s) = d.lock() {
                *s = Some(r);
            }
        });
        // wgpu runs a map callback on whichever thread's poll collected it: when several
        // threads share this Gpu, our poll can return while another thread is still
        // delivering our callback, so poll until it has arrived (bounded, for a hung device).
        let start = std::time::Instant::now();
        let mapped = loop {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
            self.check()?;
            if let Some(r) = done.lock().ok().and_then(|mut s| s.take()) {
                break r;
            }
            if start.elapsed() > std::time::Duration::from_secs(60) {
                return Err(Error::DeviceLost("readback never completed".into()));
            }
            std::thread::yield_now();
        };
        if let Err(e) = mapped {
            return Err(Error::Gpu(format!("reading back a tensor: {e}")));
        }
        let data = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(data[..bytes as usize].to_vec())
    }

    /// Start downloading a tensor without waiting: the copy is submitted after everything
    /// recorded so far, and [`PendingRead::wait`] waits for that submission only, so the GPU
    /// keeps running what is recorded after it.
    pub fn read_async(&self, t: &Tensor) -> Result<PendingRead> {
        self.flush()?;
        let bytes = (4 * t.len() as u64).max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wmvl async readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(t.buf.raw(), t.offset, &staging, 0, bytes);
        let index = self.queue.submit([encoder.finish()]);
        let done: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>> =
            Arc::new(Mutex::new(None));
        let d = done.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut s) = d.lock() {
                *s = Some(r);
            }
        });
        self.check()?;
        Ok(PendingRead {
            staging,
            index,
            done,
            len: t.len(),
        })
    }

    /// Download a tensor (flushes and waits: the only host round trip).
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = self.map_read(t.buf.raw(), t.offset, 4 * t.len() as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Download row indices.
    pub fn read_index(&self, i: &Index) -> Result<Vec<u32>> {
        if i.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = self.map_read(i.buf.raw(), 0, 4 * i.len as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
