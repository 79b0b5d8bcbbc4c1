"""The domain examples (config/examples/{medical,finance,education}.yaml): each is a valid study of
the paper's design (RoBERTa, base/DAPT/TAPT/DAPT+TAPT, full + LoRA, five seeds) on hub data, and
its dry run plans every step, with as many jobs as its config asks for.

A dry run reads no data: the hub is not contacted, so these tests run offline. What the hub would
serve (ids, revisions, columns) is checked by hand and recorded in each file's comments; that every
source is pinned (a hub commit, or a file's sha256) is checked here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, SNAKEMAKE

from dapt.study import config as study

EXAMPLES = ["config/examples/medical.yaml", "config/examples/finance.yaml", "config/examples/education.yaml"]
# every step of a study, from the downloads (prepare_*) to the report
RULES = [
    "prepare_model",
    "prepare_corpus",
    "prepare_task",
    "tokenize_corpus",
    "tokenize_task",
    "pretrain",
    "finetune",
    "evaluate",
    "report",
]


def _sources(config: dict) -> list[tuple[str, dict]]:
    """Every source of the study, with the config key it sits under."""
    out = [(f"models.{m}.source", spec["source"]) for m, spec in config["models"].items()]
    out += [(f"corpora.{c}.source", spec["source"]) for c, spec in (config.get("corpora") or {}).items()]
    for task, spec in config["tasks"].items():
        if "source" in spec:
            out.append((f"tasks.{task}.source", spec["source"]))
        out += [(f"tasks.{task}.sources.{split}", src) for split, src in (spec.get("sources") or {}).items()]
    return out


def _unpinned(config: dict) -> list[str]:
    """The config keys of sources whose content is not fixed: a hub source without a full 40-hex
    `revision`, a url source without a sha256 or not a hub file at a commit."""
    commit, digest = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")
    hub_file = re.compile(r"https://huggingface\.co/datasets/[^/]+/[^/]+/resolve/[0-9a-f]{40}/\S+")
    bad = []
    for where, source in _sources(config):
        if source["kind"] == "hf":
            pinned = "/" in source["id"] and commit.fullmatch(str(source.get("revision", "")))
        else:
            pinned = (
                source["kind"] == "url"
                and digest.fullmatch(str(source.get("sha256", "")))
                and hub_file.fullmatch(source["url"])
            )
        if not pinned:
            bad.append(where)
    return bad


def _chains(config: dict) -> list[list[str]]:
    """The MLM stages of every (task, variant) that some method fine-tunes on, bare "dapt"
    resolved to the task's domain corpus: the plan's pretraining chains."""
    chains = []
    for task, spec in config["tasks"].items():
        used = {v for m in config["methods"] for v in study.method_variants(config, task, m)}
        for variant in sorted(used):
            stages = [f"dapt:{spec['domain']}" if s == "dapt" else s for s in config["variants"][variant]]
            chains.append([s.replace(":", "-") if s.startswith("dapt:") else f"{s}-{task}" for s in stages])
    return chains


def _expected_jobs(config: dict) -> dict[str, int]:
    """Job counts the config asks for, counted from its own keys (no sweeps, no learning curves)."""
    per_task = [len(study.method_variants(config, t, m)) for t in config["tasks"] for m in config["methods"]]
    runs = sum(per_task) * len(config["models"]) * len(config["seeds"])
    chains = _chains(config)
    prefixes = {tuple(c[: i + 1]) for c in chains for i in range(len(c))}
    stages = {s for c in chains for s in c}
    n_models = len(config["models"])
    return {
        "finetune": runs,
        "evaluate": runs,
        "pretrain": len(prefixes) * n_models,
        "tokenize_corpus": len(stages) * n_models,
        "tokenize_task": len(config["tasks"]) * n_models,
        "prepare_model": n_models,
        "prepare_task": len(config["tasks"]),
        "prepare_corpus": len({spec["domain"] for spec in config["tasks"].values()}),
        "report": 1,
    }


@pytest.mark.parametrize("path", EXAMPLES)
def test_domain_example_is_the_papers_design_on_hub_data(path):
    """Valid by the checks every run makes, and the design the issue asks for: a hub RoBERTa, a hub
    corpus per task domain, the four variants, full + LoRA, seeds 1-5, every source pinned."""
    config = study.read_yaml(REPO / path)
    study.validate_config(config, path)
    assert config["variants"] == {"base": [], "dapt": ["dapt"], "tapt": ["tapt"], "dapt_tapt": ["dapt", "tapt"]}
    assert sorted(study.method_kind(config, m) for m in config["methods"]) == ["full", "lora"]
    assert config["seeds"] == [1, 2, 3, 4, 5]
    for task, spec in config["tasks"].items():
        assert spec["domain"] in config["corpora"], task
    assert config["models"]["roberta_base"]["source"]["id"] == "FacebookAI/roberta-base"
    assert _unpinned(config) == []
    text = (REPO / path).read_text()
    assert "not checked offline (hub unreachable)" not in text
    assert "icense" in text.split("\n\n")[0], "the header states the data's licenses"


@pytest.mark.parametrize("path", EXAMPLES)
def test_removing_a_pin_is_caught(path):
    """The pin check can fail: each source of each example, its revision or sha256 taken away (or
    its URL pointed at a branch), is reported by the key it sits under."""
    config = study.read_yaml(REPO / path)
    for where, source in _sources(config):
        saved = dict(source)
        if source["kind"] == "hf":
            del source["revision"]
            assert _unpinned(config) == [where]
            source["revision"] = "main"
        else:
            del source["sha256"]
            assert _unpinned(config) == [where]
            source["sha256"] = saved["sha256"]
            source["url"] = re.sub(r"/resolve/[0-9a-f]{40}/", "/resolve/main/", source["url"])
        assert _unpinned(config) == [where]
        source.clear()
        source.update(saved)
    assert _unpinned(config) == []


@pytest.mark.parametrize("path", EXAMPLES)
def test_domain_example_dry_run_plans_every_step(path, tmp_path):
    """`snakemake -n` plans downloads, tokenization, pretraining, fine-tuning, evaluation and the
    report, with the job counts the config implies (not numbers written here)."""
    config = study.read_yaml(REPO / path)
    proc = subprocess.run(
        [
            *SNAKEMAKE,
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(REPO / path),
            "--cores",
            "1",
            "-n",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    plan = proc.stdout + proc.stderr
    assert proc.returncode == 0, plan[-3000:]
    stats = plan.split("Job stats:")[-1]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    for rule in RULES:
        assert counts.get(rule, 0) >= 1, f"{path}: no {rule} job planned"
    expected = _expected_jobs(config)
    assert {rule: counts.get(rule, 0) for rule in expected} == expected, plan[-3000:]
    model = next(iter(config["models"]))
    for chain in _chains(config):  # the chains pretrain on the task's own domain corpus
        if chain:
            assert f"results/pretrain/{model}/{'+'.join(chain)}/model" in plan, chain


def test_expected_job_counts_follow_the_config():
    """The counting the dry-run test relies on moves with the config: one seed and one method fewer
    and a method restricted to two variants give the smaller grid."""
    config = study.read_yaml(REPO / EXAMPLES[0])
    full = _expected_jobs(config)
    config["seeds"] = [1, 2]
    config["methods"]["lora"]["variants"] = ["base", "dapt_tapt"]
    small = _expected_jobs(config)
    assert small["finetune"] == len(config["tasks"]) * (4 + 2) * 2 < full["finetune"]
    assert small["pretrain"] == full["pretrain"] == 3  # dapt-<domain>, tapt-<task>, dapt-<domain>+tapt-<task>
    config["methods"]["full"]["variants"] = ["base"]
    config["methods"]["lora"]["variants"] = ["base"]
    assert _expected_jobs(config)["pretrain"] == 0


def test_readme_lists_the_domain_examples():
    """The docs page, which the README links to, and config/README.md name every domain example, so a
    reader finds them."""
    assert "docs/domain-examples.md" in (REPO / "README.md").read_text()
    page = (REPO / "docs" / "domain-examples.md").read_text()
    for path in EXAMPLES:
        assert path in page, path
        assert Path(path).name in (REPO / "config" / "README.md").read_text(), path
