"""Sweeps and learning curves: lists in the config become runs (dapt.study.grid), bad lists are one-line
errors, the report chooses on validation only (a fake study whose test scores are adversarial: the
best test score sits on the worst-validation combination), ties and incomplete combinations are
handled and said, and learning-curve subsets are nested."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_workdir, run_snakemake, tiny_config
from sklearn.metrics import accuracy_score, f1_score

from dapt import report
from dapt.core.errors import UserError
from dapt.report.selection import COMBINATION, select
from dapt.study import config as study
from dapt.study import grid, layout, sweeps

# ------------------------------------------------------------------------------------------------
# The grid


def test_a_study_without_lists_keeps_its_runs_names_and_params():
    for path in ("config/config.yaml", "tests/config/tiny.yaml"):
        cfg = study.read_yaml(REPO / path)
        runs = list(grid.runs(cfg))
        plain = [
            (t, m, v, meth, s)
            for t in cfg["tasks"]
            for m in cfg["models"]
            for v in cfg["variants"]
            for meth in cfg["methods"]
            if v in study.method_variants(cfg, t, meth)
            for s in cfg["seeds"]
        ]
        assert [(r["task"], r["model"], r["variant"], r["method"], r["seed"]) for r in runs] == plain
        for r in runs:
            assert grid.run_params(cfg, r["task"], r["method"]) == study.finetune_params(cfg, r["task"], r["method"])
        assert not grid.has_sweeps(cfg) and not grid.has_sizes(cfg)
        assert grid.prepare_spec(cfg, next(iter(cfg["tasks"]))) == next(iter(cfg["tasks"].values()))


def _swept_config() -> dict:
    cfg = tiny_config()
    cfg["finetune"]["lr"] = [1.0e-3, 3.0e-3]  # swept for full; lora sets its own lr list
    cfg["methods"] = {
        "full": {},
        "lora": {"lr": [5.0e-4, 2.0e-5], "r": [4, 16], "alpha": 8},
        "head": {"lr": 1.0e-2},
    }  # a scalar above the finetune list: head is not swept
    cfg["variants"] = {"base": [], "tapt": ["tapt"]}
    return cfg


def test_lists_expand_to_named_runs_with_their_values():
    cfg = _swept_config()
    study.validate_config(cfg, "s.yaml")
    names = {m: [s.name for s in grid.method_runs(cfg, "rt_polarity", m)] for m in cfg["methods"]}
    assert names == {
        "full": ["full-lr0.001", "full-lr0.003"],
        "lora": ["lora-lr0.0005-r4", "lora-lr0.0005-r16", "lora-lr2e-5-r4", "lora-lr2e-5-r16"],
        "head": ["head"],
    }
    runs = list(grid.runs(cfg))
    assert len(runs) == (2 + 4 + 1) * 2 * 2 and len({layout.run_key(r) for r in runs}) == len(runs)
    assert all(re.fullmatch(layout.METHOD_WILDCARD, r["method"]) for r in runs)
    params = grid.run_params(cfg, "rt_polarity", "lora-lr2e-5-r16")
    assert (params["lr"], params["r"], params["alpha"], params["kind"]) == (2e-5, 16, 8, "lora")
    assert grid.run_params(cfg, "rt_polarity", "full-lr0.003")["lr"] == 3e-3
    assert grid.run_params(cfg, "rt_polarity", "head")["lr"] == 1e-2
    spec = grid.run_spec(cfg, "rt_polarity", "lora-lr0.0005-r16")
    assert (spec.method, spec.rank, spec.label()) == ("lora", 1, "lr=0.0005, r=16")
    with pytest.raises(UserError, match="not a method folder"):
        grid.run_spec(cfg, "rt_polarity", "lora-lr0.1-r4")
    # a task-level list overrides the method's scalar for that task only
    cfg["methods"]["head"]["lr"] = 1.0e-2
    cfg["tasks"]["rt_polarity"]["methods"] = {"head": {"lr": [1.0e-2, 3.0e-2]}}
    assert [s.name for s in grid.method_runs(cfg, "rt_polarity", "head")] == ["head-lr0.01", "head-lr0.03"]


@pytest.mark.parametrize(
    "where, value, message",
    [
        (("methods", "lora", "lr"), [], r"s\.yaml: methods\.lora\.lr: an empty list sweeps nothing"),
        (
            ("methods", "lora", "kind"),
            ["lora", "adapter"],
            r"methods\.lora\.kind: cannot be swept: a method has one kind",
        ),
        (("methods", "lora", "variants"), [["base"], ["tapt"]], r"methods\.lora\.variants: cannot be swept"),
        (("finetune", "eval_batch_size"), [32, 64], r"finetune\.eval_batch_size: cannot be swept"),
        (("methods", "lora", "r"), [4, 4], r"methods\.lora\.r\[1\]: 4 is listed twice"),
        (("methods", "lora", "r"), [4, 0], r"methods\.lora\.r\[1\]: 0 is less than the minimum of 1"),
        (("finetune", "lr"), [1.0e-3, [2.0e-3]], r"finetune\.lr\[1\]: a sweep is a flat list"),
        (
            ("tasks", "rt_polarity", "max_examples"),
            {"train": [50, 50]},
            r"max_examples\.train\[1\]: 50 is listed twice",
        ),
        (("train_sizes",), [], r"s\.yaml: train_sizes: a learning curve needs a non-empty list"),
        (("train_sizes",), [10, 2.5], r"train_sizes\[1\]: 2\.5 is not a number of training examples"),
    ],
)
def test_bad_lists_are_one_line_errors(where, value, message):
    cfg = tiny_config()
    node = cfg
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(UserError, match=message) as err:
        study.validate_config(cfg, "s.yaml")
    assert "\n" not in str(err.value)


def test_train_sizes_beyond_a_tasks_cap_are_refused():
    cfg = tiny_config()
    cfg["tasks"]["rt_polarity"]["max_examples"] = {"train": 80}
    cfg["train_sizes"] = [40, 120]
    with pytest.raises(UserError, match=r"train_sizes\[1\]: 120 is more than tasks\.rt_polarity\.max_examples\.train"):
        study.validate_config(cfg, "s.yaml")
    cfg["train_sizes"] = [40, 80]
    study.validate_config(cfg, "s.yaml")
    assert [s.name for s in grid.method_runs(cfg, "rt_polarity", "full")] == ["full-n40", "full-n80"]
    cfg["tasks"]["rt_polarity"]["max_examples"] = {"train": [60, 20]}  # a task's own list wins
    assert grid.train_sizes(cfg, "rt_polarity") == [20, 60]
    assert grid.prepare_spec(cfg, "rt_polarity")["max_examples"] == {"train": 60}
    assert cfg["tasks"]["rt_polarity"]["max_examples"] == {"train": [60, 20]}  # not changed in place


def test_learning_curve_subsets_are_nested_stratified_and_whole_at_full_size():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=500, p=[0.6, 0.3, 0.1])
    previous = set()
    for n in (10, 50, 120, 300, 499):
        keep = sweeps.nested_subset(labels, n, seed=7)
        assert len(keep) == n == len(set(keep)) and list(keep) == sorted(keep)
        assert previous <= set(keep.tolist())
        previous = set(keep.tolist())
        for c, share in enumerate(np.bincount(labels) / len(labels)):
            assert abs(np.sum(labels[keep] == c) - share * n) <= 1.5, (n, c)
    assert list(sweeps.nested_subset(labels, 500, seed=7)) == list(range(500))
    assert list(sweeps.nested_subset(labels, 50, seed=8)) != list(sweeps.nested_subset(labels, 50, seed=7))
    with pytest.raises(UserError, match="only 500 examples"):
        sweeps.nested_subset(labels, 501, seed=7)


def test_a_subset_keeps_every_window_of_its_documents():
    doc = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    examples = {
        "id": [f"d{d}" for d in doc],
        "input_ids": [np.arange(i + 1) for i in range(8)],
        "label": np.array([0, 0, 1, 0, 0, 0, 1, 1]),
        "doc": doc,
        "pool": "mean",
    }
    sub = sweeps.subset_examples(examples, 3, seed=0)
    kept_docs = sorted({int(i[1:]) for i in sub["id"]})
    assert len(kept_docs) == 3
    assert sub["id"] == [f"d{d}" for d in doc if d in kept_docs]  # all rows of a kept document, in order
    assert list(sub["doc"]) == list(np.unique([d for d in doc if d in kept_docs], return_inverse=True)[1])
    assert sub["pool"] == "mean" and len(sub["input_ids"]) == len(sub["label"]) == len(sub["id"])


# ------------------------------------------------------------------------------------------------
# Selection in the report: a fake study with adversarial test scores

LABELS = ["neg", "pos"]
N_TEST = 300
SEEDS = [1, 2, 3]
# lora's combinations in config order (rank): validation macro-F1 and test accuracy. The best
# validation (rank 1) has the worst test score; the worst validation (rank 3) the best.
VAL = {0: 0.70, 1: 0.80, 2: 0.75, 3: 0.60}
TEST = {0: 0.72, 1: 0.58, 2: 0.66, 3: 0.95}
SWEEP_CONFIG = {
    "models": {"m": {"source": {"kind": "local", "path": "m"}}},
    "tasks": {"rt": {"source": {"kind": "local", "path": "rt.csv"}, "metric": "macro_f1"}},
    "variants": {"base": [], "tapt": ["tapt"]},
    "pretrain": {"tapt": {"epochs": 1}},
    "methods": {"full": {}, "lora": {"lr": [1.0e-3, 2.0e-3], "r": [8, 16]}},
    "seeds": SEEDS,
}


def _write_run(root: Path, run: dict, gold: np.ndarray, acc: float, val: float | None, rng, **extra) -> dict:
    correct = rng.random(len(gold)) < acc
    pred = np.where(correct, gold, 1 - gold)
    key = layout.run_key(run)
    ev, ft = root / "results" / "evaluate" / key, root / "results" / "finetune" / key
    ev.mkdir(parents=True)
    ft.mkdir(parents=True)
    p_pos = np.where(pred == 1, 0.8, 0.2)
    pd.DataFrame(
        {
            "id": [f"t{i:04d}" for i in range(len(gold))],
            "gold": [LABELS[g] for g in gold],
            "predicted": [LABELS[p] for p in pred],
            "p_neg": 1 - p_pos,
            "p_pos": p_pos,
        }
    ).to_csv(ev / "predictions.csv", index=False)
    m = {
        **run,
        "labels": LABELS,
        "accuracy": accuracy_score(gold, pred),
        "n_test": len(gold),
        "macro_f1": f1_score(gold, pred, average="macro"),
        "micro_f1": f1_score(gold, pred, average="micro"),
        **extra,
    }
    (ev / "metrics.json").write_text(json.dumps(m))
    vals = [np.nan, np.nan] if val is None else [val - 0.05, val]
    pd.DataFrame(
        {
            "epoch": [1, 2],
            "step": [10, 20],
            "train_loss": [0.6, 0.5],
            "val_accuracy": vals,
            "val_macro_f1": vals,
            "lr": [1e-3, 0.0],
        }
    ).to_csv(ft / "log.csv", index=False)
    return m


def make_sweep_study(root: Path, val: dict = VAL, skip: tuple = ()) -> dict:
    """The fake study: full (unswept) and lora's 4 combinations on two variants, 3 seeds (`skip`:
    lora's (rank, seed) runs left out). Returns the test macro-F1 of every run by (variant, method
    folder, seed)."""
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 2, N_TEST)
    cfg = copy.deepcopy(SWEEP_CONFIG)
    test = {}
    for r in grid.runs(cfg):
        spec = grid.run_spec(cfg, r["task"], r["method"])
        if spec.method == "lora" and (spec.rank, r["seed"]) in skip:
            continue
        v = val[spec.rank] + 0.002 * (r["seed"] - 2) if spec.method == "lora" else 0.7
        acc = TEST[spec.rank] if spec.method == "lora" else 0.75
        test[r["variant"], r["method"], r["seed"]] = _write_run(root, r, gold, acc, v, rng)["macro_f1"]
    return test


def _report(root: Path, config: dict) -> Path:
    out = root / "out"
    res = root / "results"
    report.write_report(
        sorted(res.glob("evaluate/**/metrics.json")),
        out,
        config,
        log_paths=sorted(res.glob("finetune/**/log.csv")),
        n_resamples=200,
    )
    return out


def test_selection_chooses_on_validation_and_reports_that_combinations_test_score(tmp_path):
    test = make_sweep_study(tmp_path)
    out = _report(tmp_path, SWEEP_CONFIG)
    assert {p.name for p in out.iterdir()} == {f.name for f in layout.report_list(sweeps=True)}
    table = pd.read_csv(out / "table.csv")
    seeds = table[table["row"] == "seeds"].set_index("method")
    for variant in ("base", "tapt"):
        chosen = [test[variant, "lora-lr0.001-r16", s] for s in SEEDS]  # best validation, worst test
        assert seeds.loc["lora", f"{variant}_mean"] == pytest.approx(100 * np.mean(chosen))
        best_test = max(
            np.mean([test[variant, m, s] for s in SEEDS])
            for m in ("lora-lr0.001-r8", "lora-lr0.001-r16", "lora-lr0.002-r8", "lora-lr0.002-r16")
        )
        assert 100 * best_test > seeds.loc["lora", f"{variant}_mean"] + 20  # the adversarial test score was not used
    assert seeds.loc["lora", "chosen"] == "lr=0.001, r=16"
    assert pd.isna(seeds.loc["full", "chosen"]) and seeds.loc["full", "base_n"] == 3
    sweep = pd.read_csv(out / "sweep.csv")
    assert len(sweep) == 4 * 2 and set(sweep["method"]) == {"lora"}
    chosen = sweep[sweep["chosen"]]
    assert list(chosen["setting"]) == ["lr=0.001, r=16"] * 2 and set(chosen["status"]) == {"chosen"}
    row = sweep[(sweep["variant"] == "base") & (sweep["setting"] == "lr=0.002, r=16")].iloc[0]
    assert row["val_mean"] == pytest.approx(100 * VAL[3]) and row["status"] == "not best"
    assert row["test_mean"] == pytest.approx(100 * np.mean([test["base", "lora-lr0.002-r16", s] for s in SEEDS]))
    md = (out / "table.md").read_text()
    assert "chosen (validation)" in md and "lr=0.001, r=16" in md
    assert "**lr=0.001, r=16**" in (out / "sweep.md").read_text()
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 3 * 2 * 5 and results["selected"].sum() == 3 * 2 * 2
    assert set(results.loc[results["selected"], "run_method"]) == {"full", "lora-lr0.001-r16"}
    assert "Chosen" in (out / "table.tex").read_text()


def test_select_reads_validation_only():
    """select() is given no test score, and a test column it is given does not change the choice."""
    rows = [
        {
            "task": "t",
            "model": "m",
            "variant": "base",
            "base_method": "lora",
            "size_key": 0,
            "setting": f"r={r}",
            "setting_rank": i,
            "seed": s,
            "val_score": v,
            "score": t,
        }
        for i, (r, v, t) in enumerate([(4, 0.6, 0.99), (8, 0.9, 0.1)])
        for s in (1, 2)
    ]
    frame = pd.DataFrame(rows)
    chosen = select(frame[[*COMBINATION, "seed", "val_score"]])
    assert list(chosen.loc[chosen["chosen"], "setting"]) == ["r=8"]
    flipped = select(frame.assign(score=1 - frame["score"]))
    assert list(flipped.loc[flipped["chosen"], "setting"]) == ["r=8"]


def test_a_tie_goes_to_the_combination_listed_first_and_is_said(tmp_path):
    val = {**VAL, 2: VAL[1]}  # lr=0.002, r=8 ties the best
    make_sweep_study(tmp_path, val=val)
    sweep = pd.read_csv(_report(tmp_path, SWEEP_CONFIG) / "sweep.csv")
    chosen = sweep[sweep["chosen"]]
    assert list(chosen["setting"]) == ["lr=0.001, r=16"] * 2
    assert all("tied with lr=0.002, r=8: the first listed wins" in s for s in chosen["status"])


def test_a_combination_with_a_missing_or_failed_run_is_not_chosen_and_is_said(tmp_path):
    make_sweep_study(tmp_path, skip=((1, 2),))  # the best-validation combination lost seed 2
    log = (
        tmp_path
        / "results/finetune"
        / layout.run_key({"task": "rt", "model": "m", "variant": "base", "method": "lora-lr0.002-r8", "seed": 3})
        / "log.csv"
    )
    pd.read_csv(log).assign(val_macro_f1=np.nan, val_accuracy=np.nan).to_csv(log, index=False)  # a failed run
    out = _report(tmp_path, SWEEP_CONFIG)
    sweep = pd.read_csv(out / "sweep.csv").set_index(["variant", "setting"])
    assert sweep.loc[("base", "lr=0.001, r=16"), "status"].startswith("incomplete: 2 of 3 runs")
    assert sweep.loc[("base", "lr=0.002, r=8"), "status"].startswith("incomplete: 2 of 3 runs")
    assert sweep.loc[("base", "lr=0.001, r=8"), "chosen"]  # the best complete one (validation 0.70)
    assert sweep.loc[("tapt", "lr=0.002, r=8"), "chosen"]  # 0.75: its seed 3 ran on tapt
    assert "incomplete: 2 of 3 runs with a validation score (failed or missing)" in (out / "sweep.md").read_text()


def test_learning_curve_report(tmp_path):
    cfg = {**copy.deepcopy(SWEEP_CONFIG), "methods": {"full": {}}, "train_sizes": [40, 200]}
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 2, N_TEST)
    acc = {("base", 40): 0.6, ("base", 200): 0.8, ("tapt", 40): 0.7, ("tapt", 200): 0.82}
    scores = {}
    for r in grid.runs(cfg):
        size = grid.run_spec(cfg, "rt", r["method"]).train_size
        scores.setdefault((r["variant"], size), []).append(
            _write_run(tmp_path, r, gold, acc[r["variant"], size], 0.7, rng, n_train=size)["macro_f1"]
        )
    out = _report(tmp_path, cfg)
    assert {p.name for p in out.iterdir()} == {f.name for f in layout.report_list(curves=True)}
    curve = pd.read_csv(out / "learning_curve.csv")
    assert list(zip(curve["variant"], curve["train_size"])) == [
        ("base", 40),
        ("base", 200),
        ("tapt", 40),
        ("tapt", 200),
    ]
    for rec in curve.to_dict("records"):
        s = scores[rec["variant"], rec["train_size"]]
        assert rec["mean"] == pytest.approx(100 * np.mean(s)) and rec["std"] == pytest.approx(100 * np.std(s, ddof=1))
        assert rec["n_train"] == rec["train_size"] and rec["n_seeds"] == 3
    md = (out / "learning_curve.md").read_text()
    assert "| full | tapt |" in md and f"{100 * np.mean(scores['tapt', 200]):.1f} ±" in md
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out / "table.csv")
    assert list(table.loc[table["row"] == "seeds", "method"]) == ["full n=40", "full n=200"]


# ------------------------------------------------------------------------------------------------
# The workflow: a swept study's jobs carry the run's values; the rule declares the sweep files


def test_a_swept_study_plans_one_job_per_combination_with_its_values(tmp_path):
    cfg = tiny_config()
    cfg["variants"] = {"base": []}
    cfg["methods"] = {"full": {"lr": [1.0e-3, 3.0e-3]}, "lora": {"r": 4, "lr": 3.0e-3}}
    cfg["seeds"] = [1]
    workdir = make_workdir(tmp_path, cfg)
    proc = run_snakemake(workdir, "-n", "-p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if "finetune.py" in line and "--params" in line:
            args = shlex.split(line)
            found[args[args.index("--out") + 1].split("/")[-2]] = json.loads(args[args.index("--params") + 1])["lr"]
    assert found == {"full-lr0.001": 1e-3, "full-lr0.003": 3e-3, "lora": 3e-3}
    proc = run_snakemake(workdir, "--summary")
    assert proc.returncode == 0, proc.stderr[-3000:]
    declared = {
        Path(line.split("\t")[0]).name for line in proc.stdout.splitlines() if line.split("\t")[2:3] == ["report"]
    }
    assert declared == {f.name for f in layout.report_list(sweeps=True)}
