"""Runs without scores: recorded as failed (fine-tuning diverged and `on_divergence: record` wrote
the run down instead of stopping the study: `dapt.finetune.fine_tuning`, `dapt.finetune.evaluation.record_diverged`), or
missing (the grid expects them but the report was not given them: a partial report, rule
`report_available`, after a job failed for another reason).

Every table reads the other runs; what is said about these is said here: sections of the notes
(which run; for a failed one, at which step and the error) and, in a sweep, the status of the
combination they belong to (listed as incomplete, never chosen).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from dapt.core.errors import UserError, diverged
from dapt.report.formatting import md_table
from dapt.report.selection import GROUP, annotate
from dapt.study import grid, layout

COLUMNS = [*layout.RUN_KEYS, "diverged_step", "error"]


def split_failed(metrics: Sequence[tuple[str, dict]]) -> tuple[list[tuple[str, dict]], pd.DataFrame]:
    """(the runs with scores; one row per failed run, COLUMNS)."""
    ok = [(p, m) for p, m in metrics if not diverged(m)]
    failed = [{**{k: m.get(k) for k in COLUMNS}, "seed": int(m["seed"])} for _, m in metrics if diverged(m)]
    if not ok:
        raise UserError(
            "--metrics",
            f"all {len(failed)} runs failed (diverged in fine-tuning), nothing to report",
            "see each run's train.json error; lower the learning rate",
        )
    return ok, pd.DataFrame(failed, columns=COLUMNS)


def missing_runs(config: Mapping, given: Iterable[Mapping]) -> list[dict]:
    """The grid's runs that are not among the `given` run records, in grid order ([] without a grid)."""
    if not grid._complete(config):
        return []
    given = {layout.run_key(m) for m in given}
    return [r for r in grid.runs(config) if layout.run_key(r) not in given]


def missing_notes(missing: list[dict]) -> str:
    """A notes section listing the runs the grid expects and the report was not given, or ''."""
    if not missing:
        return ""
    rows = [[r["task"], r["model"], r["variant"], r["method"], str(r["seed"])] for r in missing]
    return "\n".join(
        [
            f"\n## Runs missing ({len(rows)})\n",
            "The study's grid has these runs, but they have no metrics (their job failed, or has not run): this "
            "report rests on the others (`snakemake report_available` reports what finished).\n",
            md_table(["task", "model", "variant", "method", "seed"], rows, "lllll"),
        ]
    )


def without_failed(logs: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuning logs without the failed runs' (their epochs before diverging are no result)."""
    if not len(logs) or not len(failed):
        return logs
    key = list(layout.RUN_KEYS)
    drop = set(map(tuple, failed[key].astype(str).to_numpy()))
    keep = [tuple(r) not in drop for r in logs[key].astype(str).to_numpy()]
    return logs[keep].reset_index(drop=True)


def failed_notes(failed: pd.DataFrame) -> str:
    """A notes section listing every failed run, or '' when none failed."""
    if not len(failed):
        return ""
    rows = [
        [r["task"], r["model"], r["variant"], r["method"], str(r["seed"]), str(r["diverged_step"]), r["error"]]
        for r in failed.sort_values(list(layout.RUN_KEYS), kind="stable").to_dict("records")
    ]
    return "\n".join(
        [
            f"\n## Runs that failed ({len(rows)})\n",
            "Fine-tuning diverged (the loss stopped being finite) and the run was recorded as failed "
            "(`on_divergence: record`): it has no scores and is left out of every mean, ensemble and test; "
            "a swept combination with such a run is incomplete and never chosen.\n",
            md_table(["task", "model", "variant", "method", "seed", "step", "error"], rows, "llllrrl"),
        ]
    )


def mark_failed(selection: pd.DataFrame, failed: pd.DataFrame, config: Mapping) -> pd.DataFrame:
    """The sweep's status names the seeds that diverged ('…; diverged: seeds 2, 3')."""
    if not len(failed):
        return selection
    key = [*GROUP, "setting"]
    seeds = annotate(failed, config).groupby(key)["seed"].apply(sorted).to_dict()
    status = []
    for rec, combination in zip(selection["status"], selection[key].itertuples(index=False, name=None)):
        hit = seeds.get(combination, [])
        status.append(f"{rec}; diverged: seed{'s' if len(hit) > 1 else ''} {', '.join(map(str, hit))}" if hit else rec)
    return selection.assign(status=status)
