"""Writes recipes/data/smoke-chat.jsonl: small, learnable arithmetic chats for the smoke recipe.

Deterministic (seed 7); run from the repository root: python3 tools/make_smoke_data.py
"""
import json
import random

rng = random.Random(7)
rows = []
for i in range(240):
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    op = rng.choice(["+", "-", "*"])
    val = {"+": a + b, "-": a - b, "*": a * b}[op]
    msgs = []
    if i % 3 == 0:
        msgs.append({"role": "system", "content": "You are a careful calculator."})
    msgs.append({"role": "user", "content": f"What is {a} {op} {b}?"})
    msgs.append({"role": "assistant", "content": f"{a} {op} {b} = {val}."})
    if i % 4 == 0:
        msgs.append({"role": "user", "content": "And doubled?"})
        msgs.append({"role": "assistant", "content": f"{val} * 2 = {val * 2}."})
    rows.append({"messages": msgs})
with open("recipes/data/smoke-chat.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
