# Steps 4 and 5: fine-tune every run of the grid, then evaluate it on the test split (and on its
# perturbed copies, for a study with robustness:).


include: "finetune_helpers.smk"


rule finetune:
    input:
        base=variant_checkpoint,
        pretrain=variant_pretrain_summary,
        tokenized=tokenized_task,
        augmented=augmented_rows,
    output:
        model=directory(layout.FINETUNE_MODEL),
        log=layout.FINETUNE_LOG,
        train=layout.FINETUNE_TRAIN,
    log:
        layout.log_path("finetune", layout.RUN),
    benchmark:
        layout.benchmark_path("finetune", layout.RUN)
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
        runtime=120,
    params:
        script=script("finetune.py"),
        hp=lambda w: as_json(run_params(w)),
        runtime=runtime_args(),
        checkpoints=layout.FINETUNE_CHECKPOINTS,
        out=lambda w, output: os.path.dirname(output.train),
        augmented=lambda w, input: (
            f" --augmented {input.augmented}" if input.augmented else ""
        ),
        # derived from output, so Snakemake's params trigger ignores it: no rerun when it changes
        on_divergence=lambda w, output: config.get(
            "on_divergence", defaults.ON_DIVERGENCE
        ),
        tracking=lambda w, output: tracking_env(
            "finetune",
            task=w.task,
            model=w.model,
            variant=w.variant,
            method=w.method,
            seed=w.seed,
        ),
    shell:
        "{params.tracking}python {params.script} --base {input.base} --tokenized {input.tokenized}"
        " --pretrain-summary '{input.pretrain}'{params.augmented} --params {params.hp:q} --seed {wildcards.seed}"
        " --on-divergence {params.on_divergence}"
        " --gpus {resources.gpu} --threads {threads} {params.runtime}"
        " --checkpoints {params.checkpoints} --out {params.out} >> {log} 2>&1"


rule evaluate:
    input:
        artifact=rules.finetune.output.model,
        train=rules.finetune.output.train,
        base=variant_checkpoint,
        tokenized=tokenized_task,
        perturbed=perturbed_sets,
    output:
        metrics=layout.EVALUATE_METRICS,
        predictions=layout.EVALUATE_PREDICTIONS,
        robustness=layout.EVALUATE_ROBUSTNESS,
    log:
        layout.log_path("evaluate", layout.RUN),
    benchmark:
        layout.benchmark_path("evaluate", layout.RUN)
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
        runtime=30,
    params:
        script=script("evaluate.py"),
        context=lambda w: as_json(
            dict(task=w.task, model=w.model, variant=w.variant, method=w.method)
        ),
        # only what evaluation uses, so a change of a training setting does not re-evaluate twice
        hp=lambda w: as_json({"eval_batch_size": run_params(w)["eval_batch_size"]}),
        runtime=runtime_args(),
        perturbed=lambda w, input: " ".join(
            f"{Path(f).stem}={f}" for f in input.perturbed
        ),
    shell:
        "python {params.script} --artifact {input.artifact} --base {input.base}"
        " --tokenized {input.tokenized} --train-json {input.train} --params {params.hp:q}"
        " --context {params.context:q} --seed {wildcards.seed}"
        " --gpus {resources.gpu} --threads {threads} {params.runtime}"
        " --metrics {output.metrics} --predictions {output.predictions}"
        " --robustness {output.robustness} --perturbed {params.perturbed} > {log} 2>&1"
