"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) in plain PyTorch, and the task head.

peft has no bottleneck adapters, and AdapterHub's ``adapters`` 1.3.0 pins ``transformers ~=4.57.6``
while this workflow pins 5.x, so the adapter is a small module of our own: ``x + up(act(down(x)))``
with a zero-initialised up-projection, so that training starts from the pretrained function.

Placement, on the BERT-family sublayer output path ``LayerNorm(dropout(dense(h)) + residual)``: the
adapter rewrites ``dropout(dense(h))`` before the residual sum and LayerNorm, after the attention
output projection and after the feed-forward output projection (``houlsby``), or after the
feed-forward one only (``pfeiffer``). It is attached by a forward hook on the sublayer's ``dropout``
and registered as ``<sublayer>.adapter``, so its weights are named e.g.
``bert.encoder.layer.3.output.adapter.down.weight``.

Trained: the adapters, the task head (see `head_module_names`), and, if ``train_layernorm`` (default
for Houlsby, who trains them; not for Pfeiffer), the encoder layers' LayerNorms. The rest is frozen.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from dapt.core.errors import UserError

PLACEMENTS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}
ACTIVATIONS = {"houlsby": nn.SiLU, "pfeiffer": nn.ReLU}  # AdapterHub's defaults for the two configs


class Bottleneck(nn.Module):
    """Residual bottleneck: x + up(act(down(x))); the identity at initialisation."""

    def __init__(self, hidden: int, bottleneck: int, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = activation()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _apply_adapter(dropout: nn.Module, inputs, output):
    return dropout._dapt_adapter(output)


def head_module_names(model: nn.Module) -> list[str]:
    """Modules of the task head, named relative to the model: every top-level child with parameters
    other than the encoder (BERT's ``classifier``, RoBERTa's ``classifier.dense``/``out_proj``), plus
    the encoder's ``pooler`` where the classifier reads it (BERT). The pooler belongs to the head: an
    MLM checkpoint may not hold one (it is then freshly initialised), and a frozen random pooler
    would be a fixed random projection that an artifact without it could not reproduce."""
    prefix = model.base_model_prefix
    names = [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]
    base = getattr(model, prefix, None)
    if base is not None and getattr(base, "pooler", None) is not None:
        names.append(f"{prefix}.pooler")
    if not names:
        raise UserError("methods", f"{type(model).__name__} has no classification head outside its encoder")
    return names


def train_only_head(model: nn.Module) -> nn.Module:
    """Freeze everything but the task head (the ``head`` method)."""
    heads = tuple(f"{n}." for n in head_module_names(model))
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(heads)
    return model


class _StoredEncoder(nn.Module):
    """Stands in for a frozen encoder stack: returns each text's stored first-position output."""

    def __init__(self, features: dict[bytes, torch.Tensor], output_type: type) -> None:
        super().__init__()
        self.features, self.output_type, self.keys = features, output_type, []

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        rows = torch.stack([self.features[k] for k in self.keys]).to(hidden_states.device)
        return self.output_type(last_hidden_state=rows)


#: Where a base model keeps its layer stack (BERT family: `encoder`; DistilBERT: `transformer`).
ENCODER_ATTRS = ("encoder", "transformer")


def _text_keys(args: tuple, kwargs: dict) -> list[bytes]:
    """One key per text of a batch: a 128-bit digest of its token ids without padding."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    mask = kwargs.get("attention_mask")
    if ids is None:
        raise ValueError("the encoder cache needs input_ids")
    mask = torch.ones_like(ids) if mask is None else mask
    return [
        hashlib.blake2b(row[m.bool()].cpu().numpy().tobytes(), digest_size=16).digest() for row, m in zip(ids, mask)
    ]


def store_frozen_encoder(model: nn.Module, texts: list, pad_id: int, runtime, batch_size: int):
    """For the ``head`` method, whose encoder is frozen: run the encoder once per text, in eval mode,
    and let the task head read the stored output every epoch instead of running the encoder again
    (3 epochs: about a third of the encoder passes). Only the first position is stored, which is
    what BERT-family task heads read (pooler, RoBERTa's classifier); a model whose head reads more
    is caught by comparing logits with and without the store, and then trains as before.

    Returns a function that puts the real encoder back, or None where the store does not apply (the
    features are then those of the encoder in train mode, dropout included)."""
    from dapt.runtime.batching import collate, length_sorted_batches

    base = getattr(model, model.base_model_prefix, None)
    attr = next((a for a in ENCODER_ATTRS if isinstance(getattr(base, a, None), nn.Module)), None)
    encoder = getattr(base, attr) if attr else None
    if encoder is None or any(p.requires_grad for p in encoder.parameters()):
        return None
    features: dict[bytes, torch.Tensor] = {}
    seen: dict[str, Any] = {}

    def remember(module, args, output):
        seen["type"] = type(output)
        for key, row in zip(seen["keys"], output.last_hidden_state[:, :1]):
            features.setdefault(key, row.detach().clone())

    def note_keys(module, args, kwargs):
        seen["keys"] = _text_keys(args, kwargs)
        stored = getattr(base, attr)
        if isinstance(stored, _StoredEncoder):
            stored.keys = seen["keys"]

    pre = base.register_forward_pre_hook(note_keys, with_kwargs=True)
    post = encoder.register_forward_hook(remember)
    was_training = model.training
    model.eval()
    check = None
    try:
        with torch.no_grad():  # not inference_mode: the task head trains on these tensors
            for ids_list in texts:
                for idx in length_sorted_batches([len(x) for x in ids_list], batch_size):
                    ids, mask = collate(ids_list, idx, pad_id)
                    with runtime.autocast():
                        logits = model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits
                    check = check or (ids, mask, logits.float())
        if check is None:
            pre.remove()
            return None
        setattr(base, attr, _StoredEncoder(features, seen["type"]))
        ids, mask, expected = check
        try:
            with torch.no_grad(), runtime.autocast():
                got = model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits.float()
            same = torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
        except (RuntimeError, ValueError, IndexError, TypeError, AttributeError):  # a head that needs more
            same = False
    finally:
        post.remove()
        model.train(was_training)

    def restore() -> None:
        setattr(base, attr, encoder)
        pre.remove()

    if not same:
        restore()
        return None
    return restore


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a BERT-family model (BERT, RoBERTa, XLM-R, ELECTRA, ...), found by
    attribute names: ``<base>.encoder.layer[i]`` with ``attention.output`` and ``output`` sublayers
    that each have ``dense``, ``dropout`` and ``LayerNorm``."""
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    problem = None
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        problem = "no encoder.layer list"
    else:
        for i, layer in enumerate(layers):
            for path in ("attention.output", "output"):
                sub = layer.get_submodule(path) if _has(layer, path) else None
                if (
                    sub is None
                    or not all(hasattr(sub, a) for a in ("dense", "dropout", "LayerNorm"))
                    or not isinstance(sub.dense, nn.Linear)
                    or not isinstance(sub.dropout, nn.Dropout)
                ):
                    problem = f"layer {i} has no BERT-style '{path}' (dense, dropout, LayerNorm)"
                    break
            if problem:
                break
    if problem:
        raise UserError(
            "methods: kind adapter",
            f"bottleneck adapters support BERT-family encoders only; model type '{model_type}': {problem}",
            "use a BERT/RoBERTa-style model, or a peft method (lora, adalora, ia3, prefix, prompt)",
        )
    return list(layers)


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def add_adapters(
    model: nn.Module, reduction_factor: float = 16, placement: str = "pfeiffer", train_layernorm: bool | None = None
) -> nn.Module:
    """Insert bottleneck adapters in place and set what trains; returns the model."""
    if placement not in PLACEMENTS:
        raise UserError("methods: placement", f"unknown adapter placement '{placement}'", "houlsby or pfeiffer")
    if train_layernorm is None:
        train_layernorm = placement == "houlsby"
    layers = encoder_layers(model)
    if any(isinstance(m, Bottleneck) for m in model.modules()):
        raise UserError("methods: kind adapter", "the model already has adapters")
    hidden = model.config.hidden_size
    bottleneck = max(1, int(round(hidden / reduction_factor)))
    sublayers = []
    for layer in layers:
        if "attention" in PLACEMENTS[placement]:
            sublayers.append(layer.attention.output)
        if "ffn" in PLACEMENTS[placement]:
            sublayers.append(layer.output)
    for p in model.parameters():
        p.requires_grad = False
    for sub in sublayers:
        sub.adapter = Bottleneck(hidden, bottleneck, ACTIVATIONS[placement]).to(sub.dense.weight.device)
        # a plain attribute, not a submodule: the weights are registered once, under <sublayer>.adapter
        object.__setattr__(sub.dropout, "_dapt_adapter", sub.adapter)
        sub.dropout.register_forward_hook(_apply_adapter)
    heads = tuple(f"{n}." for n in head_module_names(model))
    for name, p in model.named_parameters():
        if name.startswith(heads):
            p.requires_grad = True
    for sub in sublayers:
        for p in sub.adapter.parameters():
            p.requires_grad = True
    if train_layernorm:
        for layer in layers:
            for ln in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
                for p in ln.parameters():
                    p.requires_grad = True
    return model


def adapter_param_count(model_config, reduction_factor: float, placement: str) -> int:
    """Parameters the adapters alone add, from the model's config (for the tests and the docs)."""
    hidden = model_config.hidden_size
    b = max(1, int(round(hidden / reduction_factor)))
    per = 2 * hidden * b + b + hidden
    return per * model_config.num_hidden_layers * len(PLACEMENTS[placement])
