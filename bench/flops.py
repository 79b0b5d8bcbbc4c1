"""Model FLOPs and the matmul peak measured under the same load, for the MFU (formula in bench/README.md)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from scheduler import TurnTaker


def flop_params(model_dir: Path) -> dict:
    """Weights of Linear layers: encoder vs MLM head (the head's vocabulary projection apart)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from dapt.pretrain.mlm import mlm_head

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(config)
    head = mlm_head(model)
    head_ids = {id(m) for m in head.modules()} if head is not None else set()
    enc = head_p = vocab = 0
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        if id(m) in head_ids:
            head_p += m.in_features * m.out_features
            vocab += m.in_features * m.out_features if m.out_features == config.vocab_size else 0
        elif "pooler" not in name:
            enc += m.in_features * m.out_features
    return {
        "encoder": enc,
        "head": head_p,
        "vocab_projection": vocab,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "vocab_size": config.vocab_size,
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def step_flops(fp: dict, tokens: int, vocab_rows: int, width: int) -> tuple[float, float]:
    """(FLOPs by the MFU formula, attention-score FLOPs) for one training step."""
    main = 6 * fp["encoder"] * tokens + 6 * fp["head"] * vocab_rows
    attention = 12 * fp["layers"] * width * fp["hidden"] * tokens
    return float(main), float(attention)


def peak_job(tt: TurnTaker, others: list[str], precision: str, n: int, reps: int):
    """Between the other jobs' steps: time `reps` n x n matmuls per turn, fp32 and the precision's dtype."""
    dtypes = {"fp32": torch.float32}
    if precision == "bf16":
        dtypes["bf16"] = torch.bfloat16
    mats = {k: (torch.randn(n, n).to(d), torch.randn(n, n).to(d)) for k, d in dtypes.items()}
    for a, b in mats.values():
        a @ b  # first call: kernel set-up
    rates: dict[str, list[float]] = {k: [] for k in dtypes}

    def go():
        while any(tt.running(o) for o in others):
            for k, (a, b) in mats.items():
                t = time.perf_counter()
                for _ in range(reps):
                    a @ b
                rates[k].append(2 * n**3 * reps / (time.perf_counter() - t))
            tt.tick()
        return rates

    return go
