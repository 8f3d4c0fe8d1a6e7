//! Next-token cross-entropy over labels ≠ -100, chunked over tokens so that the `(tokens, vocab)`
//! logits are never all alive at once: the forward keeps only a scalar and the backward
//! recomputes each chunk's logits (a candle custom op with its own backward).

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::llama::CausalLm;
use crate::nn::Linear;
use candle_core::{CpuStorage, CustomOp2, D, Layout, Shape, Tensor};

/// Default number of predicted tokens per chunk (× vocab × 4 bytes of transient logits).
pub const DEFAULT_CHUNK: usize = 512;

/// The loss of a batch.
pub struct LossOutput {
    /// Mean cross-entropy over the trained tokens, a scalar on the graph (call `backward` on it).
    pub loss: Tensor,
    /// Sum of the per-token losses (scalar, on the graph).
    pub loss_sum: Tensor,
    /// Number of trained tokens.
    pub n_tokens: usize,
}

/// Forward the batch and return the mean next-token loss, transformers-style (labels shifted by
/// one inside; -100 ignored; predictions never cross a packed sample boundary).
pub fn causal_lm_loss(
    model: &CausalLm,
    batch: &Batch,
    train: bool,
    chunk: usize,
) -> Result<LossOutput> {
    let hidden = model.hidden_states(batch, train)?;
    loss_from_hidden(&hidden, &model.lm_head, batch, train, chunk)
}

/// The loss from final hidden states `(B, T, H)`.
pub fn loss_from_hidden(
    hidden: &Tensor,
    lm_head: &Linear,
    batch: &Batch,
    train: bool,
    chunk: usize,
) -> Result<LossOutput> {
    let targets = batch.targets()?;
    let n = targets.len();
    let dev = hidden.device();
    if n == 0 {
        let zero = Tensor::zeros((), candle_core::DType::F32, dev)?;
        return Ok(LossOutput {
            loss: zero.clone(),
            loss_sum: zero,
            n_tokens: 0,
        });
    }
    let vocab = lm_head.out_features();
    if let Some(&(_, l)) = targets.iter().find(|&&(_, l)| l as usize >= vocab) {
        return Err(Error::Batch(format!(
            "label {l} is outside the vocabulary of {vocab}"
        )));
    }
    let hsz = hidden.dim(D::Minus1)?;
    let rows: Vec<u32> = targets.iter().map(|&(r, _)| r).collect();
    let labels: Vec<u32> = targets.iter().map(|&(_, l)| l).collect();
    let idx = Tensor::from_slice(&rows, n, dev)?;
    let h = hidden.reshape(((), hsz))?.index_select(&idx, 0)?; // (N, H)
    let chunk = chunk.max(1);
    let loss_sum = if lm_head.lora.is_none() && lm_head.bias.is_none() {
        let w = &lm_head.weight;
        // Training: the gradients for an upstream gradient of 1 come out of the same pass over
        // the vocabulary (logits are computed once); the backward only scales them.
        let want_dw = w.is_variable() || w.track_op();
        let eager = train && (h.track_op() || want_dw);
        let (value, dh, dw) = ce_chunks(
            &h.detach(),
            &w.detach(),
            &labels,
            chunk,
            eager,
            eager && want_dw,
        )?;
        h.apply_op2(
            w,
            ChunkedCrossEntropy {
                labels,
                chunk,
                value,
                stashed: std::sync::Mutex::new((dh, dw)),
            },
        )?
    } else {
        // An adapter on the LM head: plain autograd, chunk by chunk.
        let mut total: Option<Tensor> = None;
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let logits = lm_head
                .forward(&h.narrow(0, start, len)?, train)?
                .to_dtype(candle_core::DType::F32)?;
            let lbl = Tensor::from_slice(&labels[start..start + len], (len, 1), dev)?;
            let s = ce_sum_autograd(&logits, &lbl)?;
            total = Some(match total {
                Some(t) => (t + s)?,
                None => s,
            });
        }
        total.ok_or_else(|| Error::Batch("no tokens".into()))?
    };
    let loss = (&loss_sum / n as f64)?;
    Ok(LossOutput {
        loss,
        loss_sum,
        n_tokens: n,
    })
}

/// Σ (logsumexp(logits) − logits[label]) with differentiable ops. `labels: (N, 1)` u32.
fn ce_sum_autograd(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(labels, D::Minus1)?;
    Ok((lse - picked)?.sum_all()?)
}

/// Reference loss (all logits at once, plain autograd): for tests.
pub fn reference_loss(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let targets = batch.targets()?;
    let v = logits.dim(D::Minus1)?;
    let dev = logits.device();
    let rows: Vec<u32> = targets.iter().map(|&(r, _)| r).collect();
    let labels: Vec<u32> = targets.iter().map(|&(_, l)| l).collect();
    let n = rows.len();
    let l = logits
        .reshape(((), v))?
        .index_select(&Tensor::from_slice(&rows, n, dev)?, 0)?;
    let l = l.to_dtype(candle_core::DType::F32)?;
    let s = ce_sum_autograd(&l, &Tensor::from_slice(&labels, (n, 1), dev)?)?;
    Ok((s / n as f64)?)
}

/// One pass over the vocabulary, chunk by chunk, with detached tensors: the summed token loss
/// and, when asked, its gradients for `h: (N, H)` and `W: (V, H)`:
/// `dh_i = (softmax(h_i Wᵀ) − onehot(label_i)) W`, `dW = Σ_i (softmax − onehot)ᵀ h_i`.
type CeGrads = (f32, Option<Tensor>, Option<Tensor>);

fn ce_chunks(
    h: &Tensor,
    w: &Tensor,
    labels: &[u32],
    chunk: usize,
    want_dh: bool,
    want_dw: bool,
) -> candle_core::Result<CeGrads> {
    if crate::fused::applies(h) && crate::fused::applies(w) {
        return crate::fused::cross_entropy(h, w, labels, chunk, want_dh, want_dw);
    }
    let n = labels.len();
    let dev = h.device();
    let mut total = 0f64;
    let mut dh_chunks = Vec::new();
    let mut dw: Option<Tensor> = None;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let hc = h.narrow(0, start, len)?;
        // transformers upcasts logits to f32 before the loss.
        let logits = hc.matmul(&w.t()?)?.to_dtype(candle_core::DType::F32)?;
        let lbl = Tensor::from_slice(&labels[start..start + len], len, dev)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let e = shifted.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        let picked = shifted.gather(&lbl.unsqueeze(1)?, D::Minus1)?;
        let s = (sum.log()? - picked)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?;
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

/// `loss_sum = Σ_i CE(h_i Wᵀ, label_i)`; `h: (N, H)`, `W: (V, H)`.
struct ChunkedCrossEntropy {
    labels: Vec<u32>,
    chunk: usize,
    /// The forward value, computed with ordinary tensor ops before the op is recorded.
    value: f32,
    /// Gradients for an upstream gradient of 1, when the forward already computed them.
    stashed: std::sync::Mutex<(Option<Tensor>, Option<Tensor>)>,
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

    /// The stashed gradients scaled by the upstream gradient, or a recomputation.
    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want_w = w.is_variable() || w.track_op();
        let g = grad_res
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        let (dh, dw) = {
            let mut st = self.stashed.lock().unwrap_or_else(|e| e.into_inner());
            (st.0.take(), st.1.take())
        };
        let (dh, dw) = match (dh, dw, want_w) {
            (Some(dh), _, false) => (dh, None),
            (Some(dh), Some(dw), true) => (dh, Some(dw)),
            _ => {
                let (_, dh, dw) = ce_chunks(
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
