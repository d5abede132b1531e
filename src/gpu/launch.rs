//! The launch queue: kernels, their pipelines, and the list of recorded dispatches that a
//! flush encodes into one compute pass.
//!
//! Every dispatch gets a parameter block in one uniform buffer, bound with a dynamic offset,
//! so bind groups depend only on the buffers a dispatch uses. Those are cached: a training
//! loop reuses the same pooled buffers every step, so after its first step it creates no
//! bind groups at all. Fused kernels ([`crate::fused`]) bring their own pipelines and bind
//! groups, made once, and go through the same queue.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

use super::fuse::Ew;
use super::matmul_cpu::Layout;
use super::pool::PooledBuffer;
use super::Gpu;

/// The parameter block every built-in kernel receives (`struct Params` in
/// `shaders/common.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub n: u32,
    pub rows: u32,
    pub cols: u32,
    pub code: u32,
    pub a_rows: u32,
    pub a_cols: u32,
    pub b_rows: u32,
    pub b_cols: u32,
    pub u: [u32; 4],
    pub f: [f32; 4],
}

/// Bytes of the uniform window each dispatch sees (built-in kernels use the first 64).
pub(crate) const PARAM_BYTES: usize = 128;
pub(crate) type ParamBlock = [u32; PARAM_BYTES / 4];

impl Params {
    /// The optimiser kernels' block (`shaders/optim.wgsl`): n invocations' worth, the rule's
    /// code and hyper-parameters, the bias corrections as f32 bits in u0 and u1.
    pub(crate) fn update(n: usize, code: u32, f: [f32; 4], bias_corrections: [f32; 2]) -> Params {
        Params {
            n: n as u32,
            code,
            u: [
                bias_corrections[0].to_bits(),
                bias_corrections[1].to_bits(),
                0,
                0,
            ],
            f,
            ..Default::default()
        }
    }

    pub(crate) fn block(&self) -> ParamBlock {
        let mut b = [0u32; PARAM_BYTES / 4];
        b[..16].copy_from_slice(bytemuck::cast_slice(bytemuck::bytes_of(self)));
        b
    }
}

/// Every built-in compute entry point. All share one bind group layout:
/// 0 = params (uniform), 1 and 2 = inputs (read-only storage), 3 = output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Binary,
    BinarySame,
    BinaryRow,
    BinaryCol,
    BinaryScalar,
    Affine,
    Map,
    /// The vec4 forms of the above (`shaders/elementwise4.wgsl`).
    BinarySame4,
    BinaryRow4,
    BinaryCol4,
    Affine4,
    Map4,
    ExpandRow4,
    ExpandCol4,
    MatMul,
    MatMulDirect,
    /// The subgroup products of [`super::matmul_cpu`] (any shape; vec4 loads per transpose
    /// pair).
    MatMulLanes,
    MatMulLanes32x8,
    MatMulLanes8x32,
    MatMulLanes8x8,
    MatMulLanesNN,
    MatMulLanesNT,
    MatMulLanesTN,
    MatMulLanesTT,
    ReduceThread,
    ReduceGroup,
    /// The vec4 forms of ReduceThread (`shaders/reduce4.wgsl`).
    ReduceRows4,
    ReduceCols4,
    ConcatCols,
    WindowCols,
    GatherRows,
    ScatterAddRows,
    Unfold,
    Fold,
    Random,
    /// Optimiser step; with Update4 the only kernels with the `update` binding layout.
    Update,
    Update4,
    /// The end of a replayed step: the recording's counter advances (`shaders/replay.wgsl`).
    Advance,
}

pub(crate) const KERNELS: usize = 38;

impl Kernel {
    fn source(self) -> (&'static str, &'static str) {
        use Kernel::*;
        let elementwise = concat!(
            include_str!("../../shaders/functions.wgsl"),
            include_str!("../../shaders/elementwise.wgsl")
        );
        let elementwise4 = concat!(
            include_str!("../../shaders/functions.wgsl"),
            include_str!("../../shaders/elementwise4.wgsl")
        );
        let layout = include_str!("../../shaders/layout.wgsl");
        let reduce = include_str!("../../shaders/reduce.wgsl");
        let gather = include_str!("../../shaders/gather.wgsl");
        let conv = include_str!("../../shaders/conv.wgsl");
        match self {
            Binary => (elementwise, "binary"),
            BinarySame => (elementwise, "binary_same"),
            BinaryRow => (elementwise, "binary_row"),
            BinaryCol => (elementwise, "binary_col"),
            BinaryScalar => (elementwise, "binary_scalar"),
            Affine => (elementwise, "affine"),
            Map => (elementwise, "map"),
            BinarySame4 => (elementwise4, "binary_same4"),
            BinaryRow4 => (elementwise4, "binary_row4"),
            BinaryCol4 => (elementwise4, "binary_col4"),
            Affine4 => (elementwise4, "affine4"),
            Map4 => (elementwise4, "map4"),
            ExpandRow4 => (elementwise4, "expand_row4"),
            ExpandCol4 => (elementwise4, "expand_col4"),
            MatMul => (include_str!("../../shaders/matmul.wgsl"), "matmul"),
            MatMulDirect => (include_str!("../../shaders/matmul.wgsl"), "matmul_direct"),
            MatMulLanes => lanes_source(Layout::Scalar {
                rows: 32,
                wide: true,
            }),
            MatMulLanes32x8 => lanes_source(Layout::Scalar {
                rows: 32,
                wide: false,
            }),
            MatMulLanes8x32 => lanes_source(Layout::Scalar {
                rows: 8,
                wide: true,
            }),
            MatMulLanes8x8 => lanes_source(Layout::Scalar {
                rows: 8,
                wide: false,
            }),
            MatMulLanesNN => lanes_source(Layout::Vec4 {
                ta: false,
                tb: false,
            }),
            MatMulLanesNT => lanes_source(Layout::Vec4 {
                ta: false,
                tb: true,
            }),
            MatMulLanesTN => lanes_source(Layout::Vec4 {
                ta: true,
                tb: false,
            }),
            MatMulLanesTT => lanes_source(Layout::Vec4 { ta: true, tb: true }),
            ReduceThread => (reduce, "reduce_thread"),
            ReduceGroup => (reduce, "reduce_group"),
            ReduceRows4 => (include_str!("../../shaders/reduce4.wgsl"), "reduce_rows4"),
            ReduceCols4 => (include_str!("../../shaders/reduce4.wgsl"), "reduce_cols4"),
            ConcatCols => (layout, "concat_cols"),
            WindowCols => (layout, "window_cols"),
            GatherRows => (gather, "gather_rows"),
            ScatterAddRows => (gather, "scatter_add_rows"),
            Unfold => (conv, "unfold"),
            Fold => (conv, "fold"),
            Random => (
                concat!(
                    include_str!("../../shaders/philox_lib.wgsl"),
                    include_str!("../../shaders/philox.wgsl")
                ),
                "random",
            ),
            Update => (
                concat!(
                    include_str!("../../shaders/functions.wgsl"),
                    include_str!("../../shaders/optim_lib.wgsl"),
                    include_str!("../../shaders/optim_args.wgsl"),
                    include_str!("../../shaders/optim.wgsl")
                ),
                "update",
            ),
            Update4 => (
                concat!(
                    include_str!("../../shaders/functions.wgsl"),
                    include_str!("../../shaders/optim_lib.wgsl"),
                    include_str!("../../shaders/optim_args.wgsl"),
                    include_str!("../../shaders/optim4.wgsl")
                ),
                "update4",
            ),
            Advance => (include_str!("../../shaders/replay.wgsl"), "advance"),
        }
    }

    /// Bind group layout: 0 = (in, in, out), 1 = (grad; param, state, state read_write;
    /// the recording's counter, read by replayed steps).
    fn layout(self) -> usize {
        match self {
            Kernel::Update | Kernel::Update4 => 1,
            _ => 0,
        }
    }

    fn name(self) -> &'static str {
        self.source().1
    }

    /// The vec4 form of an elementwise kernel, if it has one.
    pub(crate) fn vec4(self) -> Option<Kernel> {
        use Kernel::*;
        Some(match self {
            BinarySame => BinarySame4,
            BinaryRow => BinaryRow4,
            BinaryCol => BinaryCol4,
            Affine => Affine4,
            Map => Map4,
            _ => return None,
        })
    }

    /// The subgroup product for a layout.
    pub(crate) fn lanes(layout: Layout) -> Kernel {
        match layout {
            Layout::Scalar {
                rows: 8,
                wide: false,
            } => Kernel::MatMulLanes8x8,
            Layout::Scalar {
                rows: 8,
                wide: true,
            } => Kernel::MatMulLanes8x32,
            Layout::Scalar { wide: false, .. } => Kernel::MatMulLanes32x8,
            Layout::Scalar { .. } => Kernel::MatMulLanes,
            Layout::Vec4 {
                ta: false,
                tb: false,
            } => Kernel::MatMulLanesNN,
            Layout::Vec4 {
                ta: false,
                tb: true,
            } => Kernel::MatMulLanesNT,
            Layout::Vec4 {
                ta: true,
                tb: false,
            } => Kernel::MatMulLanesTN,
            Layout::Vec4 { ta: true, tb: true } => Kernel::MatMulLanesTT,
        }
    }
}

/// The generated source of a subgroup product, made once per process.
fn lanes_source(layout: Layout) -> (&'static str, &'static str) {
    static SOURCES: [OnceLock<String>; 8] = [const { OnceLock::new() }; 8];
    let slot = match layout {
        Layout::Scalar { rows, wide } => 2 * (rows == 8) as usize + wide as usize,
        Layout::Vec4 { ta, tb } => 4 + 2 * ta as usize + tb as usize,
    };
    let src = SOURCES[slot].get_or_init(|| super::matmul_cpu::source(layout));
    (src.as_str(), layout.entry())
}

/// A pipeline and bind group layout made outside the built-in set (fused kernels).
pub struct CustomKernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) label: String,
}

/// The bind group layout of custom kernels: params at 0, then storage buffers.
pub struct CustomLayout {
    pub(crate) bind: wgpu::BindGroupLayout,
    pub(crate) pipeline: wgpu::PipelineLayout,
    read_only: Vec<bool>,
}

/// A bind group made once for custom kernels.
pub struct CustomBindings {
    pub(crate) group: wgpu::BindGroup,
    /// Keeps the buffers alive (and out of the pool) while the bindings exist.
    _buffers: Vec<Arc<PooledBuffer>>,
}

pub(crate) enum Pipe {
    Builtin(Kernel),
    Custom(Arc<CustomKernel>),
}

pub(crate) enum Bind {
    /// Buffers (with byte offset and size) for bindings 1, 2, ... of a built-in layout.
    Buffers {
        layout: usize,
        buffers: Vec<(Arc<PooledBuffer>, u64, u64)>,
    },
    Prebuilt(Arc<CustomBindings>),
    /// Buffers for a custom layout, bind group cached like the built-ins' (fused chains).
    Custom {
        layout: Arc<CustomLayout>,
        buffers: Vec<Binding>,
    },
}

pub(crate) struct Dispatch {
    pub pipe: Pipe,
    pub bind: Bind,
    pub params: ParamBlock,
    pub groups: [u32; 3],
    /// What an elementwise dispatch computes, for the fuser (`fuse.rs`).
    pub ew: Option<Ew>,
}

impl Dispatch {
    pub(crate) fn label(&self) -> String {
        match &self.pipe {
            Pipe::Builtin(k) => k.name().to_string(),
            Pipe::Custom(c) => c.label.clone(),
        }
    }
}

/// GPU seconds per timed pass or dispatch, with its label.
type Times = Vec<(String, f64)>;

/// Flush automatically past this many pending dispatches, to bound host memory.
pub(crate) const MAX_PENDING: usize = 8192;
/// Cached bind groups kept at most (then the cache starts afresh).
const MAX_CACHED_BIND_GROUPS: usize = 16384;

type BindKey = (usize, Vec<(u64, u64, u64)>);

/// Pipelines, layouts and the bind group cache.
pub(crate) struct Launcher {
    pub layouts: [wgpu::BindGroupLayout; 2],
    pub pipeline_layouts: [wgpu::PipelineLayout; 2],
    pub pipelines: [std::sync::OnceLock<wgpu::ComputePipeline>; KERNELS],
    /// One uniform buffer for the parameter blocks of a flush, never reallocated (cached
    /// bind groups refer to it): MAX_PENDING blocks of `param_stride` bytes.
    pub params_buf: wgpu::Buffer,
    pub param_stride: u64,
    pub cache: std::sync::Mutex<HashMap<BindKey, Arc<wgpu::BindGroup>>>,
    /// Bind groups created so far (cached and custom), for tests and reports.
    pub created: std::sync::atomic::AtomicU64,
    /// Dispatches submitted so far (after fusion), for tests and reports.
    pub submitted: std::sync::atomic::AtomicU64,
    /// Custom layouts by storage signature, and custom kernels by (layout, source, entry):
    /// a driver compiles a kernel when its pipeline is made (lavapipe: seconds for a fused
    /// step), so steps built again for the same model and settings reuse them.
    pub custom_layouts: std::sync::Mutex<Vec<(Vec<bool>, Arc<CustomLayout>)>>,
    pub custom_kernels: std::sync::Mutex<HashMap<(usize, u64, String), Arc<CustomKernel>>>,
}

fn uniform_entry() -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAM_BYTES as u64),
        },
        count: None,
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn make_layout(
    device: &wgpu::Device,
    read_only: &[bool],
) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let mut entries = vec![uniform_entry()];
    for (i, &ro) in read_only.iter().enumerate() {
        entries.push(storage_entry(i as u32 + 1, ro));
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("wmvl kernel"),
        entries: &entries,
    });
    let pipeline = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("wmvl kernel"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    (layout, pipeline)
}

impl Launcher {
    pub fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> Launcher {
        let (l0, p0) = make_layout(device, &[true, true, false]);
        let (l1, p1) = make_layout(device, &[true, false, false, false, true]);
        let param_stride =
            (limits.min_uniform_buffer_offset_alignment as u64).max(PARAM_BYTES as u64);
        let params_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wmvl params"),
            size: param_stride * MAX_PENDING as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Launcher {
            layouts: [l0, l1],
            pipeline_layouts: [p0, p1],
            pipelines: [const { std::sync::OnceLock::new() }; KERNELS],
            params_buf,
            param_stride,
            cache: Default::default(),
            created: Default::default(),
            submitted: Default::default(),
            custom_layouts: Default::default(),
            custom_kernels: Default::default(),
        }
    }
}

impl Gpu {
    pub(crate) fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        self.launcher.pipelines[k as usize].get_or_init(|| {
            let (src, entry) = k.source();
            let code = format!("{}\n{}", include_str!("../../shaders/common.wgsl"), src);
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(entry),
                source: wgpu::ShaderSource::Wgsl(code.into()),
            };
            let module = self.device.create_shader_module(desc);
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&self.launcher.pipeline_layouts[k.layout()]),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        })
    }

    fn count_bind_group(&self) {
        self.launcher
            .created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bind groups created so far: constant across the steps of a training loop once its
    /// first step has run (they are cached or made once).
    pub fn bind_groups_created(&self) -> u64 {
        self.launcher
            .created
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn clear_bind_group_cache(&self) {
        if let Ok(mut c) = self.launcher.cache.lock() {
            c.clear();
        }
    }

    /// Bind group layout for custom kernels: binding 0 = the parameter block, then one
    /// storage buffer per entry of `read_only`.
    pub fn custom_layout(&self, read_only: &[bool]) -> CustomLayout {
        let (bind, pipeline) = make_layout(&self.device, read_only);
        CustomLayout {
            bind,
            pipeline,
            read_only: read_only.to_vec(),
        }
    }

    /// The layout of [`Gpu::custom_layout`], made once per signature for this device.
    pub fn shared_layout(&self, read_only: &[bool]) -> Result<Arc<CustomLayout>> {
        let mut all = self
            .launcher
            .custom_layouts
            .lock()
            .map_err(|_| Error::Gpu("layout cache poisoned".into()))?;
        if let Some((_, l)) = all.iter().find(|(r, _)| r == read_only) {
            return Ok(l.clone());
        }
        let l = Arc::new(self.custom_layout(read_only));
        all.push((read_only.to_vec(), l.clone()));
        Ok(l)
    }

    /// The kernel `entry` of WGSL `source` on a shared `layout`, compiled once per device:
    /// a later request for the same source and entry gets the same pipeline.
    pub fn cached_kernel(
        &self,
        layout: &Arc<CustomLayout>,
        source: &str,
        label: &str,
        entry: &str,
    ) -> Result<Arc<CustomKernel>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        let key = (Arc::as_ptr(layout) as usize, h.finish(), entry.to_string());
        let found = self
            .launcher
            .custom_kernels
            .lock()
            .map_err(|_| Error::Gpu("kernel cache poisoned".into()))?
            .get(&key)
            .cloned();
        if let Some(k) = found {
            return Ok(k);
        }
        let module = self.custom_module(label, source)?;
        let k = self.custom_kernel(layout, &module, label, entry, &[])?;
        self.launcher
            .custom_kernels
            .lock()
            .map_err(|_| Error::Gpu("kernel cache poisoned".into()))?
            .insert(key, k.clone());
        Ok(k)
    }

    /// Compile WGSL for custom kernels (`shaders/common.wgsl` is not prepended).
    /// Compilation errors come back as `Error::Gpu` naming the label.
    pub fn custom_module(&self, label: &str, source: &str) -> Result<Arc<wgpu::ShaderModule>> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("compiling {label}: {e}")));
        }
        Ok(Arc::new(module))
    }

    /// A pipeline for entry point `entry` of `module`, with its override constants set.
    pub fn custom_kernel(
        &self,
        layout: &CustomLayout,
        module: &wgpu::ShaderModule,
        label: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Arc<CustomKernel>> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&layout.pipeline),
                module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // Our kernels initialise any workgroup memory they read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("building kernel {label}: {e}")));
        }
        Ok(Arc::new(CustomKernel {
            pipeline,
            label: label.to_string(),
        }))
    }

    /// Bind `tensors` to bindings 1, 2, ... of `layout`, once; the bindings keep them alive.
    pub fn custom_bindings(
        &self,
        layout: &CustomLayout,
        tensors: &[&super::Tensor],
    ) -> Result<Arc<CustomBindings>> {
        if tensors.len() != layout.read_only.len() {
            return Err(Error::Invalid(format!(
                "{} tensors for a layout of {} storage bindings",
                tensors.len(),
                layout.read_only.len()
            )));
        }
        let mut entries = vec![self.params_entry()];
        for (i, t) in tensors.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: t.buf.raw(),
                    offset: t.offset,
                    size: wgpu::BufferSize::new(t.binding_size()),
                }),
            });
        }
        self.count_bind_group();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("wmvl fused"),
            layout: &layout.bind,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("binding buffers: {e}")));
        }
        Ok(Arc::new(CustomBindings {
            group,
            _buffers: tensors.iter().map(|t| t.buf.clone()).collect(),
        }))
    }

    /// Record a custom kernel launch with its parameter block (up to 128 bytes).
    pub fn launch_custom(
        &self,
        kernel: &Arc<CustomKernel>,
        bindings: &Arc<CustomBindings>,
        params: &[u32],
        groups: [u32; 3],
    ) -> Result<()> {
        if params.len() > PARAM_BYTES / 4 {
            return Err(Error::Invalid(format!(
                "a parameter block of {} words (at most {})",
                params.len(),
                PARAM_BYTES / 4
            )));
        }
        let mut block = [0u32; PARAM_BYTES / 4];
        block[..params.len()].copy_from_slice(params);
        if groups.contains(&0) {
            return Ok(());
        }
        self.push(Dispatch {
            pipe: Pipe::Custom(kernel.clone()),
            bind: Bind::Prebuilt(bindings.clone()),
            params: block,
            groups,
            ew: None,
        })
    }

    fn params_entry(&self) -> wgpu::BindGroupEntry<'_> {
        wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.launcher.params_buf,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES as u64),
            }),
        }
    }

    /// The bind group of a built-in dispatch, from the cache or made now.
    fn bind_group(
        &self,
        layout: usize,
        bind_layout: &wgpu::BindGroupLayout,
        buffers: &[(Arc<PooledBuffer>, u64, u64)],
    ) -> Result<Arc<wgpu::BindGroup>> {
        let key: BindKey = (
            layout,
            buffers.iter().map(|(b, o, s)| (b.id, *o, *s)).collect(),
        );
        let mut cache = self
            .launcher
            .cache
            .lock()
            .map_err(|_| Error::Gpu("bind group cache poisoned".into()))?;
        if let Some(g) = cache.get(&key) {
            return Ok(g.clone());
        }
        if cache.len() >= MAX_CACHED_BIND_GROUPS {
            cache.clear();
        }
        let mut entries = vec![self.params_entry()];
        for (k, (b, offset, size)) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: k as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.raw(),
                    offset: *offset,
                    size: wgpu::BufferSize::new(*size),
                }),
            });
        }
        self.count_bind_group();
        let group = Arc::new(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: bind_layout,
            entries: &entries,
        }));
        cache.insert(key, group.clone());
        Ok(group)
    }

    /// The bind groups of the dispatches that do not bring their own, in order (cached).
    pub(crate) fn bind_groups(&self, list: &[Dispatch]) -> Result<Vec<Arc<wgpu::BindGroup>>> {
        list.iter()
            .filter_map(|d| match &d.bind {
                Bind::Buffers { layout, buffers } => {
                    Some(self.bind_group(*layout, &self.launcher.layouts[*layout], buffers))
                }
                // Keyed by the layout's address (built-in layouts are 0 and 1).
                Bind::Custom { layout, buffers } => {
                    Some(self.bind_group(Arc::as_ptr(layout) as usize, &layout.bind, buffers))
                }
                Bind::Prebuilt(_) => None,
            })
            .collect()
    }

    /// Record one built-in dispatch on (inputs..., output); runs at the next flush.
    pub(crate) fn record(
        &self,
        kernel: Kernel,
        params: Params,
        inputs: [Option<Binding>; 2],
        output: Binding,
        groups: [u32; 3],
    ) -> Result<()> {
        let dummy = || (self.dummy.clone(), 0, 16);
        let input = |b: Option<Binding>| b.unwrap_or_else(dummy);
        let [i0, i1] = inputs;
        self.push(Dispatch {
            pipe: Pipe::Builtin(kernel),
            bind: Bind::Buffers {
                layout: kernel.layout(),
                buffers: vec![input(i0), input(i1), output],
            },
            params: params.block(),
            groups,
            ew: Ew::of(kernel, &params),
        })
    }

    /// Record a built-in dispatch with an explicit list of bindings (the optimiser step).
    pub(crate) fn record_bindings(
        &self,
        kernel: Kernel,
        params: Params,
        buffers: Vec<Binding>,
        groups: [u32; 3],
    ) -> Result<()> {
        self.push(Dispatch {
            pipe: Pipe::Builtin(kernel),
            bind: Bind::Buffers {
                layout: kernel.layout(),
                buffers,
            },
            params: params.block(),
            groups,
            ew: None,
        })
    }

    /// Append a dispatch to the pending list, flushing when it grows past `MAX_PENDING` (or,
    /// on a thread recording a step, to its recording, refusing past that: a recording is one
    /// submission).
    pub(crate) fn push(&self, dispatch: Dispatch) -> Result<()> {
        let mut slot = Some(dispatch);
        match self.take_recorded(&mut slot)? {
            Some(n) if n >= MAX_PENDING => {
                return Err(Error::Invalid(format!(
                    "a recorded step holds at most {} dispatches; record a smaller step (fewer layers or sub-batches)",
                    MAX_PENDING - 1
                )))
            }
            Some(_) => return Ok(()),
            None => {}
        }
        let Some(dispatch) = slot else {
            return Ok(());
        };
        let n = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| Error::Gpu("pending list poisoned".into()))?;
            pending.push(dispatch);
            pending.len()
        };
        if n >= MAX_PENDING {
            self.flush()?;
        }
        Ok(())
    }

    /// Dispatches submitted so far: what the device ran, after fusing elementwise chains.
    pub fn dispatches_submitted(&self) -> u64 {
        self.launcher
            .submitted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Dispatches recorded and not yet submitted (before fusion).
    pub fn pending_dispatches(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Submit everything recorded so far (does not wait).
    pub fn flush(&self) -> Result<()> {
        self.submit(Timing::None).map(|_| ())
    }

    /// Submit everything recorded so far in one timed pass and wait; returns the GPU time
    /// in seconds from timestamp queries, or `None` where the adapter has none.
    pub fn flush_timed(&self) -> Result<Option<f64>> {
        if !self.timestamps {
            self.sync()?;
            return Ok(None);
        }
        match self.submit(Timing::Pass)? {
            Some(t) => Ok(Some(t.iter().map(|(_, s)| s).sum())),
            None => Ok(Some(0.0)),
        }
    }

    /// Submit everything recorded so far with one compute pass per dispatch, timed, and
    /// wait; returns (kernel label, GPU seconds) per dispatch, or `None` without timestamp
    /// queries. For profiles: a pass per dispatch costs more than the batched flush.
    pub fn flush_profiled(&self) -> Result<Option<Vec<(String, f64)>>> {
        if !self.timestamps {
            self.sync()?;
            return Ok(None);
        }
        Ok(Some(self.submit(Timing::PerDispatch)?.unwrap_or_default()))
    }

    /// Submits the pending list in chunks of at most `MAX_PENDING` dispatches (the size of
    /// the parameter buffer): another thread may push between a push that reaches the limit
    /// and the flush it triggers. Times of several chunks add up (`Pass`) or concatenate.
    fn submit(&self, timing: Timing) -> Result<Option<Times>> {
        let mut out: Option<Times> = None;
        loop {
            let (times, more) = self.submit_chunk(timing)?;
            out = match (out, times) {
                (Some(mut a), Some(b)) if timing == Timing::PerDispatch => {
                    a.extend(b);
                    Some(a)
                }
                (Some(a), Some(b)) => Some(vec![("pass".to_string(), a[0].1 + b[0].1)]),
                (a, b) => a.or(b),
            };
            if !more {
                return Ok(out);
            }
        }
    }

    /// Submits up to `MAX_PENDING` pending dispatches; says whether more are pending.
    fn submit_chunk(&self, timing: Timing) -> Result<(Option<Times>, bool)> {
        // One submit at a time, from taking the list to `queue.submit`: concurrent submits
        // would overwrite each other's parameter blocks (both write offset 0 before either
        // submits), and a thread whose dispatches another thread took must not submit its
        // readback copy before them.
        let _submitting = self
            .submitting
            .lock()
            .map_err(|_| Error::Gpu("submit lock poisoned".into()))?;
        // Reads, writes and syncs all come through here: none may happen inside a step being
        // recorded (on this thread), whose host work runs once while its dispatches run at
        // every replay.
        if self.is_recording() {
            return Err(Error::Invalid(
                "this step needs the host while it is being recorded (it reads, writes or waits for the device): a recorded step must run on the device alone; run it step by step instead".into(),
            ));
        }
        let list = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| Error::Gpu("pending list poisoned".into()))?;
            let n = pending.len().min(MAX_PENDING);
            let chunk: Vec<Dispatch> = pending.drain(..n).collect();
            (chunk, !pending.is_empty())
        };
        let (list, more) = list;
        self.check()?;
        if list.is_empty() {
            return Ok((None, false));
        }
        let list = super::fuse::fuse(self, list)?;
        self.launcher
            .submitted
            .fetch_add(list.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // All parameter blocks of this batch go into the one uniform buffer.
        let stride = self.launcher.param_stride as usize;
        let mut bytes = vec![0u8; list.len() * stride];
        for (i, d) in list.iter().enumerate() {
            bytes[i * stride..i * stride + PARAM_BYTES]
                .copy_from_slice(bytemuck::cast_slice(&d.params));
        }
        self.queue
            .write_buffer(&self.launcher.params_buf, 0, &bytes);

        let groups = self.bind_groups(&list)?;
        let queries = match timing {
            Timing::None => 0,
            Timing::Pass => 2,
            Timing::PerDispatch => 2 * list.len() as u32,
        };
        let qs = (queries > 0).then(|| {
            self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wmvl timing"),
                ty: wgpu::QueryType::Timestamp,
                count: queries,
            })
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let mut cached = groups.iter();
        let mut encode = |pass: &mut wgpu::ComputePass, i: usize, d: &Dispatch| {
            match &d.pipe {
                Pipe::Builtin(k) => pass.set_pipeline(self.pipeline(*k)),
                Pipe::Custom(c) => pass.set_pipeline(&c.pipeline),
            }
            let offset = [(i * stride) as u32];
            match &d.bind {
                Bind::Buffers { .. } | Bind::Custom { .. } => pass.set_bind_group(
                    0,
                    Some(&**cached.next().expect("one per dispatch")),
                    &offset,
                ),
                Bind::Prebuilt(b) => pass.set_bind_group(0, Some(&b.group), &offset),
            }
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        };
        let timestamps = |first: u32| {
            qs.as_ref().map(|qs| wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: Some(first),
                end_of_pass_write_index: Some(first + 1),
            })
        };
        if timing == Timing::PerDispatch {
            for (i, d) in list.iter().enumerate() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("wmvl profiled"),
                    timestamp_writes: timestamps(2 * i as u32),
                });
                encode(&mut pass, i, d);
            }
        } else {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wmvl batch"),
                timestamp_writes: timestamps(0),
            });
            for (i, d) in list.iter().enumerate() {
                encode(&mut pass, i, d);
            }
        }
        let resolved = qs.as_ref().map(|qs| {
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wmvl timestamps"),
                size: 8 * queries as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(qs, 0..queries, &buf, 0);
            buf
        });
        self.queue.submit([encoder.finish()]);
        self.check()?;
        drop(_submitting);
        let Some(buf) = resolved else {
            return Ok((None, more));
        };
        let ticks: Vec<u64> =
            bytemuck::pod_collect_to_vec(&self.map_read(&buf, 0, 8 * queries as u64)?);
        let period = self.queue.get_timestamp_period() as f64 * 1e-9;
        let seconds = |k: usize| ticks[2 * k + 1].saturating_sub(ticks[2 * k]) as f64 * period;
        let times = match timing {
            Timing::PerDispatch => list
                .iter()
                .enumerate()
                .map(|(i, d)| (d.label(), seconds(i)))
                .collect(),
            _ => vec![("pass".to_string(), seconds(0))],
        };
        Ok((Some(times), more))
    }
}

/// (buffer, byte offset, byte size) of one binding.
pub(crate) type Binding = (Arc<PooledBuffer>, u64, u64);

impl super::Tensor {
    pub(crate) fn binding(&self) -> Binding {
        (self.buf.clone(), self.offset, self.binding_size())
    }
}

impl super::Index {
    pub(crate) fn binding(&self) -> Binding {
        (self.buf.clone(), 0, 4 * self.len.max(1) as u64)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Timing {
    None,
    Pass,
    PerDispatch,
}
