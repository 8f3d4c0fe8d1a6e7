#!/usr/bin/env python3
"""Writes crates/recipe/data/axolotl-keys.tsv: every config key of Axolotl's pydantic schema at a
pinned release (issue 15), read from the released package's source with `ast` (importing axolotl
would need torch). The file holds facts only (names, aliases, annotated types, simple defaults,
the schema class that defines each key); runner's classification of every key lives in
crates/recipe/src/keys.rs and the test `issue_15_every_axolotl_key_is_classified` diffs the two.

Usage: python3 tools/recipe/axolotl_keys.py [--version X.Y.Z] [--sdist FILE] [-o FILE]
To move to another Axolotl release: rerun with --version, then run
`cargo test --workspace --locked issue_15` and classify what it reports.
"""

import argparse
import ast
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PINNED = "0.19.0"
# sha256 of PyPI's axolotl-0.19.0.tar.gz: the pinned facts come from exactly this file.
PINNED_SHA256 = "136d623f04c909c5149d7f5dbd4a0e215014ab4c3617cce9d64010b5b8ca609d"
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/recipe/data/axolotl-keys.tsv"
SCHEMA_DIR = "src/axolotl/utils/schemas/"
# Axolotl's plugins (`plugins:`) add keys of their own: the class each plugin's
# get_input_args() names, under src/axolotl/integrations/<plugin>/.
PLUGIN_DIR = "src/axolotl/integrations/"

# The top-level config class, and the dataset entry classes the `datasets` union names.
TOP = "AxolotlInputConfig"
SCOPES = {
    "dataset": ["SFTDataset", "DPODataset", "KTODataset", "StepwiseSupervisedDataset",
                "SyntheticDataset"],
    "dataset_type": ["UserDefinedPrompterType", "UserDefinedDPOType", "UserDefinedKTOType"],
    "pretraining_dataset": ["PretrainingDataset"],
    "special_tokens": ["SpecialTokensConfig"],
}


def download(version: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="axolotl-sdist-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"axolotl=={version}", "-d", str(tmp)],
        check=True, stdout=subprocess.DEVNULL,
    )
    found = sorted(tmp.glob(f"axolotl-{version}.tar.gz"))
    if not found:
        sys.exit(f"pip did not leave axolotl-{version}.tar.gz in {tmp}")
    return found[0]


def sources(sdist: Path, prefix: str) -> dict[str, str]:
    """The Python files under `prefix` in the sdist, by path relative to it."""
    out = {}
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            rel = m.name.split("/", 1)[-1]
            if m.isfile() and rel.startswith(prefix) and rel.endswith(".py"):
                out[rel[len(prefix):]] = tar.extractfile(m).read().decode()
    if not out:
        sys.exit(f"{sdist} has no {prefix}: the package layout changed")
    return out


def plugin_rows(files: dict[str, str]):
    """("plugin", dotted plugin class, ...) for every BasePlugin subclass, and
    ("plugin_args", key, ...) for the fields of the class its get_input_args() returns."""
    by_dir: dict[str, dict[str, str]] = {}
    for rel, text in files.items():
        if "/" in rel:
            d, rest = rel.split("/", 1)
            by_dir.setdefault(d, {})[rest] = text
    out = []
    for d, dir_files in sorted(by_dir.items()):
        table = {}
        args_names = []
        for rel, text in dir_files.items():
            tree = ast.parse(text, rel)
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    table[node.name] = (f"integrations.{d}", node)
                    if any(ast.unparse(b) == "BasePlugin" for b in node.bases):
                        out.append(("plugin", f"axolotl.integrations.{d}.{node.name}", "-",
                                    "-", f"integrations.{d}"))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and node.name == "get_input_args":
                    for ret in ast.walk(node):
                        if (isinstance(ret, ast.Return) and isinstance(ret.value, ast.Constant)
                                and isinstance(ret.value.value, str)):
                            args_names.append(ret.value.value.rsplit(".", 1)[-1])
        for name in args_names:
            if name not in table:
                sys.exit(f"plugin {d}: input args class {name} not found")
            for key, _alias, type_text, default, where in fields(table, name):
                out.append(("plugin_args", key, type_text, default, where))
    return out


def simple_default(node: ast.expr | None):
    """The default as text when it is a literal, `required` when there is none, else `-`."""
    if node is None:
        return "required"
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Field":
        for kw in node.keywords:
            if kw.arg == "default":
                return simple_default(kw.value)
            if kw.arg == "default_factory":
                return "-"
        if node.args and not (isinstance(node.args[0], ast.Constant)
                              and node.args[0].value is Ellipsis):
            return simple_default(node.args[0])
        return "required"
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "-"


def alias_of(node: ast.expr | None):
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Field":
        for kw in node.keywords:
            if kw.arg == "alias" and isinstance(kw.value, ast.Constant):
                return kw.value.value
            if kw.arg == "validation_alias" and isinstance(kw.value, ast.Call):
                # AliasChoices("a", "b"): the extra accepted spellings.
                return ",".join(a.value for a in kw.value.args if isinstance(a, ast.Constant))
    return None


def classes(sources: dict[str, str]) -> dict[str, tuple[str, ast.ClassDef]]:
    table = {}
    for file, text in sources.items():
        for node in ast.parse(text, file).body:
            if isinstance(node, ast.ClassDef):
                table[node.name] = (file.removesuffix(".py"), node)
    return table


def fields(table, name, seen=None):
    """(key, alias, type, default, defined in) of a class and its schema bases; a field a
    subclass redefines wins, as in Python's method resolution order."""
    seen = set() if seen is None else seen
    if name not in table or name in seen:
        return []
    seen.add(name)
    module, cls = table[name]
    out = []
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        key = stmt.target.id
        annotation = ast.unparse(stmt.annotation)
        if key.startswith("_") or annotation.startswith("ClassVar"):
            continue
        type_text = " ".join(annotation.split())
        out.append((key, alias_of(stmt.value), type_text, simple_default(stmt.value),
                    f"{module}.{name}"))
    for base in cls.bases:
        base_name = ast.unparse(base)
        out.extend(fields(table, base_name, seen))
    return out


def rows(table, plugins):
    result = []

    def add(scope, entries):
        seen = set()
        for key, alias, type_text, default, where in entries:
            if key in seen:
                continue
            seen.add(key)
            result.append((scope, key, type_text, default, where))
            for a in (alias or "").split(","):
                if a and a != key:
                    # pydantic's populate_by_name: the alias is the documented spelling, the
                    # field name is accepted too. Both are keys a recipe may use.
                    result.append((scope, a, type_text, default, f"{where} (alias of {key})"))

    if TOP not in table:
        sys.exit(f"class {TOP} not found: the schema moved")
    add("config", fields(table, TOP))
    for scope, names in SCOPES.items():
        entries = []
        for n in names:
            if n not in table:
                sys.exit(f"class {n} not found: the schema moved")
            entries.extend(fields(table, n))
        add(scope, entries)
    result.extend(plugins)
    order = ["config", *SCOPES, "plugin", "plugin_args"]
    result.sort(key=lambda r: (order.index(r[0]), r[1]))
    deduped, last = [], None
    for r in result:
        if (r[0], r[1]) != last:
            deduped.append(r)
        last = (r[0], r[1])
    return deduped


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default=PINNED)
    ap.add_argument("--sdist", type=Path, help="use this axolotl-X.tar.gz instead of pip download")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args()
    sdist = args.sdist or download(args.version)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if args.version == PINNED and digest != PINNED_SHA256:
        sys.exit(f"{sdist}: sha256 {digest}, expected {PINNED_SHA256} for axolotl {PINNED}")
    table = classes(sources(sdist, SCHEMA_DIR))
    plugins = plugin_rows(sources(sdist, PLUGIN_DIR))
    out = io.StringIO()
    out.write(f"# Axolotl {args.version} config keys, from {sdist.name} "
              f"(sha256 {digest}) by tools/recipe/axolotl_keys.py; do not edit.\n")
    out.write("# scope\tkey\ttype\tdefault\tdefined in (axolotl/utils/schemas/...)\n")
    all_rows = rows(table, plugins)
    for r in all_rows:
        out.write("\t".join(r) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(out.getvalue())
    tmp.replace(args.output)
    counts = {}
    for r in all_rows:
        counts[r[0]] = counts.get(r[0], 0) + 1
    print(f"{args.output}: " + ", ".join(f"{n} {s} keys" for s, n in counts.items()))


if __name__ == "__main__":
    main()
