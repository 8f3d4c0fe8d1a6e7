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
        let value = ce_sum_forward(&h.detach(), &lm_head.weight.detach(), &labels, chunk)?;
        h.apply_op2(
            &lm_head.weight,
            ChunkedCrossEntropy {
                labels,
                chunk,
                value,
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

/// Σ over chunks of the token losses, with detached tensors (no graph).
fn ce_sum_forward(h: &Tensor, w: &Tensor, labels: &[u32], chunk: usize) -> Result<f32> {
    let n = labels.len();
    let mut total = 0f64;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        // transformers upcasts logits to f32 before the loss.
        let logits = h
            .narrow(0, start, len)?
            .matmul(&w.t()?)?
            .to_dtype(candle_core::DType::F32)?;
        let lbl = Tensor::from_slice(&labels[start..start + len], (len, 1), h.device())?;
        let s = ce_sum_autograd(&logits, &lbl)?.to_dtype(candle_core::DType::F64)?;
        total += s.to_scalar::<f64>()?;
    }
    Ok(total as f32)
}

/// `loss_sum = Σ_i CE(h_i Wᵀ, label_i)`; `h: (N, H)`, `W: (V, H)`.
struct ChunkedCrossEntropy {
    labels: Vec<u32>,
    chunk: usize,
    /// The forward value, computed with ordinary tensor ops before the op is recorded.
    value: f32,
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

    /// d/dh_i = g (softmax(h_i Wᵀ) − onehot(label_i)) W, and for W the transpose product.
    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want_w = w.is_variable() || w.track_op();
        let (h, w) = (h.detach(), w.detach());
        let g = grad_res
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        let n = self.labels.len();
        let dev = h.device();
        let mut dh_chunks = Vec::new();
        let mut dw: Option<Tensor> = None;
        for start in (0..n).step_by(self.chunk) {
            let len = self.chunk.min(n - start);
            let hc = h.narrow(0, start, len)?;
            let logits = hc.matmul(&w.t()?)?.to_dtype(candle_core::DType::F32)?;
            let max = logits.max_keepdim(D::Minus1)?;
            let e = logits.broadcast_sub(&max)?.exp()?;
            let p = e
                .broadcast_div(&e.sum_keepdim(D::Minus1)?)?
                .to_dtype(w.dtype())?; // (len, V)
            let lbl = Tensor::from_slice(&self.labels[start..start + len], len, dev)?;
            let w_lbl = w.index_select(&lbl, 0)?; // (len, H)
            let dh = ((p.matmul(&w)? - w_lbl)? * g)?;
            dh_chunks.push(dh);
            if want_w {
                let mut d = p.t()?.matmul(&hc)?; // (V, H)
                d = d.index_add(&lbl, &hc.neg()?, 0)?;
                let d = (d * g)?;
                dw = Some(match dw {
                    Some(acc) => (acc + d)?,
                    None => d,
                });
            }
        }
        let dh = Tensor::cat(&dh_chunks, 0)?;
        Ok((Some(dh), dw))
    }
}
