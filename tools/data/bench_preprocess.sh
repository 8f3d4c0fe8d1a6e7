#!/usr/bin/env bash
# `runner preprocess` at two sizes of the same synthetic multi-turn chat set (issue 14 item 5):
# wall time, CPU time (user + sys: steadier than wall time on a loaded machine) and peak RSS for
# each, measured alternately in one run, with the ratios of the times, the CPU model and the
# machine's load before every measurement.
#
#   tools/data/bench_preprocess.sh [SMALL_ROWS [LARGE_ROWS [REPEATS]]]    # 5000 100000 2
#
# Data: crates/data's `gen_chats` example (runner_data::testing::write_synthetic_chats), SmolLM2
# tokenizer and its own chat template (scripts/fetch-smollm2.sh), roles_to_train [assistant],
# sequence_len 2048, sample_packing, no eval split; `--force` so every run prepares afresh.
# Build: the dev profile (the workspace's dependencies are built at opt-level 3; a release build
# is too slow for the shared dev machine). RUNNER_BIN times another binary, RUNNER_BINS="A B"
# several (alternating with the sizes inside each repeat); CARGO_TARGET_DIR builds elsewhere and
# CARGO_EXTRA adds cargo arguments (e.g. --config 'profile.dev.package.runner-data.opt-level=3').
#
# Measured (lscpu: "Intel(R) Xeon(R) Processor" with AVX-512, 2 cores, load 5-7 from other work, 2 repeats, medians),
# 5,000 rows = 2.25M tokens, 100,000 rows = 44.8M tokens, the data stage as it was (main at
# 85c5495) against the streaming one:
#   before:  5k 2.42 s CPU, 137 MiB;  100k 44.58 s CPU, 547 MiB;  CPU ratio 18.4x, wall 22.8x
#   after:   5k 2.30 s CPU, 123 MiB;  100k 43.06 s CPU, 153 MiB;  CPU ratio 18.7x, wall 16.5x
# Wall time on that loaded machine varied by ±30% between runs; CPU time by under 5%.
set -euo pipefail
cd "$(dirname "$0")/../.."
small=${1:-5000}
large=${2:-100000}
repeats=${3:-2}
work=${BENCH_DIR:-${TMPDIR:-/tmp}/runner-bench-preprocess}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$work"

cargo build --workspace --locked --bin runner --example gen_chats ${CARGO_EXTRA:-} >&2
bin=${RUNNER_BIN:-$target/debug/runner}
gguf=${RUNNER_SMOLLM2_GGUF:-$PWD/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$gguf" ] || { echo "no SmolLM2 GGUF at $gguf: run scripts/fetch-smollm2.sh" >&2; exit 1; }

for n in "$small" "$large"; do
  [ -s "$work/chats-$n.jsonl" ] || "$target/debug/examples/gen_chats" "$n" "$work/chats-$n.jsonl"
  cat > "$work/recipe-$n.yaml" <<YAML
base_model: $gguf
datasets:
  - path: $work/chats-$n.jsonl
    type: chat_template
    chat_template: tokenizer_default
    field_messages: messages
    message_property_mappings:
      role: role
      content: content
    roles_to_train: [assistant]
    train_on_eos: turn
val_set_size: 0
dataset_prepared_path: $work/prepared-$n
sequence_len: 2048
sample_packing: true
adapter: lora
lora_r: 8
lora_alpha: 16
lora_target_linear: true
micro_batch_size: 1
num_epochs: 1
learning_rate: 0.0002
output_dir: $work/out
YAML
done

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
# RUNNER_BINS="OLD NEW" times several binaries, alternating with the sizes inside each repeat.
bins=(${RUNNER_BINS:-$bin})
declare -A times cpus rss
for r in $(seq "$repeats"); do
  for b in "${!bins[@]}"; do
    for n in "$small" "$large"; do
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      rm -rf "$work/prepared-$n"
      /usr/bin/time -f '%e %U %S %M' -o "$work/time-$n" "${bins[$b]}" preprocess --force "$work/recipe-$n.yaml" > "$work/summary-$n.txt"
      read -r secs user sys kib < "$work/time-$n"
      cpu=$(python3 -c "print(f'{$user + $sys:.2f}')")
      times[$b.$n]+="$secs "
      cpus[$b.$n]+="$cpu "
      rss[$b.$n]+="$kib "
      echo "run $r, ${bins[$b]}: $n rows: $secs s wall, $cpu s CPU, peak RSS $((kib / 1024)) MiB (load before: $load); $(grep -E '^tokens' "$work/summary-$n.txt" | cut -d, -f1); $(grep -E '^packed' "$work/summary-$n.txt")"
    done
  done
done
rm -rf "$work/prepared-$small" "$work/prepared-$large"
for b in "${!bins[@]}"; do
  echo "== ${bins[$b]}"
  python3 - "$small" "$large" "${times[$b.$small]}" "${times[$b.$large]}" "${cpus[$b.$small]}" "${cpus[$b.$large]}" "${rss[$b.$small]}" "${rss[$b.$large]}" <<'PY'
import sys, statistics as st
s, l = int(sys.argv[1]), int(sys.argv[2])
ts, tl, cs, cl = [list(map(float, a.split())) for a in sys.argv[3:7]]
rs, rl = [list(map(int, a.split())) for a in sys.argv[7:9]]
for n, t, c, r in ((s, ts, cs, rs), (l, tl, cl, rl)):
    print(f"{n:>7} rows: median {st.median(t):.2f} s wall, {st.median(c):.2f} s CPU, peak RSS {max(r)/1024:.0f} MiB")
for what, a, b in (("wall", ts, tl), ("CPU", cs, cl)):
    print(f"{what} time ratio {st.median(b)/st.median(a):.1f}x for {l/s:.0f}x the rows (per run: "
          + ", ".join(f"{y/x:.1f}x" for x, y in zip(a, b)) + ")")
PY
done
