"""Pretraining's progress lines, on stderr (so in the job's log): step/total, loss, steps/s and an ETA.

One line at each checkpoint and, between checkpoints, one whenever ``every_s`` seconds have passed since the
last line, so that a long epoch is never silent::

    pretrain: step 120/600 (20%) loss 5.3039, 33.4 steps/s, 3.6s elapsed, ETA 14s [checkpoint]

The loss is the mean over the steps since the previous line; steps/s is over the whole run so far (the
checkpoints and collapse monitors included, so the ETA is what the clock will show); after a resume both count
from the resumed step.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

from workflow.joblog import format_duration

PROGRESS_EVERY_S = 10.0


def eta_seconds(step: int, total: int, steps_per_s: float) -> float:
    """Seconds until step ``total`` at ``steps_per_s`` (inf when nothing has been measured yet)."""
    if step >= total:
        return 0.0
    return (total - step) / steps_per_s if steps_per_s > 0 else math.inf


def progress_line(step: int, total: int, loss: float, steps_per_s: float, elapsed_s: float, note: str = "") -> str:
    """One progress line (see the module's docstring)."""
    eta = eta_seconds(step, total, steps_per_s)
    return (f"pretrain: step {step}/{total} ({100 * step / max(total, 1):.0f}%) loss {loss:.4f}, "
            f"{steps_per_s:.3g} steps/s, {format_duration(elapsed_s)} elapsed, "
            f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}" + (f" [{note}]" if note else ""))


class Progress:
    """When to print a progress line, and what it says."""

    def __init__(self, total: int, start_step: int = 0, every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, out: TextIO | None = None) -> None:
        self.total, self.start_step, self.every_s = total, start_step, every_s
        self.clock, self.out = clock, out
        self.t0 = self.last = clock()
        self._loss, self._n = 0.0, 0

    def add(self, loss: float) -> None:
        """Count one step's loss."""
        self._loss += loss
        self._n += 1

    def due(self) -> bool:
        """Whether ``every_s`` seconds have passed since the last line."""
        return self.clock() - self.last >= self.every_s

    def line(self, step: int, note: str = "") -> str:
        """The line for ``step`` (and a new window for the loss)."""
        now = self.clock()
        elapsed = now - self.t0
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        loss = self._loss / self._n if self._n else math.nan
        self.last, self._loss, self._n = now, 0.0, 0
        return progress_line(step, self.total, loss, rate, elapsed, note)

    def emit(self, step: int, note: str = "") -> None:
        """Print the line for ``step`` on stderr (or ``out``)."""
        print(self.line(step, note), file=self.out or sys.stderr, flush=True)
