"""The results as the table and the machine-readable last line that bench/README.md quotes."""

from __future__ import annotations

import torch
from finetune_bench import SIDES


def imports_lines(imp: dict) -> list[str]:
    """The figure issue 10 asks the benchmark to print, and the heavy modules each job imported."""
    if "error" in imp:
        return [f"imports_cpu_s error: {imp['error']}"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    return [
        "imports_cpu_s " + " ".join(f"{job}={r['cpu_s']:.1f}" for job, r in imp.items()),
        *(f"imports_heavy {job} " + " ".join(f"{m}={yes(v)}" for m, v in r["heavy"].items()) for job, r in imp.items()),
    ]


def fmt(x: float, nd: int = 0) -> str:
    return f"{x:,.{nd}f}"


def side_row(label: str, d: dict, key: str, spec: str = ".1f") -> str:
    """A row with ours, the recipe and the tuned recipe, in the columns of the rows with ratios."""
    cells = [format(d[f"{side}_{key}"], spec) for side in SIDES]
    return f"{label:42s} {cells[0]:>14s} {cells[1]:>14s} {'':>8s} {cells[2]:>14s}"


def table(res: dict, args) -> str:
    p, f, e = res["pretrain"], res["finetune"], res["eval"]
    lines = []
    add = lines.append
    add(
        f"dapt benchmark  {res['date']}  {res['machine']}  torch {torch.__version__}  threads {res['threads']}  "
        f"precision {args.precision}  model {res['model']}"
    )
    add("")
    add(f"{'':42s} {'ours':>14s} {'HF recipe':>14s} {'ratio':>8s}")
    add(f"PRETRAINING ({p['steps']} steps, batch {p['batch_size']} x {p['seq_len']} packed tokens, steps 2..N timed)")
    add(
        f"{'  real tokens/s':42s} {fmt(p['ours_tokens_per_s']):>14s} {fmt(p['recipe_tokens_per_s']):>14s} "
        f"{p['speedup']:>7.2f}x"
    )
    add(f"{'  seconds/step':42s} {p['ours_seconds_per_step']:>14.3f} {p['recipe_seconds_per_step']:>14.3f}")
    add(
        f"{'  rows through the vocabulary projection':42s} {p['ours_masked_fraction']:>13.1%} "
        f"{p['recipe']['vocab_rows'] / max(1, p['recipe']['tokens']):>13.1%}"
    )
    add(
        f"{'  model GFLOP/s (6*P*tokens formula)':42s} {p['ours_flops_per_s'] / 1e9:>14.1f} "
        f"{p['recipe_flops_per_s'] / 1e9:>14.1f}"
    )
    add(
        f"{'  train loss, mean of first ' + str(p['loss_window']) + ' steps':42s} "
        f"{p['loss_first']['ours']:>14.3f} {p['loss_first']['recipe']:>14.3f}"
    )
    add(
        f"{'  train loss, mean of last ' + str(p['loss_window']) + ' steps':42s} "
        f"{p['loss_last']['ours']:>14.3f} {p['loss_last']['recipe']:>14.3f}"
    )
    h = p["held_out_loss"]
    add(
        f"{'  held-out MLM loss, same masks, fp32':42s} {h['ours']:>14.3f} {h['recipe']:>14.3f}   "
        f"(before training {h['start']:.3f}; {p['held_out_blocks']} blocks of documents neither trained on)"
    )
    add(f"{'  whole call incl. load/save, s':42s} {p['ours_total_seconds']:>14.1f} {p['recipe_total_seconds']:>14.1f}")
    if "recipe_fp32_tokens_per_s" in p:
        add(
            f"{'  recipe at its default fp32: tokens/s':42s} {'':>14s} {fmt(p['recipe_fp32_tokens_per_s']):>14s} "
            f"{p['speedup_vs_recipe_fp32']:>7.2f}x"
        )
        add(
            f"{'  recipe fp32: loss last steps / fixed blocks':42s} {'':>14s} {p['loss_last']['recipe_fp32']:>14.3f}   "
            f"fixed blocks {h['recipe_fp32']:.3f}"
        )
    peak = p["peak_flops_per_s"]
    add(
        f"{'  matmul peak ' + str(args.peak_n) + '^2, median (best), GFLOP/s':42s} "
        + "  ".join(f"{k} {v / 1e9:.1f} ({p['peak_flops_per_s_best'][k] / 1e9:.1f})" for k, v in peak.items())
    )
    add(f"{'  MFU vs ' + p['peak_key'] + ' peak (median step)':42s} {p['mfu']:>14.2f} {p['recipe_mfu']:>14.2f}")
    add(f"{'  MFU incl. attention-score FLOPs':42s} {p['mfu_with_attention']:>14.2f}")
    add(
        f"FINE-TUNING ({f['n_train']} examples x {f['epochs']:g} epochs, batch {f['batch_size']}, "
        f"seeds {','.join(map(str, f['seeds']))}, "
        f"steps 2..N timed, training examples only)"
    )
    add(f"{'':42s} {'ours':>14s} {'recipe @128':>14s} {'ratio':>8s} {'tuned recipe':>14s} {'ratio':>8s}")
    add(
        f"{'  training examples/s':42s} {fmt(f['ours_examples_per_s'], 1):>14s} "
        f"{fmt(f['recipe_examples_per_s'], 1):>14s} "
        f"{f['speedup']:>7.2f}x {fmt(f['recipe_tuned_examples_per_s'], 1):>14s} {f['speedup_tuned']:>7.2f}x"
    )
    add(side_row("  positions per example (padding incl.)", f, "positions_per_example"))
    add(side_row("  real tokens per example", f, "tokens_per_example"))
    for r in f["runs"]:
        add(
            side_row(f"  test macro-F1, seed {r['seed']}", r, "f1", ".4f")
            + f"   (ours: best of {f['epochs']:g} epochs on validation = epoch {r['ours_best_epoch']})"
        )
    if len(f["runs"]) > 1:
        spread = {f"{side}_f1": f"{f[side + '_f1_mean']:.4f}+-{f[side + '_f1_sd']:.3f}" for side in SIDES}
        add(side_row("  test macro-F1, mean +- sd", spread, "f1", "s"))
    add(
        f"EVALUATION ({e['n_test']} test examples, batch {e['batch_size']}, same fine-tuned weights, "
        f"{e['repeats']} rounds)"
    )
    add(
        f"{'  examples/s':42s} {fmt(e['ours_examples_per_s'], 1):>14s} {fmt(e['recipe_examples_per_s'], 1):>14s} "
        f"{e['speedup']:>7.2f}x {fmt(e['recipe_tuned_examples_per_s'], 1):>14s} {e['speedup_tuned']:>7.2f}x"
    )
    add(side_row("  positions per example (padding incl.)", e, "positions_per_example"))
    add(
        side_row("  test macro-F1", e, "f1", ".4f")
        + f"   agree {e['agreement']:.1%} / tuned {e['agreement_tuned']:.1%}"
    )
    wf = res.get("workflow")
    if wf:
        if "error" in wf:
            add(f"WORKFLOW  dry run of the default study: {wf['error']}")
        else:
            add(
                f"WORKFLOW  dry run of the default study (empty folder): {wf.get('jobs', '?')} jobs planned in "
                f"{wf['dry_run_seconds']:.1f} s"
            )
    if "imports" in res:
        lines += imports_lines(res["imports"])
    add(f"total benchmark time {res['seconds']:.0f} s")
    return "\n".join(lines)


def last_line(res: dict) -> str:
    return (
        f"pretrain_speedup={res['pretrain']['speedup']:.2f} finetune_speedup={res['finetune']['speedup']:.2f} "
        f"eval_speedup={res['eval']['speedup']:.2f} pretrain_mfu={res['pretrain']['mfu']:.2f} "
        f"finetune_speedup_tuned={res['finetune']['speedup_tuned']:.2f} "
        f"eval_speedup_tuned={res['eval']['speedup_tuned']:.2f}"
    )
