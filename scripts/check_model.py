"""Check a stored model against what the study asks of it, before anything expensive runs.

Run by the workflow's `check_model` rule, e.g.
    python scripts/check_model.py --model results/models/minilm --name minilm \
        --requirements '{"methods": {"lora": {"kind": "lora", "r": 8}}, "long_text": {"rt": {"strategy": "head"}}}' \
        --out results/models/minilm.checked.json

Every fine-tuning method and long-text reading of the study (`dapt.study.requirements`) is checked by
`dapt.finetune.capabilities.check_model_supports`: one the model cannot take (no LoRA targets found,
prefix tuning without past key values, adapters without BERT-style blocks, head_tail on a tokenizer
without the special tokens it needs …) is refused in one line naming the model, the method and what to
set. The output records what each method will train (its targets).
"""

from __future__ import annotations

import argparse
import json

from dapt.core.errors import UserError, run_main
from dapt.core.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the stored model folder")
    parser.add_argument("--name", required=True, help="the model's name in the config")
    parser.add_argument("--requirements", required=True, help='JSON: {"methods": {...}, "long_text": {...}}')
    parser.add_argument("--out", required=True, help="the record of the check (JSON)")
    args = parser.parse_args()
    try:
        req = json.loads(args.requirements)
    except ValueError as err:
        raise UserError("--requirements", f"not valid JSON ({err})") from None
    from dapt.finetune.capabilities import check_model_supports

    notes = check_model_supports(args.model, args.name, req.get("methods") or {}, req.get("long_text"))
    for method, note in notes.items():
        print(f"method {method}: {note}")
    write_json(args.out, {"model": args.name, "methods": notes, "long_text": sorted(req.get("long_text") or {})})
    print(f"model {args.name}: every method and long-text reading of the study can run -> {args.out}")


if __name__ == "__main__":
    run_main(main)
