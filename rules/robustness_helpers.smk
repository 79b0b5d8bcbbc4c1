# The augment: and robustness: settings of the study: augmented training rows (a fine-tuning
# input), perturbed test sets (an evaluation input) and the WordNet synonyms they may need.
# Included by rules/robustness.smk (Snakemake's linter wants functions and rules in separate files).


ROBUSTNESS = settings.robustness_settings(config)


def augmented_rows(wildcards):
    """The augmented training rows a run adds (its augment: setting), or none."""
    augment = settings.augment_settings(run_params(wildcards))
    if augment is None:
        return []
    name = settings.augment_name(augment)
    return [layout.AUGMENTED.format(task=wildcards.task, augment=name)]


def augment_setting(wildcards):
    """The augment: setting an augmented file is named by (some run of the task has it)."""
    for r in runs():
        if r["task"] == wildcards.task:
            augment = settings.augment_settings(run_params(_RunWildcards(r)))
            if augment and settings.augment_name(augment) == wildcards.augment:
                return augment
    raise ValueError(
        f"no run of task {wildcards.task} has augment setting {wildcards.augment}"
    )


def perturbed_sets(wildcards):
    """The perturbed test sets every run of the task is scored on (robustness:), by name."""
    if not ROBUSTNESS:
        return []
    return [
        layout.PERTURBED.format(task=wildcards.task, perturbation=p)
        for p in ROBUSTNESS["perturbations"]
    ]


def synonyms_for(ops):
    """WordNet's synonyms, for the steps whose operations include synonym replacement."""
    return [layout.WORDNET] if "synonym" in ops else []


def synonyms_flag(wildcards, input):
    return f" --synonyms {input.synonyms}" if input.synonyms else ""
