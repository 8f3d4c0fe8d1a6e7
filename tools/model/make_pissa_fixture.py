"""Writes crates/model/fixtures/pissa/ for crates/model/tests/pissa.rs: PEFT's PiSSA
initialisation of the tiny-llama fixture (exact SVD), a "trained" adapter (A and B moved by
noise) and PEFT's conversion of it to a plain LoRA of the original base
(save_pretrained(path_initial_model_for_weight_conversion=...)), plus the reconstruction error
of PEFT's fast-SVD path (pissa_niter_4) for the quality check. The Rust tests never run this.

    pip install torch transformers peft safetensors
    python3 tools/model/make_pissa_fixture.py

Versions used for the committed fixture: torch 2.15, transformers 5.24, peft 0.21.
"""

import json
import os
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BASE = os.path.join(ROOT, "crates", "model", "fixtures", "tiny-llama")
OUT = os.path.join(ROOT, "crates", "model", "fixtures", "pissa")
TARGETS = ["q_proj", "v_proj", "down_proj"]
R, ALPHA = 4, 8


def peft_model(init):
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    cfg = LoraConfig(task_type="CAUSAL_LM", r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                     target_modules=TARGETS, init_lora_weights=init)
    return get_peft_model(model, cfg)


def clean(n):
    return n.replace(".default", "").replace(".base_layer", "")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    pm = peft_model("pissa")
    tensors = {}
    for n, p in pm.named_parameters():
        if "lora_" in n:
            tensors["init." + clean(n)] = p.detach().clone()
        elif "base_layer" in n and n.endswith("weight"):
            tensors["residual." + clean(n).removeprefix("base_model.model.")] = p.detach().clone()
    with tempfile.TemporaryDirectory() as tmp:
        init_dir = os.path.join(tmp, "init")
        pm.peft_config["default"].init_lora_weights = True
        pm.save_pretrained(init_dir)
        pm.peft_config["default"].init_lora_weights = "pissa"
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.add_(0.05 * torch.randn_like(p))
                    tensors["trained." + clean(n)] = p.detach().clone()
        out_dir = os.path.join(tmp, "converted")
        pm.save_pretrained(out_dir, path_initial_model_for_weight_conversion=init_dir)
        for n, t in load_file(os.path.join(out_dir, "adapter_model.safetensors")).items():
            tensors["converted." + n] = t
        with open(os.path.join(out_dir, "adapter_config.json")) as f:
            converted_cfg = json.load(f)
    # Fast SVD: PEFT's reconstruction error ||W - s·B·A||_F / ||W||_F per target, against the
    # exact path's.
    fast = peft_model("pissa_niter_4")
    quality = {}
    scaling = ALPHA / R
    for n, mod in fast.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            key = n.removeprefix("base_model.model.") + ".weight"
            w = original[key]
            ba = mod.lora_B["default"].weight @ mod.lora_A["default"].weight
            quality[key] = float((w - scaling * ba).norm() / w.norm())
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "pissa.safetensors"))
    with open(os.path.join(OUT, "pissa.json"), "w") as f:
        json.dump(dict(r=R, lora_alpha=ALPHA, target_modules=TARGETS,
                       converted_r=converted_cfg["r"], converted_alpha=converted_cfg["lora_alpha"],
                       converted_init=converted_cfg["init_lora_weights"],
                       fast_relative_error=quality), f, indent=1, sort_keys=True)
    print("wrote", OUT, converted_cfg["r"], converted_cfg["lora_alpha"], quality)


if __name__ == "__main__":
    main()
