"""The README's "Code map" claims to name every module of the package: checked here, so a new module
cannot drift away from the map unseen (module sizes: tests/test_module_sizes.py)."""

from __future__ import annotations

import re

from conftest import REPO


def code_map() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Code map")
    return text[start : text.index("\n## ", start + 1)]


def test_every_module_is_in_the_code_map():
    named = set(re.findall(r"`([\w/]+)`", code_map()))
    modules = {p.stem for p in (REPO / "dapt").glob("*.py") if p.stem != "__init__"}
    modules |= {f"{p.name}/" for p in (REPO / "dapt").iterdir() if (p / "__init__.py").exists()}
    assert sorted(modules - named) == []
    report_row = next(line for line in code_map().splitlines() if line.startswith("| `report/`"))
    report_modules = {p.stem for p in (REPO / "dapt" / "report").glob("*.py") if p.stem != "__init__"}
    assert sorted(m for m in report_modules if f"`{m}`" not in report_row) == []


def test_every_config_key_is_documented():
    """config/README.md names every key the schema accepts at the top level, in a source, a task, a
    corpus, a model, pretraining and fine-tuning (a key added to the schema alone fails here)."""
    import yaml

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    named = set(re.findall(r"`([\w.<>]+)", (REPO / "config" / "README.md").read_text()))
    defs, top = schema["$defs"], schema["properties"]
    keys = {
        "top level": top,
        "source": defs["source"]["properties"],
        "mlm": defs["mlm"]["properties"],
        "finetune": defs["finetune_keys"]["properties"],
        "method": defs["method"]["properties"],
        **{name: top[name]["additionalProperties"]["properties"] for name in ("tasks", "corpora", "models")},
    }
    missing = {
        where: sorted(k for k in props if k not in named and not any(n.startswith(f"{k}.") for n in named))
        for where, props in keys.items()
    }
    assert {where: ks for where, ks in missing.items() if ks} == {}
