"""Every fine-tuning method trains, saves a small artifact that reloads to the same predictions, and
reports the trainable-parameter count its library reports.

The runs call `dapt.finetune.fine_tuning.finetune` directly on a tiny task built from tests/data/rt_sample.csv,
tokenized with MiniLM's real WordPiece tokenizer, with a randomly initialised 2-layer BERT saved as a
masked LM (so, like a pretrained checkpoint from the MLM stage, it has no pooler: the classifier's
pooler is freshly initialised, and must be trained and saved). One test runs every method that the
tiny study (full, lora) does not through Snakemake.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_workdir, minilm_dir, rt_examples, run_snakemake, tiny_config, write_tokenized_task

HIDDEN, LAYERS, INTERMEDIATE = 32, 2, 64

# name -> method params (the method's kind is `kind`, or the name)
METHODS = {
    "full": {"lr": 3e-3},
    "head": {"lr": 3e-2},
    "lora": {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0},
    "adalora": {"lr": 1e-2, "r": 6, "target_r": 2, "alpha": 12, "dropout": 0.0},
    "ia3": {"lr": 3e-2},
    "prefix": {"lr": 1e-2, "num_virtual_tokens": 4},
    "prefix_mlp": {"kind": "prefix", "lr": 1e-2, "num_virtual_tokens": 4, "prefix_projection": True},
    "prompt": {"lr": 3e-2, "num_virtual_tokens": 4},
    "adapter_houlsby": {"kind": "adapter", "lr": 1e-2, "placement": "houlsby", "reduction_factor": 4},
    "adapter_pfeiffer": {"kind": "adapter", "lr": 1e-2, "placement": "pfeiffer", "reduction_factor": 4},
}
TRAIN = {
    "epochs": 20,
    "batch_size": 16,
    "eval_batch_size": 64,
    "grad_accum": 1,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "patience": 100,
    "max_grad_norm": 1.0,
    "save_steps": 1000,
    "metric": "macro_f1",
    "max_length": 48,
}


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """(base checkpoint folder, tokenized task folder)."""
    from transformers import BertConfig, BertForMaskedLM

    from dapt.data.model_store import load_tokenizer

    root = tmp_path_factory.mktemp("methods")
    tok = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    # Encoder weights drawn with std 0.2: at BERT's 0.02 a random 2-layer encoder maps every sentence
    # to nearly the same [CLS] vector (std across sentences ~0.003), and only full fine-tuning learns.
    # The saved config says 0.02, so the freshly initialised head starts small (loss ~ln 2).
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=64,
        initializer_range=0.2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    mlm = BertForMaskedLM(config)
    mlm.config.initializer_range = 0.02
    base = root / "base"
    mlm.save_pretrained(base)
    tok.save_pretrained(base)

    df = rt_examples()
    tokenized = write_tokenized_task(
        root, {"train": df[:48], "validation": df[48:80], "test": df[80:180]}, ["neg", "pos"], base, 48
    )
    return base, tokenized


@pytest.fixture(scope="module")
def runtime():
    from dapt.runtime.context import setup_runtime

    torch.set_num_threads(1)
    return setup_runtime(0, "fp32", threads=1)


class Run:
    def __init__(self, name, summary, model, out, seconds, loss_before, loss_after):
        self.name, self.summary, self.model, self.out, self.seconds = name, summary, model, out, seconds
        self.loss_before, self.loss_after = loss_before, loss_after

    @property
    def artifact_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.out / "model").rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def trained(tiny_task, runtime, tmp_path_factory):
    """Train each method once (on first use); keep the in-memory model that was saved."""
    import dapt.finetune.fine_tuning as ft
    import dapt.finetune.run_files as rf

    base, tokenized = tiny_task
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            saved = {}
            original = rf.save_artifact

            def keep(model, *args, **kwargs):
                saved["model"] = model
                return original(model, *args, **kwargs)

            params = {**TRAIN, **METHODS[name]}
            params["kind"] = params.get("kind", name)
            out = tmp_path_factory.mktemp(name)
            # the model finetune() starts from: same seed, same construction
            torch.manual_seed(1)
            initial = ft.apply_method(ft.load_classifier(str(base), ["neg", "pos"]), {**params, "total_steps": 1})
            loss_before = _train_loss(initial, tokenized)
            rf.save_artifact = keep
            try:
                start = time.perf_counter()
                summary = ft.finetune(
                    str(base), str(tokenized), str(out / "run"), str(out / "ckpt"), params, 1, runtime
                )
                seconds = time.perf_counter() - start
            finally:
                rf.save_artifact = original
            cache[name] = Run(
                name, summary, saved["model"], out / "run", seconds, loss_before, _train_loss(saved["model"], tokenized)
            )
        return cache[name]

    return get


def _logits(model, tokenized: Path, runtime=None, split: str = "test") -> torch.Tensor:
    """Logits of a split, in one eval-mode batch."""
    from dapt.runtime.batching import collate
    from dapt.tokenize.tasks import read_examples

    data = read_examples(tokenized / f"{split}.parquet")
    was = model.training
    model.eval()
    with torch.inference_mode():
        ids, mask = collate(data["input_ids"], np.arange(len(data["label"])), 0)
        device = next(model.parameters()).device
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
    model.train(was)
    return out


def _train_loss(model, tokenized: Path) -> float:
    from dapt.tokenize.tasks import read_examples

    labels = read_examples(tokenized / "train.parquet")["label"]
    return torch.nn.functional.cross_entropy(_logits(model, tokenized, split="train"), torch.from_numpy(labels)).item()


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_and_its_artifact_reloads_identically(name, trained, tiny_task, runtime):
    from dapt.finetune.methods import load_finetuned

    base, tokenized = tiny_task
    run = trained(name)
    log = pd.read_csv(run.out / "log.csv")
    print(
        f"{name}: {run.summary['trainable_params']} trainable ({run.summary['trainable_pct']:.2f}%), "
        f"artifact {run.artifact_bytes} bytes, {run.seconds:.1f}s, train loss {run.loss_before:.4f} -> "
        f"{run.loss_after:.4f}, by epoch {log['train_loss'].round(3).tolist()}"
    )
    assert len(log) == TRAIN["epochs"]
    assert run.loss_after < run.loss_before - 0.02, "training loss did not fall"

    reloaded, pad_id = load_finetuned(str(run.out / "model"), str(base), ["neg", "pos"])
    assert pad_id == 0
    before, after = _logits(run.model, tokenized, runtime), _logits(reloaded, tokenized, runtime)
    assert torch.equal(before.argmax(1), after.argmax(1))
    assert torch.equal(before, after), f"max |difference| {(before - after).abs().max().item():.3g}"


def _head_params(hidden: int = HIDDEN, labels: int = 2) -> int:
    return (hidden * hidden + hidden) + (hidden * labels + labels)  # BERT's pooler + classifier


@pytest.mark.parametrize("name", list(METHODS))
def test_trainable_count_is_the_libraries_count(name, trained):
    from dapt.finetune.adapters import adapter_param_count

    run = trained(name)
    model, summary = run.model, run.summary
    by_grad = sum(p.numel() for p in model.parameters() if p.requires_grad)
    everything = sum(p.numel() for p in model.parameters())
    assert summary["trainable_params"] == by_grad
    assert summary["total_params"] == everything
    assert summary["trainable_pct"] == pytest.approx(100.0 * by_grad / everything)
    params = {**METHODS[name]}
    kind = params.get("kind", name)
    if kind == "full":
        assert by_grad == everything
    elif kind == "head":
        assert by_grad == _head_params()
    elif kind == "adapter":
        placement = params["placement"]
        layernorms = LAYERS * 2 * (2 * HIDDEN) if placement == "houlsby" else 0
        expected = (
            adapter_param_count(model.config, params["reduction_factor"], placement) + _head_params() + layernorms
        )
        assert by_grad == expected
    else:  # peft's own count
        assert model.get_nb_trainable_parameters() == (summary["trainable_params"], summary["total_params"])


@pytest.mark.parametrize("name", [m for m in METHODS if m != "full"])
def test_artifact_is_small_and_holds_what_trained(name, trained):
    from safetensors import safe_open

    run, full = trained(name), trained("full")
    assert run.artifact_bytes * 50 < full.artifact_bytes, (run.artifact_bytes, full.artifact_bytes)
    files = {f.name for f in (run.out / "model").iterdir()}
    kind = METHODS[name].get("kind", name)
    if kind in ("head", "adapter"):
        assert files == {"trainable.safetensors", "method.json"}
        with safe_open(str(run.out / "model" / "trainable.safetensors"), "pt") as f:
            saved = set(f.keys())
        assert saved == {n for n, p in run.model.named_parameters() if p.requires_grad}
    else:
        assert {"adapter_model.safetensors", "adapter_config.json", "method.json"} <= files
        # the task head, pooler included, travels with the adapter
        with safe_open(str(run.out / "model" / "adapter_model.safetensors"), "pt") as f:
            saved = set(f.keys())
        assert any("pooler" in k for k in saved) and any("classifier" in k for k in saved), sorted(saved)


@pytest.mark.parametrize("name", ["head", "adapter_houlsby", "adapter_pfeiffer"])
def test_frozen_encoder_stays_as_loaded(name, trained, tiny_task):
    from safetensors.torch import load_file

    base, _ = tiny_task
    checkpoint = load_file(str(base / "model.safetensors"))
    state = trained(name).model.state_dict()
    layer_keys = [k for k in checkpoint if k.startswith("bert.encoder.") or k.startswith("bert.embeddings.")]
    assert layer_keys
    trained_ln = METHODS[name].get("placement") == "houlsby"
    for key in layer_keys:
        if trained_ln and "encoder" in key and "LayerNorm" in key:
            continue
        assert torch.equal(state[key], checkpoint[key]), key


def test_adalora_prunes_to_its_rank_budget(trained):
    run = trained("adalora")
    params = METHODS["adalora"]
    e = [p for n, p in run.model.named_parameters() if ".lora_E." in n]
    assert e and all(p.numel() == params["r"] for p in e)
    nonzero = sum(int((p != 0).sum()) for p in e)
    steps_per_epoch = -(-48 // TRAIN["batch_size"])
    total = TRAIN["epochs"] * steps_per_epoch
    if run.summary["best_epoch"] * steps_per_epoch > total - int(0.2 * total):
        assert nonzero <= params["target_r"] * len(e), nonzero  # the final budget
    assert nonzero < params["r"] * len(e), "no rank was ever pruned"


def _tiny_classifier(kind: str):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(
            BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        )
    if kind == "roberta":
        return RobertaForSequenceClassification(
            RobertaConfig(
                vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
            )
        )
    return DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    )


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_adapters_start_as_the_identity_and_train_only_themselves_and_the_head(arch, placement):
    from dapt.finetune.adapters import Bottleneck, adapter_param_count, add_adapters

    model = _tiny_classifier(arch).eval()
    ids = torch.randint(3, 99, (3, 11))
    before = model(input_ids=ids).logits
    add_adapters(model, reduction_factor=8, placement=placement)
    adapters = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(adapters) == 2 * (2 if placement == "houlsby" else 1)
    assert torch.equal(model(input_ids=ids).logits, before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"bert": ("bert.pooler.", "classifier."), "roberta": ("classifier.",)}[arch]
    for n in trainable:
        assert ".adapter." in n or n.startswith(head) or (placement == "houlsby" and "LayerNorm" in n), n
    assert sum(model.get_parameter(n).numel() for n in trainable if ".adapter." in n) == adapter_param_count(
        model.config, 8, placement
    )
    # and the adapters are on the path: perturbing one changes the output
    with torch.no_grad():
        adapters[-1].up.weight.normal_()  # (a constant bias would vanish in the LayerNorm)
    assert not torch.allclose(model(input_ids=ids).logits, before)


def test_adapters_refuse_other_architectures_clearly():
    from dapt.core.errors import UserError
    from dapt.finetune.adapters import add_adapters

    with pytest.raises(UserError, match="BERT-family.*distilbert"):
        add_adapters(_tiny_classifier("distilbert"))


@pytest.mark.parametrize("kind", ["lora", "adalora", "ia3"])
def test_bert_keeps_the_modules_peft_picks_by_itself(kind):
    """Default targets for every family must not move BERT's: the modules adapted and the head saved
    are those peft 0.21 picks with no target_modules (its own table), as before."""
    import peft

    from dapt.finetune.methods import apply_method, peft_config

    params = {"kind": kind, "total_steps": 10}
    ours = apply_method(_tiny_classifier("bert"), params)
    config = peft_config(_tiny_classifier("bert"), params)
    config.target_modules = None
    if kind == "ia3":
        config.feedforward_modules = None
    theirs = peft.get_peft_model(_tiny_classifier("bert"), config)

    def adapted(model):
        return sorted(n for n, m in model.named_modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer))

    assert adapted(ours) == adapted(theirs) and adapted(ours)
    assert set(ours.peft_config["default"].modules_to_save) == {"pooler", "classifier", "score"}
    mine, peft_own = ours.peft_config["default"], theirs.peft_config["default"]
    assert mine.target_modules == peft_own.target_modules
    assert getattr(mine, "feedforward_modules", None) == getattr(peft_own, "feedforward_modules", None)


def test_distilbert_peft_runs_train_and_save_its_whole_head(tmp_path):
    """DistilBERT's head is pre_classifier + classifier: both train under LoRA and travel with the
    adapter (left out, pre_classifier stayed at a random init that a reload could not restore)."""
    from dapt.finetune.methods import apply_method, load_finetuned, save_artifact

    base = tmp_path / "base"
    _tiny_classifier("distilbert").save_pretrained(base)
    from transformers import DistilBertTokenizer

    DistilBertTokenizer(vocab={f"w{i}": i for i in range(99)}, unk_token="w1", pad_token="w0").save_pretrained(base)
    model = apply_method(_tiny_classifier("distilbert"), {"kind": "lora"})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)  # as if trained
    save_artifact(model, {"kind": "lora"}, ["a", "b"], tmp_path / "run")
    info = json.loads((tmp_path / "run" / "method.json").read_text())
    assert info["targets"] == {"target_modules": ["q_lin", "v_lin"], "source": "found in the distilbert model"}
    reloaded, _ = load_finetuned(str(tmp_path / "run"), str(base), ["a", "b"])
    ids = torch.randint(3, 99, (2, 7))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_prompt_tuning_takes_the_input_embedding_width(arch):
    """Virtual tokens join the input embeddings: DistilBERT's width is `dim` (peft reads no hidden_size)."""
    from dapt.finetune.methods import apply_method

    model = apply_method(_tiny_classifier(arch), {"kind": "prompt", "num_virtual_tokens": 3, "max_length": 20})
    assert model(input_ids=torch.randint(3, 99, (2, 7))).logits.shape == (2, 2)


def test_prefix_tokens_must_fit_the_position_embeddings():
    from dapt.core.errors import UserError
    from dapt.finetune.methods import apply_method

    model = _tiny_classifier("roberta")  # 510 usable positions: 512, less the padding offset of 2
    apply_method(model, {"kind": "prefix", "num_virtual_tokens": 10, "max_length": 500})
    with pytest.raises(UserError, match="virtual tokens exceed"):
        apply_method(_tiny_classifier("roberta"), {"kind": "prompt", "num_virtual_tokens": 20, "max_length": 500})


# the tiny study (tests/conftest.py `tiny_study`) runs full and lora through Snakemake; these, the rest
WORKFLOW_METHODS = {
    "head": ("head", {"lr": 3.0e-2}),
    "adalora": ("adalora", {"r": 6, "target_r": 2, "alpha": 12, "lr": 1.0e-2}),
    "ia3": ("ia3", {"lr": 3.0e-2}),
    "prefix": ("prefix", {"num_virtual_tokens": 4, "lr": 1.0e-2}),
    "prompt": ("prompt", {"num_virtual_tokens": 4, "lr": 3.0e-2}),
    "houlsby": ("adapter", {"kind": "adapter", "placement": "houlsby", "reduction_factor": 4, "lr": 1.0e-2}),
    "pfeiffer": ("adapter", {"kind": "adapter", "placement": "pfeiffer", "reduction_factor": 4, "lr": 1.0e-2}),
}


def test_every_other_method_through_snakemake(tmp_path, tiny_task):
    """The tiny study with the base variant and every method the tiny study does not run: each
    fine-tunes (its training loss falls), evaluates, and the report gives each run's trainable
    share, artifact size, wall time and memory. The model is this module's tiny BERT (spread-out
    random encoder), on which every method can learn something in a few steps."""
    config = tiny_config()
    config["models"] = {"tiny": {"source": {"kind": "local", "path": str(tiny_task[0])}}}
    config["variants"] = {"base": []}
    config["seeds"] = [1]
    config["finetune"].update(epochs=6, patience=6)
    config["methods"] = {name: params for name, (_, params) in WORKFLOW_METHODS.items()}
    workdir = make_workdir(tmp_path / "study", config)
    start = time.perf_counter()
    proc = run_snakemake(workdir)
    print(f"snakemake: {time.perf_counter() - start:.1f}s")
    assert proc.returncode == 0, proc.stderr[-6000:]
    model_bytes = sum(f.stat().st_size for f in (workdir / "results/models/tiny").glob("*.safetensors"))
    for method, (kind, _) in WORKFLOW_METHODS.items():
        run = f"rt_polarity/tiny/base/{method}/seed1"
        metrics = json.loads((workdir / "results/evaluate" / run / "metrics.json").read_text())
        train = json.loads((workdir / "results/finetune" / run / "train.json").read_text())
        log = pd.read_csv(workdir / "results/finetune" / run / "log.csv")
        print(f"{method}: train loss by epoch {log['train_loss'].round(4).tolist()}")
        assert train["params"]["kind"] == kind
        assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0] - 0.02, method
        assert 0 < metrics["trainable_params"] < metrics["total_params"]
        assert 0 < metrics["trainable_pct"] < 5
        assert 0 < metrics["artifact_bytes"] * 20 < model_bytes, (metrics["artifact_bytes"], model_bytes)
        assert metrics["peak_memory_mb"] > 0
        for rule in ("finetune", "evaluate"):
            assert (workdir / "results/benchmarks" / rule / f"{run}.tsv").exists()
    results = pd.read_csv(workdir / "results/report/results.csv")
    assert sorted(results["method"]) == sorted(WORKFLOW_METHODS)
    assert results["finetune_wall_s"].gt(0).all() and results["artifact_bytes"].gt(0).all()


def test_adalora_resumed_in_its_final_phase_keeps_its_ranks():
    """Checkpoints hold the weights, not peft's rank pattern; a run resumed after the final rank
    allocation must go on masking by the same pattern (peft fails on a missing one)."""
    from dapt.finetune.methods import after_optimizer_step, apply_method, resume_method

    model = _tiny_classifier("bert")
    params = {"kind": "adalora", "r": 4, "target_r": 1, "total_steps": 10, "tinit_ratio": 0.0, "tfinal_ratio": 0.4}
    model = apply_method(model, params)
    config = model.peft_config["default"]
    assert (config.tinit, config.tfinal, config.total_step) == (0, 4, 10)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for step in range(10):
        ids = torch.randint(3, 99, (4, 9))
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        after_optimizer_step(model, params, step)
        if step == 7:  # a checkpoint is written here and the run killed; what a resumed run loads:
            fixed = config.rank_pattern
            assert fixed and sum(map(sum, fixed.values())) == len(fixed)  # target_r 1: the final budget
            config.rank_pattern = None
            resume_method(model, params)
            assert config.rank_pattern == fixed
    assert config.rank_pattern == fixed
    e = [p for n, p in model.named_parameters() if ".lora_E." in n]
    assert sum(int((p != 0).sum()) for p in e) == len(e)


def _runtime_fp32():
    from dapt.runtime.context import setup_runtime

    return setup_runtime(0, "fp32", threads=1)


def _stack(model):
    """The base model's layer stack: `encoder` (BERT, RoBERTa), `transformer` (DistilBERT)."""
    base = getattr(model, model.base_model_prefix)
    return getattr(base, "encoder", None) or base.transformer


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_head_stores_the_frozen_encoder_output_and_gives_the_same_logits(arch):
    from dapt.finetune.adapters import store_frozen_encoder, train_only_head

    model = train_only_head(_tiny_classifier(arch))
    encoder = _stack(model)
    texts = [np.array([5, 6, 7, 8]), np.array([9, 10]), np.array([11, 12, 13, 14, 15, 16])]
    ids = torch.full((3, 6), 1)
    mask = torch.zeros((3, 6), dtype=torch.long)
    for i, t in enumerate(texts):
        ids[i, : len(t)], mask[i, : len(t)] = torch.from_numpy(t), 1
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    model.train()
    restore = store_frozen_encoder(model, [texts[:2], texts[2:]], 1, _runtime_fp32(), batch_size=2)
    assert restore is not None
    assert _stack(model) is not encoder  # the encoder no longer runs
    model.eval()
    with torch.no_grad():
        got = model(input_ids=ids[[2, 0]], attention_mask=mask[[2, 0]]).logits  # any order, any batch
    assert torch.equal(got, expected[[2, 0]])
    restore()
    assert _stack(model) is encoder
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)


def test_head_store_steps_aside_where_the_head_reads_more_than_the_first_position():
    from dapt.finetune.adapters import store_frozen_encoder, train_only_head

    texts = [np.array([5, 6, 7, 8]), np.array([9, 10, 11])]
    model = train_only_head(_tiny_classifier("bert"))
    pooler, encoder = model.bert.pooler, model.bert.encoder
    pooler.forward = lambda hidden: pooler.activation(pooler.dense(hidden.mean(1)))  # mean pooling
    assert store_frozen_encoder(model, [texts], 1, _runtime_fp32(), batch_size=2) is None
    assert model.bert.encoder is encoder
    full = _tiny_classifier("bert")  # the encoder trains: nothing to store
    assert store_frozen_encoder(full, [texts], 1, _runtime_fp32(), batch_size=2) is None


def test_head_trains_the_same_with_and_without_the_store(tiny_task, runtime, tmp_path, monkeypatch, capsys):
    """The tiny model has no dropout, so storing the encoder's output must not change training."""
    import dapt.finetune.adapters
    import dapt.finetune.fine_tuning as ft

    base, tokenized = tiny_task
    params = {**TRAIN, **METHODS["head"], "kind": "head", "epochs": 4}
    stored = ft.finetune(str(base), str(tokenized), str(tmp_path / "a"), str(tmp_path / "ca"), params, 1, runtime)
    assert "encoder outputs stored once" in capsys.readouterr().out
    monkeypatch.setattr(dapt.finetune.adapters, "store_frozen_encoder", lambda *a, **k: None)
    plain = ft.finetune(str(base), str(tokenized), str(tmp_path / "b"), str(tmp_path / "cb"), params, 1, runtime)
    assert "recomputed every step" in capsys.readouterr().out
    log_a, log_b = pd.read_csv(tmp_path / "a" / "log.csv"), pd.read_csv(tmp_path / "b" / "log.csv")
    assert log_a["train_loss"].iloc[-1] < log_a["train_loss"].iloc[0]
    np.testing.assert_allclose(log_a.to_numpy(), log_b.to_numpy(), rtol=1e-5, atol=1e-6)
    assert stored["trainable_params"] == plain["trainable_params"] and stored["total_params"] == plain["total_params"]
    from safetensors.torch import load_file

    wa, wb = (load_file(str(tmp_path / d / "model" / "trainable.safetensors")) for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_adalora_killed_and_resumed_ends_exactly_as_uninterrupted(tiny_task, runtime, tmp_path, monkeypatch):
    """A kill in AdaLoRA's budget phase: the resumed run restores the allocator's importance
    averages from the checkpoint and ends with the same log and the same weights, bit for bit."""
    from safetensors.torch import load_file

    import dapt.finetune.fine_tuning as ft

    base, tokenized = tiny_task
    # 48 examples, batch 16: 3 steps an epoch, 18 in all; ranks are reallocated from step 1 to 14
    params = {**TRAIN, **METHODS["adalora"], "kind": "adalora", "epochs": 6, "save_steps": 2}
    whole = ft.finetune(str(base), str(tokenized), str(tmp_path / "whole"), str(tmp_path / "c1"), params, 1, runtime)

    class Killed(Exception):
        pass

    original = ft.after_optimizer_step

    def kill_at_step_9(model, p, step):
        original(model, p, step)
        if step == 9:
            raise Killed

    monkeypatch.setattr(ft, "after_optimizer_step", kill_at_step_9)
    with pytest.raises(Killed):
        ft.finetune(str(base), str(tokenized), str(tmp_path / "resumed"), str(tmp_path / "c2"), params, 1, runtime)
    monkeypatch.setattr(ft, "after_optimizer_step", original)
    resumed = ft.finetune(
        str(base), str(tokenized), str(tmp_path / "resumed"), str(tmp_path / "c2"), params, 1, runtime
    )
    assert resumed["train_steps"] == whole["train_steps"] == 18
    assert (tmp_path / "whole" / "log.csv").read_text() == (tmp_path / "resumed" / "log.csv").read_text()
    a = load_file(str(tmp_path / "whole" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [
        k for k in a if not torch.equal(a[k], b[k])
    ][:3]


def test_head_store_steps_aside_where_the_head_cannot_read_the_stored_output():
    from dapt.finetune.adapters import store_frozen_encoder, train_only_head

    model = train_only_head(_tiny_classifier("bert"))
    pooler, encoder = model.bert.pooler, model.bert.encoder
    pooler.forward = lambda hidden: pooler.activation(pooler.dense(hidden[:, 1]))  # reads position 1
    texts = [np.array([5, 6, 7, 8]), np.array([9, 10, 11])]
    assert store_frozen_encoder(model, [texts], 1, _runtime_fp32(), batch_size=2) is None
    assert model.bert.encoder is encoder and not model.bert._forward_pre_hooks
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    assert model(input_ids=ids).logits.shape == (1, 2)  # the model still works as before


def test_full_finetuning_in_bf16_is_deterministic_and_resumes_exactly(tiny_task, tmp_path, monkeypatch):
    """bf16 autocast (the choice on CPUs with native bf16): two runs of one seed, and a run killed
    after its epoch-2 checkpoint and resumed, end with the same log and the same weights."""
    from safetensors.torch import load_file

    import dapt.finetune.fine_tuning as ft
    from dapt.runtime.context import Runtime
    from dapt.runtime.precision import settings

    bf16 = Runtime(
        device=torch.device("cpu"), precision={**settings("bf16", "cpu"), "device_name": "cpu"}, rank=0, world_size=1
    )
    base, tokenized = tiny_task
    params = {**TRAIN, **METHODS["full"], "kind": "full", "epochs": 4}

    def run(name: str) -> tuple[str, dict]:
        torch.manual_seed(0)
        ft.finetune(str(base), str(tokenized), str(tmp_path / name), str(tmp_path / f"c-{name}"), params, 1, bf16)
        return (tmp_path / name / "log.csv").read_text(), load_file(
            str(tmp_path / name / "model" / "model.safetensors")
        )

    first, again = run("first"), run("again")

    class Killed(Exception):
        pass

    original = ft.FineTuning.save_checkpoint

    def save_then_die(self, timer):
        original(self, timer)
        if self.state["step"] == 6:  # 3 steps an epoch: after epoch 2's validation and checkpoint
            raise Killed

    monkeypatch.setattr(ft.FineTuning, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run("resumed")
    monkeypatch.setattr(ft.FineTuning, "save_checkpoint", original)
    resumed = run("resumed")
    for other in (again, resumed):
        assert other[0] == first[0]
        assert other[1].keys() == first[1].keys() and all(torch.equal(other[1][k], first[1][k]) for k in first[1])
