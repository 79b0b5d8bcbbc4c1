# The report's files and inputs: every run's files, every chain's MLM loss, every task's baseline,
# every kNN selection; `finished` for the partial report (report_available).
# Included by rules/report.smk (Snakemake's linter wants functions and rules in separate files).


# the report's files: sweep, learning-curve and robustness files only for a study that has them
REPORT_LIST = grid.report_list(config)


def pretrain_losses():
    """The MLM loss curve of every chain (the report plots them)."""
    return [layout.PRETRAIN_LOSS.format(model=m, chain=c) for m, c in pretrain_chains()]


def baseline_metrics():
    """The baseline of every task (a row of every report table)."""
    return [layout.BASELINE.format(task=t) for t in config["tasks"]]


def knn_selections():
    """Every kNN selection of the study (the report's notes describe them)."""
    return sorted(
        {
            knn_selection(model, stage)
            for model, chain in pretrain_chains()
            for stage in chain.split("+")
            if stage.startswith(f"{study.KNN_KIND}-")
        }
    )


def finished(pattern):
    """`pattern` (a layout path of a run's wildcards) of every run whose evaluation finished (its
    metrics.json exists)."""
    done = [r for r in runs() if os.path.exists(layout.EVALUATE_METRICS.format(**r))]
    return [pattern.format(**r) for r in done]
