# Step 2: tokenize once per (data, tokenizer, max length); every later job reads these files.
# MLM blocks stream in bounded memory (dapt/tokenize/blocks.py). A DAPT corpus with `shards: N` is tokenized
# by N tokenize_corpus_shard jobs (side by side on a cluster) that tokenize_corpus gathers.


include: "tokenize_helpers.smk"


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
