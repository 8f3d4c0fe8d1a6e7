//! Dequantization of NF4 / int8 frozen weights, the interface the matmul ops read them through.
//! The formats themselves (quantization, bitsandbytes' layouts, the parity fixtures) live in
//! `crate::quant`, which implements [`Dequantize`]; this module holds the one NF4 code table
//! and the dequantized weight a product needs, built where the product runs: on the CPU from
//! the host arrays (multi-threaded, in `quant`), on a GPU by the `nf4` kernel for NF4 (the packed
//! parts uploaded once per weight) and by an upload of the host dequantization for int8 (no
//! kernel yet; the table says `CudaComposed`).

use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// The 16 NF4 code values (bitsandbytes' `get_4bit_type("nf4")`), sorted: the one table the
/// quantizer, the CPU dequantizer and (as a kernel argument) the GPU dequantizer read.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// A quantized frozen weight `[rows, cols]` = `[out, in]`.
pub trait Dequantize: Send + Sync + std::fmt::Debug {
    fn dims(&self) -> (usize, usize);

    /// Its values, row-major, on the host.
    fn dequantize(&self) -> Vec<f32>;

    /// Its values as a `dtype` tensor on `device`, for one product: on a GPU the implementation
    /// may dequantize there (see the module comment).
    fn dense_on(self: Arc<Self>, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.dequantize(), self.dims(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

/// A packed NF4 weight `[rows, cols]` on a GPU (the layout of `crate::quant::Nf4`), with the
/// code table and bitsandbytes' dynamic map beside it.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone)]
pub struct Nf4Parts {
    pub rows: usize,
    pub cols: usize,
    /// u8, `ceil(rows·cols / 2)`: element `2i` in the high nibble of byte `i`.
    pub packed: Tensor,
    /// u8, one per 64-block: index into `dynamic_map`.
    pub absmax_q: Tensor,
    /// f32, one per 256 blocks.
    pub absmax2: Tensor,
    /// f32, 256 values: bitsandbytes' signed dynamic map.
    pub dynamic_map: Tensor,
    /// f32, [`NF4_CODE`].
    pub code: Tensor,
    pub offset: f32,
}

#[cfg(feature = "cuda")]
impl Nf4Parts {
    /// Uploads the host arrays to `device`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rows: usize,
        cols: usize,
        packed: &[u8],
        absmax_q: &[u8],
        absmax2: &[f32],
        dynamic_map: &[f32; 256],
        offset: f32,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let n = rows * cols;
        if packed.len() != n.div_ceil(2)
            || absmax_q.len() != n.div_ceil(64)
            || absmax2.len() != n.div_ceil(64).div_ceil(256)
        {
            candle_core::bail!(
                "nf4: {rows}x{cols} needs {} packed bytes, {} absmax indices and {} scales; got {}, {} and {}",
                n.div_ceil(2),
                n.div_ceil(64),
                n.div_ceil(64).div_ceil(256),
                packed.len(),
                absmax_q.len(),
                absmax2.len()
            )
        }
        Ok(Self {
            rows,
            cols,
            packed: Tensor::from_slice(packed, packed.len(), device)?,
            absmax_q: Tensor::from_slice(absmax_q, absmax_q.len(), device)?,
            absmax2: Tensor::from_slice(absmax2, absmax2.len(), device)?,
            dynamic_map: Tensor::from_slice(dynamic_map, 256, device)?,
            code: Tensor::from_slice(&NF4_CODE, 16, device)?,
            offset,
        })
    }

    /// The dense weight `[rows, cols]` in `dtype` (f32 or bf16), dequantized by the `nf4`
    /// kernel on the parts' GPU.
    pub fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.packed.apply_op1_no_bwd(&Nf4Dequantize {
            q: self.clone(),
            dtype,
        })
    }
}

#[cfg(feature = "cuda")]
struct Nf4Dequantize {
    q: Nf4Parts,
    dtype: DType,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for Nf4Dequantize {
    fn name(&self) -> &'static str {
        "nf4-dequantize"
    }

    fn cpu_fwd(
        &self,
        _s: &candle_core::CpuStorage,
        _l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("nf4-dequantize: the CPU dequantizes on the host (crate::quant)")
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
        use candle_core::cuda::{CudaDType, CudaStorage};
        use runner_kernels::cuda::{elementwise, entry, function, launch_err, view, with_cuda};
        use runner_kernels::source::NF4;

        fn go<T: CudaDType + DeviceRepr>(
            op: &Nf4Dequantize,
            s: &CudaStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<CudaStorage> {
            let n = op.q.rows * op.q.cols;
            let dev = s.device().clone();
            let f = function(&dev, &NF4, &entry("nf4_dequantize", op.dtype)?)?;
            let packed = view::<u8>(s, l)?;
            let out = unsafe { dev.alloc::<T>(n)? };
            with_cuda(&op.q.absmax_q, |qs, ql| {
                with_cuda(&op.q.absmax2, |a2s, a2l| {
                    with_cuda(&op.q.dynamic_map, |ms, ml| {
                        with_cuda(&op.q.code, |cs, cl| {
                            let absmax_q = view::<u8>(qs, ql)?;
                            let absmax2 = view::<f32>(a2s, a2l)?;
                            let map = view::<f32>(ms, ml)?;
                            let code = view::<f32>(cs, cl)?;
                            let n64 = n as u64;
                            let stream = dev.cuda_stream();
                            let mut b = stream.launch_builder(&f);
                            b.arg(&packed)
                                .arg(&absmax_q)
                                .arg(&absmax2)
                                .arg(&map)
                                .arg(&code);
                            b.arg(&op.q.offset).arg(&out).arg(&n64);
                            unsafe { b.launch(elementwise(n)) }.map_err(launch_err)?;
                            Ok(())
                        })
                    })
                })
            })?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev))
        }
        let out = match self.dtype {
            DType::F32 => go::<f32>(self, s, l)?,
            DType::BF16 => go::<half::bf16>(self, s, l)?,
            other => candle_core::bail!("nf4: no kernel for {other:?}"),
        };
        Ok((out, candle_core::Shape::from((self.q.rows, self.q.cols))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bitsandbytes builds the table from the normal quantiles; its published values, to the
    /// digits `torch.tensor(..., dtype=float32)` keeps, are what is stored.
    #[test]
    fn the_table_is_sorted_symmetric_in_range_and_has_zero() {
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(NF4_CODE[0], -1.0);
        assert_eq!(NF4_CODE[15], 1.0);
        assert_eq!(NF4_CODE[7], 0.0);
    }
}
