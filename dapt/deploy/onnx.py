"""ONNX export of an exported folder, int8 dynamic quantization for this CPU, and an ONNX Runtime
classifier. Importing this module loads neither torch nor transformers (serving an .onnx needs
neither); `export_onnx` imports them itself.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json

DEFAULT_OPSET = 17
#: Inputs a text classifier's graph may take, in this order (only those its tokenizer produces).
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def runtime_max_opset() -> int:
    """The newest ai.onnx opset that torch's TorchScript exporter writes and the onnx package knows.
    Whether ONNX Runtime runs it is checked by loading the exported graph (an error otherwise)."""
    import onnx
    from torch.onnx import _constants

    return min(onnx.defs.onnx_opset_version(), _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def graph_inputs(folder: str | Path) -> list[str]:
    from dapt.data.model_store import load_tokenizer

    names = load_tokenizer(folder).model_input_names
    return [n for n in INPUTS if n in names]


def export_onnx(folder: str | Path, out_dir: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """`out_dir/model.onnx` (dynamic batch and sequence axes) plus the folder's tokenizer and config."""
    import torch

    from dapt.data.model_store import load_tokenizer
    from dapt.deploy.export import copy_serving_files

    top = runtime_max_opset()
    if not 14 <= opset <= top:
        raise UserError(
            f"deploy.opset: {opset}",
            f"the installed torch {torch.__version__} and onnx export opsets 14..{top}",
            f"set deploy.opset between 14 and {top}",
        )
    model = _load_plain(folder)
    names = graph_inputs(folder)
    tok = load_tokenizer(folder)
    enc = tok(["a first text to trace", "a second one"], return_tensors="pt", padding=True)
    kwargs = {n: enc[n] for n in names}
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter's deprecation notice and tracer notes on shape checks that are
            # constant for a text classifier (the mask is as long as the ids); the graph is checked below
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (),
                str(tmp / "model.onnx"),
                kwargs=kwargs,
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        copy_serving_files(Path(folder), tmp)
        OnnxClassifier(tmp / "model.onnx", threads=1)  # the runtime must load what was written
    return Path(out_dir) / "model.onnx"


def _load_plain(folder: str | Path):
    """The exported folder as a model, loaded the way a user would (eager attention traces cleanly)."""
    from transformers import AutoModelForSequenceClassification

    remote = (
        read_json(Path(folder) / "deploy.json").get("needs_remote_code", False)
        if (Path(folder) / "deploy.json").is_file()
        else False
    )
    return AutoModelForSequenceClassification.from_pretrained(
        str(folder), trust_remote_code=remote, attn_implementation="eager", use_safetensors=True
    ).eval()


#: Where the branches below come from. ONNX Runtime's quantization guide
#: (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html, "When and why do I
#: need to try U8U8?" and FAQ "When to use reduce-range and per-channel quantization?"): dynamic
#: quantization runs uint8 activations against int8 weights (U8S8); on x86-64 with AVX2 or AVX-512 but
#: no VNNI that product uses VPMADDUBSW, whose 16-bit pair sums can saturate; reduce_range (7-bit
#: weights) "is designed for the U8S8 format on AVX2 and AVX512 (non-VNNI) machines" and "not needed
#: on machines supporting VNNI"; "there is no such issue on ... x64 with VNNI and ARM"; per_channel
#: "on AVX2 and AVX512 machines" generally needs reduce_range too (off here). Which VNNI counts follows
#: MLAS' kernel dispatch (onnxruntime/core/mlas/lib/platform.cpp): the AVX-512 BW/DQ/VL kernel replaces
#: the AVX-VNNI one, so on an AVX-512 CPU only AVX512_VNNI avoids VPMADDUBSW; AMX-INT8 with AMX-TILE
#: has its own U8S8 kernel (TDPBUSD, 32-bit sums); ARM64 runs U8S8 with UDOT/UMMLA or widening
#: multiplies, none saturating. Other CPUs (no AVX2, POWER, s390x, unread flags) get reduce_range:
#: 7-bit weights cost little accuracy and cannot saturate whatever kernel runs.
X86 = ("x86_64", "amd64", "i386", "i686", "x86")
ARM64 = ("aarch64", "arm64")
AVX512_CORE = ("avx512f", "avx512bw", "avx512dq", "avx512vl")


def int8_settings_for(machine: str, flags: set[str] | frozenset[str]) -> dict:
    """Dynamic int8 settings for a CPU given its architecture (`platform.machine()`) and its flags
    (/proc/cpuinfo `flags` / `Features`): the decision alone, so every branch can be tested here.
    `decided_by` records the flags the choice rests on (absent ones as `-flag`)."""
    machine = (machine or "").lower()
    flags = {f.lower() for f in flags}

    def has(*names: str) -> bool:
        return all(n in flags for n in names)

    if machine in ARM64:
        ext = "i8mm" if has("i8mm") else ("asimddp" if has("asimddp") else None)
        isa = {"i8mm": "arm64-i8mm", "asimddp": "arm64-dotprod", None: "arm64"}[ext]
        reduce_range, decided = False, [machine] + ([ext] if ext else [])
    elif machine in X86 and has("amx_int8", "amx_tile"):
        isa, reduce_range, decided = "amx", False, ["amx_int8", "amx_tile"]
    elif machine in X86 and has(*AVX512_CORE):
        vnni = has("avx512_vnni")
        isa = "avx512-vnni" if vnni else "avx512 (no VNNI)"
        reduce_range, decided = not vnni, ["avx512bw", "avx512_vnni" if vnni else "-avx512_vnni"]
    elif machine in X86 and has("avx2"):
        vnni = has("avx_vnni")
        isa = "avx-vnni" if vnni else "avx2"
        reduce_range, decided = not vnni, ["avx2", "avx_vnni" if vnni else "-avx_vnni"]
    elif machine in X86:
        isa, reduce_range = ("x86-64 (no AVX2)" if flags else "x86-64 (CPU flags not read)"), True
        decided = ["-avx2"] if flags else []
    else:
        isa, reduce_range, decided = f"unknown ({machine or 'machine not reported'})", True, []
    # 7-bit weights lost 2.55 macro-F1 points on the default task's full run (one bench run); one scale per output
    # channel won them back (-0.20), ORT's guide's remedy for an accuracy drop, on the same U8S8 kernels
    return {
        "isa": isa,
        "weight_type": "QInt8",
        "per_channel": reduce_range,
        "reduce_range": reduce_range,
        "machine": machine,
        "decided_by": decided,
    }


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The first `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo; empty where there is none
    (macOS, Windows, a container that hides it)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_int8_settings() -> dict:
    """Quantization settings for the CPU this runs on (`int8_settings_for` decides)."""
    import platform

    return int8_settings_for(platform.machine(), cpu_flags())


def quantize_int8(onnx_dir: str | Path, out_dir: str | Path, settings: dict | None = None) -> dict:
    """Dynamic int8 quantization (ONNX Runtime's quantizer) of `onnx_dir/model.onnx` into `out_dir`: a plain
    graph or one fused by `dapt.deploy.fusion` (whose Attention nodes become QAttention, which quantizes
    its Q/K/V weights 7-bit whatever `reduce_range` says; its EmbedLayerNormalization, QEmbedLayerNormalization)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = settings or cpu_int8_settings()
    src = Path(onnx_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        quantize_dynamic(
            str(src / "model.onnx"),
            str(tmp / "model.onnx"),
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            weight_type=getattr(QuantType, settings["weight_type"]),
            # ONNX's shape inference cannot type the outputs of ONNX Runtime's fused ops: they are float
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
        for f in src.iterdir():
            if f.is_file() and f.name != "model.onnx":
                shutil.copy2(f, tmp / f.name)
        OnnxClassifier(tmp / "model.onnx", threads=1)
    return settings


class OnnxClassifier:
    """An .onnx text classifier in ONNX Runtime (CPU); `predict_proba` takes token id arrays."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # no busy-waiting between calls: on a shared or small CPU the spinning threads would take the
        # cores from the caller's own work (and from PyTorch, when both run side by side in the bench)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001  (ORT raises its own exception types)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(str(path), *_load_failure(first, ort.__version__, self.path)) from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        return self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.inputs})[0]


def _load_failure(first: str, version: str, path: Path) -> tuple[str, str]:
    """(problem, fix) of a model ONNX Runtime cannot load: a damaged file is not an opset problem."""
    if "protobuf" in first.lower() or "INVALID_PROTOBUF" in first:
        size = path.stat().st_size if path.is_file() else 0
        return (
            f"not a complete ONNX model ({size:,} bytes that do not parse: damaged or truncated)",
            "export it again (the deploy_export step, or dapt.deploy.onnx.export_onnx)",
        )
    if "opset" in first.lower() or "ir version" in first.lower():
        return f"ONNX Runtime {version} cannot load it: {first[:300]}", "export with an opset this runtime supports"
    return f"ONNX Runtime {version} cannot load it: {first[:300]}", "check the file, or export it again"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
