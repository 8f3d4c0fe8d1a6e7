//! Errors of device selection and kernel compilation.

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "GPU {requested} was asked for, but this runner was built without CUDA; build it with `--features cuda` (see scripts/cuda-toolchain.sh) or run on the CPU"
    )]
    NotCompiled { requested: usize },
    #[error("no usable NVIDIA GPU: {reason}")]
    NoGpu { reason: String },
    #[error("GPU {requested} was asked for, but this machine has {available} (numbered from 0)")]
    NoSuchGpu { requested: usize, available: usize },
    #[error("kernels/{file}: NVRTC failed for {arch}: {log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    #[error("GPU {ordinal}: {message}")]
    Device { ordinal: usize, message: String },
}
