//! Tensor and module names, once: the seven linear projections of a Llama-family decoder
//! layer, and the table between llama.cpp's GGUF tensor names and Hugging Face's
//! (`blk.3.attn_q.weight` ↔ `model.layers.3.self_attn.q_proj.weight`). The GGUF reader, the
//! GGUF writer and the built-in model generator all translate through this table.

/// One linear projection of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    /// The leaf name users target (`q_proj`).
    pub leaf: &'static str,
    /// The module path inside a layer (`self_attn.q_proj`).
    pub module: &'static str,
    /// llama.cpp's name inside `blk.N.` (`attn_q`).
    pub gguf: &'static str,
}

const fn p(leaf: &'static str, module: &'static str, gguf: &'static str) -> Projection {
    Projection { leaf, module, gguf }
}

/// The linear projections of a Llama-family decoder layer, in the order of the layer's
/// `projections()` (attention q, k, v, o, then the MLP's gate, up, down).
pub const PROJECTIONS: [Projection; 7] = [
    p("q_proj", "self_attn.q_proj", "attn_q"),
    p("k_proj", "self_attn.k_proj", "attn_k"),
    p("v_proj", "self_attn.v_proj", "attn_v"),
    p("o_proj", "self_attn.o_proj", "attn_output"),
    p("gate_proj", "mlp.gate_proj", "ffn_gate"),
    p("up_proj", "mlp.up_proj", "ffn_up"),
    p("down_proj", "mlp.down_proj", "ffn_down"),
];

/// Per-layer modules that are not projections: (Hugging Face module, GGUF name).
const LAYER_NORMS: [(&str, &str); 2] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// Whole-model weights: (Hugging Face name, GGUF name). (llama.cpp's `rope_freqs.weight` is
/// not a weight: the GGUF reader turns it into the RoPE configuration.)
const GLOBAL: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

fn layer_pairs() -> impl Iterator<Item = (&'static str, &'static str)> {
    PROJECTIONS
        .iter()
        .map(|p| (p.module, p.gguf))
        .chain(LAYER_NORMS)
}

/// The Hugging Face name of a GGUF tensor, or None for tensors the table does not know.
pub fn hf_from_gguf(gguf: &str) -> Option<String> {
    if let Some((hf, _)) = GLOBAL.iter().find(|(_, g)| *g == gguf) {
        return Some(hf.to_string());
    }
    let (layer, tail) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let (hf, _) = layer_pairs().find(|(_, g)| *g == module)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The GGUF name of a Hugging Face tensor, or None for tensors the table does not know.
pub fn gguf_from_hf(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let (layer, tail) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let (_, g) = layer_pairs().find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names written out by hand from llama.cpp's `gguf-py/gguf/tensor_mapping.py` (LLAMA),
    /// independently of the table.
    const KNOWN: &[(&str, &str)] = &[
        (
            "blk.3.attn_q.weight",
            "model.layers.3.self_attn.q_proj.weight",
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
        ),
        ("blk.0.attn_v.bias", "model.layers.0.self_attn.v_proj.bias"),
        (
            "blk.11.attn_output.weight",
            "model.layers.11.self_attn.o_proj.weight",
        ),
        (
            "blk.1.ffn_gate.weight",
            "model.layers.1.mlp.gate_proj.weight",
        ),
        ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
        (
            "blk.29.ffn_down.weight",
            "model.layers.29.mlp.down_proj.weight",
        ),
        (
            "blk.0.attn_norm.weight",
            "model.layers.0.input_layernorm.weight",
        ),
        (
            "blk.0.ffn_norm.weight",
            "model.layers.0.post_attention_layernorm.weight",
        ),
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];

    #[test]
    fn the_table_maps_both_ways() {
        for (g, h) in KNOWN {
            assert_eq!(hf_from_gguf(g).as_deref(), Some(*h), "{g}");
            assert_eq!(gguf_from_hf(h).as_deref(), Some(*g), "{h}");
        }
        for unknown in [
            "blk.x.attn_q.weight",
            "blk.0.attn_qkv.weight",
            "rope_freqs.weight",
            "foo",
            "",
        ] {
            assert_eq!(hf_from_gguf(unknown), None, "{unknown}");
        }
        assert_eq!(gguf_from_hf("model.layers.0.self_attn.q_norm.weight"), None);
    }
}
