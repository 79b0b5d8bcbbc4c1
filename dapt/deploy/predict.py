"""Label texts with an exported model: `python -m dapt.deploy.predict --model <folder or .onnx>`.

Texts come from --input (or stdin): one per line, or a CSV column (--column, or a .csv file's 'text'
column). Writes CSV to --output (or stdout): row, label, and one probability column per label.
A folder holding safetensors weights runs in PyTorch (transformers); an .onnx file, or a folder
holding model.onnx, runs in ONNX Runtime (the tokenizer and labels are read from its folder).
A model reads texts as its task did: the export's `dapt_input.json` (written by `dapt.deploy.export`,
copied beside the .onnx) gives the task's max_length and long_text strategy (`head`, `head_tail`, or
`windows`: a text's windows pooled into one row, `dapt.tokenize.longtext`) as defaults; --max-length,
--long-text, --head, --stride, --pool and --max-windows replace them. One line on stderr says which
setting is used and where it came from.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from dapt.core.errors import UserError, run_main


def read_texts(source: str | None, column: str | None, encoding: str = "utf-8") -> tuple[list[str], str]:
    """The input's texts, one per line of a text file or per row of a CSV column, blank ones included (they
    keep their place: row N of the output is line N of the input), and the name of the numbering column."""
    import pandas as pd

    where = source or "stdin"
    if source and not Path(source).is_file():
        raise UserError(source, "no such file", "give a text file with one text per line, or a CSV")
    data = Path(source).read_bytes() if source else sys.stdin.buffer.read()
    try:
        raw = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise UserError(
            where,
            f"not {encoding} text (byte 0x{data[err.start]:02x} at offset {err.start})",
            "give its encoding with --encoding (e.g. latin-1), or convert it to UTF-8",
        ) from None
    except LookupError:
        raise UserError("--encoding", f"unknown encoding '{encoding}'", "e.g. utf-8, latin-1, cp1252") from None
    if column or (source or "").endswith(".csv"):
        column = column or "text"
        try:
            df = pd.read_csv(io.StringIO(raw), dtype=str, keep_default_na=False)
        except Exception as err:  # noqa: BLE001  (pandas' parser errors)
            raise UserError(where, f"not a readable CSV ({str(err).splitlines()[0] if str(err) else err})") from None
        if column not in df.columns:
            raise UserError(
                where,
                f"no column '{column}' (columns: {', '.join(map(str, df.columns))})",
                "name the text column with --column",
            )
        texts, numbering = df[column].tolist(), "row"
    else:
        texts, numbering = raw.splitlines(), "line"
    if not any(t.strip() for t in texts):
        raise UserError(where, "no texts to label (the input is empty)", "give one text per line, or a CSV column")
    return texts, numbering


#: The fewest tokens a row may hold (the schema's least tasks.<t>.max_length): the special tokens and some text.
MIN_LENGTH = 8


class Predictor:
    """Tokenizer + model of an export (PyTorch folder or ONNX); `predict_proba(texts)`."""

    def __init__(
        self, model: str, threads: int = 0, max_length: int | None = None, long_text: dict | None = None
    ) -> None:
        """`max_length` and `long_text` (resolved, `dapt.study.config.resolve_long_text`): None takes the
        export's recorded ones (`dapt_input.json`), or, without it, head at the model's limit."""
        from dapt.core.files import read_json
        from dapt.deploy.export import INPUT_FILE, read_input_settings
        from dapt.tokenize.tasks import position_limit

        if max_length is not None and max_length < MIN_LENGTH:  # 0 would read as "not given", -5 overflow
            raise UserError("--max-length", f"{max_length} tokens: a row needs at least {MIN_LENGTH}", "e.g. 128")
        path = Path(model)
        if not path.exists():
            raise UserError(model, "no such model file or folder", "give an export folder or a .onnx file")
        self.onnx = path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file())
        folder = path.parent if path.is_file() else path
        if not (folder / "config.json").is_file():
            raise UserError(
                model, "no config.json beside the model (labels unknown)", "give a folder written by the deploy step"
            )
        cfg = read_json(folder / "config.json")
        self.labels = [
            cfg.get("id2label", {}).get(str(i), f"LABEL_{i}") for i in range(len(cfg.get("id2label", {})) or 2)
        ]
        self.recorded = read_input_settings(folder)
        self.recorded_in = folder / INPUT_FILE
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as err:
            raise UserError(str(folder), f"no usable tokenizer ({str(err).splitlines()[0][:200]})") from None
        # an export with dapt_input.json set the tokenizer's model_max_length to the task's: not a limit then
        tok_limit = None if self.recorded else self.tokenizer.model_max_length
        limits = [
            n
            for n in (max_length or self.recorded.get("max_length"), position_limit(folder), tok_limit)
            if n and n < 100_000
        ]
        self.max_length = min(limits) if limits else 512
        from dapt.deploy.measure import load_logits_fn

        fmt = "onnx" if self.onnx else "pytorch"
        if not self.onnx and not list(folder.glob("*.safetensors")):
            raise UserError(
                model, "no safetensors weights and no model.onnx", "give a folder written by the deploy step"
            )
        self.logits = load_logits_fn(fmt, path if self.onnx else folder, threads or 0)
        self.long_text = None
        self.use(long_text or self.recorded.get("long_text") or {"strategy": "head"})

    def use(self, long_text: dict) -> None:
        """Read texts by this (resolved) long_text setting from now on."""
        self.long_text = long_text if long_text["strategy"] != "head" else None

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        from dapt.deploy.onnx import softmax

        if self.long_text is not None:
            return self._predict_long(texts, batch_size)
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            out.append(softmax(self.logits(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))))
        return np.concatenate(out)

    def _predict_long(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Rows cut as the task's tokenization cut them; a text's windows pooled into one row."""
        from dapt.deploy.onnx import softmax
        from dapt.tokenize import longtext

        specials = longtext.special_counts(self.tokenizer)
        longtext.check_settings(self.long_text, self.max_length, specials, "--long-text")
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        rows, doc, _ = longtext.document_rows(encoded, self.long_text, self.max_length, specials)
        pad = self.tokenizer.pad_token_id or 0
        out = []
        for i in range(0, len(rows), batch_size):
            part = rows[i : i + batch_size]
            ids = np.full((len(part), max(map(len, part))), pad, dtype=np.int64)
            mask = np.zeros_like(ids)
            for r, row in enumerate(part):
                ids[r, : len(row)], mask[r, : len(row)] = row, 1
            out.append(softmax(self.logits(ids, mask)))
        probs = np.concatenate(out)
        if self.long_text["strategy"] != "windows":
            return probs
        return longtext.pool(probs, np.asarray(doc), self.long_text["pool"])


FLAG_KEYS = (("head", "--head"), ("stride", "--stride"), ("pool", "--pool"), ("max_windows", "--max-windows"))


def choose_reading(args: argparse.Namespace, predictor: Predictor) -> tuple[dict, str]:
    """The long_text setting to use and one line saying it and where it came from: --long-text (its
    other flags, defaults for the rest), else the export's record with any of --head/--stride/--pool/
    --max-windows replacing its values, else head. A flag of another strategy is refused."""
    from dapt.study.config import resolve_long_text
    from dapt.study.settings import STRATEGY_KEYS

    flags = {k: getattr(args, k) for k, _ in FLAG_KEYS if getattr(args, k) is not None}
    recorded = predictor.recorded.get("long_text")
    where = str(predictor.recorded_in)
    if args.long_text:
        settings, source = resolve_long_text({"strategy": args.long_text, **flags}, predictor.max_length), "--long-text"
    elif recorded:
        settings, source = {**recorded, **flags}, where + (" and the command line" if flags else "")
    else:
        settings, source = {"strategy": "head"}, f"the default (no {predictor.recorded_in.name} beside the model)"
    for key, flag in FLAG_KEYS:
        if key in flags and key not in STRATEGY_KEYS[settings["strategy"]]:
            raise UserError(
                flag,
                f"applies to another strategy than {settings['strategy']} (from {source})",
                "set --long-text to the strategy it belongs to, or drop it",
            )
    length = "--max-length" if args.max_length else (where if predictor.recorded else "the model's limit")
    shown = ", ".join(f"{k} {settings[k]}" for k in STRATEGY_KEYS[settings["strategy"]] if k in settings)
    line = (
        f"dapt.deploy.predict: reading texts with max_length {predictor.max_length} (from {length}) and long_text "
        f"{settings['strategy']}{f' ({shown})' if shown else ''} (from {source})"
    )
    return settings, line


def to_csv(texts: list[str], probs: np.ndarray, labels: list[str], numbering: str = "line") -> str:
    """One row per input text, numbered as in the input (`line` of a text file, `row` of a CSV)."""
    import pandas as pd

    df = pd.DataFrame({numbering: np.arange(1, len(texts) + 1), "label": [labels[i] for i in probs.argmax(1)]})
    for j, lab in enumerate(labels):
        df[f"p_{lab}"] = probs[:, j].round(6)
    return df.to_csv(index=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dapt.deploy.predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export folder (PyTorch or ONNX) or a .onnx file")
    p.add_argument("--input", help="text file (one text per line) or CSV; default: stdin")
    p.add_argument("--column", help="CSV column holding the texts (default for a .csv input: 'text')")
    p.add_argument("--encoding", default="utf-8", help="the input's text encoding (default: utf-8)")
    p.add_argument("--output", help="CSV file to write (default: stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the runtime's default)")
    p.add_argument(
        "--max-length",
        type=int,
        help="tokens per model row (default: the export's dapt_input.json, else the model's limit)",
    )
    p.add_argument(
        "--long-text",
        choices=["head", "head_tail", "windows"],
        help="how a longer text is read (default: the export's dapt_input.json, else head)",
    )
    p.add_argument(
        "--head", type=int, help="head_tail: tokens from the start (default: recorded, or a quarter of max-length)"
    )
    p.add_argument(
        "--stride", type=int, help="windows: tokens between window starts (default: recorded, or half of max-length)"
    )
    p.add_argument(
        "--pool", choices=["mean", "max"], help="windows: how a text's windows are pooled (default: recorded, or mean)"
    )
    p.add_argument(
        "--max-windows",
        type=int,
        help="windows: at most this many per text (default: recorded, or dapt.study.config's)",
    )
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    texts, numbering = read_texts(args.input, args.column, args.encoding)
    blank = sum(not t.strip() for t in texts)
    if blank:  # kept in place (and labelled as an empty text is, as the evaluate step would): row N is line N
        print(f"{blank} blank {numbering}(s) labelled as empty texts, in place", file=sys.stderr)
    from dapt.runtime.cli import limit_threads, quiet_progress_bars

    limit_threads(args.threads)
    quiet_progress_bars()
    predictor = Predictor(args.model, args.threads, args.max_length)
    settings, line = choose_reading(args, predictor)
    print(line, file=sys.stderr)
    predictor.use(settings)
    text = to_csv(texts, predictor.predict_proba(texts, args.batch_size), predictor.labels, numbering)
    if args.output:
        from dapt.core.files import write_text

        write_text(args.output, text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    run_main(main)
