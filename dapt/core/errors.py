"""One error type for everything the user can fix, so every script can turn it into one clean line."""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable, Iterable


class UserError(Exception):
    """Bad input: config, data, download or model. The message names the file/key and the fix."""

    def __init__(self, where: str, problem: str, fix: str = ""):
        self.where, self.problem, self.fix = where, problem, fix
        msg = f"{where}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class Diverged(UserError):
    """A training loss that is no longer finite: the setting (lr, precision) is the cause, not the code.
    Fine-tuning may record it as a failed run (`on_divergence: record`) instead of stopping the study."""

    def __init__(self, where: str, problem: str, fix: str = "", step: int = 0):
        super().__init__(where, problem, fix)
        self.step = step

    def record(self) -> dict:
        """What a run recorded as failed says of itself (train.json, then metrics.json)."""
        return {"status": DIVERGED, "error": str(self), "diverged_step": self.step}


#: The `status` of a run recorded as failed: its files say so, and everything that reads them asks `diverged`.
DIVERGED = "diverged"


def diverged(record: dict) -> bool:
    """Whether a run's train.json / metrics.json record is of a run recorded as failed."""
    return record.get("status") == DIVERGED


def some(values: Iterable, n: int = 5) -> str:
    """The first `n` values for a message, and how many more there are, so messages stay one line."""
    values = list(values)
    return ", ".join(map(str, values[:n])) + (f", ... ({len(values) - n} more)" if len(values) > n else "")


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main(); a UserError becomes one line on stderr and exit status 2.

    The line is printed by an exit handler registered before main() runs, so it runs after every
    handler main() registers (they run last-in, first-out, e.g. a job's closing ``[dapt.job]`` line):
    the error is the last line of the job's log, where Snakemake's show-failed-logs and users look.
    """
    failure: list[str] = []
    atexit.register(lambda: failure and print(failure[0], file=sys.stderr, flush=True))
    try:
        main()
    except UserError as err:
        failure.append(f"error: {err}")
        sys.exit(2)
