# A run's pretrained chain, and the end-of-run warning about runs recorded as diverged (Snakefile).
# Included by rules/finetune.smk (Snakemake's linter wants functions and rules in separate files).


def variant_pretrain_summary(wildcards):
    """The summary of the chain a run continues from (none for a base model)."""
    chain = study.chain_for(config, wildcards.variant, wildcards.task)
    if not chain:
        return []
    return [layout.PRETRAIN_SUMMARY.format(model=wildcards.model, chain=chain)]


def warn_failed_runs():
    """One line at the end of a run that has fine-tuning runs recorded as diverged (on_divergence:
    record): the study succeeded, but not every run trained, and the report says which.
    """
    failed = []
    for p in existing(run_files(layout.FINETUNE_TRAIN)):
        try:
            if diverged(json.loads(Path(p).read_text())):
                failed.append(p)
        except (OSError, ValueError, AttributeError):
            pass  # a broken file is for the evaluate job to name, not for this summary line
    if failed:
        print(
            f"warning: {len(failed)} fine-tuning run(s) diverged and were recorded as failed"
            f" (on_divergence: record), e.g. {os.path.dirname(failed[0])}; the report's notes"
            " list them (Runs that failed)"
        )
