"""Writes crates/export/fixtures/generate.json: transformers' greedy `generate` on the tiny
export fixture model (crates/export/fixtures/base), alone and with each PEFT adapter beside it
(unmerged), for a few prompts of token ids. crates/export/tests/generate.rs checks that
`runner_model::generate` (KV cache, greedy) picks the same tokens.

    pip install torch transformers peft
    python3 tools/export/make_generate_fixture.py

Versions used for the committed fixture: torch 2.15, transformers 5.24, peft 0.21.
The Rust tests never run this script.
"""

import json
import os

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "crates", "export", "fixtures")
PROMPTS = [[5, 17, 9, 33, 12], [3], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
NEW_TOKENS = 24


def load(adapter):
    model = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "base"),
                                                 attn_implementation="eager",
                                                 dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, os.path.join(FIX, f"adapter-{adapter}"))
    return model.eval()


def main():
    out = {"new_tokens": NEW_TOKENS, "cases": []}
    for adapter in [None, "lora", "rslora", "dora"]:
        model = load(adapter)
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                     do_sample=False, use_cache=True, eos_token_id=None,
                                     pad_token_id=0)
                # The margin between the top two logits at each step: a tiny margin would make
                # the comparison depend on rounding, so the test reports it.
                logits = model(input_ids=gen).logits[0, len(prompt) - 1:-1]
                top2 = logits.topk(2, dim=-1).values
                margin = float((top2[:, 0] - top2[:, 1]).min())
            out["cases"].append({
                "adapter": adapter,
                "prompt": prompt,
                "generated": gen[0, len(prompt):].tolist(),
                "min_top2_margin": margin,
            })
    with open(os.path.join(FIX, "generate.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", os.path.join(FIX, "generate.json"))


if __name__ == "__main__":
    main()
