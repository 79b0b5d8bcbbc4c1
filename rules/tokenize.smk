# Step 2: tokenize once per (data, tokenizer, max length); every later job reads these files.
# MLM blocks stream in bounded memory (dapt/tokenize/blocks.py). A DAPT corpus with `shards: N` is tokenized
# by N tokenize_corpus_shard jobs (side by side on a cluster) that tokenize_corpus gathers.


def mlm_texts(wildcards):
    kind, name = wildcards.stage.split("-", 1)
    if kind == "dapt":
        return layout.CORPUS.format(corpus=name)
    # kNN-TAPT: the task's text and its chosen corpus documents (rules/knn.smk)
    if kind == study.KNN_KIND:
        return knn_selection(wildcards.model, wildcards.stage)
    return layout.TASK.format(task=name)


def corpus_shards(stage):
    kind, name = stage.split("-", 1)
    return study.corpus_shards(config, name) if kind == "dapt" else 1


def mlm_text_file(wildcards, texts):
    """TAPT reads the task's training split only."""
    return texts if wildcards.stage.startswith("dapt-") else f"{texts}/train.parquet"


def tokenize_corpus_inputs(wildcards):
    inputs = {
        "texts": mlm_texts(wildcards),
        "model": layout.MODEL.format(model=wildcards.model),
    }
    n = corpus_shards(wildcards.stage)
    if n > 1:
        inputs["shards"] = [
            layout.MLM_SHARD.format(
                model=wildcards.model,
                stage=wildcards.stage,
                length=wildcards.length,
                shard=k,
                shards=n,
            )
            for k in range(1, n + 1)
        ]
    return inputs


def task_max_length(task):
    return study.task_max_length(config, task)


def tokenized_task(wildcards):
    """The task tokenized for the run's model (rules/finetune.smk, rules/deploy.smk)."""
    return layout.tokenized_task(
        wildcards.model,
        wildcards.task,
        task_max_length(wildcards.task),
        study.long_text_params(config, wildcards.task),
    )


def long_text_args(wildcards):
    """--long-text for a task cut otherwise than by its head (head: the plain cut, no flag).
    The folder's suffix must name the task's setting, as no folder may hold another's.
    """
    settings = study.long_text_params(config, wildcards.task)
    if layout.long_text_suffix(settings) != wildcards.long_text:
        raise ValueError(
            f"{wildcards.task}.L{wildcards.length}{wildcards.long_text}: tasks.{wildcards.task}"
            f".long_text is {settings}, not this folder's setting"
        )
    flag = f" --long-text {shlex.quote(as_json(settings))}"
    return "" if settings["strategy"] == "head" else flag


rule tokenize_corpus:
    input:
        unpack(tokenize_corpus_inputs),
    output:
        blocks=directory(layout.MLM_BLOCKS),
    log:
        layout.log_path("tokenize_corpus", "{model}/{stage}.L{length}"),
    benchmark:
        layout.benchmark_path("tokenize_corpus", "{model}/{stage}.L{length}")
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("tokenize_data.py"),
        texts=lambda w, input: mlm_text_file(w, input.texts),
        gather=lambda w, input: (
            " --gather " + " ".join(input.shards) if "shards" in input.keys() else ""
        ),
    shell:
        "python {params.script} --model {input.model} --max-length {wildcards.length}"
        " --texts {params.texts}{params.gather} --out {output} --threads {threads} > {log} 2>&1"


rule tokenize_corpus_shard:
    input:
        texts=mlm_texts,
        model=rules.prepare_model.output.model,
    output:
        shard=temp(directory(layout.MLM_SHARD)),
    log:
        layout.log_path(
            "tokenize_corpus_shard", "{model}/{stage}.L{length}/{shard}-of-{shards}"
        ),
    benchmark:
        layout.benchmark_path(
            "tokenize_corpus_shard", "{model}/{stage}.L{length}/{shard}-of-{shards}"
        )
    wildcard_constraints:
        shard=r"\d+",
        shards=r"\d+",
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("tokenize_data.py"),
        texts=lambda w, input: mlm_text_file(w, input.texts),
    shell:
        "python {params.script} --model {input.model} --max-length {wildcards.length}"
        " --texts {params.texts} --shard {wildcards.shard}/{wildcards.shards}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule tokenize_task:
    input:
        task=rules.prepare_task.output.task,
        model=rules.prepare_model.output.model,
    output:
        tokenized=directory(layout.TOKENIZED_TASK),
    log:
        layout.log_path("tokenize_task", "{model}/{task}.L{length}{long_text}"),
    benchmark:
        layout.benchmark_path("tokenize_task", "{model}/{task}.L{length}{long_text}")
    wildcard_constraints:
        long_text=layout.LONG_TEXT_SUFFIX,
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        # with --long-text for a task not cut by its head; head's command is as before (no rerun)
        script=lambda w: script("tokenize_data.py") + long_text_args(w),
    shell:
        "python {params.script} --model {input.model} --max-length {wildcards.length}"
        " --task {input.task} --out {output} --threads {threads} > {log} 2>&1"
