//! Inference with a key/value cache, and token sampling: [`CausalLm::forward_cached`] runs only
//! the new tokens against the keys and values kept from earlier positions, [`Sampler`] picks
//! the next token (greedy, or temperature / top-k / top-p from a seeded stream, in the order
//! transformers' `generate` applies them), and [`generate`] loops the two.
//!
//! It runs the training forward's own pieces (projections, norms, RoPE and the one attention
//! op of [`crate::ops::attention`]); only where keys and values come from differs: the cache,
//! with the queries at positions `P..P+T` ([`Spans::cached`]). tests/generate.rs checks it
//! against the full forward.

use crate::error::{Error, Result};
use crate::llama::{Attention, CausalLm, DecoderLayer};
use crate::ops::attention::{Spans, attention};
use crate::ops::rope::RopeTable;
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// The keys and values of every position run so far, per layer: `(1, P, n_kv, D)` each.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new(model: &CausalLm) -> Self {
        Self {
            layers: vec![None; model.layers.len()],
            len: 0,
        }
    }

    /// Positions held (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Attention {
    /// `x: (1, T, hidden)` at positions `P..P+T` → `(1, T, hidden)`; appends this step's keys
    /// and values to `slot`.
    fn forward_cached(
        &self,
        x: &Tensor,
        rope: &Arc<RopeTable>,
        spans: &Arc<Spans>,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, rope, false)?;
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        let o = attention(&q, &k, &v, spans)?; // (1, T, H·D)
        self.o_proj.forward(&o, false)
    }
}

impl DecoderLayer {
    fn forward_cached(
        &self,
        x: &Tensor,
        rope: &Arc<RopeTable>,
        spans: &Arc<Spans>,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let h =
            self.self_attn
                .forward_cached(&self.input_layernorm.forward(x)?, rope, spans, slot)?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?, false)?;
        Ok((x + h)?)
    }
}

impl CausalLm {
    /// Runs the new tokens `ids` at positions `cache.len()..` against the cache (which they are
    /// appended to) and returns their logits `(T, vocab)`.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let h = self.hidden_cached(ids, cache)?;
        self.lm_head.forward(&h, false)
    }

    /// The logits `(vocab,)` after the last of `ids`, computing the LM head for that position
    /// only (a prompt's other positions need no logits).
    pub fn next_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let h = self.hidden_cached(ids, cache)?;
        let last = h.narrow(0, h.dim(0)? - 1, 1)?;
        Ok(self.lm_head.forward(&last, false)?.squeeze(0)?)
    }

    /// Final hidden states `(T, hidden)` of `ids` after the cached positions.
    fn hidden_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let t = ids.len();
        if t == 0 {
            return Err(Error::Batch("no tokens to run".into()));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(Error::Batch(format!(
                "the cache was made for {} layers, the model has {}",
                cache.layers.len(),
                self.layers.len()
            )));
        }
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= self.cfg.vocab_size)
        {
            return Err(Error::Batch(format!(
                "token id {id} at position {} is outside the vocabulary of {}",
                cache.len + i,
                self.cfg.vocab_size
            )));
        }
        let dev = self.device().clone();
        let past = cache.len;
        let ids_t = Tensor::from_slice(ids, t, &dev)?;
        let mut x =
            self.embed_tokens
                .index_select(&ids_t, 0)?
                .reshape((1, t, self.cfg.hidden_size))?;
        let positions: Vec<u32> = (past..past + t).map(|p| p as u32).collect();
        let rope = Arc::new(RopeTable::new(&self.rope.inv_freq, &positions));
        let mut spans: Vec<(Option<usize>, Arc<Spans>)> = Vec::new();
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let window = layer.self_attn.window;
            let s = match spans.iter().find(|(w, _)| *w == window) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = Arc::new(Spans::cached(past, t, window));
                    spans.push((window, s.clone()));
                    s
                }
            };
            x = layer.forward_cached(&x, &rope, &s, slot)?;
        }
        cache.len += t;
        Ok(self.norm.forward(&x)?.squeeze(0)?)
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on a tie, as `torch.argmax`).
    Greedy,
    /// From `softmax(logits / temperature)`, restricted to the `top_k` most likely tokens and
    /// then to the smallest set whose probability reaches `top_p` (transformers' order:
    /// temperature, top-k, top-p).
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
    },
}

/// Picks tokens from logits; the random stream is seeded, so a seed gives the same tokens.
pub struct Sampler {
    pub sampling: Sampling,
    rng: rand_chacha::ChaCha8Rng,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Result<Self> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } = sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Batch(format!(
                    "temperature {temperature} must be positive (use greedy decoding for 0)"
                )));
            }
            if top_k == Some(0) {
                return Err(Error::Batch("top_k must be at least 1".into()));
            }
            if let Some(p) = top_p
                && !(p > 0.0 && p <= 1.0)
            {
                return Err(Error::Batch(format!("top_p {p} must be in (0, 1]")));
            }
        }
        Ok(Self {
            sampling,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The next token for `logits` `(vocab,)`.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if logits.is_empty() {
            return Err(Error::Batch("empty logits".into()));
        }
        let argmax = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } = self.sampling
        else {
            return Ok(argmax());
        };
        // Candidates in decreasing logit order (stable: ties keep id order).
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0]] as f64 / temperature;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| (logits[i] as f64 / temperature - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut probs: Vec<f64> = weights.iter().map(|w| w / total).collect();
        if let Some(p) = top_p {
            // transformers drops the tokens whose ascending cumulative probability is ≤ 1 − p;
            // in descending order: keep token i while the mass before it is < p.
            let mut before = 0.0;
            let mut keep = 0;
            for &q in &probs {
                if keep > 0 && before >= p {
                    break;
                }
                before += q;
                keep += 1;
            }
            probs.truncate(keep);
            order.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= s);
        }
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        for (q, &i) in probs.iter().zip(&order) {
            acc += q;
            if u < acc {
                return Ok(i as u32);
            }
        }
        Ok(order[probs.len() - 1] as u32)
    }
}

/// What [`generate`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Tokens that end the answer (EOS, end-of-turn); the one produced is returned too.
    pub stop: Vec<u32>,
}

/// Generates after `prompt`: one pass over the prompt, then one cached pass per token. Each new
/// token goes to `on_token` as soon as it is chosen (for streaming); returns them all.
pub fn generate(
    model: &CausalLm,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let mut sampler = Sampler::new(opts.sampling, opts.seed)?;
    let mut cache = KvCache::new(model);
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut logits = model.next_logits(prompt, &mut cache)?;
    loop {
        let next = sampler.sample(&logits)?;
        out.push(next);
        on_token(next)?;
        if opts.stop.contains(&next) || out.len() >= opts.max_new_tokens {
            return Ok(out);
        }
        logits = model.next_logits(&[next], &mut cache)?;
    }
}
