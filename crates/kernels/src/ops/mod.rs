//! The fused ops. Each is a candle custom op with a CPU implementation (the reference, also
//! what runs on the CPU device) and, under `cuda`, a `cuda_fwd` running its `kernels/*.cu`
//! kernel; the backward is written by hand as another such op. f32 and bf16; inside, every op
//! computes in f32 and rounds once on store, as the kernels do.

pub mod cross_entropy;
pub mod nf4;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

pub use cross_entropy::cross_entropy;
pub use nf4::{Nf4Parts, nf4_dequantize};
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use swiglu::swiglu;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, bail};
use half::bf16;

/// The values of a contiguous CPU input as f32.
pub(crate) fn cpu_values(s: &CpuStorage, l: &Layout, op: &str) -> Result<Vec<f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: the input is not contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(v[a..b].to_vec()),
        CpuStorage::BF16(v) => Ok(v[a..b].iter().map(|x| x.to_f32()).collect()),
        other => bail!("{op}: {:?} is not supported (f32 or bf16)", other.dtype()),
    }
}

/// The values of a captured tensor (weight, cos/sin) as f32, on the CPU.
pub(crate) fn tensor_values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// f32 results stored in `dtype` (round to nearest even for bf16).
pub(crate) fn cpu_store(dtype: DType, v: Vec<f32>, op: &str) -> Result<CpuStorage> {
    match dtype {
        DType::F32 => Ok(CpuStorage::F32(v)),
        DType::BF16 => Ok(CpuStorage::BF16(
            v.into_iter().map(bf16::from_f32).collect(),
        )),
        other => bail!("{op}: {other:?} is not supported (f32 or bf16)"),
    }
}

/// The value a `dtype` would hold: identity for f32, a rounding for bf16.
pub(crate) fn round_as(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

pub(crate) fn check_float(t: &Tensor, op: &str, what: &str) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::BF16 => Ok(()),
        other => bail!("{op}: {what} is {other:?}; f32 or bf16 expected"),
    }
}

/// The kernel name `{op}_{dtype}`.
#[cfg(feature = "cuda")]
pub(crate) fn entry(op: &str, dtype: DType) -> Result<String> {
    match dtype {
        DType::F32 => Ok(format!("{op}_f32")),
        DType::BF16 => Ok(format!("{op}_bf16")),
        other => bail!("{op}: {other:?} is not supported (f32 or bf16)"),
    }
}
