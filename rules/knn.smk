# Step 3a: kNN-TAPT's selection. A variant stage "tapt_knn:<corpus>:<k>" pretrains on the task's
# training text plus each training example's k nearest corpus documents (dapt/pretrain/knn_selection.py). The
# selection is made once per (encoder model, task, corpus, k), shared by every seed and method;
# its train.parquet is then tokenized and pretrained on like any TAPT stage (rules/tokenize.smk, mlm_texts).


def knn_selection(model, stage):
    """The selection folder of a kNN-TAPT stage name (tapt_knn-<task>-<corpus>-k<k>)."""
    return layout.KNN_SELECTION.format(model=model, **settings.selection_of(stage))


def knn_selections():
    """Every selection of the study (the report's notes describe them)."""
    return sorted(
        {
            knn_selection(model, stage)
            for model, chain in pretrain_chains()
            for stage in chain.split("+")
            if stage.startswith(f"{study.KNN_KIND}-")
        }
    )


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
