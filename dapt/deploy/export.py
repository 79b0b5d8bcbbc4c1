"""Export a fine-tuned run as a plain Hugging Face model folder that loads without this package.

* full, head: the classifier is already a standard model (head: the base encoder + trained head).
* lora, adalora, ia3: peft's `merge_and_unload` folds the adapter into the base weights.
* adapter (bottleneck): not a linear change, so it cannot be merged; the folder carries a 40-line
  modeling file (`modeling_dapt_adapter.py`, registered in config.json's `auto_map`) that adds the
  same adapters to the stock BERT-family class. Loading it needs `trust_remote_code=True`.
* prefix, prompt: refused: the virtual tokens live outside the model's weights (past key/values or
  input embeddings), which a stock classifier cannot take.

Beside the weights, `dapt_input.json` records how the run's task read a text (`max_length` and the
resolved `long_text` setting, from the tokenized task's stats.json); `dapt.deploy.predict` reads it as its
defaults, and the ONNX folders carry a copy. The tokenizer's `model_max_length` is set to the same
length, so a plain `pipeline(..., truncation=True)` cuts as the `head` strategy did.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json, write_json

MERGEABLE = ("lora", "adalora", "ia3")
#: The file, in an export folder (and beside its .onnx), recording how the run's task read a text.
INPUT_FILE = "dapt_input.json"
REFUSED = {
    "prefix": "prefix tuning feeds trained past key/values into every attention layer, which a stock "
    "transformers classifier (and its ONNX graph) has no input for",
    "prompt": "prompt tuning prepends trained virtual-token embeddings to the input, which a stock "
    "transformers classifier (and its ONNX graph) cannot take",
}

ADAPTER_CODE = '''"""Bottleneck adapters (dapt-workflow's `adapter` method) on a stock BERT-family classifier."""
import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

PLACEMENTS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}
ACTIVATIONS = {"houlsby": nn.SiLU, "pfeiffer": nn.ReLU}


class Bottleneck(nn.Module):
    def __init__(self, hidden, bottleneck, activation):
        super().__init__()
        self.down, self.act, self.up = nn.Linear(hidden, bottleneck), activation(), nn.Linear(bottleneck, hidden)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))


def _hook(dropout, inputs, output):
    return dropout._dapt_adapter(output)


def _build(config):
    """The stock classifier class of the config's model type, with the adapters added."""
    spec = config.dapt_adapter
    base_cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]

    class Model(base_cls):
        def __init__(self, cfg):
            super().__init__(cfg)
            base = getattr(self, self.base_model_prefix)
            hidden = cfg.hidden_size
            size = max(1, int(round(hidden / spec["reduction_factor"])))
            for layer in base.encoder.layer:
                subs = ([layer.attention.output] if "attention" in PLACEMENTS[spec["placement"]] else []) + \\
                       ([layer.output] if "ffn" in PLACEMENTS[spec["placement"]] else [])
                for sub in subs:
                    sub.adapter = Bottleneck(hidden, size, ACTIVATIONS[spec["placement"]])
                    object.__setattr__(sub.dropout, "_dapt_adapter", sub.adapter)
                    sub.dropout.register_forward_hook(_hook)

    Model.__name__ = "DaptAdapterForSequenceClassification"
    return Model


class DaptAdapterModel(PreTrainedModel):
    @classmethod
    def from_pretrained(cls, path, *args, config=None, **kwargs):
        config = config or AutoConfig.from_pretrained(path, trust_remote_code=True)
        return _build(config).from_pretrained(path, *args, config=config, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        return _build(config)(config)
'''


def exportable(kind: str) -> str | None:
    """Why a method kind cannot be exported, or None."""
    return REFUSED.get(kind)


def check_run(artifact_dir: str | Path) -> dict:
    """The run's method.json; a clear error if the folder is not a finished fine-tuning artifact."""
    artifact = Path(artifact_dir)
    if not (artifact / "method.json").is_file():
        raise UserError(
            str(artifact),
            "not a fine-tuned run (no method.json)",
            "fine-tune the run first (snakemake results/finetune/<run>/model)",
        )
    return read_json(artifact / "method.json")


def plain_model(artifact_dir: str, base_dir: str, labels: list[str]):
    """The run's classifier as a stock transformers model (adapters kept as modules); its kind."""
    from dapt.finetune.methods import load_finetuned

    info = check_run(artifact_dir)
    kind = info["method"]["kind"]
    reason = exportable(kind)
    if reason:
        raise UserError(
            f"{artifact_dir}: method {kind}",
            f"cannot be exported: {reason}",
            "deploy a full, head, lora, adalora, ia3 or adapter run",
        )
    model, _ = load_finetuned(artifact_dir, base_dir, labels)
    if kind in MERGEABLE:
        _unwrap_saved_modules(model)
        model = model.merge_and_unload()
    return model.eval(), info


def _unwrap_saved_modules(model) -> None:
    """Put the trained copies of peft's `modules_to_save` (the head, BERT's pooler) in place of their
    wrappers before merging: peft 0.21's IA3 unload fails on a wrapped pooler ('BertPooler' object has
    no attribute 'weight'); for LoRA and AdaLoRA this is what unloading does anyway."""
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            active = module.active_adapter
            active = active[0] if isinstance(active, (list, tuple)) else active
            setattr(model.get_submodule(parent) if parent else model, child, module.modules_to_save[active])


def input_settings(tokenized_dir: str | Path) -> dict:
    """How the task in `tokenized_dir` read a text: `{"max_length", "long_text"}` (long_text resolved)."""
    stats = read_json(Path(tokenized_dir) / "stats.json")
    return {"max_length": stats["train"]["max_length"], "long_text": stats.get("long_text") or {"strategy": "head"}}


def read_input_settings(folder: str | Path) -> dict:
    """The export's recorded `dapt_input.json` ({} if it has none, as exports made before it); a bad
    value is a one-line error naming the file and field."""
    from dapt.study.settings import POOLS, STRATEGIES, STRATEGY_KEYS

    path = Path(folder) / INPUT_FILE
    if not path.is_file():
        return {}
    try:
        spec = read_json(path)
    except ValueError as err:
        raise UserError(str(path), f"not valid JSON ({err})", "re-export the run (snakemake deploy)") from None
    fix = "re-export the run, or give --max-length and --long-text"

    def field(name: str, value, ok: bool, want: str):
        if not ok:
            raise UserError(f"{path}: {name}", f"{value!r} is not {want}", fix)
        return value

    spec = field("(top level)", spec, isinstance(spec, dict), "a mapping")
    field("max_length", spec.get("max_length"), _positive_int(spec.get("max_length")), "a positive integer")
    lt = field("long_text", spec.get("long_text"), isinstance(spec.get("long_text"), dict), "a mapping")
    strategy = field(
        "long_text.strategy", lt.get("strategy"), lt.get("strategy") in STRATEGIES, f"one of {', '.join(STRATEGIES)}"
    )
    for key in STRATEGY_KEYS[strategy]:
        value = lt.get(key)
        if key == "pool":
            field(f"long_text.{key}", value, value in POOLS, f"one of {', '.join(POOLS)}")
        elif key != "max_windows" or value is not None:
            field(f"long_text.{key}", value, _positive_int(value), "a positive integer")
    extra = sorted(set(lt) - {"strategy", *STRATEGY_KEYS[strategy]})
    if extra:
        raise UserError(f"{path}: long_text.{extra[0]}", f"does not apply to strategy {strategy}", fix)
    return {"max_length": spec["max_length"], "long_text": lt}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def export_run(
    artifact_dir: str,
    base_dir: str,
    labels: list[str],
    out_dir: str | Path,
    context: dict | None = None,
    tokenized_dir: str | Path | None = None,
) -> dict:
    """Write the self-contained folder (safetensors, config with id2label, tokenizer) atomically; with the
    run's `tokenized_dir`, also how its task read a text (`INPUT_FILE`, the tokenizer's model_max_length)."""
    from dapt.data.model_store import load_tokenizer

    reading = input_settings(tokenized_dir) if tokenized_dir else None
    model, info = plain_model(artifact_dir, base_dir, labels)
    kind = info["method"]["kind"]
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base_dir).save_pretrained(tmp)
        if reading:
            write_json(tmp / INPUT_FILE, reading)
            _set_model_max_length(tmp, reading["max_length"])
        if kind == "adapter":
            _add_adapter_code(tmp, info["method"])
        meta = {
            "method": info["method"],
            "labels": labels,
            "run": context or {},
            "needs_remote_code": kind == "adapter",
        }
        write_json(tmp / "deploy.json", meta)
    return meta


def _set_model_max_length(folder: Path, max_length: int) -> None:
    """The saved tokenizer truncates (`truncation=True`, no max_length) where the task's head cut did."""
    path = folder / "tokenizer_config.json"
    cfg = read_json(path) if path.is_file() else {}
    cfg["model_max_length"] = max_length
    write_json(path, cfg)


def _add_adapter_code(folder: Path, method: dict) -> None:
    (folder / "modeling_dapt_adapter.py").write_text(ADAPTER_CODE, encoding="utf-8")
    cfg = read_json(folder / "config.json")
    cfg["dapt_adapter"] = {
        "placement": method.get("placement", "pfeiffer"),
        "reduction_factor": method.get("reduction_factor", 16),
    }
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_dapt_adapter.DaptAdapterModel"}
    write_json(folder / "config.json", cfg)


def copy_serving_files(src: Path, dest: Path) -> None:
    """Tokenizer and config (labels) beside an .onnx file, so the folder serves on its own."""
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model") and f.name != "deploy.json":
            shutil.copy2(f, dest / f.name)
