"""The documentation stays true to the tree: the site builds with --strict (a page outside the nav, a
broken link or anchor fails it), README.md stays short, every relative link and every named file or
module exists, and docs/architecture.md's code map names every module of the package (module sizes:
tests/test_module_sizes.py; layers: tests/test_architecture.py)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_architecture import LAYERS

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:dapt|scripts|tests|bench|config|rules|envs|profiles|docs)/[\w./-]*\w)")


def prose(path: Path) -> str:
    """A page without its fenced code blocks (a link or heading in a code block is neither)."""
    return FENCE.sub("", path.read_text())


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (MkDocs' own are checked by the strict build)."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def build_site(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(cmd, cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


def test_site_builds_strict(tmp_path):
    done = build_site(REPO / "mkdocs.yml", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "architecture" / "index.html").exists()
    assert "77.5 ± 0.8" in (tmp_path / "default-study" / "index.html").read_text()  # README's table, included


@pytest.mark.parametrize(
    "page, text, says",
    [
        ("orphan.md", "# A page left out of the nav\n", "orphan.md"),
        ("index.md", "\n[a page](no-such-page.md)\n", "no-such-page.md"),
        ("index.md", "\n[a heading](architecture.md#no-such-heading)\n", "no-such-heading"),
        ("index.md", "\n[a repository file](../no-such-file.md)\n", "no-such-file.md"),
    ],
)
def test_strict_build_fails_on_a_broken_site(tmp_path, page, text, says):
    """Break a copy of the docs once per kind of breakage: the strict build fails and names it."""
    for entry in REPO.iterdir():
        if entry.name not in {"docs", "mkdocs.yml", "site", ".git"}:
            (tmp_path / entry.name).symlink_to(entry)
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    with open(tmp_path / "docs" / page, "a") as f:
        f.write(text)
    done = build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and says in done.stdout + done.stderr, done.stdout + done.stderr


def test_readme_is_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= 200, f"README.md has {lines} lines: move detail into a page under docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file(page):
    broken = []
    for _label, url in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", url):
            continue
        path, _, anchor = url.partition("#")
        target = (page.parent / path) if path else page
        if not target.exists():
            broken.append(f"{url}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(target):
            broken.append(f"{url}: no heading '{anchor}' in {target.relative_to(REPO)}")
    assert broken == []


def defines(module: Path, name: str) -> bool:
    tree = ast.parse(module.read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    names |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return name in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_file_and_module_exists(page):
    """Paths (`dapt/...`, `scripts/...`, `tests/...`) and dotted names (`dapt.deploy.predict`,
    `dapt.runtime.cli.limit_threads`) in a page's code spans exist, so a rename cannot leave a stale name."""
    missing = []
    for span in CODE.findall(prose(page)):
        for path in REPO_PATH.findall(span):
            if not (REPO / path).exists():
                missing.append(path)
        for dotted in re.findall(r"(?<![\w\[./-])(dapt(?:\.\w+)+)", span):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):
                base = REPO.joinpath(*parts[:cut])
                if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
                    break
            module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
            rest = parts[cut:]
            if not module.exists() or len(rest) > 1 or (rest and not defines(module, rest[0])):
                missing.append(dotted)
    assert missing == []


def code_map() -> str:
    text = (REPO / "docs" / "architecture.md").read_text()
    start = text.index("## Code map")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def package_modules() -> set[str]:
    """Every module of every package under dapt/ (walked, not listed): each file but an __init__.py,
    and an __init__.py that defines something (dapt.report's write_report)."""
    found = set()
    for path in (REPO / "dapt").rglob("*.py"):
        if path.name == "__init__.py":
            body = ast.parse(path.read_text()).body
            if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) for n in body):
                continue
        found.add(path.relative_to(REPO).as_posix())
    return found


def test_every_module_is_in_the_code_map():
    rows, package = {}, None
    for line in code_map().splitlines():
        if line.startswith("### "):
            package = re.search(r"`(dapt/\w+)`", line).group(1)
        elif m := re.match(r"\| `(dapt/[\w/]+\.py)` \| (.*\S) \|$", line):
            assert m.group(1).startswith(f"{package}/"), f"{m.group(1)} is listed under {package}"
            rows[m.group(1)] = m.group(2)
    modules = package_modules()
    assert sorted(modules - set(rows)) == [], "modules the code map in docs/architecture.md does not name"
    assert sorted(m for m in rows if not (REPO / m).exists()) == [], "code map rows for modules that do not exist"


def test_the_architecture_page_states_every_layer():
    text = (REPO / "docs" / "architecture.md").read_text()
    stated = {}
    for layer, cell in re.findall(r"^\| (\d+) \| (`[^|]+) \|", text, re.M):
        stated |= {name: int(layer) for name in re.findall(r"`(\w+)`", cell)}
    assert stated == LAYERS
    headings = re.findall(r"^### `dapt/(\w+)` \(layer (\d+)\)", code_map(), re.M)
    assert {name: int(layer) for name, layer in headings} == LAYERS
    assert [int(layer) for _, layer in headings] == sorted(LAYERS[name] for name, _ in headings)
