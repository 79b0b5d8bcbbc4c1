"""bench/bench_study.py's results: the test macro-F1 of every run on both sides, where each side's time
went by stage, and the printed table."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

#: A stage of the study, the workflow rules and the recipe-side steps (by name prefix) that do it.
STAGES = (
    ("data -> files / tokens", ("tokenize_corpus", "tokenize_task"), ("files",)),
    ("MLM pretraining", ("pretrain",), ("mlm/",)),
    ("fine-tuning + test predictions", ("finetune", "evaluate"), ("ft/",)),
)


def macro_f1(gold: list[str], pred: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, average="macro", labels=sorted(set(gold))))


def arg(args: list[str], flag: str, default: str | None = None) -> str | None:
    """The value after `flag` in a command's arguments."""
    return args[args.index(flag) + 1] if flag in args else default


def sampler_order(rc: Path, args: list[str], texts: list[str]) -> list[int] | None:
    """The order in which `Trainer.predict` visited the test set, where the run's flags make it permute it.

    With `--train_sampling_strategy group_by_length`, transformers 5's `Trainer._get_eval_sampler` also
    groups evaluation and prediction batches by length (a `LengthGroupedSampler` seeded with the run's
    seed), and `predict_results.txt` then lists the predictions in that order under the dataset's indices
    (run_classification.py numbers them 0, 1, ... as they come). The same seeded sampler is drawn again
    here, over the lengths the script's tokenization gives, to put them back in the dataset's order."""
    if arg(args, "--train_sampling_strategy") != "group_by_length":
        return None
    import torch
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    tok = AutoTokenizer.from_pretrained(
        arg(args, "--model_name_or_path") if not (rc / "tokenizer.json").is_file() else rc
    )
    max_len = int(arg(args, "--max_seq_length", "128"))
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_len)["input_ids"]]
    seed = int(arg(args, "--data_seed") or arg(args, "--seed", "42"))
    batch = int(arg(args, "--per_device_eval_batch_size", "8"))
    return list(LengthGroupedSampler(batch, lengths=lengths, generator=torch.Generator().manual_seed(seed)))


def recipe_f1(rc: Path, name: str, args: list[str] | None = None) -> float:
    """Macro-F1 of a recipe run's predict_results.txt against the gold labels of files/test.csv, its rows
    first put back in the dataset's order where the run's sampler permuted them (`sampler_order`)."""
    with open(rc / "files" / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    gold = [row["label"] for row in rows]
    with open(rc / name / "predict_results.txt", newline="") as f:
        pred = [row["prediction"] for row in csv.DictReader(f, delimiter="\t")]
    if len(pred) != len(gold):
        raise RuntimeError(f"{name}: {len(pred)} predictions for {len(gold)} test examples")
    order = sampler_order(rc / name, args or [], [row["sentence"] for row in rows])
    if order is not None:
        in_order = [""] * len(pred)
        for position, index in enumerate(order):
            in_order[index] = pred[position]
        pred = in_order
    return macro_f1(gold, pred)


def scores(work: Path, cfg: dict, commands: list) -> list[dict]:
    """One row per fine-tuning run: its variant, method, seed and both sides' test macro-F1."""
    from dapt.study import layout

    rows = []
    for c in commands:
        if c.run is None:
            continue
        metrics = json.loads((work / "workflow" / layout.EVALUATE_METRICS.format(**c.run)).read_text())
        rows.append(
            {
                **c.run,
                "workflow_f1": float(metrics["macro_f1"]),
                "recipe_f1": recipe_f1(work / "recipes", c.name, c.args),
            }
        )
    return rows


def workflow_jobs(wf: Path) -> dict[str, dict]:
    """Per rule: jobs, summed wall seconds and CPU seconds of its jobs (Snakemake's benchmark files)."""
    from dapt.study import layout

    out: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0})
    for tsv in sorted((wf / layout.BENCHMARK_DIR).glob("*/**/*.tsv")):
        rule = tsv.relative_to(wf / layout.BENCHMARK_DIR).parts[0]
        with open(tsv, newline="") as f:
            row = list(csv.DictReader(f, delimiter="\t"))[-1]
        out[rule]["jobs"] += 1
        out[rule]["wall_s"] += float(row["s"])
        out[rule]["cpu_s"] += float(row.get("cpu_time") or 0)
    return dict(out)


def recipe_steps(rc: Path) -> list[dict]:
    """The recipe script's steps in order, from logs/times.txt (bash `time`: real, user, sys)."""
    steps = []
    for line in (rc / "logs" / "times.txt").read_text().splitlines():
        name, real, user, system = line.split()
        steps.append({"name": name, "wall_s": float(real), "cpu_s": float(user) + float(system)})
    return steps


def stage_times(work: Path) -> list[dict]:
    """Each stage's summed job wall and CPU seconds on both sides (the workflow's jobs may overlap in
    time, so their wall seconds can add up to more than the side's wall time)."""
    jobs = workflow_jobs(work / "workflow")
    steps = recipe_steps(work / "recipes")
    rows = []
    for stage, rules, prefixes in STAGES:
        mine = [s for s in steps if s["name"].startswith(prefixes)]
        rows.append(
            {
                "stage": stage,
                "workflow_jobs": sum(jobs.get(r, {}).get("jobs", 0) for r in rules),
                "workflow_wall_s": sum(jobs.get(r, {}).get("wall_s", 0.0) for r in rules),
                "workflow_cpu_s": sum(jobs.get(r, {}).get("cpu_s", 0.0) for r in rules),
                "recipe_runs": len(mine),
                "recipe_wall_s": sum(s["wall_s"] for s in mine),
                "recipe_cpu_s": sum(s["cpu_s"] for s in mine),
            }
        )
    return rows


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table(res: dict) -> str:
    wf, rc, prep = res["workflow"], res["recipes"], res["preparation"]
    versions = ", ".join(
        f"{name} (transformers >= {v['min_version']})"
        for name, v in res["recipe_files"].items()
        if isinstance(v, dict) and v["min_version"]
    )
    lines = [
        f"\nrecipes: {versions}; evaluate {res['recipe_files']['evaluate']}",
        f"precision (as the workflow resolved it here): {res['precision']}; "
        f"shared preparation (not counted): {prep['wall_s']:.0f} s wall, {prep['cpu_s']:.0f} CPU s",
        "",
        "| side | wall s | CPU s | peak RSS, one process (MB) | peak RSS, all processes (MB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, side in (("workflow (snakemake)", wf), ("recipes (shell script)", rc)):
        lines.append(
            f"| {name} | {side['wall_s']:.0f} | {side['cpu_s']:.0f} | {side['peak_rss_mb']:.0f} "
            f"| {side['peak_tree_rss_mb']:.0f} |"
        )
    lines.append(
        f"| recipes / workflow | {_ratio(rc['wall_s'], wf['wall_s'])} | {_ratio(rc['cpu_s'], wf['cpu_s'])} "
        f"| {_ratio(rc['peak_rss_mb'], wf['peak_rss_mb'])} | {_ratio(rc['peak_tree_rss_mb'], wf['peak_tree_rss_mb'])} |"
    )
    lines += [
        "",
        "| stage | workflow jobs | job wall s | job CPU s | recipe runs | run wall s | run CPU s | CPU ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in res["stages"]:
        lines.append(
            f"| {s['stage']} | {s['workflow_jobs']} | {s['workflow_wall_s']:.0f} | {s['workflow_cpu_s']:.0f} "
            f"| {s['recipe_runs']} | {s['recipe_wall_s']:.0f} | {s['recipe_cpu_s']:.0f} "
            f"| {_ratio(s['recipe_cpu_s'], s['workflow_cpu_s'])} |"
        )
    lines += [
        "",
        "| variant | method | seed | test macro-F1, workflow | recipes | difference |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in res["runs"]:
        diff = r["recipe_f1"] - r["workflow_f1"]
        row = f"| {r['variant']} | {r['method']} | {r['seed']} | {r['workflow_f1']:.4f} | {r['recipe_f1']:.4f}"
        lines.append(f"{row} | {diff:+.4f} |")
    if res["runs"]:
        n = len(res["runs"])
        mean_wf = sum(r["workflow_f1"] for r in res["runs"]) / n
        mean_rc = sum(r["recipe_f1"] for r in res["runs"]) / n
        lines.append(f"| mean of {n} runs | | | {mean_wf:.4f} | {mean_rc:.4f} | {mean_rc - mean_wf:+.4f} |")
    lines.append(
        f"\nload average before/after: workflow {wf['load_before'][0]:.1f}/{wf['load_after'][0]:.1f}, "
        f"recipes {rc['load_before'][0]:.1f}/{rc['load_after'][0]:.1f}"
    )
    return "\n".join(lines)
