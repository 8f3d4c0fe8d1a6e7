"""The reference for runner's CPU training benchmark: transformers + PEFT training SmolLM2-135M
(dequantized from the same GGUF runner reads) with LoRA r=16, alpha=32 on all 7 projections,
batch 4 x 256 tokens, AdamW, fp32, on the given number of threads. Prints tokens/s and peak RSS.

    python3 tools/train/bench_pytorch.py [--steps 6] [--threads 2]

Compare with (same shape; runner's tokens/s counts every position of the 4 x 256 batch):

    cargo run --release -- run recipes/smollm2-lora.yaml --set max_steps=6 \\
        --set micro_batch_size=4 --set sequence_len=256 --set sample_packing=true \\
        --set output_dir=/tmp/bench-runner --set eval_steps= --set evals_per_epoch= --set val_set_size=0
"""
import argparse
import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=6)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--gguf", default=".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

d, f = os.path.split(os.path.abspath(args.gguf))
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
cfg = LoraConfig(
    r=16,
    lora_alpha=32,
    lora_dropout=0.05,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    task_type="CAUSAL_LM",
)
model = get_peft_model(model, cfg)
model.print_trainable_parameters()
model.train()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=2e-4)
ids = torch.randint(0, model.config.vocab_size, (4, 256))
times = []
for step in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t0)
measured = times[args.warmup:]
tps = 4 * 256 * len(measured) / sum(measured)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
print(f"pytorch+peft: {tps:.1f} tokens/s, {sum(measured) / len(measured):.2f} s/step, peak RSS {rss:.2f} GB")
