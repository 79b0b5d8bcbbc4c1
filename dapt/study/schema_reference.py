"""The configuration reference, generated from the schema: one Markdown table per section of the study
config (key, type or allowed values, default, description), so the page users read cannot drift from
what `dapt.study.config.validate_config` checks (tests/test_schema_docs.py compares the page with it).

    .venv/bin/python -m dapt.study.schema_reference > docs/config-reference.md
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import yaml

from dapt.study.defaults import SCHEMA

COMMAND = ".venv/bin/python -m dapt.study.schema_reference > docs/config-reference.md"
#: Definitions with a section of their own: a key that refers to one names the section instead of repeating it.
SECTION_DEFS = {
    "source": ("a source", "Sources"),
    "mlm": ("MLM settings", "Pretraining stage settings"),
    "finetune": ("fine-tuning keys", "Fine-tuning"),
    "method": ("a method", "Methods"),
}
#: Top-level mappings whose sections close the page, in this order.
TAIL = ("tracking", "robustness", "wordnet", "deploy", "report")
INTRO = [
    "# Configuration reference",
    "",
    f"Generated from `config/schema.yaml` by `{COMMAND}`; do not edit it by hand (tests/test_schema_docs.py "
    "checks that it matches the schema). How to write a study config, with examples: "
    "[config/README.md](../config/README.md).",
    "",
    "Keys are dotted paths; `<model>`, `<task>` … stand for names you choose (a letter, then letters, digits "
    "and `_`). A `–` default means the key has no fixed default: the description says what leaving it out does.",
]


def sections(schema: dict) -> list[tuple[str, str, dict]]:
    """(title, key prefix, schema node) of each table, in the page's order; the top level is not expanded."""
    top, defs = schema["properties"], schema["$defs"]
    entry = {name: top[name]["additionalProperties"] for name in ("models", "corpora", "tasks")}
    return [
        ("Top level", "", schema),
        ("Models", "models.<model>", entry["models"]),
        ("Corpora", "corpora.<corpus>", entry["corpora"]),
        ("Tasks", "tasks.<task>", entry["tasks"]),
        ("Sources", "source", defs["source"]),
        ("Variants", "variants.<variant>", top["variants"]),
        ("Pretraining", "pretrain", top["pretrain"]),
        ("Pretraining stage settings", "pretrain.<kind>", defs["mlm"]),
        ("kNN-TAPT selection", "knn", top["knn"]),
        ("Fine-tuning", "finetune", defs["finetune_keys"]),
        ("Methods", "methods.<method>", defs["method"]),
        *((name.capitalize() if name != "wordnet" else "WordNet", name, top[name]) for name in TAIL),
    ]


def _resolve(node: dict, defs: dict) -> dict:
    """A node with a $ref to a definition that has no section of its own merged into it."""
    name = node.get("$ref", "").rpartition("/")[2]
    if not name or name in SECTION_DEFS:
        return node
    return {**_resolve(defs[name], defs), **{k: v for k, v in node.items() if k != "$ref"}}


def rows(node: dict, prefix: str, defs: dict, expand: bool = True) -> Iterator[tuple[str, dict, bool]]:
    """(dotted key, schema node, required) of every key under `node`, nested mappings expanded unless `expand`
    is off; a mapping of names without keys of its own (variants) is one row, its entries."""
    if "properties" not in node:
        yield prefix, node["additionalProperties"], False
        return
    for key, prop in node["properties"].items():
        path = f"{prefix}.{key}" if prefix else key
        yield path, prop, key in node.get("required", ())
        if expand and "properties" in _resolve(prop, defs):
            yield from rows(_resolve(prop, defs), path, defs)


def _number(node: dict) -> str:
    low = f"[{node['minimum']}" if "minimum" in node else f"({node.get('exclusiveMinimum')}"
    high = f"{node['maximum']}]" if "maximum" in node else f"{node.get('exclusiveMaximum')})"
    if "None" not in low + high:
        return f"{node['type']} in {low}, {high}"
    if "None" not in low:
        return f"{node['type']} {'≥' if low[0] == '[' else '>'} {low[1:]}"
    return node["type"] if "None" in high else f"{node['type']} {'≤' if high[-1] == ']' else '<'} {high[:-1]}"


def type_text(node: dict, defs: dict) -> str:
    """The key's type or allowed values, in words."""
    name = node.get("$ref", "").rpartition("/")[2]
    if name in SECTION_DEFS:
        return f"{SECTION_DEFS[name][0]} (see *{SECTION_DEFS[name][1]}*)"
    node = _resolve(node, defs)
    kind = node.get("type", "object")
    if "enum" in node:
        return "one of " + ", ".join(f"`{_value(v)}`" for v in node["enum"])
    if "oneOf" in node and "type" not in node:
        return " or ".join(type_text(alt, defs) for alt in node["oneOf"])
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        extra = [word for key, word in (("minItems", "non-empty"), ("uniqueItems", "no repeats")) if node.get(key)]
        return f"list of {type_text(node['items'], defs)}" + (f" ({', '.join(extra)})" if extra else "")
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        keys = ", ".join(f"`{k}`" for k in node.get("propertyNames", {}).get("enum", [])) or "name"
        least = " (at least one)" if node.get("minProperties") else ""
        return f"mapping, {keys} → {type_text(node['additionalProperties'], defs)}{least}"
    if kind in ("integer", "number"):
        return _number(node)
    if kind == "string" and "pattern" in node:  # a '|' would split the table cell
        return f"string matching `{node['pattern']}`" if "|" not in node["pattern"] else "string (see description)"
    return {"object": "mapping", "string": "non-empty string" if node.get("minLength") else "string"}.get(kind, kind)


def _value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, float):  # as YAML reads it back: PyYAML takes 5e-05 for a string, 5.0e-5 for a number
        mantissa, _, exponent = repr(value).partition("e")
        return mantissa if not exponent else f"{float(mantissa)!r}e{int(exponent)}"
    return str(value)


def _text(description: str | None, where: str) -> str:
    """A description as one table cell: no '|' (it splits the cell), no tag-like '<x' outside `code` (HTML)."""
    text = " ".join((description or "").split())
    if not text or "|" in text or re.search(r"<[A-Za-z/!]", re.sub(r"`[^`]*`", "", text)):
        raise ValueError(f"config/schema.yaml: {where}: description {text!r} is empty, has '|' or '<' outside `code`")
    return text


def render(schema: dict | None = None) -> str:
    """The whole reference page, as Markdown."""
    schema = schema or yaml.safe_load(SCHEMA.read_text())
    parts, out = sections(schema), list(INTRO)
    titled = {prefix.split(".")[0]: title for title, prefix, _ in reversed(parts[1:])}  # first section wins
    for title, prefix, node in parts:
        out += ["", f"## {title}", "", _text(node.get("description"), prefix or "(top level)"), ""]
        out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for path, prop, required in rows(node, prefix, schema["$defs"], expand=bool(prefix)):
            kind = type_text(prop, schema["$defs"])
            if not prefix and "(see " not in kind:
                kind += f" (see *{titled[path]}*)" if path in titled else ""
            default = f"`{_value(prop['default'])}`" if "default" in prop else "required" if required else "–"
            out.append(f"| `{path}` | {kind} | {default} | {_text(prop.get('description'), path)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
