#!/usr/bin/env bash
# Mixed precision on the CPU (issue 12): the same SmolLM2 recipe in f32 and with `bf16: true`,
# loss after STEPS steps, step time and peak RSS; and, with QLORA=1, f32 LoRA against QLoRA at
# micro-batch 1 (peak RSS, the QLoRA bar). Prints the CPU model first.
#
#     tools/train/bench_precision.sh                  # STEPS=10 THREADS=2
#     QLORA=1 STEPS=3 tools/train/bench_precision.sh  # peak RSS, LoRA vs QLoRA, micro-batch 1
#     RUNNER=path/to/runner tools/train/bench_precision.sh
#     EXTRA="--set sequence_len=64 --set micro_batch_size=1" tools/train/bench_precision.sh
#
# Measured 2026-12-03 (AMD EPYC, 2 cores, dev profile with optimised crates), STEPS=10, after
# the ops layer gave bf16 its fused CPU sides:
#   f32  losses 0.6563 0.7764 0.6208 0.5799 0.4209 0.4093 0.4189 0.3763 0.3369 0.2956, 2.254 GB
#   bf16 losses 0.6522 0.7725 0.6208 0.5839 0.4175 0.4103 0.4177 0.3805 0.3350 0.2996, 1.537 GB
# and QLORA=1 STEPS=2: f32 LoRA 1.128 GB, QLoRA 0.712 GB peak RSS (micro-batch 1 × 256).
# Intel Xeon (2 cores, dev profile), QLORA=1 STEPS=2, after the bf16 LM head stopped being
# converted whole: lora 1.133 GB, qlora (f32 compute) 0.741 GB, qlora-bf16 0.555 GB (0.49×).
# (Before the ops layer, bf16 took candle's composed path: 9% above f32 on average, 5 tokens/s.)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-10}
THREADS=${THREADS:-2}
scripts/fetch-smollm2.sh >/dev/null
if [ -z "${RUNNER:-}" ]; then
    cargo build --release --locked --quiet -p runner-cli
    RUNNER=${CARGO_TARGET_DIR:-target}/release/runner
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
lscpu | grep -m1 'Model name'
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
run() { # name, extra --set arguments...
    local name=$1
    shift
    RAYON_NUM_THREADS=$THREADS /usr/bin/time -v "$RUNNER" run recipes/smollm2-lora.yaml \
        --set max_steps="$STEPS" --set logging_steps=1 \
        --set val_set_size=0 --set evals_per_epoch= --set saves_per_epoch= \
        --set dataset_prepared_path="$out/prepared" \
        --set output_dir="$out/$name" ${EXTRA:-} "$@" >"$out/$name.log" 2>&1 ||
        { cat "$out/$name.log"; exit 1; }
    grep -E 'Maximum resident|Elapsed' "$out/$name.log" | sed "s/^/$name: /"
}
if [ "${QLORA:-0}" = 1 ]; then
    run lora --set micro_batch_size=1
    run qlora --set micro_batch_size=1 --set adapter=qlora --set load_in_4bit=true
    # QLoRA as the paper defines it: NF4 storage, bf16 compute (`bf16: true`).
    run qlora-bf16 --set micro_batch_size=1 --set adapter=qlora --set load_in_4bit=true \
        --set bf16=true
    names="lora qlora qlora-bf16"
else
    run f32
    run bf16 --set bf16=true
    names="f32 bf16"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" $names <<'PY'
import json, re, sys
out, names = sys.argv[1], sys.argv[2:]
for name in names:
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if '"loss"' in l]
    log = open(f"{out}/{name}.log").read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1)) / 1e6
    losses = " ".join("%.4f" % r["loss"] for r in rows)
    print(f"{name:10} losses {losses}")
    last = rows[-1]
    print(f"{name:10} step {last['step']}: loss {last['loss']:.4f}, "
          f"{last['tokens_per_second']:.0f} tokens/s, peak RSS {rss:.3f} GB")
PY
