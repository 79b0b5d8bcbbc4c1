"""The ONNX formats of an export folder, written from its `pytorch/` folder: plain ONNX, ONNX fused by ONNX
Runtime's transformer optimizer, int8 ONNX (quantized from the plain graph, or from the fused one where
`dapt.deploy.fusion.INT8_FROM_FUSED` says so and it fused). One path for every export the deploy stage
writes: the chosen run's (scripts/deploy_export.py) and its pruned copies (scripts/deploy_prune.py)."""

from __future__ import annotations

import json
from pathlib import Path


def write_formats(folder: str | Path, formats: list[str], opset: int) -> dict:
    """Write the asked ONNX formats beside `folder/pytorch`; returns what deploy.json records of them
    (opset, fusion, int8)."""
    from dapt.deploy.fusion import INT8_FROM_FUSED, optimize_onnx

    folder, info = Path(folder), {}
    if {"onnx", "onnx_fused", "onnx_int8"} & set(formats):
        from dapt.deploy.onnx import export_onnx

        export_onnx(folder / "pytorch", folder / "onnx", opset)
        info["opset"] = opset
    source = folder / "onnx"
    if "onnx_fused" in formats or ("onnx_int8" in formats and INT8_FROM_FUSED):
        info["fusion"] = optimize_onnx(folder / "onnx", folder / "onnx_fused")
        print(f"fusion: {json.dumps(info['fusion'])}")
        if info["fusion"]["applied"] and INT8_FROM_FUSED:
            source = folder / "onnx_fused"
    if "onnx_int8" in formats:
        from dapt.deploy.onnx import quantize_int8

        info["int8"] = {**quantize_int8(source, folder / "onnx_int8"), "source": source.name}
    return info


def export_and_task(export: str | Path, tokenized: dict[str, str]) -> tuple[dict, str]:
    """An export folder's deploy.json and the tokenized task folder of its run's model (from the rule's
    {model: folder} map); a model the map lacks is refused in one line naming deploy.json."""
    from dapt.core.errors import UserError
    from dapt.core.files import read_json

    meta = Path(export) / "deploy.json"
    info = read_json(meta)
    model = info["run"].get("model")
    if model not in tokenized:
        raise UserError(str(meta), f"run model '{model}' has no tokenized task among {sorted(tokenized)}")
    return info, tokenized[model]
