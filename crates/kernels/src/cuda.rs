//! NVRTC compilation of `kernels/*.cu` (once per process and architecture) and loading into a
//! device (once per device, cached by candle under the file's name), plus the small helpers the
//! ops' `cuda_fwd` share: contiguous views of storages and launch configurations.

use crate::error::KernelError;
use crate::source::KernelFile;
use candle_core::cuda::cudarc::driver::{CudaFunction, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{Layout, Storage, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `compute_XY` for a compute capability, as NVRTC's `--gpu-architecture` wants it.
pub fn arch_for(major: i32, minor: i32) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<(i32, i32), &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    names
        .entry((major, minor))
        .or_insert_with(|| Box::leak(format!("compute_{major}{minor}").into_boxed_str()))
}

/// The PTX of one kernel file for `arch` (`compute_90`), compiled on first use.
pub fn ptx(file: &KernelFile, arch: &'static str) -> Result<Arc<str>, KernelError> {
    type Cache = Mutex<HashMap<(&'static str, &'static str), Arc<str>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(file.name, arch))
    {
        return Ok(p.clone());
    }
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(format!("{}.cu", file.name)),
        // IEEE division and square root: the kernels are checked against the CPU reference.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ..Default::default()
    };
    let compiled =
        compile_ptx_with_opts(file.full_source(), opts).map_err(|e| KernelError::Compile {
            file: file.name,
            arch: arch.to_string(),
            log: compile_log(&e),
        })?;
    let text: Arc<str> = compiled.to_src().into();
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((file.name, arch), text.clone());
    Ok(text)
}

fn compile_log(e: &candle_core::cuda::cudarc::nvrtc::CompileError) -> String {
    use candle_core::cuda::cudarc::nvrtc::CompileError;
    match e {
        CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
        other => format!(
            "{other:?} (is libnvrtc-builtins.so.13.0 on LD_LIBRARY_PATH? scripts/cuda-toolchain.sh --runtime-env)"
        ),
    }
}

/// Entry point `entry` of `file` on `dev`, compiling and loading the file on first use. Launch
/// it on `dev.cuda_stream()`, the stream candle's own kernels run on.
pub fn function(
    dev: &CudaDevice,
    file: &KernelFile,
    entry: &str,
) -> candle_core::Result<CudaFunction> {
    let (major, minor) = dev
        .cuda_stream()
        .context()
        .compute_capability()
        .map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
    let ptx = ptx(file, arch_for(major, minor)).map_err(candle_core::Error::wrap)?;
    Ok(dev
        .get_or_load_custom_func(entry, file.name, &ptx)?
        .into_cuda_function())
}

/// The contiguous window of a storage a layout describes.
pub fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: the input is not contiguous".into()))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// Runs `f` with the CUDA storage and layout of a captured tensor (a weight, cos/sin).
pub fn with_cuda<R>(
    t: &Tensor,
    f: impl FnOnce(&CudaStorage, &Layout) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => f(c, l),
        _ => candle_core::bail!("fused op: a captured tensor is not on the GPU"),
    }
}

/// One thread per element, 256 per block.
pub fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row; threads a multiple of 32 up to 1024, fewer for short rows.
pub fn per_row(rows: usize, cols: usize) -> LaunchConfig {
    let threads = cols.next_power_of_two().clamp(32, 1024) as u32;
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernel name `{op}_{dtype}` (f32 or bf16 entry points).
pub fn entry(op: &str, dtype: candle_core::DType) -> candle_core::Result<String> {
    match dtype {
        candle_core::DType::F32 => Ok(format!("{op}_f32")),
        candle_core::DType::BF16 => Ok(format!("{op}_bf16")),
        other => candle_core::bail!("{op}: no CUDA kernel for {other:?} (f32 or bf16)"),
    }
}

/// Wraps a driver error for candle.
pub fn launch_err(e: candle_core::cuda::cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}
