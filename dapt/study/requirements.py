"""What a study asks of each of its models: every fine-tuning method it will run and every task's long-text
reading. The `check_model` step hands this to `dapt.finetune.capabilities.check_model_supports` right after
the model is stored, so a method or reading the model cannot take is refused before any tokenization or
pretraining is scheduled past it."""

from __future__ import annotations

from collections.abc import Mapping

from dapt.study.config import long_text_params, task_max_length
from dapt.study.grid import run_params, runs

#: The run parameters the check reads (dapt.finetune.capabilities, dapt.finetune.peft_targets): only these
#: go into the check's params, so a new learning rate or batch size re-checks nothing.
CAPABILITY_KEYS = ("kind", "target_modules", "feedforward_modules", "num_virtual_tokens", "max_length")


def model_requirements(config: Mapping, model: str) -> dict:
    """{"methods": {method folder: what the check reads of its run's params (CAPABILITY_KEYS; max_length: the
    longest task's)},
    "long_text": {task: resolved long_text with the task's max_length}} for `model`."""
    methods: dict[str, dict] = {}
    for run in runs(config):
        if run["model"] != model:
            continue
        params = run_params(config, run["task"], run["method"])
        name = run["method"]
        longest = max(params["max_length"], methods.get(name, {}).get("max_length", 0))
        methods[name] = {**{k: params[k] for k in CAPABILITY_KEYS if k in params}, "max_length": longest}
    long_text = {
        task: {**long_text_params(dict(config), task), "max_length": task_max_length(dict(config), task)}
        for task in config["tasks"]
    }
    return {"methods": methods, "long_text": long_text}
