"""The study-level benchmark: the reduced default grid (bench/study_reduced.yaml: one seed; DAPT, TAPT and
DAPT+TAPT chains; full fine-tuning on the four variants, LoRA and the linear probe on base and
DAPT+TAPT; evaluation on the test split) run two ways on this machine, one after the other, each from
an empty folder:

(a) the workflow: ``snakemake --cores 2 --until evaluate`` with that config;
(b) the Hugging Face example scripts chained as a user's shell script would chain them
    (bench/study_script.py writes it): ``run_mlm.py`` per pretraining chain, ``run_classification.py
    --do_train --do_eval --do_predict`` per full fine-tuning run, and a short peft script
    (bench/study_peft.py) per LoRA or probe run, which the example scripts cannot do.

Both sides start from the data the workflow prepares (model folder, corpus, task splits): that step
runs first, once, and is reported apart. The recipe side's conversion of it into the files the scripts
read (bench/study_to_files.py) counts on the recipe side. For each side: wall time, CPU seconds of
the whole process tree, peak memory (bench/study_measure.py), and the test macro-F1 of every run. The
last line is ``study_speedup=<recipe wall / workflow wall> study_cpu_ratio=<recipe CPU s / workflow
CPU s>``; a JSON record of the run goes to ``--json`` (bench/record.py).

The example scripts are not in this repository. Get them at the tag of the installed transformers, and
the accuracy metric that ``evaluate.load("accuracy")`` fetches from the Hub, at the tag of the installed
evaluate, into one folder::

    git clone --depth 1 --branch v5.23.0 https://github.com/huggingface/transformers
    git clone --depth 1 --branch v0.4.6 https://github.com/huggingface/evaluate
    mkdir -p recipes/accuracy
    cp transformers/examples/pytorch/language-modeling/run_mlm.py recipes/
    cp transformers/examples/pytorch/text-classification/run_classification.py recipes/
    cp evaluate/metrics/accuracy/accuracy.py recipes/accuracy/

Both scripts import ``evaluate`` (``pip install evaluate``). Offline, ``evaluate.load("accuracy")`` reads
``./accuracy/accuracy.py`` before it asks the Hub: the generated script copies the folder into its
working directory and sets HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and HF_EVALUATE_OFFLINE.

    .venv/bin/python bench/bench_study.py --recipes recipes               # full size: expected 40-60 min on 2 cores
    .venv/bin/python bench/bench_study.py --recipes recipes --scale tiny  # smoke test: a few minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import record  # noqa: E402
import study_report  # noqa: E402
import study_script  # noqa: E402
from study_measure import measure  # noqa: E402

RECIPE_FILES = ("run_mlm.py", "run_classification.py", "accuracy/accuracy.py")
PREPARE_RULES = ("prepare_model", "prepare_corpus", "prepare_task")


def tiny(cfg: dict) -> dict:
    """The smoke-test grid: every kind of job once (DAPT, TAPT on DAPT; full, LoRA, probe) at toy sizes."""
    cfg = copy.deepcopy(cfg)
    for corpus in cfg["corpora"].values():
        corpus["max_docs"] = 60
    for task in cfg["tasks"].values():
        task["carve"] = {"test": 64, "validation": 32}
        task["max_examples"] = {"train": 64}
    cfg["variants"] = {v: s for v, s in cfg["variants"].items() if v in ("base", "dapt_tapt")}
    cfg["pretrain"]["dapt"].update(max_steps=3, head_warmup_steps=1, save_steps=2)
    cfg["pretrain"]["tapt"].update(epochs=1, head_warmup_steps=1, save_steps=2)
    cfg["finetune"]["epochs"] = 1
    cfg["methods"] = {"full": {}, "lora": {**cfg["methods"]["lora"], "variants": ["dapt_tapt"]}}
    cfg["methods"]["head"] = {"lr": 1.0e-2, "variants": ["base"]}
    return cfg


def recipes_missing(folder: str | None) -> list[str]:
    """The files of RECIPE_FILES that `folder` lacks (all of them when it is not given)."""
    if not folder:
        return list(RECIPE_FILES)
    return [f for f in RECIPE_FILES if not (Path(folder) / f).is_file()]


def recipe_provenance(folder: str) -> dict:
    """Which example scripts ran: each file's sha256 and the transformers version it asks for, and the
    installed evaluate (the scripts import it; not in bench/record.py's package list)."""
    import hashlib
    import re
    from importlib import metadata

    out: dict = {"evaluate": metadata.version("evaluate")}
    for name in RECIPE_FILES:
        text = (Path(folder) / name).read_text()
        found = re.search(r'^check_min_version\("([^"]+)"\)', text, re.M)
        out[name] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "min_version": found and found.group(1)}
    return out


def snakemake_cmd(cfg_path: Path, cores: int, until: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("snakemake")
    return [str(exe), "-s", str(REPO / "Snakefile"), "--configfile", str(cfg_path), "--cores", str(cores)] + [
        "--until",
        *until,
    ]


def resolved_precision(wf: Path, cfg: dict) -> str:
    """The precision the workflow's fine-tuning jobs resolved ("auto" decides per machine)."""
    from dapt.study import grid, layout

    seen = {json.loads((wf / layout.FINETUNE_TRAIN.format(**r)).read_text())["precision"] for r in grid.runs(cfg)}
    if len(seen) != 1:
        raise RuntimeError(f"the workflow's runs used different precisions: {sorted(seen)}")
    return seen.pop()


def run_side_workflow(work: Path, cfg_path: Path, cores: int, env: dict) -> tuple[dict, dict]:
    """The shared preparation (reported apart), then the workflow up to evaluation, from an empty folder."""
    from dapt.study import layout

    wf = work / "workflow"
    shutil.rmtree(wf, ignore_errors=True)
    cache = wf / layout.CACHE
    cache.parent.mkdir(parents=True)
    downloads = work / "downloads"  # kept between runs: the downloads are not what is measured
    downloads.mkdir(exist_ok=True)
    cache.symlink_to(downloads, target_is_directory=True)
    print("shared preparation (model, corpus, task splits) ...", flush=True)
    prep = measure(snakemake_cmd(cfg_path, cores, list(PREPARE_RULES)), wf, work / "logs" / "prepare.log", env)
    print(f"  {prep['wall_s']:.0f} s; workflow side: snakemake --cores {cores} --until evaluate ...", flush=True)
    side = measure(snakemake_cmd(cfg_path, cores, ["evaluate"]), wf, work / "logs" / "workflow.log", env)
    return prep, side


def recipe_commands(work: Path, cfg: dict, precision: str) -> list:
    from dapt.study import layout

    model_dir = str(work / "workflow" / layout.MODEL.format(model=next(iter(cfg["models"]))))
    commands = study_script.mlm_commands(cfg, next(iter(cfg["tasks"])), model_dir, precision)
    return commands + study_script.finetune_commands(cfg, model_dir, precision)


def rescore(path: Path, argv: list[str]) -> dict:
    """Score a finished run's predictions again (the scoring code changed, the runs did not): the record
    keeps its command, commit, machine and times, and gains `rescored` (this command, its commit, date)."""
    import datetime

    rec = json.loads(path.read_text())
    res = rec["results"]
    work = path.parent
    res["runs"] = study_report.scores(work, res["config"], recipe_commands(work, res["config"], res["precision"]))
    res.setdefault("recipe_steps", study_report.recipe_steps(work / "recipes"))
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rec["rescored"] = {"command": " ".join(["python", *argv]), "commit": record.commit(), "date": when}
    path.write_text(json.dumps(rec, indent=2, default=float) + "\n")
    return res


def run_side_recipes(work: Path, cfg: dict, recipes: Path, precision: str, env: dict) -> tuple[dict, list]:
    from dapt.study import layout

    wf, rc = work / "workflow", work / "recipes"
    shutil.rmtree(rc, ignore_errors=True)
    rc.mkdir(parents=True)
    corpus = next(iter(cfg["corpora"]))
    task = next(iter(cfg["tasks"]))
    commands = recipe_commands(work, cfg, precision)
    text = study_script.script_text(
        commands,
        python=sys.executable,
        recipes=recipes.resolve(),
        peft_script=HERE / "study_peft.py",
        to_files=HERE / "study_to_files.py",
        corpus=str(wf / layout.CORPUS.format(corpus=corpus)),
        task_dir=str(wf / layout.TASK.format(task=task)),
    )
    (work / "run_recipes.sh").write_text(text)  # kept outside the measured folder, for reading
    (rc / "run_recipes.sh").write_text(text)
    print(f"recipe side: bash run_recipes.sh ({len(commands)} runs, {precision}) ...", flush=True)
    side = measure(["bash", "run_recipes.sh"], rc, work / "logs" / "recipes.log", env)
    return side, commands


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--recipes",
        default=os.environ.get("DAPT_RECIPES_DIR"),
        help="folder with run_mlm.py, run_classification.py and accuracy/accuracy.py (default: $DAPT_RECIPES_DIR)",
    )
    p.add_argument("--config", default=str(HERE / "study_reduced.yaml"), help="the grid (default: %(default)s)")
    p.add_argument("--scale", choices=("full", "tiny"), default="full", help="tiny: the smoke test's toy sizes")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores (default: %(default)s)")
    p.add_argument("--workdir", default=str(REPO / "results" / "bench_study"), help="(emptied per side)")
    p.add_argument("--json", help="the run's record (default: <workdir>/study.json)")
    p.add_argument("--rescore", metavar="RECORD", help="score a finished run's predictions again (its study.json)")
    args = p.parse_args(argv)
    if args.rescore:
        results = rescore(Path(args.rescore), [sys.argv[0], *(argv or sys.argv[1:])])
        print(study_report.table(results))
        print(f"study_speedup={results['study_speedup']:.2f} study_cpu_ratio={results['study_cpu_ratio']:.2f}")
        return results
    missing = recipes_missing(args.recipes)
    if missing:
        p.error(f"--recipes: {args.recipes or '(not given)'} lacks {', '.join(missing)} (see this script's docstring)")
    run = record.Run("bench_study", threads=args.cores, argv=[sys.argv[0], *(argv or sys.argv[1:])])

    from dapt.study import config as study

    cfg = study.read_yaml(args.config)
    if args.scale == "tiny":
        cfg = tiny(cfg)
    study.validate_config(cfg, args.config)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}

    prep, wf_side = run_side_workflow(work, cfg_path, args.cores, env)
    precision = resolved_precision(work / "workflow", cfg)
    rc_side, commands = run_side_recipes(work, cfg, Path(args.recipes), precision, env)

    runs = study_report.scores(work, cfg, commands)
    stages = study_report.stage_times(work)
    results = {
        "scale": args.scale,
        "config": cfg,
        "precision": precision,
        "recipe_files": recipe_provenance(args.recipes),
        "preparation": prep,
        "workflow": wf_side,
        "recipes": rc_side,
        "runs": runs,
        "stages": stages,
        "recipe_steps": study_report.recipe_steps(work / "recipes"),
        "study_speedup": rc_side["wall_s"] / wf_side["wall_s"],
        "study_cpu_ratio": rc_side["cpu_s"] / wf_side["cpu_s"],
    }
    print(study_report.table(results))
    run.write(args.json or work / "study.json", results)
    print(f"study_speedup={results['study_speedup']:.2f} study_cpu_ratio={results['study_cpu_ratio']:.2f}")
    return results


if __name__ == "__main__":
    main()
