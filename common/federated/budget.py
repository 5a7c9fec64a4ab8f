"""A silo's lifetime answer budget, kept on its own disk.

Every answer a silo gives is a measurement of its private data, so it bounds how many it gives
over its whole life, not per run: a new run id, a restart or a reused checkpoint does not reset
the counts. Evaluation calls and models evaluated are counted per silo (they measure its test
users whatever model is sent), distillation rows per checkpoint (they measure that model).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_text


@dataclass
class Budget:
    """Lifetime limits of one silo (all finite: an unbounded oracle is never the default)."""

    eval_calls: int = 1000
    models_evaluated: int = 20_000
    distill_rows: int = 5_000_000

    def __post_init__(self) -> None:
        for name in ("eval_calls", "models_evaluated", "distill_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"budget.{name} must be >= 1, got {getattr(self, name)}")


class BudgetExceeded(Exception):
    """An answer would exceed the silo's lifetime budget (the message says which limit)."""


class BudgetLedger:
    """Read-modify-write of ``<work_dir>/budget.json`` under an exclusive file lock, so that
    several processes serving one silo share the counts."""

    def __init__(self, work_dir: Path, limits: Budget) -> None:
        self.path = work_dir / "budget.json"
        self.limits = limits

    def spend_eval(self, models: int) -> None:
        """Count one evaluation call of ``models`` models, or refuse it whole."""
        def change(used: dict) -> None:
            calls, done = used.get("eval_calls", 0), used.get("models_evaluated", 0)
            if calls + 1 > self.limits.eval_calls:
                raise BudgetExceeded(f"lifetime budget of {self.limits.eval_calls} evaluation "
                                     "calls used up")
            if done + models > self.limits.models_evaluated:
                raise BudgetExceeded(f"lifetime budget of {self.limits.models_evaluated} models "
                                     f"evaluated: {done} used, {models} more asked")
            used["eval_calls"], used["models_evaluated"] = calls + 1, done + models
        self._update(change)

    def spend_rows(self, checkpoint: str, rows: int) -> None:
        """Count ``rows`` distillation rows answered with ``checkpoint``, or refuse them all;
        the limit holds for all of the silo's models together (a retrained model, another
        seed or run id, starts no new budget)."""
        def change(used: dict) -> None:
            per = used.setdefault("distill_rows", {})
            total = sum(per.values())
            if total + rows > self.limits.distill_rows:
                raise BudgetExceeded(f"lifetime budget of {self.limits.distill_rows} pseudo-user "
                                     f"rows (all of this silo's models): {total} used, "
                                     f"{rows} more asked")
            per[checkpoint] = per.get(checkpoint, 0) + rows
        self._update(change)

    def used(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _update(self, change) -> None:  # type: ignore[no-untyped-def]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(".budget.lock")
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            used = self.used()
            change(used)
            atomic_write_text(self.path, json.dumps(used))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
