#!/usr/bin/env bash
# QLoRA against f32 LoRA on SmolLM2-135M, same data, same steps: loss, peak RSS, step time.
#
#     tools/model/bench_qlora.sh                 # STEPS=8 WARMUP=2 THREADS=2 by default
#     RUNNER=path/to/runner tools/model/bench_qlora.sh   # use an already built binary
#
# Both runs: recipes/smollm2-lora.yaml (LoRA r=16 alpha=32 on all seven projections, packed
# 4 x 256 tokens, AdamW), dropout 0 so the two differ only by the base; the second adds
# `adapter: qlora` + `load_in_4bit: true` (NF4, double-quantized absmax, dequantized on the fly
# in forward and backward). Step time is measured after WARMUP steps. The NF4 arithmetic
# printed beside the RSS: n params -> n/2 packed bytes + n/64 absmax bytes (8-bit, double
# quantization) + 4 n/16384 bytes of second-level scales + 4 bytes per layer ≈ 0.516 bytes
# per parameter, against 4 bytes in f32.
#
# Measured 2026-11-29 on the shared 2-core machine (load average 6-8 from other jobs, so the
# times are noisy), STEPS=6 WARMUP=2: final loss 0.4128 (f32) vs 0.5001 (NF4), mean 0.5417 vs
# 0.7336; peak RSS 2.11 vs 1.73 GB (-0.38 GB; the arithmetic expects -0.370 GB); step 9.13 s vs
# 9.19 s (+0.7%). (Before the fused LoRA op took NF4 bases, QLoRA fell back to the unfused
# path: 3.25 GB and +111% step time.)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-8}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}

scripts/fetch-smollm2.sh >/dev/null
if [ -z "${RUNNER:-}" ]; then
    cargo build --release --locked --quiet -p runner-cli
    RUNNER=${CARGO_TARGET_DIR:-target}/release/runner
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
run() { # name, extra --set arguments...
    local name=$1
    shift
    RAYON_NUM_THREADS=$THREADS "$RUNNER" run recipes/smollm2-lora.yaml \
        --set max_steps=$((STEPS + WARMUP)) --set logging_steps=1 --set lora_dropout=0 \
        --set val_set_size=0 --set evals_per_epoch= --set saves_per_epoch= \
        --set dataset_prepared_path="$out/prepared" \
        --set output_dir="$out/$name" "$@" >"$out/$name.log" 2>&1 ||
        { cat "$out/$name.log"; exit 1; }
}
run lora
echo "load average between: $(cut -d' ' -f1-3 /proc/loadavg)"
run qlora --set adapter=qlora --set load_in_4bit=true
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$out" "$WARMUP" <<'PY'
import json, re, sys
out, warmup = sys.argv[1], int(sys.argv[2])

def figures(name):
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if '"loss"' in l]
    log = open(f"{out}/{name}.log").read()
    tok = 4 * 256
    # tokens_per_second is cumulative from the first step: the time of the steps after warm-up
    n, w = rows[-1], rows[warmup - 1]
    secs = n["step"] * tok / n["tokens_per_second"] - w["step"] * tok / w["tokens_per_second"]
    return dict(final=rows[-1]["loss"], mean=sum(r["loss"] for r in rows) / len(rows),
                step=secs / (n["step"] - w["step"]),
                rss=float(re.search(r"peak RSS ([0-9.]+) GB", log).group(1)))

a, b = figures("lora"), figures("qlora")
# SmolLM2-135M: 30 layers x (2 x 576^2 + 2 x 576 x 192 + 3 x 576 x 1536) quantized parameters
n = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
nf4 = n / 2 + n / 64 + 4 * n / 16384 + 4 * 210
print(f"{'':22}{'f32 LoRA':>12}{'QLoRA (NF4)':>14}{'difference':>14}")
print(f"{'final loss':22}{a['final']:>12.4f}{b['final']:>14.4f}{b['final'] - a['final']:>+14.4f}")
print(f"{'mean loss':22}{a['mean']:>12.4f}{b['mean']:>14.4f}{b['mean'] - a['mean']:>+14.4f}")
print(f"{'peak RSS (GB)':22}{a['rss']:>12.2f}{b['rss']:>14.2f}{b['rss'] - a['rss']:>+14.2f}")
print(f"{'step time (s)':22}{a['step']:>12.2f}{b['step']:>14.2f}"
      f"{100 * (b['step'] / a['step'] - 1):>+13.1f}%")
print(f"quantized base: {n:,} params x 4 B = {4 * n / 1e9:.3f} GB in f32 -> "
      f"{nf4:,.0f} B = {nf4 / n:.4f} B/param = {nf4 / 1e9:.3f} GB in NF4 "
      f"(expected saving {(4 * n - nf4) / 1e9:.3f} GB)")
PY
