"""Read a study's ``--configfile`` before Snakemake does, so a YAML mistake gets the project's one line.

Snakemake parses ``--configfile`` in its command line, before the workflow's own code runs; a tab, an
undefined alias or an alias inside its own anchor then reaches the user as Snakemake's generic message
(no file, no line) or a 40-line RecursionError. `setup.sh` puts a one-line ``dapt_config_guard.pth`` into
the virtual environment that calls `guard()` at interpreter start: for a ``snakemake`` command with
config files it reads each through `dapt.core.strict_yaml.read_yaml` and, on a mistake, prints
``error: <file>: line <n>: ...`` and exits 2. Any other process returns at once (one list lookup).
"""

from __future__ import annotations

import os
import sys

FLAGS = ("--configfile", "--configfiles")


def configfiles(argv: list[str]) -> list[str]:
    """The files after --configfile/--configfiles (`--configfile a b`, `--configfile=a`), until the next flag."""
    found, taking = [], False
    for arg in argv:
        if arg.startswith("-"):
            flag, eq, value = arg.partition("=")
            taking = flag in FLAGS and not eq
            if flag in FLAGS and eq:
                found.append(value)
        elif taking:
            found.append(arg)
    return found


def guard(argv: list[str] | None = None) -> None:
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    snakemake = any(os.path.basename(a) == "snakemake" for a in argv[:2]) or argv[1:3] == ["-m", "snakemake"]
    if not snakemake or not any(a.split("=")[0] in FLAGS for a in argv):
        return
    from dapt.core.errors import UserError
    from dapt.core.strict_yaml import read_yaml

    for path in configfiles(argv):
        if not os.path.exists(path):
            continue  # Snakemake's own message names a missing file
        try:
            read_yaml(path)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            os._exit(2)  # at interpreter start (a .pth line) SystemExit would be a fatal error, not an exit
