"""Writes crates/model/fixtures/smollm2-gguf.json: transformers' loss for SmolLM2-135M-Instruct
loaded from the project's GGUF (dequantized to f32 by transformers' own GGUF loader) on a fixed
chat sample. The Rust test crates/model/tests/smollm2.rs loads the same GGUF and compares.

    scripts/fetch-smollm2.sh                    # the GGUF, hash-checked
    pip install torch transformers gguf
    python3 tools/model/make_smollm2_fixture.py
"""

import json
import os
import subprocess

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "crates", "model", "fixtures", "smollm2-gguf.json")

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France, and why is it famous?"},
    {"role": "assistant", "content": "Paris. It is famous for the Eiffel Tower, the Louvre, "
                                     "its cafés and centuries of art, fashion and history."},
]


def main():
    gguf = subprocess.check_output([os.path.join(ROOT, "scripts", "fetch-smollm2.sh")],
                                   text=True).strip()
    folder, name = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    enc = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)
    ids = list(enc["input_ids"])
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=x, labels=x)
    logits = out.logits[0]
    fixture = dict(
        source="transformers 5.24 AutoModelForCausalLM.from_pretrained(gguf_file=...), f32",
        messages=MESSAGES,
        input_ids=ids,
        loss=float(out.loss),
        # a few logits to localise a mismatch: the last position's first 16 entries
        last_logits_head=[float(v) for v in logits[-1, :16]],
        argmax=[int(v) for v in logits.argmax(-1)],
        tie_word_embeddings=bool(model.config.tie_word_embeddings),
    )
    # PEFT's print_trainable_parameters() line for r=16 on every linear layer but lm_head
    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                                                  target_modules="all-linear"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    fixture["peft_all_linear_r16"] = (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}")
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)
    print(OUT, len(ids), "tokens, loss", fixture["loss"])


if __name__ == "__main__":
    main()
