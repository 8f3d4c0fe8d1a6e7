#!/usr/bin/env python3
"""transformers + PEFT on the benchmark checkpoint: LoRA r=16 on all linear projections, bf16,
one 2048-token row per step, AdamW; prints one JSON line with tokens/s (steps after the warm-up)
and peak GPU memory. The reference the runner's GPU engine is measured against.

  python3 benches/gpu/hf_peft.py MODEL_DIR [--steps 6] [--warmup 2] [--qlora]
"""
import argparse
import json
import os
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--qlora", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kw = {"dtype": torch.bfloat16}
    if a.qlora:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(a.model, device_map={"": 0}, attn_implementation="sdpa", **kw)
    if a.checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rows = [json.loads(l) for l in open(os.path.join(a.model, "data.jsonl"))]
    torch.cuda.reset_peak_memory_stats()
    tokens, t0 = 0, None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens = 0
        ids = torch.tensor([rows[step % len(rows)]["input_ids"]], device="cuda")
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += ids.numel()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps({
        "engine": "transformers+peft",
        "qlora": a.qlora,
        "tokens_per_s": tokens / dt,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "last_loss": float(out.loss),
    }))


if __name__ == "__main__":
    main()
