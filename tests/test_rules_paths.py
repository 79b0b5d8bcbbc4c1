"""The rules spell no results/ path: every path pattern of the workflow (outputs, logs, benchmarks,
checkpoints) comes from dapt.study.layout, the one description of the results folder, and a rule that
reads another rule's output names it (`rules.<name>.output.<key>`). A literal `results/...` in the
Snakefile or rules/*.smk (outside comments) would be a second description that can drift from it."""

from __future__ import annotations

import io
import re
import tokenize

import pytest
from conftest import REPO

from dapt.study import layout

WORKFLOW_FILES = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
#: a string that spells a path in the results folder: `results/...`, or `results` alone
FSTRING_MIDDLE = getattr(tokenize, "FSTRING_MIDDLE", None)
RESULTS_PATH = re.compile(r"(^|[^A-Za-z0-9_])results(/|$)")


def literal_results_paths(text: str) -> list[tuple[int, str]]:
    """(line, string) of every string literal (f-strings included) that spells a results/ path;
    comments are tokens of their own, so they are not looked at."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == FSTRING_MIDDLE:  # Python >= 3.12 splits an f-string into tokens
            body = tok.string
        elif tok.type == tokenize.STRING:
            body = tok.string.lstrip("rRbBfFuU")
            quote = body[:3] if body[:3] in ('"""', "'''") else body[0]
            body = body[len(quote) : -len(quote)]
        else:
            continue
        if RESULTS_PATH.search(body):
            found.append((tok.start[0], tok.string))
    return found


def test_the_check_finds_literal_paths_and_ignores_comments():
    text = (
        "# results/ in a comment is fine\n"
        "rule x:\n"
        "    output:\n"
        '        "results/x/{a}.txt",  # and so is results/ here\n'
        "    log:\n"
        '        f"results/logs/x/{RUN}.log",\n'
        "    params:\n"
        "        out='results',\n"
        '        other="my_results/x",\n'
        '        layout=layout.log_path("x", "{a}"),\n'
    )
    assert [line for line, _ in literal_results_paths(text)] == [4, 6, 8]


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_rules_spell_no_results_path(path):
    found = literal_results_paths(path.read_text())
    assert not found, (
        f"{path.relative_to(REPO)}: literal results/ paths (name them in dapt/study/layout.py, or use "
        f"rules.<name>.output.<key>): " + "; ".join(f"line {n}: {s}" for n, s in found)
    )


def test_every_layout_path_lies_in_the_results_folder():
    paths = {
        name: value
        for name, value in vars(layout).items()
        if name.isupper()
        and isinstance(value, str)
        and "/" in value
        and not name.endswith("WILDCARD")
        and name != "RUN"  # a run's wildcards, the tail of its paths
    }
    assert {"MODEL", "TASK", "PRETRAIN_SUMMARY", "FINETUNE_TRAIN", "EVALUATE_METRICS", "LOG_DIR"} <= set(paths)
    assert {n: p for n, p in paths.items() if not p.startswith("results/")} == {}
    assert layout.log_path("pretrain", "{model}/{chain}") == "results/logs/pretrain/{model}/{chain}.log"
    bench = layout.benchmark_path("finetune", layout.RUN)
    assert bench == f"results/benchmarks/finetune/{layout.RUN}.tsv"
    run = {"task": "t", "model": "m", "variant": "v", "method": "full", "seed": 1}
    assert layout.benchmark_key(bench.format(**run)) == ("finetune", ["t", "m", "v", "full", "seed1"])
