"""Which modules LoRA, AdaLoRA and IA3 adapt when a method does not name them (`target_modules`).

peft (0.21) picks them from its own per-model-type tables (`peft.utils.constants`); for a model type it
has no entry for (DistilBERT, ALBERT, MPNet, ModernBERT; XLM-R and ELECTRA for AdaLoRA and IA3) it
raises its own error in the first fine-tuning job. Here peft's table is used where it has an entry whose
names occur in the model (so BERT keeps exactly the modules peft picks), and otherwise the modules are
found in the model itself, named as peft's tables name them for the families it knows:

- LoRA, AdaLoRA: the attention's query and value projections (`nn.Linear` named like ``query``/``q_proj``/
  ``q_lin``/``q`` and ``value``/..., inside a module whose path says attention), or its fused QKV
  projection (ModernBERT's ``Wqkv``) where there are no separate ones;
- IA3: the key and value projections (or the fused one) and the feed-forward output projection (the
  `nn.Linear` from the intermediate size back to the hidden size), which is also its ``feedforward_modules``.

A name is the projection's own name where that names no other module (``q_lin``), else its path inside
the layer (``mlp.Wo``, not ModernBERT's attention ``attn.Wo``). What a run used is recorded in its
method.json (`dapt.finetune.methods.save_artifact`).
"""

from __future__ import annotations

import re

from torch import nn

from dapt.core.errors import UserError

TARGETED_KINDS = ("lora", "adalora", "ia3")
QUERY = ("query", "q_proj", "q_lin", "query_proj", "q")
KEY = ("key", "k_proj", "k_lin", "key_proj", "k")
VALUE = ("value", "v_proj", "v_lin", "value_proj", "v")
FUSED = ("Wqkv", "qkv_proj", "qkv", "query_key_value", "in_proj", "c_attn")
_LAYER = re.compile(r"^.*\.\d+\.")  # a path up to its layer index ("encoder.layer.3.")


def peft_tables(kind: str) -> tuple[dict, dict | None]:
    """peft's default target table for a method kind, and IA3's feed-forward table."""
    from peft.utils import constants as c

    if kind == "ia3":
        ff = c.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
        return c.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING, ff
    if kind == "adalora":
        return c.TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING, None
    return c.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, None


def matching(model: nn.Module, target: str) -> list[str]:
    """The modules a target name selects, as peft matches a list entry: the name, or a path ending in
    ``.<name>``."""
    return [n for n, _ in model.named_modules() if n == target or n.endswith("." + target)]


def _linear(model: nn.Module, names: list[str]) -> bool:
    return bool(names) and all(isinstance(model.get_submodule(n), nn.Linear) for n in names)


def _encoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The `nn.Linear` modules inside the encoder's numbered layers."""
    prefix = model.base_model_prefix + "."
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith(prefix) and _LAYER.match(n[len(prefix) :])
    ]


def _name(model: nn.Module, full: str, group: list[str]) -> str:
    """The shortest name that selects exactly the modules `group` (with `full` among them)."""
    leaf = full.rsplit(".", 1)[-1]
    if set(matching(model, leaf)) == set(group):
        return leaf
    return _relative(model, full)


def _relative(model: nn.Module, full: str) -> str:
    """A module's path inside its layer: "bert.encoder.layer.3.output.dense" -> "output.dense"."""
    return _LAYER.sub("", full[len(model.base_model_prefix) + 1 :], count=1)


def _group(model: nn.Module, linears: list[tuple[str, nn.Linear]], pick) -> list[str]:
    """Names of the modules `pick(name, module)` selects, one name per kind of layer-relative path."""
    chosen = [n for n, m in linears if pick(n, m)]
    by_path: dict[str, list[str]] = {}
    for n in chosen:
        by_path.setdefault(_relative(model, n), []).append(n)
    return [_name(model, group[0], group) for group in by_path.values()]


def _attention(names: tuple[str, ...]):
    def pick(full: str, _module) -> bool:
        parent, _, leaf = full.rpartition(".")
        return leaf in names and ("att" in parent.lower())

    return pick


def _feedforward_output(model: nn.Module):
    config = model.config
    inner = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)

    def pick(full: str, module: nn.Linear) -> bool:
        return bool(inner and hidden) and (module.in_features, module.out_features) == (inner, hidden)

    return pick


def found_targets(model: nn.Module, kind: str) -> dict | None:
    """Targets found from the model's own modules (see the module doc), or None."""
    linears = _encoder_linears(model)

    def first_of(names: tuple[str, ...]) -> list[str]:
        return next((g for g in (_group(model, linears, _attention((n,))) for n in names) if g), [])

    pair = first_of(QUERY if kind != "ia3" else KEY), first_of(VALUE)
    attention = pair[0] + pair[1] if all(pair) else _group(model, linears, _attention(FUSED))
    if not attention:
        return None
    if kind != "ia3":
        return {"target_modules": attention}
    feedforward = _group(model, linears, _feedforward_output(model))
    if not feedforward:
        return None
    return {"target_modules": attention + feedforward, "feedforward_modules": feedforward}


def resolve_targets(model: nn.Module, params: dict, method: str = "methods", who: str = "") -> dict:
    """What a LoRA/AdaLoRA/IA3 method adapts: `{"target_modules", ["feedforward_modules",] "source"}`;
    a one-line UserError where nothing can be found, or a given name selects no module (`method`: the
    method's config key, e.g. methods.lora; `who`: the model, for the message)."""
    kind = params["kind"]
    model_type = getattr(model.config, "model_type", type(model).__name__)
    on = f" on {who}" if who else ""
    given = params.get("target_modules")
    if given:
        missing = [t for t in given if not matching(model, t)]
        if missing:
            raise UserError(
                f"{method}.target_modules{on}",
                f"{missing} name no module of the {model_type} model",
                f"name modules of its layers, e.g. {_hint(model)}",
            )
        out = {"target_modules": list(given), "source": "target_modules"}
        if kind == "ia3":  # the feed-forward ones among them scale their input, as IA3 does for the FFN
            ff = params.get("feedforward_modules") or (found_targets(model, "ia3") or {}).get("feedforward_modules", [])
            out["feedforward_modules"] = [t for t in given if t in ff]
        return out
    table, ff_table = peft_tables(kind)
    names = table.get(model_type)
    if isinstance(names, list) and all(matching(model, t) for t in names):
        out = {"target_modules": list(names), "source": f"peft's {kind} table for {model_type}"}
        if ff_table is not None:
            out["feedforward_modules"] = list(ff_table.get(model_type, []))
        return out
    found = found_targets(model, kind)
    if found is None:
        what = "attention projections and feed-forward output" if kind == "ia3" else "attention query/value projections"
        raise UserError(
            f"{method}{on}",
            f"peft has no default {kind} targets for model type '{model_type}', and no {what} were found in it",
            f"set {method}.target_modules to the modules to adapt, e.g. {_hint(model)}",
        )
    return {**found, "source": f"found in the {model_type} model (peft has no {kind} default for it)"}


def _hint(model: nn.Module) -> str:
    """A few layer-relative names of the encoder's linear modules, for a message."""
    paths = []
    for n, _ in _encoder_linears(model):
        rel = _relative(model, n)
        if rel not in paths:
            paths.append(rel)
    return ", ".join(paths[:6]) or "the names printed by model.named_modules()"


def recorded_targets(peft_model, params: dict) -> dict:
    """What a built peft model adapts, read back from its config, and where the names came from (method.json)."""
    config = peft_model.peft_config["default"]
    model_type = getattr(peft_model.config, "model_type", "")
    out = {"target_modules": sorted(config.target_modules)}
    if getattr(config, "feedforward_modules", None) is not None:
        out["feedforward_modules"] = sorted(config.feedforward_modules)
    table = peft_tables(params["kind"])[0].get(model_type)
    if params.get("target_modules"):
        out["source"] = "target_modules"
    elif isinstance(table, list) and set(table) == set(config.target_modules):
        out["source"] = f"peft's {params['kind']} table for {model_type}"
    else:
        out["source"] = f"found in the {model_type} model"
    return out
