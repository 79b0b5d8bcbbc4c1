"""Prepare one model of a study: store it once as safetensors + config + tokenizer, checked to load.

Run by the workflow's model rule, e.g.
    python scripts/prepare_model.py --name minilm --config-json '{"source": {...}}' \
        --out results/models/minilm --cache-dir results/.cache/downloads

The study's methods and long-text readings are checked against the stored model by the next step,
scripts/check_model.py.
"""

from __future__ import annotations

import argparse
import logging

from dapt.core.errors import run_main
from dapt.data.model_store import prepare_model
from dapt.data.sources import add_download_args, download_spec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the model name in the config")
    parser.add_argument("--out", required=True, help="the model folder to write")
    add_download_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = download_spec(args)
    summary = prepare_model(spec, args.name, args.out, args.cache_dir)
    print(
        f"model {args.name}: {summary['model_type']}, {summary['parameters']:,} parameters, "
        f"{summary['tokenizer_size']} tokens, {summary['new_mlm_head_weights']} new MLM-head tensors -> {args.out}"
    )
    print(f"files: {', '.join(summary['files'])}")


if __name__ == "__main__":
    run_main(main)
