# Step 1: download (or read) models, corpora and tasks into normalized, checksummed local copies.


include: "data_helpers.smk"


localrules:
    prepare_model,
    check_model,
    prepare_corpus,
    prepare_task,


rule prepare_model:
    output:
        model=directory(layout.MODEL),
    log:
        layout.log_path("prepare_model", "{model}"),
    benchmark:
        layout.benchmark_path("prepare_model", "{model}")
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("prepare_model.py"),
        spec=lambda w: as_json(config["models"][w.model]),
        cache=layout.CACHE,
        unverified=download_args(),
    shell:
        "python {params.script} --config-json {params.spec:q}"
        " --name {wildcards.model} --out {output} --cache-dir {params.cache}{params.unverified} > {log} 2>&1"


# Right after the model is stored: every method and long-text reading of the study is checked against
# it (dapt.finetune.capabilities); a method the model cannot take stops the study here, in one line. It
# runs first (priority) and `all` asks for it; nothing else takes it as input: Snakemake 9 skips the
# rerun checks of everything below a job that reruns when the edge is ancient() (dag.update_needrun), so
# a changed method list would re-check the model and silently keep stale runs. Fine-tuning checks again.
rule check_model:
    input:
        model=rules.prepare_model.output.model,
    output:
        checked=layout.MODEL_CHECK,
    log:
        layout.log_path("check_model", "{model}"),
    benchmark:
        layout.benchmark_path("check_model", "{model}")
    priority: 100
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("check_model.py"),
        requirements=lambda w: as_json(model_requirements(config, w.model)),
    shell:
        "python {params.script} --model {input.model} --name {wildcards.model}"
        " --requirements {params.requirements:q} --out {output.checked} > {log} 2>&1"


rule prepare_corpus:
    output:
        corpus=layout.CORPUS,
    log:
        layout.log_path("prepare_corpus", "{corpus}"),
    benchmark:
        layout.benchmark_path("prepare_corpus", "{corpus}")
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("prepare_data.py"),
        spec=lambda w: as_json(config["corpora"][w.corpus]),
        cache=layout.CACHE,
        unverified=download_args(),
    shell:
        "python {params.script} --kind corpus --config-json {params.spec:q}"
        " --name {wildcards.corpus} --out {output} --cache-dir {params.cache}{params.unverified} > {log} 2>&1"


rule prepare_task:
    output:
        task=directory(layout.TASK),
    log:
        layout.log_path("prepare_task", "{task}"),
    benchmark:
        layout.benchmark_path("prepare_task", "{task}")
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("prepare_data.py"),
        spec=lambda w: as_json(grid.prepare_spec(config, w.task)),
        split_seed=config.get("split_seed", 0),
        cache=layout.CACHE,
        unverified=download_args(),
        curve=lambda w: curve_args(w.task),
    shell:
        "python {params.script} --kind task --config-json {params.spec:q}"
        " --name {wildcards.task} --out {output} --split-seed {params.split_seed}"
        " --cache-dir {params.cache}{params.unverified}{params.curve} > {log} 2>&1"
