"""Writes the parity fixtures of crates/model/tests/parity.rs.

Tiny random Llama / Qwen3 / Mistral / Qwen2 models (seeded) with PEFT LoRA adapters whose B is
non-zero (so gradients are informative), a padded batch and a packed batch; for each: logits,
loss and the gradient of every lora_A / lora_B. The Rust tests never run this script.

    pip install torch transformers peft safetensors numpy
    python3 tools/model/make_fixtures.py        # writes crates/model/fixtures/<name>/

Versions used for the committed fixtures: torch 2.15, transformers 5.24, peft 0.21.
"""

import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "crates", "model", "fixtures")

COMMON = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    initializer_range=0.08,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

MODELS = {
    # Llama 3.1-style rope scaling with a tiny original context so every branch of it is hit.
    "tiny-llama": dict(
        model_type="llama",
        tie_word_embeddings=False,
        rope_theta=500.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16),
        lora=dict(target_modules="all-linear", r=4, lora_alpha=8, use_rslora=False),
    ),
    "tiny-qwen3": dict(
        model_type="qwen3",
        tie_word_embeddings=True,
        rope_theta=10000.0,
        lora=dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], r=8,
                  lora_alpha=16, use_rslora=True),
    ),
    "tiny-mistral": dict(
        model_type="mistral",
        tie_word_embeddings=False,
        rope_theta=10000.0,
        sliding_window=4,
        lora=dict(target_modules=["q_proj", "v_proj", "gate_proj", "up_proj"], r=4,
                  lora_alpha=4, use_rslora=False),
    ),
    "tiny-llama-dora": dict(
        model_type="llama",
        tie_word_embeddings=False,
        rope_theta=10000.0,
        attention_bias=True,
        lora=dict(target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], r=4, lora_alpha=8,
                  use_rslora=False, use_dora=True),
    ),
    "tiny-qwen2": dict(
        model_type="qwen2",
        tie_word_embeddings=True,
        rope_theta=10000.0,
        lora=dict(target_modules=r"model\.layers\.1\.(self_attn\.(q|k)_proj|mlp\.up_proj)", r=4,
                  lora_alpha=8, use_rslora=False),
    ),
    # Qwen2 with its sliding window switched on for layers >= max_window_layers.
    "tiny-qwen2-window": dict(
        model_type="qwen2",
        tie_word_embeddings=False,
        rope_theta=10000.0,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=1,
        lora=dict(target_modules=["q_proj", "k_proj"], r=2, lora_alpha=4, use_rslora=False),
    ),
    # lora_modules_to_save: trainable copies of both ends of an untied model ...
    "tiny-llama-save": dict(
        model_type="llama",
        tie_word_embeddings=False,
        rope_theta=10000.0,
        lora=dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, use_rslora=False,
                  modules_to_save=["embed_tokens", "lm_head"]),
    ),
    # ... and of the input embeddings of a tied one (PEFT's default breaks the tie: the LM head
    # keeps the frozen original).
    "tiny-llama-tied-save": dict(
        model_type="llama",
        tie_word_embeddings=True,
        rope_theta=10000.0,
        lora=dict(target_modules="all-linear", r=4, lora_alpha=8, use_rslora=False,
                  modules_to_save=["embed_tokens"]),
    ),
}


def build(name, spec, seed):
    torch.manual_seed(seed)
    spec = dict(spec)
    lora = spec.pop("lora")
    cfg = AutoConfig.for_model(**{**COMMON, **spec})
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.normal_(0.0, 0.1)
    model.eval()
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        path = os.path.join(out, extra)
        if os.path.exists(path):
            os.remove(path)
    lcfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **lora)
    peft_model = get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
            elif "modules_to_save" in n and p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # the copy differs from the frozen original
    # PEFT's saved names: no `.default`; the DoRA magnitude has no `.weight`; a module-to-save
    # copy is saved under the module's own name.
    lora_params = {
        n.replace(".modules_to_save.default", "").replace(".default", "")
        .replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): p
        for n, p in peft_model.named_parameters() if p.requires_grad
    }
    save_file({n: p.detach().contiguous() for n, p in lora_params.items()},
              os.path.join(out, "lora.safetensors"))
    if lora.get("modules_to_save"):
        # The names above are the ones save_pretrained writes, and LoRA+ groups as PEFT's
        # create_loraplus_optimizer makes them (lr multiplier per parameter).
        import tempfile
        from safetensors import safe_open
        from peft.optimizers import create_loraplus_optimizer
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.save_pretrained(tmp)
            with safe_open(os.path.join(tmp, "adapter_model.safetensors"), "pt") as f:
                assert set(f.keys()) == set(lora_params), (set(f.keys()), set(lora_params))
        opt = create_loraplus_optimizer(peft_model, torch.optim.AdamW, lr=1.0,
                                        loraplus_lr_ratio=16.0)
        by_id = {id(p): n for n, p in lora_params.items()}
        groups = {by_id[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
        with open(os.path.join(out, "loraplus.json"), "w") as f:
            json.dump(groups, f, indent=1, sort_keys=True)
    with open(os.path.join(out, "lora.json"), "w") as f:
        json.dump(dict(dict(use_dora=False, modules_to_save=[]), **lora, lora_dropout=0.0), f,
                  indent=1)
    # print_trainable_parameters() line, for the summary test
    trainable, total = peft_model.get_nb_trainable_parameters()
    line = (f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}")
    with open(os.path.join(out, "trainable.txt"), "w") as f:
        f.write(line + "\n")
    return peft_model, lora_params, cfg.vocab_size


def grads_of(lora_params):
    return {f"grad.{n}": p.grad.detach().clone() for n, p in lora_params.items()}


def padded_case(model, lora_params, vocab, gen):
    # Two rows, right padding; the first row has a masked 3-token prompt.
    B, T = 2, 12
    ids = torch.randint(3, vocab, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    ids[1, 8:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :3] = -100
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    return dict(input_ids=ids, attention_mask=mask, labels=labels,
                logits=out.logits.detach(), loss=out.loss.detach().reshape(1),
                **grads_of(lora_params))


def packed_case(model, lora_params, vocab, gen):
    # Three samples packed in one row of 14 (2 pad). The reference is each sample run alone:
    # packed logits are the per-sample logits side by side, and the loss is the mean over all
    # trained tokens of the three samples.
    lens = [5, 4, 3]
    T = 14
    samples = [torch.randint(3, vocab, (1, n), generator=gen) for n in lens]
    labels = [s.clone() for s in samples]
    labels[1][0, :2] = -100
    model.zero_grad()
    total, count, logits = 0.0, 0, []
    for s, l in zip(samples, labels):
        out = model(input_ids=s)
        lg = out.logits[0]
        logits.append(lg.detach())
        tgt = l[0, 1:]
        keep = tgt != -100
        total = total + torch.nn.functional.cross_entropy(lg[:-1][keep], tgt[keep], reduction="sum")
        count += int(keep.sum())
    loss = total / count
    loss.backward()
    pad = T - sum(lens)
    ids = torch.cat([s[0] for s in samples] + [torch.zeros(pad, dtype=torch.long)])[None]
    lab = torch.cat([l[0] for l in labels] + [torch.full((pad,), -100)])[None]
    cu = torch.tensor([0] + list(torch.cumsum(torch.tensor(lens), 0)))
    return dict(input_ids=ids, labels=lab, cu_seqlens=cu, logits=torch.cat(logits)[None],
                loss=loss.detach().reshape(1), **grads_of(lora_params))


def main():
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        i = list(MODELS).index(name)  # seeds follow the table, not the command line
        model, lora_params, vocab = build(name, MODELS[name], seed=1234 + i)
        gen = torch.Generator().manual_seed(99 + i)
        out = os.path.join(OUT, name)
        for case, fn in (("padded", padded_case), ("packed", packed_case)):
            tensors = fn(model, lora_params, vocab, gen)
            save_file({k: v.contiguous() for k, v in tensors.items()},
                      os.path.join(out, f"{case}.safetensors"))
        print(name, open(os.path.join(out, "trainable.txt")).read().strip())


if __name__ == "__main__":
    main()
