# The texts each MLM stage tokenizes (a corpus, a task's training split or a kNN selection), a
# corpus's shards, and the folder of a task tokenized for a model (rules/finetune.smk and
# rules/deploy.smk read it too).
# Included by rules/tokenize.smk (Snakemake's linter wants functions and rules in separate files).


def mlm_texts(wildcards):
    kind, name = wildcards.stage.split("-", 1)
    if kind == "dapt":
        return layout.CORPUS.format(corpus=name)
    # kNN-TAPT: the task's text and its chosen corpus documents (rules/knn.smk)
    if kind == study.KNN_KIND:
        return knn_selection(wildcards.model, wildcards.stage)
    return layout.TASK.format(task=name)


def knn_selection(model, stage):
    """The selection folder of a kNN-TAPT stage name (tapt_knn-<task>-<corpus>-k<k>, rules/knn.smk)."""
    return layout.KNN_SELECTION.format(model=model, **settings.selection_of(stage))


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
