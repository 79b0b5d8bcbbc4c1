"""The measured jobs, each run alone in a child process, so that its wall time, CPU and peak memory are its own."""

from __future__ import annotations

import json
import resource
import time


def job_ours(job: dict) -> dict:
    from dapt.tokenize.blocks import tokenize_corpus

    index = tokenize_corpus(job["corpus"], job["model"], job["block"], job["out"])
    return {
        "tokens": index["tokens"] + index["tokens_left_over"],
        "blocks": index["blocks"],
        "block_tokens": index["tokens"],
        "documents": index["documents"],
    }


def token_count(dataset) -> int:
    """The tokens in a dataset's `input_ids` column, from the Arrow list lengths (offsets only: the
    memory-mapped ids are not read), so counting adds no memory to the measurement."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(dataset.data.column("input_ids"))).as_py() or 0)


def job_peer(job: dict) -> dict:
    """run_mlm.py's preprocessing (transformers examples/pytorch/language-modeling/run_mlm.py, not
    line_by_line): its tokenize_function and group_texts as the script writes them."""
    from itertools import chain

    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    raw_datasets = datasets.load_dataset("parquet", data_files={"train": job["corpus"]}, cache_dir=job["cache"])
    column_names = raw_datasets["train"].column_names
    text_column_name = "text" if "text" in column_names else column_names[0]
    max_seq_length = job["block"]
    num_proc = job["num_proc"] if job["num_proc"] > 1 else None  # the script's default: None

    def tokenize_function(examples):
        return tokenizer(examples[text_column_name], return_special_tokens_mask=True)

    tokenized_datasets = raw_datasets.map(
        tokenize_function,
        batched=True,
        num_proc=num_proc,
        remove_columns=column_names,
        load_from_cache_file=True,
        desc="Running tokenizer on every text in dataset",
    )
    tokens, documents = token_count(tokenized_datasets["train"]), len(tokenized_datasets["train"])

    def group_texts(examples):
        # Concatenate all texts.
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        # We drop the small remainder, we could add padding if the model supported it instead of this drop, you can
        # customize this part to your needs.
        if total_length >= max_seq_length:
            total_length = (total_length // max_seq_length) * max_seq_length
        # Split by chunks of max_len.
        result = {
            k: [t[i : i + max_seq_length] for i in range(0, total_length, max_seq_length)]
            for k, t in concatenated_examples.items()
        }
        return result

    tokenized_datasets = tokenized_datasets.map(
        group_texts,
        batched=True,
        num_proc=num_proc,
        load_from_cache_file=True,
        desc=f"Grouping texts in chunks of {max_seq_length}",
    )
    # its own counts, from its own datasets: the tokens it tokenized, the blocks group_texts made
    train = tokenized_datasets["train"]
    return {
        "tokens": tokens,
        "blocks": len(train),
        "block_tokens": token_count(train),
        "documents": documents,
    }


def job_pretrain(job: dict) -> dict:
    from dapt.pretrain.pretraining import pretrain
    from dapt.runtime.context import setup_runtime
    from dapt.study.defaults import MLM_DEFAULTS

    runtime = setup_runtime(0, "fp32", job["threads"], False, job["model"])
    params = {**MLM_DEFAULTS, "max_steps": job["steps"], "batch_size": 16, "save_steps": 10**6}
    summary = pretrain(job["model"], job["blocks"], job["out"], job["out"] + ".ckpt", params, 0, runtime, "bench")
    return {"blocks": summary["blocks"], "final_loss": summary["final_loss"]}


JOBS = {"ours": job_ours, "peer": job_peer, "pretrain": job_pretrain}


def child(job: dict) -> None:
    from dapt.runtime import cli

    cli.limit_threads(job["threads"])  # before any thread pool starts
    cli.quiet_progress_bars()
    start = time.perf_counter()
    result = JOBS[job["kind"]](job)
    seconds = time.perf_counter() - start
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(
        seconds=seconds,
        cpu_s=own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
        maxrss_mb=own.ru_maxrss / 1024,
        children_maxrss_mb=kids.ru_maxrss / 1024,
    )
    print(json.dumps(result), flush=True)
