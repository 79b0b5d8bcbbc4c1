# Step 3: continued MLM pretraining. A chain "dapt-imdb+tapt-rt" is TAPT on rt, continued from
# the chain "dapt-imdb"; each chain is pretrained once and shared by every run that uses it.


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        model=directory("results/pretrain/{model}/{chain}/model"),
        loss="results/pretrain/{model}/{chain}/loss.csv",
        summary="results/pretrain/{model}/{chain}/summary.json",
    log:
        "results/logs/pretrain/{model}/{chain}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}/{chain}.tsv"
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
        checkpoints="results/checkpoints/pretrain/{model}/{chain}",
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
