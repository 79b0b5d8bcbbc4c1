# Step 3: continued MLM pretraining. A chain "dapt-imdb+tapt-rt" is TAPT on rt, continued from
# the chain "dapt-imdb"; each chain is pretrained once and shared by every run that uses it.


include: "pretrain_helpers.smk"


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        model=directory(layout.PRETRAIN_MODEL),
        loss=layout.PRETRAIN_LOSS,
        summary=layout.PRETRAIN_SUMMARY,
    log:
        layout.log_path("pretrain", "{model}/{chain}"),
    benchmark:
        layout.benchmark_path("pretrain", "{model}/{chain}")
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
        # nodes > 1 (SLURM only): gpu is the job's total, spread over the nodes (profiles/slurm)
        nodes=1,
        runtime=240,
    params:
        script=script("pretrain.py"),
        hp=lambda w: as_json(study.mlm_params(config, study.split_chain(w.chain)[1])),
        stage=lambda w: study.split_chain(w.chain)[1],
        parent_summary=lambda w, input: input.get("parent_summary", ""),
        seed=config.get("pretrain_seed", 0),
        runtime=runtime_args(),
        # outside the declared outputs: Snakemake must not wipe them when it reruns a killed job
        checkpoints=layout.PRETRAIN_CHECKPOINTS,
        out=lambda w, output: os.path.dirname(output.summary),
        tracking=lambda w, output: tracking_env(
            "pretrain", model=w.model, chain=w.chain
        ),
    shell:
        "{params.tracking}python {params.script} --parent {input.parent} --blocks {input.blocks}"
        " --parent-summary '{params.parent_summary}'"
        " --stage {params.stage} --params {params.hp:q} --seed {params.seed}"
        " --gpus {resources.gpu} --nodes {resources.nodes} --threads {threads} {params.runtime}"
        " --checkpoints {params.checkpoints} --out {params.out} >> {log} 2>&1"
