# Step 7 (deploy:): export the best run per task and method (validation score) as a plain
# transformers folder, ONNX, ONNX fused by ONNX Runtime's transformer optimizer and int8 ONNX; measure
# each format on the test split in a fresh process (PyTorch bf16 beside them where the CPU runs bf16
# natively); tabulate (int8 against PyTorch fp32, ONNX fp32 and fused fp32) and plot.
# Target `deploy` runs it for any study; with a `deploy:` block in the config it is part of `all`.
# With deploy.prune (off by default), deploy_prune also makes pruned copies of each exported run (distilled
# from it, and on the hard labels only), exported and measured the same way (docs/pruning.md).


include: "deploy_helpers.smk"


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


rule deploy_prune:
    input:
        export=rules.deploy_export.output.export,
        tokenized=lambda w: list(deploy_tokenized(w).values()),
    output:
        export=directory(layout.DEPLOY_PRUNED_EXPORT),
    log:
        layout.log_path("deploy_prune", "{task}/{method}/{pruning}"),
    benchmark:
        layout.benchmark_path("deploy_prune", "{task}/{method}/{pruning}")
    wildcard_constraints:
        pruning="|".join(PRUNINGS),
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
        runtime=120,
    params:
        script=script("deploy_prune.py"),
        settings=lambda w: as_json(PRUNE),
        tokenized=lambda w: as_json(deploy_tokenized(w)),
        formats=",".join(DEPLOY["formats"]),
        opset=DEPLOY["opset"],
        runtime=runtime_args(),
        checkpoints=layout.DEPLOY_PRUNED_CHECKPOINTS,
    shell:
        "python {params.script} --export {input.export} --tokenized {params.tokenized:q}"
        " --settings {params.settings:q} --pruning {wildcards.pruning} --formats {params.formats}"
        " --opset {params.opset} --gpus {resources.gpu} --threads {threads} {params.runtime}"
        " --checkpoints {params.checkpoints} --out {output} >> {log} 2>&1"


use rule deploy_measure as deploy_measure_pruned with:
    input:
        export=rules.deploy_prune.output.export,
        tokenized=lambda w: list(deploy_tokenized(w).values()),
    output:
        measure=layout.DEPLOY_PRUNED_MEASURE,
    log:
        layout.log_path("deploy_measure", "{task}/{method}/{pruning}"),
    benchmark:
        layout.benchmark_path("deploy_measure", "{task}/{method}/{pruning}")
    wildcard_constraints:
        pruning="|".join(PRUNINGS),


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
