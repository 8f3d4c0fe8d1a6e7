//! CUDA glue behind the `cuda` feature: kernels from `kernels/*.cu` compiled with NVRTC, NCCL.
