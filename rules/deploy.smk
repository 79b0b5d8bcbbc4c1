# Step 7 (deploy:): export the best run per task and method (validation score) as a plain
# transformers folder, ONNX and int8 ONNX; measure each format on the test split; tabulate and plot.
# Target `deploy` runs it for any study; with a `deploy:` block in the config it is part of `all`.


localrules:
    deploy,


rule deploy_export:
    input:
        candidates=deploy_candidate_inputs,
        tokenized=lambda w: list(deploy_tokenized(w).values())[0],
    output:
        directory("results/deploy/{task}/{method}/export"),
    log:
        "results/logs/deploy_export/{task}/{method}.log",
    benchmark:
        "results/benchmarks/deploy_export/{task}/{method}.tsv"
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
        export="results/deploy/{task}/{method}/export",
        tokenized=lambda w: list(deploy_tokenized(w).values()),
    output:
        "results/deploy/{task}/{method}/measure.json",
    log:
        "results/logs/deploy_measure/{task}/{method}.log",
    benchmark:
        "results/benchmarks/deploy_measure/{task}/{method}.tsv"
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
        deploy_measurements(),
    output:
        **deploy_report_outputs(),
    log:
        "results/logs/deploy_report/deploy_report.log",
    benchmark:
        "results/benchmarks/deploy_report/deploy_report.tsv"
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
