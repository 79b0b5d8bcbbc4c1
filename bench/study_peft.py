"""LoRA and the linear probe on the recipe side (bench/bench_study.py): `run_classification.py` has no
flag for either, so this is the short script a user writes from peft's documentation (``LoraConfig`` +
``get_peft_model``, then the ``Trainer``), with `run_classification.py`'s data handling: the same csv
files, tokenization without padding, ``DataCollatorWithPadding``, the accuracy metric loaded with
``evaluate.load`` (a local folder ``accuracy/`` offline), the same ``TrainingArguments`` flags, and
``predict_results.txt`` written as that script writes it (``index<TAB>prediction``).

``--method lora``: LoRA on the attention query/value projections (peft's default for BERT) with the
classifier and the pooler trained and saved beside the adapter; ``--method head``: everything but the
classifier and the pooler frozen (the workflow's ``head`` method trains the same modules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)


@dataclass
class Args:
    model_name_or_path: str
    train_file: str
    validation_file: str
    test_file: str
    method: str = field(default="lora", metadata={"choices": ["lora", "head"]})
    max_seq_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1


HEAD = ("classifier", "pooler")


def build_model(args: Args, num_labels: int):
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=num_labels)
    if args.method == "head":
        for name, p in model.named_parameters():
            p.requires_grad = any(part in name.split(".") for part in HEAD)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        modules_to_save=list(HEAD),
    )
    return get_peft_model(model, config)


def main() -> None:
    args, training_args = HfArgumentParser((Args, TrainingArguments)).parse_args_into_dataclasses()
    set_seed(training_args.seed)
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    raw = load_dataset("csv", data_files=files)
    label_list = sorted({str(x) for x in raw["train"]["label"]})
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)

    def preprocess(examples):
        out = tokenizer(examples["sentence"], max_length=args.max_seq_length, truncation=True)
        out["label"] = [label_list.index(str(x)) for x in examples["label"]]
        return out

    data = raw.map(preprocess, batched=True, remove_columns=["sentence"])
    model = build_model(args, len(label_list))
    import evaluate  # only where the script runs (the recipes' metric); parsing its flags needs no evaluate

    metric = evaluate.load("accuracy")

    def compute_metrics(p):
        return metric.compute(predictions=np.argmax(p.predictions, axis=1), references=p.label_ids)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    trainer.save_model()
    print(trainer.evaluate())
    predictions = trainer.predict(data["test"].remove_columns("label")).predictions
    with open(os.path.join(training_args.output_dir, "predict_results.txt"), "w") as writer:
        writer.write("index\tprediction\n")
        for index, item in enumerate(np.argmax(predictions, axis=1)):
            writer.write(f"{index}\t{label_list[item]}\n")


if __name__ == "__main__":
    main()
