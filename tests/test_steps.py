"""The optimizer step both training loops share (dapt/runtime/optimizer_step.py): accumulation, fp16 loss scaling with
its state in checkpoints, overflow handling, checkpoint cadence and progress lines; and MLM
pretraining in fp16 (CPU autocast) killed and resumed to the same numbers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import REPO, minilm_dir, tiny_bert_config
from safetensors.torch import load_file

from dapt.runtime.context import Runtime, linear_schedule, make_optimizer
from dapt.runtime.optimizer_step import Progress, Stepper, split_micro
from dapt.runtime.precision import settings


def runtime(precision: str = "fp32") -> Runtime:
    return Runtime(
        device=torch.device("cpu"), precision={**settings(precision, "cpu"), "device_name": "cpu"}, rank=0, world_size=1
    )


def regression(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 1), torch.randn(32, 8, generator=gen), torch.randn(32, 1, generator=gen)


def stepper_for(model: torch.nn.Module, rt: Runtime, lr: float = 0.1) -> Stepper:
    stepper = Stepper(rt, model, model.parameters, max_grad_norm=10.0, where="test")
    opt = make_optimizer(list(model.named_parameters()), lr, 0.0)
    stepper.use(opt, linear_schedule(opt, 0, 100))
    return stepper


def mse_work(model, x, y, rt: Runtime, n: int):
    def work(rows):
        with rt.autocast():
            pred = model(x[rows])
        loss = torch.nn.functional.mse_loss(pred.float(), y[rows], reduction="sum")
        return loss / n, loss.item()

    return work


def test_split_micro_covers_every_row_once():
    rows = list(range(10))
    for accum in (1, 2, 3, 4, 10, 20):
        parts = split_micro(rows, accum)
        assert [r for p in parts for r in p] == rows and len(parts) <= accum


def test_accumulation_gives_the_step_of_the_whole_batch():
    results = []
    for accum in (1, 4):
        model, x, y = regression()
        rt = runtime()
        stepper = stepper_for(model, rt)
        logged = stepper.step(split_micro(torch.arange(32), accum), mse_work(model, x, y, rt, 32), 0)
        results.append((logged, model.weight.detach().clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-7)


def test_fp16_scaler_steps_skips_on_overflow_and_is_checkpointed(tmp_path):
    model, x, y = regression()
    rt = runtime("fp16")
    stepper = stepper_for(model, rt)
    assert stepper.scaler is not None
    work = mse_work(model, x, y, rt, 32)
    before = model.weight.detach().clone()
    # fp16 gradients at the initial scale (2^16) overflow here: those steps are skipped and the scale
    # backs off until the steps go through
    for step in range(20):
        stepper.step([torch.arange(32)], work, step)
    assert not torch.equal(before, model.weight) and stepper.scaler.get_scale() < 2.0**16
    scale = stepper.scaler.get_scale()
    # an absurd scale overflows fp16 gradients: the step is skipped and the scale drops
    stepper.scaler.update(new_scale=2.0**120)
    kept = model.weight.detach().clone()
    stepper.step([torch.arange(32)], work, 20)
    torch.testing.assert_close(model.weight.detach(), kept, rtol=0, atol=0)
    assert stepper.scaler.get_scale() < 2.0**120
    stepper.save(tmp_path, {"step": 2})
    saved = torch.load(tmp_path / "last" / "trainer.pt", weights_only=True)
    assert saved["scaler"]["scale"] == stepper.scaler.get_scale() and scale > 0
    again = stepper_for(regression()[0], rt)
    assert again.resume(tmp_path) == {"step": 2}
    assert again.scaler.get_scale() == stepper.scaler.get_scale()


def test_checkpoint_cadence():
    due = [s for s in range(1, 11) if Stepper.checkpoint_due(s, 10, 3)]
    assert due == [3, 6, 9]
    assert Stepper.checkpoint_due(4, 10, 3, end_of_epoch=True) and not Stepper.checkpoint_due(10, 10, 1, True)


def test_progress_lines_every_tenth_and_at_the_end(capsys):
    progress = Progress(total=20, start_step=0, every=5, seconds=1e9, min_gap=0.0)
    lines = [progress.update(step, 0.5, 32) for step in range(1, 21)]
    printed = [line for line in lines if line]
    assert len(printed) == 4 and printed[-1].startswith("step 20/20 loss 0.5000")
    assert "examples/s" in printed[0] and "ETA" in printed[0]
    assert capsys.readouterr().out.count("\n") == 4
    quiet = Progress(total=20, start_step=0, every=5, enabled=False)
    assert all(quiet.update(s, 0.1, 1) is None for s in range(1, 21))
    throttled = Progress(total=20, start_step=0, every=1, seconds=1e9, min_gap=1e9)  # a fast short run
    assert [s for s in range(1, 21) if throttled.update(s, 0.1, 1)] == [20]


def test_fine_tuning_prints_progress_every_tenth_of_an_epoch(tmp_path, monkeypatch, capsys):
    """A real fine-tuning run of 40 steps per epoch prints at steps 4, 8, ... 40 (a tenth of an epoch), and
    at the last step: the interval the run computes, not one handed to Progress by the test."""
    from conftest import minilm_dir, rt_examples, tiny_base, write_tokenized_task

    import dapt.finetune.fine_tuning as ft
    from dapt.data.model_store import load_tokenizer
    from dapt.runtime.context import setup_runtime

    made = []

    class Unthrottled(Progress):  # the run's own settings, minus the 2-second gap between lines
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "min_gap": 0.0, "seconds": 1e9})
            made.append(self)

    monkeypatch.setattr(ft, "Progress", Unthrottled)
    base = tiny_base(tmp_path, load_tokenizer(minilm_dir()))
    df = rt_examples()
    tokenized = write_tokenized_task(
        tmp_path, {"train": df[:80], "validation": df[80:90], "test": df[90:100]}, ["neg", "pos"], base, 16
    )
    params = {
        "kind": "head", "epochs": 1, "batch_size": 2, "eval_batch_size": 32, "grad_accum": 1, "lr": 1e-3,
        "weight_decay": 0.0, "warmup_ratio": 0.0, "patience": 3, "max_grad_norm": 1.0, "save_steps": 1000,
        "metric": "macro_f1", "max_length": 16,
    }  # fmt: skip
    ft.finetune(str(base), str(tokenized), str(tmp_path / "run"), str(tmp_path / "ckpt"), params, 1, setup_runtime(0))
    steps = [
        int(line.split()[1].split("/")[0]) for line in capsys.readouterr().out.splitlines() if line.startswith("step ")
    ]
    assert len(made) == 1 and made[0].total == 40
    assert steps == list(range(4, 41, 4))


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A 2-layer BERT without its MLM head (so pretraining starts with the head warm-up) and blocks."""
    from transformers import BertModel

    from dapt.data.model_store import load_tokenizer
    from dapt.tokenize.blocks import tokenize_corpus

    root = tmp_path_factory.mktemp("steps")
    tok = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    config = tiny_bert_config(
        tok,
    )
    BertModel(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    texts = pd.read_json(REPO / "tests" / "data" / "imdb_sample.jsonl", lines=True)
    texts.rename(columns={"review": "text"})[["text"]].to_parquet(root / "texts.parquet", index=False)
    tokenize_corpus(str(root / "texts.parquet"), str(root / "base"), 32, str(root / "blocks"), "test")
    return root


MLM = {
    "batch_size": 8,
    "grad_accum": 2,
    "max_steps": 8,
    "lr": 1e-3,
    "head_lr": 1e-2,
    "head_warmup_steps": 3,
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "mlm_probability": 0.15,
    "save_steps": 2,
    "max_grad_norm": 1.0,
}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_pretraining_killed_in_the_head_warmup_resumes_exactly(tiny_mlm, tmp_path, monkeypatch, precision):
    """A kill during the MLM head warm-up (step 2 of 3) and a kill after it (step 6), in fp16 with its
    loss scaler and in bf16: each resumed run ends with the loss log and weights of the whole run."""
    import dapt.pretrain.pretraining as pt

    def run(name: str) -> tuple[str, dict]:
        out = tmp_path / name
        torch.manual_seed(1)  # as setup_runtime does: the new MLM head's initial weights
        pt.pretrain(
            str(tiny_mlm / "base"),
            str(tiny_mlm / "blocks"),
            str(out),
            str(tmp_path / f"c-{name}"),
            MLM,
            1,
            runtime(precision),
            "dapt-test",
        )
        return (out / "loss.csv").read_text(), load_file(str(out / "model" / "model.safetensors"))

    whole_log, whole_weights = run("whole")
    losses = pd.read_csv(tmp_path / "whole" / "loss.csv")["loss"]
    assert losses.notna().all() and len(losses) == 8

    class Killed(Exception):
        pass

    original = Stepper.save
    for kill_at in (2, 6):
        saves = []

        def save_then_die(self, ckpt_dir, state, generator=None):
            original(self, ckpt_dir, state, generator)
            saves.append(state["step"])  # noqa: B023  (called within this iteration)
            if state["step"] == kill_at:  # noqa: B023
                if precision == "fp16":
                    assert "scaler" in torch.load(f"{ckpt_dir}/last/trainer.pt", weights_only=True)
                raise Killed

        monkeypatch.setattr(Stepper, "save", save_then_die)
        with pytest.raises(Killed):
            run(f"killed{kill_at}")
        monkeypatch.setattr(Stepper, "save", original)
        log, weights = run(f"killed{kill_at}")
        assert saves[-1] == kill_at and log == whole_log
        assert weights.keys() == whole_weights.keys()
        assert all(torch.equal(weights[k], whole_weights[k]) for k in weights)
