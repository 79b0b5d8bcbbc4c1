"""The package's layers point down: a module imports only its own package or a lower layer, so the
architecture page's diagram stays true (docs/architecture.md names the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dapt"

#: Each stage package and its layer; a module may import its own package or a package of a lower
#: layer, never one of the same layer (siblings stay independent) or a higher one.
LAYERS: dict[str, int] = {
    "core": 0,
    "study": 1,
    "runtime": 1,
    "data": 2,
    "tokenize": 3,
    "pretrain": 4,
    "finetune": 4,
    "deploy": 5,
    "report": 5,
    "serve": 6,
}


def package_of(module: str) -> str | None:
    """'dapt.finetune.methods' -> 'finetune'; 'dapt' itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dapt" else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of dapt in a file, at any depth (function-level imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "dapt":
            if node.module == "dapt":
                found += [(node.lineno, f"dapt.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "<relative>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "dapt"]
    return found


def violations(root: Path = PACKAGE, layers: dict[str, int] = LAYERS) -> list[str]:
    """Every import that points up or sideways, as 'file:line: a -> b'."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        own = rel.parts[1] if len(rel.parts) > 2 else None
        if own is None:  # dapt/__init__.py
            continue
        for line, target in imports_of(path):
            if target == "<relative>":
                bad.append(f"{rel}:{line}: relative import (use dapt.<package>.<module>)")
                continue
            other = package_of(target)
            if other is None or other == own:
                continue
            if other not in layers:
                bad.append(f"{rel}:{line}: {own} -> {other} (a package with no layer)")
            elif layers[other] >= layers[own]:
                bad.append(f"{rel}:{line}: {own} (layer {layers[own]}) -> {other} (layer {layers[other]})")
    return bad


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS), f"packages without a layer or layers without a package: {packages ^ set(LAYERS)}"
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside a stage package: {loose}"


def test_layers_only_point_down():
    assert violations() == []


@pytest.mark.parametrize(
    "own, line",
    [
        ("core", "from dapt.study.config import FINETUNE_DEFAULTS\n"),  # up
        ("study", "def f():\n    from dapt.runtime import devices\n"),  # sideways, inside a function
        ("data", "import dapt.finetune.metrics\n"),  # up, plain import
        ("tokenize", "from dapt import report\n"),  # up, package import
    ],
)
def test_the_check_fails_when_a_layer_points_up(tmp_path, own, line):
    """Break the rule once per import form: the check names the file and both layers."""
    for name in LAYERS:
        (tmp_path / "dapt" / name).mkdir(parents=True)
        (tmp_path / "dapt" / name / "__init__.py").write_text("")
    (tmp_path / "dapt" / own / "bad.py").write_text(line)
    found = violations(tmp_path / "dapt")
    assert len(found) == 1 and found[0].startswith(f"dapt/{own}/bad.py:") and f"{own} (layer {LAYERS[own]})" in found[0]


def module_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the dapt modules it imports (any depth, TYPE_CHECKING blocks included)."""
    names = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("dapt"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & names
                deps |= subs or ({node.module} & names)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & names
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first walk (each reported once, from where it was met)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_the_cycle_check_finds_one_hidden_behind_type_checking(tmp_path):
    (tmp_path / "dapt" / "finetune").mkdir(parents=True)
    for name, text in {
        "__init__": "",
        "finetune/__init__": "",
        "finetune/a": "from dapt.finetune.b import f\n",
        "finetune/b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dapt.finetune.a import g\n",
    }.items():
        (tmp_path / "dapt" / f"{name}.py").write_text(text)
    assert cycles(module_graph(tmp_path / "dapt")) == [["dapt.finetune.a", "dapt.finetune.b", "dapt.finetune.a"]]
