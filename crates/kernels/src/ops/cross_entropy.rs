//! Cross-entropy of one chunk of rows: `(N, V)` logits and `N` labels give `(N, 2)` statistics,
//! `(loss, logsumexp)` per row, computed in f32 whatever the logits' dtype. The backward turns
//! the upstream `(dloss, dlse)` into `dlogits` in one pass without keeping probabilities; the
//! caller chunks the tokens so that a chunk's logits are the only ones alive.

use super::{check_float, cpu_store, cpu_values};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

/// `logits: (N, V)` f32/bf16, `labels: (N)` u32 (each `< V`) → `(N, 2)` f32 `(loss, lse)`.
/// Differentiable with respect to the logits.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    check_float(logits, "cross-entropy", "the logits")?;
    let (n, v) = logits.dims2()?;
    if labels.dims() != [n] || labels.dtype() != DType::U32 {
        bail!(
            "cross-entropy: labels {:?} {:?} do not fit logits {:?} (N u32 labels expected)",
            labels.dims(),
            labels.dtype(),
            logits.dims()
        )
    }
    if n > 0 {
        let max = labels.max(0)?.to_scalar::<u32>()? as usize;
        if max >= v {
            bail!("cross-entropy: label {max} is outside the vocabulary of {v}")
        }
    }
    logits
        .contiguous()?
        .apply_op2(&labels.contiguous()?, CrossEntropy)
}

struct CrossEntropy;

fn labels_of(s: &CpuStorage, l: &Layout) -> Result<Vec<u32>> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(v[a..b].to_vec()),
        _ => bail!("cross-entropy: labels must be contiguous u32"),
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = cpu_values(s1, l1, self.name())?;
        let labels = labels_of(s2, l2)?;
        let (n, v) = l1.shape().dims2()?;
        let mut stats = vec![0f32; 2 * n];
        for (r, row) in logits.chunks(v.max(1)).enumerate().take(n) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = row.iter().map(|&x| (x - m).exp()).sum();
            let z = m + s.ln();
            stats[2 * r] = z - row[labels[r] as usize];
            stats[2 * r + 1] = z;
        }
        Ok((CpuStorage::F32(stats), Shape::from((n, 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, _) = l1.shape().dims2()?;
        Ok((cuda::fwd(s1, l1, s2, l2)?, Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        stats: &Tensor,
        dstats: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dlogits = logits.apply_op3_no_bwd(
            labels,
            &Tensor::cat(&[stats, &dstats.to_dtype(DType::F32)?], 1)?,
            &CrossEntropyBwd,
        )?;
        Ok((Some(dlogits), None))
    }
}

/// `(logits, labels, [stats | dstats] (N, 4)) → dlogits`.
struct CrossEntropyBwd;

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "cross-entropy-bwd"
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
        let logits = cpu_values(s1, l1, self.name())?;
        let labels = labels_of(s2, l2)?;
        let st = cpu_values(s3, l3, self.name())?;
        let (n, v) = l1.shape().dims2()?;
        let mut d = vec![0f32; n * v];
        for r in 0..n {
            let (z, dloss, dlse) = (st[4 * r + 1], st[4 * r + 2], st[4 * r + 3]);
            for j in 0..v {
                let p = (logits[r * v + j] - z).exp();
                let hit = if j == labels[r] as usize { dloss } else { 0.0 };
                d[r * v + j] = (dloss + dlse) * p - hit;
            }
        }
        Ok((cpu_store(s1.dtype(), d, self.name())?, l1.shape().clone()))
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
        Ok((cuda::bwd(s1, l1, s2, l2, s3, l3)?, l1.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{function, launch_err, per_row, view};
    use crate::source::CROSS_ENTROPY;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result};

    pub fn fwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<CudaStorage> {
        fn go<T: CudaDType + DeviceRepr>(
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<CudaStorage> {
            let (n, v) = l1.shape().dims2()?;
            let dev = s1.device().clone();
            let f = function(
                &dev,
                &CROSS_ENTROPY,
                &super::super::entry("cross_entropy_fwd", s1.dtype())?,
            )?;
            let logits = view::<T>(s1, l1)?;
            let labels = view::<u32>(s2, l2)?;
            let stats = unsafe { dev.alloc::<f32>(2 * n)? };
            if n > 0 {
                let v32 = v as u32;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&logits).arg(&labels).arg(&stats).arg(&v32);
                unsafe { b.launch(per_row(n, v)) }.map_err(launch_err)?;
            }
            Ok(CudaStorage::wrap_cuda_slice(stats, dev))
        }
        match s1.dtype() {
            DType::F32 => go::<f32>(s1, l1, s2, l2),
            _ => go::<half::bf16>(s1, l1, s2, l2),
        }
    }

    pub fn bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<CudaStorage> {
        fn go<T: CudaDType + DeviceRepr>(
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<CudaStorage> {
            let (n, v) = l1.shape().dims2()?;
            let dev = s1.device().clone();
            let f = function(
                &dev,
                &CROSS_ENTROPY,
                &super::super::entry("cross_entropy_bwd", s1.dtype())?,
            )?;
            let logits = view::<T>(s1, l1)?;
            let labels = view::<u32>(s2, l2)?;
            let sd = view::<f32>(s3, l3)?; // (N, 4): loss, lse, dloss, dlse
            let d = unsafe { dev.alloc::<T>(n * v)? };
            if n > 0 {
                let v32 = v as u32;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&logits).arg(&labels).arg(&sd).arg(&d).arg(&v32);
                unsafe { b.launch(per_row(n, v)) }.map_err(launch_err)?;
            }
            Ok(CudaStorage::wrap_cuda_slice(d, dev))
        }
        match s1.dtype() {
            DType::F32 => go::<f32>(s1, l1, s2, l2, s3, l3),
            _ => go::<half::bf16>(s1, l1, s2, l2, s3, l3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    /// Loss and logsumexp against log-softmax, and the backward (through both outputs) against
    /// autograd of the composed op.
    #[test]
    fn matches_log_softmax_and_its_autograd() -> Result<()> {
        let dev = Device::Cpu;
        let (n, v) = (6, 11);
        let logits = Var::from_tensor(&Tensor::randn(0f32, 3.0, (n, v), &dev)?)?;
        let labels = Tensor::from_vec(vec![0u32, 3, 10, 5, 5, 1], n, &dev)?;
        let stats = cross_entropy(logits.as_tensor(), &labels)?;
        let lse = logits.as_tensor().exp()?.sum_keepdim(D::Minus1)?.log()?;
        let picked = logits
            .as_tensor()
            .gather(&labels.unsqueeze(1)?, D::Minus1)?;
        let composed = Tensor::cat(&[(&lse - &picked)?, lse.clone()], 1)?;
        let diff = (&stats - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "forward differs by {diff}");
        let up = Tensor::randn(0f32, 1.0, (n, 2), &dev)?;
        let g1 = (stats * &up)?.sum_all()?.backward()?;
        let g2 = (composed * &up)?.sum_all()?.backward()?;
        let diff = (g1.get(logits.as_tensor()).unwrap() - g2.get(logits.as_tensor()).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "backward differs by {diff}");
        Ok(())
    }

    #[test]
    fn a_label_outside_the_vocabulary_is_an_error() {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let labels = Tensor::from_vec(vec![1u32, 4], 2, &dev).unwrap();
        let e = cross_entropy(&logits, &labels).unwrap_err().to_string();
        assert!(e.contains("outside the vocabulary of 4"), "{e}");
    }
}
