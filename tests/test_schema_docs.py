"""config/schema.yaml documents itself: every key has a description, every default is the one the code
applies, the reference page (docs/config-reference.md) is generated from the schema, and config/README.md,
the user's guide, names every key, shows valid examples and states the schema's defaults."""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterator

import pytest
import yaml
from conftest import REPO

from dapt.study import defaults, settings
from dapt.study.schema_reference import COMMAND, render, rows, sections

README = REPO / "config" / "README.md"


def load_schema() -> dict:
    return yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def properties(node, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every property at every level of the schema ($defs included), with its place in the schema."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from properties(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "properties":
                for name, prop in value.items():
                    yield f"{path}/properties/{name}", prop
                    yield from properties(prop, f"{path}/properties/{name}")
            elif key not in ("description", "default"):
                yield from properties(value, f"{path}/{key}")


def undocumented(schema: dict) -> list[str]:
    missing = [path for path, prop in properties(schema) if not str(prop.get("description") or "").strip()]
    return missing + [f"/$defs/{name}" for name, node in schema["$defs"].items() if not node.get("description")]


def test_every_key_has_a_description():
    schema = load_schema()
    assert len(list(properties(schema))) > 150
    assert undocumented(schema) == []


def test_a_key_without_description_is_named():
    schema = load_schema()
    del schema["$defs"]["source"]["properties"]["columns"]["properties"]["id"]["description"]
    assert undocumented(schema) == ["/$defs/source/properties/columns/properties/id"]


def table(schema: dict) -> list[tuple[str, dict]]:
    """(dotted key, schema node) of every row of the reference page."""
    return [
        (path, prop)
        for _, prefix, node in sections(schema)
        for path, prop, _ in rows(node, prefix, schema["$defs"], expand=bool(prefix))
    ]


def test_the_reference_has_a_row_for_every_key():
    schema = load_schema()
    shown = {id(prop) for _, prop in table(schema)}
    assert [path for path, prop in properties(schema) if id(prop) not in shown] == []


def test_the_reference_page_is_generated_from_the_schema():
    page = (REPO / "docs" / "config-reference.md").read_text()
    assert page == render(), f"docs/config-reference.md is out of date: run {COMMAND}"
    assert page.startswith("# Configuration reference\n\nGenerated from `config/schema.yaml` by ")
    cells = [line.count("|") for line in page.splitlines() if line.startswith("|")]
    assert len(cells) > 150 and set(cells) == {5}  # four cells a row: no '|' inside one


#: The code's default dicts and constants, and the reference rows (key prefixes) they belong to.
CODE_DEFAULTS = [
    ("pretrain.<kind>", defaults.MLM_DEFAULTS),
    ("finetune", defaults.FINETUNE_DEFAULTS),
    ("finetune", defaults.ROBUST_DEFAULTS),
    ("finetune.augment", settings.AUGMENT_DEFAULTS),
    ("robustness", settings.ROBUSTNESS_DEFAULTS),
    ("tasks.<task>.long_text", defaults.LONG_TEXT_DEFAULTS),
    ("tasks.<task>", {"max_length": defaults.TASK_MAX_LENGTH}),
    ("corpora.<corpus>", {"shards": defaults.CORPUS_SHARDS}),
    ("deploy", defaults.DEPLOY_DEFAULTS),
    ("deploy.prune", settings.PRUNE_DEFAULTS),
    ("deploy.prune.distill", settings.DISTILL_DEFAULTS),
    ("knn", defaults.KNN_DEFAULTS),
    ("", {"on_divergence": defaults.ON_DIVERGENCE}),
]
#: Defaults the code applies where it reads the key, `.get("key", value)`, and the files (or folders) that do.
APPLIED_IN = {
    "split_seed": ("rules", "dapt/study/grid.py"),
    "pretrain_seed": ("rules",),
    "precision": ("rules",),
    "deterministic": ("rules",),  # .get("deterministic"): off unless given
    "allow_unverified_downloads": ("rules",),
    "models.<model>.trust_remote_code": ("dapt/data/model_store.py",),
    "models.<model>.random_init.seed": ("dapt/data/model_store.py",),
    "tasks.<task>.metric": ("dapt/study/config.py",),
    "source.split": ("dapt/data/readers.py",),
    "source.header": ("dapt/data/readers.py", "dapt/data/formats.py"),
    "source.encoding": ("dapt/data/readers.py", "dapt/data/formats.py"),
    "source.allow_unverified": ("dapt/data/sources.py",),
    "pretrain.<kind>.epochs": ("dapt/pretrain/pretraining.py",),
    "tracking.wandb.mode": ("dapt/runtime/tracking.py",),
    **{
        f"methods.<method>.{key}": ("dapt/finetune/methods.py", "dapt/deploy/export.py")
        for key in ("dropout", "tinit_ratio", "tfinal_ratio", "orth_reg_weight", "num_virtual_tokens")
        + ("prefix_projection", "reduction_factor", "placement")
    },
}


def applied_defaults(key: str, files: tuple[str, ...]) -> list:
    """The values of every `.get("key", value)` in the files, or a folder's .smk and .py files (None for
    `.get("key")`: falsy when left out)."""
    call = re.compile(rf"""\.get\(\s*["']{re.escape(key)}["']\s*(?:,\s*([^()]+?)\s*)?\)""")
    folders = [REPO / f for f in files if (REPO / f).is_dir()]
    paths = [REPO / f for f in files if (REPO / f).is_file()]
    paths += sorted(p for folder in folders for p in folder.rglob("*") if p.suffix in (".py", ".smk"))
    texts = [p.read_text() for p in paths]
    return [ast.literal_eval(arg) if arg else None for text in texts for arg in call.findall(text)]


def default_mismatches(schema: dict) -> list[str]:
    """Where the schema's `default`s and the code's disagree, or a default has no source in the code."""
    given = {path: prop for path, prop in table(schema)}
    found, covered = [], set()
    for prefix, code in CODE_DEFAULTS:
        for key, value in code.items():
            path = f"{prefix}.{key}" if prefix else key
            if path not in given:
                continue  # not a config key (long_text's head_fraction: head's default is a fraction of max_length)
            covered.add(path)
            if value is None and "default" in given[path]:
                found.append(
                    f"{path}: the code's default is None (left out), the schema says {given[path]['default']!r}"
                )
            elif value is not None and (type(given[path].get("default")), given[path].get("default")) != (
                type(value),
                value,
            ):
                found.append(f"{path}: the schema says {given[path].get('default', '(none)')!r}, the code {value!r}")
    for path, prop in given.items():
        if "default" not in prop or path in covered:
            continue
        if path not in APPLIED_IN:
            found.append(f"{path}: default {prop['default']!r} has no source in the code (CODE_DEFAULTS, APPLIED_IN)")
            continue
        values = applied_defaults(path.rpartition(".")[2], APPLIED_IN[path])
        wrong = [v for v in values if v != prop["default"] and not (v is None and prop["default"] is False)]
        if not values or wrong or {type(v) for v in values} - {type(prop["default"]), type(None)}:
            found.append(f"{path}: the schema says {prop['default']!r}, {APPLIED_IN[path]} apply {values}")
    return found


def test_every_default_is_the_codes():
    schema = load_schema()
    assert default_mismatches(schema) == []
    assert sum("default" in prop for _, prop in properties(schema)) >= 60


@pytest.mark.parametrize(
    "path, value",
    [
        (("$defs", "finetune_keys", "properties", "lr"), 3.0e-5),  # a dict's value
        (("$defs", "mlm", "properties", "epochs"), 2),  # a value the code applies where it reads the key
        (("properties", "knn", "properties", "batch_size"), None),  # a default left out
    ],
)
def test_a_wrong_default_is_named(path, value):
    schema = copy.deepcopy(load_schema())
    node = schema
    for key in path:
        node = node[key]
    node.pop("default") if value is None else node.update(default=value)
    assert len(default_mismatches(schema)) == 1


def test_validating_fills_in_no_default():
    """The defaults are annotations: validation leaves a config as it was (no key appears in it)."""
    from dapt.study.config import validate_config

    config = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())
    before = copy.deepcopy(config)
    validate_config(config, "tiny.yaml")
    assert config == before


def test_every_config_key_is_documented():
    """config/README.md names every key the schema accepts at the top level, in a source, a task, a
    corpus, a model, pretraining and fine-tuning (a key added to the schema alone fails here)."""
    schema = load_schema()
    named = set(re.findall(r"`([\w.<>]+)", README.read_text()))
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


def test_the_readme_names_every_key_at_every_level():
    """Nested keys too (tracking.wandb.mode, long_text.pool …): each in some code span or example."""
    text = README.read_text()
    words = set(re.findall(r"\w+", " ".join(re.findall(r"```.*?```|`[^`\n]+`", text, re.S))))
    keys = {path.rpartition(".")[2] for path, _ in table(load_schema())}
    assert sorted(k for k in keys if not k.startswith("<") and k not in words) == []


def test_the_readme_examples_are_valid_studies():
    from dapt.study.config import validate_config

    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)]
    studies = [b for b in blocks if isinstance(b, dict) and "models" in b]
    assert studies
    for study in studies:
        validate_config(study, "config/README.md")


#: config/README.md's tables with a default column, by heading, and the key prefix of their rows.
README_TABLES = {
    "## `variants.<variant>`": "",
    "## `pretrain.dapt`, `pretrain.tapt`": "pretrain.<kind>",
    "## `finetune`": "finetune",
    "### Long documents (`tasks.<t>.long_text`)": "tasks.<task>.long_text",
    "## `deploy` (export, ONNX, int8, measured)": "deploy",
    "## Top level": "",
}


def _literal(text: str):
    value = yaml.safe_load(text.strip().strip("`"))
    return float(value) if isinstance(value, str) and re.fullmatch(r"[\d.]+e-?\d+", value) else value


def test_the_readme_tables_state_the_schemas_defaults():
    """A default in config/README.md's tables is the schema's (where the schema has one and the README gives
    a value: `max_length` / 4 or – are descriptions, not values)."""
    given = dict(table(load_schema()))
    heading, checked, wrong = "", 0, []
    for line in README.read_text().splitlines():
        if line.startswith("#"):
            heading = line
        elif line.startswith("| key | default"):
            assert heading in README_TABLES, f"a table with defaults under {heading!r}: add it to README_TABLES"
        elif line.startswith("| `") and heading in README_TABLES:
            key_cell, default_cell = line.split(" | ")[:2]
            keys = re.findall(r"`([\w.]+)`", key_cell)
            values = default_cell.split(", ") if len(keys) > 1 else [default_cell]
            for key, value in zip(keys, values) if len(values) == len(keys) else []:
                prop = given.get(f"{README_TABLES[heading]}.{key}".lstrip("."), {})
                if "default" in prop and value.strip() not in ("–", ""):
                    checked += 1
                    if _literal(value) != prop["default"]:
                        wrong.append(f"{heading} {key}: README {value.strip()}, schema {prop['default']!r}")
    assert wrong == [] and checked >= 30
