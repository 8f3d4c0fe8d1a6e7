#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/gpu-check.sh runs on a GPU machine
# (which has no network and no Rust toolchain): the stripped CUDA `runner` binary and the CUDA
# test executables, into dist/gpu/ (about 3 files; carried to the GPU machine as-is).
#
#   scripts/gpu-bundle.sh            # then, on the GPU machine: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-toolchain.sh)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}

# One cargo command, so the binary and the tests share one feature set (a different selection
# of packages would rebuild candle and its CUDA kernels). The CUDA tests become executables: the
# per-device op checks (`devices`) and the PTX compile test (`ptx`).
tests=$(cargo test --release --locked --features cuda -p runner-cli -p runner-kernels --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and m["target"]["name"] in ("devices", "ptx", "runner_kernels"):
        print(m["target"]["name"] + " " + m["executable"])
')
out=dist/gpu
rm -rf "$out"
mkdir -p "$out/tests"
cp "$CARGO_TARGET_DIR/release/runner" "$out/runner"
while read -r name exe; do
    [ -n "$name" ] || continue
    cp "$exe" "$out/tests/$name"
done <<<"$tests"
strip "$out/runner" "$out"/tests/* 2>/dev/null || true
git rev-parse HEAD >"$out/COMMIT" 2>/dev/null || true
ls -la "$out" "$out/tests" >&2
du -sh "$out" >&2
