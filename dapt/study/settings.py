"""The settings of the study's optional stages that the config layer reads and checks before anything
runs: kNN-TAPT stage names, long-text strategies and their keys, augmentation and robustness settings.

They live here, below the stages that use them (`dapt.pretrain.knn_selection`, `dapt.tokenize.longtext`,
`dapt.data.augment`), so that reading a config never imports a pipeline stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dapt.core.errors import UserError
from dapt.study.layout import value_text

# kNN-TAPT
#: The variant stage "tapt_knn:<corpus>:<k>" and its folder name "tapt_knn-<task>-<corpus>-k<k>" (dapt.study.config).
KIND = "tapt_knn"


def stage_parts(stage: str, corpora: Mapping | None = None, where: str = "variants") -> tuple[str, int]:
    """(corpus, k) of a variant stage 'tapt_knn:<corpus>:<k>'; with `corpora`, an unknown corpus or a k
    that is not a whole number >= 1 is a UserError at `where`."""
    _, _, rest = stage.partition(":")
    corpus, _, k = rest.partition(":")
    if corpora is not None and corpus not in corpora:
        raise UserError(
            where, f"unknown corpus '{corpus}' in '{stage}'", f"known corpora: {', '.join(corpora) or 'none'}"
        )
    if not k.isdigit() or int(k) < 1:
        raise UserError(
            where,
            f"k must be a whole number >= 1 in '{stage}' ({KIND}:<corpus>:<k>)",
            "k documents are taken per training example",
        )
    return corpus, int(k)


def stage_name(task: str, corpus: str, k: int) -> str:
    return f"{KIND}-{task}-{corpus}-k{k}"


def selection_of(name: str) -> dict:
    """task, corpus and k of a stage name 'tapt_knn-<task>-<corpus>-k<k>' (the selection's wildcards)."""
    _, task, corpus, k = name.split("-")
    return {"task": task, "corpus": corpus, "k": k[1:]}


# long documents (tasks.<t>.long_text)
STRATEGIES = ("head", "head_tail", "windows")
POOLS = ("mean", "max")
#: The keys each strategy takes under tasks.<t>.long_text (any other is refused, not ignored).
STRATEGY_KEYS: dict[str, tuple[str, ...]] = {
    "head": (),
    "head_tail": ("head",),
    "windows": ("stride", "pool", "max_windows"),
}


def check_long_text(spec: dict, settings: dict, max_length: int, key: str) -> None:
    """The config's checks of `spec` (tasks.<t>.long_text as written; `settings`: with its defaults,
    `key`: where, for the message): a key of another strategy, a head or a stride of max_length or more."""
    strategy = settings["strategy"]
    for name in spec:
        if name != "strategy" and name not in STRATEGY_KEYS[strategy]:
            owner = next(s for s, keys in STRATEGY_KEYS.items() if name in keys)
            raise UserError(
                f"{key}.{name}", f"applies to strategy {owner}, not {strategy}", f"remove it or set strategy: {owner}"
            )
    if strategy == "head_tail" and settings["head"] >= max_length:
        raise UserError(
            f"{key}.head",
            f"{settings['head']} is not below max_length {max_length}: no room for the tail",
            "head counts the tokens kept from the start; the rest of max_length comes from the end",
        )
    if strategy == "windows" and settings["stride"] >= max_length:
        raise UserError(
            f"{key}.stride",
            f"{settings['stride']} is not below the window (max_length {max_length}): windows would skip tokens",
            f"use a stride below {max_length}, e.g. {max_length // 2}",
        )


# augmentation and robustness
#: `augment` settings a config may leave out.
AUGMENT_DEFAULTS: dict[str, Any] = {"n_aug": 1, "rate": 0.1, "seed": 0}
#: `robustness` settings a config may leave out (max_examples None: the whole test split).
ROBUSTNESS_DEFAULTS: dict[str, Any] = {"seed": 0, "max_examples": None}


def augment_settings(params: dict) -> dict | None:
    """A run's resolved `augment` setting, or None (no augmentation)."""
    spec = params.get("augment")
    return None if not spec else {**AUGMENT_DEFAULTS, **spec, "ops": sorted(spec["ops"])}


def augment_name(settings: dict) -> str:
    """The augmented file's name: every setting, path-safe (`delete_swap-n1-r0.1-s0`)."""
    return (
        f"{'_'.join(settings['ops'])}-n{settings['n_aug']}-r{value_text(float(settings['rate']))}-s{settings['seed']}"
    )


def robustness_settings(config: dict) -> dict | None:
    """The study's resolved `robustness` block, or None (off)."""
    spec = config.get("robustness")
    return None if not spec else {**ROBUSTNESS_DEFAULTS, **spec}


#: Augmented copies per training example a config may ask for: EDA (Wei & Zou, 2019) found 4-16 best and
#: gains flat beyond 32; more only multiplies the training rows, time and memory of every run that reads them.
MAX_N_AUG = 64


def check_augment(config: dict, augment_specs: list[tuple[str, dict]], where: str) -> None:
    """What the schema cannot say: `synonym` needs a `wordnet` source; `n_aug` within MAX_N_AUG (a typo of a
    large number would make and train on hundreds of millions of rows)."""
    for key, spec in augment_specs:
        n_aug = spec.get("n_aug", AUGMENT_DEFAULTS["n_aug"])
        if isinstance(n_aug, int) and n_aug > MAX_N_AUG:
            known = [(t.get("max_examples") or {}).get("train") for t in config.get("tasks", {}).values()]
            known = [n for n in known if isinstance(n, int)]
            estimate = (
                f"{n_aug * max(known):,} augmented rows for {max(known):,} training examples"
                if known
                else f"{n_aug:,} times the training split"
            )
            raise UserError(
                f"{where}: {key}.augment.n_aug",
                f"{n_aug} copies per training example ({estimate}, made once and trained on in every epoch) "
                f"is beyond {MAX_N_AUG}",
                f"use n_aug <= {MAX_N_AUG} (EDA's gains flatten past 16-32)",
            )
    if "wordnet" in config:
        return
    for key, spec in augment_specs:
        if "synonym" in spec.get("ops", []):
            raise UserError(
                f"{where}: {key}.augment.ops",
                "'synonym' needs WordNet, and the study has no wordnet:",
                "add wordnet: {source: ...} (the default study's config/config.yaml shows one)",
            )
    if "synonym" in (robustness_settings(config) or {"perturbations": {}})["perturbations"]:
        raise UserError(
            f"{where}: robustness.perturbations.synonym",
            "needs WordNet, and the study has no wordnet:",
            "add wordnet: {source: ...} (the default study's config/config.yaml shows one)",
        )


# structured pruning with distillation (deploy.prune; dapt.deploy.prune, dapt.finetune.distill)
#: `deploy.prune` settings a config may leave out (keep_layers None: half the model's layers, rounded up).
PRUNE_DEFAULTS: dict[str, Any] = {
    "keep_layers": None,
    "drop_layers": None,
    "ffn_keep": 0.5,
    "without_distillation": True,
}
#: `deploy.prune.distill` settings a config may leave out (batch_size None: the deployed run's).
DISTILL_DEFAULTS: dict[str, Any] = {"temperature": 2.0, "alpha": 0.5, "epochs": 3, "lr": 1.0e-4, "batch_size": None}
#: The pruned copies of a deployed run: distilled from it, and fine-tuned on the hard labels only.
PRUNINGS: tuple[str, ...] = ("distilled", "hard")


def prune_settings(config: dict) -> dict | None:
    """The study's resolved `deploy.prune` block, or None (no pruning, the default)."""
    spec = (config.get("deploy") or {}).get("prune")
    if spec is None:
        return None
    return {**PRUNE_DEFAULTS, **spec, "distill": {**DISTILL_DEFAULTS, **(spec.get("distill") or {})}}


def prunings(config: dict) -> list[str]:
    """Which pruned copies the deploy stage makes: none without `deploy.prune`."""
    spec = prune_settings(config)
    if spec is None:
        return []
    return list(PRUNINGS) if spec["without_distillation"] else ["distilled"]


def check_prune(config: dict, where: str) -> None:
    """What the schema cannot say: keep_layers and drop_layers are two ways to say one thing; a cut that
    keeps everything prunes nothing."""
    spec = prune_settings(config)
    if spec is None:
        return
    if spec["keep_layers"] is not None and spec["drop_layers"] is not None:
        raise UserError(
            f"{where}: deploy.prune.drop_layers", "given with keep_layers: say which layers once", "keep one of the two"
        )
    if spec["drop_layers"] == [] and spec["ffn_keep"] == 1:
        raise UserError(f"{where}: deploy.prune", "drops no layer and keeps every neuron: nothing is pruned")
