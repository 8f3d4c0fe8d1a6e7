//! What a training step keeps in memory besides the weights, counted from the architecture, so
//! that a micro-batch that cannot fit is refused with a message before the first step instead of
//! the kernel killing the run halfway through it.

use crate::config::ModelConfig;

/// Values one decoder layer keeps per position for its backward pass on the fused f32 path
/// ([`crate::ops`]): the two norm outputs, the o_proj and down_proj outputs and the two residual
/// sums (hidden each); q before and after RoPE and the attention output (heads·head_dim each);
/// k, k after RoPE and v (kv_heads·head_dim each); gate, up and their SwiGLU product
/// (intermediate each). Qwen3's q/k norms keep one more q and k. The composed path (other
/// dtypes, quantized or DoRA layers) keeps more: this is a lower bound for it.
pub fn values_per_position_per_layer(cfg: &ModelConfig) -> usize {
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let norms = if cfg.qk_norm { q + kv } else { 0 };
    6 * cfg.hidden_size + 3 * q + 3 * kv + 3 * cfg.intermediate_size + norms
}

/// Values of one chunk of the loss head: the logits of up to `chunk` labelled positions.
const LOSS_CHUNK: usize = crate::loss::DEFAULT_CHUNK;

/// Bytes a training step on a micro-batch of `positions` (rows × padded length) holds at its
/// peak besides the weights and optimizer state: the saved activations (every layer's, or with
/// `gradient_checkpointing` each layer's input plus one layer's), the gradients of about two
/// layers in flight during the backward pass, and one chunk of logits.
pub fn step_activation_bytes(
    cfg: &ModelConfig,
    positions: usize,
    gradient_checkpointing: bool,
    dtype_bytes: usize,
) -> u64 {
    let layer = values_per_position_per_layer(cfg) as u64;
    let layers = cfg.num_hidden_layers as u64;
    let saved = if gradient_checkpointing {
        layers * cfg.hidden_size as u64 + layer
    } else {
        layers * layer
    };
    let per_position = (saved + 2 * layer) * dtype_bytes as u64;
    let logits = (LOSS_CHUNK.min(positions) * cfg.vocab_size * 4) as u64;
    per_position * positions as u64 + logits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelConfig {
        let mut c = crate::tiny::builtin_config("tiny-llama").expect("builtin config");
        c.hidden_size = 576;
        c.intermediate_size = 1536;
        c.num_hidden_layers = 30;
        c.num_attention_heads = 9;
        c.num_key_value_heads = 3;
        c.head_dim = 64;
        c.vocab_size = 49152;
        c
    }

    #[test]
    fn smollm2_step_matches_the_measured_peak() {
        // Measured: peak RSS 2.15 GB for 4 × 256 positions, f32, of which ~0.55 GB weights
        // (tools/train/bench.sh); the estimate is a lower bound of the rest.
        let c = smollm2();
        assert_eq!(values_per_position_per_layer(&c), 10368);
        let est = step_activation_bytes(&c, 1024, false, 4) as f64 / 1e9;
        assert!((1.3..1.6).contains(&est), "{est}");
        let ckpt = step_activation_bytes(&c, 1024, true, 4) as f64 / 1e9;
        assert!(ckpt < 0.35, "{ckpt}");
    }
}
