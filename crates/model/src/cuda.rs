//! The model's fused GPU paths (feature `cuda`), called from small hooks in `nn`, `llama` and
//! `quant` when a tensor is on a GPU: RMSNorm, RoPE and SwiGLU as `runner_kernels` ops, and the
//! NF4 frozen matmul that keeps only the packed weight resident on the device (dequantized by
//! the `nf4` kernel for the forward, and again for the backward). The CPU path never comes here.

use crate::error::Result;
use crate::quant::{QuantWeight, dynamic_map};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor};
use runner_kernels::ops::{self, Nf4Parts};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(ops::rms_norm(x, w, eps)?)
}

pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(ops::rope(x, cos, sin)?)
}

pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(ops::swiglu(gate, up)?)
}

/// The packed parts of an NF4 weight on a device, uploaded once. Keyed by the weight's `Arc`,
/// which the entry also holds, so the address cannot be reused by another weight.
fn device_parts(w: &Arc<QuantWeight>, device: &Device) -> Result<Option<Nf4Parts>> {
    type Cache = Mutex<HashMap<(usize, String), (Arc<QuantWeight>, Nf4Parts)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let QuantWeight::Nf4(q) = &**w else {
        return Ok(None);
    };
    let key = (Arc::as_ptr(w) as usize, format!("{:?}", device.location()));
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, parts)) = cache.get(&key) {
        return Ok(Some(parts.clone()));
    }
    let parts = Nf4Parts::new(
        q.rows,
        q.cols,
        &q.packed,
        &q.absmax_q,
        &q.absmax2,
        &dynamic_map(),
        q.offset,
        device,
    )?;
    cache.insert(key, (w.clone(), parts.clone()));
    Ok(Some(parts))
}

/// `x Wᵀ` for a quantized frozen `W` on a GPU, `x: (m, in)`.
pub(crate) fn quant_matmul(x: &Tensor, w: &Arc<QuantWeight>) -> Result<Tensor> {
    match device_parts(w, x.device())? {
        Some(parts) => Ok(x.apply_op1(Nf4Matmul { parts })?),
        // int8: dequantized on the host (no kernel yet).
        None => {
            let wt = w.to_tensor(x.dtype(), x.device())?;
            crate::nn::frozen_matmul(x, &wt)
        }
    }
}

/// The dense weight lives only inside `cuda_fwd` and `bwd`.
struct Nf4Matmul {
    parts: Nf4Parts,
}

impl CustomOp1 for Nf4Matmul {
    fn name(&self) -> &'static str {
        "nf4-matmul"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4-matmul: the CPU path is quant::QuantMatmul")
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let (n, wk) = (self.parts.rows, self.parts.cols);
        if wk != k {
            candle_core::bail!("nf4-matmul: input has {k} features, the weight {wk}")
        }
        let w = ops::nf4_dequantize(&self.parts, s.dtype())?;
        let (ws, wl) = w.storage_and_layout();
        let Storage::Cuda(wc) = &*ws else {
            candle_core::bail!("nf4-matmul: the weight is not on the GPU")
        };
        // x (m, k) · Wᵀ (k, n), reading W through a transposed layout: no copy.
        let out = s.matmul(wc, (1, m, n, k), l, &wl.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let w = ops::nf4_dequantize(&self.parts, dy.dtype())?;
        Ok(Some(dy.matmul(&w)?))
    }
}
