"""Encoder families beyond BERT: each runs one small study of every stage, its quirks are handled, and
what a family cannot take is refused early, in one line.

Tiny random checkpoints (hidden 32, 2 layers) of BERT, RoBERTa, XLM-RoBERTa, DistilBERT, DeBERTa-v2,
ELECTRA, ALBERT, MPNet and ModernBERT, each with its family's kind of tokenizer built offline
(tests/helpers/families.py). The study (tests/helpers/family_study.py): store the model and check it for
the study's methods, tokenize, MLM-pretrain 4 steps, fine-tune full, LoRA and head for 3 steps, evaluate,
export, ONNX, int8, and label the test texts with each export and with `python -m dapt.deploy.predict`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from helpers.families import FAMILIES, build_family, wordpiece
from helpers.family_study import LABELS, run_study, shared_data

from dapt.core.errors import UserError

#: What LoRA adapts by default: peft's table where it has the model type, else what dapt finds.
LORA_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "albert": ["query", "value"],
    "mpnet": ["q", "v"],
    "modernbert": ["Wqkv"],
}
#: Families whose `head` runs store the frozen encoder's first-position output (the rest recompute it:
#: DeBERTa-v2 reads the encoder's hidden states, ModernBERT has no single encoder module).
STORED_HEAD = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "mpnet"}
#: Positions a model of `max_position_embeddings` 64 (66 for the fairseq-offset families) can take.
POSITIONS = {"modernbert": 8192}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """family -> folder of its tiny random masked LM and tokenizer (built on first use)."""
    root = tmp_path_factory.mktemp("families")
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_family(family, root)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def runtime():
    from dapt.runtime.context import setup_runtime

    torch.set_num_threads(1)
    return setup_runtime(0, "fp32", threads=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_every_stage(family, sources, runtime, tmp_path):
    corpus, splits = shared_data(tmp_path, REPO)
    study = run_study(sources(family), tmp_path, corpus, splits, runtime)
    assert study["prepared"]["model_type"] == family
    assert f"adapts {', '.join(LORA_TARGETS[family])} " in study["notes"]["lora"]
    assert np.isfinite(study["pretrain"]["final_loss"]) and study["pretrain"]["steps"] == 4
    for name, run in study["runs"].items():
        assert run["summary"]["train_steps"] == 3 and np.isfinite(run["summary"]["best_validation"])
        stored = "encoder outputs stored once" in run["printed"]
        if name == "head":
            assert stored == (family in STORED_HEAD), run["printed"]
        if name == "lora":  # what LoRA adapted, recorded with the run
            assert run["method"]["targets"]["target_modules"] == sorted(LORA_TARGETS[family])
        evaluated, formats = run["evaluated"], run["formats"]
        # each export reads the texts as the task did and gives the evaluate step's probabilities
        np.testing.assert_allclose(formats["hf"], evaluated, atol=2e-5, err_msg=f"{name}: PyTorch export")
        np.testing.assert_allclose(formats["onnx"], evaluated, atol=1e-4, err_msg=f"{name}: ONNX")
        np.testing.assert_allclose(formats["int8"], evaluated, atol=0.05, err_msg=f"{name}: int8")
    cli = study["cli"]
    assert len(cli) == len(splits["test"]) and set(cli["label"]) <= set(LABELS)
    probs = cli[[f"p_{x}" for x in LABELS]].to_numpy()
    np.testing.assert_allclose(probs, study["runs"]["lora"]["formats"]["int8"], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_graph_takes_the_inputs_the_tokenizer_gives(family, sources, tmp_path):
    """ModernBERT, DistilBERT, RoBERTa & co have no token_type_ids: their graphs take none."""
    from dapt.deploy.onnx import OnnxClassifier, export_onnx
    from dapt.finetune.methods import load_classifier

    folder = tmp_path / "hf"
    load_classifier(str(sources(family)), LABELS).save_pretrained(folder)
    from dapt.data.model_store import load_tokenizer

    tok = load_tokenizer(sources(family))
    tok.save_pretrained(folder)
    onnx = OnnxClassifier(export_onnx(folder, tmp_path / "onnx"), threads=1)
    assert onnx.inputs[:2] == ["input_ids", "attention_mask"] and set(onnx.inputs) <= set(tok.model_input_names)
    # DeBERTa-v2's tokenizer gives type ids its config (type_vocab_size 0) never reads: the graph drops them
    assert ("token_type_ids" in onnx.inputs) == (family in ("bert", "electra"))


@pytest.mark.parametrize("family", FAMILIES)
def test_mlm_loss_at_masked_positions_is_the_models_own(family, sources):
    """The masked-only MLM loss uses the family's own head (tied or not, ELECTRA's generator, ModernBERT's
    head + decoder, DistilBERT's transform + projector) and equals the model's own MLM loss."""
    from transformers import AutoModelForMaskedLM

    from dapt.pretrain.mlm import MaskedOnlyMLM, mlm_head

    model = AutoModelForMaskedLM.from_pretrained(sources(family)).eval()
    assert mlm_head(model) is not None
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (3, 24))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, torch.full_like(ids, -100))
    with torch.no_grad():
        ours, theirs = MaskedOnlyMLM(model)(ids, labels), model(input_ids=ids, labels=labels).loss
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (ours.item(), theirs.item())


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrained_checkpoint_gives_the_classifier_its_encoder(family, sources, tmp_path):
    """An MLM stage's checkpoint keeps the encoder's copy of tied weights (XLM-R's MLM class lists its head
    first; keeping the head's copy left the classifier's word embeddings random)."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    from dapt.pretrain.pretraining import save_mlm_checkpoint

    mlm = AutoModelForMaskedLM.from_pretrained(sources(family))
    save_mlm_checkpoint(mlm, sources(family), sources(family), tmp_path / "model")
    classifier, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", output_loading_info=True)
    prefix = classifier.base_model_prefix + "."
    pooler = prefix + "pooler."  # BERT's and ALBERT's: the task head's, which an MLM checkpoint has not
    assert not [k for k in info["missing_keys"] if k.startswith(prefix) and not k.startswith(pooler)]
    words = classifier.get_input_embeddings().weight
    assert torch.equal(words, mlm.get_input_embeddings().weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_position_limit_is_what_the_embeddings_take(family, sources):
    """RoBERTa, XLM-R and MPNet start positions after the padding index (66 rows: 64 usable); ModernBERT's
    rotary positions reach its 8192; a length beyond the limit is refused before any job runs."""
    from transformers import AutoModelForMaskedLM

    from dapt.tokenize.tasks import check_max_length, position_limit

    limit = position_limit(sources(family))
    assert limit == POSITIONS.get(family, 64)
    model = AutoModelForMaskedLM.from_pretrained(sources(family)).eval()
    n = min(limit, 128)
    with torch.no_grad():
        assert model(input_ids=torch.full((1, n), 7)).logits.shape[1] == n  # the limit itself embeds
    with pytest.raises(UserError, match=f"exceeds the {limit} positions"):
        check_max_length(sources(family), limit + 1, "tasks.t.max_length")


@pytest.mark.parametrize("family", FAMILIES)
def test_long_text_rows_keep_the_familys_special_tokens(family, sources):
    from dapt.data.model_store import load_tokenizer
    from dapt.tokenize import longtext

    tok = load_tokenizer(sources(family))
    specials = longtext.check_tokenizer(tok, "windows", "tasks.t.long_text")
    ids = tok(" ".join(f"word{i} and more" for i in range(60)))["input_ids"]
    pre, post = ids[: specials[0]], ids[len(ids) - specials[1] :]
    assert pre and pre[0] in (tok.cls_token_id, tok.bos_token_id)
    for settings in ({"strategy": "head_tail", "head": 10}, {"strategy": "windows", "stride": 12, "max_windows": 9}):
        rows, _, _ = longtext.document_rows([ids], settings, 32, specials)
        assert len(rows) >= 1 and all(len(r) <= 32 for r in rows)
        assert all(r[: len(pre)] == pre and r[len(r) - len(post) :] == post for r in rows), settings


def test_default_targets_found_in_the_model_are_the_ones_peft_names(sources):
    """Where peft's tables know the family, what dapt finds in the model is the same: the names it finds
    for the families peft does not know are of the same kind."""
    from dapt.finetune.methods import load_classifier
    from dapt.finetune.peft_targets import found_targets, peft_tables

    known = [("bert", "lora"), ("roberta", "lora"), ("electra", "lora"), ("deberta-v2", "lora")]
    known += [("bert", "ia3"), ("roberta", "ia3"), ("deberta-v2", "ia3")]
    for family, kind in known:
        model = load_classifier(str(sources(family)), LABELS)
        table, ff = peft_tables(kind)
        found = found_targets(model, kind)
        assert sorted(found["target_modules"]) == sorted(table[family]), (family, kind)
        if ff is not None:
            assert found["feedforward_modules"] == ff[family]


# --- refusals: one line, naming the model, the method or task, and what to set --------------------------

#: (family, method) pairs peft 0.21 / this package cannot run, and words the refusal must say
REFUSED = [
    ("distilbert", "prefix", "takes no past_key_values"),
    ("albert", "prefix", "takes no past_key_values"),
    ("mpnet", "prefix", "takes no past_key_values"),
    ("deberta-v2", "prefix", "takes no past_key_values"),
    ("modernbert", "prefix", "takes no past_key_values"),
    ("distilbert", "adapter", "BERT-family encoders only"),
    ("albert", "adapter", "BERT-family encoders only"),
    ("mpnet", "adapter", "BERT-family encoders only"),
    ("modernbert", "adapter", "BERT-family encoders only"),
]


def _refusal(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("family,method,says", REFUSED)
def test_a_method_the_family_cannot_take_is_refused_in_one_line(family, method, says, sources):
    from dapt.finetune.capabilities import check_model_supports

    message = _refusal(lambda: check_model_supports(sources(family), family, {method: {"kind": method}}))
    assert message.startswith(f"methods.{method} (kind {method}) on models.{family}: ") and says in message
    assert "(use " in message  # the remedy


def test_lora_on_distilbert_gets_targets_instead_of_peft_s_error(sources):
    """The user's failure: peft 0.21 has no LoRA defaults for DistilBERT and raised its own error in the
    first fine-tuning job, after all pretraining."""
    from dapt.finetune.capabilities import check_model_supports
    from dapt.finetune.methods import apply_method, load_classifier

    notes = check_model_supports(sources("distilbert"), "distilbert", {"lora": {"kind": "lora"}})
    assert notes["lora"].startswith("adapts q_lin, v_lin (found in the distilbert model")
    model = apply_method(load_classifier(str(sources("distilbert")), LABELS), {"kind": "lora"})
    adapted = {n.rsplit(".", 3)[0].rsplit(".", 1)[1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {"q_lin", "v_lin"}
    trained = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained == {"pre_classifier", "classifier"}  # the whole head trains, and is saved with the adapter


def test_target_modules_that_name_nothing_are_refused(sources):
    from dapt.finetune.capabilities import check_model_supports

    params = {"kind": "lora", "target_modules": ["query", "qkv_nope"]}
    message = _refusal(lambda: check_model_supports(sources("bert"), "bert", {"lora": params}))
    assert message.startswith("methods.lora.target_modules (kind lora) on models.bert: ['qkv_nope'] name no module")
    assert "attention.self.query" in message  # names it could use


def test_a_model_with_no_recognisable_attention_needs_target_modules():
    from types import SimpleNamespace

    from dapt.finetune.peft_targets import resolve_targets

    class Toy(torch.nn.Module):
        base_model_prefix = "toy"
        config = SimpleNamespace(model_type="toy", hidden_size=8, intermediate_size=16)

        def __init__(self):
            super().__init__()
            self.toy = torch.nn.Module()
            self.toy.blocks = torch.nn.ModuleList([torch.nn.ModuleDict({"mixer": torch.nn.Linear(8, 8)})])

    message = _refusal(lambda: resolve_targets(Toy(), {"kind": "lora"}, "methods.lora", "models.toy"))
    assert message.startswith("methods.lora on models.toy: peft has no default lora targets for model type 'toy'")
    assert "set methods.lora.target_modules" in message and "mixer" in message
    assert resolve_targets(Toy(), {"kind": "lora", "target_modules": ["mixer"]})["target_modules"] == ["mixer"]


def test_long_text_on_a_tokenizer_without_special_tokens_is_refused(tmp_path):
    """head_tail and windows keep the leading special token in every row: a tokenizer that adds none is
    refused when the model is stored, and again when the task is tokenized."""
    from helpers.families import bert_config
    from transformers import PreTrainedTokenizerFast

    from dapt.finetune.capabilities import check_model_supports

    tok = wordpiece()
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, pad_token="[PAD]", unk_token="[UNK]")
    bare.backend_tokenizer.post_processor = None
    from transformers import BertForMaskedLM

    BertForMaskedLM(bert_config(tok)).save_pretrained(tmp_path / "plain")
    bare.save_pretrained(tmp_path / "plain")
    long_text = {"reviews": {"strategy": "head_tail", "head": 8}}
    assert check_model_supports(tmp_path / "plain", "plain", {"full": {}})  # methods alone are fine
    message = _refusal(lambda: check_model_supports(tmp_path / "plain", "plain", {}, long_text))
    assert message.startswith("tasks.reviews.long_text.strategy on models.plain: head_tail keeps a leading special")
    assert "adds no special token before a text (use strategy: head" in message


def test_a_family_transformers_cannot_fine_tune_is_refused_when_stored(tmp_path):
    """NeoMME is a masked LM in transformers 5.23 with no sequence classifier: it stores and pretrains,
    and would fail in its first fine-tuning job; the model job refuses it instead."""
    from transformers import AutoModelForMaskedLM, NeoMMEConfig

    from dapt.data.model_store import prepare_model
    from dapt.finetune.capabilities import check_model_supports

    tok = wordpiece()
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    config = NeoMMEConfig(vocab_size=len(tok), intermediate_size=64, embedding_rank=16, pad_token_id=0, **sizes)
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    prepare_model({"source": {"kind": "local", "path": str(tmp_path / "src")}}, "neo", tmp_path / "neo", tmp_path)
    message = _refusal(lambda: check_model_supports(tmp_path / "neo", "neo", {"lora": {"kind": "lora"}}))
    assert message.startswith("models.neo: transformers 5.23.0 has no sequence classifier for model type 'neomme'")


def test_check_model_refuses_in_one_line_and_records_nothing(sources, tmp_path):
    """The check_model job with the study's requirements: one line, exit status 2, no record (every later
    step waits on the record; tests/test_config_checks.py runs it through Snakemake)."""
    required = {"methods": {"lora": {"kind": "lora"}, "prefix": {"kind": "prefix"}}}
    command = [sys.executable, str(REPO / "scripts" / "check_model.py"), "--model", str(sources("modernbert"))]
    command += ["--name", "mbert", "--requirements", json.dumps(required), "--out", str(tmp_path / "checked.json")]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: methods.prefix (kind prefix) on models.mbert: prefix tuning hands trained key/values"
    )
    assert not (tmp_path / "checked.json").exists()
    ok = subprocess.run([*command[:-4], "--requirements", json.dumps({"methods": {"lora": {"kind": "lora"}}}),
                         "--out", str(tmp_path / "checked.json")], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "Wqkv" in json.loads((tmp_path / "checked.json").read_text())["methods"]["lora"]


def test_fine_tuning_refuses_a_method_the_model_cannot_take_before_training(sources, runtime, tmp_path):
    from conftest import write_tokenized_task
    from helpers.family_study import FINETUNE, shared_data

    import dapt.finetune.fine_tuning as ft
    from dapt.study.defaults import FINETUNE_DEFAULTS

    _, splits = shared_data(tmp_path, REPO)
    tokenized = write_tokenized_task(tmp_path, splits, LABELS, sources("albert"), 48)
    params = {**FINETUNE_DEFAULTS, **FINETUNE, "kind": "prefix", "num_virtual_tokens": 4}
    args = (str(sources("albert")), str(tokenized), str(tmp_path / "r"), str(tmp_path / "c"), params, 1, runtime)
    assert "takes no past_key_values" in _refusal(lambda: ft.finetune(*args))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_random_init_builds_every_family_at_new_sizes(family, sources, tmp_path):
    """`random_init` (the test studies' tiny models) at other sizes than the source's: ModernBERT's
    per-layer attention types are derived again for the new depth (the list of 2 failed 3 layers with an
    IndexError), DistilBERT's feed-forward size is its `hidden_dim`."""
    from transformers import AutoConfig

    from dapt.data.model_store import prepare_model

    sizes = {"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96}
    spec = {"source": {"kind": "local", "path": str(sources(family))}, "random_init": sizes}
    prepare_model(spec, family, tmp_path / "model", tmp_path)
    config = AutoConfig.from_pretrained(tmp_path / "model")
    inner = config.hidden_dim if family == "distilbert" else config.intermediate_size
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, inner) == (48, 3, 4, 96)
    if family == "modernbert":
        assert config.layer_types == ["full_attention", "sliding_attention", "full_attention"]


def test_electra_discriminator_checkpoint_pretrains_a_new_generator_head(sources, tmp_path):
    """Released ELECTRA checkpoints are discriminators: stored as a masked LM their generator head is new
    (warmed up alone first), and the masked-only loss runs through it."""
    from transformers import AutoModelForMaskedLM, ElectraForPreTraining

    from dapt.data.model_store import prepare_model
    from dapt.pretrain.mlm import MaskedOnlyMLM
    from dapt.pretrain.pretraining import load_model
    from dapt.runtime.context import setup_runtime

    config = AutoModelForMaskedLM.from_pretrained(sources("electra")).config
    ElectraForPreTraining(config).save_pretrained(tmp_path / "d")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "d" / name).write_bytes((sources("electra") / name).read_bytes())
    summary = prepare_model({"source": {"kind": "local", "path": str(tmp_path / "d")}}, "e", tmp_path / "m", tmp_path)
    assert summary["new_mlm_head_weights"] > 0
    model, new_head, _ = load_model(tmp_path / "m", setup_runtime(0, "fp32", threads=1))
    assert new_head and all(n.startswith("generator_") for n in new_head)
    ids = torch.randint(5, 500, (2, 16))
    loss = MaskedOnlyMLM(model)(ids, torch.where(ids % 3 == 0, ids, torch.full_like(ids, -100)))
    assert torch.isfinite(loss)


KINDS = {
    "full": {},
    "head": {},
    "lora": {"r": 2},
    "adalora": {"r": 4, "target_r": 2, "total_steps": 10},
    "ia3": {},
    "prefix": {"num_virtual_tokens": 3, "max_length": 40},
    "prompt": {"num_virtual_tokens": 3, "max_length": 40},
    "adapter": {"reduction_factor": 4},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_what_the_check_accepts_builds_and_trains(family, sources):
    """For every method kind: accepted by `check_model_supports` => builds, and a backward pass reaches
    what it trains; refused => one line (and the methods refused are exactly `REFUSED`'s)."""
    from dapt.finetune.capabilities import check_model_supports
    from dapt.finetune.methods import apply_method, load_classifier

    refused = set()
    for kind, params in KINDS.items():
        try:
            check_model_supports(sources(family), family, {kind: {"kind": kind, **params}})
        except UserError as err:
            assert "\n" not in str(err)
            refused.add(kind)
            continue
        torch.manual_seed(0)
        model = apply_method(load_classifier(str(sources(family)), LABELS), {"kind": kind, **params})
        ids = torch.randint(5, 500, (2, 12))
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        reached = [p for p in model.parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]
        assert reached, (family, kind)
    assert refused == {m for f, m, _ in REFUSED if f == family}


def test_ia3_target_modules_given_keep_their_feed_forward_ones(sources):
    from dapt.finetune.methods import load_classifier
    from dapt.finetune.peft_targets import resolve_targets

    model = load_classifier(str(sources("modernbert")), LABELS)
    targets = resolve_targets(model, {"kind": "ia3", "target_modules": ["Wqkv", "mlp.Wo"]})
    assert targets["feedforward_modules"] == ["mlp.Wo"]
    assert resolve_targets(model, {"kind": "ia3"})["target_modules"] == ["Wqkv", "mlp.Wo"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_the_families_that_failed_run_a_whole_study_through_snakemake(family, tmp_path):
    """DistilBERT (LoRA failed after its pretraining) and ModernBERT, as a user brings them: a local model
    folder in a study config, through Snakemake: check, TAPT, full + LoRA + head, evaluation, report, deploy
    of LoRA (export, ONNX, int8), then `python -m dapt.deploy.predict` on the ONNX export."""
    import copy

    from conftest import make_workdir, run_snakemake, tiny_config

    model = build_family(family, tmp_path / "models")
    config = copy.deepcopy(tiny_config())
    config["models"] = {family: {"source": {"kind": "local", "path": str(model)}}}
    config["variants"] = {"base": [], "tapt": ["tapt"]}
    config["pretrain"] = {"tapt": {"epochs": 1, "batch_size": 8, "max_length": 32, "lr": 1.0e-3, "save_steps": 5}}
    config["finetune"] = {"epochs": 1, "batch_size": 16, "lr": 1.0e-3, "patience": 2}
    config["methods"] = {"full": {}, "lora": {"lr": 3.0e-3, "r": 4, "alpha": 8}, "head": {"lr": 1.0e-2}}
    config["seeds"] = [1]
    config["deploy"] = {"methods": ["lora"], "latency_texts": 5}
    config.pop("corpora", None)
    work = make_workdir(tmp_path / "study", config)
    proc = run_snakemake(work, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    checked = json.loads((work / f"results/models/{family}.checked.json").read_text())
    assert set(checked["methods"]) == {"full", "lora", "head"} and LORA_TARGETS[family][0] in checked["methods"]["lora"]
    table = (work / "results/report/table.md").read_text()
    assert all(f"| {m} |" in table for m in ("full", "lora", "head"))
    method = json.loads((work / f"results/finetune/rt_polarity/{family}/tapt/lora/seed1/model/method.json").read_text())
    assert method["targets"]["target_modules"] == LORA_TARGETS[family]
    onnx = next((work / "results/deploy").rglob("onnx/model.onnx"))
    texts = "a moving, funny film\nflat and dull\n"
    out = subprocess.run([sys.executable, "-m", "dapt.deploy.predict", "--model", str(onnx)], input=texts,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and out.stdout.splitlines()[0].startswith("line,label"), out.stderr[-2000:]
    assert len(out.stdout.splitlines()) == 3
