"""Measure each exported format on the test split: quality (and its difference to the PyTorch
model), size on disk, peak memory, latency at batch 1 and throughput at batch 32.

Each format runs in its own fresh process (spawned), so its peak memory is that of a process serving
only that format: the ONNX formats never import torch. The peers beside PyTorch fp32 eager: ONNX Runtime
fp32 on the plain graph and on the graph its transformer optimizer fused (`dapt.deploy.fusion`), and
PyTorch bf16 where the CPU runs bf16 natively (`plan`; skipped, with the reason, elsewhere). All formats
see the same token ids (the tokenized test split), so the numbers compare the models, not the tokenizer;
those rows are cut by the task's long_text strategy and a document's windows pooled as the evaluate step
does, which is what the export's `dapt_input.json` tells `dapt.deploy.predict` to do (checked to agree).
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import resource
import struct
import time
from pathlib import Path

import numpy as np

from dapt.core.errors import UserError

THROUGHPUT_BATCH = 32
#: Formats served by PyTorch from the exported folder; `pytorch_bf16` is a peer measured where the CPU
#: runs bf16 natively (`dapt.runtime.precision.cpu_native_bf16`), not a format the export writes.
PYTORCH = ("pytorch", "pytorch_bf16")


def plan(export: str | Path, formats: list[str], info: dict) -> tuple[dict[str, Path], list[dict]]:
    """({format: folder} to measure, PyTorch fp32 first and bf16 beside it where native; [{format, reason}]
    of the peers and formats not measured) for an export folder and its deploy.json `info`."""
    export = Path(export)
    wanted = ["pytorch"] + [f for f in formats if f != "pytorch"]
    paths, skipped = {}, []
    for fmt in wanted:
        if (export / fmt).is_dir():
            paths[fmt] = export / fmt
        elif fmt == "onnx_fused" and info.get("fusion"):
            skipped.append({"format": fmt, "reason": f"not fused: {info['fusion'].get('reason')}"})
        else:
            skipped.append({"format": fmt, "reason": f"not in the export ({export / fmt} is missing)"})
        if fmt == "pytorch":
            native, why = bf16_peer()
            if native:
                paths["pytorch_bf16"] = export / "pytorch"
            else:
                skipped.append({"format": "pytorch_bf16", "reason": why})
    return paths, skipped


def bf16_peer() -> tuple[bool, str]:
    """(whether PyTorch bf16 is a peer on this CPU, why not)."""
    from dapt.runtime.precision import cpu_native_bf16

    native, capability = cpu_native_bf16()
    why = (
        f"this CPU has no native bf16 (no AVX-512 BF16 or AMX; torch CPU capability {capability}): "
        "PyTorch would emulate it, slower than fp32"
    )
    return native, "" if native else why


def pad(input_ids: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and attention mask (int64) of a list of id arrays."""
    width = max(len(x) for x in input_ids)
    ids = np.full((len(input_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(input_ids), width), dtype=np.int64)
    for row, seq in enumerate(input_ids):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def model_files(fmt: str, path: str | Path) -> list[Path]:
    """The files that hold a format's weights and graph (what 'size on disk' counts)."""
    path = Path(path)
    if fmt in PYTORCH:  # bf16: the fp32 folder, cast when loaded
        return sorted(path.glob("*.safetensors"))
    folder = path if path.is_dir() else path.parent
    return sorted(f for f in folder.iterdir() if f.suffix in (".onnx", ".data") or f.name.endswith(".onnx.data"))


def size_bytes(fmt: str, path: str | Path) -> int:
    return sum(f.stat().st_size for f in model_files(fmt, path))


def load_logits_fn(fmt: str, path: str | Path, threads: int):
    """A function (ids, mask) -> logits for one format (`pytorch_bf16`: the PyTorch folder in bfloat16)."""
    if fmt in PYTORCH:
        import torch
        from transformers import AutoModelForSequenceClassification

        from dapt.core.files import read_json

        if threads:
            torch.set_num_threads(threads)
        meta = read_json(Path(path) / "deploy.json") if (Path(path) / "deploy.json").is_file() else {}
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), trust_remote_code=meta.get("needs_remote_code", False), use_safetensors=True
        ).eval()
        if fmt == "pytorch_bf16":
            model = model.to(torch.bfloat16)
        use_types = "token_type_ids" in inspect.signature(model.forward).parameters

        def run(ids, mask):
            with torch.inference_mode():
                kw = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
                if use_types:
                    kw["token_type_ids"] = torch.zeros_like(kw["input_ids"])
                return model(**kw).logits.float().numpy()

        return run
    from dapt.deploy.onnx import OnnxClassifier

    onnx_path = Path(path) / "model.onnx" if Path(path).is_dir() else Path(path)
    return OnnxClassifier(onnx_path, threads=threads).logits


def measure_in_process(
    fmt: str, path: str, input_ids: list[np.ndarray], pad_id: int, threads: int, latency_texts: int
) -> dict:
    """Run in the measuring process: probabilities at batch 32 (timed), then batch-1 latency."""
    from dapt.deploy.onnx import softmax

    fn = load_logits_fn(fmt, path, threads)
    fn(*pad(input_ids[:2], pad_id))  # warm-up (first-call allocations, lazy init)
    probs, start = [], time.perf_counter()
    for i in range(0, len(input_ids), THROUGHPUT_BATCH):
        probs.append(softmax(fn(*pad(input_ids[i : i + THROUGHPUT_BATCH], pad_id))))
    elapsed = time.perf_counter() - start
    lat = []
    for seq in input_ids[:latency_texts]:
        ids, mask = pad([seq], pad_id)
        t = time.perf_counter()
        fn(ids, mask)
        lat.append(time.perf_counter() - t)
    lat_ms = np.asarray(lat) * 1000
    return {
        "probs": np.concatenate(probs),
        "throughput_per_s": len(input_ids) / elapsed,
        "latency_p50_ms": float(np.percentile(lat_ms, 50)),
        "latency_p95_ms": float(np.percentile(lat_ms, 95)),
        "latency_texts": len(lat),
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM counts only what ran since the process started
    its program; `ru_maxrss` starts a spawned child at its parent's peak (bench_deploy's parent, which
    trained the model, gave every format the same 1,964 MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_format(
    fmt: str,
    path: str | Path,
    input_ids: list[np.ndarray],
    pad_id: int,
    threads: int,
    latency_texts: int,
    fresh_process: bool = True,
) -> dict:
    """Measure one format, in a fresh spawned process (its own peak memory) unless told otherwise."""
    args = (fmt, str(path), input_ids, pad_id, threads, latency_texts)
    if not fresh_process:
        return measure_in_process(*args)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_in_process, args)


def measure_all(
    paths: dict[str, str | Path],
    tokenized_dir: str | Path,
    threads: int,
    latency_texts: int,
    fresh_process: bool = True,
    context: dict | None = None,
) -> list[dict]:
    """One row per format (in `paths`' order, PyTorch first if present): quality and its difference to
    PyTorch fp32, size, peak memory, latency, throughput, threads."""
    from dapt.core.files import read_json
    from dapt.finetune.metrics import compute_metrics
    from dapt.tokenize.longtext import per_document
    from dapt.tokenize.tasks import read_examples

    tokenized_dir = Path(tokenized_dir)
    check_reading(paths, tokenized_dir)
    labels = read_json(tokenized_dir / "labels.json")
    test = read_examples(tokenized_dir / "test.parquet")
    first = next(iter(paths.values()))
    pad_id = _pad_id(first)
    rows, ref = [], None
    for fmt, path in paths.items():
        m = measure_format(fmt, path, test["input_ids"], pad_id, threads, latency_texts, fresh_process)
        _, gold, probs = per_document(test, m.pop("probs"))  # a windowed task: one prediction per document
        pred = probs.argmax(1)
        scores = compute_metrics(gold, pred, labels)
        row = {
            **(context or {}),
            "format": fmt,
            "macro_f1": scores["macro_f1"],
            "accuracy": scores["accuracy"],
            "size_mb": size_bytes(fmt, path) / 1e6,
            "threads": threads,
            "n_test": len(pred),
            **m,
        }
        if fmt == "pytorch":
            ref = (probs, pred, scores["macro_f1"], row["size_mb"])
        if ref is not None:
            row.update(
                f1_diff_vs_pytorch=scores["macro_f1"] - ref[2],
                agreement_vs_pytorch=float((pred == ref[1]).mean()),
                max_prob_diff_vs_pytorch=float(np.abs(probs - ref[0]).max()),
                size_ratio_vs_pytorch=row["size_mb"] / ref[3],
            )
        rows.append(row)
    return rows


def check_reading(paths: dict[str, str | Path], tokenized_dir: Path) -> None:
    """Refuse to score an export whose recorded reading of a text (what dapt.deploy.predict will do) is not the
    tokenized task's (what is measured here): its numbers would not describe the deployed model."""
    from dapt.deploy.export import INPUT_FILE, input_settings, read_input_settings

    want = input_settings(tokenized_dir)
    for path in paths.values():
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        recorded = read_input_settings(folder)
        if recorded and recorded != want:
            raise UserError(
                str(folder / INPUT_FILE),
                f"records {recorded}, but the test split in {tokenized_dir} was tokenized with {want}",
                "re-export the run from this task (snakemake deploy)",
            )


def _pad_id(path: str | Path) -> int:
    from dapt.core.files import read_json

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    cfg = read_json(folder / "config.json")
    pad_id = cfg.get("pad_token_id")
    return 0 if pad_id is None else int(pad_id)


def shape_of(folder: str | Path) -> dict:
    """Layers, feed-forward width and parameter count of a transformers folder (config.json and the
    safetensors headers: no weights read); {} for a folder without config.json."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return {}
    cfg = json.loads((folder / "config.json").read_text())
    params = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        params += sum(int(np.prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
    return {"layers": cfg.get("num_hidden_layers"), "ffn_width": cfg.get("intermediate_size"), "params": params}
