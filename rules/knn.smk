# Step 3a: kNN-TAPT's selection. A variant stage "tapt_knn:<corpus>:<k>" pretrains on the task's
# training text plus each training example's k nearest corpus documents (dapt/pretrain/knn_selection.py). The
# selection is made once per (encoder model, task, corpus, k), shared by every seed and method;
# its train.parquet is then tokenized and pretrained on like any TAPT stage. Helpers: knn_selection
# (rules/tokenize_helpers.smk), knn_selections (rules/report_helpers.smk).


rule select_knn:
    input:
        task=rules.prepare_task.output.task,
        corpus=rules.prepare_corpus.output.corpus,
        model=rules.prepare_model.output.model,
    output:
        selection=directory(layout.KNN_SELECTION),
    log:
        layout.log_path("select_knn", "{model}/{task}/{corpus}-k{k}"),
    benchmark:
        layout.benchmark_path("select_knn", "{model}/{task}/{corpus}-k{k}")
    wildcard_constraints:
        k=r"\d+",
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
        runtime=60,
    params:
        script=script("select_knn.py"),
        hp=lambda w: as_json(study.knn_params(config)),
        runtime=runtime_args(),
    shell:
        "python {params.script} --model {input.model} --task {input.task} --corpus {input.corpus}"
        " --k {wildcards.k} --params {params.hp:q} --gpus {resources.gpu} --threads {threads}"
        " {params.runtime} --out {output} > {log} 2>&1"
