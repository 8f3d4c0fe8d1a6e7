#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/gpu-check.sh runs on a GPU machine
# (which has no network and no Rust toolchain): the CUDA `runner` binary and the CUDA test
# executables, into dist/gpu/ (about 160 MB) and dist/gpu.tar.zst (about 35 MB).
#
#   scripts/gpu-bundle.sh            # then, on the GPU machine: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-toolchain.sh)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}

# One cargo command, so the binary and the tests share one feature set (a different selection
# of packages would rebuild candle and its CUDA kernels). The CUDA tests become executables: the
# per-device op checks (`devices`) and the PTX compile test (`ptx`).
tests=$(cargo test --release --locked --features cuda -p runner-cli -p runner-kernels -p runner-model --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and m["target"]["name"] in ("devices", "ptx"):
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
# Mostly candle's embedded PTX, which compresses about 5x: the archive is what a size-limited
# transfer to the GPU machine carries (gpu-check.sh unpacks it when dist/gpu is absent).
tar -C dist -cf - gpu | zstd -q -T0 -12 -f -o dist/gpu.tar.zst
ls -la "$out" "$out/tests" dist/gpu.tar.zst >&2
