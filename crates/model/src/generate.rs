//! Inference with a key/value cache, and token sampling: [`CausalLm::forward_cached`] runs only
//! the new tokens against the keys and values kept from earlier positions, [`Sampler`] picks
//! the next token (greedy, or temperature / top-k / top-p from a seeded stream, in the order
//! transformers' `generate` applies them), and [`generate`] loops the two.
//!
//! This is a separate path from the training forward in `llama.rs` (which it must match: see
//! tests/generate.rs): it reuses the blocks' projections, norms and RoPE, and differs only in
//! where keys and values come from and in the mask, `(T, P + T)` instead of `(T, T)`.

use crate::error::{Error, Result};
use crate::llama::{Attention, CausalLm, DecoderLayer, repeat_kv};
use crate::nn::{RmsNorm, apply_rope, softmax_last};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

/// The keys and values of every position run so far, per layer, before the query-group
/// repetition: `(1, n_kv, P, D)` each.
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

/// Additive mask `(1, 1, T, P + T)` for `t` new queries after `past` cached positions: query
/// `i` (position `past + i`) sees key `j` when `j ≤ past + i` and, with a sliding window `w`,
/// `past + i − j < w`.
fn cached_mask(
    past: usize,
    t: usize,
    window: Option<usize>,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let total = past + t;
    let mut m = vec![f32::MIN; t * total];
    for i in 0..t {
        let p = past + i;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        for v in &mut m[i * total + lo..i * total + p + 1] {
            *v = 0.0;
        }
    }
    Ok(Tensor::from_vec(m, (1, 1, t, total), dev)?)
}

impl Attention {
    /// `x: (1, T, hidden)` at positions `P..P+T` → `(1, T, hidden)`; appends this step's keys
    /// and values to `slot`.
    fn forward_cached(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let y = y.reshape((b, t, n, d))?;
            let y = match norm {
                Some(nrm) => nrm.forward(&y)?,
                None => y,
            };
            Ok(y.transpose(1, 2)?.contiguous()?) // (B, n, T, D)
        };
        let q = heads(self.q_proj.forward(x, false)?, self.n_heads, &self.q_norm)?;
        let k = heads(
            self.k_proj.forward(x, false)?,
            self.n_kv_heads,
            &self.k_norm,
        )?;
        let v = heads(self.v_proj.forward(x, false)?, self.n_kv_heads, &None)?;
        let q = apply_rope(&q, cos, sin)?;
        let k = apply_rope(&k, cos, sin)?;
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        let k = repeat_kv(&k, self.n_heads / self.n_kv_heads)?;
        let v = repeat_kv(&v, self.n_heads / self.n_kv_heads)?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?; // (B, H, T, P+T)
        let probs = softmax_last(&scores.broadcast_add(mask)?)?.to_dtype(v.dtype())?;
        let o = probs.matmul(&v)?; // (B, H, T, D)
        let o = o.transpose(1, 2)?.reshape((b, t, self.n_heads * d))?;
        self.o_proj.forward(&o, false)
    }
}

impl DecoderLayer {
    fn forward_cached(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let h = self.self_attn.forward_cached(
            &self.input_layernorm.forward(x)?,
            cos,
            sin,
            mask,
            slot,
        )?;
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
        let (cos, sin) = self.rope.cos_sin(&positions, 1, t, &dev, self.dtype())?;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let window = layer.self_attn.window;
            let mask = match masks.iter().find(|(w, _)| *w == window) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = cached_mask(past, t, window, &dev)?;
                    masks.push((window, m.clone()));
                    m
                }
            };
            x = layer.forward_cached(&x, &cos, &sin, &mask, slot)?;
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
