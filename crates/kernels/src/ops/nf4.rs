//! NF4 dequantization (bitsandbytes' layout, double-quantized absmax) of a frozen weight held
//! on the device in its packed form: the dense weight exists only while a matmul needs it.

use super::cpu_store;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, bail};

/// NF4 code values (bitsandbytes' `get_4bit_type("nf4")`); the same table is in `kernels/nf4.cu`.
const NF4_CODE: [f32; 16] = [
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

/// A packed NF4 weight `[rows, cols]` as device tensors (the layout of
/// `runner_model::quant::Nf4`).
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
    pub offset: f32,
}

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
    ) -> Result<Self> {
        let n = rows * cols;
        if packed.len() != n.div_ceil(2)
            || absmax_q.len() != n.div_ceil(64)
            || absmax2.len() != n.div_ceil(64).div_ceil(256)
        {
            bail!(
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
            offset,
        })
    }
}

/// The dense weight `[rows, cols]` in `dtype` (f32 or bf16), on the parts' device.
pub fn nf4_dequantize(q: &Nf4Parts, dtype: DType) -> Result<Tensor> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        bail!("nf4: cannot dequantize to {dtype:?} (f32 or bf16)")
    }
    q.packed.apply_op1_no_bwd(&Dequantize {
        q: q.clone(),
        dtype,
    })
}

struct Dequantize {
    q: Nf4Parts,
    dtype: DType,
}

impl CustomOp1 for Dequantize {
    fn name(&self) -> &'static str {
        "nf4-dequantize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::U8(packed), Some((a, b))) = (s, l.contiguous_offsets()) else {
            bail!("nf4: the packed weight must be contiguous u8")
        };
        let packed = &packed[a..b];
        let absmax_q = self.q.absmax_q.to_vec1::<u8>()?;
        let absmax2 = self.q.absmax2.to_vec1::<f32>()?;
        let map = self.q.dynamic_map.to_vec1::<f32>()?;
        let n = self.q.rows * self.q.cols;
        let out: Vec<f32> = (0..n)
            .map(|i| {
                let byte = packed[i >> 1];
                let nib = if i & 1 == 1 { byte & 15 } else { byte >> 4 };
                let blk = i / 64;
                let absmax = map[absmax_q[blk] as usize] * absmax2[blk / 256] + self.q.offset;
                NF4_CODE[nib as usize] * absmax
            })
            .collect();
        Ok((
            cpu_store(self.dtype, out, self.name())?,
            Shape::from((self.q.rows, self.q.cols)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::{elementwise, function, launch_err, view, with_cuda};
        use crate::source::NF4;
        use candle_core::backend::BackendStorage;
        use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
        use candle_core::cuda::{CudaDType, CudaStorage};

        fn go<T: CudaDType + DeviceRepr>(
            op: &Dequantize,
            s: &CudaStorage,
            l: &Layout,
        ) -> Result<CudaStorage> {
            let n = op.q.rows * op.q.cols;
            let dev = s.device().clone();
            let f = function(&dev, &NF4, &super::entry("nf4_dequantize", op.dtype)?)?;
            let packed = view::<u8>(s, l)?;
            let out = unsafe { dev.alloc::<T>(n)? };
            with_cuda(&op.q.absmax_q, |qs, ql| {
                with_cuda(&op.q.absmax2, |a2s, a2l| {
                    with_cuda(&op.q.dynamic_map, |ms, ml| {
                        let absmax_q = view::<u8>(qs, ql)?;
                        let absmax2 = view::<f32>(a2s, a2l)?;
                        let map = view::<f32>(ms, ml)?;
                        let n64 = n as u64;
                        let stream = dev.cuda_stream();
                        let mut b = stream.launch_builder(&f);
                        b.arg(&packed).arg(&absmax_q).arg(&absmax2).arg(&map);
                        b.arg(&op.q.offset).arg(&out).arg(&n64);
                        unsafe { b.launch(elementwise(n)) }.map_err(launch_err)?;
                        Ok(())
                    })
                })
            })?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev))
        }
        let out = match self.dtype {
            DType::F32 => go::<f32>(self, s, l)?,
            _ => go::<half::bf16>(self, s, l)?,
        };
        Ok((out, Shape::from((self.q.rows, self.q.cols))))
    }
}
