//! Fused ops for the training engine as candle custom ops: a CPU reference implementation for
//! each, and under the `cuda` feature a kernel from `kernels/*.cu` compiled at run time with
//! NVRTC (cached); plus the choice of device, which fails with a clear error (never a panic)
//! when CUDA was not compiled in or no GPU is usable.

pub mod device;
pub mod error;
pub mod ops;
pub mod source;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use device::{GpuMemory, cuda_compiled, gpu_memory, select_device};
pub use error::KernelError;
