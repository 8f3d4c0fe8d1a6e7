//! SwiGLU's gate, `silu(g) · u` elementwise. CPU: one multi-threaded pass forward and one
//! backward, f32 inside. GPU: `kernels/swiglu.cu`, forward and backward (both gradients in one
//! pass).

use super::{CHUNK, Op, cpu_f32, cpu_store, require, tensor_from_f32, vals};
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `silu(g) · u`; `g` and `u` of one shape and dtype.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if !g.device().is_cpu() {
        require(Op::SwiGlu, g)?;
    }
    if g.shape() != u.shape() || g.dtype() != u.dtype() {
        return Err(candle_core::Error::Msg(format!(
            "swiglu: gate {:?} {:?} and up {:?} {:?} differ",
            g.dims(),
            g.dtype(),
            u.dims(),
            u.dtype()
        ))
        .into());
    }
    Ok(g.contiguous()?.apply_op2(&u.contiguous()?, SwiGluOp)?)
}

struct SwiGluOp;

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let g = cpu_f32(s1, l1, self.name())?;
        let u = cpu_f32(s2, l2, self.name())?;
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(yc, (gc, uc))| {
                for ((y, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
                    *y = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok((cpu_store(s1.dtype(), y, self.name())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::run(&[(s1, l1), (s2, l2)], 1)?, l1.shape().clone()))
    }

    /// `σ = sigmoid(g)`: `dg = dy·u·σ·(1 + g·(1 − σ))`, `du = dy·g·σ`.
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if g.device().is_cuda() {
            // One kernel pass writes both gradients, stacked: (2, ...).
            let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &cuda::SwigluBwd)?;
            return Ok((Some(both.get(0)?), Some(both.get(1)?)));
        }
        let (gv, uv, dyv) = (vals(g)?, vals(u)?, vals(dy)?);
        let mut dg = vec![0f32; gv.len()];
        let mut du = vec![0f32; gv.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(gv.par_chunks(CHUNK).zip(uv.par_chunks(CHUNK)))
            .zip(dyv.par_chunks(CHUNK))
            .for_each(|(((dgc, duc), (gc, uc)), dyc)| {
                for i in 0..gc.len() {
                    let s = 1.0 / (1.0 + (-gc[i]).exp());
                    let silu = gc[i] * s;
                    duc[i] = dyc[i] * silu;
                    dgc[i] = dyc[i] * uc[i] * s * (1.0 + gc[i] * (1.0 - s));
                }
            });
        Ok((
            Some(tensor_from_f32(dg, g.shape(), g.dtype())?),
            Some(tensor_from_f32(du, u.shape(), u.dtype())?),
        ))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape};
    use runner_kernels::cuda::{elementwise, entry, function, launch_err, view};
    use runner_kernels::source::SWIGLU;

    /// The backward on a GPU: `(g, u, dy) → (2, ...)` = dg then du.
    pub struct SwigluBwd;

    impl CustomOp3 for SwigluBwd {
        fn name(&self) -> &'static str {
            "swiglu-bwd"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("swiglu-bwd: GPU only (the CPU backward is SwiGluOp::bwd)")
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let mut dims = vec![2];
            dims.extend_from_slice(l1.shape().dims());
            Ok((run(&[(s1, l1), (s2, l2), (s3, l3)], 2)?, Shape::from(dims)))
        }
    }

    /// Forward (`outputs == 1`, inputs g, u) or backward (`outputs == 2`, inputs g, u, dy; the
    /// two gradients written into one buffer, dg then du).
    pub fn run(inputs: &[(&CudaStorage, &Layout)], outputs: usize) -> Result<CudaStorage> {
        fn go<T: CudaDType + DeviceRepr>(
            inputs: &[(&CudaStorage, &Layout)],
            outputs: usize,
        ) -> Result<CudaStorage> {
            let (s0, l0) = inputs[0];
            let n = l0.shape().elem_count();
            let dev = s0.device().clone();
            let op = if outputs == 1 {
                "swiglu_fwd"
            } else {
                "swiglu_bwd"
            };
            let f = function(&dev, &SWIGLU, &entry(op, s0.dtype())?)?;
            let views = inputs
                .iter()
                .map(|(s, l)| view::<T>(s, l))
                .collect::<Result<Vec<_>>>()?;
            let out = unsafe { dev.alloc::<T>(outputs * n)? };
            let n64 = n as u64;
            let stream = dev.cuda_stream();
            {
                // Views of the output (both halves for the backward) live only for the launch.
                let first = out.slice(0..n);
                let second = out.slice(n * (outputs - 1)..n * outputs);
                let mut b = stream.launch_builder(&f);
                for v in &views {
                    b.arg(v);
                }
                b.arg(&first);
                if outputs == 2 {
                    b.arg(&second);
                }
                b.arg(&n64);
                unsafe { b.launch(elementwise(n)) }.map_err(launch_err)?;
            }
            Ok(CudaStorage::wrap_cuda_slice(out, dev))
        }
        match inputs[0].0.dtype() {
            DType::F32 => go::<f32>(inputs, outputs),
            DType::BF16 => go::<half::bf16>(inputs, outputs),
            other => candle_core::bail!("swiglu: no CUDA kernel for {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check, check_typed, randn};
    use candle_core::DType;

    /// The slow reference: `g / (1 + exp(-g)) · u` from candle's elementwise ops.
    fn swiglu_slow(g: &Tensor, u: &Tensor) -> Tensor {
        let sig = (g.neg().unwrap().exp().unwrap() + 1.0)
            .unwrap()
            .recip()
            .unwrap();
        ((g * sig).unwrap() * u).unwrap()
    }

    #[test]
    fn swiglu_matches_the_reference_f32() {
        check(
            &[(randn(&[70, 300], 3) * 6.0).unwrap(), randn(&[70, 300], 4)],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| swiglu_slow(&t[0], &t[1]),
            1e-5,
        );
    }

    #[test]
    fn issue_12_swiglu_half_precision_matches_the_f32_reference() {
        for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
            check_typed(
                &[(randn(&[70, 300], 3) * 6.0).unwrap(), randn(&[70, 300], 4)],
                &[dtype, dtype],
                |t| swiglu(&t[0], &t[1]).unwrap(),
                |t| swiglu_slow(&t[0], &t[1]),
                tol,
            );
        }
    }
}
