# Step 2: tokenize once per (data, tokenizer, max length); every later job reads these files.


rule tokenize_corpus:
    input:
        texts=mlm_texts,
        model="results/models/{model}",
    output:
        blocks="results/tokenized/{model}/mlm/{stage}.L{length}.parquet",
        stats="results/tokenized/{model}/mlm/{stage}.L{length}.parquet.json",
    log:
        "results/logs/tokenize_corpus/{model}/{stage}.L{length}.log",
    benchmark:
        "results/benchmarks/tokenize_corpus/{model}/{stage}.L{length}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("tokenize_data.py"),
        # TAPT reads the task's training split only
        texts=lambda w, input: (
            input.texts
            if w.stage.startswith("dapt-")
            else f"{input.texts}/train.parquet"
        ),
    shell:
        "python {params.script} --model {input.model} --max-length {wildcards.length}"
        " --texts {params.texts} --out {output.blocks} --threads {threads} > {log} 2>&1"


rule tokenize_task:
    input:
        task="results/data/tasks/{task}",
        model="results/models/{model}",
    output:
        directory(layout.TOKENIZED_TASK),
    log:
        "results/logs/tokenize_task/{model}/{task}.L{length}{long_text}.log",
    benchmark:
        "results/benchmarks/tokenize_task/{model}/{task}.L{length}{long_text}.tsv"
    wildcard_constraints:
        long_text=layout.LONG_TEXT_SUFFIX,
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        script=script("tokenize_data.py"),
        long_text=long_text_args,
    shell:
        "python {params.script} --model {input.model} --max-length {wildcards.length}"
        " --task {input.task}{params.long_text} --out {output} --threads {threads} > {log} 2>&1"
