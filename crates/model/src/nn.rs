//! Differentiable building blocks: linear layers (with an optional LoRA adapter), RMSNorm, RoPE,
//! softmax and the attention masks. Only ops with a backward in candle 0.11.1 are used: the fused
//! `softmax_last_dim`, `RmsNorm::forward` and `rotary_emb::rope` silently drop gradients.

use crate::config::{ModelConfig, RopeScaling};
use crate::error::Result;
use crate::weights::Weights;
use candle_core::{D, DType, Device, Tensor, Var};
use rand::Rng;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};

/// Seeded random stream shared by the dropout layers of one model.
pub type SharedRng = Arc<Mutex<rand_chacha::ChaCha8Rng>>;

pub fn shared_rng(seed: u64) -> SharedRng {
    Arc::new(Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)))
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

    /// `x Wᵀ` with the frozen weight, `x: (rows, in)`.
    fn base_matmul(&self, x: &Tensor) -> Result<Tensor> {
        match &self.quant {
            Some(q) => crate::quant::quant_matmul(x, q),
            // A trainable copy (`lora_modules_to_save: [lm_head]`) needs its own gradient.
            None if self.weight.is_variable() => Ok(x.matmul(&self.weight.t()?)?),
            None => frozen_matmul(x, &self.weight),
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
        if let Some(l) = &self.lora
            && l.magnitude.is_none()
            && crate::fused::applies(&x2)
            && crate::fused::applies(&self.weight)
        {
            let mask = if train && l.dropout > 0.0 {
                Some(crate::fused::DropMask::new(
                    &dropout_draws(x2.elem_count(), &l.rng),
                    l.dropout,
                ))
            } else {
                None
            };
            let ab = (l.a.as_tensor(), l.b.as_tensor());
            let y = match &self.quant {
                // QLoRA: the same fused op, dequantizing the base into transient buffers.
                Some(q) => {
                    crate::fused::lora_linear_quant(&x2, q, self.bias.as_ref(), ab, l.scale, mask)?
                }
                None => crate::fused::lora_linear(
                    &x2,
                    &self.weight,
                    self.bias.as_ref(),
                    ab,
                    l.scale,
                    mask,
                )?,
            };
            return Ok(y.reshape(out)?);
        }
        let base = self.base_matmul(&x2)?;
        let mut y = match &self.bias {
            Some(b) => base.broadcast_add(b)?,
            None => base.clone(),
        };
        if let Some(l) = &self.lora {
            let dropping = train && l.dropout > 0.0;
            let xd = dropout(&x2, l.dropout, train, &l.rng)?;
            // The f32 master factors in the activations' dtype (mixed precision, issue 12).
            let (a, b, m) = crate::lora::compute_factors(l, x2.dtype())?;
            // s·B(A x'), with s folded into the small B: one fewer (N, out) tensor kept.
            let z = xd.matmul(&a.t()?)?.matmul(&(&b * l.scale)?.t()?)?;
            match &m {
                None => y = (y + z)?,
                Some(m) => {
                    // PEFT's DoRA: with g = m / ||W + s·BA||_row (the norm detached),
                    // y += (g - 1)·(W x') + g·s·B(A x'), x' = dropout(x).
                    let wn = dora_row_norm(&self.dense_weight()?, &a, &b, l.scale)?.detach();
                    let g = m.div(&wn)?.unsqueeze(0)?; // (1, out)
                    let base_d = if dropping {
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

/// `x Wᵀ` for a frozen `W`: the backward computes only the input's gradient. (candle's own
/// matmul backward also computes and stores a gradient for `W`, a third of a step's compute and
/// a model-sized buffer, even when `W` is a constant.)
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(x.matmul(&w.t()?)?);
    }
    Ok(x.apply_op1(FrozenMatmul { w: w.clone() })?)
}

struct FrozenMatmul {
    /// `[out, in]`
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = layout.shape().dims2()?;
        let (ws, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*ws else {
            candle_core::bail!("frozen-matmul: weight is not on the CPU")
        };
        let n = wl.shape().dims2()?.0;
        // x (m, k) · Wᵀ (k, n), reading W through a transposed layout: no copy.
        let out = storage.matmul(w, (1, m, n, k), layout, &wl.transpose(0, 1)?)?;
        Ok((out, candle_core::Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// Inverted dropout (as `torch.nn.Dropout`): zero with probability `p`, scale the rest by 1/(1-p).
pub fn dropout(x: &Tensor, p: f64, train: bool, rng: &SharedRng) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    // Random u32s from the seeded stream, kept where u ≥ p·2³², then scaled by 1/(1-p).
    let bits = dropout_draws(x.elem_count(), rng);
    let threshold = (p * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = bits
        .iter()
        .map(|&u| if u >= threshold { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// `n` random u32s from the dropout stream (a bulk fill: fast even in debug builds).
pub fn dropout_draws(n: usize, rng: &SharedRng) -> Vec<u32> {
    let mut bits = vec![0u32; n];
    rng.lock()
        .unwrap_or_else(|e| e.into_inner())
        .fill(&mut bits[..]);
    bits
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
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return crate::cuda::rms_norm(x, &self.weight, self.eps);
        }
        if crate::fused::applies(x) && self.weight.dtype() == DType::F32 {
            return crate::fused::rms_norm(x, &self.weight, self.eps);
        }
        self.forward_composed(x)
    }

    /// The same from candle ops: the reference for the fused op, and the path for other
    /// dtypes and devices.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let normed = x.broadcast_mul(&inv)?.to_dtype(dtype)?;
        Ok(normed.broadcast_mul(&self.weight)?)
    }
}

/// Softmax over the last dimension, built from differentiable ops (the max is detached: the
/// result does not depend on it).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// `softmax(x + mask)` over the last dimension as one recorded op: the graph keeps only `x` and
/// the result (the plain composition keeps six `(B, H, T, T)` tensors per layer), and the
/// backward is `dx = y·(dy − Σ dy·y)`. `mask` broadcasts against `x` and gets no gradient.
pub fn masked_softmax_last(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !x.track_op() {
        return softmax_last(&x.broadcast_add(mask)?);
    }
    let y = softmax_last(&x.detach().broadcast_add(mask)?)?.contiguous()?;
    Ok(x.apply_op1(MaskedSoftmax {
        y: std::sync::Mutex::new(Some(y)),
    })?)
}

struct MaskedSoftmax {
    /// The forward result, computed with tensor ops before the op is recorded.
    y: std::sync::Mutex<Option<Tensor>>,
}

impl candle_core::CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        _s: &candle_core::CpuStorage,
        _l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let y = self
            .y
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("masked-softmax: output taken".into()))?;
        let shape = y.shape().clone();
        let (st, l) = y.storage_and_layout();
        match (&*st, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(c), Some((0, n))) if n == shape.elem_count() => {
                Ok((c.clone(), shape))
            }
            _ => candle_core::bail!("masked-softmax: unexpected layout"),
        }
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let s = (dy * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((dy.broadcast_sub(&s)? * y)?))
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

    /// `cos`, `sin` of shape `(B, 1, T, head_dim)` for the given positions (`B*T`, row-major).
    pub fn cos_sin(
        &self,
        positions: &[u32],
        b: usize,
        t: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * self.head_dim);
        let mut sin = Vec::with_capacity(positions.len() * self.head_dim);
        for &p in positions {
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    let a = f * p as f32;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        debug_assert_eq!(cos.len(), positions.len() * 2 * half);
        let cos = Tensor::from_vec(cos, (b, 1, t, self.head_dim), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, 1, t, self.head_dim), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// `x·cos + rotate_half(x)·sin` for `x: (B, H, T, D)`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::cuda::rope(x, cos, sin);
    }
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// Additive attention mask `(B, 1, T, T)`, in f32 (scores are upcast before it is added): 0 where query `i` may see key `j`, the most negative
/// finite value elsewhere (finite so fully masked padding rows stay NaN-free).
///
/// Query `i` sees key `j` when `j ≤ i`, both belong to the same sample (`seq_ids` equal and
/// non-zero; 0 marks padding) and, with a sliding window `w`, `i - j < w`. Packed batches give
/// each sample its own id, which makes the mask block-diagonal.
pub fn attention_mask(
    seq_ids: &[u32],
    b: usize,
    t: usize,
    window: Option<usize>,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let neg = f32::MIN;
    let mut m = vec![neg; b * t * t];
    for row in 0..b {
        let ids = &seq_ids[row * t..(row + 1) * t];
        for i in 0..t {
            let base = row * t * t + i * t;
            if ids[i] == 0 {
                m[base + i] = 0.0;
                continue;
            }
            let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
            for j in lo..=i {
                if ids[j] == ids[i] {
                    m[base + j] = 0.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, t, t), device)?.to_dtype(dtype)?)
}
