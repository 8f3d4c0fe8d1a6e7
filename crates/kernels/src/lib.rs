//! The CUDA glue of the training engine: the kernel sources of `kernels/*.cu` (embedded), their
//! NVRTC compilation and loading (cached) and launch helpers, under the `cuda` feature; plus
//! the choice of device, which fails with a clear error (never a panic) when CUDA was not
//! compiled in or no GPU is usable. The ops themselves (CPU side, GPU launch, backward) live in
//! `runner_model::ops`, one file each.

pub mod device;
pub mod error;
pub mod source;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use device::{GpuMemory, cuda_compiled, gpu_memory, select_device};
pub use error::KernelError;
