//! Cross-entropy of the LM head over the labelled positions, chunked: `Σ_i CE(h_i Wᵀ, label_i)`
//! for `h: (N, H)` (the labelled rows only), `W: (V, H)`. No `(N, V)` logits exist: one
//! `(chunk, V)` buffer at a time holds a chunk's logits, turned into `softmax − onehot` in place
//! and fed to the two gradient products. In training the forward computes the gradients for an
//! upstream gradient of 1 in the same pass (logits once) and the backward scales them.
//!
//! CPU: gemm + rayon, f32 inside (bf16/f16 inputs converted). GPU: the same chunks composed of
//! candle ops, logits upcast to f32 as transformers does.

use super::{Op, View, mm, require, tensor_from_f32, vals, wants_grad};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The summed loss, a scalar f32 on the graph of `h` and `W`. `train`: compute the gradients in
/// the forward pass (they are needed); otherwise the backward recomputes them if ever asked.
pub fn cross_entropy_sum(
    h: &Tensor,
    w: &Tensor,
    labels: Vec<u32>,
    chunk: usize,
    train: bool,
) -> Result<Tensor> {
    if !h.device().is_cpu() {
        require(Op::CrossEntropy, h)?;
    }
    let chunk = chunk.max(1);
    let want_dw = wants_grad(w);
    let eager = train && (h.track_op() || want_dw);
    let (value, dh, dw) = chunks(
        &h.detach(),
        &w.detach(),
        &labels,
        chunk,
        eager,
        eager && want_dw,
    )?;
    let stashed_value = Tensor::new(value, h.device())?;
    Ok(h.apply_op2(
        w,
        ChunkedCrossEntropy {
            labels,
            chunk,
            value,
            device_value: Mutex::new(Some(stashed_value)),
            stashed: Mutex::new((dh, dw)),
        },
    )?)
}

/// `(Σ loss, dh, dW)` on detached tensors.
type CeGrads = (f32, Option<Tensor>, Option<Tensor>);

fn chunks(
    h: &Tensor,
    w: &Tensor,
    labels: &[u32],
    chunk: usize,
    want_dh: bool,
    want_dw: bool,
) -> candle_core::Result<CeGrads> {
    let (n, hd) = h.dims2()?;
    let (v, wd) = w.dims2()?;
    if wd != hd || labels.len() != n {
        candle_core::bail!(
            "cross-entropy: h {:?}, W {:?}, {} labels",
            h.shape(),
            w.shape(),
            labels.len()
        );
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= v) {
        candle_core::bail!("cross-entropy: label {l} outside the vocabulary of {v}");
    }
    if h.device().is_cpu() {
        cpu(h, w, labels, chunk, want_dh, want_dw)
    } else {
        composed(h, w, labels, chunk, want_dh, want_dw)
    }
}

fn cpu(
    h: &Tensor,
    w: &Tensor,
    labels: &[u32],
    chunk: usize,
    want_dh: bool,
    want_dw: bool,
) -> candle_core::Result<CeGrads> {
    let (n, hd) = h.dims2()?;
    let v = w.dim(0)?;
    let (hv, wv) = (vals(h)?, vals(w)?);
    let chunk = chunk.clamp(1, n.max(1));
    let mut logits = vec![0f32; chunk * v];
    let mut dh = if want_dh {
        vec![0f32; n * hd]
    } else {
        Vec::new()
    };
    let mut dw = if want_dw {
        vec![0f32; v * hd]
    } else {
        Vec::new()
    };
    let mut total = 0f64;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let lg = &mut logits[..len * v];
        let h_rows = View::rows(hv[start * hd..].as_ptr(), hd);
        // SAFETY: h rows start..start+len and all of W are in bounds; `lg` is ours.
        unsafe {
            mm(
                (len, v, hd),
                lg.as_mut_ptr(),
                v,
                false,
                h_rows,
                View::rows(wv.as_ptr(), hd).t(),
                1.0,
                true,
            );
        }
        let grads = want_dh || want_dw;
        // Per-row losses summed in order afterwards: rayon's reduction tree varies from run to
        // run, and the logged loss must not.
        let row_losses: Vec<f64> = lg
            .par_chunks_mut(v)
            .zip(&labels[start..start + len])
            .map(|(row, &label)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
                let lse = max + sum.ln();
                let loss = lse - row[label as usize];
                if grads {
                    for x in row.iter_mut() {
                        *x = (*x - lse).exp();
                    }
                    row[label as usize] -= 1.0;
                }
                f64::from(loss)
            })
            .collect();
        total += row_losses.iter().sum::<f64>();
        let p = View::rows(lg.as_ptr(), v);
        // SAFETY: dh rows start..start+len and dW (V, H) are ours; the views are in bounds.
        unsafe {
            if want_dh {
                mm(
                    (len, hd, v),
                    dh[start * hd..].as_mut_ptr(),
                    hd,
                    false,
                    p,
                    View::rows(wv.as_ptr(), hd),
                    1.0,
                    true,
                );
            }
            if want_dw {
                mm(
                    (v, hd, len),
                    dw.as_mut_ptr(),
                    hd,
                    start > 0,
                    p.t(),
                    h_rows,
                    1.0,
                    true,
                );
            }
        }
    }
    let dh = want_dh
        .then(|| tensor_from_f32(dh, (n, hd), h.dtype()))
        .transpose()?;
    let dw = want_dw
        .then(|| tensor_from_f32(dw, (v, hd), w.dtype()))
        .transpose()?;
    Ok((total as f32, dh, dw))
}

/// The GPU side: the same chunks from candle ops (written for any device; tested on CPU).
fn composed(
    h: &Tensor,
    w: &Tensor,
    labels: &[u32],
    chunk: usize,
    want_dh: bool,
    want_dw: bool,
) -> candle_core::Result<CeGrads> {
    let n = labels.len();
    let dev = h.device();
    let mut total = 0f64;
    let mut dh_chunks = Vec::new();
    let mut dw: Option<Tensor> = None;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let hc = h.narrow(0, start, len)?;
        let logits = hc.matmul(&w.t()?)?.to_dtype(DType::F32)?;
        let lbl = Tensor::from_slice(&labels[start..start + len], len, dev)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let e = shifted.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        let picked = shifted.gather(&lbl.unsqueeze(1)?, D::Minus1)?;
        let s = (sum.log()? - picked)?.sum_all()?.to_dtype(DType::F64)?;
        total += s.to_scalar::<f64>()?;
        if !(want_dh || want_dw) {
            continue;
        }
        let p = e.broadcast_div(&sum)?.to_dtype(w.dtype())?; // (len, V)
        if want_dh {
            let w_lbl = w.index_select(&lbl, 0)?; // (len, H)
            dh_chunks.push((p.matmul(w)? - w_lbl)?);
        }
        if want_dw {
            let d = p.t()?.matmul(&hc)?.index_add(&lbl, &hc.neg()?, 0)?; // (V, H)
            dw = Some(match dw {
                Some(acc) => (acc + d)?,
                None => d,
            });
        }
    }
    let dh = if want_dh {
        Some(Tensor::cat(&dh_chunks, 0)?)
    } else {
        None
    };
    Ok((total as f32, dh, dw))
}

struct ChunkedCrossEntropy {
    labels: Vec<u32>,
    chunk: usize,
    /// The forward value, computed before the op is recorded.
    value: f32,
    /// The same on the inputs' device (handed over by a GPU forward).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device_value: Mutex<Option<Tensor>>,
    /// Gradients for an upstream gradient of 1, when the forward already computed them.
    stashed: Mutex<(Option<Tensor>, Option<Tensor>)>,
}

impl CustomOp2 for ChunkedCrossEntropy {
    fn name(&self) -> &'static str {
        "chunked-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.value]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        _s2: &candle_core::CudaStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let v = super::take_output(&self.device_value, self.name())?;
        let (st, l) = v.storage_and_layout();
        match &*st {
            candle_core::Storage::Cuda(c) => Ok((c.try_clone(l)?, Shape::from(()))),
            _ => candle_core::bail!("cross-entropy: the value is not on the GPU"),
        }
    }

    /// The stashed gradients scaled by the upstream gradient, or a recomputation.
    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want_w = wants_grad(w);
        let g = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (dh, dw) = {
            let mut st = self.stashed.lock().unwrap_or_else(|e| e.into_inner());
            (st.0.take(), st.1.take())
        };
        let (dh, dw) = match (dh, dw, want_w) {
            (Some(dh), _, false) => (dh, None),
            (Some(dh), Some(dw), true) => (dh, Some(dw)),
            _ => {
                let (_, dh, dw) = chunks(
                    &h.detach(),
                    &w.detach(),
                    &self.labels,
                    self.chunk,
                    true,
                    want_w,
                )?;
                let dh = dh.ok_or_else(|| candle_core::Error::Msg("no dh".into()))?;
                (dh, dw)
            }
        };
        let dw = match dw {
            Some(d) => Some((d * g)?),
            None => None,
        };
        Ok((Some((dh * g)?), dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_diff, randn};
    use candle_core::{Device, Var};

    /// The slow reference: all logits at once, log-sum-exp minus the picked logit, autograd.
    fn reference(h: &Tensor, w: &Tensor, labels: &[u32]) -> Tensor {
        let n = labels.len();
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let lbl = Tensor::from_slice(labels, (n, 1), &Device::Cpu).unwrap();
        let lse = logits.log_sum_exp(1).unwrap();
        let picked = logits.gather(&lbl, 1).unwrap().squeeze(1).unwrap();
        (lse - picked).unwrap().sum_all().unwrap()
    }

    fn case(dtype: DType, tol: f32) {
        let (n, hd, v) = (37, 12, 101);
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 13) % v as u32).collect();
        let h0 = randn(&[n, hd], 10).to_dtype(dtype).unwrap();
        let w0 = (randn(&[v, hd], 11) * 3.0)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (hr, wr) = (
            Var::from_tensor(&h0.to_dtype(DType::F32).unwrap()).unwrap(),
            Var::from_tensor(&w0.to_dtype(DType::F32).unwrap()).unwrap(),
        );
        let want = reference(hr.as_tensor(), wr.as_tensor(), &labels);
        let g = want.backward().unwrap();
        let want = want.to_scalar::<f32>().unwrap();
        for chunk in [5, 37, 64] {
            for train in [true, false] {
                let (h, w) = (
                    Var::from_tensor(&h0).unwrap(),
                    Var::from_tensor(&w0).unwrap(),
                );
                let loss =
                    cross_entropy_sum(h.as_tensor(), w.as_tensor(), labels.clone(), chunk, train)
                        .unwrap();
                let value = loss.to_scalar::<f32>().unwrap();
                assert!(
                    (value - want).abs() < 1e-4 * want.abs(),
                    "{value} vs {want}"
                );
                let gm = (loss * 2.0).unwrap().backward().unwrap();
                let (dh, dw) = (
                    gm.get(h.as_tensor()).unwrap(),
                    gm.get(w.as_tensor()).unwrap(),
                );
                assert_eq!(dh.dtype(), dtype);
                let twice = |t: &Tensor| (t * 2.0).unwrap();
                assert!(max_diff(dh, &twice(g.get(hr.as_tensor()).unwrap())) < tol);
                assert!(max_diff(dw, &twice(g.get(wr.as_tensor()).unwrap())) < tol * 4.0);
            }
        }
        // The GPU side's chunks, run on CPU tensors.
        if dtype == DType::F32 {
            let (value, dh, dw) = composed(&h0, &w0, &labels, 7, true, true).unwrap();
            assert!((value - want).abs() < 1e-4 * want.abs());
            assert!(max_diff(&dh.unwrap(), g.get(hr.as_tensor()).unwrap()) < 1e-5);
            assert!(max_diff(&dw.unwrap(), g.get(wr.as_tensor()).unwrap()) < 1e-5);
        }
    }

    #[test]
    fn cross_entropy_matches_the_reference_f32() {
        case(DType::F32, 2e-5);
    }

    #[test]
    fn issue_12_cross_entropy_half_precision_inputs() {
        case(DType::BF16, 3e-2);
        case(DType::F16, 4e-3);
    }
}
