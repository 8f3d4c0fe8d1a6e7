"""Reads a GGUF written by `runner export-gguf` with the `gguf` Python package (llama.cpp's own
reader) and checks it against an independent reference: the base model's weights (a Hugging
Face safetensors folder, or a GGUF) with the PEFT adapter merged here in numpy
(W + s·B·A; DoRA m·W'/‖W'‖_row; modules_to_save copies replace their module).

Checks: llama metadata against the base's configuration; the tokenizer (tokens = vocabulary,
token types, merges, BOS/EOS ids, chat template); every tensor's name, shape and values after
undoing llama.cpp's Q/K row permutation, with the largest error per tensor type.

    pip install gguf numpy safetensors
    python3 tools/export/check_gguf.py OUT.gguf --base BASE_DIR_OR_GGUF [--adapter ADAPTER_DIR]

Exit status 0 when everything matches within the tolerances (relative to each tensor's largest
|value|): f32 1e-6, f16 1e-3, q8_0 8e-3 (8-bit blocks of 32 with an f16 scale: at most
half a step of 1/127 of the block's largest value).
"""

import argparse
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TOL = {"F32": 1e-6, "F16": 1e-3, "Q8_0": 8e-3}

HF_OF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def hf_name(g):
    fixed = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if g in fixed:
        return fixed[g]
    if not g.startswith("blk."):
        return None
    _, layer, module, kind = g.split(".")
    return f"model.layers.{layer}.{HF_OF[module]}.{kind}"


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    if len(f.data) == 1 and f.types[0].name != "ARRAY":
        part = f.parts[f.data[0]]
        return bytes(part).decode() if f.types[0].name == "STRING" else part[0].item()
    if f.types[-1].name == "STRING":
        return [bytes(f.parts[i]).decode() for i in f.data]
    return [f.parts[i][0].item() for i in f.data]


def tensor_values(t):
    shape = list(reversed([int(x) for x in t.shape]))
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)


def unpermute(w, n_head):
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def base_weights(base):
    """HF-named f32 weights and a config dict of the base model."""
    if base.endswith(".gguf"):
        r = GGUFReader(base)
        cfg = {k: field(r, f"llama.{k}") for k in
               ["block_count", "embedding_length", "attention.head_count",
                "attention.head_count_kv", "feed_forward_length"]}
        heads, kv = cfg["attention.head_count"], cfg["attention.head_count_kv"]
        out = {}
        for t in r.tensors:
            name = hf_name(t.name)
            if name is None:
                continue
            w = tensor_values(t)
            if name.endswith("q_proj.weight"):
                w = unpermute(w, heads)
            elif name.endswith("k_proj.weight"):
                w = unpermute(w, kv)
            out[name] = w
        return out, cfg
    from safetensors.numpy import load_file
    with open(os.path.join(base, "config.json")) as f:
        c = json.load(f)
    cfg = {"block_count": c["num_hidden_layers"], "embedding_length": c["hidden_size"],
           "attention.head_count": c["num_attention_heads"],
           "attention.head_count_kv": c.get("num_key_value_heads", c["num_attention_heads"]),
           "feed_forward_length": c["intermediate_size"]}
    out = {}
    for name in sorted(os.listdir(base)):
        if name.endswith(".safetensors"):
            for k, v in load_safetensors_f32(os.path.join(base, name)).items():
                out[k] = v
    return out, cfg


def load_safetensors_f32(path):
    try:
        from safetensors.numpy import load_file
        return {k: v.astype(np.float32) for k, v in load_file(path).items()}
    except (TypeError, ValueError):  # bf16 has no numpy dtype
        from safetensors.torch import load_file
        return {k: v.float().numpy() for k, v in load_file(path).items()}


def merge(weights, adapter):
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s = alpha / np.sqrt(r) if cfg.get("use_rslora") else alpha / r
    ad = load_safetensors_f32(os.path.join(adapter, "adapter_model.safetensors"))
    prefix = "base_model.model."
    modules = sorted({k[len(prefix):].rsplit(".lora_A", 1)[0] for k in ad if ".lora_A." in k})
    for m in modules:
        a, b = ad[f"{prefix}{m}.lora_A.weight"], ad[f"{prefix}{m}.lora_B.weight"]
        w = weights[f"{m}.weight"].astype(np.float64) + s * (b.astype(np.float64) @ a)
        mag = ad.get(f"{prefix}{m}.lora_magnitude_vector")
        if mag is not None:
            w = w * (mag[:, None] / np.linalg.norm(w, axis=1, keepdims=True))
        weights[f"{m}.weight"] = w.astype(np.float32)
    saved = [k for k in ad if ".lora_" not in k]
    for k in saved:  # modules_to_save: trained copies replace the module
        weights[k[len(prefix):]] = ad[k]
    return len(modules), len(saved)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("gguf")
    p.add_argument("--base", required=True)
    p.add_argument("--adapter")
    args = p.parse_args()

    ref, cfg = base_weights(args.base)
    merged = merge(ref, args.adapter) if args.adapter else (0, 0)
    r = GGUFReader(args.gguf)
    failures = []

    def check(what, ok, detail=""):
        print(f"  {'ok  ' if ok else 'FAIL'} {what} {detail}")
        if not ok:
            failures.append(what)

    print(f"{args.gguf}: {len(r.tensors)} tensors, {len(r.fields)} metadata keys; reference "
          f"{args.base}" + (f" + {args.adapter} ({merged[0]} LoRA modules merged, "
                            f"{merged[1]} modules_to_save)" if args.adapter else ""))
    check("general.architecture", field(r, "general.architecture") == "llama")
    for k, v in cfg.items():
        check(f"llama.{k}", field(r, f"llama.{k}") == v, f"= {field(r, f'llama.{k}')}")
    tokens = field(r, "tokenizer.ggml.tokens") or []
    embd = next(t for t in r.tensors if t.name == "token_embd.weight")
    vocab = int(embd.shape[1])
    check("tokenizer.ggml.tokens", len(tokens) == vocab, f"{len(tokens)} tokens, vocab {vocab}")
    types = field(r, "tokenizer.ggml.token_type") or []
    check("tokenizer.ggml.token_type", len(types) == len(tokens),
          f"{sum(1 for t in types if t == 3)} control tokens")
    merges = field(r, "tokenizer.ggml.merges") or []
    print(f"       tokenizer.ggml.model = {field(r, 'tokenizer.ggml.model')}, "
          f"pre = {field(r, 'tokenizer.ggml.pre')}, {len(merges)} merges, scores: "
          f"{'yes' if field(r, 'tokenizer.ggml.scores') is not None else 'no'}")
    for key in ["bos_token_id", "eos_token_id"]:
        v = field(r, f"tokenizer.ggml.{key}")
        check(f"tokenizer.ggml.{key}", v is not None and 0 <= v < len(tokens),
              f"= {v} ({tokens[v]!r})" if v is not None and v < len(tokens) else "")
    tmpl = field(r, "tokenizer.chat_template")
    check("tokenizer.chat_template", bool(tmpl), repr(tmpl[:50]) + "..." if tmpl else "")

    heads, kv = cfg["attention.head_count"], cfg["attention.head_count_kv"]
    worst = {}
    seen = set()
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            continue
        name = hf_name(t.name)
        w = tensor_values(t)
        if name.endswith("q_proj.weight"):
            w = unpermute(w, heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, kv)
        want = ref.get(name)
        if want is None:
            check(t.name, False, "not in the reference")
            continue
        seen.add(name)
        if w.shape != want.shape:
            check(t.name, False, f"shape {w.shape} vs {want.shape}")
            continue
        err = float(np.abs(w - want).max() / max(np.abs(want).max(), 1e-30))
        ty = t.tensor_type.name
        if err > TOL.get(ty, 0.0):
            check(t.name, False, f"{ty} rel. error {err:.2e}")
        if err >= worst.get(ty, (-1, ""))[0]:
            worst[ty] = (err, t.name)
    if "lm_head.weight" not in seen and "lm_head.weight" in ref:
        # Tied in the GGUF: the reference head must be the embedding.
        same = np.array_equal(ref["lm_head.weight"], ref["model.embed_tokens.weight"])
        check("tied output", same, "(no output.weight; lm_head must equal token_embd)")
        seen.add("lm_head.weight")
    missing = sorted(set(ref) - seen)
    check("every reference tensor written", not missing, ", ".join(missing[:5]))
    for ty, (err, name) in sorted(worst.items()):
        print(f"       {ty:5} largest rel. error {err:.2e} ({name}; tolerance {TOL.get(ty, 0):.0e})")
    print("PASS" if not failures else f"FAIL: {len(failures)} check(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
