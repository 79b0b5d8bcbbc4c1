"""Study config: validation with one-line errors, and the few derived names the rules share.

A *variant* is a chain of MLM stages ("dapt:<corpus>"; "dapt", on the task's own ``domain`` corpus;
"tapt") applied before fine-tuning. Its checkpoint folder is named by the chain with the task filled
in, e.g. ``dapt-imdb+tapt-rt``, so that chains shared by several variants or tasks are pretrained once.
"""

from __future__ import annotations

import yaml

from dapt.core.errors import UserError
from dapt.core.strict_yaml import read_yaml  # noqa: F401 (the study config's reader; the rules call study.read_yaml)
from dapt.study.defaults import (
    CORPUS_SHARDS,
    DEPLOY_DEFAULTS,
    DEPLOY_FORMATS,
    FINETUNE_DEFAULTS,
    KNN_DEFAULTS,
    LONG_TEXT_DEFAULTS,
    METHOD_KINDS,
    MLM_DEFAULTS,
    NOT_EXPORTABLE_KINDS,
    SCHEMA,
    TASK_MAX_LENGTH,
)
from dapt.study.settings import KIND as KNN_KIND
from dapt.study.settings import check_augment, check_long_text, check_prune
from dapt.study.settings import stage_name as knn_stage_name
from dapt.study.settings import stage_parts as knn_stage_parts
from dapt.study.sweeps import fine_tuning_blocks, without_sweeps


def _key_path(error) -> str:
    """The key as the user writes it: variants.dapt[0], tasks.rt.max_length."""
    path = ""
    for p in error.absolute_path:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    return path or "(top level)"


def _message(error) -> str:
    """jsonschema's message, without the schema internals a user cannot act on."""
    if error.validator == "pattern" and "variants" in list(error.absolute_path)[:1]:
        return f"{error.instance!r} is not a pretraining stage (use dapt:<corpus>, dapt, tapt or tapt_knn:<corpus>:<k>)"
    if error.validator == "oneOf" and all("required" in s for s in error.validator_value):
        choices = " or ".join(f"{s['required'][0]}:" for s in error.validator_value)
        return f"needs exactly one of {choices}"
    if error.validator in ("pattern", "oneOf", "anyOf"):
        return f"{error.instance!r} is not valid here" if not isinstance(error.instance, dict) else "is not valid here"
    return error.message.replace("\n", " ")


def validate_config(config: dict, where: str = "config") -> None:
    """Schema and cross-reference checks; raises UserError naming the file and the key."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    # sweep lists (and learning-curve sizes) are checked item by item first, then the schema sees one value
    checked = without_sweeps(config, schema, where)
    errors = sorted(validator.iter_errors(checked), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        err = errors[0]
        raise UserError(f"{where}: {_key_path(err)}", _message(err), "see docs/config-reference.md")
    for method in config["methods"]:
        kind = method_kind(config, method)
        if kind in METHOD_KINDS:
            continue
        known = ", ".join(METHOD_KINDS)
        if "kind" in config["methods"][method]:
            raise UserError(f"{where}: methods.{method}.kind", f"unknown method kind '{kind}'", f"known kinds: {known}")
        raise UserError(
            f"{where}: methods.{method}",
            f"no kind: given and '{kind}' is not a method kind",
            f"add kind: one of {known}",
        )
    corpora = config.get("corpora") or {}
    for variant, stages in config["variants"].items():
        for i, stage in enumerate(stages):
            kind, _, corpus = stage.partition(":")
            if stage == "dapt":  # each task's own domain corpus
                for task, spec in config["tasks"].items():
                    domain = spec.get("domain")
                    if domain not in corpora:
                        raise UserError(
                            f"{where}: tasks.{task}.domain",
                            f"unknown corpus '{domain}'" if domain else "missing",
                            f"variant '{variant}' has a bare 'dapt' stage, which pretrains on the task's "
                            "domain corpus; "
                            f"known corpora: {', '.join(corpora) or 'none'}",
                        )
            elif kind == "dapt" and corpus not in corpora:
                raise UserError(
                    f"{where}: variants.{variant}[{i}]",
                    f"unknown corpus '{corpus}'",
                    f"known corpora: {', '.join(corpora) or 'none'}",
                )
            elif kind == KNN_KIND:
                knn_corpus, k = knn_stage_parts(stage, corpora, f"{where}: variants.{variant}[{i}]")
                docs = corpora[knn_corpus].get("max_docs")
                if docs is not None and k > docs:
                    raise UserError(
                        f"{where}: variants.{variant}[{i}]",
                        f"k {k} is more than the {docs} documents of corpus '{knn_corpus}' (its max_docs)",
                        f"use k <= {docs}, or raise corpora.{knn_corpus}.max_docs",
                    )
            if mlm_kind(config, kind) not in (config.get("pretrain") or {}):
                raise UserError(f"{where}: pretrain.{kind}", f"missing, but variant '{variant}' uses {kind}")
    for task, spec in config["tasks"].items():
        for method in spec.get("methods") or {}:
            if method not in config["methods"]:
                raise UserError(
                    f"{where}: tasks.{task}.methods.{method}", "not a method of the study", "add it under methods"
                )
    labels = (config.get("report") or {}).get("labels") or {}
    domains = {spec.get("domain") for spec in config["tasks"].values()} - {None}
    for kind, names in (
        ("models", config["models"]),
        ("tasks", config["tasks"]),
        ("domains", domains),
        ("variants", config["variants"]),
        ("methods", config["methods"]),
    ):
        for name in labels.get(kind) or {}:
            if name not in names:
                raise UserError(
                    f"{where}: report.labels.{kind}.{name}",
                    f"not one of the study's {kind}",
                    f"known: {', '.join(sorted(names)) or 'none'}",
                )
    for name, spec in corpora.items():
        shards, docs = spec.get("shards", 1), spec.get("max_docs")
        if docs is not None and shards > docs:
            raise UserError(
                f"{where}: corpora.{name}.shards",
                f"{shards} shards for at most {docs} documents (max_docs): a shard would be empty",
                f"use shards <= {docs}",
            )
    _validate_deploy(config, where)
    check_augment(
        config, [(key, block["augment"]) for key, block, _ in fine_tuning_blocks(config) if block.get("augment")], where
    )
    for task, spec in config["tasks"].items():
        check_long_text(
            spec.get("long_text") or {},
            long_text_params(config, task),
            task_max_length(config, task),
            f"{where}: tasks.{task}.long_text",
        )
    overrides = [(f"methods.{m}", spec) for m, spec in config["methods"].items()]
    overrides += [
        (f"tasks.{t}.methods.{m}", spec)
        for t, tspec in config["tasks"].items()
        for m, spec in (tspec.get("methods") or {}).items()
    ]
    for key, spec in overrides:
        for i, variant in enumerate(spec.get("variants") or []):
            if variant not in config["variants"]:
                raise UserError(
                    f"{where}: {key}.variants[{i}]",
                    f"unknown variant '{variant}'",
                    f"known variants: {', '.join(config['variants'])}",
                )


def resolve_stage(config: dict, stage: str, task: str) -> str:
    """A bare 'dapt' stage is DAPT on the task's own domain corpus (``tasks.<t>.domain``), as in
    Table 5 of Don't Stop Pretraining, where each task adapts to its own domain."""
    return f"dapt:{config['tasks'][task]['domain']}" if stage == "dapt" else stage


def stage_name(stage: str, task: str) -> str:
    """'dapt:imdb' -> 'dapt-imdb'; 'tapt' -> 'tapt-<task>'; 'tapt_knn:imdb:50' -> 'tapt_knn-<task>-imdb-k50'."""
    kind, _, corpus = stage.partition(":")
    if kind == KNN_KIND:
        return knn_stage_name(task, *knn_stage_parts(stage))
    return f"dapt-{corpus}" if kind == "dapt" else f"tapt-{task}"


def knn_params(config: dict) -> dict:
    """How the kNN-TAPT selection embeds texts: `knn` with its defaults (KNN_DEFAULTS)."""
    return {**KNN_DEFAULTS, **(config.get("knn") or {})}


def mlm_kind(config: dict, kind: str) -> str:
    """The `pretrain` block a stage kind trains with: kNN-TAPT falls back to TAPT's settings."""
    return "tapt" if kind == KNN_KIND and KNN_KIND not in (config.get("pretrain") or {}) else kind


def chain_for(config: dict, variant: str, task: str) -> str:
    """Checkpoint chain of a variant for a task; '' for the base model."""
    return "+".join(stage_name(resolve_stage(config, s, task), task) for s in config["variants"][variant])


def split_chain(chain: str) -> tuple[str, str]:
    """'a+b+c' -> ('a+b', 'c'): the parent checkpoint and the stage that continues from it."""
    parent, _, last = chain.rpartition("+")
    return parent, last


def mlm_params(config: dict, stage: str) -> dict:
    kind = mlm_kind(config, stage.split("-", 1)[0])
    return {**MLM_DEFAULTS, **(config.get("pretrain") or {}).get(kind, {})}


def method_kind(config: dict, method: str) -> str:
    """A method's kind: its ``kind`` key, else its name (``methods: {lora: {}}``)."""
    return config["methods"][method].get("kind", method)


def method_variants(config: dict, task: str, method: str) -> list[str]:
    """The variants a method runs on for a task (task.methods.<m>.variants < methods.<m>.variants <
    every variant), in the config's variant order: a study can afford a costly method on fewer
    variants without dropping it."""
    chosen = ((config["tasks"][task].get("methods") or {}).get(method) or {}).get("variants") or config["methods"][
        method
    ].get("variants")
    return [v for v in config["variants"] if chosen is None or v in chosen]


def finetune_params(config: dict, task: str, method: str) -> dict:
    """Hyperparameters of one run: finetune < task.finetune < methods.<m> < task.methods.<m>."""
    task_spec = config["tasks"][task]
    merged = {**FINETUNE_DEFAULTS, **(config.get("finetune") or {}), **(task_spec.get("finetune") or {})}
    merged.update(config["methods"][method])
    merged.update((task_spec.get("methods") or {}).get(method, {}))
    merged.pop("variants", None)  # which runs exist, not how one trains
    merged["kind"] = method_kind(config, method)
    merged["metric"] = task_spec.get("metric", "macro_f1")
    merged["max_length"] = task_max_length(config, task)
    return merged


def corpus_shards(config: dict, corpus: str) -> int:
    """Tokenize jobs of a DAPT corpus: each takes a run of its documents, one job gathers them."""
    return (config.get("corpora") or {}).get(corpus, {}).get("shards", CORPUS_SHARDS)


def task_max_length(config: dict, task: str) -> int:
    """Tokens per example of a task: the rules name the tokenized folder by it, fine-tuning reads it."""
    return config["tasks"][task].get("max_length", TASK_MAX_LENGTH)


def long_text_params(config: dict, task: str) -> dict:
    """A task's long_text with its defaults filled in: `{"strategy": "head"}` (the default), `{"strategy":
    "head_tail", "head"}` or `{"strategy": "windows", "stride", "pool", "max_windows"}`. It names the
    tokenized folder (dapt.study.layout.tokenized_task) and is stored beside the tokens."""
    return resolve_long_text(config["tasks"][task].get("long_text") or {}, task_max_length(config, task))


def resolve_long_text(spec: dict, length: int) -> dict:
    """A long_text mapping with its defaults filled in for rows of `length` tokens (also dapt.deploy.predict's
    flags)."""
    strategy = spec.get("strategy", LONG_TEXT_DEFAULTS["strategy"])
    if strategy == "head_tail":
        return {"strategy": strategy, "head": spec.get("head", int(length * LONG_TEXT_DEFAULTS["head_fraction"]))}
    if strategy == "windows":
        return {
            "strategy": strategy,
            "stride": spec.get("stride", int(length * LONG_TEXT_DEFAULTS["stride_fraction"])),
            "pool": spec.get("pool", LONG_TEXT_DEFAULTS["pool"]),
            "max_windows": spec.get("max_windows", LONG_TEXT_DEFAULTS["max_windows"]),
        }
    return {"strategy": strategy}


def deploy_params(config: dict) -> dict:
    """The `deploy:` block with its defaults (formats in their fixed order)."""
    merged = {**DEPLOY_DEFAULTS, **(config.get("deploy") or {})}
    merged["formats"] = [f for f in DEPLOY_FORMATS if f in merged["formats"]]
    return merged


def deploy_methods(config: dict) -> list[str]:
    """Methods the deploy stage exports: `deploy.methods`, or every exportable method of the study."""
    chosen = deploy_params(config)["methods"]
    if chosen is not None:
        return list(chosen)
    return [m for m in config["methods"] if method_kind(config, m) not in NOT_EXPORTABLE_KINDS]


def _validate_deploy(config: dict, where: str) -> None:
    if "deploy" not in config:
        return
    params = deploy_params(config)
    if "onnx_int8" in params["formats"] and "onnx" not in params["formats"]:
        raise UserError(f"{where}: deploy.formats", "onnx_int8 quantizes the ONNX export", "list onnx too")
    check_prune(config, where)
    for i, method in enumerate(params["methods"] or []):
        if method not in config["methods"]:
            raise UserError(
                f"{where}: deploy.methods[{i}]",
                f"'{method}' is not a method of the study",
                f"known: {', '.join(config['methods'])}",
            )
        kind = method_kind(config, method)
        if kind in NOT_EXPORTABLE_KINDS:
            raise UserError(
                f"{where}: deploy.methods[{i}]",
                f"method '{method}' ({kind} tuning) cannot be exported: its trained virtual tokens live "
                "outside the model's weights, which a stock transformers classifier or ONNX graph cannot take",
                "deploy full, head, lora, adalora, ia3 or adapter runs",
            )
