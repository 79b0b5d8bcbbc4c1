"""Prepare one model of a study: store it once as safetensors + config + tokenizer, checked to load.

Run by the workflow's model rule, e.g.
    python scripts/prepare_model.py --name minilm --config-json '{"source": {...}}' \
        --out results/models/minilm --cache-dir results/.cache/downloads \
        --requirements '{"methods": {"lora": {"kind": "lora", "r": 4}}, "long_text": {"imdb": {"strategy": "windows"}}}'

With --requirements, the stored model is checked right away for every fine-tuning method and long-text
setting of the study (`dapt.finetune.capabilities.check_model_supports`): one the model cannot take is
refused in one line, the folder is removed, and nothing expensive runs after it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil

from dapt.core.errors import UserError, run_main
from dapt.data.model_store import prepare_model
from dapt.data.sources import add_download_args, download_spec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the model name in the config")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument(
        "--requirements",
        default="",
        help='JSON: {"methods": {name: params incl. kind}, "long_text": {task: long_text (+ max_length)}} to check',
    )
    add_download_args(parser)
    return parser.parse_args()


def requirements(text: str) -> dict:
    """The --requirements JSON: methods and long-text settings the model must take."""
    try:
        req = json.loads(text) if text else {}
    except ValueError as err:
        raise UserError("--requirements", f"not valid JSON ({err})") from None
    if not isinstance(req, dict) or set(req) - {"methods", "long_text"}:
        raise UserError("--requirements", "must be a mapping with 'methods' and/or 'long_text'")
    return req


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = download_spec(args)
    req = requirements(args.requirements)
    summary = prepare_model(spec, args.name, args.out, args.cache_dir)
    if req:
        from dapt.finetune.capabilities import check_model_supports

        try:
            notes = check_model_supports(args.out, args.name, req.get("methods") or {}, req.get("long_text"))
        except UserError:
            shutil.rmtree(args.out, ignore_errors=True)  # a refused model is not an output to build on
            raise
        for method, note in notes.items():
            print(f"method {method}: {note}")
    print(
        f"model {args.name}: {summary['model_type']}, {summary['parameters']:,} parameters, "
        f"{summary['tokenizer_size']} tokens, {summary['new_mlm_head_weights']} new MLM-head tensors -> {args.out}"
    )
    print(f"files: {', '.join(summary['files'])}")


if __name__ == "__main__":
    run_main(main)
