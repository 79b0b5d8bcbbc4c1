"""Fine-tuning methods: how a classifier is built, wrapped or frozen for each method, what it saves,
and how a saved run is loaded back. Full fine-tuning, the linear probe (`head`), bottleneck adapters
(`dapt.finetune.adapters`) and peft's LoRA, AdaLoRA, IA3, prefix and prompt tuning.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json, write_json
from dapt.finetune.peft_targets import TARGETED_KINDS, recorded_targets, resolve_targets
from dapt.runtime.context import trainable_state, unwrap
from dapt.study.defaults import PEFT_KINDS

METHOD_KEYS = (
    "kind",
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "feedforward_modules",
    "num_virtual_tokens",
    "reduction_factor",
    "placement",
    "train_layernorm",
    "target_r",
    "tinit_ratio",
    "tfinal_ratio",
    "orth_reg_weight",
    "prefix_projection",
)


def load_classifier(model_dir: str, labels: list[str], trust: bool | None = None):
    """Safetensors weights only; custom model code only if the model's config entry opted in
    (`trust`: that opt-in, when `model_dir` is an artifact that does not record it itself)."""
    from transformers import AutoModelForSequenceClassification

    from dapt.data.model_store import trusts_remote_code

    model_dir = str(model_dir)
    remote = trusts_remote_code(model_dir) if trust is None else trust
    return AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        use_safetensors=True,
        trust_remote_code=remote,
    )


def position_budget(model: torch.nn.Module) -> int | None:
    """Positions the embeddings can address (RoBERTa's start after its padding index)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return None
    emb = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
    pad = getattr(emb, "padding_idx", None)
    return limit - (pad + 1 if isinstance(pad, int) else 0)


def saved_head_modules(model: torch.nn.Module) -> list[str] | None:
    """The task head's modules beyond the ``classifier``/``score`` that peft saves by itself: BERT's and
    ALBERT's ``pooler``, DeBERTa's ``pooler``, DistilBERT's ``pre_classifier``, ModernBERT's ``head``. They
    train and travel with the adapter (an MLM checkpoint lacks them; frozen at a random init they could
    not be restored from the artifact)."""
    from dapt.finetune.adapters import head_module_names

    pooler = f"{model.base_model_prefix}.pooler"
    extra = ["pooler" if n == pooler else n for n in head_module_names(model) if n not in ("classifier", "score")]
    return extra or None


def peft_config(model: torch.nn.Module, params: dict):
    """The peft config of a method: LoRA, AdaLoRA and IA3 adapt `dapt.finetune.peft_targets.resolve_targets`'s
    modules; the task head trains and is saved with the adapter (`saved_head_modules`)."""
    import peft

    kind = params["kind"]
    task = peft.TaskType.SEQ_CLS
    common = dict(task_type=task, modules_to_save=saved_head_modules(model))
    if kind in TARGETED_KINDS:
        targets = resolve_targets(model, params)
        common["target_modules"] = targets["target_modules"]
        if kind == "ia3":
            return peft.IA3Config(**common, feedforward_modules=targets["feedforward_modules"])
    if kind == "lora":
        return peft.LoraConfig(
            **common,
            r=params.get("r", 8),
            lora_alpha=params.get("alpha", 16),
            lora_dropout=params.get("dropout", 0.1),
        )
    if kind == "adalora":
        total = params.get("total_steps")
        if not total:
            raise UserError("methods: kind adalora", "needs the number of training steps (total_steps)")
        init_r = params.get("r", 12)
        target_r = params.get("target_r", min(8, init_r))
        if target_r > init_r:
            raise UserError("methods: target_r", f"target_r {target_r} exceeds the initial rank r {init_r}")
        # the AdaLoRA schedule: full rank for tinit steps, cubic budget decay, fixed ranks for tfinal steps
        tinit = int(params.get("tinit_ratio", 0.1) * total)
        tfinal = int(params.get("tfinal_ratio", 0.2) * total)
        if tinit >= total - tfinal:
            tinit, tfinal = 0, 0
        return peft.AdaLoraConfig(
            **common,
            init_r=init_r,
            target_r=target_r,
            lora_alpha=params.get("alpha", 32),
            lora_dropout=params.get("dropout", 0.1),
            total_step=total,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=1,
            orth_reg_weight=params.get("orth_reg_weight", 0.5),
        )
    tokens = params.get("num_virtual_tokens", 20)
    budget = position_budget(model)
    if budget is not None and params.get("max_length", 0) + tokens > budget:
        raise UserError(
            f"methods: kind {kind}",
            f"max_length {params.get('max_length')} + {tokens} virtual tokens exceed the model's {budget} positions",
            "lower the task's max_length or num_virtual_tokens",
        )
    if kind == "prefix":
        return peft.PrefixTuningConfig(
            **common, num_virtual_tokens=tokens, prefix_projection=params.get("prefix_projection", False)
        )
    # the virtual tokens join the input embeddings: their width, not the hidden size (ALBERT, small ELECTRA)
    width = model.get_input_embeddings().embedding_dim
    heads = model.config.num_attention_heads  # DistilBERT's n_heads, which peft does not read
    return peft.PromptTuningConfig(**common, num_virtual_tokens=tokens, token_dim=width, num_attention_heads=heads)


def apply_method(model: torch.nn.Module, params: dict) -> torch.nn.Module:
    """Wrap or freeze the model for the method; returns the module to train."""
    kind = params["kind"]
    if kind == "full":
        return model
    if kind == "head":
        from dapt.finetune.adapters import train_only_head

        return train_only_head(model)
    if kind == "adapter":
        from dapt.finetune.adapters import add_adapters

        return add_adapters(
            model,
            params.get("reduction_factor", 16),
            params.get("placement", "pfeiffer"),
            params.get("train_layernorm"),
        )
    if kind in PEFT_KINDS:
        import peft

        return peft.get_peft_model(model, peft_config(model, params))
    raise UserError(f"methods.{kind}", f"unknown method kind '{kind}'")


def method_penalty(model: torch.nn.Module, params: dict) -> torch.Tensor | float:
    """A method's own training regulariser, added to the loss: AdaLoRA's orthogonality penalty on
    P and Q (the mean of ||PP^T - I||_F and ||Q^TQ - I||_F), as peft adds when it computes the loss."""
    if params["kind"] != "adalora":
        return 0.0
    weight = params.get("orth_reg_weight", 0.5)
    if weight <= 0:
        return 0.0
    terms = []
    for name, p in unwrap(model).base_model.model.named_parameters():
        if p.requires_grad and (".lora_A." in name or ".lora_B." in name) and p.numel():
            cov = p @ p.T if ".lora_A." in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)))
    return weight * torch.stack(terms).mean() if terms else 0.0


def after_optimizer_step(model: torch.nn.Module, params: dict, step: int) -> None:
    """AdaLoRA: update importance scores, and mask ranks to the scheduled budget (after
    ``optimizer.step()``, before the gradients are cleared)."""
    if params["kind"] == "adalora":
        unwrap(model).base_model.update_and_allocate(step)


ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def method_state(model: torch.nn.Module, params: dict) -> dict:
    """Method state that the weights do not hold, for checkpoints. AdaLoRA: its rank allocator's
    importance scores and their moving averages, which decide the ranks it keeps."""
    if params["kind"] != "adalora":
        return {}
    allocator = unwrap(model).base_model.rankallocator
    return {
        key: {n: t.detach().to("cpu", copy=True) for n, t in getattr(allocator, key).items()} for key in ALLOCATOR_STATE
    }


def resume_method(model: torch.nn.Module, params: dict, saved: dict | None = None) -> None:
    """Restore method state that the checkpointed weights do not hold. AdaLoRA: peft's rank pattern,
    which its final phase masks by (and fails without), rebuilt from the weights, in which the ranks
    it drops have E = 0; and the allocator's importance averages (`method_state`), so a resumed run
    allocates ranks exactly as an uninterrupted one."""
    if params["kind"] != "adalora":
        return
    peft_model = unwrap(model)
    peft_model.peft_config["default"].rank_pattern = {
        name: (p.detach() != 0).view(-1).tolist()
        for name, p in peft_model.base_model.model.named_parameters()
        if ".lora_E.default" in name
    }
    if saved:
        allocator = peft_model.base_model.rankallocator
        devices = {n: p.device for n, p in peft_model.base_model.model.named_parameters()}
        for key in ALLOCATOR_STATE:
            setattr(allocator, key, {n: t.to(devices.get(n, t.device)) for n, t in saved[key].items()})


def _settle_adalora_ranks(model) -> None:
    """Save AdaLoRA's ranks as they are in memory. With a ``rank_pattern`` in its config, peft saves
    (and reloads) only the ranks of the latest mask, while the weights kept may be an earlier, best
    epoch's; and even where they agree, the smaller matrices round differently (~1e-7). Without it,
    the adapter is saved at its initial rank, pruned ranks as zero singular values (E): the same
    function, bit for bit, for a few more kilobytes."""
    model.peft_config["default"].rank_pattern = None


def save_artifact(model: torch.nn.Module, params: dict, labels: list[str], out_dir: Path) -> None:
    """Save what the method trained: the whole model (full), peft's adapter files (peft kinds: the
    adapter and the task head), or the trainable weights only (head, adapter)."""
    model = unwrap(model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        kind = params["kind"]
        if kind == "full":
            model.save_pretrained(tmp)
        elif kind in PEFT_KINDS:
            if kind == "adalora":
                _settle_adalora_ranks(model)
            model.save_pretrained(tmp)
        else:  # head, adapter: only what was trained
            save_file(trainable_state(model, only_trainable=True), str(tmp / "trainable.safetensors"))
        info = {
            "method": {k: params[k] for k in METHOD_KEYS if k in params},
            "labels": labels,
            "total_steps": params.get("total_steps"),
        }
        if kind in TARGETED_KINDS:  # what was adapted, whether the config named it or not
            info["targets"] = recorded_targets(model, params)
        write_json(tmp / "method.json", info)


def load_finetuned(artifact_dir: str, base_dir: str, labels: list[str]) -> tuple[torch.nn.Module, int]:
    """Rebuild the trained classifier from its artifact (and the base checkpoint it was trained from)."""
    from dapt.data.model_store import load_tokenizer

    artifact = Path(artifact_dir)
    info = read_json(artifact / "method.json")
    params = info["method"]
    pad_id = load_tokenizer(base_dir).pad_token_id
    if params["kind"] == "full":
        from dapt.data.model_store import trusts_remote_code

        model = load_classifier(str(artifact), labels, trust=trusts_remote_code(base_dir))
    elif params["kind"] in PEFT_KINDS:
        import peft

        if not (artifact / "adapter_model.safetensors").is_file():  # peft would fall back to a pickle
            raise UserError(str(artifact), "no adapter_model.safetensors", "only safetensors weights are loaded")
        model = peft.PeftModel.from_pretrained(load_classifier(base_dir, labels), str(artifact))
    else:
        model = apply_method(load_classifier(base_dir, labels), {**params, "total_steps": info.get("total_steps")})
        weights = load_file(str(artifact / "trainable.safetensors"))
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        unexpected = sorted(set(weights) - set(model.state_dict()))
        missing = sorted(expected - set(weights))
        if unexpected or missing:
            raise UserError(
                str(artifact),
                "the artifact does not fit its method: "
                f"{len(missing)} trained weights missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unknown (e.g. {unexpected[:2]})",
            )
        model.load_state_dict(weights, strict=False)
    return model.eval(), pad_id
