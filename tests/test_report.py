"""The report step on a fake study whose truth is known: dapt is clearly better than base.

Every number the report prints is recomputed here independently (numpy/sklearn on the fixture
files), so a wrong mean, std, bold mark, ensemble or p-value fails a test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from dapt import report
from dapt.core.errors import UserError
from dapt.core.redact import REDACTED
from dapt.study import layout

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = ROOT / "scripts" / "report.py"
FAKE_TOKEN = "hf_FAKEtokenDoNotLeak8c1e2f9a7b"
MARKER = "envmarker-3f9d1c0b77"  # a non-secret env var: the report must not dump the environment

TASKS = {  # labels, metric, gold label shares
    "rt_polarity": ([0, 1], "macro_f1", [0.6, 0.4]),
    "topic": (["world", "sports", "tech"], "accuracy", [0.5, 0.3, 0.2]),
}
VARIANTS = ["base", "dapt"]
METHODS = ["full", "lora"]
SEEDS = [1, 2, 3]
ACCURACY = {"base": 0.62, "dapt": 0.88}
METHOD_SHIFT = {"full": 0.0, "lora": -0.03}
PARAMS = {"full": 22_713_216, "lora": 147_456}
TOTAL = 22_713_216 + 147_456
N_TEST = 240

CONFIG = {
    "models": {"minilm": {"source": {"kind": "url", "url": f"https://user:{FAKE_TOKEN}@example.org/m.zip"}}},
    "corpora": {"imdb": {"source": {"kind": "local", "path": "imdb.csv"}}},
    "tasks": {t: {"source": {"kind": "local", "path": f"{t}.csv"}, "metric": m} for t, (_, m, _) in TASKS.items()},
    "variants": {"base": [], "dapt": ["dapt:imdb"]},
    "methods": {"full": {}, "lora": {"r": 8}},
    "seeds": SEEDS,
    "hub_token": FAKE_TOKEN,
}


def _probs(rng: np.random.Generator, pred: np.ndarray, k: int) -> np.ndarray:
    """Probabilities whose argmax is `pred` (top probability ≥ 0.5, the rest split at random)."""
    top = 0.5 + 0.49 * rng.random(len(pred))
    rest = rng.random((len(pred), k))
    rest[np.arange(len(pred)), pred] = 0
    rest = rest / rest.sum(axis=1, keepdims=True) * (1 - top)[:, None]
    rest[np.arange(len(pred)), pred] = top
    return rest


def make_study(root: Path) -> dict:
    """Write a fake study in the workflow's layout; return what the test needs to know about it."""
    rng = np.random.default_rng(123)
    truth = {"metrics": [], "bench": {}}
    for t_i, (task, (labels, _metric, shares)) in enumerate(TASKS.items()):
        k = len(labels)
        gold = rng.choice(k, size=N_TEST, p=shares)
        ids = [f"{task}-{i:04d}" for i in range(N_TEST)]
        for variant in VARIANTS:
            for method in METHODS:
                for seed in SEEDS:
                    acc = ACCURACY[variant] + METHOD_SHIFT[method] + 0.02 * rng.standard_normal()
                    correct = rng.random(N_TEST) < acc
                    wrong = (gold + rng.integers(1, k, size=N_TEST)) % k
                    pred = np.where(correct, gold, wrong)
                    probs = _probs(rng, pred, k)
                    run = root / "results" / "evaluate" / task / "minilm" / variant / method / f"seed{seed}"
                    run.mkdir(parents=True)
                    preds = pd.DataFrame(
                        {"id": ids, "gold": [labels[g] for g in gold], "predicted": [labels[p] for p in pred]}
                    )
                    for j, lab in enumerate(labels):
                        preds[f"p_{lab}"] = probs[:, j]
                    preds.sample(frac=1, random_state=seed).to_csv(run / "predictions.csv", index=False)
                    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=range(k), zero_division=0)
                    chain = "" if variant == "base" else "dapt-imdb"
                    m = {
                        "task": task,
                        "model": "minilm",
                        "variant": variant,
                        "method": method,
                        "seed": seed,
                        "accuracy": accuracy_score(gold, pred),
                        "macro_f1": f1_score(gold, pred, average="macro", labels=range(k), zero_division=0),
                        "micro_f1": f1_score(gold, pred, average="micro", labels=range(k), zero_division=0),
                        "per_class": {
                            str(lab): {"precision": p[j], "recall": r[j], "f1": f[j], "support": int(s[j])}
                            for j, lab in enumerate(labels)
                        },
                        "confusion_matrix": confusion_matrix(gold, pred, labels=range(k)).tolist(),
                        "labels": labels,
                        "n_train": 800 + t_i,
                        "n_validation": 100,
                        "n_test": N_TEST,
                        "train_steps": 150,
                        "epochs_run": 3,
                        "best_epoch": 2 + (seed % 2),
                        "trainable_params": PARAMS[method],
                        "total_params": TOTAL,
                        "trainable_pct": 100 * PARAMS[method] / TOTAL,
                        "peak_memory_mb": 900.0 + 10 * seed + (300 if method == "full" else 0),
                        "artifact_bytes": 1000,
                        "device": "cpu",
                        "precision": "fp32",
                        "pretrain": {
                            "chain": chain,
                            "steps": 0 if not chain else 60,
                            "tokens": 0 if not chain else 122_880,
                        },
                    }
                    (run / "metrics.json").write_text(json.dumps(m, default=float))
                    truth["metrics"].append(m)
                    log = root / "results" / "finetune" / task / "minilm" / variant / method / f"seed{seed}"
                    log.mkdir(parents=True)
                    pd.DataFrame(
                        {
                            "epoch": [1, 2, 3],
                            "step": [50, 100, 150],
                            "train_loss": [0.7, 0.5, 0.4],
                            "val_accuracy": [acc - 0.1, acc - 0.05, acc],
                            "val_macro_f1": [acc - 0.12, acc - 0.06, acc - 0.01],
                            "lr": [3e-5, 2e-5, 1e-5],
                        }
                    ).to_csv(log / "log.csv", index=False)
                    for rule, base_s in (("finetune", 100.0), ("evaluate", 5.0)):
                        wall = base_s + 10 * seed + (50 if method == "full" else 0) + t_i
                        rss = 1500.0 + seed + (500 if method == "full" else 0)
                        bench = root / "results" / "benchmarks" / rule / task / "minilm" / variant / method
                        _write_benchmark(bench / f"seed{seed}.tsv", wall, rss)
                        truth["bench"][(rule, task, variant, method, seed)] = (wall, rss)
    pre = root / "results" / "pretrain" / "minilm" / "dapt-imdb"
    pre.mkdir(parents=True)
    steps = np.arange(1, 61)
    pd.DataFrame({"step": steps, "loss": 4 - np.log(steps) * 0.4, "lr": 5e-5, "tokens": steps * 2048}).to_csv(
        pre / "loss.csv", index=False
    )
    _write_benchmark(root / "results" / "benchmarks" / "pretrain" / "minilm" / "dapt-imdb.tsv", 321.0, 2500.0)
    truth["bench"][("pretrain",)] = (321.0, 2500.0)
    _write_benchmark(root / "results" / "benchmarks" / "report.tsv", 7.0, 400.0)  # a job without wildcards
    truth["bench"][("report",)] = (7.0, 400.0)
    return truth


def _write_benchmark(path: Path, wall: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, rem = divmod(int(wall), 3600)
    path.write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        f"{wall:.4f}\t{h}:{rem // 60:02d}:{rem % 60:02d}\t{rss:.2f}\t{rss * 2:.2f}\t{rss * 0.9:.2f}"
        f"\t{rss * 0.95:.2f}\t0.10\t1.20\t95.00\t{wall * 0.9:.2f}\n"
    )


def _cli_args(root: Path, out: Path, as_rule: bool = False) -> list[str]:
    """Arguments for scripts/report.py: files and a config file, or (as_rule) as rules/report.smk
    passes them: the benchmarks folder and the config as inline JSON."""
    res = root / "results"
    cfg = root / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    if as_rule:
        bench, config = [str(res / "benchmarks")], json.dumps(CONFIG)
    else:
        bench, config = list(map(str, sorted(res.glob("benchmarks/**/*.tsv")))), str(cfg)
    return [
        "--metrics",
        *map(str, sorted(res.glob("evaluate/*/*/*/*/seed*/metrics.json"))),
        "--logs",
        *map(str, sorted(res.glob("finetune/*/*/*/*/seed*/log.csv"))),
        "--pretrain-logs",
        *map(str, sorted(res.glob("pretrain/*/*/loss.csv"))),
        "--benchmarks",
        *bench,
        "--config-json",
        config,
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    truth = make_study(root)
    out = root / "results" / "report"
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "DAPT_TEST_MARKER": MARKER}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *_cli_args(root, out, as_rule=True)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "out": out, "truth": truth, "stdout": proc.stdout}


def _expected_scores(truth: dict) -> pd.DataFrame:
    rows = [
        {
            "task": m["task"],
            "variant": m["variant"],
            "method": m["method"],
            "seed": m["seed"],
            "score": m[TASKS[m["task"]][1]],
        }
        for m in truth["metrics"]
    ]
    return pd.DataFrame(rows)


def _md_rows(text: str) -> list[list[str]]:
    """Cells of the main markdown table (the first table in table.md)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| task (metric)"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


# ------------------------------------------------------------------------------------------------


def test_all_outputs_written(study):
    for name in layout.REPORT_FILES:
        path = study["out"] / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert not [p for p in study["out"].iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_the_rule_declares_exactly_the_files_the_report_writes(study, tmp_path):
    """rules/report.smk's outputs (as Snakemake sees them) = what scripts/report.py writes."""
    written = {p.name for p in study["out"].iterdir()}
    assert written == set(layout.REPORT_FILES)
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--summary",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    declared = [line.split("\t")[0] for line in proc.stdout.splitlines() if line.split("\t")[2:3] == ["report"]]
    # the default study also evaluates robustness: its report adds those files (test_robust.py runs one)
    from dapt.study import grid
    from dapt.study.config import read_yaml

    extra = {f.name for f in grid.report_list(read_yaml(ROOT / "config" / "config.yaml"))} - written
    assert extra == {"robustness.md", "robustness.csv", "robustness.png"}
    assert sorted(declared) == sorted(f"{layout.REPORT_DIR}/{name}" for name in written | extra)


def test_results_one_row_per_run_with_benchmarks(study):
    res = pd.read_csv(study["out"] / "results.csv")
    assert len(res) == len(TASKS) * len(VARIANTS) * len(METHODS) * len(SEEDS)
    for col in (
        "accuracy",
        "macro_f1",
        "micro_f1",
        "per_class.world.f1",
        "pretrain.chain",
        "pretrain.tokens",
        "trainable_params",
        "n_test",
        "peak_memory_mb",
        "finetune_wall_s",
        "evaluate_max_rss_mb",
    ):
        assert col in res.columns, col
    for rec in res.to_dict("records"):
        for rule in ("finetune", "evaluate"):
            wall, rss = study["truth"]["bench"][(rule, rec["task"], rec["variant"], rec["method"], rec["seed"])]
            assert rec[f"{rule}_wall_s"] == pytest.approx(wall, abs=1e-3)
            assert rec[f"{rule}_max_rss_mb"] == pytest.approx(rss, abs=1e-2)
        assert rec["score"] == rec[rec["metric"]]
        assert rec["metric"] == TASKS[rec["task"]][1]


def test_table_mean_std_per_task_method_variant(study):
    table = pd.read_csv(study["out"] / "table.csv")
    exp = _expected_scores(study["truth"])
    seeds = table[table["row"] == "seeds"]
    assert len(seeds) == len(TASKS) * len(METHODS)
    for task in TASKS:
        for method in METHODS:
            row = seeds[(seeds["task"] == task) & (seeds["method"] == method)]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["metric"] == TASKS[task][1]
            for variant in VARIANTS:
                s = exp[(exp.task == task) & (exp.method == method) & (exp.variant == variant)]["score"].to_numpy()
                mean, std = 100 * np.mean(s), 100 * np.std(s, ddof=1)
                assert row[f"{variant}_mean"] == pytest.approx(mean, abs=1e-9)
                assert row[f"{variant}_std"] == pytest.approx(std, abs=1e-9)
                assert row[variant] == f"{mean:.1f} ± {std:.1f}"
                assert row[f"{variant}_n"] == len(SEEDS)
            assert row["trainable_pct"] == pytest.approx(100 * PARAMS[method] / TOTAL)
            ft = [study["truth"]["bench"][("finetune", task, v, method, s)][0] for v in VARIANTS for s in SEEDS]
            assert row["finetune_wall_s"] == pytest.approx(np.mean(ft), abs=1e-3)
            assert row["peak_memory_mb"] == pytest.approx(900 + 30 + (300 if method == "full" else 0))
            assert str(row["n_seeds"]) == "3"
    # columns in config order
    assert list(table.columns[5:7]) == VARIANTS


def test_best_is_bold_in_markdown_and_latex(study):
    exp = _expected_scores(study["truth"])
    rows = _md_rows((study["out"] / "table.md").read_text())
    header = rows[0]
    seen = 0
    for cells in rows[2:]:
        if cells[3] != "seeds":
            continue
        task = cells[0].split(" (")[0]
        means = {
            v: exp[(exp.task == task) & (exp.method == cells[2]) & (exp.variant == v)]["score"].mean() for v in VARIANTS
        }
        best = max(means, key=means.get)
        assert best == "dapt"  # the fixture makes dapt clearly better
        for v in VARIANTS:
            cell = cells[header.index(v)]
            assert cell.startswith("**") == (v == best), (task, cells[2], v, cell)
        seen += 1
    assert seen == len(TASKS) * len(METHODS)
    tex = (study["out"] / "table.tex").read_text()
    body = [line for line in tex.splitlines() if "$_{\\pm" in line and "&" in line]
    assert len(body) == len(TASKS) * len(METHODS)
    for line in body:
        cells = [c.strip() for c in line.rstrip("\\ ").split("&")]
        assert not cells[3].startswith("\\textbf") and cells[4].startswith("\\textbf"), line
    assert "rt\\_polarity" in tex and "\\begin{tabular}" in tex and "\\end{table}" in tex


def _independent_ensemble(root: Path, task: str, variant: str, method: str) -> tuple[np.ndarray, np.ndarray, list]:
    labels = [str(x) for x in TASKS[task][0]]
    frames = [
        pd.read_csv(
            root / "results" / "evaluate" / task / "minilm" / variant / method / f"seed{s}" / "predictions.csv",
            dtype={"gold": str},
        )
        .set_index("id")
        .sort_index()
        for s in SEEDS
    ]
    probs = sum(f[[f"p_{lab}" for lab in labels]].to_numpy() for f in frames) / len(frames)
    gold = frames[0]["gold"].map(labels.index).to_numpy()
    return gold, probs.argmax(axis=1), labels


def _metric(gold, pred, k, metric):
    if metric == "accuracy":
        return accuracy_score(gold, pred)
    return f1_score(gold, pred, average=metric.split("_")[0], labels=range(k), zero_division=0)


def test_seed_ensemble(study):
    ens = pd.read_csv(study["out"] / "ensemble.csv")
    table = pd.read_csv(study["out"] / "table.csv")
    md = (study["out"] / "table.md").read_text()
    assert len(ens) == len(TASKS) * len(VARIANTS) * len(METHODS)
    for task, (labels, metric, _) in TASKS.items():
        for variant in VARIANTS:
            for method in METHODS:
                gold, pred, _ = _independent_ensemble(study["root"], task, variant, method)
                expected = _metric(gold, pred, len(labels), metric)
                row = ens[(ens.task == task) & (ens.variant == variant) & (ens.method == method)].iloc[0]
                assert row["score"] == pytest.approx(expected, abs=1e-12)
                assert row["macro_f1"] == pytest.approx(_metric(gold, pred, len(labels), "macro_f1"), abs=1e-12)
                assert row["n_seeds"] == len(SEEDS)
                trow = table[(table.task == task) & (table.method == method) & (table.row == "ensemble")].iloc[0]
                assert trow[f"{variant}_mean"] == pytest.approx(100 * expected)
                assert f"{100 * expected:.1f}" in md
    assert "| ensemble |" in md


def test_majority_class_row(study):
    table = pd.read_csv(study["out"] / "table.csv")
    for task, (labels, metric, _) in TASKS.items():
        gold, _, _ = _independent_ensemble(study["root"], task, "base", "full")
        majority = np.bincount(gold).argmax()
        expected = _metric(gold, np.full_like(gold, majority), len(labels), metric)
        row = table[(table.task == task) & (table.row == "majority")]
        assert len(row) == 1
        assert row.iloc[0]["base_mean"] == pytest.approx(100 * expected)


def test_paired_bootstrap_unit():
    rng = np.random.default_rng(7)
    gold = rng.integers(0, 2, 300)
    good = np.where(rng.random(300) < 0.9, gold, 1 - gold)
    bad = np.where(rng.random(300) < 0.65, gold, 1 - gold)
    better = report.paired_bootstrap(gold, good, bad, 2, "macro_f1", n_resamples=10_000, seed=0)
    assert better["delta"] > 0.15 and better["p_value"] < 0.001
    assert better["ci_low"] > 0
    same = report.paired_bootstrap(gold, bad, bad, 2, "macro_f1", n_resamples=10_000, seed=0)
    assert same["p_value"] == 1.0 and same["delta"] == 0
    # two systems of equal quality differing on random examples: no evidence of a difference
    other = np.where(rng.random(300) < 0.65, gold, 1 - gold)
    null = report.paired_bootstrap(gold, other, bad, 2, "accuracy", n_resamples=10_000, seed=0)
    assert null["p_value"] > 0.05
    # reproducible with the fixed seed, and the bootstrap score matches sklearn
    assert report.paired_bootstrap(gold, good, bad, 2, "macro_f1", seed=0) == better
    assert report.score(gold, good, 2, "macro_f1") == pytest.approx(f1_score(gold, good, average="macro"))


def test_significance_file_and_column(study):
    sig = pd.read_csv(study["out"] / "significance.csv")
    assert len(sig) == len(TASKS) * len(METHODS)
    assert set(sig["variant"]) == {"dapt"} and set(sig["baseline"]) == {"base"}
    assert (sig["n_resamples"] == 10_000).all()
    assert (sig["p_value"] < 0.01).all(), sig[["task", "method", "p_value"]]
    for rec in sig.to_dict("records"):
        labels, metric, _ = TASKS[rec["task"]]
        gold, a, _ = _independent_ensemble(study["root"], rec["task"], "dapt", rec["method"])
        _, b, _ = _independent_ensemble(study["root"], rec["task"], "base", rec["method"])
        delta = _metric(gold, a, len(labels), metric) - _metric(gold, b, len(labels), metric)
        assert rec["delta"] == pytest.approx(delta, abs=1e-12)
    md = (study["out"] / "table.md").read_text()
    rows = _md_rows(md)
    assert "p dapt vs base" in rows[0]
    col = rows[0].index("p dapt vs base")
    pvals = [float(r[col]) for r in rows[2:] if r[3] == "seeds"]
    assert len(pvals) == len(TASKS) * len(METHODS) and all(p < 0.01 for p in pvals)
    assert "paired bootstrap" in md and "10,000 resamples" in md
    caption = (ROOT / "report" / "significance.rst").read_text()
    assert "paired bootstrap" in caption.lower() and "10,000" in caption


def test_footing_of_the_numbers(study):
    md = (study["out"] / "table.md").read_text()
    notes = (study["out"] / "notes.md").read_text()
    for text in (md, notes):
        assert "What each number rests on" in text
        assert f"| rt_polarity | 800 | 100 | {N_TEST} |" in text
        assert "| rt_polarity | minilm | dapt | dapt-imdb | 60 | 122880 |" in text
        assert "| rt_polarity | minilm | full | base | 150 | 3 | 2–3 | 1 2 3 |" in text


def test_runtime(study):
    rt = pd.read_csv(study["out"] / "runtime.csv").set_index("rule")
    bench = study["truth"]["bench"]
    for rule in ("finetune", "evaluate"):
        vals = [v for k, v in bench.items() if k[0] == rule]
        assert rt.loc[rule, "jobs"] == len(vals)
        assert rt.loc[rule, "total_s"] == pytest.approx(sum(w for w, _ in vals), abs=1e-2)
        assert rt.loc[rule, "max_s"] == pytest.approx(max(w for w, _ in vals), abs=1e-3)
        assert rt.loc[rule, "max_rss_mb"] == pytest.approx(max(r for _, r in vals), abs=1e-2)
    assert rt.loc["pretrain", "jobs"] == 1 and rt.loc["report", "total_s"] == pytest.approx(7.0)
    assert rt.loc["all", "jobs"] == len(bench)
    for text in ((study["out"] / "runtime.md").read_text(), (study["out"] / "table.md").read_text()):
        assert "## Runtime" in text and "| finetune | 24 |" in text


@pytest.mark.parametrize("name", ["scores.png", "mlm_loss.png", "finetune_curves.png", "f1_vs_params.png"])
def test_plots_written(study, name):
    import matplotlib.image

    path = study["out"] / name
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 15_000, f"{name} is suspiciously small ({len(data)} bytes)"
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_provenance(study):
    prov = json.loads((study["out"] / "provenance.json").read_text())
    for pkg in (
        "torch",
        "transformers",
        "datasets",
        "peft",
        "accelerate",
        "snakemake",
        "pandas",
        "scikit-learn",
        "numpy",
        "python",
    ):
        assert pkg in prov["packages"]
    assert prov["packages"]["pandas"] == pd.__version__
    assert prov["hardware"]["cpu_count"] == os.cpu_count() and "platform" in prov["hardware"]
    assert "gpus" in prov["hardware"] and "date" in prov and "commit" in prov["git"]
    assert prov["config"]["tasks"]["topic"]["metric"] == "accuracy"
    assert prov["config"]["hub_token"] == REDACTED
    assert prov["runs"]["count"] == 24 and prov["runs"]["devices"] == ["cpu"]


def test_no_environment_value_in_any_output(study):
    assert FAKE_TOKEN in json.dumps(CONFIG)  # the config really carries the token (in a URL, too)
    for path in study["out"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert FAKE_TOKEN.encode() not in data, path
            assert MARKER.encode() not in data, path
    assert FAKE_TOKEN not in study["stdout"]
    assert REDACTED in (study["out"] / "provenance.json").read_text()


def test_captions_exist_for_the_declared_files_only():
    captions = {f.caption for f in (*layout.REPORT, *layout.DEPLOY_REPORT) if f.caption}
    assert {"deploy", "deploy_plot", "table", "results", "significance", "runtime", "scores", "provenance"} <= captions
    for name in captions:
        text = (ROOT / "report" / f"{name}.rst").read_text()
        assert len(text.split()) > 15, name
    assert {p.stem for p in (ROOT / "report").glob("*.rst")} == captions, "a caption for no declared file"


# ------------------------------------------------------------------------------------------------
# Bad inputs: a UserError naming the file, exit status 2 from the script.


def _load_script():
    spec = importlib.util.spec_from_file_location("report_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def small_study(tmp_path):
    make_study(tmp_path)
    return tmp_path


def test_unparseable_metrics_names_the_file(small_study):
    bad = small_study / "results/evaluate/topic/minilm/dapt/lora/seed2/metrics.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=re.escape(str(bad))):
        _load_script().main(_cli_args(small_study, small_study / "out"))
    assert not (small_study / "out").exists()


def test_file_lists_and_config_file_work_too(small_study):
    out = small_study / "out"
    _load_script().main([*_cli_args(small_study, out), "--bootstrap-resamples", "200"])
    table = pd.read_csv(out / "table.csv")
    assert set(table["row"]) == {"seeds", "ensemble", "majority"}
    assert pd.read_csv(out / "runtime.csv").set_index("rule").loc["finetune", "jobs"] == 24
    assert (pd.read_csv(out / "significance.csv")["n_resamples"] == 200).all()


def test_missing_predictions_names_the_file(small_study):
    gone = small_study / "results/evaluate/rt_polarity/minilm/base/full/seed1/predictions.csv"
    gone.unlink()
    with pytest.raises(UserError, match=re.escape(str(gone))):
        _load_script().main(_cli_args(small_study, small_study / "out"))


def test_bad_benchmark_exits_2_naming_the_file(small_study):
    bad = small_study / "results/benchmarks/finetune/topic/minilm/base/full/seed3.tsv"
    bad.write_text("wall\n1\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *_cli_args(small_study, small_study / "out"), "--bootstrap-resamples", "10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_seeds_with_different_test_sets_are_refused(small_study):
    path = small_study / "results/evaluate/topic/minilm/base/full/seed2/predictions.csv"
    df = pd.read_csv(path)
    df.loc[0, "id"] = "someone-else"
    df.to_csv(path, index=False)
    with pytest.raises(UserError, match="other test examples"):
        _load_script().main(_cli_args(small_study, small_study / "out"))


def test_a_method_on_fewer_variants_leaves_its_cells_empty(small_study):
    """`methods.<m>.variants`: lora runs on base only; its dapt cells are '–', it has no p-value and
    no significance row, and full is reported as before."""
    import shutil

    for kind in ("evaluate", "finetune", "benchmarks/finetune", "benchmarks/evaluate"):
        for d in (small_study / "results" / kind).glob("*/minilm/dapt/lora"):
            shutil.rmtree(d)
    out = small_study / "out"
    _load_script().main([*_cli_args(small_study, out), "--bootstrap-resamples", "200"])
    table = pd.read_csv(out / "table.csv")
    seeds = table[table["row"] == "seeds"].set_index(["task", "method"])
    for task in TASKS:
        lora, full = seeds.loc[(task, "lora")], seeds.loc[(task, "full")]
        assert lora["dapt"] == "–" and lora["dapt_n"] == 0 and np.isnan(lora["p_dapt"])
        assert lora["base_n"] == len(SEEDS) and lora["best"] == "base"
        assert full["dapt_n"] == len(SEEDS) and full["p_dapt"] < 0.01
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig["method"]) == {"full"} and len(sig) == len(TASKS)
    ensemble = table[(table["row"] == "ensemble") & (table["method"] == "lora")]
    assert (ensemble["dapt"] == "–").all() and (ensemble["dapt_n"] == 0).all()
    md_rows = [r for r in _md_rows((out / "table.md").read_text()) if len(r) > 5 and r[2] == "lora"]
    assert md_rows and all("–" in r for r in md_rows)
    for name in ("scores.png", "f1_vs_params.png"):
        assert (out / name).stat().st_size > 1000


def _paper_table(methods=("full",)) -> pd.DataFrame:
    """The `seeds` rows of table.csv for a Table-5-like study: 4 tasks in 2 domains, one micro-F1."""
    rows = []
    for i, (task, metric) in enumerate(
        (("chemprot", "micro_f1"), ("rct", "micro_f1"), ("ag_news", "macro_f1"), ("hyperpartisan", "macro_f1"))
    ):
        for j, method in enumerate(methods):
            row = {"task": task, "metric": metric, "model": "roberta", "method": method, "row": "seeds", "n_seeds": 5}
            for k, v in enumerate(("base", "dapt", "tapt", "dapt_tapt")):
                row[f"{v}_mean"], row[f"{v}_std"] = 80.0 + i + k * 0.51 - j, 0.1 * (k + 1)
            rows.append(row)
            rows.append({**row, "row": "ensemble"})
    return pd.DataFrame(rows)


PAPER_CONFIG = {
    "tasks": {
        "chemprot": {"domain": "biomed"},
        "rct": {"domain": "biomed"},
        "hyperpartisan": {"domain": "news"},
        "ag_news": {"domain": "news"},
    },
    "models": {"roberta": {}},
    "methods": {"full": {}, "lora": {}},
    "report": {
        "labels": {
            "variants": {"base": "RoBERTa", "dapt": "DAPT", "tapt": "TAPT", "dapt_tapt": "DAPT + TAPT"},
            "tasks": {"chemprot": "ChemProt", "rct": "RCT", "ag_news": "AGNews"},
            "domains": {"biomed": "BioMed", "news": "News"},
        }
    },
}


def test_paper_layout_table_reads_like_table_5():
    from dapt.report import render_paper_latex

    tex = render_paper_latex(_paper_table(), ["base", "dapt", "tapt", "dapt_tapt"], PAPER_CONFIG)
    lines = tex.splitlines()
    assert "Domain & Task & RoBERTa & DAPT & TAPT & DAPT + TAPT \\\\" in lines
    body = [line for line in lines if line.count("&") == 5 and "$_{" in line]
    # tasks in config order within domains, the domain named on its first row; one rule between domains
    assert [line.split(" & ")[:2] for line in body] == [
        ["BioMed", "ChemProt"],
        ["", "RCT"],
        ["News", "hyperpartisan"],
        ["", "AGNews"],
    ]
    assert lines[lines.index(body[2]) - 1] == "\\midrule" and lines[lines.index(body[1]) - 1] == body[0]
    assert body[0].split(" & ")[2:] == ["80.0$_{0.1}$", "80.5$_{0.2}$", "81.0$_{0.3}$", "\\textbf{81.5}$_{0.4}$ \\\\"]
    assert "\\multicolumn" not in tex  # one model and one method: no block headings
    caption = next(line for line in lines if line.startswith("\\caption"))
    assert "test macro-F1, except for ChemProt and RCT, for which we report micro-F1" in caption
    assert "averages across 5 random seeds, with standard deviations as subscripts" in caption
    assert "Results of RoBERTa, DAPT, TAPT and DAPT + TAPT" in caption

    two = render_paper_latex(_paper_table(("full", "lora")), ["base", "dapt", "tapt", "dapt_tapt"], PAPER_CONFIG)
    heads = [line for line in two.splitlines() if line.startswith("\\multicolumn")]
    assert heads == [
        "\\multicolumn{6}{l}{\\textit{roberta, full}} \\\\",
        "\\multicolumn{6}{l}{\\textit{roberta, lora}} \\\\",
    ]
    assert sum(line.startswith("BioMed & ChemProt") for line in two.splitlines()) == 2


def test_report_labels_must_name_the_studys_things():
    from dapt.study import config as study

    config = {
        "models": {"m": {"source": {"kind": "local", "path": "m"}}},
        "tasks": {"t": {"source": {"kind": "local", "path": "t.csv"}, "domain": "bio"}},
        "corpora": {"bio": {"source": {"kind": "local", "path": "b.txt"}}},
        "variants": {"base": [], "dapt": ["dapt"]},
        "pretrain": {"dapt": {"max_steps": 1}},
        "methods": {"full": {}},
        "seeds": [1],
        "report": {"labels": {"variants": {"base": "RoBERTa"}, "domains": {"bio": "BioMed"}}},
    }
    study.validate_config(config, "study.yaml")
    config["report"]["labels"]["tasks"] = {"tt": "T"}
    with pytest.raises(UserError, match=r"study.yaml: report.labels.tasks.tt: not one of the study's tasks"):
        study.validate_config(config, "study.yaml")
    config["report"]["labels"]["tasks"] = {"t": 3}
    with pytest.raises(UserError, match=r"report.labels.tasks.t"):
        study.validate_config(config, "study.yaml")


def test_renderers_format_the_numbers_and_bold_visible_ties():
    """The table holds numbers; bold marks come from them as displayed (80.04 and 80.01 both show 80.0)."""
    row = {
        "task": "t",
        "metric": "macro_f1",
        "model": "m",
        "method": "full",
        "row": "seeds",
        "n_seeds": "3",
        "base_mean": 80.04,
        "base_std": 1.26,
        "base_n": 3,
        "dapt_mean": 80.01,
        "dapt_std": 0.5,
        "dapt_n": 3,
        "tapt_mean": float("nan"),
        "tapt_std": float("nan"),
        "tapt_n": 0,
        "p_dapt": 0.5,
        "p_tapt": float("nan"),
        "trainable_pct": 100.0,
        "trainable_params": 1e6,
        "finetune_wall_s": 12.34,
        "peak_memory_mb": 900.0,
    }
    nan = float("nan")
    table = pd.DataFrame([row, {**row, "row": "ensemble", "base_mean": 79.0, "base_std": nan, "dapt_std": nan}])
    variants = ["base", "dapt", "tapt"]
    cells = _md_rows(report.render_markdown(table, variants, "base", "", "", 100, 0))[2]
    assert cells[4:7] == ["**80.0 ± 1.3**", "**80.0 ± 0.5**", "–"]
    assert cells[7:] == ["0.5000", "", "100", "12.3", "900", "3"]
    ens = _md_rows(report.render_markdown(table, variants, "base", "", "", 100, 0))[3]
    assert ens[4:7] == ["79.0", "**80.0**", "–"]
    tex = report.render_latex(table, variants, 100, 0)
    assert "\\textbf{80.0}$_{\\pm 1.3}$ & \\textbf{80.0}$_{\\pm 0.5}$ &  & 100 & 12.3 & 900 & 3 \\\\" in tex
    csv = report.render.table_csv(table, variants)
    assert list(csv.columns[:9]) == ["task", "metric", "model", "method", "row", "base", "dapt", "tapt", "best"]
    assert list(csv["best"]) == ["base dapt", "dapt"] and list(csv["tapt"]) == ["–", "–"]


# ------------------------------------------------------------------------------------------------
# The classical baseline (scripts/baseline.py's metrics.json): a row beside the majority class.


def _write_baseline(root: Path, task: str, c: float, scores: dict, n_test: int = N_TEST) -> Path:
    path = root / "results" / "baseline" / task / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "task": task,
                "method": "tfidf_lr",
                "C": c,
                "validation": {"1": 0.5, "10": 0.6},
                "n_test": n_test,
                "n_train": 800,
                **scores,
            }
        )
    )
    return path


def test_baseline_row_beside_the_majority_class(small_study):
    scores = {
        "rt_polarity": {"accuracy": 0.71, "macro_f1": 0.6843, "micro_f1": 0.71},
        "topic": {"accuracy": 0.5512, "macro_f1": 0.4, "micro_f1": 0.5512},
    }
    paths = [str(_write_baseline(small_study, t, c, scores[t])) for t, c in (("rt_polarity", 10.0), ("topic", 0.1))]
    out = small_study / "out"
    _load_script().main([*_cli_args(small_study, out), "--bootstrap-resamples", "50", "--baseline", *paths])
    table = pd.read_csv(out / "table.csv")
    for task, c in (("rt_polarity", 10), ("topic", 0.1)):
        rows = table[table.task == task]
        assert list(rows["row"])[-2:] == ["majority", "baseline"]
        row = rows.iloc[-1]
        assert row["method"] == f"TF-IDF + LR (C={c:g})" and row["best"] != row["best"]  # NaN: compares nothing
        assert row["base_mean"] == pytest.approx(100 * scores[task][TASKS[task][1]]) and np.isnan(row["dapt_mean"])
    md = (out / "table.md").read_text()
    assert "| TF-IDF + LR (C=10) | baseline | 68.4 |" in md and "Row *baseline*: TF-IDF" in md
    tex = (out / "table.tex").read_text()
    assert "TF-IDF + LR (C=0.1) & 55.1" in tex and "TF-IDF + LR: word 1--2-gram" in tex
    base = pd.read_csv(out / "baseline.csv")
    assert list(base["task"]) == ["rt_polarity", "topic"] and list(base["C"]) == [10.0, 0.1]
    assert list(base["score"]) == [0.6843, 0.5512]
    _write_baseline(small_study, "topic", 0.1, scores["topic"], n_test=N_TEST - 1)
    with pytest.raises(UserError, match=r"topic/metrics\.json: scored on 239 test examples"):
        _load_script().main([*_cli_args(small_study, small_study / "out2"), "--baseline", *paths])
