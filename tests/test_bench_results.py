"""Every benchmark number printed in the docs is tied to a committed record, and cannot drift from it.

The convention (docs/development.md, bench/README.md): right after a printed number, an HTML comment
naming a record under bench/results/ and a dotted path into it (list indices allowed, an optional
factor for a number printed in other units):

    | fine-tuning, examples/s | 71.6<!-- bench/results/bench.json: results.finetune.ours_rate --> |
    batch-1 p50 16.4 ms<!-- bench/results/deploy.json: results.rows.0.p50_ms -->
    53.4 %<!-- bench/results/step.json: results.shares.matmul * 100 -->

The comment is invisible on GitHub and on the site. The printed number (thousands separators, a leading
sign, a trailing ×/x, %, ms, s, MB, GB, M or k, bold around it allowed) must equal the record's value
rounded to the printed decimals (exactly, where both are integers). The page must also link the record
(a visible "Source: [`bench/results/NAME.json`](../bench/results/NAME.json) (command, commit, CPU)" line
under the table or paragraph). Every bench/results/*.json must be named in the docs and carry the fields
bench/record.py writes. Numbers without a record are marked in the text as one-off observations.

`check_markers(pages, root)` and `check_records(pages, root)` return one message per problem, naming the
page, the line and the marker; the self-tests below break each check once on files in tmp_path.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

PAGES = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RESULTS = "bench/results"
#: What bench/record.py's Run.record writes (machine: the CPU, its kernel-deciding flags, the cores).
FIELDS = ("bench", "command", "commit", "date", "machine", "threads", "load_before", "load_after", "versions")
MACHINE_FIELDS = ("cpu", "flags", "cores")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.S)
LINK = re.compile(r"(?<!!)\[[^\]\n]+\]\(([^)\s]+)\)")
ANY_MARKER = re.compile(r"<!--\s*bench/results\b.*?-->", re.S)
MARKER = re.compile(
    r"<!--\s*(?P<file>bench/results/[\w.-]+\.json)\s*:\s*(?P<path>[\w\[\].-]+)"
    r"(?:\s*\*\s*(?P<scale>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?))?\s*-->"
)
NUMBER_BEFORE = re.compile(
    r"(?<![\w.,])(?P<num>[+\-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
    r"(?:\s?(?:×|x|%|ms|s|MB|GB|M|k))?[*_]*\s*$"
)


@dataclass
class Marker:
    page: Path
    line: int
    text: str
    file: str
    path: str
    scale: float
    printed: str | None  # the number right before the marker, as printed; None: no number there


def masked(text: str) -> str:
    """The page with fenced blocks and code spans blanked (same length and lines): a marker shown as an
    example in code is not a marker."""

    def blank(m: re.Match) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))

    return CODE_SPAN.sub(blank, FENCE.sub(blank, text))


def find_markers(page: Path, name: object = None) -> tuple[list[Marker], list[str]]:
    """The page's markers, and a message for each comment that names bench/results but is malformed
    (`name`: how messages name the page, default its path)."""
    text = masked(page.read_text())
    name = page if name is None else name
    found, bad = [], []
    for m in ANY_MARKER.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        full = MARKER.fullmatch(m.group(0))
        if not full:
            bad.append(f"{name}:{line}: {m.group(0)}: malformed marker (<!-- bench/results/NAME.json: a.b.0 -->)")
            continue
        before = NUMBER_BEFORE.search(text[max(0, m.start() - 80) : m.start()])
        found.append(
            Marker(
                page=page,
                line=line,
                text=m.group(0),
                file=full["file"],
                path=full["path"],
                scale=float(full["scale"]) if full["scale"] else 1.0,
                printed=before["num"] if before else None,
            )
        )
    return found, bad


def linked(page: Path) -> set[Path]:
    """The files the page's relative links point to (resolved from the page's folder)."""
    text = FENCE.sub("", page.read_text())
    return {Path(os.path.normpath(page.parent / url.partition("#")[0])) for url in LINK.findall(text)}


def lookup(record: object, path: str) -> object:
    """The value at a dotted path (`results.rows.0.p50_ms`, or `results.rows[0].p50_ms`); KeyError if absent."""
    value = record
    for key in path.replace("[", ".").replace("]", "").split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        else:
            raise KeyError(key)
    return value


def matches(printed: str, value: float | int, scale: float = 1.0) -> bool:
    """Does the printed number equal the value (times scale) rounded to the printed decimals? Integers
    printed for an integer value (scale 1) must be equal."""
    number = float(printed.replace(",", "").replace("−", "-"))
    decimals = len(printed.partition(".")[2])
    if isinstance(value, int) and scale == 1.0 and decimals == 0:
        return number == value
    scaled = value * scale
    return abs(scaled - number) <= 0.5 * 10.0**-decimals * (1 + 1e-9) + 1e-12


def record_problems(path: Path) -> list[str]:
    """What is wrong with one record file: unreadable, not JSON, or missing bench/record.py's fields."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return [f"not a readable JSON record ({e})"]
    if not isinstance(record, dict):
        return ["not a JSON object"]
    missing = [f for f in (*FIELDS, "results") if f not in record]
    machine = record.get("machine")
    if isinstance(machine, dict):
        missing += [f"machine.{f}" for f in MACHINE_FIELDS if f not in machine]
    elif "machine" in record:
        missing.append("machine.cpu")
    return [f"lacks the record fields {', '.join(missing)} (bench/record.py)"] if missing else []


def check_markers(pages: Iterable[Path], root: Path = REPO) -> list[str]:
    """One message per marker whose file is missing, not a complete record, lacks the path, holds no
    number there or a number other than the one printed, or is not linked from the page."""
    problems = []
    for page in pages:
        where = page.relative_to(root) if page.is_relative_to(root) else page
        markers, bad = find_markers(page, where)
        problems += bad
        for mk in markers:
            at = f"{where}:{mk.line}: {mk.text}"
            target = root / mk.file
            if not target.is_file():
                problems.append(f"{at}: no such file {mk.file}")
                continue
            broken = record_problems(target)
            if broken:
                problems.append(f"{at}: {mk.file} {broken[0]}")
                continue
            try:
                value = lookup(json.loads(target.read_text()), mk.path)
            except KeyError as e:
                problems.append(f"{at}: {mk.file} has no {mk.path} (no key {e})")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{at}: {mk.path} is {value!r}, not a number")
            elif mk.printed is None:
                problems.append(f"{at}: no number right before the marker")
            elif not matches(mk.printed, value, mk.scale):
                scaled = f" × {mk.scale:g} = {value * mk.scale!r}" if mk.scale != 1.0 else ""
                problems.append(f"{at}: printed {mk.printed}, but {mk.file} {mk.path} is {value!r}{scaled}")
            if Path(os.path.normpath(target)) not in linked(page):
                problems.append(f"{at}: the page does not link {mk.file} (add a 'Source:' line)")
    return sorted(set(problems), key=problems.index)


def check_records(pages: Iterable[Path], root: Path = REPO) -> list[str]:
    """One message per bench/results/*.json that no page names (an orphan) or that lacks the record fields."""
    pages = list(pages)
    named = " ".join(p.read_text() for p in pages)
    links = set().union(*(linked(p) for p in pages))
    problems = []
    for path in sorted((root / RESULTS).glob("*.json")):
        rel = path.relative_to(root).as_posix()
        if rel not in named and Path(os.path.normpath(path)) not in links:
            problems.append(f"{rel}: named in no page (link it where its numbers are printed, or remove it)")
        problems += [f"{rel}: {p}" for p in record_problems(path)]
    return problems


# ---- the committed docs and records --------------------------------------------------------------


def test_every_marked_number_matches_its_record():
    problems = check_markers(PAGES)
    assert problems == [], "\n".join(problems)


def test_every_record_is_named_and_complete():
    problems = check_records(PAGES)
    assert problems == [], "\n".join(problems)


# ---- the checker itself, on pages and records in tmp_path ----------------------------------------


def record(**results) -> dict:
    return {
        "bench": "bench",
        "command": "python bench/bench.py",
        "commit": "0" * 40,
        "date": "2026-12-05T06:00:00+00:00",
        "seconds": 219.0,
        "machine": {"cpu": "AMD EPYC", "flags": {"avx2": True}, "cores": 2},
        "threads": 2,
        "load_before": [0.1, 0.2, 0.3],
        "load_after": [0.4, 0.5, 0.6],
        "versions": {"torch": "2.13.0"},
        "results": results,
    }


SOURCE = (
    "\nSource: [`bench/results/run.json`](../bench/results/run.json) (`python bench/bench.py`, 0000000, AMD EPYC)\n"
)


def make_pair(tmp_path: Path, body: str, rec: dict | None = None, raw: str | None = None) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / RESULTS).mkdir(parents=True, exist_ok=True)
    if rec is not None or raw is not None:
        (tmp_path / RESULTS / "run.json").write_text(raw if raw is not None else json.dumps(rec))
    page = tmp_path / "docs" / "page.md"
    page.write_text(body)
    return page


RESULTS_OK = {
    "tokens": 2021.4,
    "speedup": 4.384,
    "ratio": -2.551,
    "count": 1275148,
    "share": 0.534,
    "rows": [{"p50_ms": 16.43}, {"p50_ms": 8.1}],
}


def test_checker_accepts_matching_numbers(tmp_path):
    body = (
        "| stage | ours | speedup |\n| --- | --: | --: |\n"
        "| pretraining | 2,021<!-- bench/results/run.json: results.tokens --> | "
        "**4.38×<!-- bench/results/run.json: results.speedup -->** |\n\n"
        "p50 16.4 ms<!-- bench/results/run.json: results.rows.0.p50_ms -->, then 8.1 ms"
        "<!-- bench/results/run.json: results.rows[1].p50_ms -->;\n"
        "Δ −2.55<!-- bench/results/run.json: results.ratio -->;"
        " 1,275,148<!-- bench/results/run.json: results.count --> tokens; 53.4 %<!--bench/results/run.json:"
        " results.share * 100--> in matmuls; 4.4x <!-- bench/results/run.json: results.speedup -->.\n"
        "An example in code is no marker: `<!-- bench/results/none.json: results.x -->`.\n" + SOURCE
    )
    page = make_pair(tmp_path, body, record(**RESULTS_OK))
    assert [m.printed for m in find_markers(page)[0]] == [
        "2,021",
        "4.38",
        "16.4",
        "8.1",
        "−2.55",
        "1,275,148",
        "53.4",
        "4.4",
    ]
    assert check_markers([page], tmp_path) == []
    assert check_records([page], tmp_path) == []


def test_checker_names_a_drifted_number(tmp_path):
    page = make_pair(tmp_path, "\n\nours 2,031<!-- bench/results/run.json: results.tokens --> tokens/s\n" + SOURCE)
    (tmp_path / RESULTS / "run.json").write_text(json.dumps(record(**RESULTS_OK)))
    assert check_markers([page], tmp_path) == [
        "docs/page.md:3: <!-- bench/results/run.json: results.tokens -->: "
        "printed 2,031, but bench/results/run.json results.tokens is 2021.4"
    ]


def test_checker_compares_at_the_printed_decimals(tmp_path):
    page = make_pair(
        tmp_path, "**4.39×<!-- bench/results/run.json: results.speedup -->**\n" + SOURCE, record(**RESULTS_OK)
    )
    assert "printed 4.39" in check_markers([page], tmp_path)[0]
    page.write_text("4.4×<!-- bench/results/run.json: results.speedup -->\n" + SOURCE)
    assert check_markers([page], tmp_path) == []
    page.write_text("1,275,147<!-- bench/results/run.json: results.count -->\n" + SOURCE)  # an integer: exact
    assert "printed 1,275,147" in check_markers([page], tmp_path)[0]


def test_checker_names_a_missing_file(tmp_path):
    page = make_pair(tmp_path, "ours 2,021<!-- bench/results/run.json: results.tokens -->\n" + SOURCE)
    assert check_markers([page], tmp_path) == [
        "docs/page.md:1: <!-- bench/results/run.json: results.tokens -->: no such file bench/results/run.json"
    ]


def test_checker_names_a_missing_key(tmp_path):
    page = make_pair(tmp_path, "x\n2,021<!-- bench/results/run.json: results.rows.2.p50_ms -->\n" + SOURCE)
    (tmp_path / RESULTS / "run.json").write_text(json.dumps(record(**RESULTS_OK)))
    (problem,) = check_markers([page], tmp_path)
    assert problem.startswith("docs/page.md:2: <!-- bench/results/run.json: results.rows.2.p50_ms -->: ")
    assert "has no results.rows.2.p50_ms" in problem


def test_checker_names_a_record_without_its_fields(tmp_path):
    rec = record(**RESULTS_OK)
    del rec["load_before"], rec["machine"]["flags"]
    page = make_pair(tmp_path, "2,021<!-- bench/results/run.json: results.tokens -->\n" + SOURCE, rec)
    assert "lacks the record fields load_before, machine.flags" in check_markers([page], tmp_path)[0]
    assert check_records([page], tmp_path) == [
        "bench/results/run.json: lacks the record fields load_before, machine.flags (bench/record.py)"
    ]
    make_pair(tmp_path, SOURCE, raw="{not json")
    assert "not a readable JSON record" in check_records([page], tmp_path)[0]


def test_checker_names_an_orphan_record_and_an_unlinked_one(tmp_path):
    page = make_pair(tmp_path, "nothing measured here\n", record(**RESULTS_OK))
    assert check_records([page], tmp_path) == [
        "bench/results/run.json: named in no page (link it where its numbers are printed, or remove it)"
    ]
    page.write_text("2,021<!-- bench/results/run.json: results.tokens -->\n")
    assert check_markers([page], tmp_path) == [
        "docs/page.md:1: <!-- bench/results/run.json: results.tokens -->: "
        "the page does not link bench/results/run.json (add a 'Source:' line)"
    ]


def test_checker_names_a_malformed_marker_and_a_marker_without_a_number(tmp_path):
    page = make_pair(tmp_path, "2,021<!-- bench/results/run.json results.tokens -->\n" + SOURCE, record(**RESULTS_OK))
    assert "malformed marker" in check_markers([page], tmp_path)[0]
    page.write_text("about two thousand<!-- bench/results/run.json: results.tokens -->\n" + SOURCE)
    assert "no number right before the marker" in check_markers([page], tmp_path)[0]
    page.write_text("rows 2<!-- bench/results/run.json: results.rows -->\n" + SOURCE)
    assert "not a number" in check_markers([page], tmp_path)[0]


def test_checker_follows_a_link_relative_to_its_page(tmp_path):
    make_pair(tmp_path, "", record(**RESULTS_OK))
    page = tmp_path / "bench" / "README.md"
    page.write_text("4.38×<!-- bench/results/run.json: results.speedup -->\n\nSource: [run.json](results/run.json)\n")
    assert check_markers([page], tmp_path) == []
    page.write_text("Source: [run.json](results/run.json)\n")
    assert check_records([page], tmp_path) == []
