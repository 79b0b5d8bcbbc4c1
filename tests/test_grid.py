"""The study grid: models x variants x tasks x methods x seeds, with per-task and per-method
overrides, plans fast at paper scale (a dry run, no data needed), and the overrides reach the jobs."""

from __future__ import annotations

import json
import re
import resource
import shlex
import subprocess
import sys
import time

import pytest
from conftest import REPO, make_workdir, run_snakemake

from dapt.study import defaults

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def grid_config(n_tasks: int = 5, n_models: int = 2, n_seeds: int = 5) -> dict:
    """A made-up study of local sources (never read by a dry run): 5 tasks x 2 models x 4 variants
    x 5 methods x 5 seeds = 1,000 runs, i.e. 2,000 fine-tune and evaluate jobs, plus pretraining."""
    tasks = {
        f"task{i}": {"source": {"kind": "local", "path": f"data/task{i}.csv"}, "max_length": 64 + 32 * (i % 3)}
        for i in range(n_tasks)
    }
    if n_tasks >= 3:
        tasks["task1"]["finetune"] = {"lr": 7.0e-5, "epochs": 4}
        tasks["task2"]["methods"] = {"lora": {"lr": 4.0e-4, "r": 16}}
        tasks["task2"]["metric"] = "micro_f1"
    return {
        "models": {f"model{i}": {"source": {"kind": "local", "path": f"models/m{i}"}} for i in range(n_models)},
        "corpora": {
            "bio": {"source": {"kind": "local", "path": "data/bio.jsonl"}},
            "news": {"source": {"kind": "local", "path": "data/news.jsonl"}},
        },
        "tasks": tasks,
        "variants": {"base": [], "dapt": ["dapt:bio"], "tapt": ["tapt"], "dapt_tapt": ["dapt:bio", "tapt"]},
        "pretrain": {"dapt": {"max_steps": 100}, "tapt": {"epochs": 2}},
        "finetune": {"lr": 2.0e-5, "epochs": 3},
        "methods": {
            "full": {},
            "lora": {"lr": 1.0e-3, "r": 8},
            "adapter": {"lr": 1.0e-4, "reduction_factor": 16},
            "lora_r4": {"kind": "lora", "r": 4},
            "head": {"lr": 1.0e-3},
        },
        "seeds": list(range(1, n_seeds + 1)),
        "precision": "auto",
    }


def _jobs(stdout: str) -> dict[str, int]:
    """The job-count table of a dry run: rule -> count."""
    counts = {}
    table = stdout.split("Job stats:")[-1]
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_thousand_run_grid_dry_runs_fast(tmp_path):
    """Target: under 10 s. Measured as the CPU time of the snakemake process, which is what the
    workflow controls; the wall time on a shared machine also counts the other jobs' load. (Profiled:
    the workflow's own input functions and params are ~2% of it; the rest is Snakemake's per-job
    bookkeeping, ~3 ms a job.)"""
    workdir = make_workdir(tmp_path / "grid", grid_config())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = run_snakemake(workdir, "-n", "--quiet", "rules")
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout + proc.stderr)
    print(f"dry run of {jobs.get('total')} jobs: {cpu:.1f}s CPU, {elapsed:.1f}s wall ({jobs})")
    assert jobs["finetune"] == jobs["evaluate"] == 5 * 2 * 4 * 5 * 5
    # pretraining: a DAPT chain per model, and TAPT / DAPT+TAPT chains per model and task
    assert jobs["pretrain"] == 2 * (1 + 5 + 5)
    assert jobs["total"] > 2000
    assert cpu < 10, f"planning {jobs['total']} jobs took {cpu:.1f}s of CPU (target < 10 s)"
    assert elapsed < 60, f"planning {jobs['total']} jobs took {elapsed:.1f}s"


OVERRIDES = [
    ("task0", "full", {"lr": 2.0e-5, "epochs": 3, "kind": "full", "max_length": 64, "metric": "macro_f1"}),
    # tasks.<t>.finetune beats finetune
    ("task1", "full", {"lr": 7.0e-5, "epochs": 4, "max_length": 96}),
    # methods.<m> beats tasks.<t>.finetune; tasks.<t>.finetune still sets what the method does not
    ("task1", "lora", {"lr": 1.0e-3, "epochs": 4, "r": 8, "kind": "lora"}),
    # tasks.<t>.methods.<m> beats methods.<m>
    ("task2", "lora", {"lr": 4.0e-4, "r": 16, "epochs": 3, "metric": "micro_f1", "max_length": 128}),
    # a method entry with its own kind
    ("task2", "lora_r4", {"kind": "lora", "r": 4, "lr": 2.0e-5}),
    ("task0", "adapter", {"kind": "adapter", "reduction_factor": 16, "lr": 1.0e-4}),
]


@pytest.fixture(scope="module")
def printed_params(tmp_path_factory) -> dict:
    """(task, method) -> the hyperparameters its finetune job is given, read from the commands that
    one `snakemake -n -p` prints for those runs."""
    workdir = make_workdir(tmp_path_factory.mktemp("grid"), grid_config(n_tasks=3, n_models=1, n_seeds=1))
    targets = [f"results/finetune/{t}/model0/base/{m}/seed1/train.json" for t, m, _ in OVERRIDES]
    proc = run_snakemake(workdir, "-n", "-p", *targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if "finetune.py" in line and "--params" in line:
            args = shlex.split(line)
            task, _, _, method, _ = args[args.index("--out") + 1].split("/")[-5:]
            found[task, method] = json.loads(args[args.index("--params") + 1])
    assert set(found) == {(t, m) for t, m, _ in OVERRIDES}, sorted(found)
    return found


@pytest.mark.parametrize("task, method, expected", OVERRIDES)
def test_overrides_land_in_the_jobs_params(printed_params, task, method, expected):
    params = printed_params[task, method]
    assert {k: params.get(k) for k in expected} == expected


def test_paper_config_dry_runs():
    """config/paper.yaml (Don't Stop Pretraining, Table 5) plans without downloading anything."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            *SNAKEMAKE,
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            tmp,
            "--configfile",
            str(REPO / "config" / "paper.yaml"),
            "--cores",
            "2",
            "-n",
            "--quiet",
            "rules",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr[-3000:]
        jobs = _jobs(proc.stdout + proc.stderr)
        print(f"paper dry run: {jobs.get('total')} jobs in {elapsed:.1f}s ({jobs})")
        # 8 tasks x 1 model x 4 variants x methods x 5 seeds
        from dapt.study.config import read_yaml

        paper = read_yaml(REPO / "config" / "paper.yaml")
        runs = (
            len(paper["tasks"])
            * len(paper["models"])
            * len(paper["variants"])
            * len(paper["methods"])
            * len(paper["seeds"])
        )
        assert jobs["finetune"] == jobs["evaluate"] == runs
        assert not list(Path(tmp).glob("results/**/*.parquet"))  # nothing was downloaded


def test_bare_dapt_pretrains_each_task_on_its_own_domain():
    from dapt.core.errors import UserError
    from dapt.study import config as study

    config = grid_config(n_tasks=3, n_models=1, n_seeds=1)
    config["variants"] = {"base": [], "dapt": ["dapt"], "dapt_tapt": ["dapt", "tapt"], "news": ["dapt:news"]}
    for task, domain in (("task0", "bio"), ("task1", "bio"), ("task2", "news")):
        config["tasks"][task]["domain"] = domain
    study.validate_config(config)
    assert study.chain_for(config, "dapt", "task0") == study.chain_for(config, "dapt", "task1") == "dapt-bio"
    assert study.chain_for(config, "dapt_tapt", "task2") == "dapt-news+tapt-task2"
    assert study.chain_for(config, "news", "task0") == "dapt-news"  # an explicit corpus is kept
    del config["tasks"]["task1"]["domain"]
    with pytest.raises(UserError, match="tasks.task1.domain.*missing"):
        study.validate_config(config)
    config["tasks"]["task1"]["domain"] = "law"
    with pytest.raises(UserError, match="unknown corpus 'law'"):
        study.validate_config(config)


def test_method_variants_restrict_the_grid(tmp_path):
    """`methods.<m>.variants` (and its per-task override) choose the variants a method runs on; a
    variant that no run uses is not pretrained; the variants' names are checked."""
    from dapt.core.errors import UserError
    from dapt.study import config as study

    config = grid_config(n_tasks=3, n_models=1, n_seeds=2)
    config["methods"] = {"full": {}, "adapter": {"variants": ["dapt_tapt", "base"]}, "head": {"variants": ["base"]}}
    config["tasks"]["task2"]["methods"] = {"adapter": {"variants": ["tapt"]}}
    config["variants"]["news"] = ["dapt:news"]  # only full runs on it
    study.validate_config(config)
    assert study.method_variants(config, "task0", "adapter") == ["base", "dapt_tapt"]  # config order
    assert study.method_variants(config, "task2", "adapter") == ["tapt"]
    assert study.method_variants(config, "task0", "full") == list(config["variants"])
    assert "variants" not in study.finetune_params(config, "task0", "adapter")  # not a training key

    proc = run_snakemake(make_workdir(tmp_path / "grid", config), "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout + proc.stderr)
    # full: 3 tasks x 5 variants; adapter: 2 + 2 + 1 variants; head: 3 x base; x 2 seeds
    assert jobs["finetune"] == jobs["evaluate"] == (15 + 5 + 3) * 2
    # dapt-bio, dapt-news, and tapt + dapt-bio+tapt for each task: news is pretrained for full only
    assert jobs["pretrain"] == 2 + 3 * 2

    config["methods"]["full"]["variants"] = ["base"]
    config["methods"]["adapter"]["variants"] = ["base"]
    del config["tasks"]["task2"]["methods"]
    proc = run_snakemake(make_workdir(tmp_path / "base_only", config), "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout + proc.stderr)
    assert jobs["finetune"] == 3 * 3 * 2 and "pretrain" not in jobs  # nothing to pretrain

    config["methods"]["head"]["variants"] = ["base", "dpat"]
    with pytest.raises(UserError, match=r"methods\.head\.variants\[1\]: unknown variant 'dpat'"):
        study.validate_config(config)
    config["methods"]["head"]["variants"] = ["base"]
    config["tasks"]["task0"]["methods"] = {"head": {"variants": []}}
    with pytest.raises(UserError, match=r"tasks\.task0\.methods\.head\.variants"):
        study.validate_config(config)


@pytest.mark.parametrize(
    "path",
    [
        "config/config.yaml",
        "config/paper.yaml",
        "config/examples/peft.yaml",
        "config/examples/long_reviews.yaml",
        "config/examples/learning_curve.yaml",
        "config/examples/knn_tapt.yaml",
        "config/examples/prune.yaml",
        "tests/config/tiny.yaml",
    ],
)
def test_shipped_configs_read_strictly_and_validate(path):
    """The shipped studies have no key given twice and pass the checks every run makes."""
    from dapt.study import config as study

    config = study.read_yaml(REPO / path)
    study.validate_config(config, path)
    assert all(study.method_kind(config, m) in defaults.METHOD_KINDS for m in config["methods"])


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    """PyYAML keeps the last of two equal keys; read_yaml names the second one's line instead. A
    merge key (<<) may still be overridden, as YAML intends."""
    from dapt.core.errors import UserError
    from dapt.study import config as study

    path = tmp_path / "s.yaml"
    path.write_text("methods:\n  full: {}\n  lora:\n    r: 8\n    lr: 1.0e-3\n    r: 16\nseeds: [1]\n")
    with pytest.raises(UserError) as err:
        study.read_yaml(path)
    assert str(err.value) == f"{path}: line 6: key 'r' given twice"
    path.write_text("base: &b {lr: 1.0e-3, r: 8}\nlora:\n  <<: *b\n  r: 16\n")
    assert study.read_yaml(path)["lora"] == {"lr": 1.0e-3, "r": 16}


def test_unknown_method_kinds_are_refused_naming_the_known_ones():
    from dapt.core.errors import UserError
    from dapt.study import config as study

    config = grid_config(n_tasks=3, n_models=1, n_seeds=1)
    study.validate_config(config)  # every kind of the grid is known (lora_r4 has kind: lora)
    for methods, key in (({"qlora": {}}, "methods.qlora"), ({"m": {"kind": "qlora"}}, "methods.m.kind")):
        config["methods"] = {**config["methods"], **methods}
        with pytest.raises(UserError) as err:
            study.validate_config(config, "study.yaml")
        assert str(err.value).startswith(f"study.yaml: {key}: ") and "'qlora'" in str(err.value)
        assert ", ".join(defaults.METHOD_KINDS) in str(err.value)
        config["methods"] = {m: spec for m, spec in config["methods"].items() if m not in methods}
    assert (
        study.task_max_length(config, "task0") == 64
        and study.finetune_params(config, "task0", "full")["max_length"] == 64
    )
    del config["tasks"]["task0"]["max_length"]
    assert study.task_max_length(config, "task0") == study.finetune_params(config, "task0", "full")["max_length"] == 128


def test_learning_curve_example_dry_runs(tmp_path):
    """config/examples/learning_curve.yaml: 3 sizes x 4 variants x 3 seeds of full fine-tuning, one
    prepared task, tokenization and pretraining shared by the sizes, one baseline job."""
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "examples" / "learning_curve.yaml"),
        "--cores",
        "2",
        "-n",
        "--quiet",
        "rules",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(proc.stdout + proc.stderr)
    assert jobs["finetune"] == jobs["evaluate"] == 3 * 4 * 3
    assert jobs["prepare_task"] == jobs["baseline"] == jobs["report"] == 1
    assert jobs["pretrain"] == 3  # dapt-imdb, tapt-rt_polarity, dapt-imdb+tapt-rt_polarity: once for every size
