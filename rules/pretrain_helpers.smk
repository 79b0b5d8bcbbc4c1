# The chains the study pretrains, and a chain's inputs: its parent checkpoint and MLM blocks.
# Included by rules/pretrain.smk (Snakemake's linter wants functions and rules in separate files).


def pretrain_chains():
    """Every (model, chain) some run of the grid continues from (not the base models): the pretrain
    jobs of the study (the report reads their losses and kNN selections)."""
    return sorted(
        {(r["model"], study.chain_for(config, r["variant"], r["task"])) for r in runs()}
        - {(model, "") for model in config["models"]}
    )


def pretrain_inputs(wildcards):
    parent, stage = study.split_chain(wildcards.chain)
    length = study.mlm_params(config, stage)["max_length"]
    inputs = {
        "parent": checkpoint_of(wildcards.model, parent),
        "blocks": layout.MLM_BLOCKS.format(
            model=wildcards.model, stage=stage, length=length
        ),
    }
    if parent:  # the parent stage's summary: totals over the whole chain
        inputs["parent_summary"] = layout.PRETRAIN_SUMMARY.format(
            model=wildcards.model, chain=parent
        )
    return inputs
