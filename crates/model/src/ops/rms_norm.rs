//! RMSNorm, `w · round(x / sqrt(mean(x²) + eps))` over the last dimension, as transformers
//! computes it (in f32, rounded to the input's dtype before the weight). CPU: one
//! multi-threaded pass forward and one backward, f32 inside whatever the dtype. GPU:
//! `kernels/rms_norm.cu` forward and backward; the kernel computes no weight gradient, so a
//! trainable norm weight on a GPU is an error, never a silently missing gradient.

use super::{Op, ROWS_PER_TASK, cpu_f32, cpu_store, require, tensor_from_f32, vals, wants_grad};
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `x: (..., C)`, `w: (C)`; the result has `x`'s dtype.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    if w.dims() != [c] {
        return Err(candle_core::Error::Msg(format!(
            "rms-norm: weight {:?} does not fit input {:?}",
            w.dims(),
            x.dims()
        ))
        .into());
    }
    let op = RmsNormOp { eps: eps as f32 };
    if x.device().is_cpu() {
        return Ok(x.contiguous()?.apply_op2(w, op)?);
    }
    require(Op::RmsNorm, x)?;
    // The kernel reads the weight in the input's dtype.
    Ok(x.contiguous()?
        .apply_op2(&w.to_dtype(x.dtype())?.contiguous()?, op)?)
}

struct RmsNormOp {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// The value `dtype` would hold (identity for f32).
fn round_as(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dtype = s1.dtype();
        let x = cpu_f32(s1, l1, self.name())?;
        let w = cpu_f32(s2, l2, self.name())?;
        let c = w.len();
        if x.len() % c.max(1) != 0 {
            candle_core::bail!("rms-norm: input {:?}, weight of {c}", l1.shape())
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK))
            .for_each(|(yb, xb)| {
                for (yr, xr) in yb.chunks_mut(c).zip(xb.chunks(c)) {
                    let inv = inv_rms(xr, self.eps);
                    for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w.iter()) {
                        *yv = round_as(dtype, xv * inv) * wv;
                    }
                }
            });
        Ok((cpu_store(dtype, y, self.name())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let n = l2.shape().elem_count();
        let r = l1.shape().elem_count() / n.max(1);
        let out = cuda::run(&[(s1, l1), (s2, l2)], r, n, self.eps)?;
        Ok((out, l1.shape().clone()))
    }

    /// With `x̂ = x·inv` and `g = dy·w`: `dx = inv·(g − x̂·mean(g·x̂))`, `dw = Σ_rows dy·x̂`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            if wants_grad(w) {
                candle_core::bail!("rms-norm: the CUDA kernel computes no weight gradient")
            }
            let dx =
                x.apply_op3_no_bwd(w, &dy.contiguous()?, &cuda::RmsNormBwd { eps: self.eps })?;
            return Ok((Some(dx), None));
        }
        let wv = vals(w)?;
        let c = wv.len();
        let want_w = wants_grad(w);
        let (xv, dyv) = (vals(x)?, vals(dy)?);
        let mut dx = vec![0f32; xv.len()];
        let dw = dx
            .par_chunks_mut(c * ROWS_PER_TASK)
            .zip(xv.par_chunks(c * ROWS_PER_TASK))
            .zip(dyv.par_chunks(c * ROWS_PER_TASK))
            .map(|((dxb, xb), dyb)| {
                let mut dw = if want_w { vec![0f32; c] } else { Vec::new() };
                for ((dxr, xr), dyr) in dxb.chunks_mut(c).zip(xb.chunks(c)).zip(dyb.chunks(c)) {
                    let inv = inv_rms(xr, self.eps);
                    let dot: f32 = xr
                        .iter()
                        .zip(dyr)
                        .zip(wv.iter())
                        .map(|((x, d), w)| d * w * x * inv)
                        .sum();
                    let mean = dot / c as f32;
                    for i in 0..c {
                        let xh = xr[i] * inv;
                        dxr[i] = inv * (dyr[i] * wv[i] - xh * mean);
                        if want_w {
                            dw[i] += dyr[i] * xh;
                        }
                    }
                }
                dw
            })
            .reduce(Vec::new, |a, b| {
                if a.is_empty() {
                    b
                } else if b.is_empty() {
                    a
                } else {
                    a.iter().zip(&b).map(|(p, q)| p + q).collect()
                }
            });
        let dx = tensor_from_f32(dx, x.shape(), x.dtype())?;
        let dw = if want_w {
            Some(tensor_from_f32(dw, w.shape(), w.dtype())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape};
    use runner_kernels::cuda::{entry, function, launch_err, per_row, view};
    use runner_kernels::source::RMS_NORM;

    /// The backward on a GPU: `(x, w, dy) → dx`.
    pub struct RmsNormBwd {
        pub eps: f32,
    }

    impl CustomOp3 for RmsNormBwd {
        fn name(&self) -> &'static str {
            "rms-norm-bwd"
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
            candle_core::bail!("rms-norm-bwd: GPU only (the CPU backward is RmsNormOp::bwd)")
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
            let n = l2.shape().elem_count();
            let r = l1.shape().elem_count() / n.max(1);
            let out = run(&[(s1, l1), (s2, l2), (s3, l3)], r, n, self.eps)?;
            Ok((out, l1.shape().clone()))
        }
    }

    /// Forward (inputs x, w) or backward (inputs x, w, dy), `r` rows of `n`.
    pub fn run(
        inputs: &[(&CudaStorage, &Layout)],
        r: usize,
        n: usize,
        eps: f32,
    ) -> Result<CudaStorage> {
        fn go<T: CudaDType + DeviceRepr>(
            inputs: &[(&CudaStorage, &Layout)],
            r: usize,
            n: usize,
            eps: f32,
        ) -> Result<CudaStorage> {
            let (s0, _) = inputs[0];
            let dev = s0.device().clone();
            let op = if inputs.len() == 2 {
                "rms_norm_fwd"
            } else {
                "rms_norm_bwd"
            };
            let f = function(&dev, &RMS_NORM, &entry(op, s0.dtype())?)?;
            let views = inputs
                .iter()
                .map(|(s, l)| view::<T>(s, l))
                .collect::<Result<Vec<_>>>()?;
            let out = unsafe { dev.alloc::<T>(r * n)? };
            let n32 = n as u32;
            let stream = dev.cuda_stream();
            // Kernel arguments: fwd (x, w, y, n, eps); bwd (x, w, dy, dx, n, eps).
            let mut b = stream.launch_builder(&f);
            for v in &views {
                b.arg(v);
            }
            b.arg(&out).arg(&n32).arg(&eps);
            unsafe { b.launch(per_row(r, n)) }.map_err(launch_err)?;
            drop(b);
            Ok(CudaStorage::wrap_cuda_slice(out, dev))
        }
        match inputs[0].0.dtype() {
            DType::F32 => go::<f32>(inputs, r, n, eps),
            DType::BF16 => go::<half::bf16>(inputs, r, n, eps),
            other => candle_core::bail!("rms-norm: no CUDA kernel for {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check, check_typed, randn};

    /// The slow reference: each row by hand, in f64.
    fn rms_norm_slow(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let dims = x.dims().to_vec();
        let c = *dims.last().unwrap();
        let x2 = x.reshape(((), c)).unwrap();
        let ms = x2.sqr().unwrap().mean_keepdim(1).unwrap();
        let inv = (ms + eps).unwrap().sqrt().unwrap().recip().unwrap();
        x2.broadcast_mul(&inv)
            .unwrap()
            .broadcast_mul(w)
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    #[test]
    fn rms_norm_matches_the_reference_f32() {
        check(
            &[randn(&[3, 5, 24], 1), randn(&[24], 2)],
            |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| rms_norm_slow(&t[0], &t[1], 1e-5),
            1e-5,
        );
    }

    /// bf16 / f16 activations and weight: within the dtype's rounding (2⁻⁸ relative for bf16)
    /// of the f32 reference on the same values.
    #[test]
    fn issue_12_rms_norm_half_precision_matches_the_f32_reference() {
        for (dtype, tol) in [(DType::BF16, 3e-2), (DType::F16, 4e-3)] {
            check_typed(
                &[(randn(&[4, 70, 64], 3) * 2.0).unwrap(), randn(&[64], 4)],
                &[dtype, dtype],
                |t| rms_norm(&t[0], &t[1], 1e-6).unwrap(),
                |t| rms_norm_slow(&t[0], &t[1], 1e-6),
                tol,
            );
        }
    }
}
