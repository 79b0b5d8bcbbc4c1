# Step 7 (deploy:): export the best run per task and method (validation score) as a plain
# transformers folder, ONNX and int8 ONNX; measure each format on the test split; tabulate and plot.
# Target `deploy` runs it for any study; with a `deploy:` block in the config it is part of `all`.

DEPLOY = study.deploy_params(config)


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
    return [
        layout.DEPLOY_MEASURE.format(task=task, method=method)
        for task in config["tasks"]
        for method in study.deploy_methods(config)
        if any(r["task"] == task and method_of(r) == method for r in runs())
    ]


localrules:
    deploy,


rule deploy_export:
    input:
        candidates=deploy_candidate_inputs,
        tokenized=lambda w: list(deploy_tokenized(w).values())[0],
    output:
        export=directory(layout.DEPLOY_EXPORT),
    log:
        layout.log_path("deploy_export", "{task}/{method}"),
    benchmark:
        layout.benchmark_path("deploy_export", "{task}/{method}")
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        script=script("deploy_export.py"),
        candidates=deploy_candidates_json,
        formats=",".join(DEPLOY["formats"]),
        opset=DEPLOY["opset"],
    shell:
        "python {params.script} --candidates {params.candidates:q} --tokenized {input.tokenized}"
        " --formats {params.formats} --opset {params.opset} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule deploy_measure:
    input:
        export=rules.deploy_export.output.export,
        tokenized=lambda w: list(deploy_tokenized(w).values()),
    output:
        measure=layout.DEPLOY_MEASURE,
    log:
        layout.log_path("deploy_measure", "{task}/{method}"),
    benchmark:
        layout.benchmark_path("deploy_measure", "{task}/{method}")
    conda:
        "../envs/train.yaml"
    threads: DEPLOY["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        script=script("deploy_measure.py"),
        formats=",".join(DEPLOY["formats"]),
        latency=DEPLOY["latency_texts"],
        tokenized=lambda w: as_json(deploy_tokenized(w)),
    shell:
        "python {params.script} --export {input.export} --tokenized {params.tokenized:q}"
        " --formats {params.formats} --latency-texts {params.latency} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule deploy_report:
    input:
        measurements=deploy_measurements(),
    output:
        **report_outputs(layout.DEPLOY_REPORT),
    log:
        layout.log_path("deploy_report", "deploy_report"),
    benchmark:
        layout.benchmark_path("deploy_report", "deploy_report")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        script=script("deploy_report.py"),
        out=lambda w, output: os.path.dirname(output.deploy_md),
    shell:
        "python {params.script} --measurements {input} --out {params.out} > {log} 2>&1"


rule deploy:
    input:
        rules.deploy_report.output,
    conda:
        "../envs/report.yaml"
