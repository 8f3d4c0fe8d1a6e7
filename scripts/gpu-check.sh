#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, PyTorch, transformers and PEFT (no network,
# no Rust needed): runs the CUDA tests and the training benchmark with the binaries that
# scripts/gpu-bundle.sh built beforehand into dist/gpu/, and prints a short table. About 8 min
# on one H200.
#
#   scripts/gpu-check.sh [--dry-run] [BUNDLE_DIR]      (default dist/gpu)
#
# Benchmark: a random Mistral-7B-shaped model (benches/gpu/make_model.py), LoRA r=16 on all
# linear projections, bf16, 2048-token rows; tokens/s of runner and of transformers + PEFT in
# the same run, and model-FLOP utilisation by DESIGN.md's formula (4·N + 6·P_lora + 3·F_attn
# FLOPs per token, no recompute) against the H200's 989 TFLOP/s dense bf16 (and the ~790
# measured). QLoRA: runner's peak GPU memory with an NF4 base against its bf16 LoRA run, on
# an 8-layer model of the same width (quantizing 7B on the host would not fit the time).
#
# --dry-run checks the bundle and the environment and prints the commands without running them
# (it runs on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

dry=0
if [ "${1:-}" = --dry-run ]; then
    dry=1
    shift
fi
bundle=${1:-dist/gpu}
work=${RUNNER_GPU_WORK:-${TMPDIR:-/tmp}/runner-gpu-check}
started=$(date +%s)
rows=()     # the table: "check|result"
failed=0

note() { echo "gpu-check: $*" >&2; }
row() { rows+=("$1|$2"); }
run() {
    # run NAME TIMEOUT CMD...: with a time limit; the output goes to $work/NAME.log.
    local name=$1 limit=$2
    shift 2
    if [ "$dry" = 1 ]; then
        echo "would run ($name, ${limit}s): $*" >&2
        return 0
    fi
    note "$name ..."
    timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1
    local rc=$?
    if [ "$rc" != 0 ]; then
        note "$name failed (exit $rc); the end of $work/$name.log:"
        tail -n 15 "$work/$name.log" >&2
    fi
    return $rc
}

# --- bundle and environment ---------------------------------------------------------------
if [ ! -d "$bundle" ] && [ -f "$bundle.tar.zst" ]; then
    mkdir -p "$(dirname "$bundle")"
    zstd -dc "$bundle.tar.zst" | tar -C "$(dirname "$bundle")" -xf -
fi
for f in "$bundle/runner" "$bundle/tests/devices" "$bundle/tests/ptx"; do
    if [ ! -x "$f" ]; then
        echo "gpu-check: $f is missing; build the bundle first with scripts/gpu-bundle.sh (on any machine)" >&2
        exit 2
    fi
done
mkdir -p "$work"
# The CUDA libraries the binaries link (cuBLAS, cuRAND, NVRTC and its builtins, NCCL) come
# with PyTorch's wheels on the GPU machines.
nvidia_dir=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
libdirs=""
for d in "$nvidia_dir"/cu13/lib "$nvidia_dir"/nccl/lib "$nvidia_dir"/*/lib; do
    [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "$dry" = 0 ]; then
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu-check: no NVIDIA GPU here (nvidia-smi -L failed)" >&2
        exit 2
    fi
    if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1'; then
        note "warning: libcuda.so.1 is not in the loader cache; the binaries need the NVIDIA driver's library"
    fi
    missing=$(ldd "$bundle/runner" 2>/dev/null | grep 'not found' || true)
    if [ -n "$missing" ]; then
        echo "gpu-check: the runner binary cannot find: $missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
fi
gpu_name="(dry run)"
if [ "$dry" = 0 ]; then
    gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
fi

# --- 1. CUDA tests ------------------------------------------------------------------------------
if run ptx-test 120 "$bundle/tests/ptx"; then row "PTX: every kernels/*.cu compiles (NVRTC)" pass; else row "PTX: every kernels/*.cu compiles (NVRTC)" FAIL; failed=1; fi
# The _cuda variants of the device tests are ignored in no-GPU builds; run exactly those.
if run device-tests 300 "$bundle/tests/devices" --ignored --test-threads=1; then
    n="?"
    [ "$dry" = 1 ] || n=$(grep -c '\.\.\. ok' "$work/device-tests.log")
    row "fused ops on the GPU = CPU reference ($n tests)" pass
else
    row "fused ops on the GPU = CPU reference" FAIL
    failed=1
fi

# --- 2. benchmark model -------------------------------------------------------------------------
big=$work/mistral7b
small=$work/mistral-8l
run make-model 240 python3 benches/gpu/make_model.py "$big" --layers 32 --seq 2048 --rows 16 || failed=1
run make-small 120 python3 benches/gpu/make_model.py "$small" --layers 8 --seq 2048 --rows 16 || failed=1

# Peak GPU memory of a command (MiB over the idle baseline), sampled every 100 ms.
peak_mem() {
    local name=$1
    shift
    if [ "$dry" = 1 ]; then
        run "$name" 0 "$@"
        echo 0
        return 0
    fi
    local base
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$work/$name.mem" 2>/dev/null &
    local smi=$!
    run "$name" 300 "$@"
    local rc=$?
    kill "$smi" 2>/dev/null
    wait "$smi" 2>/dev/null
    [ "$rc" = 0 ] || return $rc
    sort -n "$work/$name.mem" | tail -n 1 | awk -v b="$base" '{print $1 - b}'
}

recipe() {
    # recipe MODEL OUT: the benchmark recipe with its paths filled in.
    sed -e "s#MODEL_DIR#$1#g" -e "s#OUT_DIR#$2#g" benches/gpu/recipe.yaml >"$2.yaml"
    echo "$2.yaml"
}

# Steady tokens/s from runner's metrics.jsonl: its tokens_per_second is cumulative from the
# first step, so take the rate between step 2 and the last step.
runner_tps() {
    python3 - "$1" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_second"' in l]
recs = [r for r in recs if r.get("tokens_per_second")]
tok = 2048  # one row per step
a, b = recs[1], recs[-1]
ta, tb = a["step"] * tok / a["tokens_per_second"], b["step"] * tok / b["tokens_per_second"]
print((b["step"] - a["step"]) * tok / (tb - ta))
PY
}

# Per-token training FLOPs (DESIGN.md) of the benchmark model at 2048 tokens.
flops_per_token=$(python3 - <<'PY'
L, h, i, v, kv, r, s = 32, 4096, 14336, 32000, 1024, 16, 2048
lin = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # (in, out) per layer
N = L * sum(a * b for a, b in lin) + v * h
P = L * sum(r * (a + b) for a, b in lin)
F_attn = 4 * L * s * h
print(4 * N + 6 * P + 3 * F_attn)
PY
)

mkdir -p "$work/runs"
# --- 3. runner, LoRA bf16 -------------------------------------------------------------------
r_tps=""
r_peak=""
rec=$(recipe "$big" "$work/runs/runner-lora")
if r_peak=$(peak_mem runner-lora "$bundle/runner" run "$rec" --gpus 1); then
    [ "$dry" = 1 ] || r_tps=$(runner_tps "$work/runs/runner-lora/run/metrics.jsonl")
else
    failed=1
fi

# --- 4. transformers + PEFT, LoRA bf16 ------------------------------------------------------------
h_tps=""
h_peak=""
if run hf-lora 300 python3 benches/gpu/hf_peft.py "$big" --steps 6 --warmup 2 && [ "$dry" = 0 ]; then
    h_tps=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["tokens_per_s"])' "$work/hf-lora.log")
    h_peak=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["peak_gib"])' "$work/hf-lora.log")
fi

# --- 5. QLoRA vs LoRA peak memory (runner, 8 layers) -----------------------------------------------
rec8=$(recipe "$small" "$work/runs/runner-lora8")
rec8q=$(recipe "$small" "$work/runs/runner-qlora8")
m_lora=$(peak_mem runner-lora8 "$bundle/runner" run "$rec8" --gpus 1 --set max_steps=3) || failed=1
m_qlora=$(peak_mem runner-qlora8 "$bundle/runner" run "$rec8q" --gpus 1 --set max_steps=3 --set adapter=qlora --set load_in_4bit=true) || failed=1

# --- table ------------------------------------------------------------------------------------------
pct() { python3 -c "import sys; print(f'{float(sys.argv[1])*float(sys.argv[2])/float(sys.argv[3])*100:.1f}%')" "$@" 2>/dev/null || echo "n/a"; }
if [ -n "$r_tps" ]; then
    row "runner LoRA bf16 tokens/s" "$(printf '%.0f' "$r_tps")"
    row "runner MFU (989 TFLOP/s peak | 790 measured)" "$(pct "$r_tps" "$flops_per_token" 989e12) | $(pct "$r_tps" "$flops_per_token" 790e12)"
else
    row "runner LoRA bf16 tokens/s" FAIL
fi
if [ -n "$h_tps" ]; then
    row "transformers+PEFT LoRA bf16 tokens/s" "$(printf '%.0f' "$h_tps")"
    row "transformers+PEFT MFU (989 peak)" "$(pct "$h_tps" "$flops_per_token" 989e12)"
else
    row "transformers+PEFT LoRA bf16 tokens/s" FAIL
fi
if [ -n "$r_tps" ] && [ -n "$h_tps" ]; then
    row "speed-up runner / transformers+PEFT (bar 1.5x, goal 2x)" "$(python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}x')" "$r_tps" "$h_tps")"
fi
[ -n "$r_peak" ] && row "runner LoRA peak GPU memory (MiB)" "$r_peak"
[ -n "$h_peak" ] && row "transformers+PEFT LoRA peak allocated (GiB)" "$(printf '%.1f' "$h_peak")"
if [ -n "${m_lora:-}" ] && [ -n "${m_qlora:-}" ] && [ "${m_lora:-0}" != 0 ]; then
    row "runner 8-layer peak MiB: LoRA | QLoRA | ratio (bar <= 60%)" "$m_lora | $m_qlora | $(python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2])*100:.0f}%')" "$m_qlora" "$m_lora")"
fi

echo
echo "GPU check on $gpu_name, bundle $(cat "$bundle/COMMIT" 2>/dev/null || echo '?'), $(( $(date +%s) - started )) s"
printf '%-62s %s\n' "check" "result"
for r in "${rows[@]}"; do
    printf '%-62s %s\n' "${r%%|*}" "${r#*|}"
done
echo "(flops/token $flops_per_token; logs in $work)"
exit "$failed"
