"""Reading a study config file: YAML that refuses a key given twice.

PyYAML's SafeLoader keeps the last of two equal keys, and so does Snakemake's own parse of
``--configfile``; a study config must not lose a value silently, so the workflow reads its files
again through `read_yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dapt.core.errors import UserError


class _DuplicateKey(Exception):
    """Raised inside the YAML loader; read_yaml turns it into a UserError naming the file."""

    def __init__(self, key: Any, line: int):
        super().__init__(key, line)
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader keeps the last of two equal keys; a study config must not lose a value silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden, as YAML intends
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A config file's content; a key given twice, or text that is not YAML, is a UserError naming the line.

    Snakemake parses ``--configfile`` itself (keeping the last of two equal keys), so the workflow reads
    the files again through this to refuse duplicates.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(str(path), f"cannot read: {err.strerror or err}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
        _refuse_cycles(data, path)
        return data
    except _DuplicateKey as err:
        raise UserError(f"{path}: line {err.line}", f"key '{err.key}' given twice") from None
    except yaml.MarkedYAMLError as err:
        line = f": line {err.problem_mark.line + 1}" if err.problem_mark else ""
        raise UserError(f"{path}{line}", f"not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise UserError(str(path), f"not valid YAML: {' '.join(str(err).split())}") from None


def _refuse_cycles(data: Any, path: str | Path) -> None:
    """An alias inside its own anchor (`a: &x {b: *x}`) builds a value that contains itself: every reader
    after this one (Snakemake's, the schema's, JSON) would recurse without end."""
    on_path: set[int] = set()

    def walk(node: Any, key: str) -> None:
        if not isinstance(node, (dict, list)):
            return
        if id(node) in on_path:
            raise UserError(
                f"{path}: {key or 'top level'}",
                "an alias refers to the mapping or list that holds it",
                "a YAML alias (*name) may only repeat an anchor defined outside it",
            )
        on_path.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            walk(v, f"{key}.{k}" if key and isinstance(k, str) else f"{key}[{k}]" if key else str(k))
        on_path.discard(id(node))

    walk(data, "")
