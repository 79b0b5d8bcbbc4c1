"""The number format a job runs in is decided by the hardware: native bf16 and a measured probe on a
CPU (both forced each way here, so no AVX2-only machine is needed), the GPU's support on CUDA."""

from __future__ import annotations

import json
import os
import platform

import pytest
import torch

from dapt.core.errors import UserError
from dapt.runtime import precision

FAST = {"fp32_gflops": 50.0, "bf16_gflops": 120.0, "rows": 256}
SLOW = {"fp32_gflops": 52.0, "bf16_gflops": 0.6, "rows": 256}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "probe.json"
    monkeypatch.setenv("DAPT_PRECISION_CACHE", str(path))
    return path


def force(monkeypatch, native: bool, rates: dict, calls: list | None = None):
    """Pretend the CPU has (or lacks) native bf16 and that the probe measures `rates`."""
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: (native, "AVX512" if native else "AVX2"))

    def probe(hidden, ffn):
        if calls is not None:
            calls.append((hidden, ffn))
        return dict(rates)

    monkeypatch.setattr(precision, "probe_rates", probe)


@pytest.mark.parametrize(
    "native, rates, expected",
    [
        (True, FAST, "bf16"),  # native and measured faster: bf16
        (True, SLOW, "fp32"),  # native, but the probe says slower: fp32
        (False, FAST, "fp32"),  # no native bf16: fp32 without probing
        (False, SLOW, "fp32"),
    ],
)
def test_auto_on_cpu_follows_native_support_and_the_probe(monkeypatch, cache, native, rates, expected):
    calls: list = []
    force(monkeypatch, native, rates, calls)
    chosen = precision.choose_precision("auto", "cpu")
    assert chosen["precision"] == expected
    assert chosen["autocast_dtype"] is (torch.bfloat16 if expected == "bf16" else None)
    assert chosen["warning"] is None and chosen["reason"].startswith("auto:")
    assert ("native bf16: yes" in chosen["reason"]) == native
    assert len(calls) == (1 if native else 0)  # no probe where the CPU cannot run bf16 natively
    if native:
        assert chosen["probe"]["bf16_gflops"] == rates["bf16_gflops"]
        assert f"bf16 {rates['bf16_gflops']} vs fp32 {rates['fp32_gflops']}" in chosen["reason"]


def test_cpu_model_names_the_x86_family_and_model(tmp_path):
    """A virtual machine may say only "AMD EPYC": family and model tell Zen 3 (25/1) from Zen 4 (25/17)."""
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: other\n"
    )
    assert precision.cpu_model(str(x86)) == "AMD EPYC (family 25, model 17)"  # the first processor's block
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n\nModel\t: Raspberry Pi 5\n")
    assert precision.cpu_model(str(arm)) == "Raspberry Pi 5"  # ARM boards name themselves after the blocks
    assert precision.cpu_model(str(tmp_path / "missing")) == (platform.processor() or platform.machine())


def test_probe_is_cached_per_cpu_torch_threads_and_shape(monkeypatch, cache, tmp_path):
    calls: list = []
    force(monkeypatch, True, FAST, calls)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"hidden_size": 384, "intermediate_size": 1536}))
    first = precision.choose_precision("auto", "cpu", tmp_path / "m")
    again = precision.choose_precision("auto", "cpu", tmp_path / "m")
    assert calls == [(384, 1536)] and first["probe"]["cached"] is False and again["probe"]["cached"] is True
    (key,) = json.loads(cache.read_text())
    assert precision.cpu_model() in key and torch.__version__ in key and "384x1536" in key
    precision.choose_precision("auto", "cpu")  # another shape (BERT-base's, the default): probed anew
    assert calls == [(384, 1536), (768, 3072)]


def test_explicit_bf16_without_native_support_runs_with_a_warning(monkeypatch, cache):
    force(monkeypatch, False, SLOW)
    chosen = precision.choose_precision("bf16", "cpu")
    assert chosen["precision"] == "bf16" and chosen["autocast_dtype"] is torch.bfloat16
    assert chosen["warning"].startswith("warning: precision bf16 on a CPU without fast bf16")
    assert "86.7x slower" in chosen["warning"] and "\n" not in chosen["warning"]
    cache.unlink()  # the cached slow probe would stand for this CPU
    force(monkeypatch, True, FAST)
    assert precision.choose_precision("bf16", "cpu")["warning"] is None


def test_fixed_choices_and_errors(monkeypatch, cache):
    force(monkeypatch, True, FAST)
    assert precision.choose_precision("fp32", "cpu")["precision"] == "fp32"
    assert precision.choose_precision("fp32", "cpu")["probe"] is None
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        precision.choose_precision("fp16", "cpu")
    with pytest.raises(UserError, match="unknown value"):
        precision.choose_precision("fp8", "cpu")


def test_the_real_probe_is_short_and_measures_both_formats():
    import time

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    start = time.perf_counter()
    rates = precision.probe_rates(64, 256)
    # the probe leaves the job's random stream where it was: a first job (cache miss) and a later one
    # (cache hit) must initialise new weights alike
    assert torch.equal(torch.rand(3), expected)
    assert time.perf_counter() - start < 1.5
    assert rates["fp32_gflops"] > 0 and rates["bf16_gflops"] > 0


def test_runtime_records_the_choice_and_why(monkeypatch, cache):
    from dapt.runtime.context import setup_runtime

    force(monkeypatch, True, FAST)
    described = setup_runtime(0, "auto", threads=1).describe()
    assert described["precision"] == "bf16" and described["precision_reason"].startswith("auto: native bf16: yes")
    assert described["precision_probe"] == {"fp32_gflops": 50.0, "bf16_gflops": 120.0}
    assert "native bf16 yes" in described["device"]


def test_set_deterministic(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        precision.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.benchmark is False
    finally:
        precision.set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
