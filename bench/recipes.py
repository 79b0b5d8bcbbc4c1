"""The peers, rebuilt as transformers' example scripts (run_mlm.py, run_classification.py) run them."""

from __future__ import annotations

from pathlib import Path

import torch


def recipe_mlm_dataset(corpus_pq: Path, tokenizer, max_seq_length: int):
    """run_mlm.py without --line_by_line: tokenize every text, then group_texts in batches of 1000."""
    from itertools import chain

    import datasets
    import pandas as pd

    raw = datasets.Dataset.from_pandas(pd.read_parquet(corpus_pq, columns=["text"]), preserve_index=False)

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {
            k: [t[i : i + max_seq_length] for i in range(0, total_length, max_seq_length)]
            for k, t in concatenated.items()
        }

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    return tokenized.map(group_texts, batched=True)


def recipe_classification_dataset(
    task_dir: Path, split: str, tokenizer, labels: list[str], max_seq_length: int = 128, tuned: bool = False
):
    """run_classification.py's preprocessing, truncation at max_seq_length=128: by default
    (pad_to_max_length=True) every example padded to 128; tuned (--pad_to_max_length False) unpadded,
    for the collator to pad each batch to its longest."""
    import datasets
    import pandas as pd

    df = pd.read_parquet(task_dir / f"{split}.parquet")
    label_to_id = {label: i for i, label in enumerate(labels)}
    raw = datasets.Dataset.from_dict(
        {"sentence": df["text"].tolist(), "label": [label_to_id[str(x)] for x in df["label"]]}
    )
    padding = False if tuned else "max_length"

    def preprocess_function(examples):
        return tokenizer(examples["sentence"], padding=padding, max_length=max_seq_length, truncation=True)

    return raw.map(preprocess_function, batched=True, remove_columns=["sentence"])


def recipe_collator(tokenizer, tuned: bool):
    """run_classification.py's collator: default_data_collator for data padded to 128; with
    --pad_to_max_length False (and no fp16) DataCollatorWithPadding, each batch padded to its longest."""
    from transformers import DataCollatorWithPadding, default_data_collator

    return DataCollatorWithPadding(tokenizer) if tuned else default_data_collator


def group_by_length() -> dict:
    """The TrainingArguments switch for length-grouped training batches: `group_by_length=True` up to
    transformers 4.x, `train_sampling_strategy="group_by_length"` in 5.x (a LengthGroupedSampler
    either way). In 5.x the Trainer's evaluation sampler follows it too (eval_bench reorders the predictions)."""
    from transformers import TrainingArguments

    if "group_by_length" in TrainingArguments.__dataclass_fields__:
        return {"group_by_length": True}
    return {"train_sampling_strategy": "group_by_length"}


def quiet(trainer):
    """No per-log-step printing (ours prints every 10 steps): the recipe computes exactly the same."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def training_args(out: Path, precision: str, seed: int, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        seed=seed,
        bf16=precision == "bf16",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **kw,
    )
