"""Whether a model can take each fine-tuning method and long-text strategy of a study, checked when the
model is stored (the `check_model` step, scripts/check_model.py) and again when a run starts, so that a method
the model's family cannot take is refused in one line before any pretraining runs, not deep inside peft
after it. The model is built on the meta device (no weights, no memory): only its structure is read.

Refused, naming the model, the method or task, and what to set:

- lora, adalora, ia3: no default targets (peft has none for the model type and none are found in the model,
  `dapt.finetune.peft_targets`), or `target_modules` that name no module;
- prefix: a model whose forward takes no past key/values (peft's own requirement; DistilBERT, ALBERT,
  MPNet, DeBERTa-v2, ModernBERT), or virtual tokens beyond its positions; prompt: the same positions;
- adapter: layers that are not BERT-style (`dapt.finetune.adapters.encoder_layers`);
- full, head: a model type without a sequence-classification class, or without a head outside its encoder;
- long_text head_tail/windows: a tokenizer without a leading special token (`dapt.tokenize.longtext`),
  and, where the task's max_length is given, a head or stride that does not fit, or more positions than
  the model has.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from dapt.core.errors import UserError
from dapt.study.defaults import METHOD_KINDS

__all__ = ["check_model_supports", "check_method", "skeleton_classifier", "takes_past_key_values"]


def label(model_name: str | None, model_dir: str | Path) -> str:
    """How messages name the model: its config entry, else its folder."""
    return f"models.{model_name}" if model_name else f"the model in {model_dir}"


def skeleton_classifier(model_dir: str | Path, who: str) -> torch.nn.Module:
    """The model's sequence classifier on the meta device (structure only), with its config."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from dapt.data.model_store import trusts_remote_code

    trust = trusts_remote_code(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust)
    config.num_labels = 2
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    build = lambda: AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust)
    try:
        try:
            with torch.device("meta"):
                return build()
        except (ValueError, KeyError):
            raise
        except Exception:  # noqa: BLE001  (custom code that cannot be built without weights: built for real)
            return build()
    except (ValueError, KeyError) as err:
        raise UserError(
            who,
            f"transformers {transformers.__version__} has no sequence classifier for model type {config.model_type!r} "
            f"({type(err).__name__} from AutoModelForSequenceClassification)",
            "use an encoder with a ...ForSequenceClassification class",
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def takes_past_key_values(model: torch.nn.Module) -> bool:
    """Whether peft's prefix tuning can hand the model its trained key/values: the classifier's forward,
    or its encoder's, takes `past_key_values` (peft's own test)."""
    for module in (model, getattr(model, model.base_model_prefix, None)):
        if module is not None and "past_key_values" in inspect.signature(module.forward).parameters:
            return True
    return False


def check_method(model: torch.nn.Module, method: str, params: dict, who: str) -> str:
    """Refuse the method if the model cannot take it; else a note of what it will train."""
    from dapt.finetune.adapters import encoder_layers, head_module_names
    from dapt.finetune.methods import position_budget
    from dapt.finetune.peft_targets import TARGETED_KINDS, resolve_targets

    kind = params.get("kind", method)
    where = f"methods.{method} (kind {kind}) on {who}"
    model_type = model.config.model_type
    if kind not in METHOD_KINDS:
        raise UserError(where, f"unknown method kind '{kind}'", f"use one of {', '.join(METHOD_KINDS)}")
    try:
        head = head_module_names(model)
        if kind in TARGETED_KINDS:
            targets = resolve_targets(model, {**params, "kind": kind}, f"methods.{method}", who)
            return f"adapts {', '.join(targets['target_modules'])} ({targets['source']})"
        if kind == "adapter":
            return f"adapters in {len(encoder_layers(model))} layers"
    except UserError as err:  # the same problem, said for this method and model, keeping the key it names
        key = err.where.split(" on ")[0] if err.where.startswith(f"methods.{method}") else f"methods.{method}"
        raise UserError(f"{key} (kind {kind}) on {who}", err.problem, err.fix) from None
    if kind == "prefix" and not takes_past_key_values(model):
        raise UserError(
            where,
            f"prefix tuning hands trained key/values to every attention layer, and the {model_type} model takes "
            "no past_key_values (peft: 'Model does not support past key values')",
            f"use lora, ia3 or prompt tuning for {who}",
        )
    if kind in ("prefix", "prompt"):
        budget, tokens = position_budget(model), params.get("num_virtual_tokens", 20)
        if budget is not None and params.get("max_length") and params["max_length"] + tokens > budget:
            raise UserError(
                where,
                f"max_length {params['max_length']} + {tokens} virtual tokens exceed the model's {budget} positions",
                "lower the task's max_length or num_virtual_tokens",
            )
        return f"{tokens} virtual tokens"
    return f"trains {'everything' if kind == 'full' else ', '.join(head)}"


def check_long_text(tokenizer, model_dir: str | Path, task: str, settings: dict, who: str) -> None:
    """Refuse a task's long_text strategy (and, given its `max_length`, its sizes) the model cannot take."""
    from dapt.tokenize import longtext
    from dapt.tokenize.tasks import check_max_length

    key = f"tasks.{task}.long_text"
    strategy = settings.get("strategy", "head")
    try:
        specials = longtext.check_tokenizer(tokenizer, strategy, key)
        if settings.get("max_length"):
            check_max_length(model_dir, settings["max_length"], f"tasks.{task}.max_length")
            if specials is not None:
                longtext.check_settings(settings, settings["max_length"], specials, key)
    except UserError as err:
        raise UserError(f"{err.where} on {who}", err.problem, err.fix) from None


def check_model_supports(
    model_dir: str | Path,
    model_name: str | None,
    methods: dict[str, dict],
    long_text: dict[str, dict] | None = None,
) -> dict[str, str]:
    """Refuse, in one line (`UserError`), any method of `methods` ({method name: params incl. kind}) or
    long-text setting of `long_text` ({task: resolved long_text, optionally with the task's max_length})
    that the model in `model_dir` cannot take. Returns a note per method (what it will train)."""
    who = label(model_name, model_dir)
    model = skeleton_classifier(model_dir, who)
    notes = {method: check_method(model, method, params or {}, who) for method, params in methods.items()}
    if long_text:
        from dapt.data.model_store import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        for task, settings in long_text.items():
            check_long_text(tokenizer, model_dir, task, settings or {}, who)
    return notes
