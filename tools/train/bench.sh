#!/usr/bin/env bash
# Training throughput, runner vs transformers + PEFT, in one go on this machine.
#
#     tools/train/bench.sh            # STEPS=6 WARMUP=2 THREADS=2 by default
#
# Same model (SmolLM2-135M from the GGUF both sides read, f32), LoRA r=16 alpha=32 dropout 0.05
# on all seven projections, batch 4 x 256 tokens, AdamW, 2 threads. runner trains on the
# SmolLM2 recipe's packed chat data; PyTorch on random ids with every position labelled. Its
# speed does not depend on the labels (transformers computes the logits of every position);
# runner computes the LM head only where a label is, which the printed label share shows.
# Both count every position of the 4 x 256 batch and skip the first WARMUP steps.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-6}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}

scripts/fetch-smollm2.sh >/dev/null
if ! python3 -c 'import torch, transformers, peft, gguf' 2>/dev/null; then
    echo "installing the Python reference (torch, transformers, peft, gguf) from PyPI" >&2
    python3 -m pip install --quiet torch transformers peft gguf
fi
cargo build --release --locked --quiet -p runner-cli

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
RAYON_NUM_THREADS=$THREADS target/release/runner run recipes/smollm2-lora.yaml \
    --set max_steps=$((STEPS + WARMUP)) --set micro_batch_size=4 --set sequence_len=256 \
    --set sample_packing=true --set gradient_accumulation_steps=1 --set logging_steps=1 \
    --set val_set_size=0 --set evals_per_epoch= --set saves_per_epoch= \
    --set output_dir="$out/runner" >"$out/runner.log" 2>&1 ||
    { cat "$out/runner.log"; exit 1; }
python3 tools/train/bench_pytorch.py --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" \
    2>/dev/null | tail -1 >"$out/torch.log"
python3 - "$out" "$WARMUP" <<'PY'
import json, re, sys
out, warmup = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(f"{out}/runner/metrics.jsonl") if '"loss"' in l]
tok = 4 * 256
# tokens_per_second is cumulative from the first step: recover the time after the warm-up.
n, w = rows[-1], rows[warmup - 1]
secs = n["step"] * tok / n["tokens_per_second"] - w["step"] * tok / w["tokens_per_second"]
ours = (n["step"] - w["step"]) * tok / secs
log = open(f"{out}/runner.log").read()
rss = float(re.search(r"peak RSS ([0-9.]+) GB", log).group(1))
share = re.search(r"trained tokens: ([0-9.]+)%", log)
t = open(f"{out}/torch.log").read()
theirs = float(re.search(r"([0-9.]+) tokens/s", t).group(1))
their_rss = float(re.search(r"peak RSS ([0-9.]+) GB", t).group(1))
print(f"{'':14}{'tokens/s':>10}{'peak RSS GB':>13}")
print(f"{'runner':14}{ours:>10.1f}{rss:>13.2f}")
print(f"{'pytorch+peft':14}{theirs:>10.1f}{their_rss:>13.2f}")
print(f"{'ratio':14}{ours / theirs:>10.2f}{rss / their_rss:>13.2f}")
if share:
    print(f"runner computed the LM head for {share.group(1)}% of positions (those with a label)")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
