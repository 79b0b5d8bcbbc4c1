"""Start-up cost per job: every job of a study pays its imports once, before its first step."""

from __future__ import annotations

import ast
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# what each job loads before its first step, beyond its script's own imports (the library imports
# these inside the functions the script calls); peft is not named: it counts only if these load it
JOB_IMPORTS = {"finetune_full": "scripts/finetune.py", "evaluate": "scripts/evaluate.py"}
LIBRARY_IMPORTS = ["dapt.runtime.cli", "dapt.runtime.context", "dapt.finetune.evaluation", "dapt.finetune.fine_tuning"]
HEAVY_MODULES = ("peft", "sklearn", "pyarrow.dataset")
IMPORT_PROBE = """
import importlib, json, resource, sys
for name in {modules!r}:
    importlib.import_module(name)
import transformers
transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer  # lazy: these load the model code
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"cpu_s": usage.ru_utime + usage.ru_stime, "heavy": {{m: m in sys.modules for m in {heavy!r}}}}}))
"""


def script_imports(script: Path) -> list[str]:
    """Every module a script imports, at the top or inside main(): read from the script itself, so
    the measurement follows it as its imports change."""
    names = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def bench_imports(repeats: int = 3, timeout: float = 120.0) -> dict:
    """Start-up cost per job (all 71 jobs of the default study pay it): CPU seconds (user + sys,
    interpreter start included) of a fresh process importing what a job imports before training;
    the median of `repeats` processes. Also which heavy modules came along."""
    out = {}
    for job, script in JOB_IMPORTS.items():
        modules = list(dict.fromkeys(script_imports(REPO / script) + LIBRARY_IMPORTS))
        code = IMPORT_PROBE.format(modules=modules, heavy=HEAVY_MODULES)
        runs = []
        for _ in range(repeats):
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO
            )
            if proc.returncode != 0:
                return {"error": f"{job}: " + (proc.stderr.strip().splitlines() or [f"rc {proc.returncode}"])[-1]}
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[job] = {
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "cpu_s_runs": [r["cpu_s"] for r in runs],
            "heavy": runs[-1]["heavy"],
            "modules": modules,
        }
    return out
