"""The int8 quantization settings per CPU (issue 14): every branch of the decision from synthetic CPU
flag sets (only this machine's branch ever runs for real), the settings reaching the quantized weights,
and the recorded settings travelling from the export's record to the measurement and the table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dapt.deploy import onnx as dep_onnx
from dapt.deploy.onnx import cpu_flags, cpu_int8_settings, int8_settings_for

REPO = Path(__file__).resolve().parent.parent
AVX2 = {"sse4_1", "sse4_2", "avx", "avx2", "fma"}  # Haswell .. Zen 3
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}  # Skylake-SP
AVX512_VNNI = AVX512 | {"avx512_vnni"}  # Cascade Lake, Ice Lake, Zen 4
ALDER_LAKE = AVX2 | {"avx_vnni"}  # AVX-VNNI on 256-bit registers, no AVX-512
SAPPHIRE_RAPIDS = AVX512_VNNI | {"avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}


@pytest.mark.parametrize(
    "machine, flags, isa, reduce_range, decided_by",
    [
        ("x86_64", AVX2, "avx2", True, ["avx2", "-avx_vnni"]),
        ("x86_64", AVX512, "avx512 (no VNNI)", True, ["avx512bw", "-avx512_vnni"]),
        ("x86_64", AVX512_VNNI, "avx512-vnni", False, ["avx512bw", "avx512_vnni"]),
        ("x86_64", ALDER_LAKE, "avx-vnni", False, ["avx2", "avx_vnni"]),
        # MLAS replaces the AVX-VNNI kernel by the AVX-512 (VPMADDUBSW) one: AVX-VNNI alone does not help there
        ("x86_64", AVX512 | {"avx_vnni"}, "avx512 (no VNNI)", True, ["avx512bw", "-avx512_vnni"]),
        ("x86_64", SAPPHIRE_RAPIDS, "amx", False, ["amx_int8", "amx_tile"]),
        ("AMD64", AVX512_VNNI, "avx512-vnni", False, ["avx512bw", "avx512_vnni"]),  # Windows' name for x86-64
        ("x86_64", {"sse4_1", "sse4_2"}, "x86-64 (no AVX2)", True, ["-avx2"]),
        ("x86_64", set(), "x86-64 (CPU flags not read)", True, []),
        ("aarch64", {"fp", "asimd", "asimddp"}, "arm64-dotprod", False, ["aarch64", "asimddp"]),
        ("aarch64", {"fp", "asimd", "asimddp", "i8mm"}, "arm64-i8mm", False, ["aarch64", "i8mm"]),
        ("aarch64", {"fp", "asimd"}, "arm64", False, ["aarch64"]),  # Cortex-A53/A72: no dot product
        ("arm64", set(), "arm64", False, ["arm64"]),  # macOS: no /proc/cpuinfo
        ("ppc64le", {"vsx"}, "unknown (ppc64le)", True, []),
        ("", set(), "unknown (machine not reported)", True, []),
    ],
)
def test_each_cpu_branch(machine, flags, isa, reduce_range, decided_by):
    s = int8_settings_for(machine, flags)
    assert (s["isa"], s["reduce_range"], s["decided_by"]) == (isa, reduce_range, decided_by)
    assert s["weight_type"] == "QInt8" and s["per_channel"] is s["reduce_range"] and s["machine"] == machine.lower()


def test_flags_read_from_cpuinfo(tmp_path, monkeypatch):
    """x86 `flags` and ARM `Features` lines; no file: no flags; cpu_int8_settings joins them to the
    machine's name."""
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512bw avx512f avx512dq avx512vl\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512bw", "avx512f", "avx512dq", "avx512vl"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == set()
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(dep_onnx, "cpu_flags", lambda: cpu_flags(x86))
    assert cpu_int8_settings()["isa"] == "avx512 (no VNNI)" and cpu_int8_settings()["reduce_range"] is True
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    monkeypatch.setattr(dep_onnx, "cpu_flags", lambda: cpu_flags(arm))
    assert cpu_int8_settings()["isa"] == "arm64-dotprod" and cpu_int8_settings()["reduce_range"] is False


def _matmul_onnx(folder: Path) -> None:
    """A one-MatMul graph with a 64x64 weight (what the quantizer turns into int8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input_ids", "W"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 64])],
        [numpy_helper.from_array(w, "W")],
    )
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))


def _int8_weights(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    ws = [
        numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8
    ]
    assert ws, "no int8 initializer in the quantized graph"
    return np.concatenate([w.ravel() for w in ws])


def test_the_settings_reach_the_weights(tmp_path):
    """An AVX2 machine's settings give 7-bit weights (|q| <= 64), AVX-512 VNNI's the full signed range."""
    from dapt.deploy.onnx import quantize_int8

    _matmul_onnx(tmp_path / "onnx")
    for branch, flags, top in (("avx2", AVX2, 64), ("vnni", AVX512_VNNI, 127)):
        settings = int8_settings_for("x86_64", flags)
        assert quantize_int8(tmp_path / "onnx", tmp_path / branch, settings) == settings
        assert np.abs(_int8_weights(tmp_path / branch / "model.onnx").astype(int)).max() == top


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_settings_reach_the_measure_record_and_the_table(tmp_path, monkeypatch):
    """deploy.json's int8 settings (what deploy_export records from quantize_int8) are copied into
    measure.json by deploy_measure and named, with the deciding CPU flags, under the deploy table."""
    from dapt.core.files import write_json
    from dapt.deploy import measure
    from dapt.deploy.table import write_deploy_report

    settings = int8_settings_for("x86_64", AVX2)
    export = tmp_path / "export"
    export.mkdir()
    run = {"task": "rt", "model": "minilm", "variant": "base", "method": "full", "seed": 1}
    write_json(export / "deploy.json", {"run": run, "validation_score": 0.8, "int8": settings, "opset": 17})
    fake = [
        {
            **run,
            "format": f,
            "macro_f1": 0.8,
            "f1_diff_vs_pytorch": 0.0,
            "accuracy": 0.8,
            "size_mb": size,
            "latency_p50_ms": 1.0,
            "latency_p95_ms": 2.0,
            "throughput_per_s": 10.0,
            "threads": 1,
            "peak_rss_mb": 300.0,
        }
        for f, size in (("pytorch", 90.0), ("onnx", 90.0), ("onnx_int8", 23.0))
    ]
    monkeypatch.setattr(measure, "measure_all", lambda *a, **k: fake)
    out = tmp_path / "measure.json"
    monkeypatch.setattr(
        sys,
        "argv",
        ["deploy_measure", "--export", str(export), "--tokenized", '{"minilm": "unused"}', "--out", str(out)],
    )
    _load_script("deploy_measure").main()
    record = json.loads(out.read_text())
    assert record["int8"] == settings
    # a record written before the deciding flags were kept still tabulates
    old = {
        **record,
        "run": {**run, "seed": 2},
        "int8": {k: settings[k] for k in ("isa", "weight_type", "per_channel", "reduce_range")},
    }
    write_json(tmp_path / "old.json", old)
    write_deploy_report([out, tmp_path / "old.json"], tmp_path / "report")
    lines = (tmp_path / "report" / "deploy.md").read_text().splitlines()
    seed1 = next(line for line in lines if line.startswith("rt/full (base, seed 1)"))
    assert "quantization for avx2" in seed1 and "reduce_range=True" in seed1
    assert "decided by x86_64: avx2, -avx_vnni" in seed1
    seed2 = next(line for line in lines if line.startswith("rt/full (base, seed 2)"))
    assert "reduce_range=True" in seed2 and "decided by" not in seed2
