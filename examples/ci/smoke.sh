#!/usr/bin/env bash
# Smoke-train every recipe in a folder (default: recipes/) with `runner run RECIPE --smoke`:
# each recipe as written, on a tiny random model of its architecture family, its tokenizer and
# data when they are in the Hugging Face cache (built-in tokenizer and generated rows in the
# recipe's format otherwise, said so), a few steps on the CPU; then the adapter is loaded back
# and adapter_config.json checked. Exits 1 if any recipe fails, after trying them all.
#
#   examples/ci/smoke.sh [RECIPES_DIR]
#
# Environment:
#   RUNNER           the runner binary (default: `runner` on PATH, installed below if missing)
#   RUNNER_GIT       where to `cargo install` runner from when it is missing
#   SMOKE_HUB_FILES  optional, one "KIND REPO [FILE...]" per line (KIND: model or dataset):
#                    downloaded into the HF cache first (needs `huggingface-cli`; a gated repo
#                    needs HF_TOKEN), so the smoke runs use the real tokenizer, config and data.
#                    Keep HF_HUB_CACHE on a cached path in CI (see smoke.yml).
set -euo pipefail

dir=${1:-recipes}
runner=${RUNNER:-runner}

if ! command -v "$runner" >/dev/null 2>&1; then
    if [ -z "${RUNNER_GIT:-}" ]; then
        echo "runner is not installed; set RUNNER to its path or RUNNER_GIT to install it from" >&2
        exit 2
    fi
    cargo install --locked --git "$RUNNER_GIT" runner-cli
fi

if [ -n "${SMOKE_HUB_FILES:-}" ]; then
    while read -r kind repo files; do
        [ -z "$kind" ] && continue
        # A download that fails (offline, gated) is not fatal: the smoke run substitutes and
        # says so.
        # shellcheck disable=SC2086
        huggingface-cli download --repo-type "$kind" "$repo" $files >/dev/null \
            || echo "note: $kind $repo not downloaded; the smoke run will substitute it" >&2
    done <<< "$SMOKE_HUB_FILES"
fi

failed=()
shopt -s nullglob
recipes=("$dir"/*.yaml "$dir"/*.yml)
if [ ${#recipes[@]} -eq 0 ]; then
    echo "no recipes (*.yaml, *.yml) in $dir" >&2
    exit 2
fi
for recipe in "${recipes[@]}"; do
    echo "::group::smoke $recipe"
    start=$(date +%s)
    if "$runner" run "$recipe" --smoke; then
        echo "ok   $recipe ($(( $(date +%s) - start )) s)"
    else
        echo "FAIL $recipe ($(( $(date +%s) - start )) s)"
        failed+=("$recipe")
    fi
    echo "::endgroup::"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "smoke runs failed: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#recipes[@]} recipes smoke-trained"
