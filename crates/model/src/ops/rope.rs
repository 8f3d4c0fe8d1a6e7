//! Rotary position embedding, `x·cos + rotate_half(x)·sin`, on `x: (B, T, n, D)` in that layout
//! (no transpose), with cos/sin of every (row, position) from a [`RopeTable`] computed as
//! transformers does. The backward is the opposite rotation. CPU: one multi-threaded pass.
//! GPU: `kernels/rope.cu` on the table uploaded once.

use super::{Op, cpu_f32, cpu_store, require, tensor_from_f32, vals};
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// cos/sin of every (row, position, frequency): `(B·T, D/2)` each, f32, as transformers computes
/// them (`inv_freq · position` in f32, then cos and sin).
#[derive(Debug)]
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// The table on a GPU, `(B·T, 1, D/2)` each, uploaded on first use there.
    on_device: Mutex<Option<(Tensor, Tensor)>>,
}

impl RopeTable {
    pub fn new(inv_freq: &[f32], positions: &[u32]) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                let a = f * p as f32;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self {
            half,
            cos,
            sin,
            on_device: Mutex::new(None),
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn device_tables(&self, dev: &Device) -> Result<(Tensor, Tensor)> {
        let mut g = self.on_device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, s)) = &*g
            && c.device().same_device(dev)
        {
            return Ok((c.clone(), s.clone()));
        }
        let n = self.cos.len() / self.half.max(1);
        let c = Tensor::from_slice(&self.cos, (n, 1, self.half), dev)?;
        let s = Tensor::from_slice(&self.sin, (n, 1, self.half), dev)?;
        *g = Some((c.clone(), s.clone()));
        Ok((c, s))
    }
}

/// RoPE on `x: (B, T, n, D)`; the result has `x`'s dtype.
pub fn rope(x: &Tensor, table: &Arc<RopeTable>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        require(Op::Rope, x)?;
    }
    let (b, t, _, d) = x.dims4()?;
    if d != 2 * table.half || table.cos.len() != b * t * table.half {
        return Err(candle_core::Error::Msg(format!(
            "rope: shape {:?} does not match the table",
            x.dims()
        ))
        .into());
    }
    Ok(x.contiguous()?.apply_op1(RopeOp {
        table: table.clone(),
        inverse: false,
    })?)
}

struct RopeOp {
    table: Arc<RopeTable>,
    /// Rotate by `-θ` (the backward of a rotation is the opposite rotation).
    inverse: bool,
}

impl RopeOp {
    fn apply(&self, x: &[f32], shape: &Shape) -> candle_core::Result<Vec<f32>> {
        let (b, t, n, d) = shape.dims4()?;
        let half = self.table.half;
        if d != 2 * half || self.table.cos.len() != b * t * half {
            candle_core::bail!("rope: shape {shape:?} does not match the table");
        }
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        // One task per (row, position): its n heads share cos/sin.
        y.par_chunks_mut(n * d)
            .zip(x.par_chunks(n * d))
            .enumerate()
            .for_each(|(pos, (yp, xp))| {
                let cos = &self.table.cos[pos * half..(pos + 1) * half];
                let sin = &self.table.sin[pos * half..(pos + 1) * half];
                for (yh, xh) in yp.chunks_mut(d).zip(xp.chunks(d)) {
                    let (x1, x2) = xh.split_at(half);
                    let (y1, y2) = yh.split_at_mut(half);
                    for i in 0..half {
                        let s = sign * sin[i];
                        y1[i] = x1[i] * cos[i] + (-x2[i]) * s;
                        y2[i] = x2[i] * cos[i] + x1[i] * s;
                    }
                }
            });
        Ok(y)
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, self.name())?;
        let y = self.apply(&x, l.shape())?;
        Ok((cpu_store(s.dtype(), y, self.name())?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let dev = Device::Cuda(s.device().clone());
        let (cos, sin) = self
            .table
            .device_tables(&dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((
            cuda::run(s, l, &cos, &sin, self.inverse)?,
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inv = RopeOp {
            table: self.table.clone(),
            inverse: !self.inverse,
        };
        if !dy.device().is_cpu() {
            return Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&inv)?));
        }
        let dx = inv.apply(&vals(dy)?, dy.shape())?;
        Ok(Some(tensor_from_f32(dx, dy.shape(), dy.dtype())?))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result, Tensor};
    use runner_kernels::cuda::{elementwise, entry, function, launch_err, view, with_cuda};
    use runner_kernels::source::ROPE;

    pub fn run(
        s: &CudaStorage,
        l: &Layout,
        cos: &Tensor,
        sin: &Tensor,
        inverse: bool,
    ) -> Result<CudaStorage> {
        fn go<T: CudaDType + DeviceRepr>(
            s: &CudaStorage,
            l: &Layout,
            cos: &Tensor,
            sin: &Tensor,
            inverse: bool,
        ) -> Result<CudaStorage> {
            let (_, _, h, d) = l.shape().dims4()?;
            let n = l.shape().elem_count();
            let dev = s.device().clone();
            let f = function(&dev, &ROPE, &entry("rope", s.dtype())?)?;
            let x = view::<T>(s, l)?;
            let y = unsafe { dev.alloc::<T>(n)? };
            with_cuda(cos, |cs, cl| {
                with_cuda(sin, |ss, sl| {
                    let (c, si) = (view::<f32>(cs, cl)?, view::<f32>(ss, sl)?);
                    let (h32, d32, n64, inv) = (h as u32, d as u32, n as u64, i32::from(inverse));
                    let stream = dev.cuda_stream();
                    let mut b = stream.launch_builder(&f);
                    b.arg(&x).arg(&c).arg(&si).arg(&y);
                    b.arg(&h32).arg(&d32).arg(&n64).arg(&inv);
                    unsafe { b.launch(elementwise(n)) }.map_err(launch_err)?;
                    Ok(())
                })
            })?;
            Ok(CudaStorage::wrap_cuda_slice(y, dev))
        }
        match s.dtype() {
            DType::F32 => go::<f32>(s, l, cos, sin, inverse),
            DType::BF16 => go::<half::bf16>(s, l, cos, sin, inverse),
            other => candle_core::bail!("rope: no CUDA kernel for {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check, check_typed, randn};
    use candle_core::{D, DType};

    /// The slow reference, transformers' formula on `(B, H, T, D)`: `x·cos + rotate_half(x)·sin`
    /// with cos/sin repeated over both halves.
    fn rope_slow(x: &Tensor, inv: &[f32], positions: &[u32]) -> Tensor {
        let (b, t, _n, d) = x.dims4().unwrap();
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for &p in positions {
            for _ in 0..2 {
                for &f in inv {
                    cos.push((f * p as f32).cos());
                    sin.push((f * p as f32).sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, 1, d), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(sin, (b, t, 1, d), &Device::Cpu).unwrap();
        let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap()
    }

    fn case() -> (Vec<f32>, Vec<u32>, Arc<RopeTable>) {
        let (b, t, d) = (2, 7, 8);
        let positions: Vec<u32> = (0..b * t).map(|i| (i % t) as u32 * 3 + 1).collect();
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 100f32.powf(i as f32 / 4.0))
            .collect();
        let table = Arc::new(RopeTable::new(&inv, &positions));
        (inv, positions, table)
    }

    #[test]
    fn rope_matches_the_reference_f32() {
        let (inv, positions, table) = case();
        check(
            &[randn(&[2, 7, 3, 8], 5)],
            |x| rope(&x[0], &table).unwrap(),
            |x| rope_slow(&x[0], &inv, &positions),
            1e-6,
        );
    }

    #[test]
    fn issue_12_rope_half_precision_matches_the_f32_reference() {
        let (inv, positions, table) = case();
        for (dtype, tol) in [(DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            check_typed(
                &[randn(&[2, 7, 3, 8], 5)],
                &[dtype],
                |x| rope(&x[0], &table).unwrap(),
                |x| rope_slow(&x[0], &inv, &positions),
                tol,
            );
        }
    }
}
