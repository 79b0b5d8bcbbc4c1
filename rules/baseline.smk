# The classical baseline of each task: TF-IDF (word 1-2-grams) + logistic regression, C chosen on
# validation, scored on test (dapt/finetune/tfidf_baseline.py); a row of every report table beside the majority class.


rule baseline:
    input:
        "results/data/tasks/{task}",
    output:
        "results/baseline/{task}/metrics.json",
    log:
        "results/logs/baseline/{task}.log",
    benchmark:
        "results/benchmarks/baseline/{task}.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        script=script("baseline.py"),
        metric=lambda w: grid.task_metric(config, w.task),
    shell:
        "python {params.script} --task-dir {input} --name {wildcards.task}"
        " --metric {params.metric} --threads {threads} --out {output} > {log} 2>&1"
