"""Writes crates/train/fixtures/*.json from the reference implementations:
torch.optim.AdamW + torch.nn.utils.clip_grad_norm_ and transformers' learning-rate schedules.

    python3 tools/train/make_fixtures.py      (torch 2.15, transformers 5.24)

The Rust tests in crates/train compare against these files and never run Python.
"""
import json
import math

import torch
from transformers import (
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

OUT = "crates/train/fixtures"


def adamw():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3, 4, generator=g))
    b = torch.nn.Parameter(torch.randn(5, generator=g))
    init = {"a": a.detach().clone().tolist(), "b": b.detach().clone().tolist()}
    opt = torch.optim.AdamW(
        [
            {"params": [a], "lr": 1e-2, "weight_decay": 0.01},
            {"params": [b], "lr": 1e-2 * 16, "weight_decay": 0.0},  # LoRA+ ratio 16
        ],
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6)
    steps = []
    for step in range(6):
        ga = torch.randn(3, 4, generator=g) * (3.0 if step == 3 else 0.5)
        gb = torch.randn(5, generator=g) * 0.5
        a.grad, b.grad = ga.clone(), gb.clone()
        norm = torch.nn.utils.clip_grad_norm_([a, b], max_norm=1.0)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        steps.append(
            {
                "grad_a": ga.tolist(),
                "grad_b": gb.tolist(),
                "norm": float(norm),
                "lr": lr,
                "a": a.detach().tolist(),
                "b": b.detach().tolist(),
            }
        )
    return {"init": init, "steps": steps}


def schedules():
    p = torch.nn.Parameter(torch.zeros(1))
    total, warmup, peak = 20, 3, 1e-3
    out = {}
    makers = {
        "linear": lambda o: get_linear_schedule_with_warmup(o, warmup, total),
        "cosine": lambda o: get_cosine_schedule_with_warmup(o, warmup, total),
        "cosine_min_0.1": lambda o: get_cosine_with_min_lr_schedule_with_warmup(
            o, warmup, total, min_lr_rate=0.1
        ),
        "constant": lambda o: get_constant_schedule(o),
        "constant_with_warmup": lambda o: get_constant_schedule_with_warmup(o, warmup),
    }
    for name, make in makers.items():
        opt = torch.optim.AdamW([p], lr=peak)
        s = make(opt)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        out[name] = lrs
    return {"total": total, "warmup": warmup, "peak": peak, "lrs": out}


if __name__ == "__main__":
    with open(f"{OUT}/adamw.json", "w") as f:
        json.dump(adamw(), f)
    with open(f"{OUT}/schedules.json", "w") as f:
        json.dump(schedules(), f)
