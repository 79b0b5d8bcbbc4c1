"""Structured pruning of an exported classifier, so that what is left is still a stock transformers model.

Two cuts, both expressible in a stock config (`num_hidden_layers`, `intermediate_size`), so the pruned folder
reloads with `AutoModelForSequenceClassification.from_pretrained` and no remote code:

- **encoder layers**: the top layers are dropped (Sajjad et al., 2020, "top-layer dropping"), or the ones
  `drop_layers` names; the encoder's layer list is cut and `num_hidden_layers` follows.
- **feed-forward neurons**: each neuron's importance is measured on the validation split as in Michel et al.
  (2019): the gradient of the loss with respect to a mask on the neuron's output (activation x gradient,
  summed over the example's tokens), its absolute value summed over examples. Every kept layer keeps its
  `ffn_keep` share of most important neurons, the same number in every layer, so `intermediate_size` says it.

Attention heads' importance is measured the same way (a mask on each head's share of the attention output,
before its output projection) and recorded in prune.json; heads are not removed: transformers 5 has no
`prune_heads`, and a BERT config derives a head's size from hidden_size / num_attention_heads, so a layer
with fewer heads is not a stock model (docs/pruning.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dapt.core.errors import UserError


def encoder_layers(model: torch.nn.Module, where: str = "deploy.prune") -> torch.nn.ModuleList:
    """The encoder's list of layers (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM, DeBERTa: `<base>.encoder.layer`),
    each with the feed-forward pair `intermediate.dense` / `output.dense`; any other is refused in one line."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    ok = isinstance(layers, torch.nn.ModuleList) and all(
        isinstance(getattr(getattr(layer, "intermediate", None), "dense", None), torch.nn.Linear)
        and isinstance(getattr(getattr(layer, "output", None), "dense", None), torch.nn.Linear)
        for layer in layers
    )
    if not ok or not hasattr(model.config, "intermediate_size"):
        raise UserError(
            where,
            f"cannot prune a {type(model).__name__}: no encoder.layer list of BERT-style layers "
            "(intermediate.dense, output.dense) and intermediate_size in its config",
            "prune a BERT-family model (BERT, MiniLM, RoBERTa, ELECTRA, XLM-R)",
        )
    return layers


def layers_to_keep(n_layers: int, settings: dict) -> list[int]:
    """Indices of the layers kept: all but `drop_layers` if given, else the bottom `keep_layers` (default half)."""
    if settings.get("drop_layers") is not None:
        bad = [i for i in settings["drop_layers"] if not 0 <= i < n_layers]
        if bad:
            raise UserError("deploy.prune.drop_layers", f"{bad} not among the model's layers 0..{n_layers - 1}")
        keep = [i for i in range(n_layers) if i not in set(settings["drop_layers"])]
    else:
        k = settings.get("keep_layers") or -(-n_layers // 2)
        if k > n_layers:
            raise UserError("deploy.prune.keep_layers", f"{k} is more than the model's {n_layers} layers")
        keep = list(range(k))
    if not keep:
        raise UserError("deploy.prune.drop_layers", "drops every layer", "keep at least one")
    return keep


def _sum_over_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x.float() * mask[..., None].float()).sum(1)


def importance(
    model: torch.nn.Module, input_ids: list, labels: np.ndarray, pad_id: int, batch_size: int = 32
) -> dict[str, np.ndarray]:
    """{"ffn": [layers, intermediate], "heads": [layers, heads]}: |d loss / d mask| summed over the examples
    (Michel et al., 2019), the loss the summed cross-entropy on the gold labels; fp32, eval mode."""
    from dapt.runtime.batching import collate, length_sorted_batches

    layers = encoder_layers(model)
    n_heads = model.config.num_attention_heads
    ffn = torch.zeros(len(layers), layers[0].intermediate.dense.out_features, dtype=torch.float64)
    heads = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    state: dict = {}

    def keep(name):
        def hook(module, args, output=None):
            tensor = output if output is not None else args[0]
            if tensor.requires_grad:
                tensor.retain_grad()
            state[name] = tensor

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.intermediate.register_forward_hook(keep(("ffn", i))))
        attention_out = getattr(getattr(layer, "attention", None), "output", None)
        if isinstance(getattr(attention_out, "dense", None), torch.nn.Linear):
            handles.append(attention_out.dense.register_forward_pre_hook(keep(("heads", i))))
    was_training = model.training
    model.eval()
    try:
        for idx in length_sorted_batches([len(x) for x in input_ids], batch_size):
            ids, mask = collate(input_ids, idx, pad_id)
            state.clear()
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=ids, attention_mask=mask).logits
            gold = torch.as_tensor(np.asarray(labels)[idx], dtype=torch.long)
            torch.nn.functional.cross_entropy(logits.float(), gold, reduction="sum").backward()
            for (kind, i), act in state.items():
                if act.grad is None:
                    continue
                per_unit = _sum_over_tokens(act.detach() * act.grad, mask)  # d loss / d mask, per example
                if kind == "ffn":
                    ffn[i] += per_unit.abs().sum(0).double()
                else:
                    per_head = per_unit.view(len(idx), n_heads, -1).sum(-1)
                    heads[i] += per_head.abs().sum(0).double()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {"ffn": ffn.numpy(), "heads": heads.numpy()}


def _slice_linear(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A new Linear keeping `index` along the weight's `dim` (0: outputs, 1: inputs)."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach()[index].clone()
    elif bias is not None:
        bias = bias.detach().clone()
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune(model: torch.nn.Module, keep_layers: list[int], ffn_scores: np.ndarray, ffn_keep: float) -> dict:
    """Cut the model in place: the encoder's layers to `keep_layers`, and in each the `ffn_keep` share of
    feed-forward neurons with the highest `ffn_scores` (one row per original layer). Returns what was kept."""
    layers = encoder_layers(model)
    width = layers[0].intermediate.dense.out_features
    n_keep = max(1, int(round(ffn_keep * width)))
    kept_neurons = []
    new_layers = []
    for i in keep_layers:
        layer = layers[i]
        if n_keep < width:
            index = torch.as_tensor(np.sort(np.argsort(-ffn_scores[i], kind="stable")[:n_keep]), dtype=torch.long)
            layer.intermediate.dense = _slice_linear(layer.intermediate.dense, index, 0)
            layer.output.dense = _slice_linear(layer.output.dense, index, 1)
            kept_neurons.append(index.tolist())
        else:
            kept_neurons.append(list(range(width)))
        new_layers.append(layer)
    for position, layer in enumerate(new_layers):  # layers that know their index (caches) learn the new one
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    model.base_model.encoder.layer = torch.nn.ModuleList(new_layers)
    model.config.num_hidden_layers = len(new_layers)
    model.config.intermediate_size = n_keep
    return {"layers_kept": list(keep_layers), "intermediate_size": n_keep, "ffn_kept": kept_neurons}


def prune_folder(src: str | Path, out: str | Path, val: dict, pad_id: int, settings: dict) -> dict:
    """Prune the transformers folder `src` (a deploy export's pytorch/) into `out`, importance measured on
    the validation split `val` (input_ids, label); write prune.json beside the weights; return its record."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dapt.core.files import atomic_path, write_json

    model = AutoModelForSequenceClassification.from_pretrained(str(src), use_safetensors=True).float()
    layers = encoder_layers(model)
    before = {"layers": len(layers), "intermediate_size": model.config.intermediate_size, "params": n_params(model)}
    keep = layers_to_keep(len(layers), settings)
    scores = importance(model, val["input_ids"], val["label"], pad_id, settings.get("batch_size", 32))
    kept = prune(model, keep, scores["ffn"], settings["ffn_keep"])
    record = {
        "before": before,
        "after": {"layers": len(keep), "intermediate_size": kept["intermediate_size"], "params": n_params(model)},
        "settings": settings,
        "layers_kept": kept["layers_kept"],
        "ffn_kept": kept["ffn_kept"],
        "importance": {
            "measured_on": f"validation split, {len(val['input_ids'])} rows",
            "ffn": scores["ffn"].round(6).tolist(),
            "heads": scores["heads"].round(6).tolist(),
        },
    }
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(tmp)
        for f in Path(src).glob("*.json"):  # how the task reads a text (dapt_input.json), kept as it was
            if not (tmp / f.name).exists():
                (tmp / f.name).write_bytes(f.read_bytes())
        write_json(tmp / "prune.json", record)
    return record


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
