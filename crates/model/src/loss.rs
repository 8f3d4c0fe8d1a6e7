//! Next-token cross-entropy over labels ≠ -100: the labelled rows' hidden states go to the
//! chunked op of [`crate::ops::cross_entropy`], so the `(tokens, vocab)` logits are never all
//! alive at once.

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::llama::CausalLm;
use crate::nn::Linear;
use candle_core::{D, Tensor};

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
        crate::ops::cross_entropy::cross_entropy_sum(&h, &lm_head.weight, labels, chunk, train)?
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
