#!/usr/bin/env bash
# Regenerates crates/model/fixtures/dropout/emu_masks.txt: kernels/dropout.cu compiled for the
# CPU against cuda_emu.h (copied from the team's prototype, see README.md) and run. From the
# project root: tools/cuda-emu/dropout-masks.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
g++ -std=c++20 -O1 -ffp-contract=off -pthread -Wall -Wno-unused-function \
    -I"$here" -I"$root/kernels" -o "$out/dropout_masks" "$here/dropout_masks.cpp"
mkdir -p "$root/crates/model/fixtures/dropout"
"$out/dropout_masks" > "$out/masks.txt"
mv "$out/masks.txt" "$root/crates/model/fixtures/dropout/emu_masks.txt"
echo "wrote crates/model/fixtures/dropout/emu_masks.txt"
