//! The layers built on the ops of [`crate::ops`]: linear layers (with an optional LoRA / DoRA
//! adapter), RMSNorm and RoPE's frequencies. Every op is called unconditionally; the ops choose
//! their implementation from the tensors' device and dtype.

use crate::config::{ModelConfig, RopeScaling};
use crate::error::Result;
use crate::ops::dropout::{DropSpec, DropoutKey, SharedKey, dropout, stream_of};
use crate::ops::frozen_matmul::{Frozen, frozen_matmul};
use crate::weights::Weights;
use candle_core::{DType, Tensor, Var};
use std::sync::{Arc, Mutex};

/// The dropout key shared by the adapters of one model (see [`crate::ops::dropout`]): the
/// trainer sets its step and micro-batch; each adapter's mask is a function of it, its layer,
/// its projection and the element index.
pub type SharedRng = SharedKey;

/// Standard normal by Box–Muller (avoids another dependency).
pub(crate) fn normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A fresh dropout key for `seed` (step 0, micro-batch 0).
pub fn shared_rng(seed: u64) -> SharedRng {
    Arc::new(Mutex::new(DropoutKey {
        seed,
        step: 0,
        micro: 0,
    }))
}

/// A LoRA adapter on a linear layer: `s · B(A(dropout(x)))`.
#[derive(Clone)]
pub struct LoraAdapter {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
    /// DoRA magnitude `[out]` (None for plain LoRA).
    pub magnitude: Option<Var>,
    pub scale: f64,
    pub dropout: f64,
    pub rng: SharedRng,
}

/// A linear layer `y = x Wᵀ + b` with a frozen weight (or a trainable copy, for
/// `lora_modules_to_save`), optionally carrying a LoRA adapter.
#[derive(Clone)]
pub struct Linear {
    /// The module name as transformers names it (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    /// `[out, in]`, a constant: no gradient is ever stored for it (except for the trainable
    /// copy `lora_modules_to_save` puts here, a `Var`). For a quantized layer
    /// (`quant` set) only a shape-carrying NaN placeholder: read values with
    /// [`Linear::dense_weight`].
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    /// The frozen weight held in NF4 / int8 (`load_in_4bit` / `load_in_8bit`), dequantized on
    /// the fly; see [`crate::quant::quantize_frozen`].
    pub quant: Option<Arc<crate::quant::QuantWeight>>,
}

impl Linear {
    pub fn load(
        w: &Weights,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let w = w.pp(name);
        let weight = w.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias {
            Some(w.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Self {
            name: w.prefix().to_string(),
            weight,
            bias,
            lora: None,
            quant: None,
        })
    }

    /// The weight's values `[out, in]`: the tensor itself, or the dequantized copy of a
    /// quantized one.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.quant {
            Some(q) => q.to_tensor(self.weight.dtype(), self.weight.device()),
            None => Ok(self.weight.clone()),
        }
    }

    /// The frozen weight as the ops read it.
    fn frozen(&self) -> Frozen {
        match &self.quant {
            Some(q) => Frozen::Quant(q.clone()),
            None => Frozen::Dense(self.weight.clone()),
        }
    }

    /// `x Wᵀ` with the frozen weight, `x: (rows, in)`.
    fn base_matmul(&self, x: &Tensor) -> Result<Tensor> {
        match &self.quant {
            // A trainable copy (`lora_modules_to_save: [lm_head]`) needs its own gradient.
            None if self.weight.is_variable() => {
                Ok(x.matmul(&self.weight.to_dtype(x.dtype())?.t()?)?)
            }
            _ => frozen_matmul(x, &self.frozen()),
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x`: `(..., in)` → `(..., out)`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = self.in_features();
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.out_features();
        let drop = match &self.lora {
            Some(l) if train && l.dropout > 0.0 => Some(DropSpec {
                key: *l.rng.lock().unwrap_or_else(|e| e.into_inner()),
                stream: stream_of(&self.name),
                p: l.dropout,
            }),
            _ => None,
        };
        if let Some(l) = &self.lora
            && l.magnitude.is_none()
            && !self.weight.is_variable()
        {
            let ab = (l.a.as_tensor(), l.b.as_tensor());
            let y = crate::ops::lora_linear::lora_linear(
                &x2,
                &self.frozen(),
                self.bias.as_ref(),
                ab,
                l.scale,
                drop,
            )?;
            return Ok(y.reshape(out)?);
        }
        let base = self.base_matmul(&x2)?;
        let mut y = match &self.bias {
            Some(b) => base.broadcast_add(&b.to_dtype(base.dtype())?)?,
            None => base.clone(),
        };
        if let Some(l) = &self.lora {
            // DoRA (and an adapter on a trainable base) composed from ops.
            let dt = x2.dtype();
            let xd = match drop {
                Some(d) => dropout(&x2, d)?,
                None => x2.clone(),
            };
            // s·B(A x'), with s folded into the small B: one fewer (N, out) tensor kept.
            let z = xd
                .matmul(&l.a.as_tensor().to_dtype(dt)?.t()?)?
                .matmul(&(l.b.as_tensor() * l.scale)?.to_dtype(dt)?.t()?)?;
            match &l.magnitude {
                None => y = (y + z)?,
                Some(m) => {
                    // PEFT's DoRA: with g = m / ||W + s·BA||_row (the norm detached),
                    // y += (g - 1)·(W x') + g·s·B(A x'), x' = dropout(x).
                    let wn = dora_row_norm(
                        &self.dense_weight()?.to_dtype(DType::F32)?,
                        &l.a.as_tensor().to_dtype(DType::F32)?,
                        &l.b.as_tensor().to_dtype(DType::F32)?,
                        l.scale,
                    )?
                    .detach();
                    let g = m
                        .as_tensor()
                        .to_dtype(DType::F32)?
                        .div(&wn)?
                        .to_dtype(dt)?
                        .unsqueeze(0)?; // (1, out)
                    let base_d = if drop.is_some() {
                        self.base_matmul(&xd)?
                    } else {
                        base
                    };
                    let extra = (base_d.broadcast_mul(&(&g - 1.0)?)? + z.broadcast_mul(&g)?)?;
                    y = (y + extra)?;
                }
            }
        }
        Ok(y.reshape(out)?)
    }
}

/// DoRA's column norm in PEFT's words: `||W + s·BA||` over each output row, `[out]`, computed
/// without a graph (the caller detaches it, as PEFT does).
pub fn dora_row_norm(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let delta = (b.detach().matmul(&a.detach())? * scale)?;
    Ok((w.detach() + delta)?.sqr()?.sum(1)?.sqrt()?)
}

/// RMSNorm as transformers computes it: `w · x / sqrt(mean(x²) + eps)`.
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.pp(name).get(&[dim], "weight")?,
            eps,
        })
    }

    /// Computed in f32 whatever the input dtype, then cast back before the weight, as
    /// transformers does.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::rms_norm::rms_norm(x, &self.weight, self.eps)
    }
}

/// RoPE inverse frequencies, computed in f32 exactly as transformers does.
#[derive(Debug, Clone)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub head_dim: usize,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let dim = cfg.head_dim;
        let base = cfg.rope_theta as f32;
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0f32 / base.powf(i as f32 / dim as f32))
            .collect();
        let inv_freq = match &cfg.rope_scaling {
            RopeScaling::None => inv,
            RopeScaling::Factors(factors) => inv.iter().zip(factors).map(|(f, d)| f / d).collect(),
            &RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor as f32).collect(),
            &RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                inv.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        // transformers: ~(wavelen < high) * ~(wavelen > low); wavelen is never NaN.
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        };
        Self {
            inv_freq,
            head_dim: dim,
        }
    }
}
