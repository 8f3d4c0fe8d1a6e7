//! `x Wᵀ` for a frozen `W` (dense, or NF4 / int8 through [`Dequantize`]) whose backward computes
//! only the input's gradient `dy W`, never a weight gradient, on every device: candle's own
//! matmul backward would also compute and keep a model-sized gradient for a constant. The
//! product itself is candle's backend matmul (gemm on the CPU, cuBLAS on a GPU) reading `W`
//! through a transposed layout; a quantized `W` exists densely only inside one call.

use super::dequant::Dequantize;
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use std::sync::Arc;

/// The frozen weight of a product.
#[derive(Debug, Clone)]
pub enum Frozen {
    Dense(Tensor),
    Quant(Arc<dyn Dequantize>),
}

impl Frozen {
    /// `(out, in)`.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Frozen::Dense(w) => w.dims2(),
            Frozen::Quant(q) => Ok(q.dims()),
        }
    }

    /// The dense values `[out, in]` as `dtype` on `like`'s device (a view when they already
    /// are; otherwise a transient copy).
    pub fn dense(&self, dtype: DType, like: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Frozen::Dense(w) => w.to_dtype(dtype)?.to_device(like.device()),
            Frozen::Quant(q) => q.clone().dense_on(dtype, like.device()),
        }
    }
}

/// `x: (m, in)` → `(m, out)` in `x`'s dtype.
pub fn frozen_matmul(x: &Tensor, w: &Frozen) -> Result<Tensor> {
    let (_, k) = w.dims()?;
    if x.dim(1)? != k {
        return Err(candle_core::Error::Msg(format!(
            "frozen-matmul: input {:?} does not fit a weight with {k} inputs",
            x.shape()
        ))
        .into());
    }
    Ok(x.apply_op1(FrozenMatmul { w: w.clone() })?)
}

struct FrozenMatmul {
    w: Frozen,
}

impl FrozenMatmul {
    /// `x (m, k) · Wᵀ` on `x`'s backend.
    fn product<S: BackendStorage>(
        &self,
        x: &S,
        l: &Layout,
        dev: candle_core::Device,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let (n, _) = self.w.dims()?;
        let w = match &self.w {
            Frozen::Dense(w) if w.dtype() == x.dtype() => w.clone(),
            Frozen::Dense(w) => w.to_dtype(x.dtype())?,
            Frozen::Quant(q) => q.clone().dense_on(x.dtype(), &dev)?,
        };
        let (ws, wl) = w.storage_and_layout();
        let Some(wst) = pick(&ws) else {
            candle_core::bail!("frozen-matmul: the weight is on another device than the input")
        };
        let out = x.matmul(wst, (1, m, n, k), l, &wl.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.product(s, l, candle_core::Device::Cpu, |st| match st {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let dev = candle_core::Device::Cuda(s.device().clone());
        self.product(s, l, dev, |st| match st {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    /// `dx = dy W`; no weight gradient.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(dy.matmul(&self.w.dense(dy.dtype(), dy)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_diff, randn};
    use candle_core::Var;

    #[derive(Debug)]
    struct Rows(Vec<f32>, usize, usize);
    impl Dequantize for Rows {
        fn dims(&self) -> (usize, usize) {
            (self.1, self.2)
        }
        fn dequantize(&self) -> Vec<f32> {
            self.0.clone()
        }
    }

    /// Forward and input gradient as candle's plain matmul; the weight gets no gradient even
    /// when it is a variable (the op never reads it as an input).
    #[test]
    fn issue_12_frozen_matmul_gives_the_input_gradient_only() {
        for dtype in [DType::F32, DType::BF16] {
            let x = Var::from_tensor(&randn(&[9, 12], 1).to_dtype(dtype).unwrap()).unwrap();
            let wv = randn(&[5, 12], 2);
            let w = Var::from_tensor(&wv.to_dtype(dtype).unwrap()).unwrap();
            let dense = Frozen::Dense(w.as_tensor().clone());
            let quant = Frozen::Quant(Arc::new(Rows(
                wv.flatten_all().unwrap().to_vec1().unwrap(),
                5,
                12,
            )));
            let reference = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
            let g_ref = reference.sum_all().unwrap().backward().unwrap();
            for base in [dense, quant] {
                let y = frozen_matmul(x.as_tensor(), &base).unwrap();
                assert_eq!(y.dtype(), dtype);
                let tol = if dtype == DType::F32 { 1e-5 } else { 5e-2 };
                assert!(max_diff(&y, &reference) < tol);
                let g = y.sum_all().unwrap().backward().unwrap();
                let d = max_diff(
                    g.get(x.as_tensor()).unwrap(),
                    g_ref.get(x.as_tensor()).unwrap(),
                );
                assert!(d < tol, "{d}");
                assert!(
                    g.get(w.as_tensor()).is_none(),
                    "a frozen weight got a gradient"
                );
            }
        }
    }
}
