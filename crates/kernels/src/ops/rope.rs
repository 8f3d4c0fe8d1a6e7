//! RoPE in transformers' non-interleaved layout, `y = x·cos + rotate_half(x)·sin`, for
//! `x: (B, H, T, D)` and `cos, sin` holding `B·T·D` values (`(B, 1, T, D)` as the model builds
//! them). The backward is the transposed rotation, the same kernel with its `backward` flag.

use super::{check_float, cpu_store, cpu_values, tensor_values};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    check_float(x, "rope", "the input")?;
    let (b, _h, t, d) = x.dims4()?;
    if d % 2 != 0 {
        bail!("rope: head dimension {d} is odd")
    }
    for (what, c) in [("cos", cos), ("sin", sin)] {
        if c.elem_count() != b * t * d || c.dtype() != x.dtype() {
            bail!(
                "rope: {what} {:?} {:?} does not fit input {:?} {:?} (B·T·D values expected)",
                c.dims(),
                c.dtype(),
                x.dims(),
                x.dtype()
            )
        }
    }
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        backward: false,
    })
}

#[derive(Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    backward: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        if self.backward { "rope-bwd" } else { "rope" }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_values(s, l, self.name())?;
        let (_, h, t, d) = l.shape().dims4()?;
        let cos = tensor_values(&self.cos)?;
        let sin = tensor_values(&self.sin)?;
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        for (i, yv) in y.iter_mut().enumerate() {
            let k = i % d;
            let tt = (i / d) % t;
            let b = i / (d * t * h);
            let cs = (b * t + tt) * d;
            let base = i - k;
            *yv = if !self.backward {
                let rot = if k < half {
                    -x[base + k + half]
                } else {
                    x[base + k - half]
                };
                x[i] * cos[cs + k] + rot * sin[cs + k]
            } else {
                let rot = if k < half {
                    x[base + k + half] * sin[cs + k + half]
                } else {
                    -x[base + k - half] * sin[cs + k - half]
                };
                x[i] * cos[cs + k] + rot
            };
        }
        Ok((cpu_store(s.dtype(), y, self.name())?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::{elementwise, function, launch_err, view, with_cuda};
        use crate::source::ROPE;
        use candle_core::backend::BackendStorage;
        use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
        use candle_core::cuda::{CudaDType, CudaStorage};

        fn go<T: CudaDType + DeviceRepr>(
            op: &Rope,
            s: &CudaStorage,
            l: &Layout,
        ) -> Result<CudaStorage> {
            let (_, h, t, d) = l.shape().dims4()?;
            let n = l.shape().elem_count();
            let dev = s.device().clone();
            let f = function(&dev, &ROPE, &super::entry("rope", s.dtype())?)?;
            let x = view::<T>(s, l)?;
            let y = unsafe { dev.alloc::<T>(n)? };
            with_cuda(&op.cos, |cs, cl| {
                with_cuda(&op.sin, |ss, sl| {
                    let cos = view::<T>(cs, cl)?;
                    let sin = view::<T>(ss, sl)?;
                    let (h, t, d, n64, bw) =
                        (h as u32, t as u32, d as u32, n as u64, op.backward as i32);
                    let stream = dev.cuda_stream();
                    let mut b = stream.launch_builder(&f);
                    b.arg(&x).arg(&cos).arg(&sin).arg(&y);
                    b.arg(&h).arg(&t).arg(&d).arg(&n64).arg(&bw);
                    unsafe { b.launch(elementwise(n)) }.map_err(launch_err)?;
                    Ok(())
                })
            })?;
            Ok(CudaStorage::wrap_cuda_slice(y, dev))
        }
        let out = match s.dtype() {
            candle_core::DType::F32 => go::<f32>(self, s, l)?,
            _ => go::<half::bf16>(self, s, l)?,
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = Rope {
            backward: true,
            ..self.clone()
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
    }

    /// Forward and backward against autograd through the composed op, with cos/sin whose two
    /// halves differ (the kernel must not assume they repeat).
    #[test]
    fn matches_the_composed_op_and_its_autograd() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 5, 8);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?)?;
        let cos = Tensor::randn(0f32, 1.0, (b, 1, t, d), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (b, 1, t, d), &dev)?;
        let up = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
        let fused = rope(x.as_tensor(), &cos, &sin)?;
        let composed = reference(x.as_tensor(), &cos, &sin)?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");
        let g1 = (fused * &up)?.sum_all()?.backward()?;
        let g2 = (composed * &up)?.sum_all()?.backward()?;
        let diff = (g1.get(x.as_tensor()).unwrap() - g2.get(x.as_tensor()).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "backward differs by {diff}");
        Ok(())
    }
}
