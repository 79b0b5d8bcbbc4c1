"""runtime.csv / runtime.md: where the study's time and memory went, per rule, from Snakemake's
benchmark files (one per job)."""

from __future__ import annotations

import pandas as pd

from dapt.report.formatting import fmt_num, md_table

RUNTIME_COLUMNS = ["rule", "jobs", "total_s", "mean_s", "max_s", "max_rss_mb"]


def runtime_table(benchmarks: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total, mean and max wall time, max RSS; and a last row 'all'."""
    if benchmarks.empty:
        return pd.DataFrame(columns=RUNTIME_COLUMNS)
    g = benchmarks.groupby("rule", sort=True)
    out = pd.DataFrame(
        {
            "jobs": g.size(),
            "total_s": g["wall_s"].sum(min_count=1),
            "mean_s": g["wall_s"].mean(),
            "max_s": g["wall_s"].max(),
            "max_rss_mb": g["max_rss_mb"].max(),
        }
    ).reset_index()
    total = pd.DataFrame(
        [
            {
                "rule": "all",
                "jobs": int(out["jobs"].sum()),
                "total_s": out["total_s"].sum(),
                "mean_s": benchmarks["wall_s"].mean(),
                "max_s": out["max_s"].max(),
                "max_rss_mb": out["max_rss_mb"].max(),
            }
        ]
    )
    return pd.concat([out, total], ignore_index=True)[RUNTIME_COLUMNS]


def render_runtime(runtime: pd.DataFrame) -> str:
    """The runtime table as a Markdown section (runtime.md, and the end of table.md)."""
    rows = [
        [
            r["rule"],
            str(int(r["jobs"])),
            fmt_num(r["total_s"], "{:.1f}"),
            fmt_num(r["mean_s"], "{:.1f}"),
            fmt_num(r["max_s"], "{:.1f}"),
            fmt_num(r["max_rss_mb"]),
        ]
        for r in runtime.to_dict("records")
    ]
    text = (
        "## Runtime\n\nWall time and peak resident memory per rule, from Snakemake's benchmark "
        "files (one per job; repeats averaged).\n\n"
    )
    if not rows:
        return text + "No benchmark files were given.\n"
    return text + md_table(["rule", "jobs", "total (s)", "mean (s)", "max (s)", "max RSS (MB)"], rows, "lrrrrr")
