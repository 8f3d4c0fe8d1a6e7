//! Choosing the device: the CPU, or GPU `n` when CUDA is compiled in and a driver and that GPU
//! are present. Every failure is an `Err` naming what is missing; nothing panics.

use crate::error::KernelError;
use candle_core::Device;

/// Whether this build carries the CUDA engine.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// The CPU for `None`, GPU `ordinal` for `Some(ordinal)`.
pub fn select_device(gpu: Option<usize>) -> Result<Device, KernelError> {
    match gpu {
        None => Ok(Device::Cpu),
        Some(ordinal) => cuda_device(ordinal),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device, KernelError> {
    Err(KernelError::NotCompiled { requested: ordinal })
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, KernelError> {
    use candle_core::cuda::cudarc::driver::{CudaContext, result};
    // Ask the driver before candle does: initialisation and the device count give a reason
    // (stub library, no device, driver too old) instead of a failure deep inside a constructor.
    result::init().map_err(|e| KernelError::NoGpu {
        reason: driver_reason(&e),
    })?;
    let available = CudaContext::device_count().map_err(|e| KernelError::NoGpu {
        reason: driver_reason(&e),
    })? as usize;
    if available == 0 {
        return Err(KernelError::NoGpu {
            reason: "the NVIDIA driver reports no GPU".into(),
        });
    }
    if ordinal >= available {
        return Err(KernelError::NoSuchGpu {
            requested: ordinal,
            available,
        });
    }
    Device::new_cuda(ordinal).map_err(|e| KernelError::Device {
        ordinal,
        message: e.to_string(),
    })
}

/// A GPU's memory as its driver reports it, for the memory planner.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuMemory {
    pub name: String,
    pub free: u64,
    pub total: u64,
}

/// Free and total memory of GPU `ordinal` (`cuMemGetInfo`), and its name; an `Err` naming what
/// is missing without CUDA or a GPU.
#[cfg(not(feature = "cuda"))]
pub fn gpu_memory(ordinal: usize) -> Result<GpuMemory, KernelError> {
    Err(KernelError::NotCompiled { requested: ordinal })
}

/// Free and total memory of GPU `ordinal` (`cuMemGetInfo`), and its name; an `Err` naming what
/// is missing without CUDA or a GPU.
#[cfg(feature = "cuda")]
pub fn gpu_memory(ordinal: usize) -> Result<GpuMemory, KernelError> {
    use candle_core::cuda::cudarc::driver::{CudaContext, result};
    result::init().map_err(|e| KernelError::NoGpu {
        reason: driver_reason(&e),
    })?;
    let available = CudaContext::device_count().map_err(|e| KernelError::NoGpu {
        reason: driver_reason(&e),
    })? as usize;
    if ordinal >= available {
        return Err(KernelError::NoSuchGpu {
            requested: ordinal,
            available,
        });
    }
    let device_err = |e: candle_core::cuda::cudarc::driver::DriverError| KernelError::Device {
        ordinal,
        message: e.to_string(),
    };
    let ctx = CudaContext::new(ordinal).map_err(device_err)?;
    ctx.bind_to_thread().map_err(device_err)?;
    let (free, total) = result::mem_get_info().map_err(device_err)?;
    Ok(GpuMemory {
        name: ctx.name().map_err(device_err)?,
        free: free as u64,
        total: total as u64,
    })
}

#[cfg(feature = "cuda")]
fn driver_reason(e: &candle_core::cuda::cudarc::driver::DriverError) -> String {
    use candle_core::cuda::cudarc::driver::sys::cudaError_enum as E;
    match e.0 {
        E::CUDA_ERROR_STUB_LIBRARY => {
            "libcuda.so.1 is the link-time stub, not the NVIDIA driver (is the driver installed? is a stub directory on LD_LIBRARY_PATH?)".into()
        }
        E::CUDA_ERROR_NO_DEVICE => "the NVIDIA driver found no GPU (CUDA_VISIBLE_DEVICES?)".into(),
        E::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | E::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            "the NVIDIA driver does not fit the CUDA version this runner was built for (13.0)".into()
        }
        other => format!("CUDA driver error {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        assert!(select_device(None).unwrap().is_cpu());
    }

    /// Without the feature, a GPU request is an error that says how to get one.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpu_without_cuda_is_a_clear_error() {
        let e = select_device(Some(0)).unwrap_err().to_string();
        assert!(
            e.contains("built without CUDA") && e.contains("--features cuda"),
            "{e}"
        );
    }

    /// With the feature on a machine without a driver (the tests run against the link-time stub
    /// of scripts/cuda-toolchain.sh), a GPU request is an error too, not a panic.
    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_without_a_driver_is_a_clear_error() {
        match select_device(Some(0)) {
            Ok(d) => assert!(d.is_cuda()), // a real GPU machine
            Err(e) => assert!(e.to_string().starts_with("no usable NVIDIA GPU"), "{e}"),
        }
    }
}
