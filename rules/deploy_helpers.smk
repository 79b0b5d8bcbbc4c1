# The candidate runs of a task and method (the export picks the best), and their measurements.
# Included by rules/deploy.smk (Snakemake's linter wants functions and rules in separate files).


DEPLOY = study.deploy_params(config)
#: deploy.prune resolved (None: no pruning) and the pruned copies of each deployed run (dapt.study.settings).
PRUNE = settings.prune_settings(config)
PRUNINGS = settings.PRUNINGS


def method_of(run):
    """The config's method of a run (its method folder without swept settings)."""
    return grid.run_spec(config, run["task"], run["method"]).method


def deploy_candidates(wildcards):
    """Every run of the grid for this task and method: the export step picks the best."""
    return [
        r
        for r in runs()
        if r["task"] == wildcards.task and method_of(r) == wildcards.method
    ]


def deploy_candidate_inputs(wildcards):
    files = []
    for r in deploy_candidates(wildcards):
        files += [
            layout.FINETUNE_MODEL.format(**r),
            layout.FINETUNE_TRAIN.format(**r),
            variant_checkpoint(_RunWildcards(r)),
        ]
    return files


def deploy_candidates_json(wildcards):
    return as_json(
        [
            dict(
                artifact=layout.FINETUNE_MODEL.format(**r),
                train_json=layout.FINETUNE_TRAIN.format(**r),
                base=variant_checkpoint(_RunWildcards(r)),
                run=r,
            )
            for r in deploy_candidates(wildcards)
        ]
    )


def deploy_tokenized(wildcards):
    """The task tokenized for each model among the candidates (the chosen run's model is read back)."""
    models = sorted({r["model"] for r in deploy_candidates(wildcards)})
    return {
        m: tokenized_task(_RunWildcards(dict(task=wildcards.task, model=m)))
        for m in models
    }


def deploy_measurements():
    pairs = [
        (task, method)
        for task in config["tasks"]
        for method in study.deploy_methods(config)
        if any(r["task"] == task and method_of(r) == method for r in runs())
    ]
    return [layout.DEPLOY_MEASURE.format(task=t, method=m) for t, m in pairs] + [
        layout.DEPLOY_PRUNED_MEASURE.format(task=t, method=m, pruning=p)
        for t, m in pairs
        for p in settings.prunings(config)
    ]
