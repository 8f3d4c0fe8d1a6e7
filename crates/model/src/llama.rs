//! The Llama family (Llama 2/3/3.1/3.2, TinyLlama, SmolLM, Mistral, Qwen2, Qwen3): one decoder
//! with the per-architecture differences read from [`ModelConfig`] (q/k/v bias for Qwen2, q/k
//! norm for Qwen3, sliding window for Mistral). Tensor names follow transformers.

use crate::batch::Batch;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::nn::{Linear, RmsNorm, Rope};
use crate::ops::attention::{Spans, attention};
use crate::ops::rope::{RopeTable, rope};
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// `self_attn`: grouped-query attention with RoPE.
#[derive(Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3: RMSNorm over each head's dimensions, before RoPE.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
}

/// What every decoder layer of one forward pass shares: the positions (RoPE) and which keys each
/// query may see, per sliding window (`None`: full causal).
#[derive(Clone)]
pub struct LayerInputs {
    pub rope: Arc<RopeTable>,
    pub spans: HashMap<Option<usize>, Arc<Spans>>,
}

impl LayerInputs {
    /// For a batch of `b` rows of `t` tokens, with the windows the layers use.
    pub fn new(rope: &Rope, batch: &Batch, windows: &[Option<usize>]) -> Self {
        let (b, t) = (batch.batch_size, batch.seq_len);
        let spans = windows
            .iter()
            .map(|&w| (w, Arc::new(Spans::new(&batch.seq_ids, b, t, w))))
            .collect();
        Self {
            rope: Arc::new(RopeTable::new(&rope.inv_freq, &batch.position_ids)),
            spans,
        }
    }
}

impl Attention {
    pub fn load(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(RmsNorm::load(w, "q_norm", d, cfg.rms_norm_eps)?),
                Some(RmsNorm::load(w, "k_norm", d, cfg.rms_norm_eps)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: Linear::load(w, "q_proj", h, nh * d, cfg.qkv_bias)?,
            k_proj: Linear::load(w, "k_proj", h, nkv * d, cfg.qkv_bias)?,
            v_proj: Linear::load(w, "v_proj", h, nkv * d, cfg.qkv_bias)?,
            o_proj: Linear::load(w, "o_proj", nh * d, h, cfg.o_bias)?,
            q_norm,
            k_norm,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            window: cfg.sliding_window.get(layer).copied().flatten(),
        })
    }

    /// q, k, v as `(B, T, n, D)` with the q/k norms and RoPE applied.
    pub(crate) fn qkv(
        &self,
        x: &Tensor,
        rope_table: &Arc<RopeTable>,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let y = y.reshape((b, t, n, d))?;
            match norm {
                Some(nrm) => nrm.forward(&y),
                None => Ok(y),
            }
        };
        let q = heads(self.q_proj.forward(x, train)?, self.n_heads, &self.q_norm)?;
        let k = heads(
            self.k_proj.forward(x, train)?,
            self.n_kv_heads,
            &self.k_norm,
        )?;
        let v = heads(self.v_proj.forward(x, train)?, self.n_kv_heads, &None)?;
        Ok((rope(&q, rope_table)?, rope(&k, rope_table)?, v))
    }

    /// `x: (B, T, hidden)` → `(B, T, hidden)`.
    pub fn forward(&self, x: &Tensor, inputs: &LayerInputs, train: bool) -> Result<Tensor> {
        let spans = inputs.spans.get(&self.window).ok_or_else(|| {
            crate::error::Error::Batch(format!("no mask for window {:?}", self.window))
        })?;
        let (q, k, v) = self.qkv(x, &inputs.rope, train)?;
        let o = attention(&q, &k, &v, spans)?; // (B, T, H·D)
        self.o_proj.forward(&o, train)
    }
}

/// `mlp`: SwiGLU, `down(silu(gate(x)) · up(x))`.
#[derive(Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(w, "gate_proj", h, i, cfg.mlp_bias)?,
            up_proj: Linear::load(w, "up_proj", h, i, cfg.mlp_bias)?,
            down_proj: Linear::load(w, "down_proj", i, h, cfg.mlp_bias)?,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let g = self.gate_proj.forward(x, train)?;
        let u = self.up_proj.forward(x, train)?;
        self.down_proj
            .forward(&crate::ops::swiglu::swiglu(&g, &u)?, train)
    }
}

/// `model.layers.{i}`: pre-norm attention and MLP with residuals.
#[derive(Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn load(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::load(w, "input_layernorm", cfg.hidden_size, eps)?,
            self_attn: Attention::load(&w.pp("self_attn"), cfg, layer)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                "post_attention_layernorm",
                cfg.hidden_size,
                eps,
            )?,
            mlp: Mlp::load(&w.pp("mlp"), cfg)?,
        })
    }

    pub fn forward(&self, x: &Tensor, inputs: &LayerInputs, train: bool) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, inputs, train)?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?, train)?;
        Ok((x + h)?)
    }
}

impl DecoderLayer {
    /// The seven linear projections, in the order of [`crate::ops::PROJECTIONS`].
    pub fn projections(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    /// The adapter parameters of this layer (A, B and DoRA magnitudes).
    pub fn adapter_vars(&self) -> Vec<candle_core::Var> {
        self.projections()
            .into_iter()
            .filter_map(|l| l.lora.as_ref())
            .flat_map(|l| {
                let mut v = vec![l.a.clone(), l.b.clone()];
                v.extend(l.magnitude.clone());
                v
            })
            .collect()
    }
}

/// `XForCausalLM`: embeddings, decoder layers, final norm and the LM head.
#[derive(Clone)]
pub struct CausalLm {
    pub cfg: ModelConfig,
    /// `model.embed_tokens.weight`, `(vocab, hidden)`.
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `lm_head`; with tied embeddings its weight is `embed_tokens` (one tensor, shared).
    pub lm_head: Linear,
    pub rope: Rope,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (`gradient_checkpointing`); use [`backward`] for the gradients.
    pub gradient_checkpointing: bool,
    pub grad_sink: crate::checkpoint::GradSink,
}

impl CausalLm {
    /// Builds the model from Hugging Face-named weights (`model.layers.0.self_attn.q_proj.weight`).
    pub fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let m = w.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .get(&[cfg.vocab_size, cfg.hidden_size], "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(&m.pp("layers").pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m, "norm", cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear {
                name: "lm_head".into(),
                weight: embed_tokens.clone(),
                bias: None,
                lora: None,
                quant: None,
            }
        } else {
            Linear::load(w, "lm_head", cfg.hidden_size, cfg.vocab_size, false)?
        };
        let unused = w.unused();
        if !unused.is_empty() {
            return Err(crate::error::Error::UnexpectedTensors {
                source_name: w.source_name(),
                names: unused,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg),
            gradient_checkpointing: false,
            grad_sink: Default::default(),
        })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The final hidden states `(B, T, hidden)` (after `model.norm`), before the LM head.
    pub fn hidden_states(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        let (b, t) = (batch.batch_size, batch.seq_len);
        let dev = self.device().clone();
        if let Some((i, id)) = batch
            .input_ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= self.cfg.vocab_size)
        {
            return Err(crate::error::Error::Batch(format!(
                "token id {id} at row {}, position {} is outside the vocabulary of {}",
                i / t.max(1),
                i % t.max(1),
                self.cfg.vocab_size
            )));
        }
        let ids = Tensor::from_slice(&batch.input_ids, b * t, &dev)?;
        let mut x =
            self.embed_tokens
                .index_select(&ids, 0)?
                .reshape((b, t, self.cfg.hidden_size))?;
        let windows: Vec<Option<usize>> = self.layers.iter().map(|l| l.self_attn.window).collect();
        let inputs = LayerInputs::new(&self.rope, batch, &windows);
        for layer in &self.layers {
            x = if self.gradient_checkpointing && train {
                let block = Checkpointed {
                    layer: layer.clone(),
                    inputs: inputs.clone(),
                };
                crate::checkpoint::checkpointed(block, &x, train, &self.grad_sink)?
            } else {
                layer.forward(&x, &inputs, train)?
            };
        }
        self.norm.forward(&x)
    }

    /// Full logits `(B, T, vocab)`; for training use [`crate::loss::causal_lm_loss`], which never
    /// materialises them all.
    pub fn logits(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        let h = self.hidden_states(batch, train)?;
        self.lm_head.forward(&h, train)
    }

    /// Grows the vocabulary to `new_vocab` rows (tokens added by the recipe), as transformers'
    /// `resize_token_embeddings` does: new rows of the embeddings and of an untied LM head start
    /// at the mean of the old rows (transformers samples N(mean, 1e-9·Σ): the same to ~1e-4·σ).
    /// Must run before adapters are injected.
    pub fn resize_token_embeddings(&mut self, new_vocab: usize) -> Result<()> {
        let old = self.cfg.vocab_size;
        if new_vocab == old {
            return Ok(());
        }
        if new_vocab < old {
            return Err(crate::error::Error::Adapter(format!(
                "cannot shrink the vocabulary from {old} to {new_vocab}"
            )));
        }
        if self.lm_head.lora.is_some() {
            return Err(crate::error::Error::Adapter(
                "resize the vocabulary before injecting adapters".into(),
            ));
        }
        let grow = |w: &Tensor| -> Result<Tensor> {
            let dtype = w.dtype();
            let mean = w.to_dtype(DType::F32)?.mean_keepdim(0)?;
            let extra = mean
                .broadcast_as((new_vocab - old, w.dim(1)?))?
                .to_dtype(dtype)?;
            Ok(Tensor::cat(&[w, &extra], 0)?)
        };
        self.embed_tokens = grow(&self.embed_tokens)?;
        self.lm_head.weight = if self.cfg.tie_word_embeddings {
            self.embed_tokens.clone()
        } else {
            grow(&self.lm_head.weight)?
        };
        self.cfg.vocab_size = new_vocab;
        Ok(())
    }

    /// Points every adapter's dropout masks at optimizer step `step` (0-based) and micro-batch
    /// `micro` of that step (its index over all data-parallel ranks), under the seed given at
    /// injection: the masks are a function of these, never of the order things ran in.
    pub fn set_dropout_position(&self, step: u64, micro: u64) {
        for l in self.linears() {
            if let Some(a) = &l.lora {
                let mut k = a.rng.lock().unwrap_or_else(|e| e.into_inner());
                k.step = step;
                k.micro = micro;
            }
        }
    }

    /// Every linear layer, in module order (the LM head last).
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.extend(l.projections());
        }
        v.push(&self.lm_head);
        v
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            let a = &mut l.self_attn;
            v.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let m = &mut l.mlp;
            v.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
        }
        v.push(&mut self.lm_head);
        v
    }

    /// Number of base parameters, each tensor counted once (tied embeddings once), as
    /// `model.parameters()` counts them in PyTorch.
    pub fn base_param_count(&self) -> usize {
        let mut n = self.embed_tokens.elem_count() + self.norm.weight.elem_count();
        for l in &self.layers {
            n += l.input_layernorm.weight.elem_count();
            n += l.post_attention_layernorm.weight.elem_count();
            for norm in [&l.self_attn.q_norm, &l.self_attn.k_norm]
                .into_iter()
                .flatten()
            {
                n += norm.weight.elem_count();
            }
        }
        for lin in self.linears() {
            if lin.name == "lm_head" && self.cfg.tie_word_embeddings {
                continue;
            }
            n += lin.weight.elem_count() + lin.bias.as_ref().map_or(0, |b| b.elem_count());
        }
        n
    }
}

/// Quantizes the frozen weights of every decoder linear layer (`q/k/v/o_proj`,
/// `gate/up/down_proj`) in place, as `load_in_4bit` / `load_in_8bit` do; embeddings, norms,
/// biases and the LM head stay in the compute dtype. Layers already quantized are skipped, so
/// it may run twice. Run it after loading and before [`crate::inject`] (which calls it itself
/// when the plan asks for a quantized base).
pub fn quantize_frozen(
    model: &mut CausalLm,
    kind: runner_recipe::plan::BaseQuant,
) -> Result<crate::quant::QuantSummary> {
    let mut sum = crate::quant::QuantSummary::default();
    if kind == runner_recipe::plan::BaseQuant::None {
        return Ok(sum);
    }
    for layer in &mut model.layers {
        let a = &mut layer.self_attn;
        let m = &mut layer.mlp;
        for lin in [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ] {
            if lin.quant.is_some() {
                continue;
            }
            let (rows, cols) = lin.weight.dims2()?;
            let w: Vec<f32> = lin
                .weight
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()
                .map_err(|e| crate::error::Error::Adapter(format!("{}: {e}", lin.name)))?;
            let Some(q) = crate::quant::QuantWeight::quantize(&w, rows, cols, kind) else {
                continue;
            };
            drop(w);
            sum.layers += 1;
            sum.params += rows * cols;
            sum.bytes += q.nbytes();
            lin.weight =
                crate::quant::placeholder(rows, cols, lin.weight.dtype(), lin.weight.device())?;
            lin.quant = Some(std::sync::Arc::new(q));
        }
    }
    Ok(sum)
}

/// A decoder layer with its shared inputs, recomputed in the backward pass when
/// `gradient_checkpointing` is on.
struct Checkpointed {
    layer: DecoderLayer,
    inputs: LayerInputs,
}

impl crate::checkpoint::Recomputable for Checkpointed {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.layer.forward(x, &self.inputs, train)
    }
    fn adapter_vars(&self) -> Vec<candle_core::Var> {
        self.layer.adapter_vars()
    }
}

/// `loss.backward()` for `model`, including the adapter gradients of checkpointed layers.
pub fn backward(loss: &Tensor, model: &CausalLm) -> Result<candle_core::backprop::GradStore> {
    crate::checkpoint::backward(loss, &model.grad_sink)
}
