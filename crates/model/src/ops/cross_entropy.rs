//! Cross-entropy of the LM head over the labelled positions, chunked: `Σ_i CE(h_i Wᵀ, label_i)`
//! for `h: (N, H)` (the labelled rows only), `W: (V, H)`. No `(N, V)` logits exist: one
//! `(chunk, V)` buffer at a time holds a chunk's logits, turned into `softmax − onehot` in place
//! and fed to the two gradient products. In training the forward computes the gradients for an
//! upstream gradient of 1 in the same pass (logits once) and the backward scales them.
//!
//! CPU: gemm + rayon, f32 inside (bf16/f16 inputs converted; a bf16/f16 `W` a block of rows at
//! a time, never the whole table). GPU: the same chunks composed of
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

/// Rows of a bf16/f16 `W` converted to f32 at a time: a 4096 × H block (9.4 MB at SmolLM2's
/// H = 576) instead of the whole table (113 MB; issue 12's QLoRA peak).
const VOCAB_BLOCK: usize = 4096;

/// `W`'s values as the GEMMs read them: an f32 table whole (borrowed), a bf16/f16 one a block of
/// rows at a time, converted into a reused buffer.
enum Table<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

impl Table<'_> {
    /// Rows per GEMM block out of `v`.
    fn block_rows(&self, v: usize) -> usize {
        match self {
            Table::F32(_) => v.max(1),
            _ => VOCAB_BLOCK,
        }
    }

    /// Rows `r0..r1` of the `(V, hd)` table as f32.
    fn rows<'b>(&'b self, r0: usize, r1: usize, hd: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let (a, b) = (r0 * hd, r1 * hd);
        match self {
            Table::F32(x) => &x[a..b],
            Table::Bf16(x) => {
                buf.clear();
                buf.par_extend(x[a..b].par_iter().map(|v| v.to_f32()));
                buf
            }
            Table::F16(x) => {
                buf.clear();
                buf.par_extend(x[a..b].par_iter().map(|v| v.to_f32()));
                buf
            }
        }
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
    let hv = vals(h)?;
    let w = w.contiguous()?;
    let (w_storage, w_layout) = w.storage_and_layout();
    let Some((wa, wb)) = w_layout.contiguous_offsets() else {
        candle_core::bail!("cross-entropy: W is not contiguous")
    };
    let table = match &*w_storage {
        candle_core::Storage::Cpu(CpuStorage::F32(x)) => Table::F32(&x[wa..wb]),
        candle_core::Storage::Cpu(CpuStorage::BF16(x)) => Table::Bf16(&x[wa..wb]),
        candle_core::Storage::Cpu(CpuStorage::F16(x)) => Table::F16(&x[wa..wb]),
        _ => candle_core::bail!("cross-entropy: W must be an f32, bf16 or f16 CPU tensor"),
    };
    let block = table.block_rows(v);
    let mut buf = Vec::new();
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
        let h_rows = hv[start * hd..].as_ptr();
        for r0 in (0..v).step_by(block) {
            let r1 = (r0 + block).min(v);
            let wr = table.rows(r0, r1, hd, &mut buf);
            // SAFETY: h rows start..start+len, W rows r0..r1 (`wr`) and logit columns r0..r1
            // of `lg` (row stride v) are in bounds; `lg` is ours.
            unsafe {
                mm(
                    (len, r1 - r0, hd),
                    lg[r0..].as_mut_ptr(),
                    v,
                    false,
                    View::rows(h_rows, hd),
                    View::rows(wr.as_ptr(), hd).t(),
                    1.0,
                    true,
                );
            }
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
        if !grads {
            continue;
        }
        for r0 in (0..v).step_by(block) {
            let r1 = (r0 + block).min(v);
            let wr = table.rows(r0, r1, hd, &mut buf);
            let p = View::rows(lg[r0..].as_ptr(), v);
            // SAFETY: dh rows start..start+len, dW rows r0..r1 and the views (logit columns
            // r0..r1, W rows r0..r1, h rows start..start+len) are in bounds; dh and dW are ours.
            unsafe {
                if want_dh {
                    mm(
                        (len, hd, r1 - r0),
                        dh[start * hd..].as_mut_ptr(),
                        hd,
                        r0 > 0,
                        p,
                        View::rows(wr.as_ptr(), hd),
                        1.0,
                        true,
                    );
                }
                if want_dw {
                    mm(
                        (r1 - r0, hd, len),
                        dw[r0 * hd..].as_mut_ptr(),
                        hd,
                        start > 0,
                        View::rows(lg[r0..].as_ptr(), v).t(),
                        View::rows(h_rows, hd),
                        1.0,
                        true,
                    );
                }
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

    fn case(dtype: DType, tol: f32, v: usize) {
        let (n, hd) = (37, 12);
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
                // Relative to the largest gradient: bf16/f16 round the results to 8/11 bits.
                let want_dh = twice(g.get(hr.as_tensor()).unwrap());
                let scale = want_dh
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let e = max_diff(dh, &want_dh);
                assert!(
                    e < tol * scale.max(1.0),
                    "dh off by {e} of {scale} ({chunk}, {dtype:?}, V {v})"
                );
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
        case(DType::F32, 2e-5, 101);
    }

    #[test]
    fn issue_12_cross_entropy_half_precision_inputs() {
        case(DType::BF16, 3e-2, 101);
        case(DType::F16, 4e-3, 101);
    }

    /// A bf16/f16 table larger than one conversion block (issue 12: the whole table is never
    /// converted at once): blocks of 4096 rows and a ragged last one give the same loss and
    /// gradients.
    #[test]
    fn issue_12_cross_entropy_half_table_in_blocks() {
        case(DType::BF16, 3e-2, 2 * VOCAB_BLOCK + 37);
        case(DType::F16, 4e-3, VOCAB_BLOCK + 1);
    }
}
