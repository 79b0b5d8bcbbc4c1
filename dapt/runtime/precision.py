"""Which number format a job trains and predicts in, decided on the hardware it runs on.

On a GPU, ``auto`` is bf16 where the GPU supports it, else fp16 with a loss scaler. On a CPU the
answer depends on the chip: with native bf16 (AVX-512 BF16, AMX) bf16 matmuls run 2-3x faster than
fp32, without it they are emulated and run 20-100x slower (measured on an AVX2 EPYC: 0.6 vs 52
GFLOP/s). So ``auto`` on a CPU picks bf16 only where the CPU has native bf16 *and* a short probe (a
few products of the model's own matrix shapes, both formats interleaved, well under a second) shows
it faster; the probe's result is cached per CPU model, torch version, thread count and shape. What
was chosen and why travels with every result (`describe`).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapt.core.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: bf16 is chosen where it is faster than fp32 by this factor.
BF16_MARGIN = 1.0
#: Work per probed product (FLOPs), CPU seconds per probed format and round, rounds.
PROBE_FLOPS = 2e8
PROBE_SECONDS = 0.04
PROBE_ROUNDS = 4
#: Part of the cache key: a new probe method measures afresh.
PROBE_VERSION = 2


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name with its x86 family and model ("AMD EPYC (family 25, model 17)": a virtual
    machine's name alone may not tell Zen 3 from Zen 4); the architecture where Linux does not say."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's, or the board's (ARM)
    except OSError:
        pass
    name = next((fields[k] for k in ("model name", "Model", "cpu model") if fields.get(k)), "")
    if not name:
        return platform.processor() or platform.machine() or "unknown"
    family, model = fields.get("cpu family"), fields.get("model")
    return f"{name} (family {family}, model {model})" if family and model and model.isdigit() else name


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 or AMX), and torch's CPU capability."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return native, capability


def model_shapes(model_dir: str | os.PathLike | None) -> tuple[int, int]:
    """(hidden, feed-forward) width from a model folder's config.json; BERT-base's if unknown."""
    import json

    path = Path(model_dir or "") / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if model_dir else {}
    except (OSError, ValueError):
        config = {}
    hidden = config.get("hidden_size") or config.get("dim") or 768
    ffn = config.get("intermediate_size") or config.get("hidden_dim") or 4 * hidden
    return int(hidden), int(ffn)


def probe_rates(hidden: int, ffn: int) -> dict[str, float]:
    """GFLOP per CPU-second of fp32 and bf16-autocast linear layers of the model's shapes, on this
    process's threads.

    Timed in CPU time, not wall time, so that other jobs on the machine (two study jobs share two
    cores) do not count against either format; rounds alternate the formats, and each format's best
    round counts."""
    import torch

    rows = int(min(512, max(32, PROBE_FLOPS / (2 * hidden * ffn))))
    with torch.random.fork_rng(devices=[]):  # the job's seeded random stream must not move
        torch.manual_seed(0)
        x = torch.randn(rows, hidden)
        layer = torch.nn.Linear(hidden, ffn)
    flops = 2 * rows * hidden * ffn
    best = {"fp32": 0.0, "bf16": 0.0}
    with torch.inference_mode():
        for _ in range(PROBE_ROUNDS):
            for name in best:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                    layer(x)  # warm-up: weight conversion and kernel selection
                    n, start = 0, time.process_time()
                    while n == 0 or time.process_time() - start < PROBE_SECONDS:
                        layer(x)
                        n += 1
                    spent = max(time.process_time() - start, 1e-9)
                    best[name] = max(best[name], flops * n / spent / 1e9)
    return {"fp32_gflops": round(best["fp32"], 1), "bf16_gflops": round(best["bf16"], 1), "rows": rows}


def _cache_path() -> Path:
    base = os.environ.get("DAPT_PRECISION_CACHE")
    if base:
        return Path(base)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dapt-workflow" / "precision-probe.json"


def cached_probe(hidden: int, ffn: int) -> dict[str, Any]:
    """`probe_rates`, measured once per CPU model, torch version, thread count and shape."""
    import json

    import torch

    from dapt.core.files import write_json

    key = (
        f"{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}|{hidden}x{ffn}"
        f"|probe v{PROBE_VERSION}"
    )
    path = _cache_path()
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return {**cache[key], "cached": True}
    rates = probe_rates(hidden, ffn)
    try:
        write_json(path, {**cache, key: rates})
    except OSError:  # a read-only home: measure again next time
        pass
    return {**rates, "cached": False}


def decide_cpu(requested: str, native: bool, capability: str, rates: dict | None) -> tuple[str, str, str | None]:
    """(precision, reason, warning) on a CPU, from the request, native support and the probe's rates."""
    speed = f"bf16 {rates['bf16_gflops']} vs fp32 {rates['fp32_gflops']} GFLOP per CPU-second" if rates else ""
    support = f"native bf16: {'yes' if native else 'no'} ({capability})"
    if requested == "fp32":
        return "fp32", "requested", None
    if requested == "bf16":
        warning = None
        if not native or (rates and rates["bf16_gflops"] * BF16_MARGIN < rates["fp32_gflops"]):
            slower = rates["fp32_gflops"] / max(rates["bf16_gflops"], 1e-9) if rates else float("nan")
            warning = (
                f"warning: precision bf16 on a CPU without fast bf16 ({support}; {speed}): about "
                f"{slower:.1f}x slower than fp32; use precision: auto or fp32"
            )
        return "bf16", "requested" + (f"; {speed}" if speed else ""), warning
    if not native:
        return "fp32", f"auto: {support}", None
    if rates["bf16_gflops"] > BF16_MARGIN * rates["fp32_gflops"]:
        return "bf16", f"auto: {support}; {speed}", None
    return "fp32", f"auto: {support}; bf16 not faster ({speed})", None


def choose_precision(
    requested: str, device: torch.device | str, model_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Resolve the configured precision for `device` and record what was used and why.

    fp16 on a CPU and bf16 on a GPU without it are UserErrors. On CUDA, TF32 matmuls are switched
    on (fp32 weights are kept either way).
    Returns {"device", "device_name", "precision", "reason", "autocast_dtype", "use_scaler", "tf32",
    and on a CPU "probe" (the measured rates, when measured) and "warning" (or None)}.
    """
    import torch

    if requested not in PRECISIONS:
        raise UserError("precision", f"unknown value {requested!r}", f"use one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    extra: dict[str, Any] = {}
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        precision = ("bf16" if bf16_ok else "fp16") if requested == "auto" else requested
        device_name = torch.cuda.get_device_name(device)
        if precision == "bf16" and not bf16_ok:
            raise UserError("precision", f"bf16 is not supported on {device_name}", "use fp16 or auto")
        # Legacy flags on purpose: setting them never raises, while setting the new
        # fp32_precision API makes later reads of allow_tf32 (accelerate does) raise.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        reason = (
            "auto: GPU " + ("supports bf16" if bf16_ok else "lacks bf16: fp16 with a loss scaler")
            if requested == "auto"
            else "requested"
        )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    else:
        if requested == "fp16":
            raise UserError("precision", "fp16 needs a GPU", "use bf16, fp32 or auto on CPU")
        native, capability = cpu_native_bf16()
        probe = None
        if requested in ("auto", "bf16") and (native or requested == "bf16"):
            probe = cached_probe(*model_shapes(model_dir))
        precision, reason, warning = decide_cpu(requested, native, capability, probe)
        device_name = f"cpu ({cpu_model()}; {capability}, native bf16 {'yes' if native else 'no'})"
        extra = {"probe": probe, "warning": warning}
    return {**settings(precision, device), "device_name": device_name, "reason": reason, **extra}


def settings(precision: str, device: torch.device | str) -> dict[str, Any]:
    """What the training and prediction code reads: autocast dtype, loss scaler, TF32."""
    import torch

    device = torch.device(device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    return {
        "device": str(device),
        "precision": precision,
        "autocast_dtype": dtypes[precision],
        "use_scaler": precision == "fp16",
        "tf32": device.type == "cuda",
    }


def set_deterministic(flag: bool) -> None:
    """Make results repeatable bit for bit (slower), or allow the fast nondeterministic kernels.

    cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first call, so call this early. Ops with no
    deterministic implementation then raise instead of silently varying.
    """
    import torch

    if flag:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(flag)
    torch.backends.cudnn.deterministic = flag
    if flag:
        torch.backends.cudnn.benchmark = False
