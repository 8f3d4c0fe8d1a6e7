"""Checks that an adapter written by runner loads with PEFT and gives runner's logits.

    cargo run -p runner-export --example dump_logits -- BASE_DIR ADAPTER_DIR /tmp/runner_logits.safetensors
    python3 tools/export/verify_peft.py ADAPTER_DIR BASE_DIR [/tmp/runner_logits.safetensors]
    python3 tools/export/verify_peft.py ADAPTER_DIR BASE_DIR LOGITS --merged MERGED_DIR

Loads BASE_DIR with transformers (f32, eager attention), applies ADAPTER_DIR with
PeftModel.from_pretrained, runs the input_ids stored in the logits file and prints the largest
|difference| with runner's logits, absolute and relative to the largest |logit|. Exits 1 when
the relative difference is above 1e-5. With --merged, also loads a folder written by runner's
merge with transformers and compares its weights with PEFT's merge_and_unload() and its logits
with PEFT's.
"""

import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    args = sys.argv[1:]
    merged_dir = None
    if "--merged" in args:
        i = args.index("--merged")
        merged_dir = args[i + 1]
        del args[i:i + 2]
    if len(args) not in (2, 3):
        sys.exit(__doc__)
    adapter_dir, base_dir = args[0], args[1]
    logits_file = args[2] if len(args) == 3 else "/tmp/runner_logits.safetensors"
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
    ok = diff / scale <= 1e-5
    if merged_dir is not None:
        ours = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32,
                                                    attn_implementation="eager")
        with torch.no_grad():
            merged_logits = ours(input_ids=ref["input_ids"]).logits
            theirs = model.merge_and_unload().state_dict()
        ours_sd = ours.state_dict()
        werr = max(((ours_sd[k] - v).abs().max() / v.abs().max().clamp_min(1e-30)).item()
                   for k, v in theirs.items())
        mdiff = (merged_logits - logits).abs().max().item()
        print(f"runner merge vs PEFT merge_and_unload: max weight rel err {werr:.3e}")
        print(f"runner merged model vs PEFT adapter logits: {mdiff:.3e} "
              f"(relative {mdiff / scale:.3e})")
        ok = ok and werr <= 1e-5 and mdiff / scale <= 1e-4
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
