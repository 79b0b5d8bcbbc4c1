# The classical baseline of each task: TF-IDF (word 1-2-grams) + logistic regression, C chosen on
# validation, scored on test (dapt/finetune/tfidf_baseline.py); a row of every report table beside the majority class.


rule baseline:
    input:
        task=rules.prepare_task.output.task,
    output:
        metrics=layout.BASELINE,
    log:
        layout.log_path("baseline", "{task}"),
    benchmark:
        layout.benchmark_path("baseline", "{task}")
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
