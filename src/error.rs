//! One error type for the whole crate. Every message says what went wrong and what to do.

use std::fmt;

/// Everything that can go wrong in wmvl. Library code returns these; it never panics on bad input.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// No Vulkan/Metal/DX12 adapter (or none matching `WGPU_ADAPTER_NAME`).
    NoAdapter(String),
    /// The adapter exists but the device could not be created or lacks what the kernels need.
    Device(String),
    /// The device was lost (driver reset, GPU hang, device destroyed).
    DeviceLost(String),
    /// A GPU allocation failed or would exceed the device's limits.
    OutOfMemory(String),
    /// wgpu reported a validation or internal error (a bug in wmvl: please report it).
    Gpu(String),
    /// Operands whose shapes do not fit the operation.
    Shape(String),
    /// Invalid argument (NaN/Inf data, out-of-range index, unsupported request).
    Invalid(String),
    /// File could not be read or written.
    Io(String),
    /// Training produced NaN/Inf (or a loss beyond all scale); the message names the step and
    /// what was kept.
    Diverged(String),
    /// Stopped on request (Ctrl-C); the message says what was kept.
    Interrupted(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What to install when no adapter is found; shared by the CLI, the xtask and the docs.
pub const NO_ADAPTER_HINT: &str =
    "no Vulkan/Metal/DX12 adapter found; on Debian/Ubuntu without a GPU \
install Mesa's lavapipe: apt-get install libvulkan1 mesa-vulkan-drivers \
(or set WGPU_BACKEND / WGPU_ADAPTER_NAME to pick another adapter)";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(m) => write!(f, "no GPU adapter: {m}"),
            Error::Device(m) => write!(f, "GPU device: {m}"),
            Error::DeviceLost(m) => write!(
                f,
                "GPU device lost: {m}; restart the program (the last checkpoint is kept)"
            ),
            Error::OutOfMemory(m) => write!(
                f,
                "out of GPU memory: {m}; reduce the batch size or the model width"
            ),
            Error::Gpu(m) => write!(f, "GPU error (a wmvl bug, please report it): {m}"),
            Error::Shape(m) => write!(f, "shape mismatch: {m}"),
            Error::Invalid(m) => write!(f, "invalid input: {m}"),
            Error::Io(m) => write!(f, "i/o: {m}"),
            Error::Diverged(m) => write!(f, "training diverged: {m}"),
            Error::Interrupted(m) => write!(f, "interrupted: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}
