#!/usr/bin/env python3
"""Writes a random Mistral-7B-shaped checkpoint (config.json + bf16 safetensors shards) and a
pretokenized dataset of fixed-length rows, for the GPU benchmark (scripts/gpu-check.sh).

  python3 benches/gpu/make_model.py OUT_DIR [--layers 32] [--seq 2048] [--rows 64] [--tiny]

`--tiny` makes the same files for a model of hidden size 64 (checks the pipeline on a CPU). A
word-level tokenizer.json (ids only: the data is pretokenized) comes with it.

Weights are drawn on the GPU when there is one (N(0, 0.02), as transformers initialises), so a
7B checkpoint takes seconds to make; only its shape matters for throughput and memory.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    # Mistral-7B-v0.1's shape (or a tiny one with the same structure).
    h, i, v, heads, kv_heads, hd = (64, 128, 512, 4, 2, 16) if a.tiny else (4096, 14336, 32000, 32, 8, 128)
    cfg = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": v,
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": a.layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hd,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    kv = kv_heads * hd

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

    index = {"metadata": {}, "weight_map": {}}

    def save(tensors, name):
        save_file(tensors, os.path.join(a.out, name), metadata={"format": "pt"})
        for k in tensors:
            index["weight_map"][k] = name

    save({"model.embed_tokens.weight": rnd(v, h)}, "model-embed.safetensors")
    for layer in range(a.layers):
        p = f"model.layers.{layer}."
        t = {
            p + "self_attn.q_proj.weight": rnd(h, h),
            p + "self_attn.k_proj.weight": rnd(kv, h),
            p + "self_attn.v_proj.weight": rnd(kv, h),
            p + "self_attn.o_proj.weight": rnd(h, h),
            p + "mlp.gate_proj.weight": rnd(i, h),
            p + "mlp.up_proj.weight": rnd(i, h),
            p + "mlp.down_proj.weight": rnd(h, i),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        }
        save(t, f"model-layer{layer:02d}.safetensors")
    save(
        {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": rnd(v, h)},
        "model-head.safetensors",
    )
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{k}": k for k in range(3, v)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(a.out, "tokenizer.json"))
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}, f)
    # Fixed-length rows of token ids, every token trained (ids below 256 fit any tokenizer).
    gen = torch.Generator().manual_seed(1)
    with open(os.path.join(a.out, "data.jsonl"), "w") as f:
        for _ in range(a.rows):
            ids = torch.randint(3, 256, (a.seq,), generator=gen).tolist()
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    print(json.dumps({"dir": a.out, "layers": a.layers, "seq": a.seq, "rows": a.rows}))


if __name__ == "__main__":
    main()
