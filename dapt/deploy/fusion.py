"""ONNX Runtime's transformer graph optimizer (`onnxruntime.transformers.optimizer`) on an exported graph:
attention, embedding + LayerNorm, residual + LayerNorm (SkipLayerNormalization) and bias + GELU fused into
ONNX Runtime's own operators, what a user who knows ONNX Runtime runs before serving or quantizing.

The fused graph is written beside the plain one (`onnx_fused/`) only when the optimizer fused something,
kept the graph's inputs, outputs and dynamic axes, and gives the plain graph's logits within `TOLERANCE`
on a padded batch of mixed lengths and at batch 1; otherwise nothing is written and the record says
why (a deploy never fails because fusion is unavailable).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from dapt.core.files import atomic_path, read_json

#: The optimizer's model_type for each transformers model_type. It has its own only for BERT among text
#: encoders; the others are BERT-shaped enough that its BERT patterns fuse what matches (Optimum maps
#: them the same way) and leave the rest as it was: DeBERTa's disentangled attention, ModernBERT's
#: rotary attention and bias-free LayerNorm stay unfused, whatever else fuses is checked like the rest.
OPTIMIZER_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "distilbert": "bert",
    "albert": "bert",
    "mpnet": "bert",
    "deberta-v2": "bert",
    "modernbert": "bert",
}
#: ONNX Runtime's level before the Python fusions. Level 1 (ORT_ENABLE_BASIC: constant folding, redundant
#: node elimination) is provider-independent and the optimizer's default for BERT; the saved graph holds
#: standard ops plus the com.microsoft fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization,
#: BiasGelu), all implemented by the CPU execution provider. Level 2 writes provider-specific nodes
#: (FusedMatMul, FusedGemm) into the file and makes the optimizer switch some of its fusions off; 99 adds
#: this machine's memory layouts (ORT warns the file is then for this machine only). The session that
#: serves the file still applies levels 2 and 99 itself when it loads it.
OPT_LEVEL = 1
#: Largest |fused - plain| logit allowed (the fused graph computes the same function).
TOLERANCE = 1e-4
#: Whether the deploy stage quantizes int8 from the fused graph (when fusion applied), else from the plain
#: one. Not by default: in one bench_deploy run (docs/deploy.md; MiniLM, AVX2, 1 thread, fresh processes)
#: int8 from the fused graph was 1.03x as fast at batch 1 (within the noise), 0.93x at batch 32 and 0.39
#: macro-F1 points lower than int8 from the plain graph; its QAttention quantizes Q/K/V weights 7-bit and
#: QEmbedLayerNormalization the embeddings to uint8, whatever the CPU's settings (a further loss on VNNI).
INT8_FROM_FUSED = False
PROBE = (
    "a gripping, funny film",
    "nothing in this long and tedious picture works, not the plot, not the acting, not even the music",
    "fine",
)


class _Refused(Exception):
    """The fused graph was written but does not compute what the plain one does."""


def fusion_spec(config: dict) -> tuple[str | None, int, int]:
    """(optimizer model_type or None, attention heads, hidden size) from a model's config.json."""
    kind = OPTIMIZER_TYPES.get(str(config.get("model_type", "")).lower())
    heads = config.get("num_attention_heads") or config.get("n_heads") or 0
    hidden = config.get("hidden_size") or config.get("dim") or 0
    return kind, int(heads), int(hidden)


def optimize_onnx(src_dir: str | Path, out_dir: str | Path) -> dict:
    """Fuse `src_dir/model.onnx` into `out_dir/model.onnx` (with the folder's other files) if that works and
    checks out; the record: applied, reason, model_type, opt_level, fused operator counts, max_abs_diff."""
    src = Path(src_dir)
    config = read_json(src / "config.json") if (src / "config.json").is_file() else {}
    kind, heads, hidden = fusion_spec(config)
    record = {"applied": False, "model_type": kind, "opt_level": OPT_LEVEL, "num_heads": heads, "hidden_size": hidden}
    if kind is None:
        name = config.get("model_type", "unknown")
        return {**record, "reason": f"model type {name!r} has no fusion patterns in onnxruntime.transformers"}
    try:
        optimized = _optimize(src / "model.onnx", kind, heads, hidden)
    except Exception as err:  # noqa: BLE001  (whatever the optimizer raises, the plain graph still serves)
        return {**record, "reason": f"the optimizer failed: {type(err).__name__}: {str(err)[:200]}"}
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    record["fused_ops"] = fused
    if not fused:
        return {**record, "reason": "the optimizer found nothing to fuse in this graph"}
    changed = _interface_change(src / "model.onnx", optimized.model)
    if changed:
        return {**record, "reason": changed}
    try:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            optimized.save_model_to_file(str(tmp / "model.onnx"))
            for f in src.iterdir():
                if f.is_file() and f.name != "model.onnx":
                    shutil.copy2(f, tmp / f.name)
            record["max_abs_diff"] = diff = max_logit_diff(src, tmp)
            if not diff <= TOLERANCE:
                raise _Refused(f"fused logits differ from the plain graph's by {diff:.2g} (> {TOLERANCE})")
    except _Refused as why:
        return {**record, "reason": str(why)}
    except Exception as err:  # noqa: BLE001  (ONNX Runtime cannot run it: the plain graph still serves)
        return {**record, "reason": f"the fused graph does not run: {type(err).__name__}: {str(err)[:200]}"}
    return {**record, "applied": True, "reason": ""}


def _optimize(path: Path, kind: str, heads: int, hidden: int):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(kind)
    # the raw 0/1 mask, as exported: BERT's default (a mask index) assumes right padding
    options.use_raw_attention_mask(True)
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its per-pattern notes ("fused N nodes", producer names) on stderr
    try:
        return optimize_model(
            str(path), model_type=kind, num_heads=heads, hidden_size=hidden, optimization_options=options,
            opt_level=OPT_LEVEL, use_gpu=False,
        )  # fmt: skip
    finally:
        logging.disable(before)


def _interface_change(path: Path, fused) -> str:
    """'' if the fused graph takes and gives what the plain one does (names, types, dynamic axes)."""
    import onnx

    plain = onnx.load(str(path), load_external_data=False)

    def sig(values) -> list:
        return [
            (v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values
        ]

    for side in ("input", "output"):
        want, got = sig(getattr(plain.graph, side)), sig(getattr(fused.graph, side))
        if want != got:
            return f"the optimizer changed the graph's {side}s ({want} -> {got})"
    return ""


def max_logit_diff(plain_dir: str | Path, fused_dir: str | Path) -> float:
    """Largest |logit| difference of two graphs on a padded batch of PROBE texts and on each text alone."""
    import numpy as np

    from dapt.data.model_store import load_tokenizer
    from dapt.deploy.onnx import OnnxClassifier

    tok = load_tokenizer(plain_dir)
    a, b = OnnxClassifier(Path(plain_dir) / "model.onnx", 1), OnnxClassifier(Path(fused_dir) / "model.onnx", 1)
    batches = [list(PROBE)] + [[t] for t in PROBE]
    diff = 0.0
    for texts in batches:
        enc = tok(texts, return_tensors="np", padding=True, truncation=True, max_length=64)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        diff = max(diff, float(np.abs(a.logits(ids, mask) - b.logits(ids, mask)).max()))
    return diff
