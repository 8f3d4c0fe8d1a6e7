#!/usr/bin/env python3
"""The Python way on the same rows as `cargo run --release -p runner-data --example bench_chat --
--keep FILE`: transformers' apply_chat_template with the SmolLM2 tokenizer (from the GGUF), timed
two ways, printing tokens/s for each:

  masked:   render each conversation, tokenize it, and find each assistant turn's tokens by
            re-rendering the prefix (messages[:i] with add_generation_prompt, then messages[:i+1])
            -- how Python tools commonly build per-turn masks;
  unmasked: render every conversation, then one batch tokenization, no masks at all.

    python3 tools/data/bench_python.py FILE [--limit N]
"""
import json
import os
import sys
import time
import types
from pathlib import Path

import transformers  # noqa: F401  (imported before the torch stub below)

ROOT = Path(__file__).resolve().parents[2]


def load_tokenizer():
    class _Any(types.ModuleType):
        def __getattr__(self, name):
            return object

    sys.modules.setdefault("torch", _Any("torch"))
    from transformers import PreTrainedTokenizerFast

    p = Path(os.environ.get("RUNNER_SMOLLM2_GGUF", ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return PreTrainedTokenizerFast.from_pretrained(str(p.parent), gguf_file=p.name)


def ids_of(x):
    if hasattr(x, "keys"):
        x = x["input_ids"]
    return list(x)


def main():
    path = sys.argv[1]
    limit = int(sys.argv[sys.argv.index("--limit") + 1]) if "--limit" in sys.argv else None
    tok = load_tokenizer()
    convs = [json.loads(line)["messages"] for line in open(path, encoding="utf-8")]
    if limit:
        convs = convs[:limit]

    t0 = time.perf_counter()
    tokens = 0
    trained = 0
    for msgs in convs:
        ids = ids_of(tok.apply_chat_template(msgs, tokenize=True))
        labels = [-100] * len(ids)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            start = len(ids_of(tok.apply_chat_template(msgs[:i], tokenize=True, add_generation_prompt=True)))
            end = len(ids_of(tok.apply_chat_template(msgs[: i + 1], tokenize=True)))
            # the content and <|im_end|>, not the newline after it
            labels[start : end - 1] = ids[start : end - 1]
        tokens += len(ids)
        trained += sum(1 for x in labels if x != -100)
    masked_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = [tok.apply_chat_template(m, tokenize=False) for m in convs]
    enc = tok(texts, add_special_tokens=False)
    unmasked_tokens = sum(len(x) for x in enc["input_ids"])
    unmasked_s = time.perf_counter() - t0

    print(f"python masked:   {len(convs)} rows, {tokens} tokens ({trained} trained) in {masked_s:.2f} s = "
          f"{len(convs) / masked_s:.0f} rows/s, {tokens / masked_s:.0f} tokens/s")
    print(f"python unmasked: {len(convs)} rows, {unmasked_tokens} tokens in {unmasked_s:.2f} s = "
          f"{len(convs) / unmasked_s:.0f} rows/s, {unmasked_tokens / unmasked_s:.0f} tokens/s")


if __name__ == "__main__":
    main()
