#!/usr/bin/env python3
"""Runs `runner validate` over Axolotl's own example recipes (the examples/ folder of the pinned
release's sdist, the version tools/recipe/axolotl_keys.py pins) and prints the counts by outcome
(issue 15's bar): no "unknown key" for a real Axolotl key, and >= 90% of the LoRA/QLoRA SFT
examples for the model families runner supports (Llama, Mistral, Qwen2, Qwen3) validate unchanged.

Usage: python3 tools/recipe/axolotl_examples.py [--runner target/debug/runner] [--sdist FILE] [-v]
Exit status 1 when the bar is not met.
"""

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import axolotl_keys  # noqa: E402  (the pinned version, its hash and the download)

ROOT = Path(__file__).resolve().parents[2]


# Bases whose hub name does not say their architecture (from their model cards).
KNOWN = {
    "agentica-org/deepcoder-14b-preview": "qwen2",  # DeepSeek-R1-Distill-Qwen-14B
    "deepcogito/cogito-v1-preview-qwen-14b": "qwen2",  # Qwen2.5-14B
    "mistralai/magistral-small-2506": "mistral",  # MistralForCausalLM (text)
    "mistralai/magistral-small-2507": "mistral",
    "mistralai/devstral-small-2507": "mistral",
}
CLASSES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
           "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


def family(base_model: str, model_type: str | None = None) -> str | None:
    """The runner-supported family of a base model, from its hub name or `model_type` (the
    examples name hub models; their config.json is not at hand), or None for any other
    architecture (mixture-of-experts, multimodal, hybrid attention, other families)."""
    if base_model.lower() in KNOWN:
        return KNOWN[base_model.lower()]
    name = base_model.lower().rsplit("/", 1)[-1]
    others = ("llama-4", "llama4", "vision", "-vl", "mixtral", "moe", "-a3b", "-a22b",
              "qwen3-next", "qwen3.", "qwen3_5", "mistral-medium", "mistral-small-4",
              "qwen3-coder-30b", "mistral-small-3.1", "mistral-small-3.2", "voxtral", "pixtral",
              "ministral-3", "llava", "omni", "audio")
    if any(o in name for o in others):
        return None
    if model_type in CLASSES:
        return CLASSES[model_type]
    if re.search(r"qwen3", name):
        return "qwen3"
    if re.search(r"qwen2|qwq", name):
        return "qwen2"
    if re.search(r"mistral|ministral|zephyr", name):
        return "mistral"
    if re.search(r"llama|vicuna|smollm", name):
        return "llama"
    return None


def in_bar(cfg: dict) -> tuple[bool, str]:
    """Whether a recipe counts for the 90% bar (LoRA/QLoRA SFT, supported family), and why not."""
    if not isinstance(cfg, dict):
        return False, "not a mapping"
    if cfg.get("adapter") not in ("lora", "qlora"):
        return False, "not LoRA/QLoRA"
    for key in ("rl", "reward_model", "process_reward_model", "pretraining_dataset",
                "processor_type", "ebft"):
        if cfg.get(key):
            return False, f"not SFT text ({key})"
    if family(str(cfg.get("base_model", "")), cfg.get("model_type")) is None:
        return False, "model family not supported"
    return True, ""


def pinned_keys() -> set[str]:
    keys = set()
    for line in (ROOT / "crates/recipe/data/axolotl-keys.tsv").read_text().splitlines():
        if not line.startswith("#"):
            keys.add(line.split("\t")[1])
    return keys


def outcome(runner: Path, recipe: Path, cwd: Path, real: set[str]) -> tuple[str, str]:
    p = subprocess.run([str(runner), "--color", "never", "validate", str(recipe)], cwd=cwd,
                       capture_output=True, text=True)
    if p.returncode == 0:
        return "valid", ""
    text = p.stderr
    unknown = re.findall(r"unknown key `([^`]+)`", text)
    if any(k in real for k in unknown):
        return "unknown real Axolotl key", ", ".join(k for k in unknown if k in real)
    errors = [l for l in text.splitlines() if re.match(r"^\S.*: (error|warning)?", l)]
    first = next((l for l in text.splitlines() if "error" in l.lower()), text.strip()[:200])
    if unknown:
        return "unknown key (not in Axolotl's schema)", ", ".join(unknown)
    if "not support" in text or "is refused" in text or "not supported" in text:
        return "refused by name", first
    return "invalid (other)", first if errors else text.strip()[:200]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runner", type=Path, default=ROOT / "target/debug/runner")
    ap.add_argument("--sdist", type=Path)
    ap.add_argument("-v", "--verbose", action="store_true", help="list every recipe")
    args = ap.parse_args()
    import yaml  # PyYAML: only to read base_model/adapter for the bar's selection

    runner = args.runner.resolve()
    if not runner.exists():
        sys.exit(f"{runner} not found: build it with `cargo build --workspace --locked`")
    sdist = args.sdist or axolotl_keys.download(axolotl_keys.PINNED)
    tmp = Path(tempfile.mkdtemp(prefix="axolotl-examples-"))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/examples/" in m.name or
                   m.name.endswith("/examples")]
        tar.extractall(tmp, members=members, filter="data")
    base = next(tmp.iterdir())
    files = sorted(p for p in (base / "examples").rglob("*") if p.suffix in (".yml", ".yaml"))
    real = pinned_keys()
    all_counts, bar_counts, bar_fail, excluded = Counter(), Counter(), [], Counter()
    for f in files:
        rel = f.relative_to(base)
        try:
            cfg = yaml.safe_load(f.read_text())
        except yaml.YAMLError:
            cfg = None
        what, detail = outcome(runner, rel, base, real)
        all_counts[what] += 1
        counted, why = in_bar(cfg)
        if counted:
            bar_counts[what] += 1
            if what != "valid":
                bar_fail.append(f"  {rel}: {what}: {detail}")
        else:
            excluded[why] += 1
        if args.verbose or what == "unknown real Axolotl key":
            print(f"{rel}: {what}{': ' + detail if detail else ''}")
    total = sum(all_counts.values())
    print(f"\nAxolotl {axolotl_keys.PINNED} examples/: {total} YAML files")
    for what, n in all_counts.most_common():
        print(f"  {n:4}  {what}")
    n_bar = sum(bar_counts.values())
    valid = bar_counts["valid"]
    print(f"\nLoRA/QLoRA SFT examples of Llama, Mistral, Qwen2, Qwen3: {n_bar}")
    for what, n in bar_counts.most_common():
        print(f"  {n:4}  {what}")
    pct = 100.0 * valid / n_bar if n_bar else 0.0
    print(f"  {pct:.1f}% validate unchanged (bar: 90%)")
    if bar_fail:
        print("not valid:")
        print("\n".join(bar_fail))
    print("\nnot counted for the bar: " + ", ".join(f"{n} {w}" for w, n in excluded.most_common()))
    ok = all_counts["unknown real Axolotl key"] == 0 and pct >= 90.0
    print("bar met" if ok else "bar NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
