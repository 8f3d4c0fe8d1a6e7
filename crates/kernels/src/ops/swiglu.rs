//! SwiGLU's gate `silu(g)·u` as one op (the MLP keeps `g` and `u` instead of four temporaries);
//! the backward computes both input gradients in one pass.

use super::{check_float, cpu_store, cpu_values};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check_float(gate, "swiglu", "the gate")?;
    if gate.dims() != up.dims() || gate.dtype() != up.dtype() {
        bail!(
            "swiglu: gate {:?} {:?} and up {:?} {:?} differ",
            gate.dims(),
            gate.dtype(),
            up.dims(),
            up.dtype()
        )
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + (-a).exp())
}

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = cpu_values(s1, l1, self.name())?;
        let u = cpu_values(s2, l2, self.name())?;
        let y = g
            .iter()
            .zip(&u)
            .map(|(&a, &b)| a * sigmoid(a) * b)
            .collect();
        Ok((cpu_store(s1.dtype(), y, self.name())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::run(&[(s1, l1), (s2, l2)], 1)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass writes both gradients, stacked: (2, ...).
        let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &SwigluBwd)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

struct SwigluBwd;

impl CustomOp3 for SwigluBwd {
    fn name(&self) -> &'static str {
        "swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = cpu_values(s1, l1, self.name())?;
        let u = cpu_values(s2, l2, self.name())?;
        let dy = cpu_values(s3, l3, self.name())?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        for i in 0..n {
            let (a, s) = (g[i], sigmoid(g[i]));
            out[i] = dy[i] * u[i] * s * (1.0 + a * (1.0 - s));
            out[n + i] = dy[i] * a * s;
        }
        Ok((cpu_store(s1.dtype(), out, self.name())?, stacked(l1)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::run(&[(s1, l1), (s2, l2), (s3, l3)], 2)?, stacked(l1)))
    }
}

fn stacked(l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(l.shape().dims());
    Shape::from(dims)
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{elementwise, function, launch_err, view};
    use crate::source::SWIGLU;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result};

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
            let f = function(&dev, &SWIGLU, &super::super::entry(op, s0.dtype())?)?;
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
            _ => go::<half::bf16>(inputs, outputs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_silu_times_up_and_its_autograd() -> Result<()> {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 7), &dev)?)?;
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (3, 7), &dev)?;
        let fused = swiglu(g.as_tensor(), u.as_tensor())?;
        let composed = (g.as_tensor().silu()? * u.as_tensor())?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (composed * &w)?.sum_all()?.backward()?;
        for v in [&g, &u] {
            let diff = (g1.get(v.as_tensor()).unwrap() - g2.get(v.as_tensor()).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "backward differs by {diff}");
        }
        Ok(())
    }
}
