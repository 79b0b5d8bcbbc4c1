"""Every module of the package, the rule scripts and the benchmarks stays under ~300 lines, so a newcomer can
read any one of them in a sitting (docs/architecture.md says so; this keeps it true)."""

from __future__ import annotations

import pytest
from conftest import REPO

MAX_LINES = 310  # "under ~300 lines"


@pytest.mark.parametrize("folder", ["dapt", "scripts", "bench"])
def test_every_module_is_under_about_300_lines(folder):
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / folder).rglob("*.py")}
    assert sizes, f"no Python modules under {folder}/"
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
