//! RMSNorm with a frozen weight: `y = w · round(x / sqrt(mean(x²) + eps))` over the last
//! dimension, transformers' order of rounding; backward `dx` only (the weight is frozen).

use super::{check_float, cpu_store, cpu_values, round_as, tensor_values};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Tensor, bail};

/// `x: (..., n)`, `w: (n)` of the same dtype.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    check_float(x, "rms-norm", "the input")?;
    let n = x.dim(D::Minus1)?;
    if w.dims() != [n] || w.dtype() != x.dtype() {
        bail!(
            "rms-norm: weight {:?} {:?} does not fit input {:?} {:?}",
            w.dims(),
            w.dtype(),
            x.dims(),
            x.dtype()
        )
    }
    x.contiguous()?.apply_op1(RmsNorm {
        w: w.contiguous()?,
        eps: eps as f32,
    })
}

struct RmsNorm {
    w: Tensor,
    eps: f32,
}

fn rows(l: &Layout) -> Result<(usize, usize)> {
    let n = l.shape().dims().last().copied().unwrap_or(1).max(1);
    Ok((l.shape().elem_count() / n, n))
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_values(s, l, self.name())?;
        let w = tensor_values(&self.w)?;
        let (_, n) = rows(l)?;
        let dtype = s.dtype();
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks(n).zip(y.chunks_mut(n)) {
            let ss: f32 = xr.iter().map(|v| v * v).sum();
            let inv = 1.0 / (ss / n as f32 + self.eps).sqrt();
            for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(&w) {
                *yv = round_as(dtype, xv * inv) * wv;
            }
        }
        Ok((cpu_store(dtype, y, self.name())?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (r, n) = rows(l)?;
        let out = cuda::fwd(s, l, &self.w, r, n, self.eps)?;
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = x.apply_op2_no_bwd(
            &dy.contiguous()?,
            &RmsNormBwd {
                w: self.w.clone(),
                eps: self.eps,
            },
        )?;
        Ok(Some(dx))
    }
}

/// `(x, dy) → dx = inv·(w·dy − x̂·mean(w·dy·x̂))`.
struct RmsNormBwd {
    w: Tensor,
    eps: f32,
}

impl CustomOp2 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_values(s1, l1, self.name())?;
        let g = cpu_values(s2, l2, self.name())?;
        let w = tensor_values(&self.w)?;
        let (_, n) = rows(l1)?;
        let mut dx = vec![0f32; x.len()];
        for ((xr, gr), dr) in x.chunks(n).zip(g.chunks(n)).zip(dx.chunks_mut(n)) {
            let ss: f32 = xr.iter().map(|v| v * v).sum();
            let dot: f32 = xr.iter().zip(gr).zip(&w).map(|((x, g), w)| w * g * x).sum();
            let inv = 1.0 / (ss / n as f32 + self.eps).sqrt();
            let c = dot * inv * inv * inv / n as f32;
            for (((d, &xv), &gv), &wv) in dr.iter_mut().zip(xr).zip(gr).zip(&w) {
                *d = inv * wv * gv - c * xv;
            }
        }
        Ok((cpu_store(s1.dtype(), dx, self.name())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (r, n) = rows(l1)?;
        let out = cuda::bwd(s1, l1, s2, l2, &self.w, r, n, self.eps)?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{function, launch_err, per_row, view, with_cuda};
    use crate::source::RMS_NORM;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result, Tensor};

    pub fn fwd(
        s: &CudaStorage,
        l: &Layout,
        w: &Tensor,
        r: usize,
        n: usize,
        eps: f32,
    ) -> Result<CudaStorage> {
        fn go<T: CudaDType + DeviceRepr>(
            s: &CudaStorage,
            l: &Layout,
            w: &Tensor,
            r: usize,
            n: usize,
            eps: f32,
        ) -> Result<CudaStorage> {
            let dev = s.device().clone();
            let f = function(
                &dev,
                &RMS_NORM,
                &super::super::entry("rms_norm_fwd", s.dtype())?,
            )?;
            let x = view::<T>(s, l)?;
            let y = unsafe { dev.alloc::<T>(r * n)? };
            with_cuda(w, |ws, wl| {
                let w = view::<T>(ws, wl)?;
                let n32 = n as u32;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&w).arg(&y).arg(&n32).arg(&eps);
                unsafe { b.launch(per_row(r, n)) }.map_err(launch_err)?;
                Ok(())
            })?;
            Ok(CudaStorage::wrap_cuda_slice(y, dev))
        }
        match s.dtype() {
            DType::F32 => go::<f32>(s, l, w, r, n, eps),
            _ => go::<half::bf16>(s, l, w, r, n, eps),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        w: &Tensor,
        r: usize,
        n: usize,
        eps: f32,
    ) -> Result<CudaStorage> {
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaDType + DeviceRepr>(
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            w: &Tensor,
            r: usize,
            n: usize,
            eps: f32,
        ) -> Result<CudaStorage> {
            let dev = s1.device().clone();
            let f = function(
                &dev,
                &RMS_NORM,
                &super::super::entry("rms_norm_bwd", s1.dtype())?,
            )?;
            let x = view::<T>(s1, l1)?;
            let g = view::<T>(s2, l2)?;
            let dx = unsafe { dev.alloc::<T>(r * n)? };
            with_cuda(w, |ws, wl| {
                let w = view::<T>(ws, wl)?;
                let n32 = n as u32;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&w).arg(&g).arg(&dx).arg(&n32).arg(&eps);
                unsafe { b.launch(per_row(r, n)) }.map_err(launch_err)?;
                Ok(())
            })?;
            Ok(CudaStorage::wrap_cuda_slice(dx, dev))
        }
        match s1.dtype() {
            DType::F32 => go::<f32>(s1, l1, s2, l2, w, r, n, eps),
            _ => go::<half::bf16>(s1, l1, s2, l2, w, r, n, eps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The backward equals candle's autograd through the composed forward.
    #[test]
    fn backward_matches_autograd() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 16), &dev)?)?;
        let w = Tensor::randn(1f32, 0.3, 16, &dev)?;
        let up = Tensor::randn(0f32, 1.0, (3, 5, 16), &dev)?;
        let fused = rms_norm(x.as_tensor(), &w, 1e-5)?;
        let var = x.as_tensor().sqr()?.mean_keepdim(D::Minus1)?;
        let composed = x
            .as_tensor()
            .broadcast_mul(&(var + 1e-5)?.sqrt()?.recip()?)?
            .broadcast_mul(&w)?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "forward differs by {diff}");
        let g1 = (fused * &up)?.sum_all()?.backward()?;
        let g2 = (composed * &up)?.sum_all()?.backward()?;
        let d1 = g1.get(x.as_tensor()).unwrap();
        let d2 = g2.get(x.as_tensor()).unwrap();
        let diff = (d1 - d2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "backward differs by {diff}");
        Ok(())
    }

    #[test]
    fn bf16_rounds_the_normalised_value_before_the_weight() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 32), &dev)?;
        let w = Tensor::randn(1f32, 0.3, 32, &dev)?;
        let y16 = rms_norm(&x.to_dtype(DType::BF16)?, &w.to_dtype(DType::BF16)?, 1e-6)?;
        let y32 = rms_norm(&x, &w, 1e-6)?;
        let diff = (y16.to_dtype(DType::F32)? - y32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 0.05, "bf16 differs from f32 by {diff}");
        Ok(())
    }

    #[test]
    fn mismatched_weight_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros(7, DType::F32, &dev).unwrap();
        let e = rms_norm(&x, &w, 1e-5).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
}
