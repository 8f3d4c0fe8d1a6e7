#!/usr/bin/env python3
"""Writes crates/data/fixtures/chat_*.json: the token ids transformers' apply_chat_template gives
for a set of conversations, and the labels of Axolotl's masking rule, for the runner-data parity
tests. The Rust tests compare ids and labels exactly and never run Python.

Needs: pip install transformers==5.24.0 tokenizers jinja2 gguf (no torch), the SmolLM2 GGUF
(scripts/fetch-smollm2.sh, or RUNNER_SMOLLM2_GGUF) and tools/data/fetch_tokenizers.sh.

The masking rule, written out (Axolotl 0.21 chat_template strategy, train_on_eos/turn):
  * a turn trains when train_on_inputs, or its role is in roles_to_train;
  * its content's tokens train: a token trains when its character range overlaps the content's
    range in the rendered text. Where the content sits is found by rendering the conversation
    once more with that message's content replaced by a sentinel (an independent method from
    the Rust side's markers); when the template trims, the stripped content is what sits there;
  * then the first end-of-turn token (the tokenizer's EOS, or a turn-end token the template text
    writes) at most 3 tokens after the content's last token: trained for `turn` when the turn
    trains, for `all` always (every turn is visited), and for `last` only the last one found.

chat_rich_*.json (issue 15): rows as datasets hold them (tools, tool calls with JSON-string
arguments, null content on tool-call turns, the `tool` role, reasoning content, per-message
training flags), turned into what Axolotl's chat_template strategy (src/axolotl/prompt_strategies/
chat_template.py) hands transformers, with the dataset settings of each case. A turn with tool
calls or reasoning trains, as in Axolotl's find_turn, the stretch of text that differs from the
render with that turn replaced by {role, content: sentinel} (taken on the whole conversation; Axolotl
diffs a prefix of it, which misplaces turns a template renders differently when they are last).
A message's own training flag wins over its role; split_thinking cuts reasoning out of assistant contents
as Axolotl's transform_message does. With eot_tokens or train_on_eot, the end-of-turn
rule is Axolotl's two passes (EOS with train_on_eos, eot_tokens with train_on_eot).
`python3 tools/data/make_fixtures.py rich` writes only these (it needs only the tokenizers of
tools/data/fetch_tokenizers.sh).
"""
import json
import os
import sys
import types
from pathlib import Path

import transformers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "data" / "fixtures"
TEMPLATES = ROOT / "crates" / "data" / "src" / "templates"
TURN_END_TOKENS = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>"]
SENTINEL = "\ue000"

CONVERSATIONS = {
    "single_turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Now multiply that by 12345."},
        {"role": "assistant", "content": "61725, since 5 × 12345 = 61725."},
    ],
    "empty_contents": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "Nothing was asked."},
        {"role": "user", "content": "Say nothing."},
        {"role": "assistant", "content": ""},
    ],
    "unicode_and_whitespace": [
        {"role": "user", "content": "  Traduis « bonjour » en 日本語, s'il te plaît 🙂\n"},
        {"role": "assistant", "content": "こんにちは (konnichiwa) — 👋🏽\n\nVoilà.  "},
        {"role": "user", "content": "Ελληνικά; tabs\there"},
        {"role": "assistant", "content": "Ναι.\n```python\nprint('ok')\n```"},
    ],
}


def gguf_tokenizer(path):
    # transformers' GGUF reader imports torch only for tensor dtypes; the tokenizer does not need it.
    class _Any(types.ModuleType):
        def __getattr__(self, name):
            return object

    sys.modules.setdefault("torch", _Any("torch"))
    from transformers import PreTrainedTokenizerFast

    # AutoTokenizer would also read the model config, which needs torch; the tokenizer is the same
    # (transformers' convert_gguf_tokenizer) either way.
    p = Path(path)
    return PreTrainedTokenizerFast.from_pretrained(str(p.parent), gguf_file=p.name)


def ids_of(x):
    if isinstance(x, dict) or hasattr(x, "keys"):
        x = x["input_ids"]
    return list(x)


def content_spans(tok, template, messages, text, kwargs):
    spans = []
    for i, m in enumerate(messages):
        probe = [dict(mm) for mm in messages]
        probe[i]["content"] = SENTINEL
        sentinel_text = tok.apply_chat_template(probe, chat_template=template, tokenize=False, **kwargs)
        p = sentinel_text.find(SENTINEL)
        if p < 0:
            spans.append(None)
            continue
        c = m["content"]
        if text[p : p + len(c)] == c:
            spans.append((p, p + len(c)))
        elif text[p : p + len(c.strip())] == c.strip():
            spans.append((p, p + len(c.strip())))
        else:
            raise SystemExit(f"cannot place message {i} content in the rendered text")
    return spans


def labels_for(ids, offsets, spans, roles, eot_ids, roles_to_train, train_on_inputs, mode):
    n = len(ids)
    labels = [-100] * n
    last = None
    for (role, span) in zip(roles, spans):
        trains = train_on_inputs or role in roles_to_train
        if not trains and mode != "all":
            continue
        if span is None:
            continue
        s, e = span
        first = next((k for k in range(n) if offsets[k][1] > s), n)
        end = first
        while end < n and offsets[end][0] < e and s < e:
            end += 1
        if trains:
            for k in range(first, end):
                labels[k] = ids[k]
        k = next((k for k in range(end, n) if ids[k] in eot_ids), None)
        if k is not None and k - end <= 3:
            last = k if last is None else max(last, k)
            if mode == "all" or (mode == "turn" and trains):
                labels[k] = ids[k]
    if mode == "last" and last is not None:
        labels[last] = ids[last]
    return labels


def make(name, tok, template_spec, template_text, kwargs=None, skip=()):
    kwargs = kwargs or {}
    eot_ids = []
    if tok.eos_token_id is not None:
        eot_ids.append(tok.eos_token_id)
    for t in TURN_END_TOKENS:
        tid = tok.convert_tokens_to_ids(t)
        if t in template_text and isinstance(tid, int) and tid != tok.unk_token_id and tid not in eot_ids:
            eot_ids.append(tid)
    cases = []
    for cname, messages in CONVERSATIONS.items():
        if cname in skip:
            continue
        text = tok.apply_chat_template(messages, chat_template=template_text, tokenize=False, **kwargs)
        ids = ids_of(tok.apply_chat_template(messages, chat_template=template_text, tokenize=True, **kwargs))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert list(enc["input_ids"]) == ids, f"{name}/{cname}: tokenizing the text differs from apply_chat_template"
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        spans = content_spans(tok, template_text, messages, text, kwargs)
        roles = [m["role"] for m in messages]
        labels = {
            mode: labels_for(ids, offsets, spans, roles, eot_ids, ["assistant"], False, mode)
            for mode in ["turn", "all", "last", "none"]
        }
        labels["train_on_inputs"] = labels_for(ids, offsets, spans, roles, eot_ids, ["assistant"], True, "turn")
        cases.append({"name": cname, "messages": messages, "text": text, "input_ids": ids, "labels": labels})
    fixture = {
        "generated_by": "tools/data/make_fixtures.py",
        "transformers": transformers.__version__,
        "template": template_spec,
        "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"chat_{name}.json").write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote chat_{name}.json ({len(cases)} cases)")


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                               "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Local time",
             "parameters": json.dumps({"type": "object", "properties": {"tz": {"type": "string"}}})}}

# Rows as datasets hold them (OpenAI style: tool-call arguments as JSON strings, `tools` as a list
# or a JSON string), with the dataset settings each is prepared under.
RICH_CASES = [
    ("tool_calls", {"tools": [WEATHER_TOOL, TIME_TOOL], "messages": [
        {"role": "system", "content": "You help with travel."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}},
            {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}}]},
        {"role": "tool", "content": "{\"temp\": 21.5}", "name": "get_weather"},
        {"role": "tool", "content": "14:05", "name": "get_time"},
        {"role": "assistant", "content": "It is 21.5 °C and 14:05 in Paris."},
    ]}, {}),
    ("tools_json_string_null_content", {"tools": json.dumps([WEATHER_TOOL]), "messages": [
        {"role": "user", "content": "Is it cold in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "content": "-3"},
        {"role": "assistant", "content": "Yes: -3 degrees."},
    ]}, {"train_on_eos": "all"}),
    ("reasoning_content", {"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "reasoning_content": "Add two and two.", "content": "4"},
        {"role": "user", "content": "Times 3?"},
        {"role": "assistant", "reasoning_content": "\n4 times 3 is 12.\n", "content": "12"},
    ]}, {}),
    ("reasoning_field_and_kwargs", {"messages": [
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "thoughts": "It is Lima.", "content": "Lima."},
    ]}, {"field_thinking": "thoughts", "chat_template_kwargs": {"enable_thinking": False}}),
    ("message_training_flags", {"messages": [
        {"role": "user", "content": "Say a number.", "train": True},
        {"role": "assistant", "content": "Seven.", "train": False},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Nine."},
    ]}, {"message_field_training": "train"}),
]

# `eot_tokens` / `train_on_eot` (Axolotl: a second pass over the end-of-turn tokens, beside the
# EOS pass of train_on_eos).
EOT_CASES = [
    ("eot_tokens_train_on_eot_all", {"messages": CONVERSATIONS["system_multi_turn"]},
     {"eot_tokens": ["<|eot_id|>"], "train_on_eot": "all"}),
    ("eot_tokens_train_on_eot_last", {"messages": CONVERSATIONS["system_multi_turn"]},
     {"eot_tokens": ["<|eot_id|>"], "train_on_eot": "last", "train_on_eos": "none"}),
]

# Axolotl's `message_field_training_detail`: character ranges (inclusive ends) of the content.
_THINK, _ANSWER = "Réfléchissons: 2+2.", " The answer is 4."
RICH_CASES.append(("message_training_detail", {"messages": [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": _THINK + _ANSWER, "detail": [
        {"begin_offset": 0, "end_offset": len(_THINK) - 1, "train": False},
        {"begin_offset": len(_THINK), "end_offset": len(_THINK) + len(_ANSWER) - 1, "train": True}]},
    {"role": "user", "content": "And 3+3?", "detail": [{"begin_offset": 4, "end_offset": 7, "train": True}]},
    {"role": "assistant", "content": "6", "detail": []},
]}, {"message_field_training_detail": "detail"}))

# Content parts with `train` / `weight` flags (Axolotl's _convert_content_parts).
RICH_CASES.append(("content_part_flags", {"messages": [
    {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me think.", "train": False},
                                      {"type": "text", "text": " It is 4.", "weight": 1},
                                      {"type": "text", "text": " Sure.", "weight": 0}]},
]}, {}))

# Axolotl's `split_thinking`: reasoning cut out of an assistant content.
RICH_CASES.append(("split_thinking", {"messages": [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\n Add two and two. \n</think>\n\n4"},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "<|begin_of_thought|>Add.<|end_of_thought|> <|begin_of_solution|> 6 <|end_of_solution|>"},
]}, {"split_thinking": True}))

DEFAULT_RICH = {"roles_to_train": ["assistant"], "train_on_eos": "turn", "train_on_inputs": False,
                "eot_tokens": None, "train_on_eot": None,
                "chat_template_kwargs": {}, "field_thinking": "reasoning_content",
                "template_thinking_key": "reasoning_content", "message_field_training": None, "field_tools": "tools",
                "message_field_training_detail": None, "split_thinking": False}


def axolotl_turns(row, st):
    """What Axolotl 0.19's chat_template strategy hands transformers for a row: null values dropped,
    `field_thinking` renamed to `template_thinking_key`, tool-call arguments and tool parameters
    given as JSON strings parsed, the per-message training flag taken out."""
    tools = row.get(st["field_tools"])
    if isinstance(tools, str):
        tools = json.loads(tools)
    for t in tools or []:
        f = t.get("function", {})
        if isinstance(f.get("parameters"), str):
            f["parameters"] = json.loads(f["parameters"])
    turns, flags, details = [], [], []
    for m in row["messages"]:
        t = {}
        for k, v in m.items():
            if v is None or k in (st["message_field_training"], st["message_field_training_detail"]):
                continue
            t[st["template_thinking_key"] if k == st["field_thinking"] else k] = v
        part_detail = None
        if isinstance(t.get("content"), list):
            text, details_, off, marked = "", [], 0, False
            for part in t["content"]:
                piece = part.get("text") or part.get("content") or part.get("value") or ""
                tr, w = part.get("train"), part.get("weight")
                marked |= tr is not None or w is not None
                train = tr if tr is not None else (w not in (0, 0.0)) if w is not None else True
                if piece:
                    details_.append({"begin_offset": off, "end_offset": off + len(piece) - 1, "train": train})
                    off += len(piece)
                text += piece
            t["content"] = text
            part_detail = details_ if marked else None
        if st["split_thinking"] and t.get("role") == "assistant":
            c = t["content"]
            for o, e in [("<think>", "</think>"), ("<reasoning>", "</reasoning>"), ("<|begin_of_thought|>", "<|end_of_thought|>")]:
                if o in c and e in c:
                    t[st["template_thinking_key"]] = c[c.find(o) + len(o) : c.find(e)].strip()
                    rest = c[c.find(e) + len(e) :].lstrip()
                    so, se = "<|begin_of_solution|>", "<|end_of_solution|>"
                    t["content"] = rest[rest.find(so) + len(so) : rest.find(se)].strip() if so in rest and se in rest else rest
                    break
        for call in t.get("tool_calls") or []:
            f = call.get("function", {})
            if isinstance(f.get("arguments"), str):
                f["arguments"] = json.loads(f["arguments"])
        turns.append(t)
        flags.append(m.get(st["message_field_training"]) if st["message_field_training"] else None)
        details.append(part_detail if part_detail is not None else
                       m.get(st["message_field_training_detail"]) if st["message_field_training_detail"] else None)
    return turns, tools or None, flags, details


def detail_token_mask(tok, text, details):
    """Axolotl's get_offsets_for_train_detail: the content tokenized alone, each token's range
    widened to the next token's start - 1, the detail ranges snapped to token edges; a token
    trains when it lies inside a range marked train."""
    offs = [list(o) for o in tok(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]]
    for i in range(len(offs) - 1):
        offs[i] = [offs[i][0], offs[i + 1][0] - 1]
    offs[-1] = [offs[-1][0], len(text) - 1]
    adjusted = []
    for d in details:
        b, e = d["begin_offset"], d["end_offset"]
        bt = next((i for i, (s, _) in enumerate(offs) if s >= b), len(offs))
        if bt > 0 and offs[bt - 1][1] > b:
            bt -= 1
        et = next((i for i in range(len(offs) - 1, -1, -1) if offs[i][1] <= e), -1)
        if et < len(offs) - 1 and offs[et + 1][0] < e:
            et += 1
        if bt <= et:
            adjusted.append((offs[bt][0], offs[et][1], d["train"]))
    return [any(s >= b and e <= en and tr for b, en, tr in adjusted) for s, e in offs]


def rich_spans(tok, template, turns, text, kwargs):
    """A plain turn (role and content only): where its content sits, as content_spans finds it. A
    turn with more (tool calls, reasoning): Axolotl's find_turn rule, on the whole conversation and
    on characters: the stretch of text that differs from the render with that turn replaced by
    {role, content: sentinel}."""
    spans = []
    for i, t in enumerate(turns):
        probe = [dict(x) for x in turns]
        if set(t) <= {"role", "content"}:
            probe[i]["content"] = SENTINEL
            p = tok.apply_chat_template(probe, chat_template=template, tokenize=False, **kwargs).find(SENTINEL)
            c = t["content"]
            if p < 0:
                spans.append(None)
            elif text[p : p + len(c)] == c:
                spans.append((p, p + len(c)))
            elif text[p : p + len(c.strip())] == c.strip():
                spans.append((p, p + len(c.strip())))
            else:
                raise SystemExit(f"cannot place message {i} content in the rendered text")
            continue
        probe[i] = {"role": t["role"], "content": SENTINEL}
        d = tok.apply_chat_template(probe, chat_template=template, tokenize=False, **kwargs)
        p = 0
        while p < min(len(text), len(d)) and text[p] == d[p]:
            p += 1
        s = 0
        while s < min(len(text), len(d)) - p and text[len(text) - 1 - s] == d[len(d) - 1 - s]:
            s += 1
        spans.append((p, len(text) - s) if p < len(text) - s else None)
    return spans


def rich_labels(ids, offsets, spans, trains, passes, masks=None):
    """labels_for with each turn's `trains` given (a message's own training flag wins over
    roles_to_train and train_on_inputs: Axolotl's should_train; a turn with a training detail
    trains the tokens its mask marks, counted from its first token), and one or more end-of-turn
    passes (token ids, mode): runner's one merged pass by default; with eot_tokens or
    train_on_eot, Axolotl's EOS pass (train_on_eos) and EOT pass (train_on_eot)."""
    n = len(ids)
    labels = [-100] * n
    last = [None] * len(passes)
    for idx, (span, tr) in enumerate(zip(spans, trains)):
        if (not tr and all(m != "all" for _, m in passes)) or span is None:
            continue
        s, e = span
        first = next((k for k in range(n) if offsets[k][1] > s), n)
        end = first
        while end < n and offsets[end][0] < e and s < e:
            end += 1
        if tr and masks is not None and masks[idx] is not None:
            for i, on in enumerate(masks[idx]):
                if on and first + i < n:
                    labels[first + i] = ids[first + i]
        elif tr:
            for k in range(first, end):
                labels[k] = ids[k]
        for p, (pids, mode) in enumerate(passes):
            k = next((k for k in range(end, n) if ids[k] in pids), None)
            if k is not None and k - end <= 3:
                last[p] = k if last[p] is None else max(last[p], k)
                if mode == "all" or (mode == "turn" and tr):
                    labels[k] = ids[k]
    for p, (_, mode) in enumerate(passes):
        if mode == "last" and last[p] is not None:
            labels[last[p]] = ids[last[p]]
    return labels


def turn_end_ids(tok, template_text):
    eot_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for t in TURN_END_TOKENS:
        tid = tok.convert_tokens_to_ids(t)
        if t in template_text and isinstance(tid, int) and tid != tok.unk_token_id and tid not in eot_ids:
            eot_ids.append(tid)
    return eot_ids


def make_rich(name, tok, template_spec, template_text, skip=(), extra=()):
    cases = []
    for cname, row, over in RICH_CASES + list(extra):
        if cname in skip:
            continue
        st = {**DEFAULT_RICH, **over}
        turns, tools, flags, details = axolotl_turns(json.loads(json.dumps(row)), st)
        kwargs = dict(st["chat_template_kwargs"])
        if tools:
            kwargs["tools"] = tools
        text = tok.apply_chat_template(turns, chat_template=template_text, tokenize=False, **kwargs)
        ids = ids_of(tok.apply_chat_template(turns, chat_template=template_text, tokenize=True, **kwargs))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert list(enc["input_ids"]) == ids, f"{name}/{cname}: tokenizing the text differs"
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        spans = rich_spans(tok, template_text, turns, text, kwargs)
        trains = [f if f is not None else bool(d) if d is not None else (st["train_on_inputs"] or t["role"] in st["roles_to_train"])
                  for t, f, d in zip(turns, flags, details)]
        masks = [detail_token_mask(tok, t["content"], d) if d else None for t, d in zip(turns, details)]
        if st["eot_tokens"] is None and st["train_on_eot"] is None:
            passes = [(turn_end_ids(tok, template_text), st["train_on_eos"])]
        else:
            eot = [tok.eos_token_id]
            if st["eot_tokens"] is not None:
                eot = []
                for t in st["eot_tokens"]:
                    one = tok.encode(t, add_special_tokens=False)
                    assert len(one) == 1 and t in template_text, t
                    eot += one
            passes = [([tok.eos_token_id], st["train_on_eos"]), (eot, st["train_on_eot"] or st["train_on_eos"])]
        labels = rich_labels(ids, offsets, spans, trains, passes, masks)
        cases.append({"name": cname, "row": row, "settings": st, "text": text, "input_ids": ids, "labels": labels})
    fixture = {"generated_by": "tools/data/make_fixtures.py", "transformers": transformers.__version__,
               "template": template_spec, "cases": cases}
    (OUT / f"chat_rich_{name}.json").write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote chat_rich_{name}.json ({len(cases)} cases)")


ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well.\n2. Sleep.\n3. Move."},
    {"instruction": "Translate to French.", "input": "Good morning, café owner!", "output": "Bonjour, patron du café !"},
]
ALPACA_SYSTEM = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.")
ALPACA_SYSTEM_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def axolotl_tokenize(tok, text, add_eos, strip_bos):
    """Axolotl's PromptTokenizingStrategy._tokenize (without its max_length truncation)."""
    ids = list(tok(text)["input_ids"])
    if ids and ids[-1] != tok.eos_token_id and add_eos:
        ids.append(tok.eos_token_id)
    if ids and ids[0] == tok.bos_token_id and strip_bos:
        ids = ids[1:]
    return ids


def make_formats(name, tok):
    """type: alpaca / completion / input_output, tokenized the way Axolotl 0.21 does."""
    cases = []
    for row in ALPACA_ROWS:
        if row["input"]:
            prompt = ALPACA_SYSTEM + "\n\n" + f"### Instruction:\n{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n"
        else:
            prompt = ALPACA_SYSTEM_NO_INPUT + "\n\n" + f"### Instruction:\n{row['instruction']}\n\n### Response:\n"
        p = axolotl_tokenize(tok, prompt, add_eos=False, strip_bos=False)
        r = axolotl_tokenize(tok, row["output"], add_eos=True, strip_bos=True)
        cases.append({"format": "alpaca", "row": row, "input_ids": p + r, "labels": [-100] * len(p) + r})
    for text in ["The quick brown fox jumps over the lazy dog.", "Ünïcödé 🙂 and numbers 12345"]:
        ids = axolotl_tokenize(tok, text, add_eos=True, strip_bos=False)
        cases.append({"format": "completion", "row": {"text": text}, "input_ids": ids, "labels": ids})
    segs = [{"text": "<question> 2+2?\n", "label": False}, {"text": "<answer> 4", "label": True}]
    ids, labels = [], []
    for seg in segs:
        part = list(tok(seg["text"], add_special_tokens=False)["input_ids"])
        ids += part
        labels += part if seg["label"] else [-100] * len(part)
    cases.append({"format": "input_output", "row": {"segments": segs}, "input_ids": ids, "labels": labels})
    fixture = {"generated_by": "tools/data/make_fixtures.py", "transformers": transformers.__version__,
               "tokenizer": name, "cases": cases}
    (OUT / f"formats_{name}.json").write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote formats_{name}.json ({len(cases)} cases)")


def make_columnar():
    """Small Parquet/Arrow files written by pyarrow (as `datasets` and pandas write them), so the
    Rust readers are checked against the writer people actually use."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello 🙂"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    alpaca = [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
    ]
    for name, rows in [("chat", chat), ("alpaca", alpaca)]:
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, OUT / f"pyarrow_{name}_snappy.parquet", compression="snappy")
        pq.write_table(table, OUT / f"pyarrow_{name}_zstd.parquet", compression="zstd")
        with pa.ipc.new_stream(OUT / f"pyarrow_{name}.arrow", table.schema) as w:
            w.write_table(table)
        (OUT / f"pyarrow_{name}.json").write_text(json.dumps(rows, ensure_ascii=False) + "\n")
    print("wrote pyarrow_* columnar fixtures")


MISTRAL_COMMON = ("mistral-common==1.13.1", "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af")


def make_spm_gguf():
    """crates/data/fixtures/mistral-v1-spm.gguf: a tokenizer-only GGUF (no tensors) holding
    Mistral 7B v0.1's sentencepiece vocabulary (tokenizer.model.v1 from the Apache-2.0 wheel
    mistral-common), written the way llama.cpp's converter writes `tokenizer.ggml.*`. It lets the
    Rust tests check the sentencepiece GGUF path against transformers without a 4 GB model.
    Needs: pip install gguf sentencepiece."""
    import hashlib
    import subprocess
    import tempfile
    import zipfile

    import gguf
    import sentencepiece as spm

    out = OUT / "mistral-v1-spm.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        spec, sha = MISTRAL_COMMON
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", spec, "-d", tmp], check=True)
        whl = next(Path(tmp).glob("*.whl"))
        assert hashlib.sha256(whl.read_bytes()).hexdigest() == sha, "mistral-common wheel hash mismatch"
        model = Path(tmp) / "tokenizer.model.v1"
        model.write_bytes(zipfile.ZipFile(whl).read("mistral_common/data/tokenizer.model.v1"))
        sp = spm.SentencePieceProcessor(model_file=str(model))
        toks, scores, types = [], [], []
        for i in range(sp.get_piece_size()):
            toks.append(sp.id_to_piece(i))
            scores.append(sp.get_score(i))
            types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1)
        w = gguf.GGUFWriter(str(out), "llama")
        w.add_tokenizer_model("llama")
        w.add_token_list(toks)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(sp.bos_id())
        w.add_eos_token_id(sp.eos_id())
        w.add_unk_token_id(sp.unk_id())
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_chat_template((TEMPLATES / "mistral_v1.jinja").read_text())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    print(f"wrote {out.name}")
    return out


def named(n):
    return (TEMPLATES / f"{n}.jinja").read_text()


def main():
    if sys.argv[1:] == ["rich"]:
        qwen = AutoTokenizer.from_pretrained(str(ROOT / ".cache" / "tokenizers" / "qwen3"))
        make_rich("qwen3_default", qwen, {"tokenizer": "qwen3", "kind": "tokenizer_default"}, qwen.chat_template,
                  skip=["tools_json_string_null_content"])  # Qwen3's own template needs a string content
        make_rich("qwen3_qwen25", qwen, {"tokenizer": "qwen3", "kind": "named", "name": "qwen_25"}, named("qwen_25"),
                  skip=["reasoning_content", "reasoning_field_and_kwargs", "split_thinking"])  # it never prints reasoning (runner refuses)
        llama = AutoTokenizer.from_pretrained(str(ROOT / ".cache" / "tokenizers" / "llama-3.2"))
        make_rich("llama32_llama3", llama, {"tokenizer": "llama-3.2", "kind": "named", "name": "llama3"}, named("llama3"),
                  skip=[c[0] for c in RICH_CASES if c[0] != "message_training_flags"], extra=EOT_CASES)
        return
    smol = os.environ.get("RUNNER_SMOLLM2_GGUF", str(ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tokdir = ROOT / ".cache" / "tokenizers"
    make_columnar()
    spm_tok = gguf_tokenizer(make_spm_gguf())
    make("mistral_spm_default", spm_tok, {"tokenizer": "mistral-spm", "kind": "tokenizer_default"}, spm_tok.chat_template)
    make_formats("mistral-spm", spm_tok)
    s = gguf_tokenizer(smol)
    make("smollm2_default", s, {"tokenizer": "smollm2", "kind": "tokenizer_default"}, s.chat_template)
    make("smollm2_chatml", s, {"tokenizer": "smollm2", "kind": "named", "name": "chatml"}, named("chatml"))
    llama = AutoTokenizer.from_pretrained(str(tokdir / "llama-3.2"))
    make_formats("smollm2", s)
    make_formats("llama-3.2", llama)
    make("llama32_llama3", llama, {"tokenizer": "llama-3.2", "kind": "named", "name": "llama3"}, named("llama3"))
    make_rich("llama32_llama3", llama, {"tokenizer": "llama-3.2", "kind": "named", "name": "llama3"}, named("llama3"),
              skip=[c[0] for c in RICH_CASES if c[0] != "message_training_flags"], extra=EOT_CASES)
    qwen = AutoTokenizer.from_pretrained(str(tokdir / "qwen3"))
    make("qwen3_default", qwen, {"tokenizer": "qwen3", "kind": "tokenizer_default"}, qwen.chat_template)
    make("qwen3_qwen25", qwen, {"tokenizer": "qwen3", "kind": "named", "name": "qwen_25"}, named("qwen_25"))
    # Tool calls, reasoning content, template kwargs and per-message training flags (issue 15).
    make_rich("qwen3_default", qwen, {"tokenizer": "qwen3", "kind": "tokenizer_default"}, qwen.chat_template,
                  skip=["tools_json_string_null_content"])  # Qwen3's own template needs a string content
    make_rich("qwen3_qwen25", qwen, {"tokenizer": "qwen3", "kind": "named", "name": "qwen_25"}, named("qwen_25"),
                  skip=["reasoning_content", "reasoning_field_and_kwargs", "split_thinking"])  # it never prints reasoning (runner refuses)
    # Render-only parity for the other built-ins (the text decides the ids; SmolLM2 tokenizes it).
    for n in ["mistral_v1", "mistral_v2v3", "gemma", "phi_3", "qwen3"]:
        skip = ["system_multi_turn"] if n == "gemma" else []
        make(f"smollm2_{n}", s, {"tokenizer": "smollm2", "kind": "named", "name": n}, named(n), skip=skip)


if __name__ == "__main__":
    main()
