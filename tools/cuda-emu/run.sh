#!/usr/bin/env bash
# Compiles the project's kernels/*.cu (unmodified) for the CPU against cuda_emu.h and checks each
# kernel against a C++ reference (adapted from the team's prototype in shared/tools/cuda-emu to
# today's kernel signatures). From the project root: tools/cuda-emu/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
g++ -std=c++20 -O1 -g -ffp-contract=off -pthread -Wall -Wno-unused-function \
    -I"$here" -I"$root/kernels" -o "$out/test_kernels" "$here/test_kernels.cpp"
"$out/test_kernels"
