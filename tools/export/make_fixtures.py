"""Writes the fixtures of crates/export/tests/: a tiny random Llama saved with save_pretrained
(sharded, with model.safetensors.index.json), PEFT adapters saved with save_pretrained, the
logits of base+adapter on a fixed batch, and PEFT's merge_and_unload() weights.

    pip install torch transformers peft safetensors
    python3 tools/export/make_fixtures.py      # writes crates/export/fixtures/

Versions used for the committed fixtures: torch 2.15, transformers 5.24, peft 0.21.
The Rust tests never run this script.
"""

import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "crates", "export", "fixtures")

CONFIG = dict(
    model_type="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    initializer_range=0.08,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

ADAPTERS = {
    "lora": dict(target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], r=4, lora_alpha=8),
    "rslora": dict(target_modules=["q_proj", "k_proj", "gate_proj", "up_proj"], r=4,
                   lora_alpha=6, use_rslora=True),
    "dora": dict(target_modules=["k_proj", "o_proj", "up_proj"], r=4, lora_alpha=8,
                 use_dora=True),
    # lora_modules_to_save: whole trained copies of the embeddings and the LM head.
    "save": dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8,
                 modules_to_save=["embed_tokens", "lm_head"]),
}


def base_model():
    torch.manual_seed(4321)
    cfg = AutoConfig.for_model(**CONFIG)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
    model.eval()
    out = os.path.join(OUT, "base")
    os.makedirs(out, exist_ok=True)
    # Small shards so that the merge has to keep a real index.
    model.save_pretrained(out, safe_serialization=True, max_shard_size="40KB")
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 128}, f)
    return out


def batch():
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 9), generator=gen)
    return ids


def main():
    base_dir = base_model()
    ids = batch()
    tensors = {"input_ids": ids}
    base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager",
                                                dtype=torch.float32)
    with torch.no_grad():
        tensors["logits.base"] = base(input_ids=ids).logits
    for i, (name, spec) in enumerate(ADAPTERS.items()):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager",
                                                     dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0,
                                                      bias="none", **spec))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.1)
                elif "lora_magnitude_vector" in n:
                    p.mul_(1.0 + 0.1 * torch.randn_like(p))
                elif "modules_to_save" in n and p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        peft_model.eval()
        adir = os.path.join(OUT, f"adapter-{name}")
        peft_model.save_pretrained(adir)
        # Keep the fixtures machine-independent and small.
        os.remove(os.path.join(adir, "README.md"))
        with open(os.path.join(adir, "adapter_config.json")) as f:
            acfg = json.load(f)
        acfg["base_model_name_or_path"] = "../base"
        with open(os.path.join(adir, "adapter_config.json"), "w") as f:
            json.dump(acfg, f, indent=2, sort_keys=True)
        with torch.no_grad():
            tensors[f"logits.{name}"] = peft_model(input_ids=ids).logits
            merged = peft_model.merge_and_unload()
        save_file({k: v.detach().contiguous() for k, v in merged.state_dict().items()},
                  os.path.join(OUT, f"merged-{name}.safetensors"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "logits.safetensors"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
