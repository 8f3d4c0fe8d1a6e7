"""Checks that an adapter written by runner loads with PEFT and gives runner's logits.

    cargo run -p runner-export --example dump_logits -- BASE_DIR ADAPTER_DIR /tmp/runner_logits.safetensors
    python3 tools/export/verify_peft.py ADAPTER_DIR BASE_DIR [/tmp/runner_logits.safetensors]

Loads BASE_DIR with transformers (f32, eager attention), applies ADAPTER_DIR with
PeftModel.from_pretrained, runs the input_ids stored in the logits file and prints the largest
|difference| with runner's logits, absolute and relative to the largest |logit|. Exits 1 when
the relative difference is above 1e-5.
"""

import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    adapter_dir, base_dir = sys.argv[1], sys.argv[2]
    logits_file = sys.argv[3] if len(sys.argv) == 4 else "/tmp/runner_logits.safetensors"
    ref = load_file(logits_file)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits
        with model.disable_adapter():
            base_logits = model(input_ids=ref["input_ids"]).logits
    diff = (logits - ref["logits"]).abs().max().item()
    scale = ref["logits"].abs().max().item()
    effect = (logits - base_logits).abs().max().item()
    print(f"adapter modules: {len([n for n, _ in model.named_modules() if n.endswith('lora_A')])}")
    print(f"adapter effect on logits (max |peft - base|): {effect:.3e}")
    print(f"max |runner - peft| logit difference: {diff:.3e} (relative {diff / scale:.3e})")
    sys.exit(0 if diff / scale <= 1e-5 else 1)


if __name__ == "__main__":
    main()
